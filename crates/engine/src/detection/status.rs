//! What a detector reports: its state, its failure, and live figures.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kinema_core::sync::lock;
use serde::Serialize;

use super::{DetectorSettings, Running};

/// Where a detector's settings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The configuration file (not saved by the API).
    Config,
    /// `PUT /v1/detectors/{stream}` (saved in the `detectors` document).
    Api,
}

/// Whether a detector analyses frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorState {
    /// Video arrives and is analysed.
    Running,
    /// Ready, but its stream has had no video for [`IDLE_AFTER_MS`] (or
    /// none since the detector started): nothing is being analysed.
    Idle,
    Disabled,
    Failed,
}

/// A detector whose stream has sent no fragment for this long is idle.
/// Longer than any fragment the server accepts (`max_fragment_seconds`),
/// so a camera with a long GOP does not flap between the two states.
pub const IDLE_AFTER_MS: i64 = 15_000;

/// Why a detector is not analysing frames (the status's `error`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DetectorFailure {
    #[error("class {0:?} is not among the model's labels")]
    UnknownClass(String),
    #[error("the model has {model} classes but {labels} labels")]
    LabelCount { model: usize, labels: usize },
    /// ONNX Runtime's library or the model could not be loaded.
    #[error("{0}")]
    Model(String),
    #[error("{0}")]
    Decoder(String),
    #[error("{0}")]
    Inference(String),
    #[error("cannot start the decoder thread: {0}")]
    Thread(String),
}

fn as_text<S: serde::Serializer>(e: &Option<DetectorFailure>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(e) => s.collect_str(e),
        None => s.serialize_none(),
    }
}

/// A detector's configuration and live figures.
#[derive(Debug, Clone, Serialize)]
pub struct DetectorStatus {
    pub stream: String,
    pub settings: DetectorSettings,
    pub origin: Origin,
    pub state: DetectorState,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_text")]
    pub error: Option<DetectorFailure>,
    pub model: String,
    pub fragments: u64,
    pub fragments_dropped: u64,
    pub frames_sampled: u64,
    pub frames_inferred: u64,
    pub frames_dropped: u64,
    pub events: u64,
    /// Frames analysed per second over the last few seconds.
    pub achieved_fps: f64,
    /// Mean time inside ONNX Runtime per analysed frame, ms.
    pub mean_inference_ms: f64,
    /// Mean time from a frame being decoded to its analysis being done, ms.
    pub mean_pipeline_ms: f64,
    pub in_view: usize,
    /// When the stream's last fragment reached the detector (Unix ms).
    pub last_video_ms: Option<i64>,
}

#[derive(Default)]
pub(super) struct Stats {
    pub(super) fragments: AtomicU64,
    pub(super) fragments_dropped: AtomicU64,
    pub(super) sampled: AtomicU64,
    pub(super) inferred: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) events: AtomicU64,
    pub(super) infer_ns: AtomicU64,
    pub(super) pipeline_ns: AtomicU64,
    pub(super) in_view: AtomicU64,
    /// Unix ms of the last fragment handed to the decoder; 0: none yet.
    pub(super) last_video_ms: AtomicI64,
    pub(super) recent: Mutex<VecDeque<Instant>>,
}

pub(super) fn status(r: &Running) -> DetectorStatus {
    let s = &r.stats;
    let inferred = s.inferred.load(Ordering::Relaxed);
    let mean = |total: &AtomicU64| {
        if inferred == 0 {
            0.0
        } else {
            total.load(Ordering::Relaxed) as f64 / inferred as f64 / 1e6
        }
    };
    let error = lock(&r.error).clone();
    let last_video_ms = Some(s.last_video_ms.load(Ordering::Relaxed)).filter(|t| *t > 0);
    let now_ms = r.sink.clock.now_ms();
    DetectorStatus {
        stream: r.stream.clone(),
        settings: r.settings.clone(),
        origin: r.origin,
        state: if !r.settings.enabled {
            DetectorState::Disabled
        } else if error.is_some() {
            DetectorState::Failed
        } else if last_video_ms.is_none_or(|t| now_ms.saturating_sub(t) > IDLE_AFTER_MS) {
            DetectorState::Idle
        } else {
            DetectorState::Running
        },
        error,
        model: r.model_name.clone(),
        fragments: s.fragments.load(Ordering::Relaxed),
        fragments_dropped: s.fragments_dropped.load(Ordering::Relaxed),
        frames_sampled: s.sampled.load(Ordering::Relaxed),
        frames_inferred: inferred,
        frames_dropped: s.dropped.load(Ordering::Relaxed),
        events: s.events.load(Ordering::Relaxed),
        achieved_fps: achieved_fps(&lock(&s.recent)),
        mean_inference_ms: mean(&s.infer_ns),
        mean_pipeline_ms: mean(&s.pipeline_ns),
        in_view: s.in_view.load(Ordering::Relaxed) as usize,
        last_video_ms,
    }
}

/// How many recent inference times are kept for the fps figure.
pub(super) const RECENT: usize = 64;
/// Older inferences than this do not count towards the fps figure.
const RECENT_WINDOW: Duration = Duration::from_secs(5);

fn achieved_fps(recent: &VecDeque<Instant>) -> f64 {
    let now = Instant::now();
    let fresh: Vec<&Instant> = recent
        .iter()
        .filter(|t| now.duration_since(**t) <= RECENT_WINDOW)
        .collect();
    match (fresh.first(), fresh.len()) {
        (Some(first), n) if n >= 2 => {
            let span = now.duration_since(**first).as_secs_f64();
            if span > 0.0 {
                (n - 1) as f64 / span
            } else {
                0.0
            }
        }
        _ => 0.0,
    }
}
