//! Streams: metadata (the control plane), ingest, reads and retention.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use kinema_archive::Catalog;
use kinema_archive::index::Record;
use kinema_archive::ingest::{
    CompletedFragment, IngestEvent, IngestLimits, IngestSession, TimecodeType,
};
use kinema_archive::{FragmentMeta, TimeKind};
use kinema_store::{IndexLog, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, broadcast, watch};

use crate::{EngineError, now_ms};
use kinema_core::sync::{lock, read, write};

const META_DOC: &str = "video-streams";
const MAX_TAGS: usize = 50;
/// After this many trimmed index records the index log is rewritten.
const COMPACT_AFTER_TRIMS: usize = 256;

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
    catalog: RwLock<Catalog>,
    /// Serialises persisting (numbering, index appends) and holds the index log.
    persist: Mutex<IndexLog>,
    live: watch::Sender<u64>,
    /// Every frame of the video track as it arrives, for live viewers
    /// (WebRTC). Ingest never waits: a lagging receiver loses frames.
    frames: broadcast::Sender<LiveFrame>,
    producers: AtomicUsize,
    deleted: AtomicBool,
    trims: AtomicUsize,
}

impl Stream {
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

/// Where a GetMedia read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartSelector {
    Now,
    Earliest,
    FragmentNumber(u64),
    ServerTimestamp(i64),
    ProducerTimestamp(i64),
    ContinuationToken(u64),
}

/// Which fragments [`Engine::playback_fragments`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaybackSpan {
    Newest(usize),
    Range { from_ms: i64, to_ms: i64 },
}

pub struct ListFragmentsPage {
    pub fragments: Vec<FragmentMeta>,
    pub next_token: Option<String>,
}

