//! `kinema-bench-queue`: queues on a data stream, receive and acknowledge
//! throughput with 1, 4 and 16 competing consumer instances (each a task
//! looping ReceiveQueueRecords of 10, AcknowledgeQueueRecords of the same),
//! beside reading the same stream with GetRecords (one reader per shard,
//! pages of up to 10,000) in the same run.
//!
//! Usage: `kinema-bench-queue [--records N]` (run by `make bench`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use common::{KEY, SECRET, cpu_seconds, start_server};
use kinema_client::Client;
use serde_json::{Value, json};

const SHARDS: u32 = 2;
const RECORD_BYTES: usize = 100;
/// Each run ends after this long even if records remain.
const RUN_LIMIT: Duration = Duration::from_secs(120);

async fn put_all(client: &Client, stream: &str, n: usize) -> anyhow::Result<()> {
    let data = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; RECORD_BYTES]);
    for start in (0..n).step_by(500) {
        let records: Vec<Value> = (start..(start + 500).min(n))
            .map(|i| json!({"PartitionKey": format!("k{i}"), "Data": data}))
            .collect();
        let r = client
            .kinesis(
                "PutRecords",
                json!({"StreamName": stream, "Records": records}),
            )
            .await?;
        if r["FailedRecordCount"].as_u64() != Some(0) {
            bail!("a put failed: {r}");
        }
    }
    Ok(())
}

/// Records per second received and acknowledged by `consumers` instances
/// until all `n` are done.
async fn queue_run(
    client: &Client,
    stream_arn: &str,
    name: &str,
    consumers: usize,
    n: u64,
) -> anyhow::Result<f64> {
    let q = client
        .kinesis(
            "CreateQueue",
            json!({"QueueName": name,
                   "StreamConfigurationList": [{"StreamARN": stream_arn,
                                                "StartingPosition": {"Type": "TRIM_HORIZON"}}]}),
        )
        .await?;
    let arn = q["QueueDescription"]["QueueARN"]
        .as_str()
        .context("QueueARN")?
        .to_string();
    let done = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let (client, arn, done) = (client.clone(), arn.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < n && t0.elapsed() < RUN_LIMIT {
                let r = client
                    .kinesis(
                        "ReceiveQueueRecords",
                        json!({"QueueARN": arn, "Limit": 10, "WaitTimeSeconds": 1}),
                    )
                    .await?;
                let entries: Vec<Value> = r["QueueRecords"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| json!({"ReceiptHandle": r["ReceiptHandle"]}))
                    .collect();
                if entries.is_empty() {
                    continue;
                }
                let a = client
                    .kinesis(
                        "AcknowledgeQueueRecords",
                        json!({"QueueARN": arn, "Entries": entries}),
                    )
                    .await?;
                let ok = a["Successful"].as_array().map_or(0, Vec::len);
                done.fetch_add(ok as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let got = done.load(Ordering::Relaxed);
    if got < n {
        bail!("{consumers} consumers finished {got} of {n} records within {RUN_LIMIT:?}");
    }
    let rate = got as f64 / t0.elapsed().as_secs_f64();
    client
        .kinesis("DeleteQueue", json!({"QueueARN": arn}))
        .await?;
    Ok(rate)
}

/// Records per second read with GetRecords, one reader per shard.
async fn get_records_run(client: &Client, stream: &str, n: u64) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for shard in 0..SHARDS {
        let (client, stream) = (client.clone(), stream.to_string());
        tasks.push(tokio::spawn(async move {
            let it = client
                .kinesis(
                    "GetShardIterator",
                    json!({"StreamName": stream, "ShardId": format!("shardId-{shard:012}"),
                           "ShardIteratorType": "TRIM_HORIZON"}),
                )
                .await?;
            let mut it = it["ShardIterator"]
                .as_str()
                .context("iterator")?
                .to_string();
            let mut got = 0u64;
            for _ in 0..10_000 {
                let page = client
                    .kinesis("GetRecords", json!({"ShardIterator": it, "Limit": 10_000}))
                    .await?;
                let len = page["Records"].as_array().map_or(0, Vec::len) as u64;
                got += len;
                match page["NextShardIterator"].as_str() {
                    Some(next) if len > 0 => it = next.to_string(),
                    _ => break,
                }
            }
            anyhow::Ok(got)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    if total != n {
        bail!("GetRecords read {total} of {n} records");
    }
    Ok(total as f64 / t0.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .skip_while(|a| a != "--records")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let work = std::env::temp_dir().join(format!("kinema-bench-queue-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let server = start_server(&work.join("kinema"))?;
    let client = Client::new(&server.url, KEY, SECRET);
    client
        .kinesis(
            "CreateStream",
            json!({"StreamName": "work", "ShardCount": SHARDS}),
        )
        .await?;
    put_all(&client, "work", n).await?;
    let arn = client
        .kinesis("DescribeStreamSummary", json!({"StreamName": "work"}))
        .await?["StreamDescriptionSummary"]["StreamARN"]
        .as_str()
        .context("StreamARN")?
        .to_string();
    println!(
        "queue benchmark: {n} records of {RECORD_BYTES} B on {SHARDS} shards; receive 10, acknowledge 10, each durable"
    );
    let reference = get_records_run(&client, "work", n as u64).await?;
    println!("GetRecords (one reader per shard): {reference:>9.0} rec/s");
    for consumers in [1usize, 4, 16] {
        let c0 = cpu_seconds(server.child.id())?;
        let t0 = Instant::now();
        let rate = queue_run(&client, &arn, &format!("q{consumers}"), consumers, n as u64).await?;
        let cpu = (cpu_seconds(server.child.id())? - c0) / t0.elapsed().as_secs_f64();
        println!(
            "queue, {consumers:>2} consumers: {rate:>9.0} rec/s received and acknowledged (server {:.0}% CPU) | ratio to GetRecords {:.3}",
            cpu * 100.0,
            rate / reference
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
