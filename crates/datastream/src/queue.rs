//! Queues on a data stream (the `kinesis` model's `CreateQueue` …
//! `RestoreDeadLetterQueueRecords`): competing consumers take records with
//! receipt handles; a received record is invisible until its visibility
//! timeout passes and comes back unless it is acknowledged; after
//! `MaxReceiveCount` receives it becomes a dead letter, kept in the same
//! queue behind its own operations.
//!
//! [`QueueState`] is what a queue remembers beyond the stream itself: per
//! shard, how far its first deliveries have read (they go in sequence
//! order, so every record below a shard's cursor has been received at
//! least once), and for each record received and not yet acknowledged its
//! receive count, first receive, when it is visible again and whether it is
//! a dead letter. Nothing else: an acknowledged record is simply gone, and
//! a record never received is still in the stream.
//!
//! Every change is an [`Op`], grouped per request into a [`QueueChange`]
//! with a rising `lsn`. The caller makes a change durable before it
//! answers; [`QueueState::apply`] on the last snapshot, change by change,
//! rebuilds the state exactly (`replay`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The original's defaults and limits.
pub const DEFAULT_VISIBILITY_S: u32 = 30;
pub const MAX_VISIBILITY_S: u32 = 43_200;
pub const DEFAULT_MAX_RECEIVE: u32 = 6;
pub const MAX_MAX_RECEIVE: u32 = 1000;
/// Records per receive, acknowledge, visibility or restore request.
pub const MAX_BATCH: usize = 10;
pub const DEFAULT_WAIT_S: u32 = 9;
pub const MAX_WAIT_S: u32 = 20;

/// The attributes a receive depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub visibility_ms: i64,
    /// `None`: dead-letter handling is off (`TargetType` `NONE`).
    pub max_receive: Option<u32>,
}

/// A record received and not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub shard: u32,
    /// Receives through `ReceiveQueueRecords` since the record was first
    /// received or last restored.
    pub receive_count: u32,
    pub first_receive_ms: i64,
    /// In flight until then; visible (to its receive path) after.
    pub visible_at_ms: i64,
    /// The delivery number of the newest receipt handle; older ones are
    /// stale.
    pub delivery: u64,
    pub dead: bool,
}

/// One change to a queue's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A record received with delivery number `delivery`. The first
    /// receive of a record moves its shard's cursor past it.
    /// `dead_letter`: received by `ReceiveDeadLetterQueueRecords`, which
    /// does not count as a receive.
    Received {
        shard: u32,
        seq: u64,
        delivery: u64,
        at_ms: i64,
        visible_at_ms: i64,
        dead_letter: bool,
    },
    /// Acknowledged (a normal or a dead-letter record): the queue forgets it.
    Acked {
        seq: u64,
    },
    Visibility {
        seq: u64,
        visible_at_ms: i64,
    },
    /// Received `MaxReceiveCount` times and visible again: a dead letter,
    /// visible at once to the dead-letter receive path.
    Dead {
        seq: u64,
        at_ms: i64,
    },
    /// A dead letter back on the normal path with its count reset.
    Restored {
        seq: u64,
        at_ms: i64,
    },
    /// Past the stream's retention: the queue no longer delivers it.
    Dropped {
        seq: u64,
    },
}

/// The ops of one request, made durable together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueChange {
    pub lsn: u64,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// The last change this state includes.
    pub lsn: u64,
    /// Per shard, the first sequence number a first delivery may read; a
    /// shard not named starts where the queue started (`start`).
    pub cursors: BTreeMap<u32, u64>,
    /// Where a shard the cursors do not name starts.
    pub start: u64,
    /// Received, unacknowledged records by sequence number.
    pub pending: BTreeMap<u64, Pending>,
    /// The last delivery number issued.
    pub deliveries: u64,
}

/// Why a receipt handle is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    #[error("the receipt handle is malformed or belongs to another queue")]
    Invalid,
    #[error("the receipt handle is stale: the record was received again since")]
    Stale,
    #[error("the record was already acknowledged or is past the stream's retention")]
    Gone,
    #[error("the record is a dead letter; use the dead-letter operations")]
    IsDeadLetter,
    #[error("the record is not a dead letter")]
    NotDeadLetter,
}

/// A receipt handle: which queue, which record, which delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    pub queue: u64,
    pub shard: u32,
    pub seq: u64,
    pub delivery: u64,
}

impl Handle {
    /// Lowercase hex fields joined by `-`: short, opaque enough, and
    /// unique per delivery because delivery numbers never repeat.
    pub fn encode(&self) -> String {
        format!(
            "{:x}-{:x}-{:x}-{:x}",
            self.queue, self.shard, self.seq, self.delivery
        )
    }

