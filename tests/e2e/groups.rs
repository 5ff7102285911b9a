//! Server-side consumer groups through the Rust client library: a member
//! that dies loses its leases, another resumes after the last checkpoint,
//! and a split parent is finished before its children are read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kinema_client::{Client, ConsumerLoop};
use serde_json::{Value, json};

use crate::support::*;

type Log = Arc<Mutex<Vec<(String, String, String)>>>;

fn member(server: &Server, name: &str, log: Log) -> tokio::task::JoinHandle<()> {
    let client = Client::new(&server.url(), KEY_ID, SECRET);
    let mut consumer = ConsumerLoop::new(client, "grp", "analytics", name);
    consumer.lease = Duration::from_millis(800);
    consumer.idle_wait = Duration::from_millis(50);
    tokio::spawn(async move {
        consumer
            .run(
                move |shard, records| {
                    let mut log = log.lock().unwrap();
                    for r in records {
                        log.push((
                            shard.to_string(),
                            r.sequence_number.clone(),
                            String::from_utf8_lossy(&r.data).into(),
                        ));
                    }
                    Ok(())
                },
                std::future::pending(),
            )
            .await
            .unwrap_or_else(|e| eprintln!("consumer loop ended: {e}"));
    })
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_that_dies_is_replaced_from_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = Client::new(&server.url(), KEY_ID, SECRET);
    client
        .kinesis(
            "CreateStream",
            json!({"StreamName": "grp", "ShardCount": 2}),
        )
        .await
        .unwrap();
    let produce = |n: usize, tag: &str| {
        let out = run_python(&server, "ds.py", &["produce", "grp", &n.to_string()]);
        out.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v[1].as_str().unwrap().to_string(),
                    format!("{tag}{}", v[2].as_str().unwrap()),
                )
            })
            .collect::<Vec<_>>()
    };
    let mut expected: BTreeSet<String> = produce(2, "").into_iter().map(|(s, _)| s).collect();

    // Member A reads part of the stream, then dies without releasing its leases.
    let log_a: Log = Arc::default();
    let a = member(&server, "a", log_a.clone());
    assert!(
        wait_until(Duration::from_secs(30), || log_a.lock().unwrap().len()
            >= 100)
        .await
    );
    a.abort();
    let _ = a.await;
    let state = client
        .get("/v1/datastreams/grp/groups/analytics")
        .await
        .unwrap();
    let checkpoints: BTreeMap<String, String> = state["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| {
            Some((
                s["shardId"].as_str()?.to_string(),
                s["checkpoint"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert!(!checkpoints.is_empty(), "A checkpointed: {state}");

    // Reshard and write more; member B takes over once A's leases expire.
    let shards = client
        .kinesis("ListShards", json!({"StreamName": "grp"}))
        .await
        .unwrap();
    let first = &shards["Shards"][0];
    let lo: u128 = first["HashKeyRange"]["StartingHashKey"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let hi: u128 = first["HashKeyRange"]["EndingHashKey"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    client
        .kinesis(
            "SplitShard",
            json!({"StreamName": "grp", "ShardToSplit": first["ShardId"], "NewStartingHashKey": (lo + (hi - lo) / 2).to_string()}),
        )
        .await
        .unwrap();
    expected.extend(produce(1, "").into_iter().map(|(s, _)| s));
    let log_b: Log = Arc::default();
    let b = member(&server, "b", log_b.clone());
    let all_seen = wait_until(Duration::from_secs(60), || {
        let a = log_a.lock().unwrap();
        let b = log_b.lock().unwrap();
        let seen: BTreeSet<&String> = a.iter().chain(b.iter()).map(|(_, s, _)| s).collect();
        expected.iter().all(|s| seen.contains(s))
    })
    .await;
    b.abort();
    if !all_seen {
        let state = client
            .get("/v1/datastreams/grp/groups/analytics")
            .await
            .unwrap();
        eprintln!(
            "state {state}\na={} b={} expected={}",
            log_a.lock().unwrap().len(),
            log_b.lock().unwrap().len(),
            expected.len()
        );
    }
    assert!(all_seen, "every record reached the group (at least once)");

    let b = log_b.lock().unwrap();
    // Nothing at or before a checkpoint is delivered again.
    for (shard, seq, _) in b.iter() {
        if let Some(cp) = checkpoints.get(shard) {
            assert!(
                seq > cp,
                "{shard}: {seq} redelivered although checkpointed at {cp}"
            );
        }
    }
    // The split parent was finished before any child record was handed out.
    let parent = first["ShardId"].as_str().unwrap();
    let last_parent = b.iter().rposition(|(s, _, _)| s == parent);
    let first_child = b
        .iter()
        .position(|(s, _, _)| s.as_str() > "shardId-000000000001");
    if let (Some(p), Some(c)) = (last_parent, first_child) {
        assert!(p < c, "parent records after child records");
    }
    assert!(first_child.is_some(), "children were read after the split");
}
