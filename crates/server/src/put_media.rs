//! `kinema put-media`: uploads a video file or standard input with
//! PutMedia, signed with SigV4 (`UNSIGNED-PAYLOAD`), showing progress and
//! the acknowledgements as they arrive.
//!
//! Matroska goes up as it is. Anything else (MP4, MOV, a raw H.264 byte
//! stream) is demuxed by GStreamer without re-encoding and muxed into
//! fragments at keyframes, as a camera's upload is; its frames keep the
//! file's spacing from the moment the upload starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use kinema_media::{Camera, SourceEvent};
use kinema_mkv::mux::{Muxer, Piece};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::io::ReaderStream;

use crate::client_args::ClientArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Stream to upload to.
    #[arg(long)]
    pub stream: String,
    /// Cluster timecodes of a Matroska input are absolute Unix times
    /// (default: relative to the start timestamp).
    #[arg(long)]
    pub absolute: bool,
    /// Producer start timestamp in Unix seconds for relative timecodes (default: now).
    #[arg(long)]
    pub start_timestamp: Option<f64>,
    /// Shortest fragment, in milliseconds, when a non-Matroska input is
    /// cut into fragments (each ends at the next keyframe after this long).
    #[arg(long, default_value_t = 2000)]
    pub fragment_ms: u64,
    /// The video to upload: Matroska, MP4/MOV or raw H.264; `-` reads
    /// Matroska from standard input.
    pub input: PathBuf,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub use kinema_client::sign_request;

/// The first four bytes of every Matroska (EBML) document.
const EBML_MAGIC: [u8; 4] = [0x1a, 0x45, 0xdf, 0xa3];

type BodyStream = futures::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let settings = args.client.settings()?;
    // Refusals that need no media (an unknown stream, a key the server does
    // not take, a policy that denies) are asked first: once the upload is
    // under way, a refusal comes while the body is still being written and
    // is lost to the closed connection.
    // A key allowed PutMedia but not DescribeStream still uploads.
    let described = args
        .client
        .client()?
        .open(
            http::Method::POST,
            "/describeStream",
            "kinesisvideo",
            serde_json::json!({ "StreamName": args.stream }),
        )
        .await;
    match described {
        Ok(_) => {}
        Err(kinema_client::ClientError::Service { kind, .. })
            if kind == "AccessDeniedException" => {}
        Err(e) => bail!("PutMedia refused: {e}"),
    }
    let (body, timecodes, bar) = if args.input.as_os_str() == "-" {
        let mut stdin = tokio::io::stdin();
        let mut head = [0u8; 4];
        stdin
            .read_exact(&mut head)
            .await
            .context("standard input ended before any video")?;
        if head != EBML_MAGIC {
            bail!(
                "standard input is not Matroska; pass MP4 or raw H.264 as a file, \
                 or remux it first (for example with matroskamux streamable=true)"
            );
        }
        let reader = std::io::Cursor::new(head.to_vec()).chain(stdin);
        let (body, bar) = byte_body(Box::new(reader), None);
        (body, relative_or_absolute(args.absolute), bar)
    } else {
        let mut f = tokio::fs::File::open(&args.input)
            .await
            .with_context(|| format!("cannot open {}", args.input.display()))?;
        let len = f.metadata().await.ok().map(|m| m.len());
        let mut head = [0u8; 4];
        let n = f.read(&mut head).await?;
        if n == 4 && head == EBML_MAGIC {
            let reader = std::io::Cursor::new(head.to_vec()).chain(f);
            let (body, bar) = byte_body(Box::new(reader), len);
            (body, relative_or_absolute(args.absolute), bar)
        } else {
            drop(f);
            // Remuxed frames carry Unix times from the clock at the first.
            let (body, bar) = remuxed_body(&args.input, args.fragment_ms).await?;
            (body, kinema_client::Timecodes::Absolute, bar)
        }
    };

    let start_ms = args
        .start_timestamp
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or_else(|| kinema_engine::now_ms() as u64);
    let target = kinema_client::PutMediaTarget {
        endpoint: &settings.endpoint,
        stream: &args.stream,
        region: &settings.region,
        key: &settings.access_key,
        secret: &settings.secret_key,
        session_token: settings.session_token.as_deref(),
    };
    let request =
        kinema_client::put_media_request(&target, timecodes, start_ms, StreamBody::new(body))
            .context("invalid endpoint")?;

    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(request)
        .await
        .with_context(|| format!("PutMedia request to {} failed", settings.endpoint))?;

    if !response.status().is_success() {
        let (parts, body) = response.into_parts();
        bail!(
            "PutMedia refused: {}",
            kinema_client::refusal_text(parts.status, body).await
        );
    }
    let mut body = response.into_body();
    let mut pending = Vec::new();
    let (mut persisted, mut received) = (0u64, 0u64);
    let mut errors: Vec<String> = Vec::new();
    let mut broken = None;
    while let Some(frame) = body.frame().await {
        // The server ends the response (and may reset the connection) after
        // an ERROR ack: what arrived before still counts.
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                broken = Some(e);
                break;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            let Ok(ack) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            match ack["EventType"].as_str() {
                Some("PERSISTED") => persisted += 1,
                Some("RECEIVED") => received += 1,
                Some("ERROR") => {
                    let text = error_text(&ack);
                    // println of a hidden bar (no terminal) prints nothing.
                    bar.suspend(|| eprintln!("error: {text}"));
                    errors.push(text);
                }
                _ => {}
            }
            bar.set_message(format!("{received} received, {persisted} persisted"));
        }
    }
    bar.finish();
    eprintln!(
        "{received} fragments received, {persisted} persisted, {} errors",
        errors.len()
    );
    if let Some(first) = errors.first() {
        bail!("the server refused the upload: {first}");
    }
    if let Some(e) = broken {
        bail!("the connection to {} broke off: {e}", settings.endpoint);
    }
    Ok(())
}

