//! The uploader behind `kinemasink`: one thread with its own small tokio
//! runtime that muxes frames into Matroska, streams them to the server with
//! PutMedia (SigV4, `UNSIGNED-PAYLOAD`), reads the ACK lines, and on a lost
//! connection reconnects with back-off and resends every fragment that has
//! no PERSISTED ack yet. The server recognises fragments it already stored
//! (same producer timestamp), so a resend never stores anything twice.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame as BodyFrame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kinema_mkv::mux::{Frame, Muxer, VideoTrack};
use tokio::sync::mpsc;

use crate::buffer::{FragmentBuffer, Next};

/// Everything the element's properties configure.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoint: String,
    pub stream: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Of temporary credentials.
    pub session_token: Option<String>,
    pub create_stream: bool,
    pub retention_hours: u32,
    pub fragment_ms: u64,
    pub storage_bytes: usize,
    pub absolute: bool,
    /// Give up after failing to deliver for this long.
    pub retry_timeout: Duration,
}

/// What the streaming thread hands over.
pub enum Input {
    Track(VideoTrack),
    Frame(Frame),
    Eos,
}

/// What the uploader tells the element.
pub enum Report {
    /// Something worth a bus warning (frames dropped, reconnecting).
    Warning(String),
    /// Every fragment is persisted after EOS.
    Done,
    /// Delivery failed for longer than the retry timeout.
    Fatal(String),
}

pub type Reporter = Box<dyn Fn(Report) + Send>;

pub struct Uploader {
    tx: mpsc::UnboundedSender<Input>,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Uploader {
    pub fn start(settings: Settings, report: Reporter) -> std::io::Result<Uploader> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("kinemasink-upload".into())
            .spawn(move || {
                rt.block_on(async move {
                    tokio::select! {
                        _ = run(settings, rx, &report) => {}
                        _ = stop_rx => {}
                    }
                })
            })?;
        Ok(Uploader {
            tx,
            thread: Some(thread),
            stop: Some(stop),
        })
    }

