//! Camera sources the server pulls itself: RTSP cameras and local files
//! looped as cameras. Each source is one task that runs a camera pipeline
//! (the media adapter), muxes its frames into Matroska and feeds them to
//! the same ingest session and persistence path as a PutMedia upload, so a
//! pulled fragment is stored, indexed and acknowledged exactly like a pushed
//! one.
//!
//! A camera that fails or goes away is retried with exponential back-off;
//! the stream shows a gap, never a crash. The status of every source
//! (connecting, streaming, retrying with the last error) is kept for the
//! API and the metrics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kinema_media::{Camera, SourceError, SourceEvent, SourceSpec, Transport};
use kinema_mkv::mux::{Muxer, Piece};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::{Clock, Engine, EngineError, IngestEvent, PutMediaSession, TimecodeType};
use kinema_core::sync::lock;

/// The shortest fragment a source writes unless configured otherwise.
pub const DEFAULT_SOURCE_FRAGMENT_MS: u64 = 2_000;
/// Retention of a stream created for a source that names a missing one.
pub const DEFAULT_SOURCE_RETENTION_HOURS: u32 = 24;
/// A camera that sends no frame for this long is reconnected.
const NO_DATA_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);
const META_DOC: &str = "sources";

/// Which sources the API may create (the `[source_access]` config). A
/// source from the configuration file is the operator's and is not
/// checked; one created through the API (and restored at start) is.
#[derive(Debug, Clone, Default)]
pub struct SourceAccess {
    /// Folders whose files an API-created `file://` source may loop
    /// (compared canonicalised, so `..` and links cannot leave them).
    /// None: API-created file sources are refused.
    pub media_dirs: Vec<std::path::PathBuf>,
    /// Networks an API-created `rtsp://` source may reach although they are
    /// loopback (or otherwise off limits); link-local, the metadata
    /// addresses, multicast and unspecified addresses are refused unless
    /// listed here.
    pub allow_networks: Vec<kinema_core::net::Cidr>,
}

/// How a source reaches its camera.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceTransport {
    #[default]
    Tcp,
    Udp,
}

/// One camera source, as configured in the file or created through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// `rtsp://` (or `rtsps://`) camera URL, or `file:///path` to loop a file.
    pub url: String,
    /// The video stream the fragments go to (created if missing).
    pub stream: String,
    #[serde(default)]
    pub transport: SourceTransport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Shortest fragment in milliseconds (fragments end at keyframes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragment_ms: Option<u64>,
    /// Retention for the stream if this source creates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_hours: Option<u32>,
}

/// Where a source is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceState {
    Connecting,
    Streaming,
    Retrying,
    Stopped,
}

impl SourceState {
    pub const ALL: [SourceState; 4] = [
        SourceState::Connecting,
        SourceState::Streaming,
        SourceState::Retrying,
        SourceState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Connecting => "connecting",
            SourceState::Streaming => "streaming",
            SourceState::Retrying => "retrying",
            SourceState::Stopped => "stopped",
        }
    }
}

/// A source's configuration (password withheld) and live status.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub name: String,
    pub url: String,
    pub stream: String,
    pub transport: SourceTransport,
    /// `config` (from the configuration file) or `api`.
    pub origin: &'static str,
    pub state: SourceState,
    /// When the state last changed, Unix milliseconds.
    pub state_since_ms: i64,
    /// The error that ended the last attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Its kind: `unauthorized`, `unsupported_codec`, `timeout`, or
    /// `unavailable` for every way of not reaching the stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    pub frames: u64,
    pub fragments: u64,
    pub bytes: u64,
    pub reconnects: u64,
}

struct Running {
    config: SourceConfig,
    status: Arc<Mutex<SourceStatus>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The camera sources of one server. Cheap to clone.
#[derive(Clone)]
pub struct Sources {
    engine: Engine,
    access: Arc<SourceAccess>,
    running: Arc<tokio::sync::Mutex<BTreeMap<String, Running>>>,
}

impl Sources {
    /// Starts the sources saved by earlier API calls and those of the
    /// configuration file (a file source replaces a saved one of its name).
    pub async fn start(
        engine: Engine,
        configured: Vec<SourceConfig>,
        access: SourceAccess,
    ) -> Result<Sources, EngineError> {
        let saved: Vec<SourceConfig> = engine.store().load_meta(META_DOC)?.unwrap_or_default();
        let sources = Sources {
            engine,
            access: Arc::new(access),
            running: Arc::default(),
        };
        for cfg in saved {
            if configured.iter().any(|c| c.name == cfg.name) {
                continue;
            }
            // The access rules may have changed since it was created.
            if let Err(e) = sources.check_access(&cfg).await {
                tracing::warn!(source = %cfg.name, error = %e, "saved source not started");
                continue;
            }
            sources.launch(cfg, "api").await?;
        }
        for cfg in configured {
            sources.launch(cfg, "config").await?;
        }
        Ok(sources)
    }