fn relative_or_absolute(absolute: bool) -> kinema_client::Timecodes {
    if absolute {
        kinema_client::Timecodes::Absolute
    } else {
        kinema_client::Timecodes::Relative
    }
}

/// `4006 INVALID_MKV_DATA: why` from an ERROR ack.
fn error_text(ack: &serde_json::Value) -> String {
    let mut text = format!(
        "{} {}",
        ack["ErrorId"]
            .as_u64()
            .map(|n| n.to_string())
            .unwrap_or_default(),
        ack["ErrorCode"].as_str().unwrap_or("UNKNOWN")
    );
    if let Some(m) = ack["ErrorMessage"].as_str() {
        text.push_str(": ");
        text.push_str(m);
    }
    if let Some(tc) = ack["FragmentTimecode"].as_u64() {
        text.push_str(&format!(" (fragment at timecode {tc})"));
    }
    text.trim().to_string()
}

fn bar_for(total: Option<u64>) -> ProgressBar {
    match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                // A literal template: valid, as the tests' runs show.
                .expect("the progress template is valid"),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec} {msg}")
                // A literal template, as above.
                .expect("the spinner template is valid"),
        ),
    }
}

/// Matroska bytes as they are, counted on the bar.
fn byte_body(
    reader: Box<dyn AsyncRead + Send + Unpin>,
    total: Option<u64>,
) -> (BodyStream, ProgressBar) {
    let bar = bar_for(total);
    let progress = bar.clone();
    let body = ReaderStream::new(reader)
        .map(move |r| {
            let data = r?;
            progress.inc(data.len() as u64);
            Ok(Frame::data(data))
        })
        .boxed();
    (body, bar)
}

/// Frames GStreamer demuxes from `path`, muxed into fragments. Fails
/// before anything is sent when the file holds no H.264 video.
async fn remuxed_body(path: &Path, fragment_ms: u64) -> anyhow::Result<(BodyStream, ProgressBar)> {
    // Bounded: GStreamer's thread waits while the upload is behind.
    let (tx, mut rx) = mpsc::channel::<SourceEvent>(64);
    let sink: kinema_media::EventSink = Arc::new(move |ev| {
        let _ = tx.blocking_send(ev);
    });
    let camera =
        Camera::read_file(path, sink).with_context(|| format!("cannot read {}", path.display()))?;
    // The first event says whether there is video to send.
    let first = match rx.recv().await {
        Some(SourceEvent::Error(e)) => bail!("cannot read {}: {e}", path.display()),
        Some(SourceEvent::Eos) | None => bail!("{} holds no H.264 video", path.display()),
        Some(ev) => ev,
    };
    let bar = bar_for(None);
    let progress = bar.clone();
    let name = path.display().to_string();
    let body = async_stream::stream! {
        // Dropped with the stream: the pipeline stops.
        let _camera = camera;
        let mut muxer = Muxer::new(fragment_ms);
        let mut header_sent = false;
        let mut next = Some(first);
        loop {
            let ev = match next.take() {
                Some(ev) => ev,
                None => match rx.recv().await {
                    Some(ev) => ev,
                    None => break,
                },
            };
            let mut out = Vec::new();
            match ev {
                SourceEvent::Track(track) => {
                    // A new track header: a new Segment, fragments anew.
                    out.extend(Muxer::header(&track));
                    muxer.restart();
                    header_sent = true;
                }
                SourceEvent::Frame(frame) if header_sent => match muxer.push(&frame) {
                    Ok(pieces) => {
                        for p in pieces {
                            match p {
                                Piece::Cluster { bytes, .. } | Piece::Block { bytes } => {
                                    out.extend(bytes)
                                }
                            }
                        }
                    }
                    // Frames before the first keyframe cannot start a fragment.
                    Err(_) => continue,
                },
                SourceEvent::Frame(_) => continue,
                SourceEvent::Eos => break,
                SourceEvent::Error(e) => {
                    yield Err(std::io::Error::other(format!("cannot read {name}: {e}")));
                    break;
                }
            }
            progress.inc(out.len() as u64);
            yield Ok(Frame::data(Bytes::from(out)));
        }
    }
    .boxed();
    Ok((body, bar))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn error_acks_read_as_code_name_and_reason() {
        let ack = json!({"EventType": "ERROR", "ErrorId": 4006, "ErrorCode": "INVALID_MKV_DATA",
                         "ErrorMessage": "invalid variable-size integer at offset 0"});
        assert_eq!(
            error_text(&ack),
            "4006 INVALID_MKV_DATA: invalid variable-size integer at offset 0"
        );
        let ack = json!({"EventType": "ERROR", "ErrorId": 4001, "ErrorCode": "MAX_FRAGMENT_SIZE_REACHED",
                         "FragmentTimecode": 2000});
        assert_eq!(
            error_text(&ack),
            "4001 MAX_FRAGMENT_SIZE_REACHED (fragment at timecode 2000)"
        );
    }
}
