//! Detection workers: live fragments of a stream are decoded, sampled under
//! a per-stream budget, run through a shared ONNX model on dedicated worker
//! threads, tracked and counted, and published as events onto a data stream.
//!
//! ```text
//! Engine::persist ─broadcast─▶ router task ─▶ Backlog (per stream, drops oldest fragments)
//!   decode thread: media::decode::LiveDecoder (keeps frames by budget) ─▶ WorkQueue (small, waits)
//!   worker threads: infer::Detector ─▶ detect::Analyzer ─▶ event JSON ─▶ publisher task ─▶ DataStreams::put
//! ```
//!
//! Ingest never waits for any of this: the broadcast drops for a lagging
//! router; a stream's decoder waits for inference (its frame queue is small,
//! so a frame is analysed soon after it is decoded), and when it falls
//! behind the oldest waiting fragments are dropped; each drop is counted. Events wait (bounded) for the publisher, which retries throttled
//! entries, so an event that was produced is not lost while the server runs.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kinema_detect::{Analyzer, AnalyzerConfig, Line, Observation, TrackerConfig};
use kinema_infer::{Detector, Layout, ModelSpec, Runtime};
use kinema_media::decode::{DecodedFrame, LiveDecoder};
use kinema_media::images::EncodedFrame;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, mpsc};

use crate::datastreams::{DataStreams, PutEntry};
use crate::{Engine, EngineError, LiveFragment, now_ms};
use kinema_core::sync::lock;

const META_DOC: &str = "detectors";
/// Fragments waiting for one stream's decoder before the oldest is dropped.
const DECODE_BACKLOG: usize = 4;
/// Events waiting for the publisher before workers wait.
const EVENT_BACKLOG: usize = 4096;
/// How long shutdown waits for queued events to be written.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// Records per PutRecords-style batch (the Kinesis limit).
const EVENT_BATCH: usize = kinema_core::aws::MAX_PUT_RECORDS;

/// Server-wide detection settings (the `[detection]` config section).
#[derive(Debug, Clone)]
pub struct DetectionConfig {
    /// ONNX Runtime's shared library (`libonnxruntime.so`).
    pub runtime_library: PathBuf,
    /// The model used when a detector names none (SSD layout).
    pub default_model: PathBuf,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    /// Inference worker threads shared by all streams.
    pub workers: usize,
    /// Decoded frames a stream may queue for inference; older ones drop.
    pub queue_frames: usize,
    /// The data stream events go to (created if missing).
    pub events_stream: String,
    pub events_shards: u32,
    /// Base URL for the replay links in events.
    pub public_url: String,
}

/// A line to count crossings of, in normalised image coordinates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineSettings {
    pub id: String,
    pub from: [f32; 2],
    pub to: [f32; 2],
    /// Half-width of the band around the line that counts as neither side.
    #[serde(default = "default_margin")]
    pub margin: f32,
}

/// One stream's detector (a `[[detectors]]` entry or a JSON API body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSettings {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// ONNX model file; the server's default model when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// `ssd` (default) or `yolo`.
    #[serde(default)]
    pub layout: LayoutName,
    /// The model's labels, one per output class column; the COCO lists of
    /// the layout when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Labels to detect, track and count.
    #[serde(default = "default_classes")]
    pub classes: Vec<String>,
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    #[serde(default = "default_iou")]
    pub nms_iou: f32,
    /// Budget: frames analysed per second of video.
    #[serde(default = "default_budget")]
    pub detections_per_second: f32,
    /// Matches a track needs before it counts.
    #[serde(default = "default_min_hits")]
    pub min_hits: u32,
    /// The count in view is repeated after this long unchanged (0: never).
    #[serde(default = "default_count_interval")]
    pub count_interval_ms: i64,
    /// Analysed frames a missed object still counts as in view.
    #[serde(default = "default_grace")]
    pub in_view_grace_frames: u32,
    #[serde(default)]
    pub lines: Vec<LineSettings>,
    /// Also publish one event per tracked detection per analysed frame.
    #[serde(default)]
    pub detection_events: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutName {
    #[default]
    Ssd,
    Yolo,
}

