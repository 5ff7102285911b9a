//! Queues on data streams: the control plane (create, describe, list,
//! update, delete) and the record operations (receive, acknowledge,
//! visibility, dead letters) over `kinema_datastream::queue`.
//!
//! Each queue keeps its state in memory and every change in its own change
//! log (`data/<stream>/queues/<queue>/changes.wal`), written before the
//! request is answered. Concurrent requests share one fdatasync (group
//! commit: the first to reach the log writes every change staged so far).
//! Every `group_compact_after` changes the state is snapshotted beside the
//! log and the log emptied. Receives are planned one at a time per queue
//! (a record goes to one receiver); the records they return are read from
//! the stream's log.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kinema_core::sync::{lock, read, write};
use kinema_datastream::queue::{
    self, HandleError, Op, QueueChange, QueueState, Settings, encode_change,
};
use kinema_store::AppendLog;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::reads::{read_shard, start_sequence};
use super::{DStream, DataStreams, IteratorStart, valid_name};
use crate::EngineError;

/// Registered consumers and queues a stream may have together.
pub const MAX_CONSUMERS_AND_QUEUES: usize = 20;

/// Where a queue starts, as it was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueStart {
    TrimHorizon,
    Latest,
    AtTimestamp(i64),
}

/// A queue as the control plane knows it; kept in its stream's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    /// The resource id in the ARN (16 hex digits, random).
    pub id: String,
    pub arn: String,
    pub created_ms: i64,
    pub start: QueueStart,
    /// The time the queue's effective starting position stands for.
    pub effective_start_ms: i64,
    pub visibility_s: u32,
    /// `None`: dead-letter handling off.
    pub max_receive: Option<u32>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl QueueInfo {
    fn settings(&self) -> Settings {
        Settings {
            visibility_ms: i64::from(self.visibility_s) * 1000,
            max_receive: self.max_receive,
        }
    }

    fn uid(&self) -> u64 {
        u64::from_str_radix(&self.id, 16).unwrap_or_default()
    }
}

/// A queue with its stream's name and ARN (for describe and list).
#[derive(Debug, Clone)]
pub struct QueueView {
    pub info: QueueInfo,
    pub stream_name: String,
    pub stream_arn: String,
    pub stream_created_ms: i64,
}

/// Attributes a create or update sets; `None` leaves one as it is (or
/// at its default, for a create).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueAttributes {
    pub visibility_s: Option<u32>,
    /// `Some(None)`: dead-letter handling off.
    pub max_receive: Option<Option<u32>>,
}

/// A record as a queue delivers it.
#[derive(Debug, Clone)]
pub struct QueueRecord {
    pub receipt_handle: String,
    pub sequence: u64,
    pub partition_key: String,
    pub data: Bytes,
    pub arrival_ms: i64,
    pub first_receive_ms: i64,
    pub receive_count: u32,
}

/// What an entry of an acknowledge, visibility or restore request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryAction {
    Acknowledge,
    /// Visibility timeout in seconds from now.
    Visibility(u32),
    Restore,
}

/// Why one entry of a batch failed: the error code and message the
/// response carries for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError {
    pub code: &'static str,
    pub message: String,
}

/// The in-memory side of one queue.
pub(super) struct Queue {
    info: std::sync::Mutex<QueueInfo>,
    stream: Arc<DStream>,
    stream_id: String,
    uid: u64,
    state: std::sync::Mutex<Staged>,
    /// Held while a receive is planned, so that a record goes to one
    /// receiver.
    planning: tokio::sync::Mutex<()>,
    /// Held by the request writing staged changes to the log.
    wal: tokio::sync::Mutex<WalState>,
    /// Records became visible (visibility 0, restore): wakes long polls.
    changed: Notify,
    deleted: AtomicBool,
}

/// The state with the changes not yet written.
struct Staged {
    state: QueueState,
    buf: Vec<u8>,
    /// When records past retention were last looked for.
    swept_ms: i64,
    /// The shard a first delivery reads first next time (fairness).
    next_shard: usize,
}

