//! Server-side consumer groups: shard leases and checkpoints, as the
//! original's client libraries keep in a lease table, but held by the server.
//!
//! Rules: one owner per shard at a time; a lease lasts `lease_ms` past the
//! owner's last heartbeat and can then be taken over; a child shard is handed
//! out only once every parent is finished (checkpointed at `SHARD_END`), so
//! a group reads each key's records in order across resharding; a
//! checkpoint is accepted only from the current owner.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ShardMap;

/// Where a group has got to in one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Checkpoint {
    /// Every record up to and including this sequence number is processed.
    At(u64),
    /// The (closed) shard is processed to its end.
    ShardEnd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ShardLease {
    pub owner: Option<String>,
    pub expires_ms: i64,
    pub checkpoint: Option<Checkpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("{consumer} does not hold the lease on shard {shard}")]
    NotOwner { consumer: String, shard: u32 },
    #[error("shard {0} does not exist")]
    UnknownShard(u32),
    #[error("SHARD_END is only valid for a closed shard")]
    ShardStillOpen,
}

/// One group's leases over one stream's shards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTable {
    pub shards: BTreeMap<u32, ShardLease>,
}

impl LeaseTable {
    fn finished(&self, shard: u32) -> bool {
        self.shards
            .get(&shard)
            .is_some_and(|l| l.checkpoint == Some(Checkpoint::ShardEnd))
    }

    /// Gives `consumer` up to `max` more available shards (its current
    /// leases are renewed), returning every lease it holds afterwards.
    pub fn acquire(
        &mut self,
        map: &ShardMap,
        consumer: &str,
        max: usize,
        lease_ms: i64,
        now_ms: i64,
    ) -> Vec<u32> {
        self.heartbeat(consumer, lease_ms, now_ms);
        let mut held = self.owned_by(consumer, now_ms).len();
        for s in map.shards() {
            if held >= max {
                break;
            }
            if self.finished(s.id)
                || !s
                    .parents()
                    .all(|p| self.finished(p) || map.shard(p).is_none())
            {
                continue;
            }
            let lease = self.shards.entry(s.id).or_default();
            let free = lease.owner.is_none() || lease.expires_ms <= now_ms;
            if free {
                lease.owner = Some(consumer.to_string());
                lease.expires_ms = now_ms + lease_ms;
                held += 1;
            }
        }
        self.owned_by(consumer, now_ms)
    }

    /// Shards whose unexpired lease `consumer` holds.
    pub fn owned_by(&self, consumer: &str, now_ms: i64) -> Vec<u32> {
        self.shards
            .iter()
            .filter(|(_, l)| l.owner.as_deref() == Some(consumer) && l.expires_ms > now_ms)
            .map(|(s, _)| *s)
            .collect()
    }

    /// Extends every unexpired lease of `consumer`.
    pub fn heartbeat(&mut self, consumer: &str, lease_ms: i64, now_ms: i64) {
        for l in self.shards.values_mut() {
            if l.owner.as_deref() == Some(consumer) && l.expires_ms > now_ms {
                l.expires_ms = now_ms + lease_ms;
            }
        }
    }

    pub fn checkpoint(
        &mut self,
        map: &ShardMap,
        consumer: &str,
        shard: u32,
        at: Checkpoint,
        now_ms: i64,
    ) -> Result<(), LeaseError> {
        let s = map.shard(shard).ok_or(LeaseError::UnknownShard(shard))?;
        if at == Checkpoint::ShardEnd && s.is_open() {
            return Err(LeaseError::ShardStillOpen);
        }
        let lease = self.shards.entry(shard).or_default();
        if lease.owner.as_deref() != Some(consumer) || lease.expires_ms <= now_ms {
            return Err(LeaseError::NotOwner {
                consumer: consumer.to_string(),
                shard,
            });
        }
        lease.checkpoint = Some(at);
        if at == Checkpoint::ShardEnd {
            lease.owner = None;
        }
        Ok(())
    }

    /// Gives up every lease of `consumer` (a clean shutdown).
    pub fn release(&mut self, consumer: &str) {
        for l in self.shards.values_mut() {
            if l.owner.as_deref() == Some(consumer) {
                l.owner = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: i64 = 10_000;

    #[test]
    fn one_owner_per_shard_and_takeover_after_expiry() {
        let map = ShardMap::new(2, 0);
        let mut t = LeaseTable::default();
        assert_eq!(t.acquire(&map, "a", 1, LEASE, 0), [0]);
        assert_eq!(t.acquire(&map, "b", 5, LEASE, 1), [1]);
        assert_eq!(
            t.acquire(&map, "c", 5, LEASE, 2),
            Vec::<u32>::new(),
            "nothing free"
        );
        assert!(t.checkpoint(&map, "c", 0, Checkpoint::At(5), 3).is_err());
        t.checkpoint(&map, "a", 0, Checkpoint::At(5), 3).unwrap();
        // a stops heartbeating; after its lease expires c takes shard 0 and sees the checkpoint.
        t.heartbeat("b", LEASE, 9_000);
        assert_eq!(t.acquire(&map, "c", 5, LEASE, 10_001), [0]);
        assert_eq!(t.shards[&0].checkpoint, Some(Checkpoint::At(5)));
        assert!(
            t.checkpoint(&map, "a", 0, Checkpoint::At(6), 10_002)
                .is_err(),
            "the old owner lost it"
        );
        assert_eq!(t.owned_by("b", 10_002), [1]);
    }

    #[test]
    fn children_wait_until_their_parents_are_finished() {
        let mut map = ShardMap::new(1, 0);
        map.assign(0).unwrap();
        let (l, r) = map.split(0, 1 << 127, 1).unwrap();
        let mut t = LeaseTable::default();
        assert_eq!(t.acquire(&map, "a", 10, LEASE, 2), [0], "only the parent");
        assert_eq!(
            t.checkpoint(&map, "a", l, Checkpoint::At(1), 3)
                .map_err(|_| ()),
            Err(())
        );
        t.checkpoint(&map, "a", 0, Checkpoint::ShardEnd, 3).unwrap();
        assert_eq!(t.acquire(&map, "a", 10, LEASE, 4), [l, r]);
        assert_eq!(
            t.checkpoint(&map, "a", l, Checkpoint::ShardEnd, 5),
            Err(LeaseError::ShardStillOpen)
        );
        t.release("a");
        assert_eq!(t.acquire(&map, "b", 1, LEASE, 6), [l]);
    }
}
