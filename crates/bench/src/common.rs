//! Helpers shared by the benchmark programs.
// Each benchmark program compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use kinema_client::sign_request;
use kinema_mkv::{Event, Reader};
use tokio::sync::{Mutex, mpsc};

pub const KEY: &str = "AKIDBENCH";
pub const SECRET: &str = "bench-secret";

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields[11].parse()?;
    let stime: f64 = fields[12].parse()?;
    Ok((utime + stime) / 100.0)
}

pub struct ServerProc {
    pub child: std::process::Child,
    pub url: String,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_server(data_dir: &Path) -> anyhow::Result<ServerProc> {
    start_server_with(data_dir, &[])
}

/// Starts the release `kinema` next to this program with extra arguments.
pub fn start_server_with(data_dir: &Path, args: &[String]) -> anyhow::Result<ServerProc> {
    use std::io::BufRead;
    let exe = std::env::current_exe()?.with_file_name("kinema");
    let mut child = Command::new(&exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("KINEMA_ACCESS_KEY_ID", KEY)
        .env("KINEMA_SECRET_ACCESS_KEY", SECRET)
        .env("RUST_LOG", "warn,kinema_server=info")
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "start {} (build it with `cargo build --release -p kinema-server`)",
                exe.display()
            )
        })?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let url = loop {
        let line = lines.next().context("server exited")??;
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .context("address")?
                .to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok(ServerProc { child, url })
}

/// Renders a benchmark clip: 640x360, 30 fps at `kbps`, a keyframe every `gop` frames.
pub fn make_clip(path: &Path, gop: u32, kbps: u32, seconds: u32) -> anyhow::Result<()> {
    let frames = seconds * 30;
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gst-launch-1.0 -q videotestsrc pattern=smpte num-buffers={frames} \
             ! video/x-raw,width=640,height=360,framerate=30/1,format=I420 \
             ! x264enc bitrate={kbps} key-int-max={gop} speed-preset=ultrafast tune=zerolatency \
             ! video/x-h264,profile=constrained-baseline ! h264parse ! matroskamux streamable=true \
             ! filesink location={}",
            path.display()
        ))
        .status()?;
    if !status.success() {
        bail!("gst-launch failed to render the clip");
    }
    Ok(())
}

/// The clip split at Cluster starts: header bytes, then one chunk per cluster.
pub fn split_clusters(data: &[u8]) -> (Bytes, Vec<Bytes>) {
    let mut reader = Reader::default();
    reader.push(data);
    reader.finish();
    let mut starts = Vec::new();
    while let Ok(Some(ev)) = reader.poll_event() {
        if let Event::ClusterStart { offset } = ev {
            starts.push(offset as usize);
        }
    }
    starts.push(data.len());
    let header = Bytes::copy_from_slice(&data[..starts[0]]);
    let clusters = starts
        .windows(2)
        .map(|w| Bytes::copy_from_slice(&data[w[0]..w[1]]))
        .collect();
    (header, clusters)
}

pub type HttpClient =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, BoxBody>;
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub fn full(b: Bytes) -> BoxBody {
    http_body_util::Full::new(b)
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON POST to Kinema signed over its body.
pub fn signed_post(
    url: &str,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<http::Request<BoxBody>> {
    let bytes = Bytes::from(body.to_string());
    let uri: http::Uri = format!("{url}{path}").parse()?;
    let mut req = http::Request::post(uri.clone())
        .header("host", uri.authority().context("authority")?.as_str())
        .header("content-type", "application/json")
        .body(full(bytes.clone()))?;
    sign_request(
        &mut req,
        KEY,
        SECRET,
        "us-east-1",
        "kinesisvideo",
        Some(&bytes),
    )?;
    Ok(req)
}

pub async fn call(
    client: &HttpClient,
    url: &str,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let resp = client.request(signed_post(url, path, &body)?).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{path}: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

pub fn tokio_stream<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Complete PutMedia ACK lines from a response body chunk: `buf` keeps a
/// partial line until its end arrives.
pub fn ack_lines(buf: &mut Vec<u8>, data: &[u8]) -> Vec<serde_json::Value> {
    buf.extend_from_slice(data);
    let mut out = Vec::new();
    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        out.push(serde_json::from_slice(&line).unwrap_or_default());
    }
    out
}

/// One real-time uploader. Returns PERSISTED latencies in milliseconds.
pub async fn upload(
    client: HttpClient,
    url: String,
    stream: String,
    header: Bytes,
    clusters: Arc<Vec<Bytes>>,
    seconds: usize,
    phase: Duration,
) -> anyhow::Result<Vec<f64>> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let body: BoxBody = StreamBody::new(tokio_stream(rx)).boxed();
    let uri: http::Uri = format!("{url}/putMedia").parse()?;
    let mut req = http::Request::post(uri.clone())
        .header("host", uri.authority().context("authority")?.as_str())
        .header("x-amzn-stream-name", &stream)
        .header("x-amzn-fragment-timecode-type", "RELATIVE")
        .header(
            "x-amzn-producer-start-timestamp",
            format!("{:.3}", kinema_engine::now_ms() as f64 / 1000.0),
        )
        .body(body)?;
    sign_request(&mut req, KEY, SECRET, "us-east-1", "kinesisvideo", None)?;
    // When the bytes completing fragment i were sent (the start of cluster i+1).
    let sent: Arc<Mutex<BTreeMap<usize, Instant>>> = Arc::default();
    let sender = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let start = Instant::now() + phase;
            tx.send(Ok(Frame::data(header))).await.ok()?;
            let n = clusters.len().min(seconds + 1);
            for (i, c) in clusters.iter().take(n).enumerate() {
                tokio::time::sleep_until((start + Duration::from_secs(i as u64)).into()).await;
                if i > 0 {
                    sent.lock().await.insert(i - 1, Instant::now());
                }
                tx.send(Ok(Frame::data(c.clone()))).await.ok()?;
            }
            // Hold the connection until the acks are in, then end the body.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some(())
        })
    };
    let resp = client.request(req).await?;
    let mut body = resp.into_body();
    let mut latencies = Vec::new();
    let mut buf = Vec::new();
    let mut fragment = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        for v in ack_lines(&mut buf, &data) {
            match v["EventType"].as_str() {
                Some("PERSISTED") => {
                    if let Some(t) = sent.lock().await.get(&fragment) {
                        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    fragment += 1;
                }
                Some("ERROR") => bail!("{stream}: error ack {v}"),
                _ => {}
            }
        }
    }
    let _ = sender.await;
    Ok(latencies)
}
