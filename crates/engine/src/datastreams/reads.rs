//! Reads: shard iterators (signed tokens) and GetRecords paging from the
//! in-memory index, with positional reads of the log.

use std::sync::Arc;

use kinema_core::sync::lock;
use kinema_core::sync::read;
use kinema_datastream::IteratorError;
use kinema_datastream::IteratorPosition;
use kinema_datastream::log::{ReadEnd, finish_read, plan_read};
use kinema_datastream::record;
use kinema_store::StoreError;

use super::{DStream, DataStreams, IteratorStart, ReadRecord, RecordsPage};
use crate::EngineError;

impl DataStreams {
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

    /// The stream a genuine shard iterator reads (for authorisation).
    pub fn iterator_stream(&self, iterator: &str) -> Option<String> {
        let pos = self.inner.key.decode(iterator, self.now_ms()).ok()?;
        let stream = self.by_stamp(pos.stream)?;
        let name = lock(&stream.info).name.clone();
        Some(name)
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
}

/// The first sequence number an iterator or subscription starting at
/// `start` in `shard` reads.
pub(super) fn start_sequence(
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
        // The largest sequence number has nothing after it (no overflow).
        IteratorStart::AfterSequence(seq) => in_shard(seq)?.saturating_add(1),
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
pub(super) struct ShardChunk {
    pub(super) records: Vec<ReadRecord>,
    pub(super) next_from: u64,
    pub(super) drained: bool,
    pub(super) millis_behind_latest: i64,
    pub(super) child_shards: Vec<kinema_datastream::Shard>,
}

pub(super) async fn read_shard(
    stream: &Arc<DStream>,
    shard: u32,
    from: u64,
    limit: usize,
    now: i64,
) -> Result<ShardChunk, EngineError> {
    // Retention trims the index before it deletes segments, so a read
    // planned just before finds its segment gone: it plans again.
    let mut attempts = 0;
    let (raw, tip, closed) = loop {
        // Whether the shard was closed before the index is read: the writer
        // indexes every record of a shard before closing it, so a plan made
        // after sees them all.
        let closed = lock(&stream.info)
            .shards
            .shard(shard)
            .is_some_and(|s| !s.is_open());
        let (picked, tip) = {
            let index = read(&stream.index);
            plan_read(
                index.get(&shard).map(Vec::as_slice).unwrap_or_default(),
                from,
                limit,
            )
        };
        let reader = stream.reader.clone();
        let raw = tokio::task::spawn_blocking(move || {
            let spans: Vec<(u64, usize)> =
                picked.iter().map(|e| (e.offset, e.len as usize)).collect();
            reader.read_many(&spans)
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))?;
        attempts += 1;
        match raw {
            Err(StoreError::NotFound(_)) if attempts < 3 => continue,
            raw => break (raw?, tip, closed),
        }
    };
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
    let info = lock(&stream.info);
    let ReadEnd {
        next_from,
        drained,
        millis_behind_latest,
    } = finish_read(
        closed,
        from,
        tip,
        records.last().map(|r| (r.sequence, r.arrival_ms)),
        now,
    );
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
