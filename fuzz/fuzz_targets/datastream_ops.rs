//! Stateful fuzzing of the data-stream core: a byte string is read as a
//! sequence of operations (puts, batches through the log model with write
//! quotas, splits, merges, scaling, iterator tokens)
//! on one stream; after every step the open shards must cover the hash
//! space exactly, sequence numbers must rise within each shard and past
//! every parent's last one, and iterator tokens must round-trip or be refused.
#![no_main]

use std::collections::HashMap;

use kinema_datastream::log::{PutEntry, ShardQuotas, admit};
use kinema_datastream::{IteratorKey, IteratorPosition, ShardMap, record};
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
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        now += 1;
        match op % 6 {
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
                let (placed, outcomes) = batch.commit(1_000);
                let admitted = outcomes[0].iter().flatten().count();
                assert_eq!(map.next_sequence() - before, admitted as u64);
                assert_eq!(placed.len(), admitted);
                let (decoded, valid) = record::decode_log(&bytes);
                assert_eq!(valid, bytes.len());
                for ((shard, e), (offset, r)) in placed.iter().zip(&decoded) {
                    assert_eq!((*shard, e.sequence), (r.shard, r.sequence));
                    assert_eq!(e.offset, 1_000 + offset);
                    if let Some(prev) = last.insert(*shard, e.sequence) {
                        assert!(e.sequence > prev);
                    }
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
