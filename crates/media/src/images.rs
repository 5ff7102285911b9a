//! Still images from stored H.264/H.265 frames (GetImages): the frames of a
//! fragment are decoded in order from its keyframe, the wanted ones are kept
//! by presentation time, scaled and encoded as JPEG or PNG, all inside one
//! GStreamer pipeline (`appsrc ! avdec_h26x ! videoconvert ! videoscale !
//! jpegenc|pngenc ! appsink`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::SourceError;
use kinema_core::sync::lock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// Quality 1 to 100.
    Jpeg {
        quality: u8,
    },
    Png,
}

/// One encoded frame of the input, in decode order.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// Presentation time, ns, on any axis shared by the frames.
    pub pts_ns: i64,
    pub keyframe: bool,
    /// Length-prefixed NAL units (the `avcC`/`hvcC` sample format).
    pub data: Bytes,
}

/// What to decode and how to render it.
#[derive(Debug, Clone)]
pub struct StillRequest<'a> {
    /// Matroska codec id: `V_MPEG4/ISO/AVC` or `V_MPEGH/ISO/HEVC`.
    pub codec_id: &'a str,
    /// The decoder configuration record (`avcC` / `hvcC`).
    pub config: &'a [u8],
    /// Frames from a keyframe on, in decode order.
    pub frames: &'a [EncodedFrame],
    /// Presentation times of the frames to render.
    pub wanted: &'a [i64],
    pub format: ImageFormat,
    /// Output width and height; one alone keeps the aspect ratio.
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// A rendered image and the presentation time of its frame (ns).
pub type Still = (i64, Vec<u8>);

/// Input timestamps are moved by this much so none is negative.
const BASE_NS: i64 = 3_600_000_000_000;

/// Caps of stored frames (AVC/HVC access units with their configuration
/// record) for `codec_id` (a Matroska codec id), and the decoder for them.
pub(crate) fn stored_video_caps(
    codec_id: &str,
    config: &[u8],
) -> Result<(gst::Caps, &'static str), SourceError> {
    let (caps_name, format, decoder) = match codec_id {
        kinema_mkv::mux::CODEC_H264 => ("video/x-h264", "avc", "avdec_h264"),
        kinema_mkv::mux::CODEC_H265 => ("video/x-h265", "hvc1", "avdec_h265"),
        other => return Err(SourceError::UnsupportedCodec(other.to_string())),
    };
    let caps = gst::Caps::builder(caps_name)
        .field("stream-format", format)
        .field("alignment", "au")
        .field("codec_data", gst::Buffer::from_slice(config.to_vec()))
        .build();
    Ok((caps, decoder))
}

/// Renders the wanted frames; returns `(pts_ns, image bytes)` for each one
/// the decoder produced, in presentation order.
pub fn render_stills(req: &StillRequest<'_>) -> Result<Vec<Still>, SourceError> {
    crate::init()?;
    let (caps, decoder) = stored_video_caps(req.codec_id, req.config)?;
    let fail = |e: &dyn std::fmt::Display| SourceError::Pipeline(e.to_string());
    let appsrc = gst_app::AppSrc::builder()
        .caps(&caps)
        .format(gst::Format::Time)
        .is_live(false)
        .build();
    let make = |name: &str| {
        gst::ElementFactory::make(name)
            .build()
            .map_err(|e| fail(&e))
    };
    let dec = make(decoder)?;
    let convert = make("videoconvert")?;
    let scale = make("videoscale")?;
    let mut raw = gst::Caps::builder("video/x-raw");
    if let Some(w) = req.width {
        raw = raw.field("width", w as i32);
    }
    if let Some(h) = req.height {
        raw = raw.field("height", h as i32);
    }
    let filter = gst::ElementFactory::make("capsfilter")
        .property("caps", raw.build())
        .build()
        .map_err(|e| fail(&e))?;
    let encoder = match req.format {
        ImageFormat::Jpeg { quality } => gst::ElementFactory::make("jpegenc")
            .property("quality", i32::from(quality.clamp(1, 100)))
            .build(),
        ImageFormat::Png => gst::ElementFactory::make("pngenc")
            .property("snapshot", false)
            .build(),
    }
    .map_err(|e| fail(&e))?;
    let appsink = gst_app::AppSink::builder().sync(false).build();
    let pipeline = gst::Pipeline::new();
    let chain: [&gst::Element; 7] = [
        appsrc.upcast_ref(),
        &dec,
        &convert,
        &scale,
        &filter,
        &encoder,
        appsink.upcast_ref(),
    ];
    pipeline.add_many(chain).map_err(|e| fail(&e))?;
    gst::Element::link_many(chain).map_err(|e| fail(&e))?;

    // Only the wanted frames go past the decoder.
    let wanted: BTreeSet<u64> = req
        .wanted
        .iter()
        .map(|t| (t + BASE_NS).max(0) as u64)
        .collect();
    let src = dec
        .static_pad("src")
        .ok_or_else(|| SourceError::Pipeline("decoder without a src pad".into()))?;
    src.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let keep = info
            .buffer()
            .and_then(|b| b.pts())
            .is_some_and(|pts| wanted.contains(&pts.nseconds()));
        if keep {
            gst::PadProbeReturn::Ok
        } else {
            gst::PadProbeReturn::Drop
        }
    });

    let images: Arc<Mutex<Vec<Still>>> = Arc::default();
    let sink_images = images.clone();
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(buffer) = sample.buffer()
                    && let Ok(map) = buffer.map_readable()
                {
                    let pts = buffer.pts().map_or(0, |p| p.nseconds() as i64 - BASE_NS);
                    lock(&sink_images).push((pts, map.as_slice().to_vec()));
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );

    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| fail(&e))?;
    let result = (|| {
        for f in req.frames {
            let mut buffer = gst::Buffer::from_slice(f.data.clone());
            {
                let b = buffer.get_mut().expect("a new buffer is writable");
                b.set_pts(gst::ClockTime::from_nseconds(
                    (f.pts_ns + BASE_NS).max(0) as u64
                ));
                if !f.keyframe {
                    b.set_flags(gst::BufferFlags::DELTA_UNIT);
                }
            }
            if appsrc.push_buffer(buffer).is_err() {
                break;
            }
        }
        let _ = appsrc.end_of_stream();
        let bus = pipeline
            .bus()
            .ok_or_else(|| SourceError::Pipeline("pipeline without a bus".into()))?;
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        match msg.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Eos(_)) => Ok(()),
            Some(gst::MessageView::Error(e)) => Err(SourceError::Pipeline(format!(
                "decoding failed: {}",
                e.error()
            ))),
            _ => Err(SourceError::Pipeline("decoding timed out".into())),
        }
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result?;
    let mut out = std::mem::take(&mut *lock(&images));
    out.sort_by_key(|(pts, _)| *pts);
    Ok(out)
}
