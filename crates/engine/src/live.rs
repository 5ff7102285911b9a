//! Live WebRTC viewing of ingested streams: the server answers viewers
//! itself (as master on a signaling channel named after the stream, or
//! through WHEP) and sends them the camera's own H.264 as it arrives, no
//! transcoding.
//!
//! Per stream one feed task turns the stream's live frames into Annex B
//! access units once and broadcasts them; per viewer one task waits for its
//! peer to connect, then for a keyframe, and sends from there. A viewer
//! that falls behind skips to the next keyframe; ingest never waits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use kinema_rtc::{PeerState, Publisher, RtcConfig, SendPeer};
use kinema_signaling::{MessageType, ServerMessage};
use tokio::sync::broadcast;

use crate::signaling::{Connection, Outgoing, ServerMaster};
use crate::{Engine, EngineError, LiveFrame};
use kinema_core::sync::lock;

/// How long a new peer may take to connect before it is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Access units a viewer may fall behind before it skips to a keyframe.
const FEED_QUEUE: usize = 120;
/// Frame duration assumed until two frames give the real one.
const DEFAULT_FRAME: Duration = Duration::from_millis(33);

#[derive(Debug, Clone, Default)]
pub struct LiveConfig {
    pub rtc: RtcConfig,
    /// Viewers of one stream at once (WebRTC through signaling and WHEP).
    pub max_viewers_per_stream: usize,
}

/// One access unit ready for every viewer of a stream.
#[derive(Debug, Clone)]
struct Unit {
    annexb: Bytes,
    keyframe: bool,
    duration: Duration,
    arrived: Instant,
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct LiveStats {
    pub frames_sent: AtomicU64,
    pub frames_skipped: AtomicU64,
    /// Delay from a frame's arrival to its hand-over to a viewer's peer:
    /// counts per bucket of [`DELAY_BUCKETS_US`] (not cumulative; the last
    /// counts what is above every bound), plus sum and count.
    pub delay_buckets: [AtomicU64; DELAY_BUCKETS_US.len() + 1],
    pub delay_sum_us: AtomicU64,
    pub delay_count: AtomicU64,
}

/// Upper bounds (microseconds) of the send-delay histogram.
pub const DELAY_BUCKETS_US: [u64; 15] = [
    50, 100, 200, 300, 500, 750, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000,
    1_000_000,
];

impl LiveStats {
    fn record_delay(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = DELAY_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(DELAY_BUCKETS_US.len());
        self.delay_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.delay_sum_us.fetch_add(us, Ordering::Relaxed);
        self.delay_count.fetch_add(1, Ordering::Relaxed);
    }
}

struct Feed {
    units: broadcast::Sender<Unit>,
}

/// The server's live viewing. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    publisher: Publisher,
    max_viewers: usize,
    feeds: Mutex<HashMap<String, Feed>>,
    viewers: Mutex<HashMap<String, usize>>,
    whep: Mutex<HashMap<String, (String, Arc<SendPeer>)>>,
    next_id: AtomicU64,
    stats: LiveStats,
}

fn rtc_err(e: kinema_rtc::RtcError) -> EngineError {
    match e {
        kinema_rtc::RtcError::InvalidSdp(_)
        | kinema_rtc::RtcError::InvalidCandidate(_)
        | kinema_rtc::RtcError::NoVideo => EngineError::InvalidArgument(e.to_string()),
        e => EngineError::Internal(e.to_string()),
    }
}

/// Counts a viewer of a stream while it lives.
struct ViewerSlot {
    live: Live,
    stream: String,
}

impl Drop for ViewerSlot {
    fn drop(&mut self) {
        let mut v = lock(&self.live.inner.viewers);
        if let Some(n) = v.get_mut(&self.stream) {
            *n -= 1;
            if *n == 0 {
                v.remove(&self.stream);
            }
        }
    }
}

