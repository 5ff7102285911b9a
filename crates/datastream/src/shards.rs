//! A stream's shards: hash-key ranges over the 128-bit space, routing,
//! sequence numbers and resharding.
//!
//! Invariants (property-tested): the open shards' ranges cover
//! `0..=u128::MAX` with no gap and no overlap; sequence numbers come from one
//! stream-wide counter, so they strictly increase within a shard and every
//! child shard's first sequence number is above its parents' last.

use md5::{Digest, Md5};

/// A shard: its id, hash-key range (inclusive), lineage and lifetime.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub id: u32,
    #[serde(with = "u128_string")]
    pub start: u128,
    #[serde(with = "u128_string")]
    pub end: u128,
    pub parent: Option<u32>,
    pub adjacent_parent: Option<u32>,
    /// First sequence number this shard can hold.
    pub starting_sequence: u64,
    /// Last sequence number assigned before the shard closed.
    pub ending_sequence: Option<u64>,
    pub created_ms: i64,
    pub closed_ms: Option<i64>,
}

impl Shard {
    pub fn is_open(&self) -> bool {
        self.closed_ms.is_none()
    }

    pub fn contains(&self, hash: u128) -> bool {
        self.start <= hash && hash <= self.end
    }

    pub fn parents(&self) -> impl Iterator<Item = u32> {
        self.parent.into_iter().chain(self.adjacent_parent)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("shard {0} does not exist")]
    UnknownShard(String),
    #[error("shard {0} is closed")]
    ShardClosed(String),
    #[error("NewStartingHashKey must lie inside the shard's range, above its start")]
    SplitOutsideRange,
    #[error("shards {0} and {1} are not adjacent")]
    NotAdjacent(String, String),
    #[error("target shard count {target} must be between {min} and {max}")]
    ShardCountOutOfRange { target: u32, min: u32, max: u32 },
}

/// `shardId-000000000007`.
pub fn shard_id_string(id: u32) -> String {
    format!("shardId-{id:012}")
}

