//! Video streams: the engine handle, each stream's state (metadata,
//! catalog, persist lock, live channels) and recovery at start. The
//! operations live in one module per concern: `control` (the control
//! plane), `ingest` (PutMedia sessions and persisting), `reads` (GetMedia,
//! fragments by number and time) and `retention`.

mod cluster;
mod control;
mod ingest;
mod reads;
mod retention;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use kinema_archive::index::Record;
use kinema_archive::ingest::IngestLimits;
use kinema_archive::{Catalog, FragmentMeta};
use kinema_core::sync::{lock, read};
use kinema_store::{IndexLog, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, broadcast, watch};

pub use ingest::PutMediaSession;
pub use reads::{FragmentReader, ListFragmentsPage, PlaybackSpan, StartSelector};

use crate::{Clock, EngineError};

const META_DOC: &str = "video-streams";

/// How often a cluster node looks for shared documents changed elsewhere.
pub(crate) const SHARED_DOC_POLL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub region: String,
    pub account_id: String,
    pub ingest: IngestLimits,
    /// How long a stream with zero retention keeps fragments for live reads.
    pub live_buffer_ms: i64,
    /// GetMedia ends after this long without a new fragment when no producer is connected.
    pub get_media_idle_ms: u64,
    /// GetMedia ends after this long without a new fragment while a producer is connected.
    pub get_media_live_idle_ms: u64,
    pub max_streams: usize,
    /// PutMedia uploads one stream takes at a time.
    pub max_producers_per_stream: usize,
    /// GetMedia (and GetMediaForFragmentList) readers of one stream at a
    /// time.
    pub max_readers_per_stream: usize,
    /// The wall clock the engine reads (server timestamps, versions,
    /// retention).
    pub clock: Clock,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            region: kinema_core::aws::DEFAULT_REGION.into(),
            account_id: kinema_core::aws::DEFAULT_ACCOUNT_ID.into(),
            ingest: IngestLimits::default(),
            live_buffer_ms: 120_000,
            get_media_idle_ms: 3_000,
            get_media_live_idle_ms: 30_000,
            max_streams: 10_000,
            max_producers_per_stream: 5,
            max_readers_per_stream: 10,
            clock: Clock::system(),
        }
    }
}

/// Everything the control plane knows about a stream; persisted as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamInfo {
    pub name: String,
    /// Unique directory-safe identity (a re-created name gets a new one).
    pub id: String,
    pub arn: String,
    pub device_name: Option<String>,
    pub media_type: Option<String>,
    pub kms_key_id: Option<String>,
    pub version: String,
    pub status: String,
    pub creation_ms: i64,
    pub retention_hours: u32,
    pub tags: BTreeMap<String, String>,
}

/// Optional changes for UpdateStream.
#[derive(Debug, Clone, Default)]
pub struct StreamUpdate {
    pub device_name: Option<String>,
    pub media_type: Option<String>,
}

struct Stream {
    info: std::sync::Mutex<StreamInfo>,
    /// In a cluster, the revision of `info` in the shared bucket.
    revision: AtomicU64,
    catalog: RwLock<Catalog>,
    /// Serialises persisting (numbering, index appends) and holds the index log.
    persist: Mutex<IndexLog>,
    live: watch::Sender<u64>,
    /// Every frame of the video track as it arrives, for live viewers
    /// (WebRTC). Ingest never waits: a lagging receiver loses frames.
    frames: broadcast::Sender<LiveFrame>,
    producers: AtomicUsize,
    readers: AtomicUsize,
    deleted: AtomicBool,
    trims: AtomicUsize,
}

impl Stream {
    fn new(info: StreamInfo, revision: u64, catalog: Catalog, log: IndexLog) -> Stream {
        let last = catalog.last().map(|f| f.number).unwrap_or(0);
        Stream {
            info: std::sync::Mutex::new(info),
            revision: AtomicU64::new(revision),
            catalog: RwLock::new(catalog),
            persist: Mutex::new(log),
            live: watch::channel(last).0,
            frames: broadcast::channel(LIVE_FRAMES_QUEUE).0,
            producers: AtomicUsize::new(0),
            readers: AtomicUsize::new(0),
            deleted: AtomicBool::new(false),
            trims: AtomicUsize::new(0),
        }
    }

