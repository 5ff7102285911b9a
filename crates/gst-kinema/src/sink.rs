//! `kinemasink`: a bin of `h264parse ! capsfilter ! appsink` whose samples
//! feed the uploader. The bin holds back the end of the stream until every
//! fragment is persisted (or delivery failed), so a pipeline's EOS means
//! "all video is safely stored".

use std::sync::Mutex;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer::subclass::prelude::*;
use gstreamer_app as gst_app;

use crate::upload::{Input, Report, Settings, Uploader};
use kinema_core::aws::DEFAULT_REGION;

glib::wrapper! {
    pub struct KinemaSink(ObjectSubclass<imp::KinemaSink>) @extends gst::Bin, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "kinemasink",
        gst::Rank::NONE,
        KinemaSink::static_type(),
    )
}

const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";
const DEFAULT_RETENTION_HOURS: u32 = 2;
const DEFAULT_FRAGMENT_MS: u32 = 2000;
const DEFAULT_STORAGE_MB: u32 = 128;
const DEFAULT_RETRY_TIMEOUT_S: u32 = 60;

#[derive(Debug, Clone)]
struct Props {
    endpoint: String,
    stream_name: Option<String>,
    region: String,
    access_key: Option<String>,
    secret_key: Option<String>,
    session_token: Option<String>,
    create_stream: bool,
    retention_period: u32,
    fragment_duration: u32,
    storage_size: u32,
    absolute_fragment_times: bool,
    retry_timeout: u32,
}

impl Default for Props {
    fn default() -> Self {
        Props {
            endpoint: DEFAULT_ENDPOINT.into(),
            stream_name: None,
            region: DEFAULT_REGION.into(),
            access_key: None,
            secret_key: None,
            session_token: None,
            create_stream: true,
            retention_period: DEFAULT_RETENTION_HOURS,
            fragment_duration: DEFAULT_FRAGMENT_MS,
            storage_size: DEFAULT_STORAGE_MB,
            absolute_fragment_times: true,
            retry_timeout: DEFAULT_RETRY_TIMEOUT_S,
        }
    }
}

fn env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

mod imp {
    use super::*;

    pub struct KinemaSink {
        props: Mutex<Props>,
        uploader: Mutex<Option<Uploader>>,
        appsink: gst_app::AppSink,
    }

    use kinema_core::sync::lock;

    #[glib::object_subclass]
    impl ObjectSubclass for KinemaSink {
        const NAME: &'static str = "GstKinemaSink";
        type Type = super::KinemaSink;
        type ParentType = gst::Bin;

        fn new() -> Self {
            KinemaSink {
                props: Mutex::new(Props::default()),
                uploader: Mutex::new(None),
                appsink: gst_app::AppSink::builder()
                    .name("upload")
                    .caps(&kinema_media::avc_caps())
                    .sync(false)
                    .max_buffers(32)
                    .build(),
            }
        }
    }

    impl ObjectImpl for KinemaSink {
        fn properties() -> &'static [glib::ParamSpec] {
            static PROPS: std::sync::OnceLock<Vec<glib::ParamSpec>> = std::sync::OnceLock::new();
            PROPS.get_or_init(|| {
                vec![
                    glib::ParamSpecString::builder("endpoint")
                        .nick("Endpoint")
                        .blurb("Kinema's base URL (the PutMedia data endpoint)")
                        .default_value(Some(DEFAULT_ENDPOINT))
                        .build(),
                    glib::ParamSpecString::builder("stream-name")
                        .nick("Stream name")
                        .blurb("The video stream to upload to (required)")
                        .build(),
                    glib::ParamSpecString::builder("aws-region")
                        .nick("Region")
                        .blurb("Region the requests are signed for")
                        .default_value(Some(DEFAULT_REGION))
                        .build(),
                    glib::ParamSpecString::builder("access-key")
                        .nick("Access key")
                        .blurb("Access key id (default: KINEMA_ACCESS_KEY_ID or AWS_ACCESS_KEY_ID)")
                        .build(),
                    glib::ParamSpecString::builder("secret-key")
                        .nick("Secret key")
                        .blurb("Secret access key (default: KINEMA_SECRET_ACCESS_KEY or AWS_SECRET_ACCESS_KEY)")
                        .write_only()
                        .build(),
                    glib::ParamSpecString::builder("session-token")
                        .nick("Session token")
                        .blurb("Session token of temporary credentials, from STS (default: KINEMA_SESSION_TOKEN or AWS_SESSION_TOKEN)")
                        .write_only()
                        .build(),
                    glib::ParamSpecBoolean::builder("create-stream-if-missing")
                        .nick("Create stream")
                        .blurb("Create the stream (with retention-period) if it does not exist")
                        .default_value(true)
                        .build(),
                    glib::ParamSpecUInt::builder("retention-period")
                        .nick("Retention period")
                        .blurb("Retention in hours of a stream this element creates (0 keeps no archive)")
                        .maximum(87_600)
                        .default_value(DEFAULT_RETENTION_HOURS)
                        .build(),
                    glib::ParamSpecUInt::builder("fragment-duration")
                        .nick("Fragment duration")
                        .blurb("Shortest fragment in milliseconds; fragments end at the next keyframe")
                        .minimum(100)
                        .maximum(10_000)
                        .default_value(DEFAULT_FRAGMENT_MS)
                        .build(),
                    glib::ParamSpecUInt::builder("storage-size")
                        .nick("Storage size")
                        .blurb("MiB of unacknowledged fragments kept for resending; when full the oldest frames are dropped (with a warning)")
                        .minimum(1)
                        .maximum(16_384)
                        .default_value(DEFAULT_STORAGE_MB)
                        .build(),
                    glib::ParamSpecBoolean::builder("absolute-fragment-times")
                        .nick("Absolute fragment times")
                        .blurb("Send Unix-time cluster timecodes (ABSOLUTE); otherwise offsets from the producer start timestamp (RELATIVE)")
                        .default_value(true)
                        .build(),
                    glib::ParamSpecUInt::builder("retry-timeout")
                        .nick("Retry timeout")
                        .blurb("Seconds of failed delivery (reconnecting with back-off) before the element posts an error")
                        .minimum(1)
                        .default_value(DEFAULT_RETRY_TIMEOUT_S)
                        .build(),
                ]
            })
        }

        fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
            let mut p = lock(&self.props);
            // Types are checked by GObject against the ParamSpecs above.
            match pspec.name() {
                "endpoint" => {
                    p.endpoint = value
                        .get::<Option<String>>()
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| DEFAULT_ENDPOINT.into())
                }
                "stream-name" => p.stream_name = value.get().ok().flatten(),
                "aws-region" => {
                    p.region = value
                        .get::<Option<String>>()
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| DEFAULT_REGION.into())
                }
                "access-key" => p.access_key = value.get().ok().flatten(),
                "secret-key" => p.secret_key = value.get().ok().flatten(),
                "session-token" => p.session_token = value.get().ok().flatten(),
                "create-stream-if-missing" => p.create_stream = value.get().unwrap_or(true),
                "retention-period" => p.retention_period = value.get().unwrap_or(0),
                "fragment-duration" => {
                    p.fragment_duration = value.get().unwrap_or(DEFAULT_FRAGMENT_MS)
                }
                "storage-size" => p.storage_size = value.get().unwrap_or(DEFAULT_STORAGE_MB),
                "absolute-fragment-times" => {
                    p.absolute_fragment_times = value.get().unwrap_or(true)
                }
                "retry-timeout" => p.retry_timeout = value.get().unwrap_or(DEFAULT_RETRY_TIMEOUT_S),
                _ => {}
            }
        }

        fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
            let p = lock(&self.props);
            match pspec.name() {
                "endpoint" => p.endpoint.to_value(),
                "stream-name" => p.stream_name.to_value(),
                "aws-region" => p.region.to_value(),
                "access-key" => p.access_key.to_value(),
                "create-stream-if-missing" => p.create_stream.to_value(),
                "retention-period" => p.retention_period.to_value(),
                "fragment-duration" => p.fragment_duration.to_value(),
                "storage-size" => p.storage_size.to_value(),
                "absolute-fragment-times" => p.absolute_fragment_times.to_value(),
                "retry-timeout" => p.retry_timeout.to_value(),
                _ => glib::Value::from_type(pspec.value_type()),
            }
        }

        fn constructed(&self) {
            self.parent_constructed();
            let bin = self.obj();
            let build = || -> Result<(), glib::BoolError> {
                let parse = gst::ElementFactory::make("h264parse")
                    .name("parse")
                    .build()?;
                bin.add_many([&parse, self.appsink.upcast_ref()])?;
                parse.link(&self.appsink)?;
                let pad = parse
                    .static_pad("sink")
                    .ok_or_else(|| glib::bool_error!("h264parse has no sink pad"))?;
                let templ = bin
                    .pad_template("sink")
                    .ok_or_else(|| glib::bool_error!("no sink template"))?;
                let ghost = gst::GhostPad::builder_from_template_with_target(&templ, &pad)?
                    .name("sink")
                    .build();
                bin.add_pad(&ghost)?;
                Ok(())
            };
            if let Err(e) = build() {
                gst::error!(
                    gst::CAT_DEFAULT,
                    obj = &*bin,
                    "cannot build kinemasink: {e}"
                );
            }
            let weak = bin.downgrade();
            let converter = Mutex::new(kinema_media::SampleConverter::default());
            let weak_eos = weak.clone();
            self.appsink.set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |appsink| {
                        let sample = appsink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        let Some(bin) = weak.upgrade() else {
                            return Err(gst::FlowError::Flushing);
                        };
                        let (track, frame) = lock(&converter).convert(&sample);
                        let imp = bin.imp();
                        let up = lock(&imp.uploader);
                        let Some(up) = up.as_ref() else {
                            return Err(gst::FlowError::Flushing);
                        };
                        if let Some(t) = track {
                            up.send(Input::Track(t));
                        }
                        if let Some(f) = frame {
                            up.send(Input::Frame(f));
                        }
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .eos(move |_| {
                        if let Some(bin) = weak_eos.upgrade()
                            && let Some(up) = lock(&bin.imp().uploader).as_ref()
                        {
                            up.send(Input::Eos);
                        }
                    })
                    .build(),
            );
        }
    }

    impl GstObjectImpl for KinemaSink {}

    impl ElementImpl for KinemaSink {
        fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
            static META: std::sync::OnceLock<gst::subclass::ElementMetadata> =
                std::sync::OnceLock::new();
            Some(META.get_or_init(|| {
                gst::subclass::ElementMetadata::new(
                    "Kinema video stream sink",
                    "Sink/Video/Network",
                    "Fragments H.264 at keyframes, muxes Matroska and streams it to a Kinema \
                     (Kinesis Video Streams compatible) server with PutMedia, resending \
                     whatever the server has not acknowledged as persisted",
                    "Kinema developers",
                )
            }))
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static T: std::sync::OnceLock<Vec<gst::PadTemplate>> = std::sync::OnceLock::new();
            T.get_or_init(|| {
                let caps = gst::Caps::builder("video/x-h264")
                    .field(
                        "stream-format",
                        gst::List::new(["avc", "avc3", "byte-stream"]),
                    )
                    .build();
                vec![
                    gst::PadTemplate::new(
                        "sink",
                        gst::PadDirection::Sink,
                        gst::PadPresence::Always,
                        &caps,
                    )
                    .expect("a static, valid pad template"),
                ]
            })
        }

        fn change_state(
            &self,
            transition: gst::StateChange,
        ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
            if transition == gst::StateChange::ReadyToPaused {
                self.start().map_err(|e| {
                    gst::element_imp_error!(self, gst::ResourceError::Settings, ["{e}"]);
                    gst::StateChangeError
                })?;
            }
            let ret = self.parent_change_state(transition)?;
            if transition == gst::StateChange::PausedToReady {
                // Stops the upload; whatever was not persisted is lost. The
                // thread is joined outside the lock.
                let uploader = lock(&self.uploader).take();
                drop(uploader);
            }
            Ok(ret)
        }
    }

    impl BinImpl for KinemaSink {
        fn handle_message(&self, msg: gst::Message) {
            // The appsink's EOS is held back: the bin posts its own once
            // every fragment is persisted.
            if let gst::MessageView::Eos(_) = msg.view() {
                return;
            }
            self.parent_handle_message(msg)
        }
    }

    impl KinemaSink {
        fn start(&self) -> Result<(), String> {
            let p = lock(&self.props).clone();
            let stream = p
                .stream_name
                .clone()
                .filter(|s| !s.is_empty())
                .ok_or("the stream-name property is required")?;
            let access_key = p
                .access_key
                .clone()
                .or_else(|| env(&["KINEMA_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"]))
                .ok_or("no access key: set access-key or KINEMA_ACCESS_KEY_ID")?;
            let secret_key = p
                .secret_key
                .clone()
                .or_else(|| env(&["KINEMA_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"]))
                .ok_or("no secret key: set secret-key or KINEMA_SECRET_ACCESS_KEY")?;
            let session_token = p
                .session_token
                .clone()
                .or_else(|| env(&["KINEMA_SESSION_TOKEN", "AWS_SESSION_TOKEN"]));
            let settings = Settings {
                endpoint: p.endpoint,
                stream,
                region: p.region,
                access_key,
                secret_key,
                session_token,
                create_stream: p.create_stream,
                retention_hours: p.retention_period,
                fragment_ms: p.fragment_duration as u64,
                storage_bytes: p.storage_size as usize * 1024 * 1024,
                absolute: p.absolute_fragment_times,
                retry_timeout: Duration::from_secs(p.retry_timeout as u64),
            };
            let weak = self.obj().downgrade();
            let report = Box::new(move |r: Report| {
                let Some(bin) = weak.upgrade() else { return };
                match r {
                    Report::Warning(w) => {
                        gst::warning!(gst::CAT_DEFAULT, obj = &bin, "{w}");
                        gst::element_warning!(bin, gst::ResourceError::Write, ["{w}"]);
                    }
                    Report::Done => {
                        let _ = bin.post_message(gst::message::Eos::builder().src(&bin).build());
                    }
                    Report::Fatal(e) => {
                        gst::element_error!(bin, gst::ResourceError::Write, ["{e}"]);
                    }
                }
            });
            let up = Uploader::start(settings, report).map_err(|e| e.to_string())?;
            *lock(&self.uploader) = Some(up);
            Ok(())
        }
    }
}