struct WalState {
    log: AppendLog,
    /// Every change up to this lsn was written (or failed).
    written: u64,
    /// Recent batches that failed, as lsn ranges.
    failed: VecDeque<(u64, u64)>,
    since_snapshot: usize,
}

fn missing_queue(arn: &str) -> EngineError {
    EngineError::ResourceNotFound(format!("Queue {arn} not found."))
}

fn handle_error(e: HandleError) -> EntryError {
    EntryError {
        code: "InvalidArgumentException",
        message: e.to_string(),
    }
}

impl DataStreams {
    fn queue_prefix(&self) -> String {
        format!(
            "arn:aws:kinesis:{}:{}:queue/",
            self.inner.config.region, self.inner.config.account_id
        )
    }

    fn queue(&self, arn: &str) -> Result<Arc<Queue>, EngineError> {
        let id = arn
            .strip_prefix(&self.queue_prefix())
            .ok_or_else(|| missing_queue(arn))?;
        read(&self.inner.queues)
            .get(id)
            .filter(|q| !q.deleted.load(Ordering::SeqCst))
            .cloned()
            .ok_or_else(|| missing_queue(arn))
    }

    /// The stream a queue reads (for authorisation), if the queue exists.
    pub fn queue_stream(&self, arn: &str) -> Option<String> {
        let q = self.queue(arn).ok()?;
        Some(lock(&q.stream.info).name.clone())
    }

    /// Opens the queues a stream's metadata names (at service start).
    pub(super) fn open_queues(&self, stream: &Arc<DStream>) -> Result<(), EngineError> {
        let (infos, stream_id) = {
            let info = lock(&stream.info);
            (info.queues.clone(), info.id.clone())
        };
        for q in infos {
            let (log, changes, snapshot) = self.inner.store.open_queue_log(&stream_id, &q.id)?;
            let mut state = snapshot
                .ok_or_else(|| EngineError::Internal(format!("queue {} has no snapshot", q.arn)))?;
            state.replay(&changes);
            tracing::info!(queue = %q.name, pending = state.pending.len(), changes = changes.len(), "recovered queue");
            self.install_queue(stream, &stream_id, q, state, log, changes.len());
        }
        Ok(())
    }

    fn install_queue(
        &self,
        stream: &Arc<DStream>,
        stream_id: &str,
        info: QueueInfo,
        state: QueueState,
        log: AppendLog,
        since_snapshot: usize,
    ) {
        let written = state.lsn;
        let q = Arc::new(Queue {
            uid: info.uid(),
            stream: stream.clone(),
            stream_id: stream_id.to_string(),
            state: std::sync::Mutex::new(Staged {
                state,
                buf: Vec::new(),
                swept_ms: i64::MIN,
                next_shard: 0,
            }),
            planning: tokio::sync::Mutex::new(()),
            wal: tokio::sync::Mutex::new(WalState {
                log,
                written,
                failed: VecDeque::new(),
                since_snapshot,
            }),
            changed: Notify::new(),
            deleted: AtomicBool::new(false),
            info: std::sync::Mutex::new(info.clone()),
        });
        write(&self.inner.queues).insert(info.id, q);
    }