impl Live {
    pub fn new(engine: Engine, cfg: LiveConfig) -> Result<Live, EngineError> {
        let publisher = Publisher::new(cfg.rtc).map_err(rtc_err)?;
        Ok(Live {
            inner: Arc::new(Inner {
                engine,
                publisher,
                max_viewers: cfg.max_viewers_per_stream.max(1),
                feeds: Mutex::new(HashMap::new()),
                viewers: Mutex::new(HashMap::new()),
                whep: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                stats: LiveStats::default(),
            }),
        })
    }

    pub fn stats(&self) -> &LiveStats {
        &self.inner.stats
    }

    /// Viewers per stream right now.
    pub fn viewers(&self) -> Vec<(String, usize)> {
        lock(&self.inner.viewers)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Answers a viewer's offer for `stream` and starts sending it the live
    /// video once connected. Returns the peer and the answer SDP.
    pub async fn view(
        &self,
        stream: &str,
        offer_sdp: &str,
    ) -> Result<(Arc<SendPeer>, String), EngineError> {
        let slot = self.take_slot(stream)?;
        let units = self.feed(stream)?;
        let (peer, answer) = self
            .inner
            .publisher
            .answer(offer_sdp)
            .await
            .map_err(rtc_err)?;
        let peer = Arc::new(peer);
        tokio::spawn(forward(self.clone(), peer.clone(), units, slot));
        Ok((peer, answer))
    }

    fn take_slot(&self, stream: &str) -> Result<ViewerSlot, EngineError> {
        let mut v = lock(&self.inner.viewers);
        let n = v.entry(stream.to_string()).or_insert(0);
        if *n >= self.inner.max_viewers {
            return Err(EngineError::ClientLimitExceeded(format!(
                "the stream {stream} has its maximum of {} live viewers",
                self.inner.max_viewers
            )));
        }
        *n += 1;
        Ok(ViewerSlot {
            live: self.clone(),
            stream: stream.to_string(),
        })
    }

    /// The stream's feed of access units, started if needed.
    fn feed(&self, stream: &str) -> Result<broadcast::Receiver<Unit>, EngineError> {
        let mut feeds = lock(&self.inner.feeds);
        if let Some(f) = feeds.get(stream) {
            return Ok(f.units.subscribe());
        }
        let frames = self.inner.engine.live_frames(stream)?;
        let (units, rx) = broadcast::channel(FEED_QUEUE);
        feeds.insert(
            stream.to_string(),
            Feed {
                units: units.clone(),
            },
        );
        tokio::spawn(run_feed(self.clone(), stream.to_string(), frames, units));
        Ok(rx)
    }

    /// WHEP: a new session for `stream`; returns its id and the answer.
    pub async fn whep_offer(
        &self,
        stream: &str,
        offer_sdp: &str,
    ) -> Result<(String, String), EngineError> {
        let (peer, answer) = self.view(stream, offer_sdp).await?;
        let id = format!(
            "{:016x}{:016x}",
            self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            self.inner.engine.clock().now_ms() as u64
        );
        lock(&self.inner.whep).insert(id.clone(), (stream.to_string(), peer.clone()));
        // Forget the session once its peer is over.
        let live = self.clone();
        let key = id.clone();
        let mut state = peer.state();
        tokio::spawn(async move {
            let _ = state.wait_for(|s| *s == PeerState::Ended).await;
            lock(&live.inner.whep).remove(&key);
        });
        Ok((id, answer))
    }

    /// WHEP: ends a session.
    pub async fn whep_delete(&self, stream: &str, id: &str) -> Result<(), EngineError> {
        let peer = {
            let mut w = lock(&self.inner.whep);
            match w.get(id) {
                Some((s, _)) if s == stream => w.remove(id).map(|(_, p)| p),
                _ => None,
            }
        };
        match peer {
            Some(p) => {
                p.close().await;
                Ok(())
            }
            None => Err(EngineError::ResourceNotFound(format!(
                "no WHEP session {id} for {stream}"
            ))),
        }
    }

    /// WHEP trickle (PATCH with `a=candidate:` lines).
    pub async fn whep_candidates(
        &self,
        stream: &str,
        id: &str,
        fragment: &str,
    ) -> Result<(), EngineError> {
        let peer = match lock(&self.inner.whep).get(id) {
            Some((s, p)) if s == stream => p.clone(),
            _ => {
                return Err(EngineError::ResourceNotFound(format!(
                    "no WHEP session {id} for {stream}"
                )));
            }
        };
        for line in fragment.lines() {
            if let Some(c) = line.trim().strip_prefix("a=")
                && c.starts_with("candidate:")
            {
                peer.add_candidate(c).await.map_err(rtc_err)?;
            }
        }
        Ok(())
    }

    /// Answers as master on a channel: offers from viewers get peers,
    /// their trickled candidates are added, until the channel closes this
    /// connection (a camera master took over, or shutdown).
    async fn run_master(self, stream: String, mut conn: Connection) {
        tracing::info!(stream, "answering WebRTC viewers as master");
        let mut peers: HashMap<String, Arc<SendPeer>> = HashMap::new();
        while let Some(out) = conn.recv().await {
            let Outgoing::Text(text) = out else { break };
            let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) else {
                continue;
            };
            let sender = msg.sender_client_id.clone().unwrap_or_default();
            let payload = msg
                .message_payload
                .as_deref()
                .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            match (msg.message_type, payload) {
                (MessageType::SdpOffer, Some(p)) => {
                    let sdp = p["sdp"].as_str().unwrap_or_default();
                    match self.view(&stream, sdp).await {
                        Ok((peer, answer)) => {
                            peers.retain(|_, p| *p.state().borrow() != PeerState::Ended);
                            // A viewer offering again starts over: its old
                            // peer (and viewer place) goes.
                            if let Some(old) = peers.insert(sender.clone(), peer) {
                                old.close().await;
                            }
                            let body = serde_json::json!({ "type": "answer", "sdp": answer });
                            let reply = serde_json::json!({
                                "action": "SDP_ANSWER",
                                "recipientClientId": sender,
                                "messagePayload": base64::engine::general_purpose::STANDARD
                                    .encode(body.to_string()),
                            });
                            if !conn.send(reply.to_string()).await {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::info!(stream, viewer = sender, error = %e, "refused a viewer's offer");
                        }
                    }
                }
                (MessageType::IceCandidate, Some(p)) => {
                    if let Some(peer) = peers.get(&sender)
                        && let Err(e) = peer.add_candidate(&p.to_string()).await
                    {
                        tracing::debug!(stream, viewer = sender, error = %e, "bad candidate");
                    }
                }
                (MessageType::GoAway, _) => break,
                _ => {}
            }
        }
        tracing::info!(stream, "no longer master");
    }
}

impl ServerMaster for Live {
    fn serves(&self, channel: &str) -> bool {
        self.inner.engine.live_frames(channel).is_ok()
    }