impl Engine {
    /// Opens the engine over a store, recovering every stream's catalog from
    /// its index log and removing objects no index entry names.
    pub async fn open(store: Store, config: EngineConfig) -> Result<Engine, EngineError> {
        let infos: Vec<StreamInfo> = store.load_meta(META_DOC)?.unwrap_or_default();
        // Data of streams the metadata no longer lists: a crash during
        // DeleteStream (metadata saved, data not yet removed).
        for id in store.stored_stream_ids()? {
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
            let last = catalog.last().map(|f| f.number).unwrap_or(0);
            streams.insert(
                info.name.clone(),
                Arc::new(Stream {
                    info: std::sync::Mutex::new(info),
                    catalog: RwLock::new(catalog),
                    persist: Mutex::new(log),
                    live: watch::channel(last).0,
                    frames: broadcast::channel(LIVE_FRAMES_QUEUE).0,
                    producers: AtomicUsize::new(0),
                    deleted: AtomicBool::new(false),
                    trims: AtomicUsize::new(
                        records
                            .iter()
                            .filter(|r| matches!(r, Record::Trim { .. }))
                            .count(),
                    ),
                }),
            );
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                store,
                config,
                streams: RwLock::new(streams),
                meta_lock: Mutex::new(()),
                versions: AtomicU64::new(0),
                live_fragments: broadcast::channel(LIVE_FRAGMENTS_QUEUE).0,
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

    /// The frames of one stream's video as they arrive (see [`LiveFrame`]),
    /// from every producer of the stream.
    pub fn live_frames(&self, name: &str) -> Result<broadcast::Receiver<LiveFrame>, EngineError> {
        Ok(self.resolve(Some(name), None)?.frames.subscribe())
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    fn new_version(&self) -> String {
        let n = self.inner.versions.fetch_add(1, Ordering::Relaxed);
        format!("{}{:06}", now_ms(), n % 1_000_000)
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

    // ---- control plane ----------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    pub async fn create_stream(
        &self,
        name: &str,
        device_name: Option<String>,
        media_type: Option<String>,
        kms_key_id: Option<String>,
        retention_hours: Option<u32>,
        tags: BTreeMap<String, String>,
    ) -> Result<StreamInfo, EngineError> {
        if !valid_name(name) {
            return Err(EngineError::InvalidArgument(format!(
                "StreamName {name:?} must be 1-256 characters of [a-zA-Z0-9_.-]"
            )));
        }
        validate_tags(&tags)?;
        let retention_hours = retention_hours.unwrap_or(0);
        if retention_hours > 87_600 {
            return Err(EngineError::InvalidArgument(
                "DataRetentionInHours must be between 0 and 87600".into(),
            ));
        }
        let creation_ms = now_ms();
        let info = StreamInfo {
            name: name.to_string(),
            id: format!("{creation_ms}-{name}"),
            arn: format!(
                "arn:aws:kinesisvideo:{}:{}:stream/{name}/{creation_ms}",
                self.inner.config.region, self.inner.config.account_id
            ),
            device_name,
            media_type,
            kms_key_id,
            version: self.new_version(),
            status: "ACTIVE".into(),
            creation_ms,
            retention_hours,
            tags,
        };
        if read(&self.inner.streams).contains_key(name) {
            return Err(EngineError::ResourceInUse(format!(
                "the stream {name} already exists"
            )));
        }
        self.inner.store.prepare_stream(&info.id).await?;
        let log = self.inner.store.open_index_async(&info.id).await?;
        {
            let mut streams = write(&self.inner.streams);
            if streams.contains_key(name) {
                return Err(EngineError::ResourceInUse(format!(
                    "the stream {name} already exists"
                )));
            }
            if streams.len() >= self.inner.config.max_streams {
                return Err(EngineError::ClientLimitExceeded("too many streams".into()));
            }
            streams.insert(
                name.to_string(),
                Arc::new(Stream {
                    info: std::sync::Mutex::new(info.clone()),
                    catalog: RwLock::new(Catalog::new()),
                    persist: Mutex::new(log),
                    live: watch::channel(0).0,
                    frames: broadcast::channel(LIVE_FRAMES_QUEUE).0,
                    producers: AtomicUsize::new(0),
                    deleted: AtomicBool::new(false),
                    trims: AtomicUsize::new(0),
                }),
            );
        }
        self.save_meta().await?;
        tracing::info!(stream = name, retention_hours, "created stream");
        Ok(info)
    }

    pub fn describe_stream(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
    ) -> Result<StreamInfo, EngineError> {
        Ok(self.resolve(name, arn)?.info())
    }

    /// Streams in name order, after the `after` name, optionally filtered by
    /// a name prefix. Returns the page and whether more follow.
    pub fn list_streams(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> (Vec<StreamInfo>, bool) {
        let streams = read(&self.inner.streams);
        let mut matching = streams
            .iter()
            .filter(|(n, _)| after.is_none_or(|a| n.as_str() > a))
            .filter(|(n, _)| prefix.is_none_or(|p| n.starts_with(p)))
            .map(|(_, s)| s.info());
        let page: Vec<StreamInfo> = matching.by_ref().take(max).collect();
        let more = matching.next().is_some();
        (page, more)
    }

    fn check_version(info: &StreamInfo, current: Option<&str>) -> Result<(), EngineError> {
        match current {
            Some(v) if v != info.version => Err(EngineError::VersionMismatch(format!(
                "CurrentVersion {v} does not match the stream's version {}",
                info.version
            ))),
            _ => Ok(()),
        }
    }

    pub async fn update_stream(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        current_version: &str,
        update: StreamUpdate,
    ) -> Result<(), EngineError> {
        let stream = self.resolve(name, arn)?;
        {
            let mut info = lock(&stream.info);
            Self::check_version(&info, Some(current_version))?;
            if let Some(d) = update.device_name {
                info.device_name = Some(d);
            }
            if let Some(m) = update.media_type {
                info.media_type = Some(m);
            }
            info.version = self.new_version();
        }
        self.save_meta().await
    }

    pub async fn update_data_retention(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        current_version: &str,
        increase: bool,
        change_hours: u32,
    ) -> Result<(), EngineError> {
        let stream = self.resolve(name, arn)?;
        {
            let mut info = lock(&stream.info);
            Self::check_version(&info, Some(current_version))?;
            let new = if increase {
                info.retention_hours
                    .checked_add(change_hours)
                    .filter(|h| *h <= 87_600)
            } else {
                info.retention_hours.checked_sub(change_hours)
            };
            let Some(new) = new else {
                return Err(EngineError::InvalidArgument(format!(
                    "retention of {} hours changed by {change_hours} is out of range 0-87600",
                    info.retention_hours
                )));
            };
            info.retention_hours = new;
            info.version = self.new_version();
        }
        self.save_meta().await
    }

    pub async fn delete_stream(
        &self,
        arn: &str,
        current_version: Option<&str>,
    ) -> Result<(), EngineError> {
        let stream = self.resolve(None, Some(arn))?;
        let info = stream.info();
        Self::check_version(&info, current_version)?;
        write(&self.inner.streams).remove(&info.name);
        stream.deleted.store(true, Ordering::SeqCst);
        stream.live.send_modify(|_| {});
        self.save_meta().await?;
        // Wait for any persist in flight, then remove the data.
        let _g = stream.persist.lock().await;
        self.inner.store.delete_stream(&info.id).await?;
        tracing::info!(stream = %info.name, "deleted stream");
        Ok(())
    }

    pub async fn tag_stream(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        tags: BTreeMap<String, String>,
    ) -> Result<(), EngineError> {
        let stream = self.resolve(name, arn)?;
        {
            let mut info = lock(&stream.info);
            let mut merged = info.tags.clone();
            merged.extend(tags);
            validate_tags(&merged)?;
            info.tags = merged;
        }
        self.save_meta().await
    }

    pub async fn untag_stream(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        keys: &[String],
    ) -> Result<(), EngineError> {
        let stream = self.resolve(name, arn)?;
        {
            let mut info = lock(&stream.info);
            for k in keys {
                info.tags.remove(k);
            }
        }
        self.save_meta().await
    }

    // ---- ingest -------------------------------------------------------------

    /// Starts a PutMedia upload. `start_ns` is the producer start timestamp
    /// (Unix nanoseconds) for RELATIVE timecodes.
    pub fn begin_put_media(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        timecode_type: TimecodeType,
        start_ns: i128,
    ) -> Result<PutMediaSession, EngineError> {
        let stream = self.resolve(name, arn)?;
        stream.producers.fetch_add(1, Ordering::SeqCst);
        Ok(PutMediaSession {
            engine: self.clone(),
            session: IngestSession::new(timecode_type, start_ns, self.inner.config.ingest),
            stream,
            track: None,
        })
    }

    async fn persist(
        &self,
        stream: &Stream,
        frag: CompletedFragment,
    ) -> Result<FragmentMeta, EngineError> {
        let log = stream.persist.lock().await;
        if stream.deleted.load(Ordering::SeqCst) {
            return Err(EngineError::ResourceNotFound(
                "the stream was deleted".into(),
            ));
        }
        let (number, floor) = {
            let c = read(&stream.catalog);
            (
                c.next_number(),
                c.last().map(|f| f.server_ms).unwrap_or(i64::MIN),
            )
        };
        let meta = FragmentMeta {
            number,
            producer_ms: frag.producer_ms,
            server_ms: frag.server_ms.max(floor),
            duration_ms: frag.duration_ms,
            size: frag.object.len() as u32,
            cluster_offset: frag.cluster_offset,
            frames: frag.frames,
        };
        // A producer resending after a lost connection: the fragment is
        // already durable, so acknowledge the stored one instead of storing
        // it twice.
        if let Some(stored) = read(&stream.catalog).duplicate_of(&meta) {
            return Ok(*stored);
        }
        let id = stream.id();
        let object = frag.object;
        self.inner
            .store
            .put_fragment(&id, number, object.clone())
            .await?;
        log.append(Record::Fragment(meta)).await?;
        write(&stream.catalog)
            .append(meta)
            .expect("numbers are assigned under the persist lock, so they always increase");
        stream.live.send_replace(number);
        if self.inner.live_fragments.receiver_count() > 0 {
            let _ = self.inner.live_fragments.send(LiveFragment {
                stream: lock(&stream.info).name.clone(),
                meta,
                object,
            });
        }
        Ok(meta)
    }

    // ---- reads --------------------------------------------------------------

    /// A reader of fragments from `selector` on, waiting for new ones live.
    pub fn get_media(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        selector: StartSelector,
    ) -> Result<FragmentReader, EngineError> {
        let stream = self.resolve(name, arn)?;
        let next = {
            let c = read(&stream.catalog);
            match selector {
                StartSelector::Now => c.next_number(),
                StartSelector::Earliest => c.first().map(|f| f.number).unwrap_or(c.next_number()),
                StartSelector::FragmentNumber(n) => {
                    c.get(n)
                        .ok_or_else(|| {
                            EngineError::ResourceNotFound(format!(
                                "fragment {n} does not exist in this stream"
                            ))
                        })?
                        .number
                }
                StartSelector::ContinuationToken(n) => n.saturating_add(1),
                StartSelector::ServerTimestamp(t) => c
                    .locate(TimeKind::Server, t)
                    .map(|f| f.number)
                    .unwrap_or(c.next_number()),
                StartSelector::ProducerTimestamp(t) => c
                    .locate(TimeKind::Producer, t)
                    .map(|f| f.number)
                    .unwrap_or(c.next_number()),
            }
        };
        Ok(FragmentReader {
            engine: self.clone(),
            rx: stream.live.subscribe(),
            stream,
            next,
            follow: true,
        })
    }

    /// The stored fragments named, in the order given; every one must exist.
    pub fn fragments_by_number(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        numbers: &[u64],
    ) -> Result<(Vec<FragmentMeta>, FragmentReader), EngineError> {
        let stream = self.resolve(name, arn)?;
        let metas = {
            let c = read(&stream.catalog);
            numbers
                .iter()
                .map(|n| {
                    c.get(*n).copied().ok_or_else(|| {
                        EngineError::ResourceNotFound(format!(
                            "fragment {n} does not exist in this stream"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let reader = FragmentReader {
            engine: self.clone(),
            rx: stream.live.subscribe(),
            stream,
            next: 0,
            follow: false,
        };
        Ok((metas, reader))
    }

    /// Fragments for a playback session, sorted by `kind` time: the newest
    /// `newest` by number, or those that may overlap `[from_ms, to_ms]`
    /// (starting at most one maximum fragment length before `from_ms`).
    pub fn playback_fragments(
        &self,
        name: &str,
        kind: TimeKind,
        span: PlaybackSpan,
    ) -> Result<Vec<FragmentMeta>, EngineError> {
        let stream = self.resolve(Some(name), None)?;
        let c = read(&stream.catalog);
        let mut out: Vec<FragmentMeta> = match span {
            PlaybackSpan::Newest(n) => c.iter().rev().take(n).copied().collect(),
            PlaybackSpan::Range { from_ms, to_ms } => {
                let lead = self.inner.config.ingest.max_fragment_duration_ms as i64;
                c.range(kind, from_ms.saturating_sub(lead), to_ms, None)
                    .copied()
                    .collect()
            }
        };
        drop(c);
        out.sort_by_key(|f| (f.time(kind), f.number));
        Ok(out)
    }

    /// One stored fragment and its object, by number.
    pub async fn fragment(
        &self,
        name: &str,
        number: u64,
    ) -> Result<(FragmentMeta, Bytes), EngineError> {
        let stream = self.resolve(Some(name), None)?;
        let missing = || EngineError::ResourceNotFound(format!("fragment {number} is not stored"));
        let meta = read(&stream.catalog)
            .get(number)
            .copied()
            .ok_or_else(missing)?;
        match self.inner.store.get_fragment(&stream.id(), number).await {
            Ok(obj) => Ok((meta, obj)),
            Err(StoreError::NotFound(_)) => Err(missing()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn list_fragments(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        range: Option<(TimeKind, i64, i64)>,
        max: usize,
        token: Option<&str>,
    ) -> Result<ListFragmentsPage, EngineError> {
        let stream = self.resolve(name, arn)?;
        let c = read(&stream.catalog);
        let bad_token =
            || EngineError::InvalidArgument("NextToken is not valid for this request".into());
        let page: Vec<FragmentMeta>;
        let more;
        match range {
            None => {
                let after = match token {
                    Some(t) => t
                        .strip_prefix("n:")
                        .and_then(|n| n.parse::<u64>().ok())
                        .ok_or_else(bad_token)?,
                    None => 0,
                };
                let mut it = c.iter().filter(|f| f.number > after);
                page = it.by_ref().take(max).copied().collect();
                more = it.next().is_some();
                let next_token =
                    more.then(|| format!("n:{}", page.last().map(|f| f.number).unwrap_or(after)));
                Ok(ListFragmentsPage {
                    fragments: page,
                    next_token,
                })
            }
            Some((kind, start, end)) => {
                if start > end {
                    return Err(EngineError::InvalidArgument(
                        "StartTimestamp must not be after EndTimestamp".into(),
                    ));
                }
                let after = match token {
                    Some(t) => {
                        let mut parts = t.strip_prefix("t:").ok_or_else(bad_token)?.splitn(2, ':');
                        let time = parts
                            .next()
                            .and_then(|p| p.parse::<i64>().ok())
                            .ok_or_else(bad_token)?;
                        let num = parts
                            .next()
                            .and_then(|p| p.parse::<u64>().ok())
                            .ok_or_else(bad_token)?;
                        Some((time, num))
                    }
                    None => None,
                };
                let mut it = c.range(kind, start, end, after);
                page = it.by_ref().take(max).copied().collect();
                more = it.next().is_some();
                let next_token = match (more, page.last()) {
                    (true, Some(f)) => Some(format!("t:{}:{}", f.time(kind), f.number)),
                    _ => None,
                };
                Ok(ListFragmentsPage {
                    fragments: page,
                    next_token,
                })
            }
        }
    }

    // ---- retention ------------------------------------------------------------

    /// Deletes expired fragments of every stream once.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, EngineError> {
        let streams: Vec<Arc<Stream>> = read(&self.inner.streams).values().cloned().collect();
        let mut deleted = 0;
        for stream in streams {
            deleted += self.enforce_retention_on(&stream, now_ms).await?;
        }
        Ok(deleted)
    }

    async fn enforce_retention_on(
        &self,
        stream: &Stream,
        now_ms: i64,
    ) -> Result<usize, EngineError> {
        let info = stream.info();
        let keep_ms = if info.retention_hours == 0 {
            self.inner.config.live_buffer_ms
        } else {
            info.retention_hours as i64 * 3_600_000
        };
        let cutoff = now_ms - keep_ms;
        let mut log = stream.persist.lock().await;
        let through = {
            let c = read(&stream.catalog);
            c.iter()
                .take_while(|f| f.server_ms + f.duration_ms as i64 <= cutoff)
                .last()
                .map(|f| f.number)
        };
        let Some(through) = through else {
            return Ok(0);
        };
        log.append(Record::Trim { through }).await?;
        let removed = write(&stream.catalog).trim_through(through);
        for f in &removed {
            self.inner.store.delete_fragment(&info.id, f.number).await?;
        }
        if stream.trims.fetch_add(1, Ordering::Relaxed) + 1 >= COMPACT_AFTER_TRIMS {
            let records: Vec<Record> = std::iter::once(Record::Trim { through })
                .chain(read(&stream.catalog).iter().map(|f| Record::Fragment(*f)))
                .collect();
            *log = self
                .inner
                .store
                .rewrite_index_async(&info.id, records)
                .await?;
            stream.trims.store(1, Ordering::Relaxed);
        }
        tracing::debug!(stream = %info.name, removed = removed.len(), "retention");
        Ok(removed.len())
    }

    /// Runs retention every `interval` until `shutdown` resolves.
    pub async fn run_retention(
        &self,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    if let Err(e) = self.enforce_retention(now_ms()).await {
                        tracing::error!(error = %e, "retention pass failed");
                    }
                }
            }
        }
    }
}

fn validate_tags(tags: &BTreeMap<String, String>) -> Result<(), EngineError> {
    if tags.len() > MAX_TAGS {
        return Err(EngineError::InvalidArgument(format!(
            "at most {MAX_TAGS} tags per stream"
        )));
    }
    for (k, v) in tags {
        if k.is_empty() || k.len() > 128 || v.len() > 256 {
            return Err(EngineError::InvalidArgument(format!(
                "tag key {k:?} must be 1-128 characters and its value at most 256"
            )));
        }
    }
    Ok(())
}

/// One PutMedia upload bound to its stream.
pub struct PutMediaSession {
    engine: Engine,
    stream: Arc<Stream>,
    session: IngestSession,
    /// The upload's video track, shared by the frames sent to live viewers.
    track: Option<Arc<kinema_mkv::TrackInfo>>,
}

impl PutMediaSession {
    pub fn stream_name(&self) -> String {
        lock(&self.stream.info).name.clone()
    }

    /// Whether PERSISTED acknowledgements are sent: only for streams that
    /// archive (retention above zero), as in Kinesis Video Streams.
    pub fn acks_persisted(&self) -> bool {
        lock(&self.stream.info).retention_hours > 0
    }

    pub fn push(&mut self, data: &[u8]) {
        // Frames are tapped only while someone watches the stream live.
        let watched = self.stream.frames.receiver_count() > 0;
        self.session.set_frame_tap(watched);
        self.session.push(data, now_ms());
        if watched {
            self.send_frames();
        }
    }

    pub fn finish(&mut self) {
        self.session.finish(now_ms());
        self.send_frames();
    }

    fn send_frames(&mut self) {
        let now = std::time::Instant::now();
        while let Some(f) = self.session.poll_frame() {
            let track = match &self.track {
                Some(t) => t.clone(),
                None => {
                    let Some(info) = self.session.video_track() else {
                        return;
                    };
                    self.track.insert(Arc::new(info.clone())).clone()
                }
            };
            // No receiver left is not an error: the next push stops the tap.
            let _ = self.stream.frames.send(LiveFrame {
                producer_ms: f.producer_ms,
                arrived: now,
                keyframe: f.keyframe,
                payload: f.payload,
                track,
            });
        }
    }

    pub fn poll(&mut self) -> Option<IngestEvent> {
        self.session.poll()
    }

    /// Stores a complete fragment durably and makes it visible to readers.
    pub async fn persist(&self, frag: CompletedFragment) -> Result<FragmentMeta, EngineError> {
        self.engine.persist(&self.stream, frag).await
    }
}

impl Drop for PutMediaSession {
    fn drop(&mut self) {
        self.stream.producers.fetch_sub(1, Ordering::SeqCst);
        self.stream.live.send_modify(|_| {});
    }
}

/// Reads fragments in number order, optionally following the live edge.
pub struct FragmentReader {
    engine: Engine,
    stream: Arc<Stream>,
    rx: watch::Receiver<u64>,
    next: u64,
    follow: bool,
}

impl FragmentReader {
    /// Loads one stored fragment object.
    pub async fn load(&self, meta: &FragmentMeta) -> Result<Bytes, EngineError> {
        Ok(self
            .engine
            .inner
            .store
            .get_fragment(&self.stream.id(), meta.number)
            .await?)
    }

    /// The next fragment, waiting for it at the live edge. `None` ends the
    /// read: the stream was deleted, or no fragment came within the idle time.
    pub async fn next(&mut self) -> Option<Result<(FragmentMeta, Bytes), EngineError>> {
        loop {
            self.rx.borrow_and_update();
            if self.stream.deleted.load(Ordering::SeqCst) {
                return None;
            }
            let meta = read(&self.stream.catalog)
                .after(self.next.saturating_sub(1))
                .copied();
            if let Some(meta) = meta.filter(|m| m.number >= self.next) {
                self.next = meta.number + 1;
                match self.load(&meta).await {
                    Ok(obj) => return Some(Ok((meta, obj))),
                    // Trimmed by retention between the lookup and the read.
                    Err(EngineError::Storage(StoreError::NotFound(_))) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
            if !self.follow {
                return None;
            }
            let cfg = &self.engine.inner.config;
            let idle = if self.stream.producers.load(Ordering::SeqCst) > 0 {
                cfg.get_media_live_idle_ms
            } else {
                cfg.get_media_idle_ms
            };
            match tokio::time::timeout(Duration::from_millis(idle), self.rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }
}
