//! The threads of detection: one decoder per stream (fragments in, frames
//! kept by the budget out) and the shared inference workers (model,
//! tracker and counters, events out).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kinema_core::sync::lock;
use kinema_detect::{BudgetSampler, DetectionEvent, EventSource, FrameInfo};
use kinema_media::decode::{DecodedFrame, LiveDecoder};
use kinema_media::images::EncodedFrame;

use super::Running;
use super::publish::Event;
use super::queues::{Job, WorkQueue};
use super::status::{DetectorFailure, RECENT};

/// One stream's decoder thread: fragments in, sampled RGB frames out to the
/// work queue. A new codec configuration starts a new decoder.
pub(super) fn decode_loop(det: Arc<Running>, queue: Arc<WorkQueue>) {
    let Some(detector) = det.detector.clone() else {
        return;
    };
    let (w, h) = detector.input_size();
    let interval_ns = kinema_detect::budget::interval_ns(det.settings.detections_per_second);
    let mut decoder: Option<LiveDecoder> = None;
    let sampler: Arc<Mutex<BudgetSampler>> = Arc::default();
    while !det.stop.load(Ordering::SeqCst) {
        let Some(frag) = det.backlog.pop(Duration::from_millis(200)) else {
            continue;
        };
        let parsed = match kinema_remux::parse_fragment(&frag.object) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(stream = %det.stream, error = %e, "fragment not decodable for detection");
                continue;
            }
        };
        {
            let mut f = lock(&det.fragments);
            f.insert(frag.meta.producer_ms, frag.meta.number);
            while f.len() > 64 {
                f.pop_first();
            }
        }
        let codec = parsed.track.codec.matroska_id();
        let config = &parsed.track.config;
        if !decoder.as_ref().is_some_and(|d| d.accepts(codec, config)) {
            decoder = None;
            let keep_state = sampler.clone();
            let keep_det = det.clone();
            let keep = Arc::new(move |pts: i64| {
                let due = lock(&keep_state).keep(pts, interval_ns);
                if due {
                    keep_det.stats.sampled.fetch_add(1, Ordering::Relaxed);
                }
                due
            });
            let frame_det = det.clone();
            let frame_queue = queue.clone();
            let on_frame = Arc::new(move |frame: DecodedFrame| {
                frame_queue.push(Job {
                    det: frame_det.clone(),
                    frame,
                    decoded_at: Instant::now(),
                    decoded_at_ms: frame_det.sink.clock.now_ms(),
                });
            });
            match LiveDecoder::start(codec, config, w, h, keep, on_frame) {
                Ok(d) => decoder = Some(d),
                Err(e) => {
                    *lock(&det.error) = Some(DetectorFailure::Decoder(e.to_string()));
                    tracing::warn!(stream = %det.stream, error = %e, "decoder failed to start");
                    continue;
                }
            }
        }
        let base_ns = frag.meta.producer_ms.saturating_mul(1_000_000);
        for s in &parsed.samples {
            let frame = EncodedFrame {
                pts_ns: base_ns.saturating_add(s.offset_ns),
                keyframe: s.keyframe,
                data: s.data.clone(),
            };
            if let Some(d) = &decoder
                && let Err(e) = d.push(&frame, &|| det.stop.load(Ordering::SeqCst))
            {
                // Cancelled by a stop (shutdown, a replaced detector): no failure.
                if !det.stop.load(Ordering::SeqCst) {
                    tracing::warn!(stream = %det.stream, error = %e, "decoder failed; restarting at the next fragment");
                }
                decoder = None;
                break;
            }
        }
    }
}

/// An inference worker: takes frames from the queue until shutdown.
pub(super) fn worker(queue: &WorkQueue) {
    while let Some(job) = queue.pop() {
        let stream = job.det.stream.clone();
        if !job.det.stop.load(Ordering::SeqCst) {
            analyse(job);
        }
        queue.done(&stream);
    }
}

fn analyse(job: Job) {
    let det = &job.det;
    let Some(detector) = &det.detector else {
        return;
    };
    let s = &det.settings;
    let inference = match detector.detect(&job.frame.rgb, &det.wanted, s.threshold, s.nms_iou) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(stream = %det.stream, error = %e, "inference failed");
            *lock(&det.error) = Some(DetectorFailure::Inference(e.to_string()));
            return;
        }
    };
    // A failure of an earlier frame (a decoder restart, say) is over.
    lock(&det.error).take();
    let ts_ms = job.frame.pts_ns.div_euclid(1_000_000);
    let observations = lock(&det.analyzer).observe(ts_ms, &inference.detections);
    let in_view = lock(&det.analyzer).in_view();
    let fragment = lock(&det.fragments)
        .range(..=ts_ms)
        .next_back()
        .map(|(_, n)| *n);
    let stats = &det.stats;
    stats
        .infer_ns
        .fetch_add(inference.run_time.as_nanos() as u64, Ordering::Relaxed);
    stats.in_view.store(in_view as u64, Ordering::Relaxed);
    {
        let mut recent = lock(&stats.recent);
        recent.push_back(Instant::now());
        while recent.len() > RECENT {
            recent.pop_front();
        }
    }
    let source = EventSource {
        stream: &det.stream,
        model: &det.model_name,
        threshold: s.threshold,
        classes: &s.classes,
        labels: &det.labels,
        public_url: &det.sink.public_url,
    };
    let frame = FrameInfo {
        ts_ms,
        fragment_number: fragment,
        decoded_at_ms: job.decoded_at_ms,
    };
    let events: Vec<Event> = observations
        .iter()
        .map(|o| Event {
            partition_key: det.stream.clone(),
            data: DetectionEvent::new(&source, frame, o).to_json().into(),
        })
        .collect();
    stats.pipeline_ns.fetch_add(
        job.decoded_at.elapsed().as_nanos() as u64,
        Ordering::Relaxed,
    );
    stats.inferred.fetch_add(1, Ordering::Relaxed);
    for e in events {
        stats.events.fetch_add(1, Ordering::Relaxed);
        // Waits (bounded) for the publisher: an event once made is kept.
        if det.sink.events.blocking_send(e).is_err() {
            return;
        }
    }
}