    pub async fn create_queue(
        &self,
        name: &str,
        stream_arn: &str,
        start: QueueStart,
        attributes: QueueAttributes,
        tags: BTreeMap<String, String>,
    ) -> Result<QueueView, EngineError> {
        if !valid_name(name) {
            return Err(EngineError::Validation(
                "QueueName must be 1-128 characters of [a-zA-Z0-9_.-]".into(),
            ));
        }
        let visibility_s = attributes
            .visibility_s
            .unwrap_or(queue::DEFAULT_VISIBILITY_S);
        let max_receive = attributes
            .max_receive
            .unwrap_or(Some(queue::DEFAULT_MAX_RECEIVE));
        check_attributes(visibility_s, max_receive)?;
        let stream = self.by_arn(stream_arn)?;
        let _g = self.inner.meta_lock_queues.lock().await;
        if stream.deleted.load(Ordering::SeqCst) {
            return Err(EngineError::ResourceNotFound(format!(
                "Stream {stream_arn} not found."
            )));
        }
        if read(&self.inner.queues)
            .values()
            .any(|q| !q.deleted.load(Ordering::SeqCst) && lock(&q.info).name == name)
        {
            return Err(EngineError::ResourceInUse(format!(
                "Queue {name} already exists."
            )));
        }
        let now = self.now_ms();
        let (stream_name, stream_id, created) = {
            let info = lock(&stream.info);
            if info.consumers.len() + info.queues.len() >= MAX_CONSUMERS_AND_QUEUES {
                return Err(EngineError::LimitExceeded(format!(
                    "at most {MAX_CONSUMERS_AND_QUEUES} registered consumers and queues per stream"
                )));
            }
            (info.name.clone(), info.id.clone(), info.created_ms)
        };
        // Where first deliveries start: every shard at one sequence number,
        // or for a timestamp each shard at its first record from then on.
        let mut state = QueueState::new(0);
        let effective_start_ms = match start {
            QueueStart::Latest => {
                state.start = lock(&stream.info).shards.next_sequence();
                now
            }
            QueueStart::TrimHorizon => oldest_arrival(&stream).unwrap_or(created),
            QueueStart::AtTimestamp(t) => {
                let shards: Vec<u32> = lock(&stream.info)
                    .shards
                    .shards()
                    .iter()
                    .map(|s| s.id)
                    .collect();
                for shard in shards {
                    let from = start_sequence(
                        &stream,
                        &stream_name,
                        shard,
                        IteratorStart::AtTimestamp(t),
                    )?;
                    state.cursors.insert(shard, from);
                }
                t.max(oldest_arrival(&stream).unwrap_or(created))
            }
        };
        let mut raw = [0u8; 8];
        getrandom::getrandom(&mut raw).map_err(|e| EngineError::Internal(e.to_string()))?;
        let id = format!("{:016x}", u64::from_le_bytes(raw) | 1);
        let info = QueueInfo {
            name: name.to_string(),
            arn: format!("{}{id}", self.queue_prefix()),
            id,
            created_ms: now,
            start,
            effective_start_ms,
            visibility_s,
            max_receive,
            tags,
        };
        let (log, _, _) = self.inner.store.open_queue_log(&stream_id, &info.id)?;
        self.inner
            .store
            .save_queue_snapshot(&stream_id, &info.id, &state)
            .await?;
        lock(&stream.info).queues.push(info.clone());
        if let Err(e) = self.save_meta().await {
            lock(&stream.info).queues.retain(|q| q.id != info.id);
            return Err(e);
        }
        self.install_queue(&stream, &stream_id, info.clone(), state, log, 0);
        Ok(self.view(&stream, info))
    }

    fn view(&self, stream: &DStream, info: QueueInfo) -> QueueView {
        let s = lock(&stream.info);
        QueueView {
            info,
            stream_name: s.name.clone(),
            stream_arn: s.arn.clone(),
            stream_created_ms: s.created_ms,
        }
    }

    pub fn describe_queue(&self, arn: &str) -> Result<QueueView, EngineError> {
        let q = self.queue(arn)?;
        let info = lock(&q.info).clone();
        Ok(self.view(&q.stream, info))
    }

    /// Every queue, or those on one stream, by name.
    pub fn list_queues(&self, stream_arn: Option<&str>) -> Result<Vec<QueueView>, EngineError> {
        if let Some(arn) = stream_arn {
            self.by_arn(arn)?;
        }
        let mut out: Vec<QueueView> = read(&self.inner.queues)
            .values()
            .filter(|q| !q.deleted.load(Ordering::SeqCst))
            .filter(|q| stream_arn.is_none_or(|a| lock(&q.stream.info).arn == a))
            .map(|q| self.view(&q.stream, lock(&q.info).clone()))
            .collect();
        out.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        Ok(out)
    }