fn yes() -> bool {
    true
}
fn default_margin() -> f32 {
    0.01
}
fn default_classes() -> Vec<String> {
    vec!["bicycle".into()]
}
fn default_threshold() -> f32 {
    0.5
}
fn default_iou() -> f32 {
    0.5
}
fn default_budget() -> f32 {
    5.0
}
fn default_min_hits() -> u32 {
    2
}
fn default_count_interval() -> i64 {
    10_000
}
fn default_grace() -> u32 {
    1
}

impl DetectorSettings {
    fn validate(&self) -> Result<(), String> {
        let unit = |v: f32| (0.0..=1.0).contains(&v);
        if !unit(self.threshold) || !unit(self.nms_iou) {
            return Err("threshold and nms_iou must be within 0..1".into());
        }
        if !(self.detections_per_second > 0.0 && self.detections_per_second <= 240.0) {
            return Err("detections_per_second must be above 0 and at most 240".into());
        }
        if self.classes.is_empty() {
            return Err("classes must name at least one label".into());
        }
        if self.count_interval_ms < 0 {
            return Err("count_interval_ms must not be negative".into());
        }
        let mut ids = HashSet::new();
        for l in &self.lines {
            let coords = l.from.iter().chain(&l.to);
            if l.id.is_empty() || !ids.insert(&l.id) {
                return Err("every line needs a unique, non-empty id".into());
            }
            if coords.clone().any(|c| !c.is_finite()) || l.from == l.to {
                return Err(format!("line {:?} needs two distinct finite points", l.id));
            }
            if !(0.0..0.5).contains(&l.margin) {
                return Err(format!("line {:?}: margin must be within 0..0.5", l.id));
            }
        }
        Ok(())
    }
}

/// A detector's configuration and live figures.
#[derive(Debug, Clone, Serialize)]
pub struct DetectorStatus {
    pub stream: String,
    pub settings: DetectorSettings,
    /// `config` or `api`.
    pub origin: &'static str,
    /// `running`, `disabled` or `failed`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
}

#[derive(Default)]
struct Stats {
    fragments: AtomicU64,
    fragments_dropped: AtomicU64,
    sampled: AtomicU64,
    inferred: AtomicU64,
    dropped: AtomicU64,
    events: AtomicU64,
    infer_ns: AtomicU64,
    pipeline_ns: AtomicU64,
    in_view: AtomicU64,
    recent: Mutex<VecDeque<Instant>>,
}

/// One running stream detector.
struct Running {
    stream: String,
    settings: DetectorSettings,
    origin: &'static str,
    model_name: String,
    detector: Option<Arc<Detector>>,
    error: Mutex<Option<String>>,
    wanted: Vec<usize>,
    labels: Vec<String>,
    analyzer: Mutex<Analyzer>,
    stats: Stats,
    /// Fragment start (producer ms) to fragment number, for events.
    fragments: Mutex<BTreeMap<i64, u64>>,
    backlog: Backlog,
    sink: Arc<EventSink>,
    stop: AtomicBool,
}

struct Job {
    det: Arc<Running>,
    frame: DecodedFrame,
    decoded_at: Instant,
    decoded_at_ms: i64,
}

/// Persisted fragments waiting for one stream's decoder. When it is full
/// the oldest fragment is dropped (its frames count as dropped): this is
/// where a detector that cannot keep up sheds load.
#[derive(Default)]
struct Backlog {
    fragments: Mutex<VecDeque<LiveFragment>>,
    ready: Condvar,
}

