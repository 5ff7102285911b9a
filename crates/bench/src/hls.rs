//! `kinema-bench-hls`: HLS packaging speed and live playlist latency.
//!
//! - packaging: an hour of 640x360 30 fps H.264 (a 60 s clip repeated with
//!   advancing timestamps, 2 s fragments) is stored through PutMedia; then
//!   every segment of an ON_DEMAND session is fetched over HTTP from the
//!   server (fMP4 and MPEG-TS), and the same fragments are remuxed
//!   in-process (kinema-remux over the stored objects, no HTTP). The
//!   reference, in the same run on the same input: `ffmpeg -i hour.mkv -c
//!   copy -f hls` writing the same 2 s segments.
//! - live latency: a real-time PutMedia upload of 1 s fragments while a
//!   LIVE session's media playlist is polled every 2 ms; for each fragment,
//!   the time from its PERSISTED ack to its first appearance in the playlist.
//!
//! Usage: `kinema-bench-hls [--minutes M] [--live-seconds S]` (`make bench`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame as BodyFrame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kinema_mkv::mux::{Frame, Muxer, Piece, VideoTrack};
use kinema_mkv::{Event, Reader};
use tokio::sync::{Mutex, mpsc, oneshot};

mod common;
use common::{
    BoxBody, HttpClient, KEY, SECRET, ack_lines, call, make_clip, percentile, split_clusters,
    start_server, tokio_stream,
};

/// A clip frame: presentation time (ms from the clip start), keyframe, data.
type ClipFrame = (u64, bool, Bytes);

/// The clip's track and frames.
fn read_clip(path: &Path) -> anyhow::Result<(VideoTrack, Vec<ClipFrame>)> {
    let mut reader = Reader::default();
    reader.push(&std::fs::read(path)?);
    reader.finish();
    let mut track = None;
    let mut base = 0u64;
    let mut frames = Vec::new();
    while let Some(ev) = reader.poll_event()? {
        match ev {
            Event::Tracks { tracks, .. } => {
                let t = tracks.first().context("no track")?;
                track = Some(VideoTrack {
                    codec_id: t.codec_id.clone(),
                    codec_private: t.codec_private.clone().unwrap_or_default().to_vec(),
                    width: t.width.unwrap_or(0) as u32,
                    height: t.height.unwrap_or(0) as u32,
                });
            }
            Event::ClusterTimecode(tc) => base = tc,
            Event::Block(b) => frames.push((
                (base as i64 + b.timecode as i64) as u64,
                b.keyframe,
                b.payload,
            )),
            _ => {}
        }
    }
    Ok((track.context("no Tracks")?, frames))
}

/// The clip repeated `minutes` times with advancing timestamps, as one
/// Matroska upload with keyframe-aligned 2 s fragments. Returns the bytes
/// and the number of fragments.
fn hour_upload(
    track: &VideoTrack,
    frames: &[ClipFrame],
    minutes: u64,
) -> anyhow::Result<(Vec<u8>, usize)> {
    let clip_ms = 60_000;
    let mut out = Muxer::header(track);
    let mut mux = Muxer::new(2000);
    let mut fragments = 0;
    for rep in 0..minutes {
        for (ms, key, data) in frames {
            let frame = Frame {
                pts_ns: (rep * clip_ms + ms) * 1_000_000,
                keyframe: *key,
                data: data.clone(),
            };
            for piece in mux.push(&frame).map_err(|e| anyhow::anyhow!("{e}"))? {
                match piece {
                    Piece::Cluster { bytes, .. } => {
                        fragments += 1;
                        out.extend(bytes);
                    }
                    Piece::Block { bytes } => out.extend(bytes),
                }
            }
        }
    }
    Ok((out, fragments))
}

