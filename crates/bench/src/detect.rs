//! `kinema-bench-detect`: detection speed on this machine.
//!
//! 1. Detections per second of the SSDLite model with 1 and 2 ONNX Runtime
//!    threads, on frames of the 1906 Market Street clip (decoded and scaled
//!    to 300x300 once by ffmpeg, so every run sees the same inputs), through
//!    our per-frame path (`infer::Detector::detect`: tensor, run, decode,
//!    NMS; then `detect::Analyzer`).
//! 2. The overhead of that path over ONNX Runtime's own `run` time, measured
//!    inside our process and, as a reference, by ONNX Runtime's Python API
//!    (`onnxruntime` from the same wheel) on the same model and frames in
//!    the same run.
//! 3. The delay from a frame being decoded to its event being readable on
//!    the data stream: a live camera (gst-launch | curl PutMedia) into a
//!    real `kinema` server whose detector publishes an event for every
//!    analysed frame, read by a server-sent-events subscriber.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::*;
use kinema_detect::{Analyzer, AnalyzerConfig};
use kinema_infer::{Layout, ModelSpec, Runtime};

const SIDE: u32 = 300;
const FRAME_BYTES: usize = (SIDE * SIDE * 3) as usize;

fn cache(p: &str) -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/kinema")
        .join(p)
}

fn args() -> (usize, u64) {
    let mut frames = 150;
    let mut live_seconds = 20;
    let a: Vec<String> = std::env::args().collect();
    for w in a.windows(2) {
        match w[0].as_str() {
            "--frames" => frames = w[1].parse().unwrap_or(frames),
            "--live-seconds" => live_seconds = w[1].parse().unwrap_or(live_seconds),
            _ => {}
        }
    }
    (frames, live_seconds)
}

/// Every 6th frame of the clip, 300x300 RGB, one file of raw frames.
fn frames_file(dir: &Path, count: usize) -> anyhow::Result<(PathBuf, Vec<Vec<u8>>)> {
    let clip = cache("assets/market_street_1906.mp4");
    if !clip.exists() {
        bail!("{} missing: run scripts/setup.sh", clip.display());
    }
    let out = dir.join("frames.rgb");
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-i"])
        .arg(&clip)
        .args([
            "-vf",
            &format!("select='not(mod(n\\,6))',scale={SIDE}:{SIDE}:flags=bilinear"),
            "-vsync",
            "0",
            "-frames:v",
            &count.to_string(),
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
        ])
        .arg(&out)
        .status()?;
    if !status.success() {
        bail!("ffmpeg failed");
    }
    let data = std::fs::read(&out)?;
    let frames: Vec<Vec<u8>> = data.chunks_exact(FRAME_BYTES).map(<[u8]>::to_vec).collect();
    Ok((out, frames))
}

struct Run {
    fps: f64,
    total_ms: f64,
    ort_ms: f64,
}

fn ours(rt: &Runtime, frames: &[Vec<u8>], threads: usize) -> anyhow::Result<Run> {
    let det = rt.detector(&ModelSpec {
        path: cache("models/ssdlite_mobilenet_v2_coco.onnx"),
        layout: Layout::Ssd,
        intra_threads: threads,
    })?;
    let mut analyzer = Analyzer::new(AnalyzerConfig::default());
    // Warm up (first runs allocate and pick kernels).
    for f in frames.iter().take(5) {
        det.detect(f, &[1], 0.3, 0.5)?;
    }
    let mut ort = Duration::ZERO;
    let start = Instant::now();
    for (i, f) in frames.iter().enumerate() {
        let r = det.detect(f, &[1], 0.3, 0.5)?;
        ort += r.run_time;
        analyzer.observe(i as i64 * 200, &r.detections);
    }
    let total = start.elapsed();
    let n = frames.len() as f64;
    Ok(Run {
        fps: n / total.as_secs_f64(),
        total_ms: total.as_secs_f64() * 1000.0 / n,
        ort_ms: ort.as_secs_f64() * 1000.0 / n,
    })
}

