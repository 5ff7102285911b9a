//! kinema-bench-webrtc: live WebRTC on this machine.
//!
//! 1. Signaling: offer-to-answer relay through the signaling WebSocket with
//!    N concurrent master/viewer pairs (each on its own channel), beside a
//!    plain WebSocket echo server in this process (the floor any relay
//!    pays: one message in and out of a server).
//! 2. Viewers: webrtc-rs receivers (in this process) watching one stream
//!    the server masters (WHEP), fed live by gst-launch | curl PutMedia at
//!    30 fps; per step the server's CPU, frames and bits each viewer got,
//!    and the server's delay from a frame's arrival to its hand-over to
//!    each viewer's peer (`kinema_webrtc_send_delay_seconds`, the step's
//!    share, as histogram bucket bounds).
//!
//! Everything on 127.0.0.1; ICE candidates are restricted to it.
//! Usage: kinema-bench-webrtc [--pairs 100] [--rounds 20] [--viewers 50,100,200] [--seconds 10]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use bytes::Bytes;
use common::*;
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    pairs: usize,
    rounds: usize,
    viewers: Vec<usize>,
    seconds: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        pairs: 100,
        rounds: 20,
        viewers: vec![50, 100, 200],
        seconds: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--pairs" => a.pairs = v.parse()?,
            "--rounds" => a.rounds = v.parse()?,
            "--viewers" => a.viewers = v.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--seconds" => a.seconds = v.parse()?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(a)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(base: &str, arn: &str, client: Option<&str>) -> anyhow::Result<String> {
    Ok(kinema_client::signaling_url(
        &base.replacen("http", "ws", 1),
        arn,
        client,
        KEY,
        SECRET,
        "us-east-1",
        SystemTime::now(),
    )?)
}

/// A WebSocket client with Nagle off, as browsers have it.
async fn connect(
    url: impl AsRef<str>,
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    tokio_tungstenite::connect_async_with_config(url.as_ref(), None, true).await
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.to_string()),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => bail!("connection ended: {other:?}"),
            Err(_) => bail!("no message in 10 s"),
        }
    }
}

fn report(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  {label:<44} n={:<6} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}

/// A plain WebSocket echo server: the reference relay.
async fn echo_server() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(format!("ws://{addr}/"))
}

async fn signaling(url: &str, a: &Args) -> anyhow::Result<()> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let mut pairs = Vec::new();
    for i in 0..a.pairs {
        let out = call(
            &client,
            url,
            "/createSignalingChannel",
            serde_json::json!({ "ChannelName": format!("bench-{i}") }),
        )
        .await?;
        let arn = out["ChannelARN"]
            .as_str()
            .context("ChannelARN")?
            .to_string();
        let (master, _) = connect(ws_url(url, &arn, None)?).await?;
        let (viewer, _) = connect(ws_url(url, &arn, Some(&format!("v{i}")))?).await?;
        pairs.push((master, viewer, format!("v{i}")));
    }
    // A browser-sized offer: about 4 KB of SDP, base64.
    use base64::Engine as _;
    let sdp = format!(
        "v=0\r\n{}",
        "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n".repeat(60)
    );
    let payload = base64::engine::general_purpose::STANDARD
        .encode(serde_json::json!({"type": "offer", "sdp": sdp}).to_string());
    let offer = serde_json::json!({"action": "SDP_OFFER", "messagePayload": payload}).to_string();
    let barrier = Arc::new(tokio::sync::Barrier::new(a.pairs));
    let mut tasks = Vec::new();
    for (mut master, mut viewer, id) in pairs {
        let (offer, barrier, rounds) = (offer.clone(), barrier.clone(), a.rounds);
        let answer = serde_json::json!({
            "action": "SDP_ANSWER", "messagePayload": "eyJ0eXBlIjoiYW5zd2VyIn0=", "recipientClientId": id
        })
        .to_string();
        tasks.push(tokio::spawn(async move {
            let mut relay = Vec::new();
            let mut round_trip = Vec::new();
            barrier.wait().await;
            for _ in 0..rounds {
                let t0 = Instant::now();
                viewer.send(Message::text(offer.clone())).await?;
                next_text(&mut master).await?;
                relay.push(t0.elapsed().as_secs_f64() * 1e3);
                master.send(Message::text(answer.clone())).await?;
                next_text(&mut viewer).await?;
                round_trip.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok((relay, round_trip))
        }));
    }
    let (mut relay, mut round_trip) = (Vec::new(), Vec::new());
    for t in tasks {
        let (r, rt) = t.await??;
        relay.extend(r);
        round_trip.extend(rt);
    }
    // The reference: the same messages through an echo server, same concurrency.
    let echo = echo_server().await?;
    let barrier = Arc::new(tokio::sync::Barrier::new(a.pairs));
    let mut tasks = Vec::new();
    for _ in 0..a.pairs {
        let (mut ws, _) = connect(&echo).await?;
        let (offer, barrier, rounds) = (offer.clone(), barrier.clone(), a.rounds);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            barrier.wait().await;
            for _ in 0..rounds {
                let t0 = Instant::now();
                ws.send(Message::text(offer.clone())).await?;
                next_text(&mut ws).await?;
                out.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(out)
        }));
    }
    let mut echo_ms = Vec::new();
    for t in tasks {
        echo_ms.extend(t.await??);
    }
    println!(
        "signaling: {} concurrent master/viewer pairs, {} offers each (4 KB SDP)",
        a.pairs, a.rounds
    );
    let p50 = |v: &Vec<f64>| {
        let mut s = v.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        percentile(&s, 0.5)
    };
    let ratio = p50(&relay) / p50(&echo_ms);
    report("offer relayed, viewer -> server -> master", relay);
    report("offer to answer (both relays)", round_trip);
    report(
        "reference: WebSocket echo, client -> server -> client",
        echo_ms,
    );
    println!("  ratio kinema relay / echo (p50): {ratio:.2}");
    Ok(())
}

