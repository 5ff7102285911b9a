//! `kinema-bench-datastream`: the data stream on this machine, side by side
//! with NATS JetStream (Debian's `nats-server`, file storage, started on
//! loopback by this program) doing the same work in the same run.
//!
//! - throughput: 4 concurrent producers put batches of 500 records of 100 B
//!   and of 1 KiB for a few seconds, each batch acknowledged durably;
//! - latency: one record every 10 ms, from the put to a push subscriber
//!   (Kinema's server-sent-events push; a JetStream ordered push consumer).
//!
//! Usage: `kinema-bench-datastream [--seconds S]` (run by `make bench`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use common::{KEY, SECRET, cpu_seconds, percentile, start_server};
use futures::StreamExt;
use kinema_client::Client;
use serde_json::json;

const PRODUCERS: usize = 4;
const BATCH: usize = 500;
const LATENCY_SAMPLES: usize = 300;

async fn kinema_throughput(
    client: &Client,
    stream: &str,
    size: usize,
    secs: f64,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let data = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; size]);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let (client, done, data, stream) = (
            client.clone(),
            done.clone(),
            data.clone(),
            stream.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let records: Vec<_> = (0..BATCH)
                .map(|i| json!({"PartitionKey": format!("k{p}-{i}"), "Data": data}))
                .collect();
            let body = json!({"StreamName": stream, "Records": records});
            while Instant::now() < deadline {
                let r = client.kinesis("PutRecords", body.clone()).await?;
                let failed = r["FailedRecordCount"].as_u64().unwrap_or(0);
                done.fetch_add(BATCH as u64 - failed, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64())
}

async fn kinema_latency(url: &str, client: &Client, stream: &str) -> anyhow::Result<Vec<f64>> {
    let origin = Instant::now();
    let port: u16 = url.rsplit(':').next().context("port")?.parse()?;
    let path = format!("/v1/datastreams/{stream}/subscribe?from=LATEST");
    let mut req = http::Request::get(format!("{url}{path}"))
        .header("host", format!("127.0.0.1:{port}"))
        .body(())?;
    kinema_client::sign_request(&mut req, KEY, SECRET, "us-east-1", "kinesis", None)?;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET {path} HTTP/1.1\r\n")?;
    for (k, v) in req.headers() {
        write!(s, "{k}: {}\r\n", v.to_str()?)?;
    }
    write!(s, "\r\n")?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let reader = std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
        let mut out = Vec::new();
        for line in BufReader::new(s).lines() {
            let line = line?;
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(data)?;
            let now = origin.elapsed().as_nanos() as f64;
            for r in v["records"].as_array().context("records")? {
                let sent: f64 = String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(r["data"].as_str().context("data")?)?,
                )?
                .parse()?;
                out.push((now - sent) / 1e6);
            }
            if out.len() >= LATENCY_SAMPLES {
                break;
            }
        }
        Ok(out)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..LATENCY_SAMPLES {
        let sent = origin.elapsed().as_nanos().to_string();
        let data = base64::engine::general_purpose::STANDARD.encode(sent);
        client
            .kinesis(
                "PutRecord",
                json!({"StreamName": stream, "PartitionKey": "lat", "Data": data}),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lat = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

struct Nats {
    child: std::process::Child,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nats(dir: &std::path::Path) -> anyhow::Result<(Nats, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start nats-server (installed by scripts/setup.sh)")?;
    Ok((Nats { child }, port))
}

async fn nats_throughput(
    js: &async_nats::jetstream::Context,
    size: usize,
    secs: f64,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let (js, done, payload) = (js.clone(), done.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let mut acks = Vec::with_capacity(BATCH);
                for i in 0..BATCH {
                    acks.push(
                        js.publish(format!("bench.k{p}-{}", i % 16), payload.clone())
                            .await?,
                    );
                }
                for a in acks {
                    a.await?;
                }
                done.fetch_add(BATCH as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64())
}

async fn nats_latency(js: &async_nats::jetstream::Context) -> anyhow::Result<Vec<f64>> {
    use async_nats::jetstream::consumer;
    let origin = Instant::now();
    let stream = js.get_stream("BENCH").await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::New,
            filter_subject: "lat".into(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(m) = messages.next().await {
            let m = m?;
            let sent: f64 = std::str::from_utf8(&m.payload)?.parse()?;
            out.push((origin.elapsed().as_nanos() as f64 - sent) / 1e6);
            if out.len() >= LATENCY_SAMPLES {
                break;
            }
        }
        anyhow::Ok(out)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..LATENCY_SAMPLES {
        let sent = origin.elapsed().as_nanos().to_string();
        js.publish("lat", sent.into()).await?.await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lat = tokio::time::timeout(Duration::from_secs(30), reader).await???;
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: f64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let work = std::env::temp_dir().join(format!("kinema-bench-ds-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    let server = start_server(&work.join("kinema"))?;
    let client = Client::new(&server.url, KEY, SECRET);
    let (nats, port) = start_nats(&work.join("nats"))?;
    // nats-server needs a moment to listen; try for up to 10 s.
    let mut attempts = 0;
    let nc = loop {
        match async_nats::connect(format!("127.0.0.1:{port}")).await {
            Ok(c) => break c,
            Err(e) if attempts >= 100 => return Err(e.into()),
            Err(_) => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let js = async_nats::jetstream::new(nc);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into(), "lat".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;

    println!(
        "data stream benchmark: {PRODUCERS} producers, batches of {BATCH}, {secs} s per run, acknowledged durably"
    );
    for size in [100usize, 1024] {
        let name = format!("tput{size}");
        client
            .kinesis("CreateStream", json!({"StreamName": name, "ShardCount": 2}))
            .await?;
        let c0 = cpu_seconds(server.child.id())?;
        let k = kinema_throughput(&client, &name, size, secs).await?;
        let kc = (cpu_seconds(server.child.id())? - c0) / secs;
        let c0 = cpu_seconds(nats.child.id())?;
        let n = nats_throughput(&js, size, secs).await?;
        let nc = (cpu_seconds(nats.child.id())? - c0) / secs;
        println!(
            "put {size:>4} B records: kinema {k:>9.0} rec/s ({:.1} MB/s, server {:.0}% CPU) | JetStream {n:>9.0} rec/s ({:.1} MB/s, server {:.0}% CPU) | ratio {:.2}",
            k * size as f64 / 1e6,
            kc * 100.0,
            n * size as f64 / 1e6,
            nc * 100.0,
            k / n
        );
    }
    client
        .kinesis(
            "CreateStream",
            json!({"StreamName": "lat", "ShardCount": 1}),
        )
        .await?;
    let kl = kinema_latency(&server.url, &client, "lat").await?;
    let nl = nats_latency(&js).await?;
    if kl.is_empty() || nl.is_empty() {
        bail!("no latency samples");
    }
    println!(
        "put-to-push-subscriber latency: kinema p50 {:.2} ms p99 {:.2} ms | JetStream p50 {:.2} ms p99 {:.2} ms ({} samples each)",
        percentile(&kl, 0.5),
        percentile(&kl, 0.99),
        percentile(&nl, 0.5),
        percentile(&nl, 0.99),
        kl.len().min(nl.len())
    );
    drop(nats);
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
