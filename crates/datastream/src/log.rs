//! The write side of a data stream's log, shared by every backend: a batch
//! of puts is admitted (each record routed to its shard and charged to the
//! shard's write quota) and numbered in log order, encoded as one append,
//! and, once that append is durable, turned into the index entries readers
//! use. The shell owns the file (or the JetStream subject) and the fsync;
//! nothing here does I/O or reads a clock.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::quota::ShardQuota;
use crate::record::{self, StoredRecord};
use crate::{ShardMap, hash_key};

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

/// Per entry: where it was stored, or `None` when the shard's write quota
/// refused it (`ProvisionedThroughputExceededException`).
pub type PutOutcome = Option<PutResult>;

/// Where one stored record is: what a shard's index holds, in sequence
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub sequence: u64,
    pub arrival_ms: i64,
    /// Position in the log (the backend's own addressing).
    pub offset: u64,
    /// Encoded length (`record::encode`).
    pub len: u32,
}

/// The write quotas of a stream's shards; a zero rate disables a limit.
#[derive(Debug, Clone)]
pub struct ShardQuotas {
    bytes_per_s: u64,
    records_per_s: u64,
    by_shard: HashMap<u32, ShardQuota>,
}

impl ShardQuotas {
    pub fn new(bytes_per_s: u64, records_per_s: u64) -> ShardQuotas {
        ShardQuotas {
            bytes_per_s,
            records_per_s,
            by_shard: HashMap::new(),
        }
    }

    fn admit(&mut self, shard: u32, size: u64, now_ms: i64) -> bool {
        let (b, r) = (self.bytes_per_s, self.records_per_s);
        self.by_shard
            .entry(shard)
            .or_insert_with(|| ShardQuota::new(b, r, now_ms))
            .admit(size, now_ms)
    }
}

/// A batch admitted and numbered: its bytes are to be written as one
/// append, and only once they are durable may [`Batch::commit`] publish it.
#[derive(Debug)]
pub struct Batch {
    /// The encoded records, in sequence order.
    pub bytes: Vec<u8>,
    /// Every record's arrival time (one per batch).
    pub arrival_ms: i64,
    placed: Vec<(u32, IndexEntry)>,
    outcomes: Vec<Vec<PutOutcome>>,
}

impl Batch {
    /// The outcome of each request of the batch, without committing it
    /// (what a failed write would have stored).
    pub fn outcomes(&self) -> &[Vec<PutOutcome>] {
        &self.outcomes
    }

    /// After the batch's bytes are durable at log position `base`: the
    /// index entries it adds (by shard, in sequence order) and each
    /// request's outcomes.
    pub fn commit(self, base: u64) -> (Vec<(u32, IndexEntry)>, Vec<Vec<PutOutcome>>) {
        let placed = self
            .placed
            .into_iter()
            .map(|(shard, mut e)| {
                e.offset += base;
                (shard, e)
            })
            .collect();
        (placed, self.outcomes)
    }
}

/// Admits the records of `requests` (several callers' puts, in arrival
/// order) at `now_ms`: each is routed to the open shard holding its hash
/// key, refused if that shard's quota is spent (using no sequence number),
/// or numbered from the stream's sequence counter, so sequence numbers
/// rise in log order.
pub fn admit(
    shards: &mut ShardMap,
    quotas: &mut ShardQuotas,
    requests: &[&[PutEntry]],
    now_ms: i64,
) -> Batch {
    let mut batch = Batch {
        bytes: Vec::new(),
        arrival_ms: now_ms,
        placed: Vec::new(),
        outcomes: Vec::with_capacity(requests.len()),
    };
    for entries in requests {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries.iter() {
            let hash = e
                .explicit_hash_key
                .unwrap_or_else(|| hash_key(&e.partition_key));
            let shard = shards.route(hash).id;
            let size = (e.data.len() + e.partition_key.len()) as u64;
            if !quotas.admit(shard, size, now_ms) {
                out.push(None);
                continue;
            }
            let sequence = shards
                .assign(shard)
                .expect("route returns an open shard, which assign accepts");
            let r = StoredRecord {
                shard,
                sequence,
                arrival_ms: now_ms,
                partition_key: e.partition_key.clone(),
                data: e.data.clone(),
            };
            let offset = batch.bytes.len() as u64;
            record::encode(&r, &mut batch.bytes);
            batch.placed.push((
                shard,
                IndexEntry {
                    sequence,
                    arrival_ms: now_ms,
                    offset,
                    len: r.encoded_len() as u32,
                },
            ));
            out.push(Some(PutResult { shard, sequence }));
        }
        batch.outcomes.push(out);
    }
    batch
}