    pub fn decode(s: &str) -> Option<Handle> {
        let mut parts = s.split('-');
        let mut next = || -> Option<u64> {
            let p = parts.next()?;
            if p.is_empty() || p.len() > 16 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u64::from_str_radix(p, 16).ok()
        };
        let h = Handle {
            queue: next()?,
            shard: u32::try_from(next()?).ok()?,
            seq: next()?,
            delivery: next()?,
        };
        parts.next().is_none().then_some(h)
    }
}

impl QueueState {
    pub fn new(start: u64) -> QueueState {
        QueueState {
            start,
            ..QueueState::default()
        }
    }

    /// The first sequence number of `shard` a first delivery may read.
    pub fn cursor(&self, shard: u32) -> u64 {
        self.cursors.get(&shard).copied().unwrap_or(self.start)
    }

    /// The delivery number the next receive gets.
    pub fn next_delivery(&self) -> u64 {
        self.deliveries + 1
    }

    pub fn apply(&mut self, op: &Op) {
        match *op {
            Op::Received {
                shard,
                seq,
                delivery,
                at_ms,
                visible_at_ms,
                dead_letter,
            } => {
                self.deliveries = self.deliveries.max(delivery);
                let cursor = self.cursor(shard);
                if seq >= cursor {
                    self.cursors.insert(shard, seq.saturating_add(1));
                }
                let p = self.pending.entry(seq).or_insert(Pending {
                    shard,
                    receive_count: 0,
                    first_receive_ms: at_ms,
                    visible_at_ms,
                    delivery,
                    dead: false,
                });
                p.delivery = delivery;
                p.visible_at_ms = visible_at_ms;
                if !dead_letter {
                    p.receive_count = p.receive_count.saturating_add(1);
                }
            }
            Op::Acked { seq } | Op::Dropped { seq } => {
                self.pending.remove(&seq);
            }
            Op::Visibility { seq, visible_at_ms } => {
                if let Some(p) = self.pending.get_mut(&seq) {
                    p.visible_at_ms = visible_at_ms;
                }
            }
            Op::Dead { seq, at_ms } => {
                if let Some(p) = self.pending.get_mut(&seq) {
                    p.dead = true;
                    p.visible_at_ms = at_ms;
                }
            }
            Op::Restored { seq, at_ms } => {
                if let Some(p) = self.pending.get_mut(&seq) {
                    p.dead = false;
                    p.receive_count = 0;
                    p.visible_at_ms = at_ms;
                }
            }
        }
    }

    /// Applies the changes after this state's `lsn`, in order.
    pub fn replay(&mut self, changes: &[QueueChange]) {
        for c in changes {
            if c.lsn <= self.lsn {
                continue;
            }
            for op in &c.ops {
                self.apply(op);
            }
            self.lsn = c.lsn;
        }
    }

    /// The records that have used up their receives and are visible again
    /// now: each becomes a dead letter (apply the ops returned).
    pub fn expire(&self, now_ms: i64, settings: Settings) -> Vec<Op> {
        let Some(max) = settings.max_receive else {
            return Vec::new();
        };
        self.pending
            .iter()
            .filter(|(_, p)| !p.dead && p.receive_count >= max && p.visible_at_ms <= now_ms)
            .map(|(&seq, _)| Op::Dead { seq, at_ms: now_ms })
            .collect()
    }

    /// Up to `limit` records visible now on one receive path (dead letters
    /// or not), oldest first: `(shard, seq)`.
    pub fn visible(&self, now_ms: i64, limit: usize, dead: bool) -> Vec<(u32, u64)> {
        self.pending
            .iter()
            .filter(|(_, p)| p.dead == dead && p.visible_at_ms <= now_ms)
            .take(limit)
            .map(|(&seq, p)| (p.shard, seq))
            .collect()
    }

    /// When the next in-flight record on a path becomes visible, if any.
    pub fn next_visible(&self, dead: bool) -> Option<i64> {
        self.pending
            .values()
            .filter(|p| p.dead == dead)
            .map(|p| p.visible_at_ms)
            .min()
    }

    /// Received records of `shard` below `first_kept` (the stream's oldest
    /// retained record there): they leave the queue.
    pub fn past_retention(&self, shard: u32, first_kept: u64) -> Vec<Op> {
        self.pending
            .range(..first_kept)
            .filter(|(_, p)| p.shard == shard)
            .map(|(&seq, _)| Op::Dropped { seq })
            .collect()
    }

