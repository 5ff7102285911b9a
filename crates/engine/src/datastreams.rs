//! Data streams: a durable, sharded log in the style of Kinesis Data Streams.
//!
//! Each stream has one append-only log file (all shards) written by a single
//! writer task that batches concurrent puts into one fdatasync (group
//! commit); a put is acknowledged only after its batch is on disk. Sequence
//! numbers are assigned by the writer in log order, so recovery replays the
//! log and finds the same records, in the same order, with the same numbers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use kinema_datastream::leases::{Checkpoint, LeaseTable};
use kinema_datastream::record::{self, StoredRecord};
use kinema_datastream::{IteratorError, IteratorKey, IteratorPosition, ShardMap, hash_key};
use kinema_store::{DataLog, DataLogReader, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use crate::{Clock, EngineError};
use kinema_core::sync::{lock, read, write};

const META_DOC: &str = "data-streams";
/// At most this many put requests share one fdatasync.
const MAX_BATCH_REQUESTS: usize = 256;
pub const MAX_GET_RECORDS: usize = 10_000;
const MAX_GET_BYTES: usize = 10 << 20;
pub const DEFAULT_RETENTION_HOURS: u32 = 24;
pub const MAX_RETENTION_HOURS: u32 = 8760;

#[derive(Debug, Clone)]
pub struct DataStreamsConfig {
    pub region: String,
    pub account_id: String,
    /// Largest record data (the original's limit is 1 MiB).
    pub max_record_bytes: usize,
    pub max_shards_per_stream: u32,
    /// Per-shard write quota in bytes per second (0: unlimited).
    pub shard_write_bytes_per_s: u64,
    /// Per-shard write quota in records per second (0: unlimited).
    pub shard_write_records_per_s: u64,
    /// Size at which the log starts a new segment file; retention deletes
    /// whole segments whose records are all past the retention period.
    pub segment_bytes: u64,
    /// The wall clock the service reads (arrival times, iterator, lease
    /// and subscription expiry, retention).
    pub clock: Clock,
}

impl Default for DataStreamsConfig {
    fn default() -> Self {
        DataStreamsConfig {
            region: kinema_core::aws::DEFAULT_REGION.into(),
            account_id: kinema_core::aws::DEFAULT_ACCOUNT_ID.into(),
            max_record_bytes: 1 << 20,
            max_shards_per_stream: 256,
            shard_write_bytes_per_s: 0,
            shard_write_records_per_s: 0,
            segment_bytes: 64 << 20,
            clock: Clock::system(),
        }
    }
}

/// What the control plane knows about a data stream; persisted as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataStreamInfo {
    pub name: String,
    pub id: String,
    pub arn: String,
    pub created_ms: i64,
    pub retention_hours: u32,
    pub tags: BTreeMap<String, String>,
    pub shards: ShardMap,
    #[serde(default)]
    pub consumers: Vec<ConsumerInfo>,
    /// Server-side consumer groups: leases and checkpoints per group.
    #[serde(default)]
    pub groups: BTreeMap<String, LeaseTable>,
}

/// Default lease duration of a consumer group member.
pub const DEFAULT_LEASE_MS: i64 = 10_000;

/// A registered enhanced fan-out consumer (for SubscribeToShard).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConsumerInfo {
    pub name: String,
    pub arn: String,
    pub created_ms: i64,
}

/// How long one SubscribeToShard subscription lasts (as in the original).
pub const SUBSCRIPTION_MS: i64 = 5 * 60 * 1000;

/// One record to append.
#[derive(Debug, Clone)]
pub struct PutEntry {
    pub partition_key: String,
    pub explicit_hash_key: Option<u128>,
    pub data: Bytes,
}

/// Where an appended record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResult {
    pub shard: u32,
    pub sequence: u64,
}

/// A record as read back.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub sequence: u64,
    pub arrival_ms: i64,
    pub partition_key: String,
    pub data: Bytes,
}

pub struct RecordsPage {
    pub records: Vec<ReadRecord>,
    /// `None` once a closed shard is drained.
    pub next_iterator: Option<String>,
    pub millis_behind_latest: i64,
    /// Set when a closed shard is drained: its children.
    pub child_shards: Vec<kinema_datastream::Shard>,
}

/// Where a shard iterator starts.
#[derive(Debug, Clone, Copy)]
pub enum IteratorStart {
    TrimHorizon,
    Latest,
    AtSequence(u64),
    AfterSequence(u64),
    AtTimestamp(i64),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    sequence: u64,
    arrival_ms: i64,
    offset: u64,
    len: u32,
}

