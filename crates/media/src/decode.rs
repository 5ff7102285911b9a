//! Decoding for detection: live H.264/H.265 frames to RGB at a detector's
//! input size (`appsrc ! avdec_h26x ! videoconvert ! videoscale ! appsink`),
//! and still image files to the same form.
//!
//! Every frame must be decoded (inter prediction needs them all), but only
//! the frames the caller's `keep` function accepts go past the decoder: a
//! pad probe drops the rest before they are converted and scaled, which is
//! where most of the per-frame cost after decoding would be.

use std::path::Path;
use std::sync::Arc;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::SourceError;
use crate::images::EncodedFrame;

/// One decoded frame, RGB (3 bytes a pixel, rows without padding).
#[derive(Debug, Clone)]
pub struct DecodedFrame {
    /// The input frame's presentation time, ns.
    pub pts_ns: i64,
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// Frames waiting in a live decoder's input before `push` waits.
const INPUT_QUEUE: u64 = 4;

/// Decides, by presentation time (ns), which decoded frames are converted.
pub type KeepFn = Arc<dyn Fn(i64) -> bool + Send + Sync>;
/// Receives each kept frame on GStreamer's streaming thread.
pub type FrameFn = Arc<dyn Fn(DecodedFrame) + Send + Sync>;

fn fail(e: &dyn std::fmt::Display) -> SourceError {
    SourceError::Pipeline(e.to_string())
}

/// Copies an RGB buffer whose rows GStreamer padded to 4 bytes.
fn unpad(data: &[u8], width: u32, height: u32) -> Option<Vec<u8>> {
    let row = width as usize * 3;
    let stride = row.div_ceil(4) * 4;
    let h = height as usize;
    if data.len() == row * h {
        return Some(data.to_vec());
    }
    if data.len() < stride * (h.max(1) - 1) + row {
        return None;
    }
    let mut out = Vec::with_capacity(row * h);
    for y in 0..h {
        out.extend_from_slice(&data[y * stride..y * stride + row]);
    }
    Some(out)
}

fn rgb_caps(width: u32, height: u32) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .field("width", width as i32)
        .field("height", height as i32)
        .build()
}

/// The shared tail: convert, scale (bilinear, the whole frame stretched,
/// no borders: what the detectors were trained with) and an appsink.
fn scaler_chain(width: u32, height: u32) -> Result<Vec<gst::Element>, SourceError> {
    let convert = gst::ElementFactory::make("videoconvert")
        .build()
        .map_err(|e| fail(&e))?;
    let scale = gst::ElementFactory::make("videoscale")
        .property_from_str("method", "bilinear")
        .property("add-borders", false)
        .build()
        .map_err(|e| fail(&e))?;
    let filter = gst::ElementFactory::make("capsfilter")
        .property("caps", rgb_caps(width, height))
        .build()
        .map_err(|e| fail(&e))?;
    Ok(vec![convert, scale, filter])
}

fn frame_of(sample: &gst::Sample, width: u32, height: u32) -> Option<DecodedFrame> {
    let buffer = sample.buffer()?;
    let map = buffer.map_readable().ok()?;
    Some(DecodedFrame {
        pts_ns: buffer.pts().map_or(0, |p| p.nseconds() as i64),
        width,
        height,
        rgb: unpad(map.as_slice(), width, height)?,
    })
}

/// A running decoder for one camera's frames.
pub struct LiveDecoder {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    /// Set by the bus when the pipeline fails: nothing drains the input then.
    failed: Arc<std::sync::atomic::AtomicBool>,
    codec_id: String,
    config: Vec<u8>,
}

