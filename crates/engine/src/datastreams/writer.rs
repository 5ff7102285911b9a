//! The single writer of a stream's log: puts batched into one write and
//! one fdatasync (group commit), sequence numbers assigned in log order,
//! per-shard write quotas; and, between batches, retention of whole
//! segments and resharding (so neither races an append).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use kinema_core::sync::lock;
use kinema_core::sync::read;
use kinema_core::sync::write;
use kinema_datastream::ShardMap;
use kinema_datastream::log::{ShardQuotas, admit, plan_expiry, trim_index};
use kinema_store::DataLog;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use super::{
    DStream, DataStreams, Inner, MAX_BATCH_REQUESTS, PutEntry, PutOutcome, WriteRequest, not_found,
};
use crate::Clock;
use crate::EngineError;

impl DataStreams {
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

    /// Deletes, in every stream, the log segments whose records are all
    /// older than the stream's retention period at `now_ms`. Returns how
    /// many records went.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, EngineError> {
        let streams: Vec<Arc<DStream>> = read(&self.inner.streams).values().cloned().collect();
        let mut removed = 0;
        for s in streams {
            let (tx, rx) = oneshot::channel();
            if s.commands.send(Command::Retain(now_ms, tx)).await.is_ok() {
                removed += rx.await.unwrap_or(Ok(0))?;
            }
        }
        Ok(removed)
    }
}

/// A change the writer task makes between batches.
pub(super) enum Command {
    /// Retention at a time; replies with how many records went.
    Retain(i64, oneshot::Sender<Result<usize, EngineError>>),
    /// A change of the shard map (at a time), saved before the reply.
    Reshard(Reshard, oneshot::Sender<Result<(), EngineError>>),
}

/// A split, merge or shard-count change of a stream's map.
pub(super) type Reshard = Box<dyn FnOnce(&mut ShardMap, i64) -> Result<(), EngineError> + Send>;

/// Retention on the writer task (so it never races an append): drops from
/// the index the records of the older segments whose newest record is past
/// the retention period (a prefix of every shard's entries, since
/// positions follow sequence order), then deletes those segments' files.
/// A read planned before the trim finds its segment gone and plans again.
/// Returns no log if the deletion task died with it.
async fn retain(
    stream: &Arc<DStream>,
    log: DataLog,
    segment_newest: &mut BTreeMap<u32, i64>,
    now: i64,
) -> (Option<DataLog>, Result<usize, EngineError>) {
    let retention_hours = lock(&stream.info).retention_hours;
    // Only a prefix of segments goes, so the index loses a prefix too.
    let expired = plan_expiry(segment_newest, log.active_segment(), retention_hours, now);
    let Some(&last) = expired.last() else {
        return (Some(log), Ok(0));
    };
    let mut removed = 0;
    for entries in write(&stream.index).values_mut() {
        removed += trim_index(entries, last, kinema_store::segment_of);
    }
    let mut l = log;
    let gone = expired.clone();
    match tokio::task::spawn_blocking(move || {
        let r = l.delete_segments(&gone);
        (l, r)
    })
    .await
    {
        Ok((l, Ok(()))) => {
            for seg in &expired {
                segment_newest.remove(seg);
            }
            (Some(l), Ok(removed))
        }
        // The index no longer points there; the next run deletes again.
        Ok((l, Err(e))) => (Some(l), Err(e.into())),
        Err(e) => (
            None,
            Err(EngineError::Internal(format!(
                "the segment deletion task failed: {e}"
            ))),
        ),
    }
}

/// Applies a shard-map change and saves it before any record is admitted
/// under the new map (this task is the only one that admits); on failure
/// the old map is restored.
async fn reshard(
    stream: &DStream,
    service: &std::sync::Weak<Inner>,
    apply: Reshard,
    now: i64,
) -> Result<(), EngineError> {
    let before = {
        let mut info = lock(&stream.info);
        let before = info.shards.clone();
        if let Err(e) = apply(&mut info.shards, now) {
            info.shards = before;
            return Err(e);
        }
        before
    };
    let saved = match service.upgrade() {
        Some(inner) => DataStreams { inner }.save_meta().await,
        None => Err(EngineError::Internal("the service is shutting down".into())),
    };
    if saved.is_err() {
        lock(&stream.info).shards = before;
    }
    saved
}

/// The single appender of a stream's log: batches concurrent requests into
/// one write and one fdatasync, then acknowledges them all.
pub(super) async fn writer_task(
    stream: std::sync::Weak<DStream>,
    service: std::sync::Weak<Inner>,
    log: DataLog,
    mut rx: mpsc::Receiver<WriteRequest>,
    mut commands: mpsc::Receiver<Command>,
    (quota_bytes, quota_records): (u64, u64),
    clock: Clock,
) {
    let mut log = Some(log);
    let mut quotas = ShardQuotas::new(quota_bytes, quota_records);
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
    // Arrival times never go back, even when the clock does: reads by
    // timestamp search each shard's entries in arrival order.
    let mut last_arrival = segment_newest.values().copied().max().unwrap_or(i64::MIN);
    loop {
        let first = tokio::select! {
            r = rx.recv() => match r {
                Some(r) => r,
                None => return,
            },
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return };
                let Some(s) = stream.upgrade() else { return };
                match cmd {
                    Command::Retain(now, reply) => {
                        let Some(l) = log.take() else { return };
                        let (l, result) = retain(&s, l, &mut segment_newest, now).await;
                        let _ = reply.send(result);
                        match l {
                            Some(l) => log = Some(l),
                            None => return,
                        }
                    }
                    Command::Reshard(apply, reply) => {
                        let now = clock.now_ms();
                        let _ = reply.send(reshard(&s, &service, apply, now).await);
                    }
                }
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
        let now = clock.now_ms().max(last_arrival);
        last_arrival = now;
        let mut admitted = {
            let mut info = lock(&stream.info);
            let requests: Vec<&[PutEntry]> = batch.iter().map(|r| &r.entries[..]).collect();
            admit(&mut info.shards, &mut quotas, &requests, now)
        };
        let bytes = std::mem::take(&mut admitted.bytes);
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
                let (placed, results) = admitted.commit(base);
                {
                    let mut index = write(&stream.index);
                    for (shard, e) in placed {
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