    /// The op receiving `seq` of `shard` now, with the next delivery
    /// number (apply it before planning the next receive).
    pub fn receive(
        &self,
        shard: u32,
        seq: u64,
        now_ms: i64,
        visibility_ms: i64,
        dead_letter: bool,
    ) -> Op {
        Op::Received {
            shard,
            seq,
            delivery: self.next_delivery(),
            at_ms: now_ms,
            visible_at_ms: now_ms.saturating_add(visibility_ms),
            dead_letter,
        }
    }

    /// Checks a receipt handle of this queue (`queue`) for an operation on
    /// the normal path (`dead_letter` false) or the dead-letter path; the
    /// record's sequence number if the handle is its newest.
    pub fn check(&self, queue: u64, handle: &str, dead_letter: bool) -> Result<u64, HandleError> {
        let h = Handle::decode(handle).ok_or(HandleError::Invalid)?;
        if h.queue != queue || h.delivery == 0 || h.delivery > self.deliveries {
            return Err(HandleError::Invalid);
        }
        let Some(p) = self.pending.get(&h.seq) else {
            // Issued, so the record was received; it is no longer pending.
            return Err(HandleError::Gone);
        };
        if p.shard != h.shard {
            return Err(HandleError::Invalid);
        }
        if p.delivery != h.delivery {
            return Err(HandleError::Stale);
        }
        match (p.dead, dead_letter) {
            (true, false) => Err(HandleError::IsDeadLetter),
            (false, true) => Err(HandleError::NotDeadLetter),
            _ => Ok(h.seq),
        }
    }
}

/// Appends one change record (see `changelog`).
pub fn encode_change(change: &QueueChange, out: &mut Vec<u8>) {
    crate::changelog::encode(change, out);
}