/// Parses `shardId-000000000007` (or a bare decimal) to its number.
pub fn parse_shard_id(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("shardId-").unwrap_or(s);
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The hash key of a partition key: MD5 read as a big-endian 128-bit integer.
pub fn hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// Parses an `ExplicitHashKey` (a decimal string in `0..2^128`).
pub fn parse_hash_key(s: &str) -> Option<u128> {
    if s.is_empty() || s.len() > 39 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// 128-bit hash keys as decimal strings in JSON (numbers that large do not
/// survive JSON readers).
mod u128_string {
    pub fn serialize<S: serde::Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// All shards of one stream, open and closed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardMap {
    shards: Vec<Shard>,
    next_sequence: u64,
}

impl ShardMap {
    /// A stream of `count` (at least 1) shards splitting the space evenly.
    pub fn new(count: u32, now_ms: i64) -> ShardMap {
        let count = count.max(1);
        let mut map = ShardMap {
            shards: Vec::new(),
            next_sequence: 1,
        };
        for (start, end) in uniform_ranges(0, u128::MAX, count) {
            map.push(start, end, None, None, now_ms);
        }
        map
    }

    /// Rebuilds a map from stored shards and the next sequence number.
    pub fn from_parts(shards: Vec<Shard>, next_sequence: u64) -> ShardMap {
        ShardMap {
            shards,
            next_sequence,
        }
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    pub fn shard(&self, id: u32) -> Option<&Shard> {
        self.shards.get(id as usize)
    }

    /// Open shards in hash-key order.
    pub fn open(&self) -> Vec<&Shard> {
        let mut open: Vec<&Shard> = self.shards.iter().filter(|s| s.is_open()).collect();
        open.sort_by_key(|s| s.start);
        open
    }

    pub fn children(&self, id: u32) -> Vec<&Shard> {
        self.shards
            .iter()
            .filter(|s| s.parents().any(|p| p == id))
            .collect()
    }

    fn push(
        &mut self,
        start: u128,
        end: u128,
        parent: Option<u32>,
        adjacent: Option<u32>,
        now_ms: i64,
    ) -> u32 {
        let id = self.shards.len() as u32;
        self.shards.push(Shard {
            id,
            start,
            end,
            parent,
            adjacent_parent: adjacent,
            starting_sequence: self.next_sequence,
            ending_sequence: None,
            created_ms: now_ms,
            closed_ms: None,
        });
        id
    }

    fn open_shard(&self, id: u32) -> Result<&Shard, ShardError> {
        let s = self
            .shard(id)
            .ok_or_else(|| ShardError::UnknownShard(shard_id_string(id)))?;
        if !s.is_open() {
            return Err(ShardError::ShardClosed(shard_id_string(id)));
        }
        Ok(s)
    }

    fn close(&mut self, id: u32, now_ms: i64) {
        let last = self.next_sequence - 1;
        let s = &mut self.shards[id as usize];
        s.closed_ms = Some(now_ms);
        s.ending_sequence = Some(last);
    }

    /// The open shard owning a hash key. There always is one.
    pub fn route(&self, hash: u128) -> &Shard {
        self.shards
            .iter()
            .find(|s| s.is_open() && s.contains(hash))
            .expect("open shards cover the whole hash space")
    }

    /// Raises the next sequence number above `seq` (recovery from the log).
    pub fn observe(&mut self, seq: u64) {
        self.next_sequence = self.next_sequence.max(seq + 1);
    }

    /// Assigns the next sequence number to a record going to `shard`.
    pub fn assign(&mut self, shard: u32) -> Result<u64, ShardError> {
        self.open_shard(shard)?;
        let seq = self.next_sequence;
        self.next_sequence += 1;
        Ok(seq)
    }

    /// SplitShard: the shard closes; two children take `[start, at-1]` and `[at, end]`.
    pub fn split(&mut self, id: u32, at: u128, now_ms: i64) -> Result<(u32, u32), ShardError> {
        let s = self.open_shard(id)?;
        if at <= s.start || at > s.end {
            return Err(ShardError::SplitOutsideRange);
        }
        let (start, end) = (s.start, s.end);
        self.close(id, now_ms);
        let a = self.push(start, at - 1, Some(id), None, now_ms);
        let b = self.push(at, end, Some(id), None, now_ms);
        Ok((a, b))
    }

    /// MergeShards: two adjacent open shards close; one child takes both ranges.
    pub fn merge(&mut self, id: u32, adjacent: u32, now_ms: i64) -> Result<u32, ShardError> {
        let a = self.open_shard(id)?.clone();
        let b = self.open_shard(adjacent)?.clone();
        let (lo, hi) = if a.start < b.start {
            (&a, &b)
        } else {
            (&b, &a)
        };
        if id == adjacent || lo.end.checked_add(1) != Some(hi.start) {
            return Err(ShardError::NotAdjacent(
                shard_id_string(id),
                shard_id_string(adjacent),
            ));
        }
        let (start, end) = (lo.start, hi.end);
        self.close(id, now_ms);
        self.close(adjacent, now_ms);
        Ok(self.push(start, end, Some(id), Some(adjacent), now_ms))
    }

    /// UpdateShardCount (UNIFORM_SCALING): splits the widest open shard or
    /// merges the narrowest adjacent pair until `target` shards are open.
    /// Like the original, the target must be within half and double the
    /// current count.
    pub fn update_shard_count(&mut self, target: u32, now_ms: i64) -> Result<(), ShardError> {
        let current = self.open().len() as u32;
        let (min, max) = (current.div_ceil(2).max(1), current.saturating_mul(2));
        if target < min || target > max {
            return Err(ShardError::ShardCountOutOfRange { target, min, max });
        }
        while (self.open().len() as u32) < target {
            let widest = self
                .open()
                .into_iter()
                .max_by_key(|s| (s.end - s.start, std::cmp::Reverse(s.start)))
                .map(|s| (s.id, s.start, s.end))
                .expect("at least one shard is open");
            let mid = widest.1 + (widest.2 - widest.1) / 2 + 1;
            self.split(widest.0, mid, now_ms)?;
        }
        while (self.open().len() as u32) > target {
            let open = self.open();
            let pair = open
                .windows(2)
                .min_by_key(|w| {
                    (
                        (w[0].end - w[0].start) / 2 + (w[1].end - w[1].start) / 2,
                        w[0].start,
                    )
                })
                .map(|w| (w[0].id, w[1].id))
                .expect("more than one shard is open");
            self.merge(pair.0, pair.1, now_ms)?;
        }
        Ok(())
    }
}

/// Splits `[start, end]` into `n` near-equal consecutive ranges.
fn uniform_ranges(start: u128, end: u128, n: u32) -> Vec<(u128, u128)> {
    let n = n as u128;
    let width = end - start;
    let step = width / n;
    (0..n)
        .map(|i| {
            let s = start + i * step + i.min(width % n);
            let e = if i + 1 == n {
                end
            } else {
                start + (i + 1) * step + (i + 1).min(width % n) - 1
            };
            (s, e)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn assert_covers(map: &ShardMap) {
        let open = map.open();
        assert_eq!(open.first().unwrap().start, 0);
        assert_eq!(open.last().unwrap().end, u128::MAX);
        for w in open.windows(2) {
            assert_eq!(w[0].end + 1, w[1].start, "no gap and no overlap");
        }
    }

    #[test]
    fn partition_keys_route_by_md5() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e.
        assert_eq!(hash_key(""), 0xd41d8cd98f00b204e9800998ecf8427e);
        let map = ShardMap::new(4, 0);
        assert_eq!(map.route(hash_key("")).id, 3);
        assert_eq!(map.route(0).id, 0);
        assert_eq!(
            parse_hash_key("340282366920938463463374607431768211455"),
            Some(u128::MAX)
        );
        assert_eq!(
            parse_hash_key("340282366920938463463374607431768211456"),
            None
        );
    }

    #[test]
    fn split_and_merge_keep_lineage_and_sequences() {
        let mut map = ShardMap::new(1, 0);
        let s1 = map.assign(0).unwrap();
        let (a, b) = map.split(0, 1 << 127, 10).unwrap();
        assert!(map.assign(0).is_err(), "a closed shard takes no records");
        assert_eq!(map.shard(0).unwrap().ending_sequence, Some(s1));
        assert!(map.shard(a).unwrap().starting_sequence > s1);
        assert_eq!(map.children(0).len(), 2);
        assert!(matches!(
            map.merge(a, a, 0),
            Err(ShardError::NotAdjacent(..))
        ));
        let m = map.merge(b, a, 20).unwrap();
        let merged = map.shard(m).unwrap();
        assert_eq!((merged.start, merged.end), (0, u128::MAX));
        assert_eq!((merged.parent, merged.adjacent_parent), (Some(b), Some(a)));
        assert_eq!(shard_id_string(m), "shardId-000000000003");
        assert_eq!(parse_shard_id("shardId-000000000003"), Some(3));
        assert!(matches!(
            map.split(m, 0, 0),
            Err(ShardError::SplitOutsideRange)
        ));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u128),
        Split(usize, u128),
        Merge(usize),
        Scale(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u128>().prop_map(Op::Put),
            2 => (any::<usize>(), any::<u128>()).prop_map(|(i, h)| Op::Split(i, h)),
            2 => any::<usize>().prop_map(Op::Merge),
            1 => (1u32..12).prop_map(Op::Scale),
        ]
    }

    proptest! {
        #[test]
        fn any_resharding_keeps_coverage_and_ordered_sequences(start in 1u32..6, ops in prop::collection::vec(op(), 0..60)) {
            let mut map = ShardMap::new(start, 0);
            let mut last_seq_per_shard = std::collections::HashMap::<u32, u64>::new();
            for (t, op) in ops.into_iter().enumerate() {
                let now = t as i64;
                match op {
                    Op::Put(h) => {
                        let shard = map.route(h).id;
                        let seq = map.assign(shard).unwrap();
                        if let Some(prev) = last_seq_per_shard.insert(shard, seq) {
                            prop_assert!(seq > prev);
                        }
                        for p in map.shard(shard).unwrap().parents() {
                            if let Some(end) = map.shard(p).unwrap().ending_sequence {
                                prop_assert!(seq > end, "child records follow the parent's");
                            }
                        }
                    }
                    Op::Split(i, h) => {
                        let open = map.open();
                        let s = open[i % open.len()];
                        let (id, lo, hi) = (s.id, s.start, s.end);
                        let at = if hi > lo { lo + 1 + h % (hi - lo) } else { lo };
                        let r = map.split(id, at, now);
                        prop_assert_eq!(r.is_ok(), hi > lo);
                    }
                    Op::Merge(i) => {
                        let open = map.open();
                        if open.len() > 1 {
                            let k = i % (open.len() - 1);
                            let (a, b) = (open[k].id, open[k + 1].id);
                            map.merge(a, b, now).unwrap();
                        }
                    }
                    Op::Scale(n) => {
                        let cur = map.open().len() as u32;
                        let r = map.update_shard_count(n, now);
                        prop_assert_eq!(r.is_ok(), n >= cur.div_ceil(2) && n <= cur * 2);
                        if r.is_ok() {
                            prop_assert_eq!(map.open().len() as u32, n);
                        }
                    }
                }
                assert_covers(&map);
                for s in map.shards().iter().filter(|s| !s.is_open()) {
                    prop_assert!(s.ending_sequence.is_some());
                }
            }
        }
    }
}
