//! `kinema events tail`: prints detection events (or any data stream's
//! records) as JSON lines while they arrive, reading every open shard with
//! the Kinesis consumer API (ListShards, GetShardIterator, GetRecords).

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// Data stream to read (the server's `[detection] events_stream`).
    #[arg(long, default_value = crate::config::DEFAULT_EVENTS_STREAM)]
    pub stream: String,
    /// Only events of this camera (video stream); all cameras by default.
    #[arg(long)]
    pub camera: Option<String>,
    /// Start at the oldest stored event instead of new ones only.
    #[arg(long)]
    pub from_start: bool,
    /// Stop after this many events (default: run until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
    #[command(flatten)]
    pub client: crate::client_args::ClientArgs,
}

/// How long to wait between polls of a shard that returned nothing.
const IDLE_POLL: Duration = Duration::from_millis(200);

pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let client = args.client.client()?;
    // Wait for the stream: the server creates it with the first event.
    let shards = loop {
        match client
            .kinesis("ListShards", json!({ "StreamName": args.stream }))
            .await
        {
            Ok(v) => break v["Shards"].as_array().cloned().unwrap_or_default(),
            Err(kinema_client::ClientError::Service { kind, .. })
                if kind == "ResourceNotFoundException" =>
            {
                eprintln!("waiting for data stream {} to exist...", args.stream);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let start = if args.from_start {
        "TRIM_HORIZON"
    } else {
        "LATEST"
    };
    let mut iterators = Vec::new();
    for s in &shards {
        if s["SequenceNumberRange"]["EndingSequenceNumber"].is_string() {
            continue; // closed shard
        }
        let it = client
            .kinesis(
                "GetShardIterator",
                json!({ "StreamName": args.stream, "ShardId": s["ShardId"], "ShardIteratorType": start }),
            )
            .await?;
        iterators.push(it["ShardIterator"].as_str().map(str::to_string));
    }
    let mut printed = 0u64;
    loop {
        let mut any = false;
        for it in iterators.iter_mut() {
            let Some(current) = it.clone() else { continue };
            let page = client
                .kinesis(
                    "GetRecords",
                    json!({ "ShardIterator": current, "Limit": 1000 }),
                )
                .await?;
            *it = page["NextShardIterator"].as_str().map(str::to_string);
            for r in page["Records"].as_array().into_iter().flatten() {
                any = true;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(r["Data"].as_str().unwrap_or_default())
                    .unwrap_or_default();
                let event: Value = serde_json::from_slice(&data)
                    .unwrap_or_else(|_| json!(String::from_utf8_lossy(&data)));
                if let Some(cam) = &args.camera
                    && event["stream"].as_str() != Some(cam)
                {
                    continue;
                }
                println!("{event}");
                printed += 1;
                if args.count.is_some_and(|c| printed >= c) {
                    return Ok(());
                }
            }
        }
        if iterators.iter().all(Option::is_none) {
            return Ok(());
        }
        if !any {
            tokio::time::sleep(IDLE_POLL).await;
        }
    }
}
