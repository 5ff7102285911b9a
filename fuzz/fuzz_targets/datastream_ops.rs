//! Stateful fuzzing of the data-stream core: a byte string is read as a
//! sequence of operations on one stream: puts, batches through the log
//! model with write quotas (into an index a model backend keeps), splits,
//! merges, scaling, iterator tokens, reads planned from the index, expiry
//! of whole log units, and consumer-group changes through the change log
//! with compaction. After every step the open shards must cover the hash
//! space exactly and sequence numbers must rise within each shard and past
//! every parent's last one; iterator tokens round-trip or are refused; a
//! read takes exactly the next entries and is drained only when nothing
//! is left in a shard closed before it; expiry takes a prefix of the log
//! and the index loses exactly those entries; and the lease tables
//! recovered from the last snapshot plus the change log (or any torn
//! prefix of it) are the live ones (or an earlier state of them).
#![no_main]

use std::collections::{BTreeMap, HashMap};

use kinema_datastream::leases::{
    Checkpoint, GroupChange, LeaseTable, decode_changes, encode_change, replay_changes,
};
use kinema_datastream::log::{
    IndexEntry, PutEntry, ShardQuotas, admit, finish_read, plan_expiry, plan_read, trim_index,
};
use kinema_datastream::{IteratorKey, IteratorPosition, ShardMap, record};

/// The model backend's log unit of a position (a segment of 512 bytes).
fn unit_of(offset: u64) -> u32 {
    (offset / 512) as u32
}

/// What the model backend keeps besides the shard map.
#[derive(Default)]
struct Backend {
    /// The end of the log.
    log_end: u64,
    index: HashMap<u32, Vec<IndexEntry>>,
    /// The newest arrival in each unit.
    unit_newest: BTreeMap<u32, i64>,
    /// Consumer groups: the live tables, the snapshot and its lsn, and the
    /// change log written since.
    tables: BTreeMap<String, LeaseTable>,
    snapshot: (BTreeMap<String, LeaseTable>, u64),
    lsn: u64,
    wal: Vec<u8>,
    /// The tables after each change in the log, for torn-prefix checks.
    states: Vec<BTreeMap<String, LeaseTable>>,
}
use libfuzzer_sys::fuzz_target;