    /// Adds a source at run time and saves it so it survives a restart.
    pub async fn create(&self, cfg: SourceConfig) -> Result<SourceStatus, EngineError> {
        validate(&cfg)?;
        self.check_access(&cfg).await?;
        let status = self.launch(cfg, "api").await?;
        self.save().await?;
        Ok(status)
    }

    pub async fn list(&self) -> Vec<SourceStatus> {
        self.running
            .lock()
            .await
            .values()
            .map(|r| lock(&r.status).clone())
            .collect()
    }

    /// The statuses without waiting (for metrics scrapes); empty if busy.
    pub fn snapshot(&self) -> Vec<SourceStatus> {
        match self.running.try_lock() {
            Ok(r) => r.values().map(|r| lock(&r.status).clone()).collect(),
            Err(_) => Vec::new(),
        }
    }

    pub async fn get(&self, name: &str) -> Result<SourceStatus, EngineError> {
        self.running
            .lock()
            .await
            .get(name)
            .map(|r| lock(&r.status).clone())
            .ok_or_else(|| not_found(name))
    }

    /// Stops a source (storing its open fragment) and forgets it; returns
    /// its final status. A source from the configuration file comes back at
    /// the next start.
    pub async fn delete(&self, name: &str) -> Result<SourceStatus, EngineError> {
        let r = self
            .running
            .lock()
            .await
            .remove(name)
            .ok_or_else(|| not_found(name))?;
        let _ = r.stop.send(true);
        let _ = r.task.await;
        self.save().await?;
        Ok(lock(&r.status).clone())
    }

    /// Stops every source (server shutdown), completing open fragments.
    pub async fn shutdown(&self) {
        let all: Vec<Running> = std::mem::take(&mut *self.running.lock().await)
            .into_values()
            .collect();
        for r in &all {
            let _ = r.stop.send(true);
        }
        for r in all {
            let _ = r.task.await;
        }
    }

    /// Whether the API may create this source: a file inside a media
    /// folder, a camera on an address it may reach. The refusals say what
    /// the rule is, not what exists on the server or the network.
    async fn check_access(&self, cfg: &SourceConfig) -> Result<(), EngineError> {
        use kinema_core::net::{Reach, reach};
        if let Some(path) = cfg.url.strip_prefix("file://") {
            let path = std::path::PathBuf::from(path);
            let dirs = self.access.media_dirs.clone();
            let inside = tokio::task::spawn_blocking(move || {
                let Ok(file) = std::fs::canonicalize(&path) else {
                    return false;
                };
                file.is_file()
                    && dirs
                        .iter()
                        .filter_map(|d| std::fs::canonicalize(d).ok())
                        .any(|d| file.starts_with(d))
            })
            .await
            .unwrap_or(false);
            return if inside {
                Ok(())
            } else {
                Err(EngineError::InvalidArgument(
                    "a file:// source created through the API must name a file inside one of \
                     the configured media folders ([source_access] media_dirs)"
                        .into(),
                ))
            };
        }
        let (host, port) = camera_host(&cfg.url).ok_or_else(|| {
            EngineError::InvalidArgument("the source url has no camera host".into())
        })?;
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map(Iterator::collect)
            .unwrap_or_default();
        if addrs.is_empty() {
            return Err(EngineError::InvalidArgument(
                "the camera's host name does not resolve".into(),
            ));
        }
        let allowed = |ip: std::net::IpAddr| {
            matches!(reach(ip), Reach::Public | Reach::Private)
                || self.access.allow_networks.iter().any(|n| n.contains(ip))
        };
        if addrs.iter().all(|a| allowed(a.ip())) {
            Ok(())
        } else {
            Err(EngineError::InvalidArgument(
                "the camera's address is not one sources may reach: loopback, link-local, \
                 metadata and multicast addresses need [source_access] allow_networks"
                    .into(),
            ))
        }
    }

    async fn save(&self) -> Result<(), EngineError> {
        let saved: Vec<SourceConfig> = self
            .running
            .lock()
            .await
            .values()
            .filter(|r| lock(&r.status).origin == "api")
            .map(|r| r.config.clone())
            .collect();
        self.engine.store().save_meta(META_DOC, &saved).await?;
        Ok(())
    }

