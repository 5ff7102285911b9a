//! The GStreamer adapter: camera sources (RTSP pulled with `rtspsrc`, local
//! files looped as cameras) turned into H.264 frames of our own type.
//!
//! This is the only server crate that names GStreamer types. A [`Camera`]
//! runs one pipeline on GStreamer's threads and hands everything it sees to
//! a callback as [`SourceEvent`]s: the track (codec configuration and size),
//! each access unit in AVC form with a Unix-time presentation timestamp, the
//! end of the stream, or an error. Nothing is re-encoded: the depayloaded
//! (or demuxed) H.264 is parsed into access units and passed on as it came.
//! [`images`] decodes stored frames into JPEG or PNG stills (GetImages);
//! [`decode`] decodes live frames (and image files) to RGB for detection.

pub mod decode;
pub mod images;
#[cfg(feature = "rtsp-server")]
pub mod rtsp_server;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use kinema_core::sync::lock;
pub use kinema_mkv::mux::{CODEC_H264, Frame, VideoTrack};

/// How `rtspsrc` carries RTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// What to pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// `rtsp://host[:port]/path` or `file:///absolute/path`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub transport: Transport,
}

/// What a running camera reports, on GStreamer's threads.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// The video track, before the first frame and again when it changes.
    Track(VideoTrack),
    Frame(Frame),
    /// The source ended (a file reached its end, a camera closed the session).
    Eos,
    Error(SourceError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("GStreamer is not usable: {0}")]
    Init(String),
    #[error("unsupported source URL {0:?}: use rtsp:// or file://")]
    UnsupportedUrl(String),
    #[error("unsupported codec {0}: only H.264 is ingested")]
    UnsupportedCodec(String),
    #[error("the camera refused the credentials: {0}")]
    Unauthorized(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Pipeline(String),
}

/// Callback receiving a camera's events. It runs on GStreamer's streaming
/// threads and may block briefly (back-pressure slows the source down).
pub type EventSink = Arc<dyn Fn(SourceEvent) + Send + Sync>;

/// Initialises GStreamer once per process.
pub fn init() -> Result<(), SourceError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| gst::init().map_err(|e| e.to_string()))
        .clone()
        .map_err(SourceError::Init)
}

/// One running source pipeline; dropping it stops the pipeline.
pub struct Camera {
    pipeline: gst::Pipeline,
}

impl Camera {
    /// Builds and starts the pipeline for `spec`. Errors found later (a
    /// refused connection, bad credentials, an unsupported codec) arrive
    /// as [`SourceEvent::Error`].
    pub fn start(spec: &SourceSpec, sink: EventSink) -> Result<Camera, SourceError> {
        Camera::start_paced(spec, sink, true)
    }

    /// Reads a video file (MP4, MOV, Matroska, a raw H.264 byte stream,
    /// whatever GStreamer's parsers recognise) once, as fast as it can be
    /// demuxed rather than at its own pace, ending with
    /// [`SourceEvent::Eos`]. The first frame is stamped with the wall
    /// clock, later ones keep the file's spacing; frames of a raw stream
    /// without timestamps are spaced by its frame rate (or 30 fps).
    pub fn read_file(path: &std::path::Path, sink: EventSink) -> Result<Camera, SourceError> {
        let spec = SourceSpec {
            url: format!("file://{}", path.display()),
            username: None,
            password: None,
            transport: Transport::Tcp,
        };
        Camera::start_paced(&spec, sink, false)
    }

