//! `kinema-bench-rtsp`: CPU per ingested RTSP camera. N concurrent 2 Mbit/s
//! H.264 cameras (720p30, served by an in-process gstreamer-rtsp-server
//! from a file encoded once) are pulled by the `kinema` server as sources,
//! then, in the same run, by N plain GStreamer pipelines doing the same job
//! (`rtspsrc ! rtph264depay ! h264parse ! matroskamux ! filesink`). Only the
//! ingesting processes are measured (CPU seconds from /proc over the same
//! window), not the RTSP server.
//!
//! Usage: `kinema-bench-rtsp [--cameras N] [--seconds S]` (run by `make bench`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use common::{KEY, SECRET, cpu_seconds, start_server_with};
use kinema_media::rtsp_server::RtspServer;

const KBPS: u32 = 2000;
const CLIP_SECONDS: u32 = 90;
const WARMUP: Duration = Duration::from_secs(4);

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

/// A 2 Mbit/s 720p30 H.264 clip with a 2 s GOP, encoded once and cached.
fn clip(cache: &Path) -> anyhow::Result<PathBuf> {
    let path = cache.join(format!("camera-720p-smpte-{KBPS}k-{CLIP_SECONDS}s.mkv"));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache)?;
    eprintln!(
        "encoding the {CLIP_SECONDS} s test camera clip once ({})",
        path.display()
    );
    let tmp = path.with_extension("tmp");
    let status = Command::new("gst-launch-1.0")
        // A moving colour-bar pattern: busy enough that x264 really spends
        // the 2 Mbit/s (a bouncing ball would need far less).
        .args(["-q", "videotestsrc", "pattern=smpte", "horizontal-speed=8"])
        .arg(format!("num-buffers={}", CLIP_SECONDS * 30))
        .args([
            "!",
            "video/x-raw,format=I420,width=1280,height=720,framerate=30/1",
            "!",
            "timeoverlay",
            "!",
        ])
        .args([
            "x264enc",
            "speed-preset=veryfast",
            "key-int-max=60",
            "bframes=0",
        ])
        .arg(format!("bitrate={KBPS}"))
        .args([
            "!",
            "video/x-h264,profile=main",
            "!",
            "h264parse",
            "!",
            "matroskamux",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", tmp.display()))
        .status()?;
    if !status.success() {
        bail!("encoding the test clip failed");
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p).ok()).sum()
}

/// CPU seconds the processes use over `window` after `WARMUP`.
fn measure(pids: &[u32], window: Duration) -> f64 {
    std::thread::sleep(WARMUP);
    let before = total_cpu(pids);
    std::thread::sleep(window);
    total_cpu(pids) - before
}

fn main() -> anyhow::Result<()> {
    let cameras = arg("--cameras", 20) as usize;
    let seconds = arg("--seconds", 15);
    if seconds + WARMUP.as_secs() + 5 > CLIP_SECONDS as u64 {
        bail!("--seconds must leave the {CLIP_SECONDS} s clip running through the window");
    }
    let window = Duration::from_secs(seconds);
    let cache =
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/kinema/bench");
    let clip = clip(&cache)?;
    let launch = format!(
        "( filesrc location={} ! matroskademux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )",
        clip.display()
    );
    // One pipeline per client (not shared): each camera starts at the clip's beginning.
    let rtsp = RtspServer::start(0, "/cam", &launch, None, false)
        .map_err(anyhow::Error::msg)
        .context("start the RTSP server")?;
    let url = rtsp.url("/cam");
    println!(
        "RTSP ingest: {cameras} cameras of {KBPS} kbit/s 720p30 H.264 over TCP, {seconds} s window"
    );

    // Kinema: N sources in one server process.
    let dir = std::env::temp_dir().join(format!("kinema-bench-rtsp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut args = Vec::new();
    for i in 0..cameras {
        args.push("--source".to_string());
        args.push(format!("cam{i}={url}"));
    }
    let server = start_server_with(&dir.join("kinema"), &args)?;
    let kinema_cpu = measure(&[server.child.id()], window);
    let statuses = {
        let rt = tokio::runtime::Runtime::new()?;
        let client = kinema_client::Client::new(&server.url, KEY, SECRET);
        rt.block_on(client.get("/v1/sources"))?
    };
    let sources = statuses["sources"].as_array().cloned().unwrap_or_default();
    let streaming = sources.iter().filter(|s| s["state"] == "streaming").count();
    let fragments: u64 = sources.iter().filter_map(|s| s["fragments"].as_u64()).sum();
    let bytes: u64 = sources.iter().filter_map(|s| s["bytes"].as_u64()).sum();
    drop(server);
    if streaming != cameras {
        bail!("only {streaming} of {cameras} sources were streaming: {sources:?}");
    }

    // GStreamer: N plain pipelines doing the same job.
    let mut children = Vec::new();
    for i in 0..cameras {
        let out = dir.join(format!("gst-{i}.mkv"));
        let child = Command::new("gst-launch-1.0")
            .args(["-q", "rtspsrc"])
            .arg(format!("location={url}"))
            .args([
                "protocols=tcp",
                "latency=200",
                "!",
                "rtph264depay",
                "!",
                "h264parse",
                "!",
            ])
            .args(["matroskamux", "!", "filesink"])
            .arg(format!("location={}", out.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start gst-launch-1.0")?;
        children.push(child);
    }
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let gst_cpu = measure(&pids, window);
    let mut gst_bytes = 0;
    for (i, mut c) in children.into_iter().enumerate() {
        if c.try_wait()?.is_some() {
            bail!("gst-launch pipeline {i} exited early");
        }
        let _ = c.kill();
        let _ = c.wait();
        gst_bytes += std::fs::metadata(dir.join(format!("gst-{i}.mkv")))
            .map(|m| m.len())
            .unwrap_or(0);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let w = window.as_secs_f64();
    let per = |cpu: f64| 100.0 * cpu / w / cameras as f64;
    println!(
        "  kinema    : {:6.3} % of a core per camera ({:.2} cores in total); {fragments} fragments fsynced, {:.1} MB since start",
        per(kinema_cpu),
        kinema_cpu / w,
        bytes as f64 / 1e6
    );
    println!(
        "  gst-launch: {:6.3} % of a core per camera ({:.2} cores in total, {cameras} processes); {:.1} MB written",
        per(gst_cpu),
        gst_cpu / w,
        gst_bytes as f64 / 1e6
    );
    println!(
        "  ratio kinema / gst-launch CPU: {:.2}",
        kinema_cpu / gst_cpu
    );
    Ok(())
}
