//! `kinema-bench`: measures the video store on this machine.
//!
//! - ingest: N concurrent PutMedia uploads, each replaying a 2 Mbit/s H.264
//!   clip in real time, into a real `kinema` server process; reports the
//!   server's CPU per stream and the PERSISTED-ack latency (from the send of
//!   the bytes that complete a fragment to its ack), p50/p99;
//! - a reference: GStreamer remuxing the same clip (`matroskademux !
//!   matroskamux ! filesink`), CPU time per second of video, side by side;
//! - index: locating the fragment for a timestamp among 1,000,000;
//! - GetMedia: time to first byte for a stored timestamp.
//!
//! Usage: `kinema-bench [--streams N[,N...]] [--seconds S] [--aligned]`
//! (run by `make bench`). Uploads start their fragments spread over a
//! second, as independent cameras do; `--aligned` makes every stream cut a
//! fragment at the same instant (the worst case for the disk).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kinema_archive::{Catalog, FragmentMeta, TimeKind};

mod common;
use common::{
    HttpClient, ServerProc, call, cpu_seconds, make_clip, percentile, signed_post, split_clusters,
    start_server, upload,
};

async fn ingest_run(
    work: &Path,
    clip: &Path,
    streams: usize,
    seconds: usize,
    aligned: bool,
) -> anyhow::Result<(f64, Vec<f64>, ServerProc)> {
    let data_dir = work.join(format!("data-{streams}"));
    let _ = std::fs::remove_dir_all(&data_dir);
    let server = start_server(&data_dir)?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    for i in 0..streams {
        call(
            &client,
            &server.url,
            "/createStream",
            serde_json::json!({"StreamName": format!("s{i}"), "DataRetentionInHours": 1}),
        )
        .await?;
    }
    let (header, clusters) = split_clusters(&std::fs::read(clip)?);
    let clusters = Arc::new(clusters);
    let cpu0 = cpu_seconds(server.child.id())?;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..streams {
        tasks.push(tokio::spawn(upload(
            client.clone(),
            server.url.clone(),
            format!("s{i}"),
            header.clone(),
            clusters.clone(),
            seconds,
            // Cameras are not phase-locked: spread fragment starts over a
            // second unless the worst case (all at once) is asked for.
            if aligned {
                Duration::ZERO
            } else {
                Duration::from_millis((i * 1000 / streams) as u64)
            },
        )));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.child.id())? - cpu0;
    latencies.sort_by(f64::total_cmp);
    Ok((cpu / wall, latencies, server))
}