impl LiveDecoder {
    /// Starts a decoder for `codec_id` (Matroska id) with its `avcC`/`hvcC`
    /// record; kept frames arrive at `on_frame` as RGB `width` x `height`.
    pub fn start(
        codec_id: &str,
        config: &[u8],
        width: u32,
        height: u32,
        keep: KeepFn,
        on_frame: FrameFn,
    ) -> Result<LiveDecoder, SourceError> {
        crate::init()?;
        let (caps, decoder) = crate::images::stored_video_caps(codec_id, config)?;
        // A small input queue; `push` waits while it is full: the caller's
        // own thread, never ingest, waits for the decoder (which waits for
        // whoever consumes its frames), so back-pressure reaches the
        // caller's own backlog instead of piling frames up in here.
        let appsrc = gst_app::AppSrc::builder()
            .caps(&caps)
            .format(gst::Format::Time)
            .is_live(false)
            .build();
        let dec = gst::ElementFactory::make(decoder)
            .build()
            .map_err(|e| fail(&e))?;
        let appsink = gst_app::AppSink::builder()
            .sync(false)
            .max_buffers(4)
            .build();
        let pipeline = gst::Pipeline::new();
        let mut chain: Vec<gst::Element> = vec![appsrc.clone().upcast(), dec.clone()];
        chain.extend(scaler_chain(width, height)?);
        chain.push(appsink.clone().upcast());
        pipeline.add_many(&chain).map_err(|e| fail(&e))?;
        gst::Element::link_many(&chain).map_err(|e| fail(&e))?;
        let src = dec
            .static_pad("src")
            .ok_or_else(|| SourceError::Pipeline("decoder without a src pad".into()))?;
        src.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let pts = info.buffer().and_then(|b| b.pts());
            match pts {
                Some(p) if keep(p.nseconds() as i64) => gst::PadProbeReturn::Ok,
                _ => gst::PadProbeReturn::Drop,
            }
        });
        appsink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    if let Some(frame) = frame_of(&sample, width, height) {
                        on_frame(frame);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(bus) = pipeline.bus() {
            let failed = failed.clone();
            bus.set_sync_handler(move |_, msg| {
                if let gst::MessageView::Error(e) = msg.view() {
                    tracing::warn!(error = %e.error(), "detection decoder failed");
                    failed.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                gst::BusSyncReply::Pass
            });
        }
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| fail(&e))?;
        Ok(LiveDecoder {
            pipeline,
            appsrc,
            failed,
            codec_id: codec_id.to_string(),
            config: config.to_vec(),
        })
    }

    /// Whether this decoder was started for this codec configuration.
    pub fn accepts(&self, codec_id: &str, config: &[u8]) -> bool {
        self.codec_id == codec_id && self.config == config
    }

    /// Feeds one frame (decode order), waiting while the input queue is
    /// full. Fails once the pipeline has failed (start a new decoder then)
    /// or when `cancelled` says so while waiting.
    pub fn push(
        &self,
        frame: &EncodedFrame,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), SourceError> {
        use std::sync::atomic::Ordering;
        while self.appsrc.current_level_buffers() >= INPUT_QUEUE {
            if self.failed.load(Ordering::SeqCst) {
                break;
            }
            if cancelled() {
                return Err(SourceError::Pipeline("cancelled".into()));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if self.failed.load(Ordering::SeqCst) {
            return Err(SourceError::Pipeline("the decoder failed".into()));
        }
        let mut buffer = gst::Buffer::from_slice(frame.data.clone());
        {
            let b = buffer.get_mut().expect("a new buffer is writable");
            b.set_pts(gst::ClockTime::from_nseconds(frame.pts_ns.max(0) as u64));
            if !frame.keyframe {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        self.appsrc
            .push_buffer(buffer)
            .map(|_| ())
            .map_err(|e| SourceError::Pipeline(format!("decoder input: {e}")))
    }
}

impl Drop for LiveDecoder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Decodes an image file (JPEG, PNG: anything `decodebin` reads) to RGB at
/// `width` x `height`, scaled as live frames are.
pub fn decode_image_file(path: &Path, width: u32, height: u32) -> Result<Vec<u8>, SourceError> {
    crate::init()?;
    let pipeline = gst::Pipeline::new();
    let filesrc = gst::ElementFactory::make("filesrc")
        .property("location", path.display().to_string())
        .build()
        .map_err(|e| fail(&e))?;
    let decodebin = gst::ElementFactory::make("decodebin")
        .build()
        .map_err(|e| fail(&e))?;
    let appsink = gst_app::AppSink::builder().sync(false).build();
    let mut tail = scaler_chain(width, height)?;
    tail.push(appsink.clone().upcast());
    pipeline
        .add_many([&filesrc, &decodebin])
        .map_err(|e| fail(&e))?;
    pipeline.add_many(&tail).map_err(|e| fail(&e))?;
    filesrc.link(&decodebin).map_err(|e| fail(&e))?;
    gst::Element::link_many(&tail).map_err(|e| fail(&e))?;
    let first = tail[0].clone();
    decodebin.connect_pad_added(move |_, pad| {
        if let Some(sink) = first.static_pad("sink")
            && !sink.is_linked()
        {
            let _ = pad.link(&sink);
        }
    });
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| fail(&e))?;
    let result = (|| {
        let sample = appsink
            .try_pull_sample(gst::ClockTime::from_seconds(30))
            .ok_or_else(|| SourceError::Pipeline(format!("cannot decode {}", path.display())))?;
        frame_of(&sample, width, height)
            .map(|f| f.rgb)
            .ok_or_else(|| SourceError::Pipeline("decoded frame of an unexpected size".into()))
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn unpad_strips_row_padding() {
        // 2x2 RGB: rows of 6 bytes padded to 8.
        let padded = [1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0];
        assert_eq!(
            super::unpad(&padded, 2, 2).unwrap(),
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
        );
        assert!(super::unpad(&[0; 5], 2, 2).is_none());
    }
}