/// ONNX Runtime's Python API on the same frames: ms per `session.run`.
fn python_reference(frames: &Path, threads: usize) -> anyhow::Result<f64> {
    let py = cache("venv/bin/python");
    let script = r#"
import sys, time, numpy as np, onnxruntime as ort
model, frames, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
s = ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])
data = np.fromfile(frames, np.uint8).reshape(-1, 1, 300, 300, 3)
x = [f.astype(np.float32) for f in data]
for f in x[:5]: s.run(None, {"image": f})
t = time.perf_counter()
for f in x: s.run(None, {"image": f})
print((time.perf_counter() - t) * 1000 / len(x))
"#;
    let out = Command::new(py)
        .args(["-c", script])
        .arg(cache("models/ssdlite_mobilenet_v2_coco.onnx"))
        .arg(frames)
        .arg(threads.to_string())
        .output()?;
    if !out.status.success() {
        bail!(
            "python reference failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// Decode-to-readable latency through a real server, ms (sorted).
fn live_latency(dir: &Path, seconds: u64) -> anyhow::Result<Vec<f64>> {
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        "[detectors.cam]\ndetections_per_second = 5\ncount_interval_ms = 1\n",
    )?;
    let server = start_server_with(
        &dir.join("data"),
        &["--config".into(), config.display().to_string()],
    )?;
    let url = server.url.clone();
    let sign = ["--aws-sigv4", "aws:amz:us-east-1:kinesisvideo"];
    let user = format!("{KEY}:{SECRET}");
    let ok = Command::new("curl")
        .args(["-sSf", "-o", "/dev/null"])
        .args(sign)
        .args([
            "--user",
            &user,
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
        ])
        .args(["--data", r#"{"StreamName":"cam","DataRetentionInHours":1}"#])
        .arg(format!("{url}/createStream"))
        .status()?;
    if !ok.success() {
        bail!("createStream failed");
    }
    let ok = Command::new("curl")
        .args(["-sSf", "-o", "/dev/null"])
        .args([
            "--aws-sigv4",
            "aws:amz:us-east-1:kinesis",
            "--user",
            &user,
            "-X",
            "POST",
        ])
        .args(["-H", "x-amz-target: Kinesis_20131202.CreateStream"])
        .args(["-H", "content-type: application/x-amz-json-1.1"])
        .args(["--data", r#"{"StreamName":"kinema-events","ShardCount":1}"#])
        .arg(format!("{url}/"))
        .status()?;
    if !ok.success() {
        bail!("CreateStream (events) failed");
    }
    // The subscriber: server-sent events, each timed as its line arrives.
    let mut sub = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--aws-sigv4",
            "aws:amz:us-east-1:kinesis",
            "--user",
            &user,
        ])
        .arg(format!(
            "{url}/v1/datastreams/kinema-events/subscribe?from=LATEST"
        ))
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = sub.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut lat = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let now = kinema_engine::now_ms();
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
                continue;
            };
            for r in v["records"].as_array().into_iter().flatten() {
                use base64::Engine as _;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(r["data"].as_str().unwrap_or_default())
                    .unwrap_or_default();
                if let Ok(e) = serde_json::from_slice::<serde_json::Value>(&raw)
                    && let Some(d) = e["decoded_at_ms"].as_i64()
                {
                    lat.push((now - d) as f64);
                }
            }
        }
        lat
    });
    std::thread::sleep(Duration::from_millis(500));
    let frames = seconds * 30;
    let producer = format!(
        "gst-launch-1.0 -q videotestsrc is-live=true pattern=ball num-buffers={frames} \
         ! video/x-raw,width=640,height=360,framerate=30/1,format=I420 \
         ! x264enc tune=zerolatency key-int-max=30 speed-preset=ultrafast ! video/x-h264,profile=constrained-baseline \
         ! h264parse ! matroskamux streamable=true ! fdsink fd=1 \
         | curl -sS -N --aws-sigv4 'aws:amz:us-east-1:kinesisvideo' --user {user} -X POST -T - \
           -H 'x-amzn-stream-name: cam' -H 'x-amzn-fragment-timecode-type: RELATIVE' \
           -H \"x-amzn-producer-start-timestamp: $(date +%s.%N | cut -c1-14)\" {url}/putMedia > /dev/null"
    );
    let status = Command::new("sh").arg("-c").arg(producer).status()?;
    if !status.success() {
        bail!("producer failed");
    }
    std::thread::sleep(Duration::from_secs(2));
    let _ = sub.kill();
    let _ = sub.wait();
    let mut lat = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    lat.sort_by(f64::total_cmp);
    drop(server);
    Ok(lat)
}

fn main() -> anyhow::Result<()> {
    let (count, live_seconds) = args();
    let dir = tempfile_dir()?;
    let rt = Runtime::load(&cache("models/libonnxruntime.so"))?;
    let (file, frames) = frames_file(&dir, count)?;
    println!(
        "detection: SSDLite MobileNetV2 300x300, {} frames of the Market Street clip",
        frames.len()
    );
    for threads in [1, 2] {
        let r = ours(&rt, &frames, threads)?;
        let py = python_reference(&file, threads)?;
        println!(
            "  {threads} thread(s): {:.1} detections/s; per frame {:.2} ms (ONNX Runtime run {:.2} ms inside it: overhead {:+.1}%); \
             onnxruntime Python API {:.2} ms/run: ours/reference = {:.3}",
            r.fps,
            r.total_ms,
            r.ort_ms,
            (r.total_ms - r.ort_ms) / r.ort_ms * 100.0,
            py,
            r.total_ms / py
        );
    }
    let lat = live_latency(&dir, live_seconds)?;
    if lat.is_empty() {
        bail!("no events arrived");
    }
    println!(
        "  frame decoded -> event readable by a push subscriber: n={} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target 100 ms)",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("kinema-bench-detect-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