/// At most this many records per GetRecords.
pub const MAX_GET_RECORDS: usize = 10_000;
/// At most this many bytes of records per GetRecords.
pub const MAX_GET_BYTES: usize = 10 << 20;

/// Which of a shard's index entries a read from sequence `from` takes: at
/// most `limit` (clamped to 1..=[`MAX_GET_RECORDS`]) and
/// [`MAX_GET_BYTES`], and the shard's newest sequence number (the tip).
pub fn plan_read(
    entries: &[IndexEntry],
    from: u64,
    limit: usize,
) -> (Vec<IndexEntry>, Option<u64>) {
    let limit = limit.clamp(1, MAX_GET_RECORDS);
    let i = entries.partition_point(|e| e.sequence < from);
    let mut bytes = 0usize;
    let picked = entries[i..]
        .iter()
        .take(limit)
        .take_while(|e| {
            bytes += e.len as usize;
            bytes <= MAX_GET_BYTES
        })
        .copied()
        .collect();
    (picked, entries.last().map(|e| e.sequence))
}

/// Where a read left a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEnd {
    /// The sequence number the next read starts from.
    pub next_from: u64,
    /// The shard is closed and the reader is past its last record.
    pub drained: bool,
    /// How far the last record read is behind `now` (0 when caught up).
    pub millis_behind_latest: i64,
}

/// Ends a read from `from` that returned records up to `last` (its
/// sequence number and arrival time), given the tip from [`plan_read`].
/// `closed` is whether the shard was already closed when the index was
/// read for that plan: a shard that closed after it may hold records the
/// plan did not see, so it is not drained yet.
pub fn finish_read(
    closed: bool,
    from: u64,
    tip: Option<u64>,
    last: Option<(u64, i64)>,
    now_ms: i64,
) -> ReadEnd {
    let next_from = last.map(|(seq, _)| seq + 1).unwrap_or(from);
    let caught_up = tip.is_none_or(|t| next_from > t);
    // A closed shard takes no more records: once the reader is past its last
    // one, it is drained (its last record may be well below the shard's
    // ending sequence number, which is stream-wide).
    let drained = caught_up && closed;
    let millis_behind_latest = match last {
        Some((_, arrival)) if !caught_up => (now_ms - arrival).max(0),
        _ => 0,
    };
    ReadEnd {
        next_from,
        drained,
        millis_behind_latest,
    }
}

/// Retention: the units of the log (segments of the local log) that go at
/// `now_ms` for a retention of `retention_hours`: the oldest ones whose
/// newest record is older than the retention period, stopping at the
/// first that is not and never taking the `active` one, so only a prefix
/// of the log (and of every shard's index) goes.
pub fn plan_expiry(
    newest_by_unit: &BTreeMap<u32, i64>,
    active: u32,
    retention_hours: u32,
    now_ms: i64,
) -> Vec<u32> {
    let cutoff = now_ms - i64::from(retention_hours) * 3_600_000;
    newest_by_unit
        .iter()
        .take_while(|(unit, newest)| **unit != active && **newest < cutoff)
        .map(|(unit, _)| *unit)
        .collect()
}