/// A PutMedia upload of `chunks` (sent as fast as the server takes them,
/// or one a second when `paced`), returning (fragment number, when its
/// PERSISTED ack arrived) and telling `first` when the first one did.
#[allow(clippy::too_many_arguments)]
async fn put_media(
    client: &HttpClient,
    url: &str,
    stream: &str,
    chunks: Vec<Bytes>,
    producer_start_ms: i64,
    paced: bool,
    expect: usize,
    mut first: Option<oneshot::Sender<()>>,
) -> anyhow::Result<Vec<(u64, Instant)>> {
    let (tx, rx) = mpsc::channel::<Result<BodyFrame<Bytes>, std::io::Error>>(8);
    let body: BoxBody = StreamBody::new(tokio_stream(rx)).boxed();
    let uri: http::Uri = format!("{url}/putMedia").parse()?;
    let mut req = http::Request::post(uri.clone())
        .header("host", uri.authority().context("authority")?.as_str())
        .header("x-amzn-stream-name", stream)
        .header("x-amzn-fragment-timecode-type", "RELATIVE")
        .header(
            "x-amzn-producer-start-timestamp",
            format!("{:.3}", producer_start_ms as f64 / 1000.0),
        )
        .body(body)?;
    kinema_client::sign_request(&mut req, KEY, SECRET, "us-east-1", "kinesisvideo", None)?;
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let sender = tokio::spawn(async move {
        let start = Instant::now();
        for (i, c) in chunks.into_iter().enumerate() {
            if paced && i > 1 {
                tokio::time::sleep_until((start + Duration::from_secs(i as u64 - 1)).into()).await;
            }
            if tx.send(Ok(BodyFrame::data(c))).await.is_err() {
                return;
            }
        }
        // Keep the upload open until every ack is in.
        let _ = tokio::time::timeout(Duration::from_secs(120), done_rx).await;
    });
    let resp = client.request(req).await?;
    let mut body = resp.into_body();
    let mut persisted = Vec::new();
    let mut buf = Vec::new();
    while persisted.len() < expect {
        let Some(frame) = body.frame().await else {
            break;
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        for v in ack_lines(&mut buf, &data) {
            match v["EventType"].as_str() {
                Some("PERSISTED") => {
                    let n = v["FragmentNumber"].as_str().unwrap_or("0").parse()?;
                    persisted.push((n, Instant::now()));
                    if let Some(f) = first.take() {
                        let _ = f.send(());
                    }
                }
                Some("ERROR") => bail!("{stream}: error ack {v}"),
                _ => {}
            }
        }
    }
    let _ = done_tx.send(());
    let _ = sender.await;
    Ok(persisted)
}

async fn get(client: &HttpClient, url: &str) -> anyhow::Result<Bytes> {
    let req = http::Request::get(url).body(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    )?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("GET {url}: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(body)
}

/// The media playlist URL of a session's master playlist URL.
async fn media_playlist(client: &HttpClient, master: &str) -> anyhow::Result<String> {
    let text = get(client, master).await?;
    let line = String::from_utf8_lossy(&text)
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .context("no media playlist in the master playlist")?
        .to_string();
    Ok(format!(
        "{}/{line}",
        master.rsplit_once('/').context("url")?.0
    ))
}

/// Fetches the init segment and every media segment of a finished session:
/// (seconds, segments, bytes).
async fn fetch_all(client: &HttpClient, master: &str) -> anyhow::Result<(f64, usize, u64)> {
    let t0 = Instant::now();
    let media = media_playlist(client, master).await?;
    let base = media.rsplit_once('/').context("url")?.0.to_string();
    let text = String::from_utf8_lossy(&get(client, &media).await?).into_owned();
    let mut uris: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
        .map(|l| l.trim_end_matches('"'))
        .collect();
    let inits = uris.len();
    uris.extend(
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty()),
    );
    let segments = uris.len() - inits;
    let mut bytes = 0;
    for u in uris {
        bytes += get(client, &format!("{base}/{u}")).await?.len() as u64;
    }
    Ok((t0.elapsed().as_secs_f64(), segments, bytes))
}

fn ffmpeg_hls(input: &Path, out: &Path, kind: &str) -> anyhow::Result<(f64, usize)> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out)?;
    let ext = if kind == "fmp4" { "m4s" } else { "ts" };
    let t0 = Instant::now();
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(input)
        .args(["-c", "copy", "-f", "hls", "-hls_time", "2"])
        .args(["-hls_playlist_type", "vod", "-hls_segment_type", kind])
        .arg("-hls_segment_filename")
        .arg(out.join(format!("s%05d.{ext}")))
        .arg(out.join("index.m3u8"))
        .status()?;
    let secs = t0.elapsed().as_secs_f64();
    if !status.success() {
        bail!("ffmpeg failed");
    }
    let segments = std::fs::read_dir(out)?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == ext))
        })
        .count();
    Ok((secs, segments))
}