/// One WHEP viewer: offer, signed POST, answer.
async fn whep_viewer(
    client: &HttpClient,
    url: &str,
    stream: &str,
) -> anyhow::Result<kinema_rtc::Receiver> {
    let cfg = kinema_rtc::RtcConfig {
        ice_ip: Some("127.0.0.1".parse()?),
        ice_servers: vec![],
    };
    let (rx, offer) = kinema_rtc::Receiver::offer(&cfg).await?;
    let uri: http::Uri = format!("{url}/v1/whep/{stream}").parse()?;
    let body = Bytes::from(offer);
    let mut req = http::Request::post(uri.clone())
        .header("host", uri.authority().context("authority")?.as_str())
        .header("content-type", "application/sdp")
        .body(full(body.clone()))?;
    kinema_client::sign_request(
        &mut req,
        KEY,
        SECRET,
        "us-east-1",
        "kinesisvideo",
        Some(&body),
    )?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let answer = resp.into_body().collect().await?.to_bytes();
    if status != http::StatusCode::CREATED {
        bail!("WHEP: {status} {}", String::from_utf8_lossy(&answer));
    }
    rx.accept_answer(std::str::from_utf8(&answer)?).await?;
    Ok(rx)
}

/// A Prometheus histogram's cumulative buckets: (le, count).
fn buckets(metrics: &str, name: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?.to_string();
            Some((le, l.split_whitespace().last()?.parse().ok()?))
        })
        .collect();
    out.dedup();
    out
}

/// (p50, p99) bucket bounds of what a histogram gained between two scrapes.
fn quantiles_between(before: &[(String, f64)], after: &[(String, f64)]) -> (String, String) {
    let delta: Vec<(String, f64)> = after
        .iter()
        .map(|(le, c)| {
            let b = before.iter().find(|(l, _)| l == le).map_or(0.0, |x| x.1);
            (le.clone(), c - b)
        })
        .collect();
    let total = delta.last().map(|b| b.1).unwrap_or(0.0);
    let q = |p: f64| {
        delta
            .iter()
            .find(|(_, c)| *c >= p * total)
            .map(|(le, _)| match le.parse::<f64>() {
                Ok(s) => format!("<= {:.2} ms", s * 1e3),
                Err(_) => le.clone(),
            })
            .unwrap_or_else(|| "-".into())
    };
    (q(0.5), q(0.99))
}

async fn scrape(client: &HttpClient, url: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let body = client
        .get(format!("{url}/metrics").parse()?)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    Ok(buckets(
        &String::from_utf8_lossy(&body),
        "kinema_webrtc_send_delay_seconds",
    ))
}