/// Per entry: where it was stored, or `None` when the shard's write quota
/// refused it (`ProvisionedThroughputExceededException`).
pub type PutOutcome = Option<PutResult>;

struct WriteRequest {
    entries: Vec<PutEntry>,
    reply: oneshot::Sender<Result<Vec<PutOutcome>, EngineError>>,
}

struct DStream {
    info: std::sync::Mutex<DataStreamInfo>,
    index: RwLock<HashMap<u32, Vec<Entry>>>,
    writer: mpsc::Sender<WriteRequest>,
    retain: mpsc::Sender<(i64, oneshot::Sender<Result<usize, EngineError>>)>,
    reader: DataLogReader,
    live: watch::Sender<u64>,
    deleted: AtomicBool,
}

struct Inner {
    store: Store,
    config: DataStreamsConfig,
    streams: RwLock<BTreeMap<String, Arc<DStream>>>,
    key: IteratorKey,
    meta_lock: Mutex<()>,
}

/// The data-stream service handle; cheap to clone.
#[derive(Clone)]
pub struct DataStreams {
    inner: Arc<Inner>,
}

fn valid_name(name: &str) -> bool {
    kinema_core::names::valid(name, kinema_core::names::MAX_DATA_NAME)
}

fn not_found(name: &str) -> EngineError {
    EngineError::ResourceNotFound(format!("Stream {name} under account not found."))
}

impl DataStreams {
    /// Opens the service, replaying every stream's log. `key` signs shard
    /// iterators (random per process: iterators do not survive a restart).
    pub async fn open(
        store: Store,
        config: DataStreamsConfig,
        key: [u8; 32],
    ) -> Result<DataStreams, EngineError> {
        let infos: Vec<DataStreamInfo> = store.load_meta(META_DOC)?.unwrap_or_default();
        let inner = Arc::new(Inner {
            store,
            config,
            streams: RwLock::new(BTreeMap::new()),
            key: IteratorKey::new(key),
            meta_lock: Mutex::new(()),
        });
        let ds = DataStreams { inner };
        for mut info in infos {
            let (log, records) = ds
                .inner
                .store
                .open_data_log(&info.id, ds.inner.config.segment_bytes)?;
            let mut index: HashMap<u32, Vec<Entry>> = HashMap::new();
            for (offset, r) in &records {
                info.shards.observe(r.sequence);
                index.entry(r.shard).or_default().push(Entry {
                    sequence: r.sequence,
                    arrival_ms: r.arrival_ms,
                    offset: *offset,
                    len: r.encoded_len() as u32,
                });
            }
            tracing::info!(stream = %info.name, records = records.len(), "recovered data stream");
            ds.install(info, log, index);
        }
        Ok(ds)
    }

    fn install(&self, info: DataStreamInfo, log: DataLog, index: HashMap<u32, Vec<Entry>>) {
        let (tx, rx) = mpsc::channel(1024);
        let (retain_tx, retain_rx) = mpsc::channel(4);
        let stream = Arc::new(DStream {
            reader: log.reader(),
            info: std::sync::Mutex::new(info.clone()),
            index: RwLock::new(index),
            writer: tx,
            retain: retain_tx,
            live: watch::channel(0).0,
            deleted: AtomicBool::new(false),
        });
        let quota = (
            self.inner.config.shard_write_bytes_per_s,
            self.inner.config.shard_write_records_per_s,
        );
        tokio::spawn(writer_task(
            Arc::downgrade(&stream),
            log,
            rx,
            retain_rx,
            quota,
            self.inner.config.clock,
        ));
        write(&self.inner.streams).insert(info.name, stream);
    }