/// In-process remuxing of every stored fragment of `stream`:
/// (seconds, fragments, bytes).
async fn remux_in_process(
    data_dir: &Path,
    stream: &str,
    ts: bool,
) -> anyhow::Result<(f64, usize, u64)> {
    let store = kinema_store::Store::open_local(data_dir)?;
    let engine = kinema_engine::Engine::open(store, kinema_engine::EngineConfig::default()).await?;
    let t0 = Instant::now();
    let metas = engine.playback_fragments(
        stream,
        kinema_engine::TimeKind::Producer,
        kinema_engine::PlaybackSpan::Range {
            from_ms: i64::MIN / 2,
            to_ms: i64::MAX,
        },
    )?;
    let origin = metas.first().map_or(0, |m| m.producer_ms);
    let mut bytes = 0u64;
    for (i, m) in metas.iter().enumerate() {
        let (_, object) = engine.fragment(stream, m.number).await?;
        let frag = kinema_remux::parse_fragment(&object)?;
        let times = kinema_remux::timing(&frag, m.producer_ms - origin, m.duration_ms);
        bytes += if ts {
            kinema_remux::ts::segment(&frag, &times).len()
        } else {
            kinema_remux::mp4::media_segment(i as u32 + 1, &frag, &times).len()
        } as u64;
    }
    Ok((t0.elapsed().as_secs_f64(), metas.len(), bytes))
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let minutes = arg("--minutes", 60);
    let live_seconds = arg("--live-seconds", 20);
    let work = std::env::temp_dir().join(format!("kinema-bench-hls-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let clip = work.join("clip.mkv");
    make_clip(&clip, 60, 1000, 60)?;
    let (track, frames) = read_clip(&clip)?;
    let (upload, fragments) = hour_upload(&track, &frames, minutes)?;
    let hour = work.join("hour.mkv");
    std::fs::write(&hour, &upload)?;
    println!(
        "input: {minutes} min of 640x360 30 fps H.264, {} MB, {fragments} fragments of 2 s",
        upload.len() >> 20
    );

    let data_dir = work.join("data");
    let server = start_server(&data_dir)?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    call(
        &client,
        &server.url,
        "/createStream",
        serde_json::json!({"StreamName": "hour", "DataRetentionInHours": 24}),
    )
    .await?;
    let start_ms = kinema_engine::now_ms() - (minutes as i64) * 60_000 - 60_000;
    let chunks: Vec<Bytes> = upload.chunks(1 << 20).map(Bytes::copy_from_slice).collect();
    let t0 = Instant::now();
    let persisted = put_media(
        &client,
        &server.url,
        "hour",
        chunks,
        start_ms,
        false,
        fragments,
        None,
    )
    .await?;
    println!(
        "stored {} fragments through PutMedia in {:.1} s",
        persisted.len(),
        t0.elapsed().as_secs_f64()
    );

    println!("\npackaging {minutes} min into HLS segments (lower is better):");
    let mut results = Vec::new();
    for (container, kind) in [("FRAGMENTED_MP4", "fmp4"), ("MPEG_TS", "mpegts")] {
        let session = call(
            &client,
            &server.url,
            "/getHLSStreamingSessionURL",
            serde_json::json!({
                "StreamName": "hour",
                "PlaybackMode": "ON_DEMAND",
                "ContainerFormat": container,
                "MaxMediaPlaylistFragmentResults": 5000,
                "HLSFragmentSelector": {
                    "FragmentSelectorType": "PRODUCER_TIMESTAMP",
                    "TimestampRange": {
                        "StartTimestamp": start_ms as f64 / 1000.0,
                        "EndTimestamp": (start_ms + minutes as i64 * 60_000) as f64 / 1000.0,
                    }
                }
            }),
        )
        .await?;
        let master = session["HLSStreamingSessionURL"]
            .as_str()
            .context("no session URL")?
            .to_string();
        let (http_s, segments, bytes) = fetch_all(&client, &master).await?;
        let (ff_s, ff_segments) = ffmpeg_hls(&hour, &work.join(format!("ffmpeg-{kind}")), kind)?;
        results.push((container, http_s, segments, bytes, ff_s, ff_segments));
    }
    drop(server);
    for (container, http_s, segments, bytes, ff_s, ff_segments) in results {
        let ts = container == "MPEG_TS";
        let (mem_s, mem_n, mem_bytes) = remux_in_process(&data_dir, "hour", ts).await?;
        println!(
            "  {container:<15} kinema over HTTP {http_s:6.2} s ({segments} segments, {} MB) | \
             kinema in-process {mem_s:6.2} s ({mem_n}, {} MB) | ffmpeg -c copy -f hls {ff_s:6.2} s ({ff_segments} segments)",
            bytes >> 20,
            mem_bytes >> 20
        );
        println!(
            "  {container:<15} ratio ffmpeg/kinema: {:.1}x over HTTP, {:.1}x in-process",
            ff_s / http_s,
            ff_s / mem_s
        );
    }

    // Live latency: PERSISTED ack to the fragment's first listing.
    let server = start_server(&work.join("live-data"))?;
    call(
        &client,
        &server.url,
        "/createStream",
        serde_json::json!({"StreamName": "live", "DataRetentionInHours": 1}),
    )
    .await?;
    let live_clip = work.join("live.mkv");
    make_clip(&live_clip, 30, 2000, live_seconds as u32 + 1)?;
    let (header, clusters) = split_clusters(&std::fs::read(&live_clip)?);
    let mut chunks = vec![header];
    chunks.extend(clusters.into_iter().take(live_seconds as usize + 1));
    let (first_tx, first_rx) = oneshot::channel();
    let uploader = {
        let client = client.clone();
        let url = server.url.clone();
        tokio::spawn(async move {
            put_media(
                &client,
                &url,
                "live",
                chunks,
                kinema_engine::now_ms(),
                true,
                live_seconds as usize,
                Some(first_tx),
            )
            .await
        })
    };
    first_rx.await.context("no first fragment")?;
    let session = call(
        &client,
        &server.url,
        "/getHLSStreamingSessionURL",
        serde_json::json!({"StreamName": "live", "PlaybackMode": "LIVE"}),
    )
    .await?;
    let media = media_playlist(
        &client,
        session["HLSStreamingSessionURL"].as_str().context("url")?,
    )
    .await?;
    let seen: Arc<Mutex<BTreeMap<u64, Instant>>> = Arc::default();
    let poller = {
        let seen = seen.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(live_seconds + 30);
            while Instant::now() < deadline {
                if let Ok(text) = get(&client, &media).await {
                    let now = Instant::now();
                    let mut seen = seen.lock().await;
                    for n in String::from_utf8_lossy(&text)
                        .split("FragmentNumber=")
                        .skip(1)
                        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
                    {
                        seen.entry(n).or_insert(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let persisted = uploader.await??;
    tokio::time::sleep(Duration::from_millis(200)).await;
    poller.abort();
    let seen = seen.lock().await;
    let mut lat: Vec<f64> = persisted
        .iter()
        .skip(1) // persisted before the session existed
        .filter_map(|(n, t)| {
            let s = seen.get(n)?;
            Some(s.saturating_duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    println!(
        "\nlive: PERSISTED ack to listed in the LIVE media playlist (polled every 2 ms), {} fragments of 1 s: \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "live: a player therefore sees a fragment about one fragment duration (1 s) plus this after its first frame"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