    pub async fn update_queue(
        &self,
        arn: &str,
        attributes: QueueAttributes,
    ) -> Result<QueueView, EngineError> {
        let q = self.queue(arn)?;
        let _g = self.inner.meta_lock_queues.lock().await;
        let mut info = lock(&q.info).clone();
        if let Some(v) = attributes.visibility_s {
            info.visibility_s = v;
        }
        if let Some(m) = attributes.max_receive {
            info.max_receive = m;
        }
        check_attributes(info.visibility_s, info.max_receive)?;
        let before = {
            let mut s = lock(&q.stream.info);
            let slot = s
                .queues
                .iter_mut()
                .find(|x| x.id == info.id)
                .ok_or_else(|| missing_queue(arn))?;
            std::mem::replace(slot, info.clone())
        };
        if let Err(e) = self.save_meta().await {
            if let Some(slot) = lock(&q.stream.info)
                .queues
                .iter_mut()
                .find(|x| x.id == info.id)
            {
                *slot = before;
            }
            return Err(e);
        }
        *lock(&q.info) = info.clone();
        // A lower MaxReceiveCount may make dead letters of visible records.
        q.changed.notify_waiters();
        Ok(self.view(&q.stream, info))
    }

    pub async fn delete_queue(&self, arn: &str) -> Result<(), EngineError> {
        let q = self.queue(arn)?;
        let _g = self.inner.meta_lock_queues.lock().await;
        let id = lock(&q.info).id.clone();
        q.deleted.store(true, Ordering::SeqCst);
        lock(&q.stream.info).queues.retain(|x| x.id != id);
        self.save_meta().await?;
        write(&self.inner.queues).remove(&id);
        q.changed.notify_waiters();
        // Wait for a write in progress before removing the files.
        let _wal = q.wal.lock().await;
        self.inner.store.delete_queue_log(&q.stream_id, &id)?;
        Ok(())
    }