    fn attach(&self, channel: &str, conn: Connection) -> Result<(), Connection> {
        if self.inner.engine.live_frames(channel).is_err() {
            return Err(conn);
        }
        tokio::spawn(self.clone().run_master(channel.to_string(), conn));
        Ok(())
    }
}

/// One stream's feed: live frames to Annex B units, once for all viewers.
/// Ends when the last viewer has gone (or the stream is deleted).
async fn run_feed(
    live: Live,
    stream: String,
    mut frames: broadcast::Receiver<LiveFrame>,
    units: broadcast::Sender<Unit>,
) {
    let mut conv: Option<(Arc<kinema_mkv::TrackInfo>, kinema_remux::AnnexB)> = None;
    let mut last_pts: Option<i64> = None;
    // After frames were lost, the next unit sent is a keyframe.
    let mut resync = false;
    let mut warned_reordering = false;
    let mut duration = DEFAULT_FRAME;
    loop {
        let frame = tokio::select! {
            f = frames.recv() => f,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if end_feed(&live, &stream, &units, false) { return } else { continue }
            }
        };
        let f = match frame {
            Ok(f) => f,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                resync = true;
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => {
                end_feed(&live, &stream, &units, true);
                return;
            }
        };
        if resync && !f.keyframe {
            continue;
        }
        resync = false;
        if units.receiver_count() == 0 && end_feed(&live, &stream, &units, false) {
            return;
        }
        if conv.as_ref().is_none_or(|(t, _)| !Arc::ptr_eq(t, &f.track)) {
            match kinema_remux::AnnexB::new(&f.track) {
                Ok(a) if a.codec() == kinema_remux::Codec::H264 => {
                    conv = Some((f.track.clone(), a))
                }
                Ok(_) | Err(_) => {
                    tracing::info!(
                        stream,
                        codec = f.track.codec_id,
                        "live WebRTC needs H.264 with codec private data"
                    );
                    conv = None;
                    continue;
                }
            }
        }
        let Some((_, a)) = &conv else { continue };
        if let Some(prev) = last_pts {
            let gap = f.producer_ms - prev;
            if gap < 0 && !warned_reordering {
                // Presentation times going back in decode order: B-frames.
                tracing::warn!(
                    stream,
                    "the stream has B-frames: browsers' WebRTC decoders do not reorder them, so viewers may see few frames (encode without B-frames for live viewing)"
                );
                warned_reordering = true;
            }
            if (1..=1000).contains(&gap) {
                duration = Duration::from_millis(gap as u64);
            }
        }
        last_pts = Some(f.producer_ms);
        match a.convert(&f.payload, f.keyframe) {
            Ok(annexb) => {
                let _ = units.send(Unit {
                    annexb,
                    keyframe: f.keyframe,
                    duration,
                    arrived: f.arrived,
                });
            }
            Err(e) => tracing::debug!(stream, error = %e, "skipping a malformed frame"),
        }
    }
}

