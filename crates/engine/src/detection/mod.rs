//! Detection workers: live fragments of a stream are decoded, sampled under
//! a per-stream budget, run through a shared ONNX model on dedicated worker
//! threads, tracked and counted, and published as events onto a data stream.
//!
//! ```text
//! Engine::persist ─broadcast─▶ router task ─▶ Backlog (per stream, drops oldest fragments)
//!   decode thread: media::decode::LiveDecoder (keeps frames by budget) ─▶ WorkQueue (small, waits)
//!   worker threads: Model (ONNX Runtime) ─▶ detect::Analyzer ─▶ event JSON ─▶ publisher task ─▶ DataStreams::put
//! ```
//!
//! Ingest never waits for any of this: the broadcast drops for a lagging
//! router; a stream's decoder waits for inference (its frame queue is small,
//! so a frame is analysed soon after it is decoded), and when it falls
//! behind the oldest waiting fragments are dropped; each drop is counted.
//! Events wait (bounded) for the publisher, which retries throttled
//! entries, so an event that was produced is not lost while the server runs.
//!
//! Here: the `Detectors` handle (start, run-time changes, shutdown) and the
//! router. `model` (the model seam), `settings` (validation), `queues`
//! (backlog and work queue),
//! `pipeline` (decoder and worker threads), `publish` (the publisher) and
//! `status` (states, failures, figures) hold the rest; the budget sampler
//! and the event record are sans-IO, in `kinema-detect`.

mod model;
mod pipeline;
mod publish;
mod queues;
mod settings;
mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kinema_core::sync::lock;
use kinema_detect::Analyzer;
use kinema_infer::{Layout, ModelSpec};
use tokio::sync::{broadcast, mpsc};

pub use kinema_infer::Inference;
pub use model::{Model, Models, OnnxModels};
pub use settings::{DetectorSettings, LayoutName, LineSettings, SettingsError};
pub use status::{DetectorFailure, DetectorState, DetectorStatus, Origin};

use crate::datastreams::DataStreams;
use crate::{Engine, EngineError, LiveFragment};
use publish::{EVENT_BACKLOG, EventSink, publish};
use queues::{Backlog, WorkQueue};
use status::{Stats, status};

const META_DOC: &str = "detectors";

/// The channel that archives the events stream: gzipped JSON lines in
/// `bucket`, written `freshness_s` after the oldest waiting event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsChannel {
    pub name: String,
    pub bucket: String,
    pub freshness_s: u32,
}

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
    /// A queue to make on the events stream (from its first record), for
    /// workers that take events and acknowledge them.
    pub events_queue: Option<String>,
    /// A channel to make on the events stream, archiving every event.
    pub events_channel: Option<EventsChannel>,
    /// Base URL for the replay links in events.
    pub public_url: String,
    /// The folder models named through the API must lie in (a relative
    /// name is taken inside it). Detectors of the configuration file may
    /// name any model.
    pub models_dir: PathBuf,
    /// Detectors at most (each has a decoder thread).
    pub max_detectors: usize,
}

/// One running stream detector.
struct Running {
    stream: String,
    settings: DetectorSettings,
    origin: Origin,
    model_name: String,
    detector: Option<Arc<dyn Model>>,
    error: Mutex<Option<DetectorFailure>>,
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

struct Inner {
    engine: Engine,
    cfg: DetectionConfig,
    models: Arc<dyn Models>,
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
    /// earlier API calls and those of the configuration file, with models
    /// from ONNX Runtime.
    pub async fn start(
        engine: Engine,
        datastreams: DataStreams,
        cfg: DetectionConfig,
        configured: Vec<(String, DetectorSettings)>,
    ) -> Result<Detectors, EngineError> {
        let models = Arc::new(OnnxModels::new(cfg.runtime_library.clone()));
        Detectors::start_with(engine, datastreams, cfg, configured, models).await
    }

