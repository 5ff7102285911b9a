//! Data streams: a durable, sharded log in the style of Kinesis Data Streams.
//!
//! Each stream has one append-only log file (all shards) written by a single
//! writer task that batches concurrent puts into one fdatasync (group
//! commit); a put is acknowledged only after its batch is on disk. Sequence
//! numbers are assigned by the writer in log order, so recovery replays the
//! log and finds the same records, in the same order, with the same numbers.
//!
//! Here: the service handle, the types it speaks, and opening (log replay).
//! `control` (the control plane), `writer` (group commit, quotas,
//! retention), `reads` (iterators, GetRecords), `groups` (leases and
//! checkpoints), `consumers` (enhanced fan-out), `queues` and `delivery`
//! (channels to object storage) hold the operations.

mod consumers;
mod control;
mod delivery;
mod groups;
mod queues;
mod reads;
mod writer;

pub use consumers::{SubscribeEvent, Subscription};
pub use delivery::{ChannelInfo, ChannelSettings, ChannelView, Logging, MAX_CHANNELS_PER_STREAM};
pub use kinema_datastream::delivery::MAX_FRESHNESS_S;
pub use kinema_datastream::log::{MAX_GET_RECORDS, PutEntry, PutOutcome, PutResult};
pub use queues::{
    EntryAction, EntryError, MAX_CONSUMERS_AND_QUEUES, QueueAttributes, QueueInfo, QueueRecord,
    QueueStart, QueueView,
};

/// Where a stored record is, as a shard's index holds it.
type Entry = kinema_datastream::log::IndexEntry;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use kinema_datastream::leases::{LeaseTable, replay_changes};
use kinema_datastream::{IteratorKey, ShardMap};
use kinema_store::{AppendLog, DataLog, DataLogReader, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use crate::{Clock, EngineError};
use kinema_core::sync::{lock, read, write};

const META_DOC: &str = "data-streams";
/// At most this many put requests share one fdatasync.
const MAX_BATCH_REQUESTS: usize = 256;
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
    /// Group changes (lease heartbeats, checkpoints) a stream's change log
    /// holds before the metadata document takes them in.
    pub group_compact_after: usize,
    /// Data streams at most (each holds its active segment open).
    pub max_streams: usize,
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
            group_compact_after: 1024,
            max_streams: 1000,
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
    /// The last group change (`groups.wal`) the `groups` above include.
    #[serde(default)]
    pub groups_lsn: u64,
    /// Queues on this stream (their state is in their own change logs).
    #[serde(default)]
    pub queues: Vec<QueueInfo>,
    /// Channels delivering this stream to object storage.
    #[serde(default)]
    pub channels: Vec<ChannelInfo>,
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

struct WriteRequest {
    entries: Vec<PutEntry>,
    reply: oneshot::Sender<Result<Vec<PutOutcome>, EngineError>>,
}

struct DStream {
    info: std::sync::Mutex<DataStreamInfo>,
    index: RwLock<HashMap<u32, Vec<Entry>>>,
    writer: mpsc::Sender<WriteRequest>,
    /// Retention and resharding, run on the writer task between batches.
    commands: mpsc::Sender<writer::Command>,
    reader: DataLogReader,
    live: watch::Sender<u64>,
    deleted: AtomicBool,
    /// The group change log; its lock orders group changes.
    groups_wal: Mutex<GroupWal>,
}

/// A stream's group change log and how many changes it holds since the
/// metadata document last took them in.
struct GroupWal {
    log: AppendLog,
    since_compaction: usize,
}

struct Inner {
    store: Store,
    config: DataStreamsConfig,
    streams: RwLock<BTreeMap<String, Arc<DStream>>>,
    key: IteratorKey,
    meta_lock: Mutex<()>,
    /// Queues by the id in their ARN.
    queues: RwLock<HashMap<String, Arc<queues::Queue>>>,
    /// Orders queue control-plane changes (names are unique per server).
    meta_lock_queues: Mutex<()>,
    /// Channels by the id in their ARN.
    channels: delivery::Registry,
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
            queues: RwLock::new(HashMap::new()),
            meta_lock_queues: Mutex::new(()),
            channels: RwLock::new(HashMap::new()),
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
            // Group changes acknowledged after the document was last saved.
            let (group_log, changes) = ds.inner.store.open_group_log(&info.id)?;
            info.groups_lsn = replay_changes(&mut info.groups, info.groups_lsn, &changes);
            tracing::info!(stream = %info.name, records = records.len(), group_changes = changes.len(), "recovered data stream");
            let name = info.name.clone();
            ds.install(info, log, index, (group_log, changes.len()));
            let stream = ds.get(&name)?;
            ds.open_queues(&stream)?;
            ds.open_channels(&stream)?;
        }
        Ok(ds)
    }

    fn install(
        &self,
        info: DataStreamInfo,
        log: DataLog,
        index: HashMap<u32, Vec<Entry>>,
        (group_log, changes): (AppendLog, usize),
    ) {
        let (tx, rx) = mpsc::channel(1024);
        let (command_tx, command_rx) = mpsc::channel(4);
        let stream = Arc::new(DStream {
            reader: log.reader(),
            info: std::sync::Mutex::new(info.clone()),
            index: RwLock::new(index),
            writer: tx,
            commands: command_tx,
            live: watch::channel(0).0,
            deleted: AtomicBool::new(false),
            groups_wal: Mutex::new(GroupWal {
                log: group_log,
                since_compaction: changes,
            }),
        });
        let quota = (
            self.inner.config.shard_write_bytes_per_s,
            self.inner.config.shard_write_records_per_s,
        );
        tokio::spawn(writer::writer_task(
            Arc::downgrade(&stream),
            Arc::downgrade(&self.inner),
            log,
            rx,
            command_rx,
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
        // The ARN must be this server's form exactly, and name the same
        // stream as the name when both are given: authorisation and the
        // operation must mean one stream.
        let from_arn = match arn {
            None => None,
            Some(a) => {
                let prefix = format!(
                    "arn:aws:kinesis:{}:{}:stream/",
                    self.inner.config.region, self.inner.config.account_id
                );
                let n = a
                    .strip_prefix(&prefix)
                    .filter(|n| valid_name(n))
                    .ok_or_else(|| {
                        EngineError::InvalidArgument(format!(
                            "{a} is not a stream ARN of this server"
                        ))
                    })?;
                Some(n)
            }
        };
        match (name, from_arn) {
            (Some(n), Some(a)) if n != a => Err(EngineError::InvalidArgument(
                "StreamName and StreamARN name different streams".into(),
            )),
            (Some(n), _) | (None, Some(n)) => Ok(n.to_string()),
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

    async fn update_info(
        &self,
        name: &str,
        f: impl FnOnce(&mut DataStreamInfo) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let stream = self.get(name)?;
        f(&mut lock(&stream.info))?;
        self.save_meta().await
    }
}