/// Whether a feed ends now: always when `force`d, else only if nobody
/// watches. Decided under the feeds lock, so a viewer subscribing at the
/// same moment either finds this feed still running or starts a new one.
fn end_feed(live: &Live, stream: &str, units: &broadcast::Sender<Unit>, force: bool) -> bool {
    let mut feeds = lock(&live.inner.feeds);
    if !force && units.receiver_count() > 0 {
        return false;
    }
    if feeds
        .get(stream)
        .is_some_and(|f| f.units.same_channel(units))
    {
        feeds.remove(stream);
    }
    true
}

/// One viewer: connect, wait for a keyframe, then send every unit.
async fn forward(
    live: Live,
    peer: Arc<SendPeer>,
    mut units: broadcast::Receiver<Unit>,
    _slot: ViewerSlot,
) {
    let mut state = peer.state();
    let connected = tokio::time::timeout(
        CONNECT_TIMEOUT,
        state.wait_for(|s| *s != PeerState::Connecting),
    )
    .await
    .is_ok_and(|r| r.is_ok_and(|s| *s == PeerState::Connected));
    if !connected {
        peer.close().await;
        return;
    }
    let stats = &live.inner.stats;
    let mut started = false;
    loop {
        let unit = tokio::select! {
            u = units.recv() => u,
            _ = state.wait_for(|s| *s == PeerState::Ended) => break,
        };
        let u = match unit {
            Ok(u) => u,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Frames that passed while connecting are not skipped ones.
                if started {
                    stats.frames_skipped.fetch_add(n, Ordering::Relaxed);
                }
                started = false;
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        if !started {
            if !u.keyframe {
                continue;
            }
            started = true;
        }
        if peer.write(u.annexb, u.duration).await.is_err() {
            break;
        }
        stats.record_delay(u.arrived.elapsed());
        stats.frames_sent.fetch_add(1, Ordering::Relaxed);
    }
    peer.close().await;
}