    fn info(&self) -> StreamInfo {
        lock(&self.info).clone()
    }
    fn id(&self) -> String {
        lock(&self.info).id.clone()
    }
}

struct Inner {
    store: Store,
    config: EngineConfig,
    streams: RwLock<BTreeMap<String, Arc<Stream>>>,
    meta_lock: Mutex<()>,
    versions: AtomicU64,
    /// Every persisted fragment, as it is persisted, for live consumers
    /// inside the process (detection). A lagging receiver loses fragments;
    /// ingest never waits for it.
    live_fragments: broadcast::Sender<LiveFragment>,
    /// In a cluster: some stream metadata could not be read here (then no
    /// stored data is taken for a deleted stream's).
    unreadable_meta: AtomicBool,
}

/// A fragment just persisted, with its bytes (still in memory from ingest).
#[derive(Debug, Clone)]
pub struct LiveFragment {
    pub stream: String,
    pub meta: FragmentMeta,
    /// The stored object: a self-contained Matroska file.
    pub object: Bytes,
}

/// One frame of a stream's video as it arrives from its producer, before
/// its fragment is complete or stored.
#[derive(Debug, Clone)]
pub struct LiveFrame {
    /// Presentation time, Unix ms (producer clock).
    pub producer_ms: i64,
    /// When its last byte arrived (monotonic clock).
    pub arrived: std::time::Instant,
    pub keyframe: bool,
    /// As stored: for H.264, length-prefixed NAL units.
    pub payload: Bytes,
    /// The video track it belongs to (codec id and private data).
    pub track: Arc<kinema_mkv::TrackInfo>,
}

/// How many frames a live viewer may fall behind (about 8 s at 30 fps).
const LIVE_FRAMES_QUEUE: usize = 256;

/// How many persisted fragments a live consumer may fall behind.
const LIVE_FRAGMENTS_QUEUE: usize = 256;

/// The engine handle: cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// A valid video stream name (the service's pattern `[a-zA-Z0-9_.-]+`, 1-256).
pub(crate) fn valid_name(name: &str) -> bool {
    kinema_core::names::valid(name, kinema_core::names::MAX_VIDEO_NAME)
}