    fn get(&self, name: &str) -> Result<Arc<DStream>, EngineError> {
        read(&self.inner.streams)
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// Resolves a stream by name or ARN (as the API allows either).
    pub fn resolve_name(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
    ) -> Result<String, EngineError> {
        match (name, arn) {
            (Some(n), _) => Ok(n.to_string()),
            (None, Some(a)) => a
                .rsplit_once(":stream/")
                .map(|(_, n)| n.to_string())
                .ok_or_else(|| EngineError::InvalidArgument(format!("{a} is not a stream ARN"))),
            (None, None) => Err(EngineError::InvalidArgument(
                "StreamName or StreamARN is required".into(),
            )),
        }
    }

    async fn save_meta(&self) -> Result<(), EngineError> {
        let _g = self.inner.meta_lock.lock().await;
        let infos: Vec<DataStreamInfo> = read(&self.inner.streams)
            .values()
            .map(|s| lock(&s.info).clone())
            .collect();
        self.inner.store.save_meta(META_DOC, &infos).await?;
        Ok(())
    }

    /// The service's time (see [`Clock`]).
    fn now_ms(&self) -> i64 {
        self.inner.config.clock.now_ms()
    }

    pub fn config(&self) -> &DataStreamsConfig {
        &self.inner.config
    }

    pub async fn create(&self, name: &str, shard_count: u32) -> Result<(), EngineError> {
        if !valid_name(name) {
            return Err(EngineError::InvalidArgument(format!(
                "StreamName {name:?} must be 1-128 characters of [a-zA-Z0-9_.-]"
            )));
        }
        if shard_count == 0 || shard_count > self.inner.config.max_shards_per_stream {
            return Err(EngineError::InvalidArgument(format!(
                "ShardCount must be between 1 and {}",
                self.inner.config.max_shards_per_stream
            )));
        }
        if self.get(name).is_ok() {
            return Err(EngineError::ResourceInUse(format!(
                "Stream {name} already exists."
            )));
        }
        let now = self.now_ms();
        let cfg = &self.inner.config;
        let info = DataStreamInfo {
            name: name.to_string(),
            id: format!("{now}-{name}"),
            arn: format!(
                "arn:aws:kinesis:{}:{}:stream/{name}",
                cfg.region, cfg.account_id
            ),
            created_ms: now,
            retention_hours: DEFAULT_RETENTION_HOURS,
            tags: BTreeMap::new(),
            shards: ShardMap::new(shard_count, now),
            consumers: Vec::new(),
            groups: BTreeMap::new(),
        };
        let store = self.inner.store.clone();
        let id = info.id.clone();
        let segment_bytes = self.inner.config.segment_bytes;
        let (log, _) = tokio::task::spawn_blocking(move || store.open_data_log(&id, segment_bytes))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))??;
        self.install(info, log, HashMap::new());
        self.save_meta().await
    }

    pub async fn delete(&self, name: &str) -> Result<(), EngineError> {
        let stream = self.get(name)?;
        write(&self.inner.streams).remove(name);
        stream.deleted.store(true, Ordering::SeqCst);
        self.save_meta().await?;
        let id = lock(&stream.info).id.clone();
        self.inner.store.delete_data_log(&id)?;
        Ok(())
    }

    pub fn describe(&self, name: &str) -> Result<DataStreamInfo, EngineError> {
        Ok(lock(&self.get(name)?.info).clone())
    }

    pub fn list(&self) -> Vec<String> {
        read(&self.inner.streams).keys().cloned().collect()
    }

    async fn update_info(
        &self,
        name: &str,
        f: impl FnOnce(&mut DataStreamInfo) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let stream = self.get(name)?;
        f(&mut lock(&stream.info))?;
        self.save_meta().await
    }

    pub async fn set_retention(
        &self,
        name: &str,
        hours: u32,
        increase: bool,
    ) -> Result<(), EngineError> {
        self.update_info(name, |i| {
            let ok = if increase {
                hours >= i.retention_hours
            } else {
                hours <= i.retention_hours
            };
            if !(DEFAULT_RETENTION_HOURS..=MAX_RETENTION_HOURS).contains(&hours) || !ok {
                return Err(EngineError::InvalidArgument(format!(
                    "retention {hours} h must be {} the current {} h and within 24-8760",
                    if increase { "at least" } else { "at most" },
                    i.retention_hours
                )));
            }
            i.retention_hours = hours;
            Ok(())
        })
        .await
    }

    pub async fn add_tags(
        &self,
        name: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<(), EngineError> {
        self.update_info(name, |i| {
            i.tags.extend(tags);
            if i.tags.len() > 50 {
                return Err(EngineError::InvalidArgument(
                    "at most 50 tags per stream".into(),
                ));
            }
            Ok(())
        })
        .await
    }

    fn reshard_error(e: kinema_datastream::ShardError) -> EngineError {
        match e {
            kinema_datastream::ShardError::UnknownShard(m) => EngineError::ResourceNotFound(m),
            other => EngineError::InvalidArgument(other.to_string()),
        }
    }

    pub async fn split(&self, name: &str, shard: u32, at: u128) -> Result<(), EngineError> {
        self.update_info(name, |i| {
            i.shards
                .split(shard, at, self.now_ms())
                .map(|_| ())
                .map_err(Self::reshard_error)
        })
        .await
    }

    pub async fn merge(&self, name: &str, shard: u32, adjacent: u32) -> Result<(), EngineError> {
        self.update_info(name, |i| {
            i.shards
                .merge(shard, adjacent, self.now_ms())
                .map(|_| ())
                .map_err(Self::reshard_error)
        })
        .await
    }

    pub async fn update_shard_count(&self, name: &str, target: u32) -> Result<u32, EngineError> {
        let mut before = 0;
        self.update_info(name, |i| {
            before = i.shards.open().len() as u32;
            i.shards
                .update_shard_count(target, self.now_ms())
                .map_err(Self::reshard_error)
        })
        .await?;
        Ok(before)
    }

    /// Appends records durably; results are in request order.
    pub async fn put(
        &self,
        name: &str,
        entries: Vec<PutEntry>,
    ) -> Result<Vec<PutOutcome>, EngineError> {
        let stream = self.get(name)?;
        let (reply, rx) = oneshot::channel();
        stream
            .writer
            .send(WriteRequest { entries, reply })
            .await
            .map_err(|_| not_found(name))?;
        rx.await.map_err(|_| not_found(name))?
    }

    pub fn shard_iterator(
        &self,
        name: &str,
        shard: u32,
        start: IteratorStart,
    ) -> Result<String, EngineError> {
        let stream = self.get(name)?;
        let from = start_sequence(&stream, name, shard, start)?;
        Ok(self.inner.key.encode(&IteratorPosition {
            stream: lock(&stream.info).created_ms as u64,
            shard,
            from_sequence: from,
            issued_ms: self.now_ms(),
        }))
    }

    fn by_stamp(&self, stamp: u64) -> Option<Arc<DStream>> {
        read(&self.inner.streams)
            .values()
            .find(|s| lock(&s.info).created_ms as u64 == stamp)
            .cloned()
    }

    pub async fn get_records(
        &self,
        iterator: &str,
        limit: usize,
    ) -> Result<RecordsPage, EngineError> {
        let now = self.now_ms();
        let pos = self.inner.key.decode(iterator, now).map_err(|e| match e {
            IteratorError::Expired => EngineError::ExpiredIterator(e.to_string()),
            IteratorError::Invalid => EngineError::InvalidArgument(e.to_string()),
        })?;
        let stream = self.by_stamp(pos.stream).ok_or_else(|| {
            EngineError::ResourceNotFound("the iterator's stream no longer exists".into())
        })?;
        let chunk = read_shard(&stream, pos.shard, pos.from_sequence, limit, now).await?;
        let next_iterator = (!chunk.drained).then(|| {
            self.inner.key.encode(&IteratorPosition {
                from_sequence: chunk.next_from,
                issued_ms: now,
                ..pos
            })
        });
        Ok(RecordsPage {
            records: chunk.records,
            next_iterator,
            millis_behind_latest: chunk.millis_behind_latest,
            child_shards: chunk.child_shards,
        })
    }

    /// Deletes, in every stream, the log segments whose records are all
    /// older than the stream's retention period at `now_ms`. Returns how
    /// many records went.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, EngineError> {
        let streams: Vec<Arc<DStream>> = read(&self.inner.streams).values().cloned().collect();
        let mut removed = 0;
        for s in streams {
            let (tx, rx) = oneshot::channel();
            if s.retain.send((now_ms, tx)).await.is_ok() {
                removed += rx.await.unwrap_or(Ok(0))?;
            }
        }
        Ok(removed)
    }

    // ---- server-side consumer groups ------------------------------------------

    /// Renews `consumer`'s leases in `group` and takes up to `max` shards in
    /// all; returns its shards with the group's checkpoints. Durable.
    pub async fn acquire_leases(
        &self,
        name: &str,
        group: &str,
        consumer: &str,
        max: usize,
        lease_ms: i64,
    ) -> Result<Vec<(u32, Option<Checkpoint>)>, EngineError> {
        check_member(group, consumer)?;
        let mut out = Vec::new();
        self.update_info(name, |i| {
            let table = i.groups.entry(group.to_string()).or_default();
            for shard in table.acquire(&i.shards, consumer, max, lease_ms, self.now_ms()) {
                out.push((shard, table.shards.get(&shard).and_then(|l| l.checkpoint)));
            }
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Records a checkpoint durably; only the lease owner may.
    pub async fn checkpoint(
        &self,
        name: &str,
        group: &str,
        consumer: &str,
        shard: u32,
        at: Checkpoint,
    ) -> Result<(), EngineError> {
        check_member(group, consumer)?;
        self.update_info(name, |i| {
            let table = i.groups.entry(group.to_string()).or_default();
            table
                .checkpoint(&i.shards, consumer, shard, at, self.now_ms())
                .map_err(|e| EngineError::LeaseLost(e.to_string()))
        })
        .await
    }

    pub async fn release_leases(
        &self,
        name: &str,
        group: &str,
        consumer: &str,
    ) -> Result<(), EngineError> {
        self.update_info(name, |i| {
            if let Some(t) = i.groups.get_mut(group) {
                t.release(consumer);
            }
            Ok(())
        })
        .await
    }

    pub fn group(&self, name: &str, group: &str) -> Result<LeaseTable, EngineError> {
        Ok(lock(&self.get(name)?.info)
            .groups
            .get(group)
            .cloned()
            .unwrap_or_default())
    }

    // ---- enhanced fan-out consumers and SubscribeToShard ----------------------

    fn by_arn(&self, stream_arn: &str) -> Result<Arc<DStream>, EngineError> {
        let name = self.resolve_name(None, Some(stream_arn))?;
        let s = self.get(&name)?;
        if lock(&s.info).arn != stream_arn {
            return Err(not_found(&name));
        }
        Ok(s)
    }

    pub async fn register_consumer(
        &self,
        stream_arn: &str,
        name: &str,
    ) -> Result<ConsumerInfo, EngineError> {
        if !valid_name(name) {
            return Err(EngineError::InvalidArgument(
                "ConsumerName must be 1-128 characters of [a-zA-Z0-9_.-]".into(),
            ));
        }
        let stream = self.by_arn(stream_arn)?;
        let consumer = {
            let mut info = lock(&stream.info);
            if info.consumers.iter().any(|c| c.name == name) {
                return Err(EngineError::ResourceInUse(format!(
                    "Consumer {name} already exists"
                )));
            }
            if info.consumers.len() >= 20 {
                return Err(EngineError::LimitExceeded(
                    "at most 20 consumers per stream".into(),
                ));
            }
            let now = self.now_ms();
            let c = ConsumerInfo {
                name: name.to_string(),
                arn: format!("{}/consumer/{name}:{}", info.arn, now / 1000),
                created_ms: now,
            };
            info.consumers.push(c.clone());
            c
        };
        self.save_meta().await?;
        Ok(consumer)
    }

    /// Finds a consumer by ARN, or by stream ARN and name; returns it with its stream's ARN.
    pub fn describe_consumer(
        &self,
        consumer_arn: Option<&str>,
        stream_arn: Option<&str>,
        name: Option<&str>,
    ) -> Result<(ConsumerInfo, String), EngineError> {
        let missing = || EngineError::ResourceNotFound("the consumer does not exist".into());
        let (stream_arn, by_arn) = match (consumer_arn, stream_arn, name) {
            (Some(arn), _, _) => (
                arn.split("/consumer/")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                Some(arn),
            ),
            (None, Some(s), Some(_)) => (s.to_string(), None),
            _ => {
                return Err(EngineError::InvalidArgument(
                    "ConsumerARN, or StreamARN and ConsumerName, are required".into(),
                ));
            }
        };
        let stream = self.by_arn(&stream_arn).map_err(|_| missing())?;
        let info = lock(&stream.info);
        info.consumers
            .iter()
            .find(|c| match by_arn {
                Some(a) => c.arn == a,
                None => Some(c.name.as_str()) == name,
            })
            .cloned()
            .map(|c| (c, stream_arn.clone()))
            .ok_or_else(missing)
    }

    pub fn list_consumers(&self, stream_arn: &str) -> Result<Vec<ConsumerInfo>, EngineError> {
        Ok(lock(&self.by_arn(stream_arn)?.info).consumers.clone())
    }

    pub async fn deregister_consumer(
        &self,
        consumer_arn: Option<&str>,
        stream_arn: Option<&str>,
        name: Option<&str>,
    ) -> Result<(), EngineError> {
        let (consumer, stream_arn) = self.describe_consumer(consumer_arn, stream_arn, name)?;
        let stream = self.by_arn(&stream_arn)?;
        lock(&stream.info)
            .consumers
            .retain(|c| c.arn != consumer.arn);
        self.save_meta().await
    }

    /// Starts a push subscription to one shard of a stream by name (the
    /// browser-friendly push; no registered consumer needed).
    pub fn subscribe_by_name(
        &self,
        name: &str,
        shard: u32,
        start: IteratorStart,
    ) -> Result<Subscription, EngineError> {
        let stream = self.get(name)?;
        let next_from = start_sequence(&stream, name, shard, start)?;
        Ok(Subscription {
            live: stream.live.subscribe(),
            stream,
            shard,
            next_from,
            started_ms: self.now_ms(),
            clock: self.inner.config.clock,
            done: false,
        })
    }

    /// Starts a SubscribeToShard subscription for a registered consumer.
    pub fn subscribe(
        &self,
        consumer_arn: &str,
        shard: u32,
        start: IteratorStart,
    ) -> Result<Subscription, EngineError> {
        let (_, stream_arn) = self.describe_consumer(Some(consumer_arn), None, None)?;
        let name = lock(&self.by_arn(&stream_arn)?.info).name.clone();
        self.subscribe_by_name(&name, shard, start)
    }
}

fn check_member(group: &str, consumer: &str) -> Result<(), EngineError> {
    if valid_name(group) && !consumer.is_empty() && consumer.len() <= 256 {
        Ok(())
    } else {
        Err(EngineError::InvalidArgument(
            "group must be 1-128 characters of [a-zA-Z0-9_.-] and consumer 1-256 characters".into(),
        ))
    }
}

/// The first sequence number an iterator or subscription starting at
/// `start` in `shard` reads.
fn start_sequence(
    stream: &DStream,
    name: &str,
    shard: u32,
    start: IteratorStart,
) -> Result<u64, EngineError> {
    let info = lock(&stream.info);
    let s = info
        .shards
        .shard(shard)
        .ok_or_else(|| {
            EngineError::ResourceNotFound(format!("Shard {shard} in stream {name} does not exist"))
        })?
        .clone();
    let in_shard = |seq: u64| {
        if seq < s.starting_sequence || s.ending_sequence.is_some_and(|e| seq > e) {
            Err(EngineError::InvalidArgument(format!(
                "sequence number {} does not belong to shard {}",
                kinema_datastream::sequence_string(seq),
                kinema_datastream::shard_id_string(shard)
            )))
        } else {
            Ok(seq)
        }
    };
    let from = match start {
        IteratorStart::TrimHorizon => 0,
        IteratorStart::Latest => info.shards.next_sequence(),
        IteratorStart::AtSequence(seq) => in_shard(seq)?,
        IteratorStart::AfterSequence(seq) => in_shard(seq)? + 1,
        IteratorStart::AtTimestamp(t) => {
            let index = read(&stream.index);
            let entries = index.get(&shard).map(Vec::as_slice).unwrap_or_default();
            let i = entries.partition_point(|e| e.arrival_ms < t);
            entries
                .get(i)
                .map(|e| e.sequence)
                .unwrap_or(info.shards.next_sequence())
        }
    };
    Ok(from)
}

/// Records read from one shard position.
struct ShardChunk {
    records: Vec<ReadRecord>,
    next_from: u64,
    drained: bool,
    millis_behind_latest: i64,
    child_shards: Vec<kinema_datastream::Shard>,
}

async fn read_shard(
    stream: &Arc<DStream>,
    shard: u32,
    from: u64,
    limit: usize,
    now: i64,
) -> Result<ShardChunk, EngineError> {
    let limit = limit.clamp(1, MAX_GET_RECORDS);
    let (picked, tip) = {
        let index = read(&stream.index);
        let entries = index.get(&shard).map(Vec::as_slice).unwrap_or_default();
        let i = entries.partition_point(|e| e.sequence < from);
        let mut bytes = 0usize;
        let picked: Vec<Entry> = entries[i..]
            .iter()
            .take(limit)
            .take_while(|e| {
                bytes += e.len as usize;
                bytes <= MAX_GET_BYTES
            })
            .copied()
            .collect();
        (picked, entries.last().map(|e| e.sequence))
    };
    let reader = stream.reader.clone();
    let raw = tokio::task::spawn_blocking(move || {
        picked
            .iter()
            .map(|e| reader.read_at(e.offset, e.len as usize))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| EngineError::Internal(e.to_string()))??;
    let mut records = Vec::with_capacity(raw.len());
    for bytes in raw {
        let (r, _) = record::decode_one(&bytes)
            .ok_or_else(|| EngineError::Internal("a stored record is unreadable".into()))?;
        records.push(ReadRecord {
            sequence: r.sequence,
            arrival_ms: r.arrival_ms,
            partition_key: r.partition_key,
            data: r.data,
        });
    }
    let next_from = records.last().map(|r| r.sequence + 1).unwrap_or(from);
    let info = lock(&stream.info);
    let caught_up = tip.is_none_or(|t| next_from > t);
    // A closed shard takes no more records: once the reader is past its last
    // one, it is drained (its last record may be well below the shard's
    // ending sequence number, which is stream-wide).
    let drained = caught_up && info.shards.shard(shard).is_some_and(|s| !s.is_open());
    let millis_behind_latest = match records.last() {
        Some(r) if !caught_up => (now - r.arrival_ms).max(0),
        _ => 0,
    };
    let child_shards = if drained {
        info.shards.children(shard).into_iter().cloned().collect()
    } else {
        Vec::new()
    };
    Ok(ShardChunk {
        records,
        next_from,
        drained,
        millis_behind_latest,
        child_shards,
    })
}

/// One SubscribeToShardEvent.
pub struct SubscribeEvent {
    pub records: Vec<ReadRecord>,
    /// The sequence number to resume after (AFTER_SEQUENCE_NUMBER).
    pub continuation_sequence: u64,
    pub millis_behind_latest: i64,
    pub child_shards: Vec<kinema_datastream::Shard>,
}

/// A push subscription to one shard: yields an event as soon as records
/// arrive, a heartbeat event when none do, and ends after
/// [`SUBSCRIPTION_MS`] or once a closed shard is drained.
pub struct Subscription {
    stream: Arc<DStream>,
    live: watch::Receiver<u64>,
    shard: u32,
    next_from: u64,
    started_ms: i64,
    clock: Clock,
    done: bool,
}

impl Subscription {
    /// The next event, waiting up to `heartbeat` for new records.
    pub async fn next_event(
        &mut self,
        heartbeat: std::time::Duration,
    ) -> Option<Result<SubscribeEvent, EngineError>> {
        if self.done
            || self.stream.deleted.load(Ordering::SeqCst)
            || self.clock.now_ms() - self.started_ms >= SUBSCRIPTION_MS
        {
            return None;
        }
        let deadline = tokio::time::Instant::now() + heartbeat;
        loop {
            self.live.borrow_and_update();
            let chunk = match read_shard(
                &self.stream,
                self.shard,
                self.next_from,
                MAX_GET_RECORDS,
                self.clock.now_ms(),
            )
            .await
            {
                Ok(c) => c,
                Err(e) => return Some(Err(e)),
            };
            let timed_out = tokio::time::Instant::now() >= deadline;
            if !chunk.records.is_empty() || chunk.drained || timed_out {
                self.next_from = chunk.next_from;
                self.done = chunk.drained;
                return Some(Ok(SubscribeEvent {
                    records: chunk.records,
                    continuation_sequence: chunk.next_from.saturating_sub(1),
                    millis_behind_latest: chunk.millis_behind_latest,
                    child_shards: chunk.child_shards,
                }));
            }
            let _ = tokio::time::timeout_at(deadline, self.live.changed()).await;
        }
    }
}

/// Retention on the writer task (so it never races an append): deletes the
/// older segments whose newest record is past the retention period, then
/// drops their records from the index (a prefix of every shard's entries,
/// since positions follow sequence order).
async fn retain(
    stream: &Arc<DStream>,
    log: DataLog,
    segment_newest: &mut BTreeMap<u32, i64>,
    now: i64,
) -> (DataLog, Result<usize, EngineError>) {
    let cutoff = now - i64::from(lock(&stream.info).retention_hours) * 3_600_000;
    let active = log.active_segment();
    // Only a prefix of segments goes, so the index loses a prefix too.
    let expired: Vec<u32> = segment_newest
        .iter()
        .take_while(|(seg, newest)| **seg != active && **newest < cutoff)
        .map(|(seg, _)| *seg)
        .collect();
    if expired.is_empty() {
        return (log, Ok(0));
    }
    let mut l = log;
    let gone = expired.clone();
    let (l, result) = match tokio::task::spawn_blocking(move || {
        let r = l.delete_segments(&gone);
        (l, r)
    })
    .await
    {
        Ok(v) => v,
        // delete_segments only removes files and returns errors as values.
        Err(e) => panic!("the segment deletion task panicked: {e}"),
    };
    if let Err(e) = result {
        return (l, Err(e.into()));
    }
    let last = *expired.last().expect("not empty");
    let mut removed = 0;
    for entries in write(&stream.index).values_mut() {
        let keep = entries.partition_point(|e| kinema_store::segment_of(e.offset) <= last);
        removed += keep;
        entries.drain(..keep);
    }
    for seg in expired {
        segment_newest.remove(&seg);
    }
    (l, Ok(removed))
}

/// The single appender of a stream's log: batches concurrent requests into
/// one write and one fdatasync, then acknowledges them all.
async fn writer_task(
    stream: std::sync::Weak<DStream>,
    log: DataLog,
    mut rx: mpsc::Receiver<WriteRequest>,
    mut retain_rx: mpsc::Receiver<(i64, oneshot::Sender<Result<usize, EngineError>>)>,
    (quota_bytes, quota_records): (u64, u64),
    clock: Clock,
) {
    let mut log = Some(log);
    let mut quotas: HashMap<u32, kinema_datastream::quota::ShardQuota> = HashMap::new();
    // The newest arrival time in each segment, for retention.
    let mut segment_newest: BTreeMap<u32, i64> = BTreeMap::new();
    if let Some(s) = stream.upgrade() {
        for entries in read(&s.index).values() {
            for e in entries {
                let seg = kinema_store::segment_of(e.offset);
                let newest = segment_newest.entry(seg).or_insert(i64::MIN);
                *newest = (*newest).max(e.arrival_ms);
            }
        }
    }
    loop {
        let first = tokio::select! {
            r = rx.recv() => match r {
                Some(r) => r,
                None => return,
            },
            cmd = retain_rx.recv() => {
                let Some((now, reply)) = cmd else { return };
                let Some(s) = stream.upgrade() else { return };
                let Some(l) = log.take() else { return };
                let (l, result) = retain(&s, l, &mut segment_newest, now).await;
                log = Some(l);
                let _ = reply.send(result);
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REQUESTS {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let Some(stream) = stream.upgrade() else {
            return;
        };
        if stream.deleted.load(Ordering::SeqCst) {
            for r in batch {
                let _ = r.reply.send(Err(EngineError::ResourceNotFound(
                    "the stream was deleted".into(),
                )));
            }
            continue;
        }
        let now = clock.now_ms();
        let mut bytes = Vec::new();
        let mut placed: Vec<(u32, Entry)> = Vec::new();
        let mut results: Vec<Vec<PutOutcome>> = Vec::with_capacity(batch.len());
        {
            let mut info = lock(&stream.info);
            for req in &batch {
                let mut out = Vec::with_capacity(req.entries.len());
                for e in &req.entries {
                    let hash = e
                        .explicit_hash_key
                        .unwrap_or_else(|| hash_key(&e.partition_key));
                    let shard = info.shards.route(hash).id;
                    let size = (e.data.len() + e.partition_key.len()) as u64;
                    let admitted = quotas
                        .entry(shard)
                        .or_insert_with(|| {
                            kinema_datastream::quota::ShardQuota::new(
                                quota_bytes,
                                quota_records,
                                now,
                            )
                        })
                        .admit(size, now);
                    if !admitted {
                        out.push(None);
                        continue;
                    }
                    let sequence = info
                        .shards
                        .assign(shard)
                        .expect("route returns an open shard");
                    let r = StoredRecord {
                        shard,
                        sequence,
                        arrival_ms: now,
                        partition_key: e.partition_key.clone(),
                        data: e.data.clone(),
                    };
                    let offset = bytes.len() as u64;
                    record::encode(&r, &mut bytes);
                    placed.push((
                        shard,
                        Entry {
                            sequence,
                            arrival_ms: now,
                            offset,
                            len: r.encoded_len() as u32,
                        },
                    ));
                    out.push(Some(PutResult { shard, sequence }));
                }
                results.push(out);
            }
        }
        let mut l = log.take().expect("the writer owns the log between batches");
        let (l, written) = match tokio::task::spawn_blocking(move || {
            let r = l.append(&bytes);
            (l, r)
        })
        .await
        {
            Ok(v) => v,
            Err(_) => return,
        };
        log = Some(l);
        match written {
            Ok(base) => {
                let newest = segment_newest
                    .entry(kinema_store::segment_of(base))
                    .or_insert(i64::MIN);
                *newest = (*newest).max(now);
                {
                    let mut index = write(&stream.index);
                    for (shard, mut e) in placed {
                        e.offset += base;
                        index.entry(shard).or_default().push(e);
                    }
                }
                stream.live.send_modify(|n| *n += 1);
                for (req, res) in batch.into_iter().zip(results) {
                    let _ = req.reply.send(Ok(res));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "data log append failed");
                for req in batch {
                    let _ = req.reply.send(Err(EngineError::Internal(
                        "the record could not be stored".into(),
                    )));
                }
            }
        }
    }
}