impl Backlog {
    fn push(&self, frag: LiveFragment, stats: &Stats) {
        let mut q = lock(&self.fragments);
        while q.len() >= DECODE_BACKLOG {
            if let Some(old) = q.pop_front() {
                stats.fragments_dropped.fetch_add(1, Ordering::Relaxed);
                stats
                    .dropped
                    .fetch_add(u64::from(old.meta.frames), Ordering::Relaxed);
            }
        }
        q.push_back(frag);
        drop(q);
        self.ready.notify_one();
    }

    fn pop(&self, timeout: Duration) -> Option<LiveFragment> {
        let mut q = lock(&self.fragments);
        if q.is_empty() {
            q = self
                .ready
                .wait_timeout(q, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        q.pop_front()
    }
}

/// Decoded frames waiting for inference, per stream (a small queue its
/// decoder waits on when full); a stream is handed to one worker at a time
/// so its frames stay in order.
struct WorkQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
    space: Condvar,
    capacity: usize,
}

#[derive(Default)]
struct QueueState {
    queues: BTreeMap<String, VecDeque<Job>>,
    busy: HashSet<String>,
    /// The stream served last (round robin).
    last: Option<String>,
    stop: bool,
}

impl WorkQueue {
    /// Queues a decoded frame, waiting while its stream's queue is full:
    /// the wait reaches back to that stream's decoder thread (never to
    /// ingest), whose fragment backlog then drops its oldest fragments.
    fn push(&self, job: Job) {
        let mut s = lock(&self.state);
        loop {
            if s.stop || job.det.stop.load(Ordering::SeqCst) {
                return;
            }
            let len = s.queues.get(&job.det.stream).map_or(0, VecDeque::len);
            if len < self.capacity {
                break;
            }
            s = self
                .space
                .wait_timeout(s, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s.queues
            .entry(job.det.stream.clone())
            .or_default()
            .push_back(job);
        drop(s);
        self.ready.notify_all();
    }

    /// The next job of a stream no other worker holds; `None` at shutdown.
    fn pop(&self) -> Option<Job> {
        let mut s = lock(&self.state);
        loop {
            if s.stop {
                return None;
            }
            let after = s.last.clone().unwrap_or_default();
            let pick = {
                let free = |(k, q): (&String, &VecDeque<Job>)| {
                    (!q.is_empty() && !s.busy.contains(k)).then(|| k.clone())
                };
                s.queues
                    .range::<String, _>((
                        std::ops::Bound::Excluded(&after),
                        std::ops::Bound::Unbounded,
                    ))
                    .find_map(free)
                    .or_else(|| s.queues.iter().find_map(free))
            };
            if let Some(k) = pick {
                let job = s.queues.get_mut(&k).and_then(|q| q.pop_front());
                if let Some(job) = job {
                    s.busy.insert(k.clone());
                    s.last = Some(k);
                    return Some(job);
                }
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn done(&self, stream: &str) {
        let mut s = lock(&self.state);
        s.busy.remove(stream);
        drop(s);
        self.ready.notify_all();
        self.space.notify_all();
    }

    fn forget(&self, stream: &str) {
        let mut s = lock(&self.state);
        s.queues.remove(stream);
    }

    fn stop(&self) {
        lock(&self.state).stop = true;
        self.ready.notify_all();
        self.space.notify_all();
    }
}

struct Event {
    partition_key: String,
    data: Bytes,
}

struct Inner {
    engine: Engine,
    cfg: DetectionConfig,
    runtime: Mutex<Option<Result<Arc<Runtime>, String>>>,
    running: Mutex<BTreeMap<String, Arc<Running>>>,
    /// Serialises run-time changes (replace, delete, save).
    changes: tokio::sync::Mutex<()>,
    queue: Arc<WorkQueue>,
    sink: Arc<EventSink>,
    stop: tokio::sync::watch::Sender<bool>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The detectors of one server. Cheap to clone.
#[derive(Clone)]
pub struct Detectors {
    inner: Arc<Inner>,
}

impl Detectors {
    /// Starts the worker threads, the publisher and the detectors saved by
    /// earlier API calls and those of the configuration file.
    pub async fn start(
        engine: Engine,
        datastreams: DataStreams,
        cfg: DetectionConfig,
        configured: Vec<(String, DetectorSettings)>,
    ) -> Result<Detectors, EngineError> {
        for (stream, s) in &configured {
            s.validate()
                .map_err(|e| EngineError::InvalidArgument(format!("detector {stream}: {e}")))?;
        }
        let saved: Vec<(String, DetectorSettings)> =
            engine.store().load_meta(META_DOC)?.unwrap_or_default();
        let (events_tx, events_rx) = mpsc::channel(EVENT_BACKLOG);
        let queue = Arc::new(WorkQueue {
            state: Mutex::default(),
            ready: Condvar::new(),
            space: Condvar::new(),
            capacity: cfg.queue_frames.max(1),
        });
        let workers = cfg.workers.max(1);
        let cfg_public_url = cfg.public_url.clone();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let inner = Arc::new(Inner {
            engine: engine.clone(),
            cfg,
            runtime: Mutex::new(None),
            running: Mutex::default(),
            changes: tokio::sync::Mutex::new(()),
            queue: queue.clone(),
            sink: Arc::new(EventSink {
                events: events_tx,
                public_url: cfg_public_url,
            }),
            stop: stop_tx,
            threads: Mutex::default(),
            tasks: Mutex::default(),
        });
        let this = Detectors { inner };
        for i in 0..workers {
            let t = std::thread::Builder::new()
                .name(format!("kinema-infer-{i}"))
                .spawn({
                    let queue = queue.clone();
                    move || worker(&queue)
                })
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            lock(&this.inner.threads).push(t);
        }
        let publisher = tokio::spawn(publish(
            datastreams,
            this.inner.cfg.events_stream.clone(),
            this.inner.cfg.events_shards,
            events_rx,
            stop_rx,
        ));
        let router = tokio::spawn(route(engine.live_fragments(), Arc::downgrade(&this.inner)));
        lock(&this.inner.tasks).extend([publisher]);
        drop(router);
        for (stream, s) in saved {
            if !configured.iter().any(|(c, _)| *c == stream) {
                this.launch(&stream, s, "api");
            }
        }
        for (stream, s) in configured {
            this.launch(&stream, s, "config");
        }
        Ok(this)
    }

    pub fn events_stream(&self) -> &str {
        &self.inner.cfg.events_stream
    }

    fn runtime(&self) -> Result<Arc<Runtime>, String> {
        let mut rt = lock(&self.inner.runtime);
        rt.get_or_insert_with(|| {
            Runtime::load(&self.inner.cfg.runtime_library).map_err(|e| e.to_string())
        })
        .clone()
    }

    /// Starts (or replaces) one stream's detector. A detector whose model
    /// cannot be loaded stays listed as `failed` with the reason.
    fn launch(
        &self,
        stream: &str,
        settings: DetectorSettings,
        origin: &'static str,
    ) -> Arc<Running> {
        self.stop_one(stream);
        let layout = match settings.layout {
            LayoutName::Ssd => Layout::Ssd,
            LayoutName::Yolo => Layout::Yolo,
        };
        let path = settings
            .model
            .clone()
            .unwrap_or_else(|| self.inner.cfg.default_model.clone());
        let model_name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let labels = settings.labels.clone().unwrap_or_else(|| match layout {
            Layout::Ssd => kinema_detect::coco::ssd_labels(),
            Layout::Yolo => kinema_detect::coco::yolo_labels(),
        });
        let mut error = None;
        let wanted: Vec<usize> = settings
            .classes
            .iter()
            .filter_map(|c| {
                let i = labels.iter().position(|l| l == c);
                if i.is_none() {
                    error = Some(format!("class {c:?} is not among the model's labels"));
                }
                i
            })
            .collect();
        let detector = if !settings.enabled || error.is_some() {
            None
        } else {
            match self.runtime().and_then(|rt| {
                rt.detector(&ModelSpec {
                    path,
                    layout,
                    intra_threads: self.inner.cfg.intra_threads,
                })
                .map_err(|e| e.to_string())
            }) {
                Ok(d) if d.classes() != labels.len() => {
                    error = Some(format!(
                        "the model has {} classes but {} labels",
                        d.classes(),
                        labels.len()
                    ));
                    None
                }
                Ok(d) => Some(d),
                Err(e) => {
                    error = Some(e);
                    None
                }
            }
        };
        if let Some(e) = &error {
            tracing::warn!(stream, error = %e, "detector not started");
        }
        let analyzer = Analyzer::new(AnalyzerConfig {
            tracker: TrackerConfig {
                min_hits: settings.min_hits.max(1),
                ..TrackerConfig::default()
            },
            lines: settings
                .lines
                .iter()
                .map(|l| Line {
                    id: l.id.clone(),
                    a: (l.from[0], l.from[1]),
                    b: (l.to[0], l.to[1]),
                    margin: l.margin,
                })
                .collect(),
            count_interval_ms: settings.count_interval_ms,
            detections: settings.detection_events,
            in_view_grace: settings.in_view_grace_frames,
        });
        let run = Arc::new(Running {
            stream: stream.to_string(),
            origin,
            model_name,
            backlog: Backlog::default(),
            detector,
            error: Mutex::new(error),
            wanted,
            labels,
            analyzer: Mutex::new(analyzer),
            stats: Stats::default(),
            fragments: Mutex::default(),
            sink: self.inner.sink.clone(),
            stop: AtomicBool::new(false),
            settings,
        });
        if run.detector.is_some() {
            let det = run.clone();
            let queue = self.inner.queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("kinema-decode-{stream}"))
                .spawn(move || decode_loop(det, queue));
            if let Err(e) = spawned {
                *lock(&run.error) = Some(e.to_string());
            }
        }
        lock(&self.inner.running).insert(stream.to_string(), run.clone());
        run
    }

    fn stop_one(&self, stream: &str) -> Option<Arc<Running>> {
        let old = lock(&self.inner.running).remove(stream);
        if let Some(old) = &old {
            old.stop.store(true, Ordering::SeqCst);
            self.inner.queue.forget(stream);
        }
        old
    }

    /// Sets a stream's detector at run time and saves it.
    pub async fn set(
        &self,
        stream: &str,
        settings: DetectorSettings,
    ) -> Result<DetectorStatus, EngineError> {
        settings.validate().map_err(EngineError::InvalidArgument)?;
        if !crate::streams::valid_name(stream) {
            return Err(EngineError::InvalidArgument(format!(
                "invalid stream name {stream:?}"
            )));
        }
        let _changes = self.inner.changes.lock().await;
        // Loading a model takes a while: not on the async runtime's threads.
        let this = self.clone();
        let name = stream.to_string();
        let run = tokio::task::spawn_blocking(move || this.launch(&name, settings, "api"))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        self.save().await?;
        Ok(status(&run))
    }

    pub async fn delete(&self, stream: &str) -> Result<DetectorStatus, EngineError> {
        let _changes = self.inner.changes.lock().await;
        let old = self.stop_one(stream).ok_or_else(|| {
            EngineError::ResourceNotFound(format!("no detector for stream {stream}"))
        })?;
        self.save().await?;
        Ok(status(&old))
    }

    pub fn get(&self, stream: &str) -> Result<DetectorStatus, EngineError> {
        lock(&self.inner.running)
            .get(stream)
            .map(|r| status(r))
            .ok_or_else(|| {
                EngineError::ResourceNotFound(format!("no detector for stream {stream}"))
            })
    }

    pub fn list(&self) -> Vec<DetectorStatus> {
        lock(&self.inner.running)
            .values()
            .map(|r| status(r))
            .collect()
    }

    async fn save(&self) -> Result<(), EngineError> {
        let saved: Vec<(String, DetectorSettings)> = lock(&self.inner.running)
            .values()
            .filter(|r| r.origin == "api")
            .map(|r| (r.stream.clone(), r.settings.clone()))
            .collect();
        self.inner
            .engine
            .store()
            .save_meta(META_DOC, &saved)
            .await?;
        Ok(())
    }

    /// Stops the decoders and workers, then publishes every event already
    /// produced before returning.
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Running>> = std::mem::take(&mut *lock(&self.inner.running))
            .into_values()
            .collect();
        for r in &all {
            r.stop.store(true, Ordering::SeqCst);
        }
        self.inner.queue.stop();
        // The publisher drains what is queued (for a bounded time) and
        // ends, which also frees any worker waiting to hand it an event.
        let _ = self.inner.stop.send(true);
        let threads = std::mem::take(&mut *lock(&self.inner.threads));
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

fn status(r: &Running) -> DetectorStatus {
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
    DetectorStatus {
        stream: r.stream.clone(),
        settings: r.settings.clone(),
        origin: r.origin,
        state: if !r.settings.enabled {
            "disabled"
        } else if error.is_some() {
            "failed"
        } else {
            "running"
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
    }
}

/// How many recent inference times are kept for the fps figure.
const RECENT: usize = 64;
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

/// Hands each persisted fragment to its stream's decoder, dropping it when
/// that decoder is behind.
async fn route(mut rx: broadcast::Receiver<LiveFragment>, inner: std::sync::Weak<Inner>) {
    loop {
        let frag = match rx.recv().await {
            Ok(f) => f,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    fragments = n,
                    "detection fell behind ingest; fragments skipped"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        let det = lock(&inner.running).get(&frag.stream).cloned();
        let Some(det) = det.filter(|d| d.detector.is_some()) else {
            continue;
        };
        det.stats.fragments.fetch_add(1, Ordering::Relaxed);
        det.backlog.push(frag, &det.stats);
    }
}

/// The budget: keeps frames so that on average one is kept every
/// `interval` of media time (a frame up to half an interval early counts,
/// so 30 a second of 29.97 fps video keeps every frame); a jump in time
/// (a new producer session, a gap) starts the schedule again.
#[derive(Default)]
struct Sampler {
    next_due: Option<i64>,
    last: Option<i64>,
}

impl Sampler {
    fn keep(&mut self, pts: i64, interval: i64) -> bool {
        let restart = match (self.next_due, self.last) {
            (Some(next), Some(last)) => pts < last || pts > next.saturating_add(interval),
            _ => true,
        };
        let due = restart
            || self
                .next_due
                .is_some_and(|n| pts.saturating_add(interval / 2) > n);
        if due {
            self.next_due = Some(if restart {
                pts.saturating_add(interval)
            } else {
                self.next_due.unwrap_or(pts).saturating_add(interval)
            });
        }
        self.last = Some(pts);
        due
    }
}

/// One stream's decoder thread: fragments in, sampled RGB frames out to the
/// work queue. A new codec configuration starts a new decoder.
fn decode_loop(det: Arc<Running>, queue: Arc<WorkQueue>) {
    let Some(detector) = det.detector.clone() else {
        return;
    };
    let (w, h) = detector.input_size();
    let interval_ns = (1e9 / f64::from(det.settings.detections_per_second)) as i64;
    let mut decoder: Option<LiveDecoder> = None;
    let sampler: Arc<Mutex<Sampler>> = Arc::default();
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
                    decoded_at_ms: now_ms(),
                });
            });
            match LiveDecoder::start(codec, config, w, h, keep, on_frame) {
                Ok(d) => decoder = Some(d),
                Err(e) => {
                    *lock(&det.error) = Some(e.to_string());
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
                tracing::warn!(stream = %det.stream, error = %e, "decoder failed; restarting at the next fragment");
                decoder = None;
                break;
            }
        }
    }
}

/// An inference worker: takes frames from the queue until shutdown.
fn worker(queue: &WorkQueue) {
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
            *lock(&det.error) = Some(e.to_string());
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
    let ctx = EventContext {
        det,
        ts_ms,
        fragment,
        decoded_at_ms: job.decoded_at_ms,
    };
    let events: Vec<Event> = observations.iter().map(|o| ctx.event(o)).collect();
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

/// What events need besides the observation.
struct EventSink {
    events: mpsc::Sender<Event>,
    public_url: String,
}

struct EventContext<'a> {
    det: &'a Running,
    ts_ms: i64,
    fragment: Option<u64>,
    decoded_at_ms: i64,
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl EventContext<'_> {
    fn label(&self, class: usize) -> String {
        self.det.labels.get(class).cloned().unwrap_or_default()
    }

    /// The event record of one observation (schema:
    /// `docs/detection-event.schema.json`).
    fn event(&self, o: &Observation) -> Event {
        let det = self.det;
        let (kind, subject, body) = match o {
            Observation::Count { in_view, previous } => (
                "count",
                String::new(),
                serde_json::json!({ "count": { "in_view": in_view, "previous": previous } }),
            ),
            Observation::Crossing {
                crossing,
                class,
                total_a_to_b,
                total_b_to_a,
            } => (
                "crossing",
                format!("{}/{}", crossing.line, crossing.track),
                serde_json::json!({
                    "class": self.label(*class),
                    "crossing": {
                        "line": crossing.line,
                        "direction": crossing.direction.as_str(),
                        "track": crossing.track,
                        "total_a_to_b": total_a_to_b,
                        "total_b_to_a": total_b_to_a,
                    }
                }),
            ),
            Observation::Detection {
                track,
                class,
                score,
                bbox,
            } => (
                "detection",
                track.to_string(),
                serde_json::json!({
                    "class": self.label(*class),
                    "detection": {
                        "track": track,
                        "score": score,
                        "box": [bbox.x0, bbox.y0, bbox.x1, bbox.y1],
                    }
                }),
            ),
        };
        // The same frame, kind and subject always give the same id, so a
        // consumer can drop repeats whatever their cause.
        let id = {
            let mut h = Sha256::new();
            h.update(det.stream.as_bytes());
            h.update([0]);
            h.update(self.ts_ms.to_be_bytes());
            h.update(kind.as_bytes());
            h.update([0]);
            h.update(subject.as_bytes());
            let d = hex::encode(&h.finalize()[..16]);
            format!(
                "{}-{}-{}-{}-{}",
                &d[..8],
                &d[8..12],
                &d[12..16],
                &d[16..20],
                &d[20..]
            )
        };
        let mut event = serde_json::json!({
            "id": id,
            "kind": kind,
            "stream": det.stream,
            "producer_timestamp": rfc3339(self.ts_ms),
            "producer_timestamp_ms": self.ts_ms,
            "fragment_number": self.fragment.map(crate::fragment_number_string),
            "model": det.model_name,
            "threshold": det.settings.threshold,
            "classes": det.settings.classes,
            "decoded_at_ms": self.decoded_at_ms,
            "replay_url": format!(
                "{}/v1/replay/{}?start_ms={}",
                det.sink.public_url.trim_end_matches('/'),
                det.stream,
                self.ts_ms
            ),
        });
        if let (Some(e), Some(b)) = (event.as_object_mut(), body.as_object()) {
            e.extend(b.clone());
        }
        Event {
            partition_key: det.stream.clone(),
            data: Bytes::from(event.to_string()),
        }
    }
}

/// Writes events onto the data stream in batches, creating the stream if
/// missing and retrying throttled entries, until told to stop (then it
/// drains what is queued first).
async fn publish(
    ds: DataStreams,
    name: String,
    shards: u32,
    mut rx: mpsc::Receiver<Event>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut batch: Vec<Event> = Vec::new();
    loop {
        if *stop.borrow() {
            break;
        }
        if batch.is_empty() {
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => batch.push(e),
                    None => return,
                },
                _ = stop.changed() => break,
            }
        }
        while batch.len() < EVENT_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        if !put_batch(&ds, &name, shards, &mut batch).await {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => {}
            }
        }
    }
    // Shutting down: write what is queued, for a bounded time.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
    rx.close();
    while let Ok(e) = rx.try_recv() {
        batch.push(e);
    }
    while !batch.is_empty() && tokio::time::Instant::now() < deadline {
        if !put_batch(&ds, &name, shards, &mut batch).await {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if !batch.is_empty() {
        tracing::error!(
            events = batch.len(),
            "detection events not published at shutdown"
        );
    }
}

/// One attempt at writing `batch`; what was written leaves it. Returns
/// false when nothing could be written (back off before retrying).
async fn put_batch(ds: &DataStreams, name: &str, shards: u32, batch: &mut Vec<Event>) -> bool {
    let take = batch.len().min(EVENT_BATCH);
    let entries: Vec<PutEntry> = batch[..take]
        .iter()
        .map(|e| PutEntry {
            partition_key: e.partition_key.clone(),
            explicit_hash_key: None,
            data: e.data.clone(),
        })
        .collect();
    match ds.put(name, entries).await {
        Ok(outcomes) => {
            // Keep the throttled entries, in order, for the next attempt.
            let mut i = 0;
            let mut written = 0;
            batch.retain(|_| {
                let keep = i >= take || outcomes.get(i).is_none_or(|o| o.is_none());
                if !keep {
                    written += 1;
                }
                i += 1;
                keep
            });
            if written == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            true
        }
        Err(EngineError::ResourceNotFound(_)) => match ds.create(name, shards.max(1)).await {
            Ok(()) | Err(EngineError::ResourceInUse(_)) => {
                tracing::info!(stream = name, "created the detection events data stream");
                true
            }
            Err(e) => {
                tracing::error!(stream = name, error = %e, "cannot create the events data stream");
                false
            }
        },
        Err(e) => {
            tracing::error!(stream = name, error = %e, "publishing detection events failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Sampler;

    /// Kept frames of `n` frames at 29.97 fps (millisecond times).
    fn kept(per_second: f64, n: i64) -> usize {
        let interval = (1e9 / per_second) as i64;
        let mut s = Sampler::default();
        (0..n)
            .filter(|i| {
                s.keep(
                    i * 1_000_000_000 * 1001 / 30_000 / 1_000_000 * 1_000_000,
                    interval,
                )
            })
            .count()
    }

    #[test]
    fn the_budget_keeps_the_asked_rate_on_average() {
        assert_eq!(
            kept(30.0, 300),
            300,
            "30 a second of 29.97 fps: every frame"
        );
        let ten = kept(10.0, 300);
        assert!((99..=101).contains(&ten), "{ten}");
        let five = kept(5.0, 300);
        assert!((49..=51).contains(&five), "{five}");
    }

    #[test]
    fn a_jump_in_time_restarts_the_schedule() {
        let mut s = Sampler::default();
        let iv = 200_000_000;
        assert!(s.keep(10_000_000_000, iv));
        assert!(!s.keep(10_033_000_000, iv));
        // Back in time (a new session): kept at once.
        assert!(s.keep(1_000_000_000, iv));
        // Far ahead (a gap): kept at once, then the schedule follows it.
        assert!(s.keep(50_000_000_000, iv));
        assert!(!s.keep(50_100_000_000, iv));
        assert!(s.keep(50_200_000_000, iv));
    }
}