impl Engine {
    /// Opens the engine over a store, recovering every stream's catalog from
    /// its index log and removing objects no index entry names.
    pub async fn open(store: Store, config: EngineConfig) -> Result<Engine, EngineError> {
        if store.cluster().is_some() {
            return Self::open_cluster(store, config).await;
        }
        let infos: Vec<StreamInfo> = store.load_meta(META_DOC)?.unwrap_or_default();
        // Data of streams the metadata no longer lists: a crash during
        // DeleteStream (metadata saved, data not yet removed).
        for id in store.stored_stream_ids().await? {
            if !infos.iter().any(|i| i.id == id) {
                tracing::info!(stream_id = %id, "removing the data of a deleted stream");
                store.delete_stream(&id).await?;
            }
        }
        let mut streams = BTreeMap::new();
        for info in infos {
            let (log, records) = store.open_index(&info.id)?;
            let mut catalog = Catalog::new();
            for r in &records {
                match *r {
                    Record::Fragment(m) => {
                        if let Err(e) = catalog.append(m) {
                            tracing::warn!(stream = %info.name, error = %e, "skipping an out-of-order index record");
                        }
                    }
                    Record::Trim { through } => {
                        catalog.trim_through(through);
                    }
                }
            }
            // Objects written before a crash but never indexed, or trimmed
            // but not yet deleted, are not part of the stream.
            for n in store.list_fragments(&info.id).await? {
                if catalog.get(n).is_none() {
                    store.delete_fragment(&info.id, n).await?;
                }
            }
            tracing::info!(stream = %info.name, fragments = catalog.len(), "recovered stream");
            let trims = records
                .iter()
                .filter(|r| matches!(r, Record::Trim { .. }))
                .count();
            let stream = Stream::new(info.clone(), 0, catalog, log);
            stream.trims.store(trims, Ordering::Relaxed);
            streams.insert(info.name.clone(), Arc::new(stream));
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                store,
                config,
                streams: RwLock::new(streams),
                meta_lock: Mutex::new(()),
                versions: AtomicU64::new(0),
                live_fragments: broadcast::channel(LIVE_FRAGMENTS_QUEUE).0,
                unreadable_meta: AtomicBool::new(false),
            }),
        })
    }

    /// Fragments of every stream as they are persisted (see [`LiveFragment`]).
    pub fn live_fragments(&self) -> broadcast::Receiver<LiveFragment> {
        self.inner.live_fragments.subscribe()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The wall clock of this engine (see [`Clock`]).
    pub fn clock(&self) -> Clock {
        self.inner.config.clock
    }

    /// The frames of one stream's video as they arrive (see [`LiveFrame`]),
    /// from every producer of the stream.
    pub fn live_frames(&self, name: &str) -> Result<broadcast::Receiver<LiveFrame>, EngineError> {
        Ok(self.resolve(Some(name), None)?.frames.subscribe())
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// A metadata document kept for a service above the engine (the edge's
    /// identities), `None` before it is first saved.
    pub fn load_document<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, EngineError> {
        Ok(self.inner.store.load_meta(name)?)
    }

    /// Replaces a metadata document atomically and durably.
    pub async fn save_document<T: serde::Serialize>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<(), EngineError> {
        Ok(self.inner.store.save_meta(name, value).await?)
    }

    /// A document every node of a cluster shares (in its JetStream
    /// documents bucket) and its revision; on one machine, the same as
    /// [`Engine::load_document`], at revision 0.
    pub async fn load_shared_document<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<(Option<T>, u64), EngineError> {
        Ok(self.inner.store.load_shared(name).await?)
    }

    /// Replaces a shared document if no node changed it since `revision`
    /// (what [`Engine::load_shared_document`] or the last save returned);
    /// returns the new revision, or `ResourceInUse` when another node was
    /// first (reload, then try again). On one machine it always saves.
    pub async fn save_shared_document<T: serde::Serialize>(
        &self,
        name: &str,
        value: &T,
        revision: u64,
    ) -> Result<u64, EngineError> {
        self.inner
            .store
            .save_shared(name, value, revision)
            .await?
            .map_err(|_| {
                EngineError::ResourceInUse(format!(
                    "{name} was changed on another node meanwhile; try again"
                ))
            })
    }

    /// In a cluster, a signal each time the shared document `name` changes
    /// (on any node); `None` on one machine.
    pub async fn watch_shared_document(
        &self,
        name: &str,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<()>>, EngineError> {
        let Some(c) = self.inner.store.cluster() else {
            return Ok(None);
        };
        Ok(Some(c.doc_changes(name, SHARED_DOC_POLL).await))
    }

    fn new_version(&self) -> String {
        let n = self.inner.versions.fetch_add(1, Ordering::Relaxed);
        format!("{}{:06}", self.clock().now_ms(), n % 1_000_000)
    }

    async fn save_meta(&self) -> Result<(), EngineError> {
        let _g = self.inner.meta_lock.lock().await;
        let infos: Vec<StreamInfo> = read(&self.inner.streams)
            .values()
            .map(|s| s.info())
            .collect();
        self.inner.store.save_meta(META_DOC, &infos).await?;
        Ok(())
    }

    fn resolve(&self, name: Option<&str>, arn: Option<&str>) -> Result<Arc<Stream>, EngineError> {
        let streams = read(&self.inner.streams);
        let found = match (name, arn) {
            (Some(n), _) => streams.get(n).cloned(),
            (None, Some(a)) => streams.values().find(|s| lock(&s.info).arn == a).cloned(),
            (None, None) => {
                return Err(EngineError::InvalidArgument(
                    "either StreamName or StreamARN is required".into(),
                ));
            }
        };
        let found = found.filter(|s| match (name, arn) {
            (Some(_), Some(a)) => lock(&s.info).arn == a,
            _ => true,
        });
        found.ok_or_else(|| {
            EngineError::ResourceNotFound(format!(
                "the stream {} does not exist",
                name.or(arn).unwrap_or_default()
            ))
        })
    }
}

/// Takes one of `max` places counted by `count`, or says who is over.
fn take_place(count: &AtomicUsize, max: usize, what: &str) -> Result<(), EngineError> {
    count
        .fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| (n < max).then_some(n + 1),
        )
        .map(|_| ())
        .map_err(|_| {
            EngineError::ClientLimitExceeded(format!(
                "at most {max} {what} use one stream at a time"
            ))
        })
}