    /// Receives up to `limit` records (dead letters if `dead`), waiting up
    /// to `wait` for one to become visible.
    pub async fn receive_queue(
        &self,
        arn: &str,
        limit: usize,
        wait: Duration,
        dead: bool,
    ) -> Result<Vec<QueueRecord>, EngineError> {
        let q = self.queue(arn)?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut live = q.stream.live.subscribe();
        loop {
            live.borrow_and_update();
            let notified = q.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (records, next_visible) = self.receive_once(&q, limit, dead).await?;
            if !records.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(records);
            }
            if q.deleted.load(Ordering::SeqCst) {
                return Err(missing_queue(arn));
            }
            // Sleep until a record may be visible: one put, one made
            // visible, one whose timeout ends, or the deadline.
            let mut until = deadline;
            if let Some(at) = next_visible {
                let ms = (at - self.now_ms()).max(0) as u64;
                until = until.min(tokio::time::Instant::now() + Duration::from_millis(ms));
            }
            tokio::select! {
                _ = live.changed(), if !dead => {}
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// One receive attempt: the records and, if none, when the next
    /// in-flight record becomes visible.
    async fn receive_once(
        &self,
        q: &Arc<Queue>,
        limit: usize,
        dead: bool,
    ) -> Result<(Vec<QueueRecord>, Option<i64>), EngineError> {
        let _plan = q.planning.lock().await;
        let now = self.now_ms();
        let settings = lock(&q.info).settings();
        let mut ops = Vec::new();
        let again = {
            let mut st = lock(&q.state);
            if now.saturating_sub(st.swept_ms) >= 5_000 {
                st.swept_ms = now;
                for (shard, first_kept) in first_kept(&q.stream) {
                    ops.extend(st.state.past_retention(shard, first_kept));
                }
            }
            ops.extend(st.state.expire(now, settings));
            for op in &ops {
                st.state.apply(op);
            }
            st.state.visible(now, limit, dead)
        };
        let mut picked: Vec<(u32, super::ReadRecord)> = Vec::new();
        for (shard, seq) in again {
            let chunk = read_shard(&q.stream, shard, seq, 1, now).await?;
            match chunk.records.into_iter().next() {
                Some(r) if r.sequence == seq => picked.push((shard, r)),
                _ => {
                    let op = Op::Dropped { seq };
                    lock(&q.state).state.apply(&op);
                    ops.push(op);
                }
            }
        }
        if !dead && picked.len() < limit {
            let shards: Vec<u32> = lock(&q.stream.info)
                .shards
                .shards()
                .iter()
                .map(|s| s.id)
                .collect();
            let first = {
                let mut st = lock(&q.state);
                st.next_shard = st.next_shard.wrapping_add(1);
                st.next_shard
            };
            for i in 0..shards.len() {
                let shard = shards[(first + i) % shards.len()];
                let need = limit - picked.len();
                if need == 0 {
                    break;
                }
                let from = lock(&q.state).state.cursor(shard);
                let chunk = read_shard(&q.stream, shard, from, need, now).await?;
                picked.extend(chunk.records.into_iter().map(|r| (shard, r)));
            }
        }
        let visibility_ms = settings.visibility_ms;
        let (records, lsn, next_visible) = {
            let mut st = lock(&q.state);
            let mut records = Vec::with_capacity(picked.len());
            for (shard, r) in picked {
                let op = st
                    .state
                    .receive(shard, r.sequence, now, visibility_ms, dead);
                st.state.apply(&op);
                ops.push(op);
                let p = &st.state.pending[&r.sequence];
                records.push(QueueRecord {
                    receipt_handle: queue::Handle {
                        queue: q.uid,
                        shard,
                        seq: r.sequence,
                        delivery: p.delivery,
                    }
                    .encode(),
                    sequence: r.sequence,
                    partition_key: r.partition_key,
                    data: r.data,
                    arrival_ms: r.arrival_ms,
                    first_receive_ms: p.first_receive_ms,
                    receive_count: p.receive_count,
                });
            }
            let lsn = stage(&mut st, ops);
            let next = st.state.next_visible(dead);
            (records, lsn, next)
        };
        drop(_plan);
        if let Some(lsn) = lsn {
            self.durable(q, lsn).await?;
        }
        Ok((records, next_visible))
    }

    /// Acknowledges, changes the visibility of, or restores records by
    /// receipt handle (dead letters if `dead`); one result per entry.
    pub async fn queue_entries(
        &self,
        arn: &str,
        actions: &[EntryAction],
        dead: bool,
        handles: &[String],
    ) -> Result<Vec<Result<(), EntryError>>, EngineError> {
        let q = self.queue(arn)?;
        let now = self.now_ms();
        let mut results = Vec::with_capacity(handles.len());
        let mut visible = false;
        let lsn = {
            let mut st = lock(&q.state);
            let mut ops = Vec::new();
            for (h, &action) in handles.iter().zip(actions) {
                let op = match (action, st.state.check(q.uid, h, dead)) {
                    // An acknowledgement repeated (or of a record the
                    // stream no longer holds) changes nothing.
                    (EntryAction::Acknowledge, Err(HandleError::Gone)) => Ok(None),
                    (_, Err(e)) => Err(handle_error(e)),
                    (EntryAction::Acknowledge, Ok(seq)) => Ok(Some(Op::Acked { seq })),
                    (EntryAction::Visibility(s), Ok(seq)) => {
                        visible |= s == 0;
                        Ok(Some(Op::Visibility {
                            seq,
                            visible_at_ms: now.saturating_add(i64::from(s) * 1000),
                        }))
                    }
                    (EntryAction::Restore, Ok(seq)) => {
                        visible = true;
                        Ok(Some(Op::Restored { seq, at_ms: now }))
                    }
                };
                results.push(op.map(|op| {
                    if let Some(op) = op {
                        st.state.apply(&op);
                        ops.push(op);
                    }
                }));
            }
            stage(&mut st, ops)
        };
        if let Some(lsn) = lsn {
            self.durable(&q, lsn).await?;
        }
        if visible {
            q.changed.notify_waiters();
        }
        Ok(results)
    }

    /// Returns once the change `lsn` is in the queue's log: written by
    /// this request together with every change staged before it, or by
    /// an earlier one.
    async fn durable(&self, q: &Queue, lsn: u64) -> Result<(), EngineError> {
        let mut wal = q.wal.lock().await;
        if lsn <= wal.written {
            return if wal.failed.iter().any(|&(a, b)| (a..=b).contains(&lsn)) {
                Err(EngineError::Internal(
                    "the queue's change log could not be written".into(),
                ))
            } else {
                Ok(())
            };
        }
        let (bytes, upto) = {
            let mut st = lock(&q.state);
            (std::mem::take(&mut st.buf), st.state.lsn)
        };
        let from = wal.written + 1;
        let result = wal.log.append(bytes).await;
        wal.written = upto;
        if let Err(e) = result {
            wal.failed.push_back((from, upto));
            if wal.failed.len() > 64 {
                wal.failed.pop_front();
            }
            return Err(e.into());
        }
        wal.since_snapshot += 1;
        if wal.since_snapshot >= self.inner.config.group_compact_after.max(1) {
            // The snapshot holds every change up to its lsn, written or
            // only staged; the ones staged after it are written later and
            // skipped at replay (their lsn is not above the snapshot's).
            let snapshot = lock(&q.state).state.clone();
            self.inner
                .store
                .save_queue_snapshot(&q.stream_id, &format!("{:016x}", q.uid), &snapshot)
                .await?;
            wal.log.truncate().await?;
            wal.since_snapshot = 0;
        }
        Ok(())
    }

    /// Whether a stream has queues (which must be deleted first).
    pub(super) fn has_queues(stream: &DStream) -> bool {
        !lock(&stream.info).queues.is_empty()
    }
}

/// Stages `ops` as the next change; its lsn, or `None` if there is nothing.
fn stage(st: &mut Staged, ops: Vec<Op>) -> Option<u64> {
    if ops.is_empty() {
        return None;
    }
    st.state.lsn += 1;
    let change = QueueChange {
        lsn: st.state.lsn,
        ops,
    };
    encode_change(&change, &mut st.buf);
    Some(st.state.lsn)
}

fn check_attributes(visibility_s: u32, max_receive: Option<u32>) -> Result<(), EngineError> {
    if visibility_s > queue::MAX_VISIBILITY_S {
        return Err(EngineError::Validation(format!(
            "VisibilityTimeoutSeconds must be at most {}",
            queue::MAX_VISIBILITY_S
        )));
    }
    if let Some(m) = max_receive
        && !(1..=queue::MAX_MAX_RECEIVE).contains(&m)
    {
        return Err(EngineError::Validation(format!(
            "MaxReceiveCount must be between 1 and {}",
            queue::MAX_MAX_RECEIVE
        )));
    }
    Ok(())
}

/// The arrival time of the oldest record the stream keeps.
fn oldest_arrival(stream: &DStream) -> Option<i64> {
    read(&stream.index)
        .values()
        .filter_map(|entries| entries.first().map(|e| e.arrival_ms))
        .min()
}

/// Per shard, the sequence number of its oldest retained record (or the
/// stream's next one when it keeps none): records below have expired.
fn first_kept(stream: &DStream) -> Vec<(u32, u64)> {
    let (shards, next): (Vec<u32>, u64) = {
        let info = lock(&stream.info);
        (
            info.shards.shards().iter().map(|s| s.id).collect(),
            info.shards.next_sequence(),
        )
    };
    let index = read(&stream.index);
    shards
        .into_iter()
        .map(|s| {
            let first = index
                .get(&s)
                .and_then(|e| e.first())
                .map_or(next, |e| e.sequence);
            (s, first)
        })
        .collect()
}