/// Drops from a shard's index the entries stored in units up to and
/// including `last` (`unit_of` maps a position to its unit); returns how
/// many went.
pub fn trim_index(entries: &mut Vec<IndexEntry>, last: u32, unit_of: impl Fn(u64) -> u32) -> usize {
    let gone = entries.partition_point(|e| unit_of(e.offset) <= last);
    entries.drain(..gone);
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, data: &str) -> PutEntry {
        PutEntry {
            partition_key: key.into(),
            explicit_hash_key: None,
            data: Bytes::from(data.to_string()),
        }
    }

    #[test]
    fn a_batch_numbers_records_in_log_order_and_commits_at_its_base() {
        let mut shards = ShardMap::new(4, 0);
        let mut quotas = ShardQuotas::new(0, 0);
        let a: Vec<PutEntry> = (0..5).map(|i| entry(&format!("k{i}"), "x")).collect();
        let b = vec![entry("k9", "yy")];
        let batch = admit(&mut shards, &mut quotas, &[&a, &b], 1_000);
        let decoded = record::decode_log(&batch.bytes).0;
        assert_eq!(decoded.len(), 6);
        let seqs: Vec<u64> = decoded.iter().map(|(_, r)| r.sequence).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let (placed, outcomes) = batch.commit(500);
        assert_eq!(outcomes[0].len(), 5);
        assert_eq!(outcomes[1][0].unwrap().sequence, seqs[5]);
        for ((shard, e), (offset, r)) in placed.iter().zip(&decoded) {
            assert_eq!(
                (*shard, e.sequence, e.arrival_ms),
                (r.shard, r.sequence, 1_000)
            );
            assert_eq!(e.offset, 500 + offset, "positions shift by the base");
            assert_eq!(e.len as usize, r.encoded_len());
        }
    }

    #[test]
    fn a_spent_quota_refuses_records_without_using_sequence_numbers() {
        let mut shards = ShardMap::new(1, 0);
        let mut quotas = ShardQuotas::new(0, 2);
        let entries: Vec<PutEntry> = (0..4).map(|i| entry("k", &format!("{i}"))).collect();
        let batch = admit(&mut shards, &mut quotas, &[&entries], 0);
        let got: Vec<Option<u64>> = batch.outcomes()[0]
            .iter()
            .map(|o| o.map(|r| r.sequence))
            .collect();
        assert_eq!(got[2..], [None, None]);
        let next = admit(&mut shards, &mut quotas, &[&entries[..1]], 1_000);
        assert_eq!(
            next.outcomes()[0][0].unwrap().sequence,
            got[1].unwrap() + 1,
            "refused records left no gap"
        );
    }

    fn index(seqs: &[u64], len: u32) -> Vec<IndexEntry> {
        seqs.iter()
            .map(|&sequence| IndexEntry {
                sequence,
                arrival_ms: sequence as i64 * 10,
                offset: sequence * 100,
                len,
            })
            .collect()
    }

    #[test]
    fn a_read_takes_from_its_position_within_the_count_and_byte_limits() {
        let entries = index(&[3, 5, 8, 13], 10);
        let (picked, tip) = plan_read(&entries, 4, 2);
        assert_eq!(
            picked.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [5, 8]
        );
        assert_eq!(tip, Some(13));
        assert_eq!(plan_read(&entries, 0, 0).0.len(), 1, "at least one");
        assert!(plan_read(&entries, 14, 10).0.is_empty());
        let big = index(&[1, 2, 3], (MAX_GET_BYTES / 2) as u32);
        assert_eq!(plan_read(&big, 0, 10).0.len(), 2, "the byte limit");
    }

    #[test]
    fn a_closed_shard_is_drained_once_its_last_record_is_read() {
        let mut shards = ShardMap::new(1, 0);
        for _ in 0..3 {
            shards.assign(0).unwrap();
        }
        let closed = |m: &ShardMap| m.shard(0).is_some_and(|s| !s.is_open());
        let behind = finish_read(closed(&shards), 0, Some(2), Some((1, 100)), 250);
        assert_eq!(
            behind,
            ReadEnd {
                next_from: 2,
                drained: false,
                millis_behind_latest: 150
            }
        );
        let caught_up = finish_read(closed(&shards), 0, Some(2), Some((2, 100)), 250);
        assert_eq!(
            (caught_up.drained, caught_up.millis_behind_latest),
            (false, 0)
        );
        shards.split(0, 1 << 127, 300).unwrap();
        assert!(finish_read(closed(&shards), 3, Some(2), None, 400).drained);
        assert!(!finish_read(closed(&shards), 0, Some(2), Some((1, 100)), 400).drained);
        assert!(
            !finish_read(false, 3, Some(2), None, 400).drained,
            "closed after the plan: not drained yet"
        );
    }

    #[test]
    fn expiry_takes_an_old_prefix_of_the_log_and_of_the_index() {
        let hour = 3_600_000;
        let newest: BTreeMap<u32, i64> = [
            (0, hour),
            (1, 2 * hour),
            (2, 30 * hour),
            (3, 3 * hour),
            (4, 4 * hour),
        ]
        .into();
        // 24 h retention at 28 h: segments 0 and 1 go; 3 is old but follows
        // a young one, and 4 is active anyway.
        assert_eq!(plan_expiry(&newest, 4, 24, 28 * hour), [0, 1]);
        assert_eq!(
            plan_expiry(&newest, 1, 24, 28 * hour),
            [0],
            "never the active one"
        );
        assert!(plan_expiry(&newest, 4, 24, 24 * hour).is_empty());
        let mut entries = index(&[1, 2, 3, 4], 10);
        // Unit of a position: its hundreds (positions 100..400).
        assert_eq!(trim_index(&mut entries, 2, |o| (o / 100) as u32), 2);
        assert_eq!(
            entries.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [3, 4]
        );
    }
}
