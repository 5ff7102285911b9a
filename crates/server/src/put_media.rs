//! `kinema put-media`: uploads a Matroska file or standard input with
//! PutMedia, signed with SigV4 (`UNSIGNED-PAYLOAD`), showing progress and
//! the acknowledgements as they arrive.

use std::path::PathBuf;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncRead;
use tokio_util::io::ReaderStream;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Stream to upload to.
    #[arg(long)]
    pub stream: String,
    /// Kinema's base URL.
    #[arg(long, default_value = "http://127.0.0.1:4566")]
    pub endpoint: String,
    /// Region to sign for.
    #[arg(long, default_value = kinema_core::aws::DEFAULT_REGION)]
    pub region: String,
    /// Access key id (default: KINEMA_ACCESS_KEY_ID).
    #[arg(long)]
    pub access_key: Option<String>,
    /// Secret access key (default: KINEMA_SECRET_ACCESS_KEY).
    #[arg(long)]
    pub secret_key: Option<String>,
    /// Cluster timecodes are absolute Unix times (default: relative to the start timestamp).
    #[arg(long)]
    pub absolute: bool,
    /// Producer start timestamp in Unix seconds for relative timecodes (default: now).
    #[arg(long)]
    pub start_timestamp: Option<f64>,
    /// Matroska file to upload, or `-` for standard input.
    pub input: PathBuf,
}

pub use kinema_client::sign_request;

pub async fn run(args: Args, env_key: Option<(String, String)>) -> anyhow::Result<()> {
    let (key, secret) =
        crate::credentials(args.access_key.clone(), args.secret_key.clone(), env_key)?;
    let (reader, total): (Box<dyn AsyncRead + Send + Unpin>, Option<u64>) =
        if args.input.as_os_str() == "-" {
            (Box::new(tokio::io::stdin()), None)
        } else {
            let f = tokio::fs::File::open(&args.input)
                .await
                .with_context(|| format!("cannot open {}", args.input.display()))?;
            let len = f.metadata().await.ok().map(|m| m.len());
            (Box::new(f), len)
        };
    let bar = match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                .expect("the progress template is valid"),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec} {msg}").expect("valid"),
        ),
    };
    let progress = bar.clone();
    let body = StreamBody::new(ReaderStream::new(reader).map(move |r| {
        let data = r?;
        progress.inc(data.len() as u64);
        Ok::<_, std::io::Error>(Frame::data(data))
    }));

    let start_ms = args
        .start_timestamp
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or_else(|| kinema_engine::now_ms() as u64);
    let session_token = std::env::var("KINEMA_SESSION_TOKEN")
        .or_else(|_| std::env::var("AWS_SESSION_TOKEN"))
        .ok();
    let target = kinema_client::PutMediaTarget {
        endpoint: &args.endpoint,
        stream: &args.stream,
        region: &args.region,
        key: &key,
        secret: &secret,
        session_token: session_token.as_deref(),
    };
    let timecodes = if args.absolute {
        kinema_client::Timecodes::Absolute
    } else {
        kinema_client::Timecodes::Relative
    };
    let request = kinema_client::put_media_request(&target, timecodes, start_ms, body)
        .context("invalid --endpoint")?;

    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(request)
        .await
        .context("PutMedia request failed")?;
    if !response.status().is_success() {
        let (parts, body) = response.into_parts();
        bail!(
            "PutMedia refused: {}",
            kinema_client::refusal_text(parts.status, body).await
        );
    }
    let mut body = response.into_body();
    let mut pending = Vec::new();
    let (mut persisted, mut received, mut errors) = (0u64, 0u64, 0u64);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Bytes = Bytes::copy_from_slice(&pending[..pos]);
            pending.drain(..=pos);
            let Ok(ack) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            match ack["EventType"].as_str() {
                Some("PERSISTED") => persisted += 1,
                Some("RECEIVED") => received += 1,
                Some("ERROR") => {
                    errors += 1;
                    bar.println(format!("error ack: {}", String::from_utf8_lossy(&line)));
                }
                _ => {}
            }
            bar.set_message(format!("{received} received, {persisted} persisted"));
        }
    }
    bar.finish();
    eprintln!("{received} fragments received, {persisted} persisted, {errors} errors");
    if errors > 0 {
        bail!("the server reported {errors} error(s)");
    }
    Ok(())
}