fn take_u128(data: &mut &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = data.len().min(16);
    b[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    u128::from_le_bytes(b)
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let Some((&first, rest)) = data.split_first() else { return };
    data = rest;
    let mut map = ShardMap::new(u32::from(first % 8) + 1, 0);
    let key = IteratorKey::new([3; 32]);
    let mut last: HashMap<u32, u64> = HashMap::new();
    let mut now = 0i64;
    let mut quotas = ShardQuotas::new(64, 3);
    let mut b = Backend::default();
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        now += 1;
        match op % 10 {
            1 => {
                // A batch of up to 8 records through the log model: the
                // admitted ones are numbered in log order, the refused
                // ones use no number, and the encoded bytes decode to
                // exactly what the commit indexes.
                let n = (take_u128(&mut data) % 8) as usize + 1;
                let entries: Vec<PutEntry> = (0..n)
                    .map(|i| PutEntry {
                        partition_key: format!("k{}", take_u128(&mut data) % 16),
                        explicit_hash_key: (i % 3 == 0).then(|| take_u128(&mut data)),
                        data: vec![0u8; (take_u128(&mut data) % 40) as usize].into(),
                    })
                    .collect();
                let before = map.next_sequence();
                let batch = admit(&mut map, &mut quotas, &[&entries], now);
                let bytes = batch.bytes.clone();
                let base = b.log_end;
                let (placed, outcomes) = batch.commit(base);
                b.log_end += bytes.len() as u64;
                let admitted = outcomes[0].iter().flatten().count();
                assert_eq!(map.next_sequence() - before, admitted as u64);
                assert_eq!(placed.len(), admitted);
                let (decoded, valid) = record::decode_log(&bytes);
                assert_eq!(valid, bytes.len());
                for ((shard, e), (offset, r)) in placed.iter().zip(&decoded) {
                    assert_eq!((*shard, e.sequence), (r.shard, r.sequence));
                    assert_eq!(e.offset, base + offset);
                    if let Some(prev) = last.insert(*shard, e.sequence) {
                        assert!(e.sequence > prev);
                    }
                }
                for (shard, e) in placed {
                    let newest = b.unit_newest.entry(unit_of(e.offset)).or_insert(i64::MIN);
                    *newest = (*newest).max(e.arrival_ms);
                    b.index.entry(shard).or_default().push(e);
                }
            }
            0 => {
                let shard = map.route(take_u128(&mut data)).id;
                let seq = map.assign(shard).expect("routed shards are open");
                if let Some(prev) = last.insert(shard, seq) {
                    assert!(seq > prev);
                }
                for p in map.shard(shard).unwrap().parents() {
                    assert!(map.shard(p).unwrap().ending_sequence.is_none_or(|e| seq > e));
                }
            }
            2 => {
                let open = map.open();
                let s = open[(take_u128(&mut data) % open.len() as u128) as usize];
                let (id, lo, hi) = (s.id, s.start, s.end);
                let at = take_u128(&mut data);
                let ok = map.split(id, at, now).is_ok();
                assert_eq!(ok, at > lo && at <= hi);
            }
            3 => {
                let open = map.open();
                let a = open[(take_u128(&mut data) % open.len() as u128) as usize].id;
                let b = open[(take_u128(&mut data) % open.len() as u128) as usize].id;
                let _ = map.merge(a, b, now);
            }
            4 => {
                let target = (take_u128(&mut data) % 20) as u32;
                let _ = map.update_shard_count(target, now);
            }
            6 => read(&map, &b, &mut data, now),
            7 => {
                now += (take_u128(&mut data) % 7_200_000) as i64;
                expire(&mut b, now);
            }
            8 => group_change(&map, &mut b, &mut data, now),
            9 => {
                // Compaction: a snapshot of the tables, then an empty log.
                b.snapshot = (b.tables.clone(), b.lsn);
                b.wal.clear();
                b.states.clear();
            }
            _ => {
                let p = IteratorPosition {
                    stream: take_u128(&mut data) as u64,
                    shard: (take_u128(&mut data) % 64) as u32,
                    from_sequence: map.next_sequence(),
                    issued_ms: now,
                };
                let token = key.encode(&p);
                assert_eq!(key.decode(&token, now), Ok(p));
                let mut bad = token.into_bytes();
                let i = (take_u128(&mut data) % bad.len() as u128) as usize;
                bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
                assert!(key.decode(std::str::from_utf8(&bad).unwrap(), now).is_err());
            }
        }
        let open = map.open();
        assert_eq!(open.first().unwrap().start, 0);
        assert_eq!(open.last().unwrap().end, u128::MAX);
        for w in open.windows(2) {
            assert_eq!(w[0].end + 1, w[1].start);
        }
        if open.len() > 200 {
            return;
        }
    }
});

/// A read of a shard (open or closed) from a position, planned from the
/// index as a backend does.
fn read(map: &ShardMap, b: &Backend, data: &mut &[u8], now: i64) {
    let shards = map.shards();
    let s = &shards[(take_u128(data) % shards.len() as u128) as usize];
    let from = (take_u128(data) % u128::from(map.next_sequence() + 2)) as u64;
    let limit = (take_u128(data) % 20) as usize;
    let closed = !s.is_open();
    let entries = b.index.get(&s.id).map(Vec::as_slice).unwrap_or_default();
    let (picked, tip) = plan_read(entries, from, limit);
    let next: Vec<u64> = entries
        .iter()
        .map(|e| e.sequence)
        .filter(|q| *q >= from)
        .take(limit.max(1))
        .collect();
    let got: Vec<u64> = picked.iter().map(|e| e.sequence).collect();
    assert_eq!(got, next, "a read takes exactly the next entries");
    assert_eq!(tip, entries.last().map(|e| e.sequence));
    let end = finish_read(
        closed,
        from,
        tip,
        picked.last().map(|e| (e.sequence, e.arrival_ms)),
        now,
    );
    assert!(got.iter().all(|q| *q < end.next_from));
    assert!(end.millis_behind_latest >= 0);
    if end.drained {
        assert!(closed);
        assert!(entries.iter().all(|e| e.sequence < end.next_from));
    }
}