    /// [`Detectors::start`] with models from `models`.
    pub async fn start_with(
        engine: Engine,
        datastreams: DataStreams,
        cfg: DetectionConfig,
        configured: Vec<(String, DetectorSettings)>,
        models: Arc<dyn Models>,
    ) -> Result<Detectors, EngineError> {
        for (stream, s) in &configured {
            s.validate()
                .map_err(|e| EngineError::InvalidArgument(format!("detector {stream}: {e}")))?;
        }
        let saved: Vec<(String, DetectorSettings)> =
            engine.store().load_meta(META_DOC)?.unwrap_or_default();
        let (events_tx, events_rx) = mpsc::channel(EVENT_BACKLOG);
        let queue = Arc::new(WorkQueue::new(cfg.queue_frames));
        let workers = cfg.workers.max(1);
        let cfg_public_url = cfg.public_url.clone();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let inner = Arc::new(Inner {
            engine: engine.clone(),
            cfg,
            models,
            running: Mutex::default(),
            changes: tokio::sync::Mutex::new(()),
            queue: queue.clone(),
            sink: Arc::new(EventSink {
                events: events_tx,
                public_url: cfg_public_url,
                clock: engine.clock(),
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
                    move || pipeline::worker(&queue)
                })
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            lock(&this.inner.threads).push(t);
        }
        let publisher = tokio::spawn(publish(
            datastreams,
            this.inner.cfg.clone(),
            events_rx,
            stop_rx,
        ));
        let router = tokio::spawn(route(engine.live_fragments(), Arc::downgrade(&this.inner)));
        lock(&this.inner.tasks).extend([publisher]);
        drop(router);
        for (stream, s) in saved {
            if configured.iter().any(|(c, _)| *c == stream) {
                continue;
            }
            // A detector outlives neither its stream nor the rules for its
            // model.
            if engine.describe_stream(Some(&stream), None).is_err() {
                tracing::warn!(%stream, "saved detector not started: its stream is gone");
                continue;
            }
            if let Err(e) = this.api_model(&s) {
                tracing::warn!(%stream, error = %e, "saved detector not started");
                continue;
            }
            this.launch(&stream, s, Origin::Api);
        }
        for (stream, s) in configured {
            this.launch(&stream, s, Origin::Config);
        }
        Ok(this)
    }

    pub fn events_stream(&self) -> &str {
        &self.inner.cfg.events_stream
    }

    /// Starts (or replaces) one stream's detector. A detector whose model
    /// cannot be loaded stays listed as `failed` with the reason.
    fn launch(&self, stream: &str, settings: DetectorSettings, origin: Origin) -> Arc<Running> {
        self.stop_one(stream);
        let layout = settings.layout();
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
                    error = Some(DetectorFailure::UnknownClass(c.clone()));
                }
                i
            })
            .collect();
        let detector = if !settings.enabled || error.is_some() {
            None
        } else {
            match self.inner.models.load(&ModelSpec {
                path,
                layout,
                intra_threads: self.inner.cfg.intra_threads,
            }) {
                Ok(d) if d.classes() != labels.len() => {
                    error = Some(DetectorFailure::LabelCount {
                        model: d.classes(),
                        labels: labels.len(),
                    });
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
        let analyzer = Analyzer::new(settings.analyzer_config());
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
                .spawn(move || pipeline::decode_loop(det, queue));
            if let Err(e) = spawned {
                *lock(&run.error) = Some(DetectorFailure::Thread(e.to_string()));
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
        settings
            .validate()
            .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        if !crate::streams::valid_name(stream) {
            return Err(EngineError::InvalidArgument(format!(
                "invalid stream name {stream:?}"
            )));
        }
        self.inner.engine.describe_stream(Some(stream), None)?;
        let mut settings = settings;
        settings.model = self.api_model(&settings)?;
        let _changes = self.inner.changes.lock().await;
        {
            let running = lock(&self.inner.running);
            if !running.contains_key(stream) && running.len() >= self.inner.cfg.max_detectors {
                return Err(EngineError::LimitExceeded(format!(
                    "at most {} detectors run on this server",
                    self.inner.cfg.max_detectors
                )));
            }
        }
        // Loading a model takes a while: not on the async runtime's threads.
        let this = self.clone();
        let name = stream.to_string();
        let run = tokio::task::spawn_blocking(move || this.launch(&name, settings, Origin::Api))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        self.save().await?;
        Ok(status(&run))
    }

    /// The model a detector set through the API may load: a file inside
    /// the models folder (a relative name is taken inside it), compared
    /// canonicalised. The refusal is the same whatever the path is.
    fn api_model(&self, settings: &DetectorSettings) -> Result<Option<PathBuf>, EngineError> {
        let Some(model) = &settings.model else {
            return Ok(None);
        };
        let dir = &self.inner.cfg.models_dir;
        let inside = std::fs::canonicalize(dir.join(model))
            .ok()
            .filter(|m| m.is_file())
            .filter(|m| std::fs::canonicalize(dir).is_ok_and(|d| m.starts_with(d)));
        inside.map(Some).ok_or_else(|| {
            EngineError::InvalidArgument(
                "model must name a model file in the server's models folder \
                 ([detection] models_dir)"
                    .into(),
            )
        })
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
            .filter(|r| r.origin == Origin::Api)
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
        det.stats
            .last_video_ms
            .store(det.sink.clock.now_ms(), Ordering::Relaxed);
        det.backlog.push(frag, &det.stats);
    }
}