fn gst_reference(clip: &Path, out: &Path, seconds: f64) -> anyhow::Result<f64> {
    let child = Command::new("gst-launch-1.0")
        .args(["-q", "filesrc"])
        .arg(format!("location={}", clip.display()))
        .args([
            "!",
            "matroskademux",
            "!",
            "h264parse",
            "!",
            "matroskamux",
            "streamable=true",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", out.display()))
        .spawn()?;
    let pid = child.id();
    let mut child = child;
    let mut cpu = 0.0;
    loop {
        if let Ok(c) = cpu_seconds(pid) {
            cpu = c;
        }
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(cpu / seconds)
}

fn index_bench() -> (f64, f64) {
    let mut c = Catalog::new();
    let base = 1_700_000_000_000i64;
    for i in 0..1_000_000u64 {
        c.append(FragmentMeta {
            number: i + 1,
            producer_ms: base + i as i64 * 1000,
            server_ms: base + i as i64 * 1000 + 20,
            duration_ms: 1000,
            size: 250_000,
            cluster_offset: 300,
            frames: 30,
        })
        .expect("numbers increase");
    }
    // Nanoseconds per lookup of pseudo-random timestamps (xorshift).
    let time_lookups = |kind: TimeKind| {
        let lookups = 1_000_000u64;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut sum = 0u64;
        let t = Instant::now();
        for _ in 0..lookups {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ts = base + (x % 1_000_000_000) as i64;
            sum += c.locate(kind, ts).map(|f| f.number).unwrap_or(0);
        }
        std::hint::black_box(sum);
        t.elapsed().as_nanos() as f64 / lookups as f64
    };
    let producer_ns = time_lookups(TimeKind::Producer);
    let server_ns = time_lookups(TimeKind::Server);
    (producer_ns, server_ns)
}

async fn get_media_ttfb(
    url: &str,
    stream: &str,
    at_ms: i64,
    runs: usize,
) -> anyhow::Result<Vec<f64>> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut out = Vec::new();
    for _ in 0..runs {
        let body = serde_json::json!({
            "StreamName": stream,
            "StartSelector": {"StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": at_ms as f64 / 1000.0}
        });
        let req = signed_post(url, "/getMedia", &body)?;
        let t = Instant::now();
        let resp = client.request(req).await?;
        let mut body = resp.into_body();
        if let Some(frame) = body.frame().await {
            frame?;
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        drop(body);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

fn parse_args() -> (Vec<usize>, usize, bool) {
    let mut streams = vec![1, 10, 50, 100];
    let mut seconds = 20;
    let mut aligned = false;
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--streams" if i + 1 < args.len() => {
                streams = args[i + 1]
                    .split(',')
                    .filter_map(|s| s.parse().ok())
                    .collect();
                i += 1;
            }
            "--seconds" if i + 1 < args.len() => {
                seconds = args[i + 1].parse().unwrap_or(seconds);
                i += 1;
            }
            "--aligned" => aligned = true,
            _ => {}
        }
        i += 1;
    }
    (streams, seconds, aligned)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (stream_counts, seconds, aligned) = parse_args();
    let work = tempfile_dir()?;
    let clip = work.join("clip.mkv");
    make_clip(&clip, 30, 2000, seconds as u32 + 2)?;
    let clip_bytes = std::fs::metadata(&clip)?.len();
    let mbps = clip_bytes as f64 * 8.0 / (seconds as f64 + 2.0) / 1e6;
    println!("clip: 640x360 30 fps H.264, {mbps:.2} Mbit/s, {seconds} s per upload");

    let (p_ns, s_ns) = index_bench();
    println!(
        "index: locate among 1,000,000 fragments: producer time {p_ns:.0} ns, server time {s_ns:.0} ns (target < 50,000 ns)"
    );

    let reference = gst_reference(&clip, &work.join("ref.mkv"), seconds as f64 + 2.0)?;
    println!(
        "reference: GStreamer matroskademux ! h264parse ! matroskamux ! filesink uses {:.3}% of a core per second of this video",
        reference * 100.0
    );

    // The last run's server stays up for the GetMedia measurement.
    let mut last = None;
    for &n in &stream_counts {
        drop(last.take());
        let (cores, lat, server) = ingest_run(&work, &clip, n, seconds, aligned).await?;
        let per_stream = cores / n as f64 * 100.0;
        println!(
            "ingest{}: {n:>3} streams x {mbps:.1} Mbit/s: server CPU {:.1}% of a core, {per_stream:.3}% per stream \
             ({:.2}x the GStreamer remux reference), PERSISTED latency p50 {:.1} ms p99 {:.1} ms over {} fragments",
            if aligned { " (fragments aligned)" } else { "" },
            cores * 100.0,
            per_stream / 100.0 / reference.max(1e-9),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.len()
        );
        last = Some(server);
    }
    if let Some(server) = &last {
        let url = server.url.clone();
        let at = kinema_engine::now_ms() - (seconds as i64 / 2) * 1000;
        let ttfb = get_media_ttfb(&url, "s0", at, 50).await?;
        println!(
            "GetMedia time to first byte for a stored timestamp: p50 {:.2} ms p99 {:.2} ms (target < 20 ms)",
            percentile(&ttfb, 0.5),
            percentile(&ttfb, 0.99)
        );
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("kinema-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
