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

impl LeaseTable {
    /// The leases that differ from `before` (as they are now), for the
    /// group change log: post-images, so replaying them needs no shard map.
    pub fn changed_since(&self, before: &LeaseTable) -> Vec<(u32, ShardLease)> {
        self.shards
            .iter()
            .filter(|(shard, lease)| before.shards.get(shard) != Some(lease))
            .map(|(shard, lease)| (*shard, lease.clone()))
            .collect()
    }

    /// Overwrites the given shards' leases.
    pub fn apply(&mut self, leases: &[(u32, ShardLease)]) {
        for (shard, lease) in leases {
            self.shards.insert(*shard, lease.clone());
        }
    }
}

/// One acknowledged change of one group's leases (a heartbeat, acquire,
/// checkpoint or release), as appended to a stream's group change log.
/// Changes are numbered (`lsn`) so that replay after a snapshot of the
/// tables skips those the snapshot already holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupChange {
    pub lsn: u64,
    pub group: String,
    pub leases: Vec<(u32, ShardLease)>,
}

/// Appends one change record (see `changelog`).
pub fn encode_change(change: &GroupChange, out: &mut Vec<u8>) {
    crate::changelog::encode(change, out);
}

/// Decodes the longest valid prefix of a group change log.
pub fn decode_changes(bytes: &[u8]) -> (Vec<GroupChange>, usize) {
    crate::changelog::decode(bytes, |c: &GroupChange| c.lsn)
}

/// Applies the changes after `lsn` to `tables`; returns the new last lsn.
pub fn replay_changes(
    tables: &mut BTreeMap<String, LeaseTable>,
    lsn: u64,
    changes: &[GroupChange],
) -> u64 {
    let mut last = lsn;
    for c in changes.iter().filter(|c| c.lsn > lsn) {
        tables.entry(c.group.clone()).or_default().apply(&c.leases);
        last = c.lsn;
    }
    last
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

    fn change(lsn: u64, group: &str, shard: u32, seq: u64) -> GroupChange {
        GroupChange {
            lsn,
            group: group.into(),
            leases: vec![(
                shard,
                ShardLease {
                    owner: Some("w1".into()),
                    expires_ms: 1_000 + lsn as i64,
                    checkpoint: Some(Checkpoint::At(seq)),
                },
            )],
        }
    }

    #[test]
    fn the_change_log_decodes_its_longest_valid_prefix() {
        let changes = [
            change(1, "g", 0, 5),
            change(2, "g", 1, 7),
            change(3, "h", 0, 9),
        ];
        let mut bytes = Vec::new();
        for c in &changes {
            encode_change(c, &mut bytes);
        }
        assert_eq!(decode_changes(&bytes), (changes.to_vec(), bytes.len()));
        // Every torn tail gives the whole records before it.
        let second_ends = {
            let mut b = Vec::new();
            encode_change(&changes[0], &mut b);
            encode_change(&changes[1], &mut b);
            b.len()
        };
        for cut in second_ends..bytes.len() {
            assert_eq!(
                decode_changes(&bytes[..cut]),
                (changes[..2].to_vec(), second_ends)
            );
        }
        // A flipped bit stops decoding at its record.
        let mut bad = bytes.clone();
        bad[second_ends + 10] ^= 1;
        assert_eq!(decode_changes(&bad).1, second_ends);
        // A number that does not rise ends the log too.
        let mut stale = bytes.clone();
        encode_change(&change(2, "g", 0, 1), &mut stale);
        assert_eq!(decode_changes(&stale).1, bytes.len());
    }

    #[test]
    fn replay_applies_only_what_the_snapshot_lacks() {
        let mut before = LeaseTable::default();
        before.apply(&change(1, "g", 0, 5).leases);
        let mut after = before.clone();
        after.apply(&change(2, "g", 1, 7).leases);
        assert_eq!(after.changed_since(&before), change(2, "g", 1, 7).leases);
        assert!(after.changed_since(&after).is_empty());
        let mut tables = BTreeMap::new();
        tables.insert("g".to_string(), before.clone());
        let log = [change(1, "g", 0, 99), change(2, "g", 1, 7)];
        assert_eq!(replay_changes(&mut tables, 1, &log), 2);
        assert_eq!(tables["g"], after, "change 1 is already in the snapshot");
    }
}