    fn start_paced(spec: &SourceSpec, sink: EventSink, paced: bool) -> Result<Camera, SourceError> {
        init()?;
        let pipeline = gst::Pipeline::new();
        let parse = make("h264parse", "parse")?;
        let appsink = gst_app::AppSink::builder()
            .caps(&avc_caps())
            .max_buffers(16)
            .drop(false)
            .build();
        let (head, depay): (gst::Element, Option<gst::Element>) =
            if let Some(path) = spec.url.strip_prefix("file://") {
                let src = gst::ElementFactory::make("filesrc")
                    .property("location", path)
                    .build()
                    .map_err(|e| SourceError::Pipeline(e.to_string()))?;
                let demux = make("parsebin", "demux")?;
                pipeline
                    .add_many([&src, &demux])
                    .map_err(|e| SourceError::Pipeline(e.to_string()))?;
                src.link(&demux)
                    .map_err(|e| SourceError::Pipeline(e.to_string()))?;
                (demux, None)
            } else if spec.url.starts_with("rtsp://") || spec.url.starts_with("rtsps://") {
                let mut b = gst::ElementFactory::make("rtspsrc")
                    .property("location", &spec.url)
                    .property("latency", 200u32)
                    .property_from_str(
                        "protocols",
                        match spec.transport {
                            Transport::Tcp => "tcp",
                            Transport::Udp => "udp",
                        },
                    );
                if let Some(u) = &spec.username {
                    b = b.property("user-id", u);
                }
                if let Some(p) = &spec.password {
                    b = b.property("user-pw", p);
                }
                let src = b
                    .build()
                    .map_err(|e| SourceError::Pipeline(e.to_string()))?;
                let depay = make("rtph264depay", "depay")?;
                pipeline
                    .add_many([&src, &depay])
                    .map_err(|e| SourceError::Pipeline(e.to_string()))?;
                (src, Some(depay))
            } else {
                return Err(SourceError::UnsupportedUrl(spec.url.clone()));
            };
        // A file plays at its own pace, like a camera, unless it is read
        // for an upload; RTSP arrives live.
        appsink.set_sync(paced && depay.is_none());
        pipeline
            .add_many([&parse, appsink.upcast_ref()])
            .map_err(|e| SourceError::Pipeline(e.to_string()))?;
        parse
            .link(&appsink)
            .map_err(|e| SourceError::Pipeline(e.to_string()))?;

        // Dynamic pads: H.264 video goes to the parser (through the
        // depayloader for RTP); anything else that is video is an error;
        // other media are discarded.
        let weak = pipeline.downgrade();
        let pad_sink = sink.clone();
        head.connect_pad_added(move |_, pad| {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
            let Some(s) = caps.structure(0) else { return };
            let (is_video, is_h264, name) = if s.name() == "application/x-rtp" {
                let media = s.get::<&str>("media").unwrap_or("");
                let enc = s.get::<&str>("encoding-name").unwrap_or("");
                (
                    media == "video",
                    enc.eq_ignore_ascii_case("H264"),
                    enc.to_string(),
                )
            } else {
                let n = s.name().as_str();
                (n.starts_with("video/"), n == "video/x-h264", n.to_string())
            };
            let target = if is_h264 {
                // Names set at construction: RTP goes through the depayloader.
                pipeline
                    .by_name("depay")
                    .or_else(|| pipeline.by_name("parse"))
                    .and_then(|e| e.static_pad("sink"))
            } else {
                if is_video {
                    pad_sink(SourceEvent::Error(SourceError::UnsupportedCodec(name)));
                }
                discard(&pipeline)
            };
            if let Some(target) = target
                && !target.is_linked()
            {
                let _ = pad.link(&target);
            }
        });
        if let Some(depay) = &depay {
            depay
                .link(&parse)
                .map_err(|e| SourceError::Pipeline(e.to_string()))?;
        }

        install_appsink(&appsink, sink.clone());
        let bus = pipeline
            .bus()
            .ok_or_else(|| SourceError::Pipeline("pipeline without a bus".into()))?;
        let bus_sink = sink;
        bus.set_sync_handler(move |_, msg| {
            match msg.view() {
                gst::MessageView::Error(e) => bus_sink(SourceEvent::Error(classify(e))),
                gst::MessageView::Eos(_) => bus_sink(SourceEvent::Eos),
                _ => {}
            }
            gst::BusSyncReply::Drop
        });
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| SourceError::Pipeline(format!("cannot start the pipeline: {e}")))?;
        Ok(Camera { pipeline })
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn make(factory: &str, name: &str) -> Result<gst::Element, SourceError> {
    gst::ElementFactory::make(factory)
        .name(name)
        .build()
        .map_err(|_| SourceError::Init(format!("GStreamer element {factory} is not installed")))
}

/// A new fakesink for a stream we do not ingest (audio, metadata).
fn discard(pipeline: &gst::Pipeline) -> Option<gst::Pad> {
    let sink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .property("async", false)
        .build()
        .ok()?;
    pipeline.add(&sink).ok()?;
    sink.sync_state_with_parent().ok()?;
    sink.static_pad("sink")
}

fn classify(e: &gst::message::Error) -> SourceError {
    let err = e.error();
    let text = match e.debug() {
        Some(d) => format!("{err} ({d})"),
        None => err.to_string(),
    };
    match err.kind::<gst::ResourceError>() {
        Some(gst::ResourceError::NotAuthorized) => SourceError::Unauthorized(text),
        Some(gst::ResourceError::NotFound) => SourceError::NotFound(text),
        Some(gst::ResourceError::OpenRead)
        | Some(gst::ResourceError::OpenReadWrite)
        | Some(gst::ResourceError::Read) => SourceError::Connect(text),
        _ => SourceError::Pipeline(text),
    }
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Maps a pipeline's running time onto wall time: the first frame is
/// stamped with the wall clock, later ones keep the source clock's spacing
/// (the RTP clock for RTSP, the file's timestamps for files).
#[derive(Default)]
struct Clock {
    base: Option<(u64, u64)>,
}

impl Clock {
    fn unix_ns(&mut self, pts: u64) -> u64 {
        let (wall, first) = *self.base.get_or_insert_with(|| (now_unix_ns(), pts));
        wall.saturating_add(pts.saturating_sub(first))
            .saturating_sub(first.saturating_sub(pts))
    }
}

/// Turns appsink samples of `video/x-h264, stream-format=avc,
/// alignment=au` into tracks and frames with Unix-time timestamps. Shared by
/// the camera sources and the `kinemasink` element.
#[derive(Default)]
pub struct SampleConverter {
    clock: Clock,
    track: Option<VideoTrack>,
    /// Running time of the last frame and the frame duration of the
    /// caps, for buffers without timestamps (a raw H.264 file).
    last_running_ns: Option<u64>,
    frame_ns: Option<u64>,
}

/// The spacing of untimed frames when the caps name no frame rate.
const UNTIMED_FRAME_NS: u64 = 1_000_000_000 / 30;

impl SampleConverter {
    /// The track when it is new or changed, and the sample's frame.
    pub fn convert(&mut self, sample: &gst::Sample) -> (Option<VideoTrack>, Option<Frame>) {
        let mut new_track = None;
        if let Some(caps) = sample.caps() {
            self.frame_ns = frame_duration_ns(caps).or(self.frame_ns);
            if let Some(track) = track_of(caps)
                && self.track.as_ref() != Some(&track)
            {
                self.track = Some(track.clone());
                new_track = Some(track);
            }
        }
        let Some(buffer) = sample.buffer() else {
            return (new_track, None);
        };
        let running_ns = match buffer.pts().or(buffer.dts()) {
            // Running time, so a restarted segment keeps going forward.
            Some(pts) => sample
                .segment()
                .and_then(|s| s.downcast_ref::<gst::ClockTime>())
                .and_then(|s| s.to_running_time(pts))
                .unwrap_or(pts)
                .nseconds(),
            // Untimed (a raw byte stream): one frame duration after the last.
            None => match self.last_running_ns {
                Some(last) => last.saturating_add(
                    buffer
                        .duration()
                        .map(|d| d.nseconds())
                        .or(self.frame_ns)
                        .unwrap_or(UNTIMED_FRAME_NS),
                ),
                None => 0,
            },
        };
        self.last_running_ns = Some(running_ns);
        let Ok(map) = buffer.map_readable() else {
            return (new_track, None);
        };
        let frame = Frame {
            pts_ns: self.clock.unix_ns(running_ns),
            keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
            data: bytes::Bytes::copy_from_slice(map.as_slice()),
        };
        (new_track, Some(frame))
    }
}

/// One frame's duration from the caps' frame rate, if they name one.
fn frame_duration_ns(caps: &gst::CapsRef) -> Option<u64> {
    let rate = caps.structure(0)?.get::<gst::Fraction>("framerate").ok()?;
    let (n, d) = (rate.numer(), rate.denom());
    (n > 0 && d > 0).then(|| 1_000_000_000u64 * d as u64 / n as u64)
}

/// The caps every converted sample must have.
pub fn avc_caps() -> gst::Caps {
    gst::Caps::builder("video/x-h264")
        .field("stream-format", "avc")
        .field("alignment", "au")
        .build()
}

fn install_appsink(appsink: &gst_app::AppSink, sink: EventSink) {
    let converter = Mutex::new(SampleConverter::default());
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |appsink| {
                let sample = appsink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let (track, frame) = lock(&converter).convert(&sample);
                if let Some(t) = track {
                    sink(SourceEvent::Track(t));
                }
                if let Some(f) = frame {
                    sink(SourceEvent::Frame(f));
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

/// The track description from negotiated `video/x-h264` caps.
fn track_of(caps: &gst::CapsRef) -> Option<VideoTrack> {
    let s = caps.structure(0)?;
    let codec_data = s.get::<gst::Buffer>("codec_data").ok()?;
    let map = codec_data.map_readable().ok()?;
    Some(VideoTrack {
        codec_id: CODEC_H264.into(),
        codec_private: map.as_slice().to_vec(),
        width: s.get::<i32>("width").unwrap_or(0).max(0) as u32,
        height: s.get::<i32>("height").unwrap_or(0).max(0) as u32,
    })
}