    /// Hands over input; never blocks the streaming thread.
    pub fn send(&self, input: Input) {
        let _ = self.tx.send(input);
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Events of one PutMedia connection.
enum ConnEvent {
    Persisted(u64),
    Error(String),
    Closed(Option<String>),
}

struct Conn {
    header: Arc<Vec<u8>>,
    body: Option<mpsc::UnboundedSender<Bytes>>,
    events: mpsc::UnboundedReceiver<ConnEvent>,
}

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

async fn run(settings: Settings, mut rx: mpsc::UnboundedReceiver<Input>, report: &Reporter) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut buffer = FragmentBuffer::new(settings.storage_bytes);
    let mut mux = Muxer::new(settings.fragment_ms);
    // RELATIVE uploads: cluster timecodes count from this producer start
    // timestamp, the same on every connection so resent fragments keep
    // their producer timestamps.
    let mut start_ms: Option<u64> = None;
    let mut conn: Option<Conn> = None;
    let mut eos = false;
    let mut stream_ready = !settings.create_stream;
    let mut retry_at = Instant::now();
    let mut delay = FIRST_RETRY;
    // Since when nothing could be delivered (reset by every PERSISTED ack).
    let mut failing_since: Option<(Instant, String)> = None;
    let mut dropped_total = 0u64;
    loop {
        if let Some((since, why)) = &failing_since
            && since.elapsed() >= settings.retry_timeout
        {
            report(Report::Fatal(format!(
                "could not deliver fragments to {} for {} s: {why}",
                settings.endpoint,
                settings.retry_timeout.as_secs()
            )));
            return;
        }
        if eos && buffer.is_empty() && conn.is_none() {
            report(Report::Done);
            return;
        }
        // Connect when there is something to send and the back-off allows.
        if conn.is_none() && !buffer.is_empty() && Instant::now() >= retry_at {
            if !stream_ready {
                match create_stream(&settings).await {
                    Ok(()) => stream_ready = true,
                    Err(e) => {
                        failing_since.get_or_insert((Instant::now(), e.clone()));
                        retry_at = Instant::now() + delay;
                        delay = (delay * 2).min(MAX_RETRY);
                        continue;
                    }
                }
            }
            match buffer.start_connection() {
                Some(header) => {
                    match connect(&client, &settings, start_ms.unwrap_or(0), &header).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            report(Report::Warning(format!(
                                "PutMedia connection failed, retrying: {e}"
                            )));
                            failing_since.get_or_insert((Instant::now(), e));
                            retry_at = Instant::now() + delay;
                            delay = (delay * 2).min(MAX_RETRY);
                        }
                    }
                }
                None => continue,
            }
        }
        // Send what is pending on the open connection.
        if let Some(c) = conn.as_mut()
            && let Some(body) = &c.body
        {
            match buffer.next(&c.header) {
                Next::Send(bytes) => {
                    let _ = body.send(Bytes::from(bytes));
                }
                Next::Reconnect => c.body = None,
                Next::Idle if eos => c.body = None,
                Next::Idle => {}
            }
        }
        // Wake for a due reconnection, else now and then to check the
        // retry timeout.
        let wait = if conn.is_none() && !buffer.is_empty() {
            retry_at
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(5))
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            input = rx.recv(), if !eos => match input {
                Some(Input::Track(track)) => {
                    buffer.set_header(Muxer::header(&track));
                    mux.restart();
                }
                Some(Input::Frame(mut frame)) => {
                    if !settings.absolute {
                        let start = *start_ms.get_or_insert(frame.pts_ns / 1_000_000);
                        frame.pts_ns = frame.pts_ns.saturating_sub(start * 1_000_000);
                    }
                    if let Ok(pieces) = mux.push(&frame) {
                        let dropped = buffer.push(pieces);
                        if dropped > 0 {
                            dropped_total += dropped as u64;
                            report(Report::Warning(format!(
                                "storage-size exhausted: dropped the {dropped} oldest unacknowledged frames ({dropped_total} so far)"
                            )));
                        }
                    }
                }
                Some(Input::Eos) | None => eos = true,
            },
            ev = next_event(&mut conn) => match ev {
                ConnEvent::Persisted(tc) => {
                    buffer.persisted(tc);
                    failing_since = None;
                    delay = FIRST_RETRY;
                }
                ConnEvent::Error(e) => {
                    report(Report::Warning(format!("the server reported an error: {e}")));
                    failing_since.get_or_insert((Instant::now(), e));
                }
                ConnEvent::Closed(err) => {
                    conn = None;
                    if !buffer.is_empty() {
                        let why = err.unwrap_or_else(|| "the server ended the upload".into());
                        if !eos || failing_since.is_some() {
                            report(Report::Warning(format!("PutMedia connection lost, resending: {why}")));
                        }
                        failing_since.get_or_insert((Instant::now(), why));
                        retry_at = Instant::now() + delay;
                        delay = (delay * 2).min(MAX_RETRY);
                    }
                }
            },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn next_event(conn: &mut Option<Conn>) -> ConnEvent {
    match conn {
        Some(c) => c
            .events
            .recv()
            .await
            .unwrap_or(ConnEvent::Closed(Some("connection task ended".into()))),
        None => std::future::pending().await,
    }
}

/// Creates the stream unless it exists: DescribeStream first, as the
/// producer SDKs do, so a key allowed to stream into an existing stream
/// but not to create one still works.
async fn create_stream(s: &Settings) -> Result<(), String> {
    let client = kinema_client::Client::new(&s.endpoint, &s.access_key, &s.secret_key)
        .with_session_token(s.session_token.as_deref());
    match client
        .post(
            "/describeStream",
            serde_json::json!({ "StreamName": s.stream }),
        )
        .await
    {
        Ok(_) => return Ok(()),
        Err(kinema_client::ClientError::Service { kind, .. })
            if kind == "ResourceNotFoundException" => {}
        Err(e) => return Err(format!("DescribeStream failed: {e}")),
    }
    let body = serde_json::json!({
        "StreamName": s.stream,
        "DataRetentionInHours": s.retention_hours,
        "MediaType": "video/h264",
    });
    match client.post("/createStream", body).await {
        Ok(_) => Ok(()),
        Err(kinema_client::ClientError::Service { kind, .. })
            if kind == "ResourceInUseException" =>
        {
            Ok(())
        }
        Err(e) => Err(format!("CreateStream failed: {e}")),
    }
}

type UploadBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;
type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, UploadBody>;

/// Opens a PutMedia upload and starts reading its ACKs; the header goes
/// first on the body.
async fn connect(
    client: &HttpClient,
    s: &Settings,
    start_ms: u64,
    header: &Arc<Vec<u8>>,
) -> Result<Conn, String> {
    let (body_tx, body_rx) = mpsc::unbounded_channel::<Bytes>();
    let _ = body_tx.send(Bytes::from(header.as_ref().clone()));
    let body = StreamBody::new(futures::stream::unfold(body_rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(BodyFrame::data(chunk)), rx))
    }))
    .boxed();
    let target = kinema_client::PutMediaTarget {
        endpoint: &s.endpoint,
        stream: &s.stream,
        region: &s.region,
        key: &s.access_key,
        secret: &s.secret_key,
        session_token: s.session_token.as_deref(),
    };
    let timecodes = if s.absolute {
        kinema_client::Timecodes::Absolute
    } else {
        kinema_client::Timecodes::Relative
    };
    let request = kinema_client::put_media_request(&target, timecodes, start_ms, body)
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        let (parts, body) = response.into_parts();
        return Err(format!(
            "PutMedia refused: {}",
            kinema_client::refusal_text(parts.status, body).await
        ));
    }
    let (ev_tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = response.into_body();
        let mut pending = Vec::new();
        let end = loop {
            let frame = match body.frame().await {
                None => break None,
                Some(Err(e)) => break Some(e.to_string()),
                Some(Ok(f)) => f,
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
                let tc = ack["FragmentTimecode"].as_u64();
                let ev = match (ack["EventType"].as_str(), tc) {
                    (Some("PERSISTED"), Some(tc)) => ConnEvent::Persisted(tc),
                    (Some("ERROR"), _) => ConnEvent::Error(format!(
                        "{} {}",
                        ack["ErrorId"],
                        ack["ErrorCode"].as_str().unwrap_or("")
                    )),
                    _ => continue,
                };
                let _ = ev_tx.send(ev);
            }
        };
        let _ = ev_tx.send(ConnEvent::Closed(end));
    });
    Ok(Conn {
        header: header.clone(),
        body: Some(body_tx),
        events,
    })
}