async fn viewers(url: &str, pid: u32, a: &Args) -> anyhow::Result<()> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    call(
        &client,
        url,
        "/createStream",
        serde_json::json!({"StreamName": "live", "DataRetentionInHours": 1}),
    )
    .await?;
    let frames = 30 * (30 + a.viewers.len() as u64 * (a.seconds + 40));
    let producer = format!(
        "gst-launch-1.0 -q videotestsrc is-live=true pattern=snow num-buffers={frames} \
         ! video/x-raw,width=640,height=360,framerate=30/1,format=I420 \
         ! x264enc bitrate=2000 key-int-max=30 speed-preset=ultrafast tune=zerolatency \
         ! video/x-h264,profile=constrained-baseline ! h264parse ! matroskamux streamable=true ! fdsink fd=1 \
         | curl -sS -N --aws-sigv4 'aws:amz:us-east-1:kinesisvideo' --user {KEY}:{SECRET} -X POST -T - \
           -H 'x-amzn-stream-name: live' -H 'x-amzn-fragment-timecode-type: RELATIVE' \
           -H \"x-amzn-producer-start-timestamp: $(date +%s.%N | cut -c1-14)\" {url}/putMedia > /dev/null"
    );
    let mut camera = std::process::Command::new("sh")
        .args(["-c", &producer])
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "viewers of one server-mastered stream (640x360 noise, 30 fps, x264 at 2 Mbit/s; webrtc-rs receivers in this process, WHEP)"
    );
    let mut all: Vec<kinema_rtc::Receiver> = Vec::new();
    let bench_pid = std::process::id();
    for &n in &a.viewers {
        while all.len() < n {
            all.push(whep_viewer(&client, url, "live").await?);
        }
        let started = Instant::now();
        for r in &all {
            let left = Duration::from_secs(60).saturating_sub(started.elapsed());
            if tokio::time::timeout(left, r.first_frame()).await.is_err() {
                bail!("a viewer got no frame within 60 s ({} viewers)", all.len());
            }
        }
        let h0 = scrape(&client, url).await?;
        let f0: Vec<u64> = all.iter().map(|r| r.frames()).collect();
        let bytes0: u64 = all.iter().map(|r| r.bytes()).sum();
        let (c0, b0, t0) = (cpu_seconds(pid)?, cpu_seconds(bench_pid)?, Instant::now());
        tokio::time::sleep(Duration::from_secs(a.seconds)).await;
        let wall = t0.elapsed().as_secs_f64();
        let (c1, b1) = (cpu_seconds(pid)?, cpu_seconds(bench_pid)?);
        let (p50, p99) = quantiles_between(&h0, &scrape(&client, url).await?);
        let fps: Vec<f64> = all
            .iter()
            .zip(&f0)
            .map(|(r, f)| (r.frames() - f) as f64 / wall)
            .collect();
        let kbps = (all.iter().map(|r| r.bytes()).sum::<u64>() - bytes0) as f64 * 8.0
            / 1000.0
            / wall
            / all.len() as f64;
        let min = fps.iter().copied().fold(f64::INFINITY, f64::min);
        let avg = fps.iter().sum::<f64>() / fps.len() as f64;
        let server_cpu = 100.0 * (c1 - c0) / wall;
        println!(
            "  {:>4} viewers: all receiving in {:>5.2} s; server CPU {:>6.1}% of a core ({:.2}% per viewer); \
             frames/s per viewer min {:.1} avg {:.1}, {:.0} kbit/s each; receivers' CPU {:.1}%; \
             server delay arrival -> sent p50 {p50}, p99 {p99}",
            all.len(),
            started.elapsed().as_secs_f64() - wall,
            server_cpu,
            server_cpu / all.len() as f64,
            min,
            avg,
            kbps,
            100.0 * (b1 - b0) / wall
        );
    }
    for r in &all {
        r.close().await;
    }
    let _ = camera.kill();
    let _ = std::process::Command::new("pkill")
        .args(["-f", "x-amzn-stream-name: live"])
        .status();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let dir = std::env::temp_dir().join(format!("kinema-bench-webrtc-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[webrtc]\nturn_listen = \"off\"\nice_ip = \"127.0.0.1\"\nmax_viewers_per_stream = 2000\nmax_viewers_per_channel = 2000\n",
    )?;
    let server = start_server_with(
        &dir.join("data"),
        &["--config".into(), config.display().to_string()],
    )?;
    signaling(&server.url, &a).await?;
    viewers(&server.url, server.child.id(), &a).await?;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
