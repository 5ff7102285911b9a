//! `kinema-bench-queue`: queues on a data stream, receive and acknowledge
//! throughput with 1, 4 and 16 competing consumer instances (each a task
//! looping ReceiveQueueRecords of 10, AcknowledgeQueueRecords of the same),
//! beside reading the same stream with GetRecords (one reader per shard,
//! pages of up to 10,000) in the same run. Then channels: records put
//! while a channel waits (freshness 900 s), then its freshness set to 1 s,
//! timed until its position counts every record delivered (read, encoded,
//! compressed, written and fsynced), for each compression, beside
//! GetRecords of the same stream.
//!
//! Usage: `kinema-bench-queue [--records N] [--channel-records N]` (run
//! by `make bench`).

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

/// Puts records 0..n, record `i` holding `data(i)`, 500 per PutRecords.
async fn put_all(
    client: &Client,
    stream: &str,
    n: usize,
    data: impl Fn(usize) -> Vec<u8>,
) -> anyhow::Result<()> {
    let b64 = base64::engine::general_purpose::STANDARD;
    for start in (0..n).step_by(500) {
        let records: Vec<Value> = (start..(start + 500).min(n))
            .map(|i| json!({"PartitionKey": format!("k{i}"), "Data": b64.encode(data(i))}))
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

/// Records a channel has delivered, from its position in the data
/// directory (`data/<stream id>/channels/<channel id>/position.json`).
fn delivered(data: &std::path::Path, channel_id: &str) -> u64 {
    let Ok(streams) = std::fs::read_dir(data.join("data")) else {
        return 0;
    };
    for s in streams.flatten() {
        let path = s
            .path()
            .join("channels")
            .join(channel_id)
            .join("position.json");
        if let Ok(text) = std::fs::read(&path) {
            return serde_json::from_slice::<Value>(&text)
                .ok()
                .and_then(|v| v["records"].as_u64())
                .unwrap_or(0);
        }
    }
    0
}

/// Channel delivery, one channel per compression, beside GetRecords.
async fn channels(
    client: &Client,
    server: &common::ServerProc,
    data: &std::path::Path,
    n: usize,
) -> anyhow::Result<()> {
    client
        .kinesis(
            "CreateStream",
            json!({"StreamName": "archive", "ShardCount": SHARDS}),
        )
        .await?;
    let summary = client
        .kinesis("DescribeStreamSummary", json!({"StreamName": "archive"}))
        .await?;
    let arn = summary["StreamDescriptionSummary"]["StreamARN"]
        .as_str()
        .context("StreamARN")?
        .to_string();
    let account = arn.split(':').nth(4).context("account")?.to_string();
    let mut made = Vec::new();
    for compression in ["NONE", "GZIP", "ZSTD"] {
        let name = format!("archive-{}", compression.to_lowercase());
        let c = client
            .kinesis(
                "CreateChannel",
                json!({"ChannelName": name,
                       "ServiceExecutionRoleARN": format!("arn:aws:iam::{account}:role/bench"),
                       "StreamConfigurationList": [{"StreamARN": arn,
                           "RecordConfiguration": {"RecordFormatType": "JSON"}}],
                       "S3DestinationConfiguration": {"DataFreshnessInSeconds": 900,
                           "StorageConfiguration": {"BucketARN": format!("arn:aws:s3:::{name}"),
                               "ExpectedBucketOwner": account, "CompressionType": compression}}}),
            )
            .await?;
        let d = &c["ChannelDescription"];
        made.push((
            compression,
            d["ChannelARN"].as_str().context("ChannelARN")?.to_string(),
            d["ChannelId"].as_str().context("ChannelId")?.to_string(),
        ));
    }
    // JSON of about RECORD_BYTES each.
    put_all(client, "archive", n, |i| {
        format!(
            "{{\"n\":{i},\"camera\":\"cam-{}\",\"pad\":\"{}\"}}",
            i % 16,
            "x".repeat(RECORD_BYTES - 40)
        )
        .into_bytes()
    })
    .await?;
    println!(
        "channel benchmark: {n} JSON records of {RECORD_BYTES} B on {SHARDS} shards, delivered as JSON lines"
    );
    let reference = get_records_run(client, "archive", n as u64).await?;
    println!("GetRecords (one reader per shard): {reference:>9.0} rec/s");
    for (compression, channel_arn, id) in made {
        let c0 = cpu_seconds(server.child.id())?;
        let t0 = Instant::now();
        client
            .kinesis(
                "UpdateChannel",
                json!({"ChannelARN": channel_arn,
                       "S3DestinationConfiguration": {"DataFreshnessInSeconds": 1}}),
            )
            .await?;
        // Bounded: at most RUN_LIMIT of 5 ms looks.
        while delivered(data, &id) < n as u64 {
            if t0.elapsed() > RUN_LIMIT {
                bail!(
                    "channel {compression} delivered {} of {n} within {RUN_LIMIT:?}",
                    delivered(data, &id)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = (cpu_seconds(server.child.id())? - c0) / secs;
        let rate = n as f64 / secs;
        println!(
            "channel, {compression:<4}: {rate:>9.0} rec/s delivered and durable (server {:.0}% CPU) | ratio to GetRecords {:.3}",
            cpu * 100.0,
            rate / reference
        );
        client
            .kinesis("DeleteChannel", json!({"ChannelARN": channel_arn}))
            .await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arg = |name: &str, default: usize| {
        std::env::args()
            .skip_while(|a| a != name)
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let n = arg("--records", 20_000);
    let channel_records = arg("--channel-records", 200_000);
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
    put_all(&client, "work", n, |_| vec![b'x'; RECORD_BYTES]).await?;
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
    channels(&client, &server, &work.join("kinema"), channel_records).await?;
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