/// Expiry with a retention of one hour: a prefix of the units (never the
/// active one), all older than the retention; the index loses exactly
/// their entries.
fn expire(b: &mut Backend, now: i64) {
    let active = unit_of(b.log_end);
    let expired = plan_expiry(&b.unit_newest, active, 1, now);
    let prefix: Vec<u32> = b.unit_newest.keys().copied().take(expired.len()).collect();
    assert_eq!(expired, prefix, "expiry takes a prefix of the log");
    assert!(!expired.contains(&active));
    for u in &expired {
        assert!(b.unit_newest[u] < now - 3_600_000);
    }
    let Some(&last) = expired.last() else { return };
    for entries in b.index.values_mut() {
        let before = entries.len();
        let gone = entries.iter().filter(|e| unit_of(e.offset) <= last).count();
        assert_eq!(trim_index(entries, last, unit_of), gone);
        assert_eq!(entries.len(), before - gone);
        assert!(entries.iter().all(|e| unit_of(e.offset) > last));
    }
    for u in expired {
        b.unit_newest.remove(&u);
    }
}

/// One consumer-group call; its effect is logged as a change, and the
/// tables recovered from the snapshot and the log must be the live ones.
fn group_change(map: &ShardMap, b: &mut Backend, data: &mut &[u8], now: i64) {
    let group = format!("g{}", take_u128(data) % 2);
    let consumer = format!("c{}", take_u128(data) % 3);
    let pick = take_u128(data);
    let before = b.tables.get(&group).cloned().unwrap_or_default();
    let table = b.tables.entry(group.clone()).or_default();
    match pick % 4 {
        0 => {
            let held = table.acquire(map, &consumer, (pick % 5) as usize, 100, now);
            assert!(held.iter().all(|s| map.shard(*s).is_some()));
        }
        1 => table.heartbeat(&consumer, 100, now),
        2 => {
            let shards = map.shards();
            let s = &shards[((pick >> 8) % shards.len() as u128) as usize];
            let at = if pick & 0x10000 == 0 {
                Checkpoint::At((pick >> 20) as u64 % (map.next_sequence() + 1))
            } else {
                Checkpoint::ShardEnd
            };
            let owner = table.shards.get(&s.id).and_then(|l| l.owner.clone());
            let ok = table.checkpoint(map, &consumer, s.id, at, now).is_ok();
            if ok {
                assert_eq!(owner.as_deref(), Some(consumer.as_str()));
            }
        }
        _ => table.release(&consumer),
    }
    let leases = table.changed_since(&before);
    if !leases.is_empty() {
        b.lsn += 1;
        encode_change(
            &GroupChange {
                lsn: b.lsn,
                group,
                leases,
            },
            &mut b.wal,
        );
        b.states.push(b.tables.clone());
    }
    let (changes, valid) = decode_changes(&b.wal);
    assert_eq!(valid, b.wal.len());
    let recover = |changes: &[GroupChange]| {
        let (mut tables, lsn) = b.snapshot.clone();
        replay_changes(&mut tables, lsn, changes);
        tables
    };
    let same = |a: &BTreeMap<String, LeaseTable>, z: &BTreeMap<String, LeaseTable>| {
        let nonempty = |t: &BTreeMap<String, LeaseTable>| {
            t.iter()
                .filter(|(_, l)| !l.shards.is_empty())
                .map(|(g, l)| (g.clone(), l.clone()))
                .collect::<Vec<_>>()
        };
        nonempty(a) == nonempty(z)
    };
    assert!(same(&recover(&changes), &b.tables), "recovery gives the live tables");
    // A crash in the middle of an append: the torn tail is ignored and the
    // tables are as they were after the last whole change.
    if !b.wal.is_empty() {
        let cut = (take_u128(data) % b.wal.len() as u128) as usize;
        let (torn, valid) = decode_changes(&b.wal[..cut]);
        assert!(valid <= cut);
        let expected = match torn.len() {
            0 => b.snapshot.0.clone(),
            n => b.states[n - 1].clone(),
        };
        assert!(same(&recover(&torn), &expected));
    }
}