    async fn launch(
        &self,
        cfg: SourceConfig,
        origin: &'static str,
    ) -> Result<SourceStatus, EngineError> {
        validate(&cfg)?;
        let mut running = self.running.lock().await;
        if running.contains_key(&cfg.name) {
            return Err(EngineError::ResourceInUse(format!(
                "the source {} already exists",
                cfg.name
            )));
        }
        if self
            .engine
            .describe_stream(Some(&cfg.stream), None)
            .is_err()
        {
            self.engine
                .create_stream(
                    &cfg.stream,
                    Some(format!("kinema-source:{}", cfg.name)),
                    Some("video/h264".into()),
                    None,
                    Some(
                        cfg.retention_hours
                            .unwrap_or(DEFAULT_SOURCE_RETENTION_HOURS),
                    ),
                    BTreeMap::new(),
                )
                .await?;
        }
        let status = Arc::new(Mutex::new(SourceStatus {
            name: cfg.name.clone(),
            url: redact(&cfg.url),
            stream: cfg.stream.clone(),
            transport: cfg.transport,
            origin,
            state: SourceState::Connecting,
            state_since_ms: self.engine.clock().now_ms(),
            last_error: None,
            last_error_kind: None,
            retry_in_ms: None,
            frames: 0,
            fragments: 0,
            bytes: 0,
            reconnects: 0,
        }));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            self.engine.clone(),
            cfg.clone(),
            status.clone(),
            stop_rx,
        ));
        let snapshot = lock(&status).clone();
        running.insert(
            cfg.name.clone(),
            Running {
                config: cfg,
                status,
                stop,
                task,
            },
        );
        Ok(snapshot)
    }
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

fn not_found(name: &str) -> EngineError {
    EngineError::ResourceNotFound(format!("the source {name} does not exist"))
}

fn validate(cfg: &SourceConfig) -> Result<(), EngineError> {
    if !kinema_core::names::valid(&cfg.name, kinema_core::names::MAX_DATA_NAME) {
        return Err(EngineError::InvalidArgument(format!(
            "source name {:?} must be 1-128 characters of [a-zA-Z0-9_.-]",
            cfg.name
        )));
    }
    let url_ok = ["rtsp://", "rtsps://", "file:///"]
        .iter()
        .any(|p| cfg.url.starts_with(p));
    if !url_ok {
        return Err(EngineError::InvalidArgument(format!(
            "source url {:?} must start with rtsp://, rtsps:// or file:///",
            redact(&cfg.url)
        )));
    }
    if let Some(ms) = cfg.fragment_ms
        && !(100..=10_000).contains(&ms)
    {
        return Err(EngineError::InvalidArgument(
            "fragment_ms must be between 100 and 10000".into(),
        ));
    }
    Ok(())
}

/// The URL without a password embedded in it (`rtsp://user:pass@host`).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    if scheme == "file" {
        return url.to_string();
    }
    // A password may hold a '/' (unescaped, as people type it): the
    // credentials end at the last '@'.
    match rest.rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

