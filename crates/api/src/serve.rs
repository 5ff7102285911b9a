//! Serving HTTP/1.1: the accept loop, TLS handshakes, and the limits that
//! keep clients who have not authenticated from wearing the server down.
//!
//! Every connection holds a permit of the connection cap, and one of the
//! (smaller) cap on unauthenticated connections until a request on it is
//! authenticated (a signature or a playback session token checks out).
//! When the unauthenticated cap is full, a new connection evicts the oldest
//! unauthenticated one (so idle sockets cannot lock new clients out); when
//! the connection cap is full, it is closed at once. Headers
//! must arrive within the header timeout, on a new connection and between
//! keep-alive requests alike (hyper's timer), and are bounded in size. A
//! body read before its signature can be checked draws on a small
//! server-wide budget, so unauthenticated clients together pin at most
//! `max_unauthenticated` header buffers plus that budget.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use kinema_core::sync::lock;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

/// The limits of the HTTP edge (the `[limits]` config section).
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Open connections at most.
    pub max_connections: usize,
    /// Connections on which no request has authenticated yet, at most.
    pub max_unauthenticated: usize,
    /// Time for a request's headers (and a TLS handshake) to arrive, and
    /// for an idle keep-alive connection to send its next request.
    pub header_read_timeout: Duration,
    /// Time for a non-streaming request body to arrive.
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// Bytes of request bodies that may be held, server-wide, before their
    /// signatures can be checked (requests that do not send
    /// `x-amz-content-sha256`, as the AWS SDKs' JSON protocols do not).
    pub unauthenticated_body_bytes: usize,
    /// A PutMedia upload that sends nothing for this long is ended.
    pub put_media_idle_timeout: Duration,
    /// A PutMedia upload is ended after this long (the producer reconnects).
    pub put_media_max_duration: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 4096,
            max_unauthenticated: 256,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            unauthenticated_body_bytes: 8 << 20,
            put_media_idle_timeout: Duration::from_secs(30),
            put_media_max_duration: Duration::from_secs(24 * 3600),
        }
    }
}

/// The limits and the server-wide budgets they draw on.
pub struct Limits {
    pub config: LimitsConfig,
    connections: Arc<Semaphore>,
    unauthenticated: Arc<Semaphore>,
    /// Unauthenticated connections, oldest first (some may have
    /// authenticated or closed since).
    waiting: Mutex<VecDeque<Weak<Connection>>>,
    /// In KiB.
    unauthenticated_body: Arc<Semaphore>,
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Limits {
        Limits {
            connections: Arc::new(Semaphore::new(config.max_connections.max(1))),
            unauthenticated: Arc::new(Semaphore::new(config.max_unauthenticated.max(1))),
            waiting: Mutex::default(),
            unauthenticated_body: Arc::new(Semaphore::new(
                (config.unauthenticated_body_bytes >> 10).max(1),
            )),
            config,
        }
    }

    /// Reserves room for `bytes` of a body read before authentication,
    /// waiting up to the body timeout for other such reads to finish.
    pub(crate) async fn reserve_unauthenticated_body(
        &self,
        bytes: usize,
    ) -> Option<OwnedSemaphorePermit> {
        let kib = bytes.div_ceil(1024).max(1);
        if kib > (self.config.unauthenticated_body_bytes >> 10).max(1) {
            return None;
        }
        let kib = u32::try_from(kib).ok()?;
        tokio::time::timeout(
            self.config.body_read_timeout,
            self.unauthenticated_body.clone().acquire_many_owned(kib),
        )
        .await
        .ok()?
        .ok()
    }

    /// A permit of the unauthenticated cap; when it is full, the oldest
    /// unauthenticated connection is evicted and its permit taken over.
    fn admit_unauthenticated(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.unauthenticated.clone().try_acquire_owned() {
            return Some(p);
        }
        let mut waiting = lock(&self.waiting);
        while let Some(oldest) = waiting.pop_front() {
            let Some(conn) = oldest.upgrade() else {
                continue;
            };
            let Some(permit) = lock(&conn.unauthenticated).take() else {
                continue;
            };
            tracing::info!(peer = %conn.peer, "evicting the oldest unauthenticated connection");
            conn.evicted.notify_one();
            return Some(permit);
        }
        None
    }

    fn track(&self, conn: &Arc<Connection>) {
        let mut waiting = lock(&self.waiting);
        let dead = |w: &Weak<Connection>| w.upgrade().is_none_or(|c| c.is_authenticated());
        while waiting.front().is_some_and(dead) {
            waiting.pop_front();
        }
        if waiting.len() > 2 * self.config.max_unauthenticated.max(1) {
            waiting.retain(|w| !dead(w));
        }
        waiting.push_back(Arc::downgrade(conn));
    }

    /// Connections open now, and those not yet authenticated.
    pub fn open_connections(&self) -> (usize, usize) {
        let used = |s: &Semaphore, cap: usize| cap.max(1) - s.available_permits();
        (
            used(&self.connections, self.config.max_connections),
            used(&self.unauthenticated, self.config.max_unauthenticated),
        )
    }
}

/// One client connection, as its requests see it (a request extension).
pub struct Connection {
    pub peer: SocketAddr,
    /// Its place under the connection cap, held as long as this is (an
    /// upgraded WebSocket keeps it).
    _open: OwnedSemaphorePermit,
    unauthenticated: Mutex<Option<OwnedSemaphorePermit>>,
    /// Told to close (to make room for a newer unauthenticated one).
    evicted: Notify,
}

impl Connection {
    /// A request on this connection authenticated: it no longer counts
    /// against the cap on unauthenticated connections.
    pub fn authenticated(&self) {
        lock(&self.unauthenticated).take();
    }

    pub fn is_authenticated(&self) -> bool {
        lock(&self.unauthenticated).is_none()
    }
}

/// Serves `app` until `shutdown` resolves, then lets open connections
/// finish their requests (long-lived streams end on the server's own
/// shutdown signal). With a TLS acceptor, HTTPS only.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Arc<Limits>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, retry.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let Ok(open) = limits.connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: too many connections");
            continue;
        };
        let Some(unauthenticated) = limits.admit_unauthenticated() else {
            tracing::warn!(%peer, "connection refused: too many unauthenticated connections");
            continue;
        };
        let conn = Arc::new(Connection {
            peer,
            _open: open,
            unauthenticated: Mutex::new(Some(unauthenticated)),
            evicted: Notify::new(),
        });
        limits.track(&conn);
        let (tls, app, limits, stop) = (tls.clone(), app.clone(), limits.clone(), stop_rx.clone());
        connections.spawn(async move {
            connection(tcp, tls, app, &limits.config, conn, stop).await;
        });
    }
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn connection(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: &LimitsConfig,
    conn: Arc<Connection>,
    stop: watch::Receiver<bool>,
) {
    // Small messages (signaling, ACK lines) go out at once.
    let _ = tcp.set_nodelay(true);
    let peer = conn.peer;
    match tls {
        None => http(TokioIo::new(tcp), app, limits, conn, stop).await,
        Some(acceptor) => {
            match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => http(TokioIo::new(stream), app, limits, conn, stop).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn http<I>(
    io: I,
    app: Router,
    limits: &LimitsConfig,
    conn: Arc<Connection>,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let evicted = conn.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(conn.clone());
        app.clone().call(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let served = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(served);
    let result = tokio::select! {
        r = served.as_mut() => r,
        _ = stop.changed() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
        _ = evicted.evicted.notified() => return,
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}