/// Decodes the longest valid prefix of a queue change log.
pub fn decode_changes(bytes: &[u8]) -> (Vec<QueueChange>, usize) {
    crate::changelog::decode(bytes, |c: &QueueChange| c.lsn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const Q: u64 = 7;
    const S: Settings = Settings {
        visibility_ms: 30_000,
        max_receive: Some(3),
    };

    fn handle(state: &QueueState, seq: u64) -> String {
        let p = &state.pending[&seq];
        Handle {
            queue: Q,
            shard: p.shard,
            seq,
            delivery: p.delivery,
        }
        .encode()
    }

    fn receive(state: &mut QueueState, shard: u32, seq: u64, now: i64) -> String {
        let op = state.receive(shard, seq, now, S.visibility_ms, false);
        state.apply(&op);
        handle(state, seq)
    }

    #[test]
    fn handles_round_trip_and_refuse_garbage() {
        let h = Handle {
            queue: u64::MAX,
            shard: 3,
            seq: 0,
            delivery: 42,
        };
        assert_eq!(Handle::decode(&h.encode()), Some(h));
        for bad in [
            "",
            "1-2-3",
            "1-2-3-4-5",
            "x-2-3-4",
            "1--3-4",
            "1-100000000-3-4",
        ] {
            assert_eq!(Handle::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_received_record_is_invisible_until_its_timeout_then_comes_back_with_a_new_handle() {
        let mut q = QueueState::new(0);
        let first = receive(&mut q, 0, 5, 1000);
        assert_eq!(q.cursor(0), 6);
        assert!(q.visible(1000 + 29_999, 10, false).is_empty());
        assert_eq!(q.visible(1000 + 30_000, 10, false), vec![(0, 5)]);
        let second = receive(&mut q, 0, 5, 31_000);
        assert_ne!(first, second);
        assert_eq!(q.check(Q, &first, false), Err(HandleError::Stale));
        assert_eq!(q.check(Q, &second, false), Ok(5));
        let p = &q.pending[&5];
        assert_eq!((p.receive_count, p.first_receive_ms), (2, 1000));
        q.apply(&Op::Acked { seq: 5 });
        assert_eq!(q.check(Q, &second, false), Err(HandleError::Gone));
        assert!(q.visible(i64::MAX, 10, false).is_empty());
    }

    #[test]
    fn after_max_receives_a_record_is_a_dead_letter_and_restoring_resets_its_count() {
        let mut q = QueueState::new(0);
        let mut now = 0;
        for _ in 0..3 {
            assert!(q.expire(now, S).is_empty());
            receive(&mut q, 1, 9, now);
            now += 30_000;
        }
        let dead = q.expire(now, S);
        assert_eq!(dead, vec![Op::Dead { seq: 9, at_ms: now }]);
        q.apply(&dead[0]);
        assert!(q.visible(now, 10, false).is_empty());
        assert_eq!(q.visible(now, 10, true), vec![(1, 9)]);
        let op = q.receive(1, 9, now, S.visibility_ms, true);
        q.apply(&op);
        let h = handle(&q, 9);
        assert_eq!(
            q.pending[&9].receive_count, 3,
            "a dead-letter receive does not count"
        );
        assert_eq!(q.check(Q, &h, false), Err(HandleError::IsDeadLetter));
        assert_eq!(q.check(Q, &h, true), Ok(9));
        q.apply(&Op::Restored { seq: 9, at_ms: now });
        assert_eq!(q.pending[&9].receive_count, 0);
        assert_eq!(q.visible(now, 10, false), vec![(1, 9)]);
        assert_eq!(q.check(Q, &h, true), Err(HandleError::NotDeadLetter));
    }

    #[test]
    fn without_dead_letter_handling_records_come_back_forever() {
        let mut q = QueueState::new(0);
        let none = Settings {
            max_receive: None,
            ..S
        };
        for i in 0..50 {
            receive(&mut q, 0, 1, i * 30_000);
            assert!(q.expire((i + 1) * 30_000, none).is_empty());
        }
        assert_eq!(q.pending[&1].receive_count, 50);
    }

    #[test]
    fn handles_of_other_queues_and_unissued_deliveries_are_invalid() {
        let mut q = QueueState::new(0);
        let h = receive(&mut q, 0, 1, 0);
        assert_eq!(q.check(Q + 1, &h, false), Err(HandleError::Invalid));
        let forged = Handle {
            queue: Q,
            shard: 0,
            seq: 1,
            delivery: 99,
        };
        assert_eq!(
            q.check(Q, &forged.encode(), false),
            Err(HandleError::Invalid)
        );
        let wrong_shard = Handle {
            queue: Q,
            shard: 4,
            seq: 1,
            delivery: 1,
        };
        assert_eq!(
            q.check(Q, &wrong_shard.encode(), false),
            Err(HandleError::Invalid)
        );
    }

    #[test]
    fn records_past_retention_leave_the_queue() {
        let mut q = QueueState::new(0);
        receive(&mut q, 0, 1, 0);
        receive(&mut q, 1, 2, 0);
        receive(&mut q, 0, 3, 0);
        let ops = q.past_retention(0, 3);
        assert_eq!(ops, vec![Op::Dropped { seq: 1 }]);
        q.apply(&ops[0]);
        assert_eq!(q.pending.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn a_torn_change_log_decodes_to_its_valid_prefix() {
        let mut bytes = Vec::new();
        for lsn in 1..=3 {
            let change = QueueChange {
                lsn,
                ops: vec![Op::Acked { seq: lsn }],
            };
            encode_change(&change, &mut bytes);
        }
        let whole = bytes.len();
        let (all, n) = decode_changes(&bytes);
        assert_eq!((all.len(), n), (3, whole));
        for cut in 0..whole {
            let (some, n) = decode_changes(&bytes[..cut]);
            assert!(n <= cut && some.len() < 3);
            assert_eq!(some[..], all[..some.len()]);
        }
        bytes[whole - 2] ^= 0xff;
        assert_eq!(decode_changes(&bytes).0.len(), 2);
    }

    proptest! {
        /// Replaying the logged changes on a snapshot taken at any point
        /// gives the state that was live when the last change was made.
        #[test]
        fn replay_from_any_snapshot_rebuilds_the_state(
            steps in proptest::collection::vec((0u8..6, 0u64..20, 0u32..3, 0i64..100_000), 1..120),
            snap_at in 0usize..120,
        ) {
            let mut live = QueueState::new(0);
            let mut log = Vec::new();
            let mut snapshot = live.clone();
            let mut now = 0;
            for (i, (kind, seq, shard, dt)) in steps.into_iter().enumerate() {
                now += dt;
                let mut ops = live.expire(now, S);
                for op in &ops { live.apply(op); }
                let op = match kind {
                    0 | 1 => Some(live.receive(shard, seq, now, S.visibility_ms, false)),
                    2 => live.pending.contains_key(&seq).then_some(Op::Acked { seq }),
                    3 => Some(Op::Visibility { seq, visible_at_ms: now }),
                    4 => Some(Op::Restored { seq, at_ms: now }),
                    _ => Some(Op::Dropped { seq }),
                };
                if let Some(op) = op { live.apply(&op); ops.push(op); }
                live.lsn = i as u64 + 1;
                log.push(QueueChange { lsn: live.lsn, ops });
                if i == snap_at { snapshot = live.clone(); }
            }
            let mut bytes = Vec::new();
            for c in &log { encode_change(c, &mut bytes); }
            let (decoded, _) = decode_changes(&bytes);
            snapshot.replay(&decoded);
            prop_assert_eq!(snapshot, live);
        }
    }
}