/// The host and port of an `rtsp://` or `rtsps://` URL.
fn camera_host(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = if scheme == "rtsps" { 322 } else { 554 };
    // As GStreamer reads it: the authority ends at the first '/' or '?',
    // and credentials end at its last '@' (an '@' in the path is path).
    let authority = rest.split(['/', '?']).next()?;
    // GStreamer ends the credentials at the first '@'; a second one makes
    // the host ambiguous (the port is then read up to it), so refuse it.
    let authority = authority.split_once('@').map_or(authority, |(_, h)| h);
    if authority.contains('@') {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// What a failure is called in a source's status. Whether a host, a port
/// or a path exists is not told apart (sources are not a scanner); the
/// detail goes to the server's log.
fn public_failure(kind: &'static str, detail: &str) -> (&'static str, String) {
    match kind {
        "unauthorized" => (kind, "the camera refused the credentials".into()),
        "unsupported_codec" => (kind, detail.to_string()),
        "timeout" | "storage" | "stream" => (kind, detail.to_string()),
        _ => (
            "unavailable",
            "the camera could not be reached, or did not serve the stream".into(),
        ),
    }
}

fn error_kind(e: &SourceError) -> &'static str {
    match e {
        SourceError::Init(_) => "init",
        SourceError::UnsupportedUrl(_) => "unsupported_url",
        SourceError::UnsupportedCodec(_) => "unsupported_codec",
        SourceError::Unauthorized(_) => "unauthorized",
        SourceError::NotFound(_) => "not_found",
        SourceError::Connect(_) => "connect",
        SourceError::Pipeline(_) => "pipeline",
    }
}

/// Why one connection to a camera ended.
enum Ended {
    Stopped,
    EndOfFile,
    Failed(&'static str, String),
}

async fn run(
    engine: Engine,
    cfg: SourceConfig,
    status: Arc<Mutex<SourceStatus>>,
    mut stop: watch::Receiver<bool>,
) {
    let spec = SourceSpec {
        url: cfg.url.clone(),
        username: cfg.username.clone(),
        password: cfg.password.clone(),
        transport: match cfg.transport {
            SourceTransport::Tcp => Transport::Tcp,
            SourceTransport::Udp => Transport::Udp,
        },
    };
    let mut delay = FIRST_RETRY;
    loop {
        set_state(&status, engine.clock(), SourceState::Connecting, None);
        let frames_before = lock(&status).frames;
        let ended = pull(&engine, &cfg, &spec, &status, &mut stop).await;
        if lock(&status).frames > frames_before {
            delay = FIRST_RETRY;
        }
        let (kind, error) = match ended {
            Ended::Stopped => break,
            // A file source loops: play it again at once.
            Ended::EndOfFile if cfg.url.starts_with("file://") => continue,
            Ended::EndOfFile => ("ended", "the camera ended the stream".to_string()),
            Ended::Failed(kind, error) => {
                tracing::warn!(source = %cfg.name, kind, %error, "camera source failed");
                public_failure(kind, &error)
            }
        };
        tracing::info!(source = %cfg.name, retry_in_ms = delay.as_millis() as u64, "camera source retrying");
        {
            let mut s = lock(&status);
            s.last_error = Some(error);
            s.last_error_kind = Some(kind);
            s.retry_in_ms = Some(delay.as_millis() as u64);
            s.reconnects += 1;
        }
        set_state(&status, engine.clock(), SourceState::Retrying, Some(delay));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => break,
        }
        delay = (delay * 2).min(MAX_RETRY);
    }
    set_state(&status, engine.clock(), SourceState::Stopped, None);
}

fn set_state(
    status: &Mutex<SourceStatus>,
    clock: Clock,
    state: SourceState,
    retry: Option<Duration>,
) {
    let mut s = lock(status);
    if s.state != state {
        s.state = state;
        s.state_since_ms = clock.now_ms();
    }
    s.retry_in_ms = retry.map(|d| d.as_millis() as u64);
}

/// One connection: runs the camera until it ends, fails or is stopped.
async fn pull(
    engine: &Engine,
    cfg: &SourceConfig,
    spec: &SourceSpec,
    status: &Mutex<SourceStatus>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let (tx, mut rx) = mpsc::channel::<SourceEvent>(256);
    // GStreamer calls back on its own threads; starting and stopping a
    // pipeline may block, so neither happens on the async workers.
    let spec = spec.clone();
    let camera = match tokio::task::spawn_blocking(move || {
        Camera::start(
            &spec,
            Arc::new(move |ev| {
                // Fails only once the receiver is gone (the connection is over).
                let _ = tx.blocking_send(ev);
            }),
        )
    })
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Ended::Failed(error_kind(&e), e.to_string()),
        Err(e) => return Ended::Failed("internal", e.to_string()),
    };
    let mut ingest = SourceIngest {
        cfg,
        status,
        clock: engine.clock(),
        mux: Muxer::new(cfg.fragment_ms.unwrap_or(DEFAULT_SOURCE_FRAGMENT_MS)),
        session: None,
    };
    let ended = loop {
        let ev = tokio::select! {
            _ = stop.changed() => break Ended::Stopped,
            ev = tokio::time::timeout(NO_DATA_TIMEOUT, rx.recv()) => ev,
        };
        let ev = match ev {
            Err(_) => {
                break Ended::Failed(
                    "timeout",
                    format!("no video for {} s", NO_DATA_TIMEOUT.as_secs()),
                );
            }
            Ok(None) => break Ended::Failed("internal", "the camera pipeline went away".into()),
            Ok(Some(ev)) => ev,
        };
        match ev {
            SourceEvent::Track(track) => {
                // A new or changed track opens a new upload.
                if let Err(e) = ingest.finish().await {
                    break e;
                }
                match engine.begin_put_media(Some(&cfg.stream), None, TimecodeType::Absolute, 0) {
                    Ok(mut session) => {
                        session.push(&Muxer::header(&track));
                        ingest.session = Some(session);
                        ingest.mux.restart();
                    }
                    Err(e) => break Ended::Failed("stream", e.to_string()),
                }
            }
            SourceEvent::Frame(frame) => {
                if let Err(e) = ingest.frame(&frame).await {
                    break e;
                }
            }
            SourceEvent::Eos => break Ended::EndOfFile,
            SourceEvent::Error(e) => break Ended::Failed(error_kind(&e), e.to_string()),
        }
    };
    // The open fragment began at a keyframe and holds whole frames: store it.
    let finished = ingest.finish().await;
    drop(rx);
    let _ = tokio::task::spawn_blocking(move || drop(camera)).await;
    match (ended, finished) {
        (Ended::Stopped, _) => Ended::Stopped,
        (Ended::EndOfFile, Err(e)) => e,
        (ended, _) => ended,
    }
}

/// The PutMedia path for one connection's frames.
struct SourceIngest<'a> {
    cfg: &'a SourceConfig,
    status: &'a Mutex<SourceStatus>,
    clock: Clock,
    mux: Muxer,
    session: Option<PutMediaSession>,
}

impl SourceIngest<'_> {
    async fn frame(&mut self, frame: &kinema_mkv::mux::Frame) -> Result<(), Ended> {
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        // Frames before the first keyframe cannot start a fragment.
        let Ok(pieces) = self.mux.push(frame) else {
            return Ok(());
        };
        let mut bytes = 0;
        for piece in &pieces {
            let b = match piece {
                Piece::Cluster { bytes, .. } | Piece::Block { bytes } => bytes,
            };
            bytes += b.len() as u64;
            session.push(b);
        }
        {
            let mut s = lock(self.status);
            s.frames += 1;
            s.bytes += bytes;
        }
        set_state(self.status, self.clock, SourceState::Streaming, None);
        self.drain().await
    }

    async fn drain(&mut self) -> Result<(), Ended> {
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        while let Some(ev) = session.poll() {
            match ev {
                IngestEvent::Buffering { .. } => {}
                IngestEvent::Fragment(frag) => {
                    if let Err(e) = session.persist(frag).await {
                        return Err(Ended::Failed("storage", e.to_string()));
                    }
                    lock(self.status).fragments += 1;
                }
                IngestEvent::Error { error, detail, .. } => {
                    tracing::warn!(source = %self.cfg.name, stream = %self.cfg.stream, code = error.code(), %detail, "source ingest error");
                    return Err(Ended::Failed(
                        "ingest",
                        format!("{}: {detail}", error.name()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Ends the current upload, storing its open fragment.
    async fn finish(&mut self) -> Result<(), Ended> {
        if let Some(s) = self.session.as_mut() {
            s.finish();
        }
        let r = self.drain().await;
        self.session = None;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_withheld() {
        assert_eq!(redact("rtsp://cam/x"), "rtsp://cam/x");
        assert_eq!(
            redact("rtsp://admin:hunter2@10.0.0.5:554/s"),
            "rtsp://admin:***@10.0.0.5:554/s"
        );
        assert_eq!(redact("file:///a/b@c.mp4"), "file:///a/b@c.mp4");
        // A password with a '/' (issue 15, finding 8).
        assert_eq!(
            redact("rtsp://admin:pa/ss@10.0.0.5/s"),
            "rtsp://admin:***@10.0.0.5/s"
        );
    }

    #[test]
    fn camera_hosts_are_found_in_every_url_shape() {
        let h = |u: &str| camera_host(u);
        assert_eq!(h("rtsp://cam/x"), Some(("cam".into(), 554)));
        assert_eq!(h("rtsps://cam:8322/x"), Some(("cam".into(), 8322)));
        assert_eq!(
            h("rtsp://u:pw@10.0.0.5:8554/s"),
            Some(("10.0.0.5".into(), 8554))
        );
        // An '@' after the first '/' is in the path: the host is the one
        // the camera pipeline connects to (not example.com).
        assert_eq!(
            h("rtsp://169.254.169.254/x@example.com"),
            Some(("169.254.169.254".into(), 554))
        );
        assert_eq!(h("rtsp://u:pa/ss@10.0.0.5/s"), None);
        assert_eq!(h("rtsp://a:b@169.254.169.254:80@example.com/x"), None);
        assert_eq!(h("rtsp://[::1]:8554/s"), Some(("::1".into(), 8554)));
        assert_eq!(h("rtsp://[fe80::1]/s"), Some(("fe80::1".into(), 554)));
        assert_eq!(h("rtsp:///s"), None);
        assert_eq!(h("rtsp://cam:port/s"), None);
    }
}
