//! WebRTC adapter: the only crate that names webrtc-rs types.
//!
//! - [`Publisher`] makes the server's sending peers: given a viewer's SDP
//!   offer it answers with one H.264 video track (no transcoding: the
//!   caller writes the camera's own access units, [`SendPeer::write`]).
//! - [`Receiver`] is a receiving peer (benchmarks and tests): it offers to
//!   receive video and counts the H.264 frames that arrive.
//! - [`turn::TurnServer`] is the embedded STUN/TURN server.
//!
//! Answers are sent complete (every local candidate in the SDP): the
//! server's candidates are host candidates found at once, so waiting for
//! them costs nothing and spares the viewer trickled server candidates.
//! Candidates the viewer trickles are added with [`SendPeer::add_candidate`].

pub mod turn;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MIME_TYPE_H264, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{API, APIBuilder};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::media::Sample;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;

#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    #[error("invalid session description: {0}")]
    InvalidSdp(String),
    #[error("invalid ICE candidate: {0}")]
    InvalidCandidate(String),
    #[error("the offer has no H.264 video the server can send")]
    NoVideo,
    #[error("WebRTC: {0}")]
    Peer(String),
    #[error("TURN: {0}")]
    Turn(String),
}

fn peer_err(e: impl std::fmt::Display) -> RtcError {
    RtcError::Peer(e.to_string())
}

/// The one H.264 format offered: packetization mode 1 (FU-A/STAP-A), the
/// constrained baseline profile id every browser offers, with NACK, PLI and
/// FIR feedback. Only H.264 is registered: with more codecs a browser may
/// pick another and decode nothing of what is sent.
fn h264_capability() -> RTCRtpCodecCapability {
    use webrtc::rtp_transceiver::RTCPFeedback;
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.into(),
        parameter: parameter.into(),
    };
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
            .to_owned(),
        rtcp_feedback: vec![
            fb("goog-remb", ""),
            fb("ccm", "fir"),
            fb("nack", ""),
            fb("nack", "pli"),
        ],
    }
}

/// Where peers may gather candidates.
#[derive(Debug, Clone, Default)]
pub struct RtcConfig {
    /// The one local address offered as host candidate (None: every
    /// interface, loopback included).
    pub ice_ip: Option<IpAddr>,
    /// STUN/TURN servers the peers use themselves.
    pub ice_servers: Vec<IceServer>,
}

#[derive(Debug, Clone, Default)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

fn build_api(cfg: &RtcConfig) -> Result<API, RtcError> {
    let mut media = MediaEngine::default();
    media
        .register_codec(
            RTCRtpCodecParameters {
                capability: h264_capability(),
                payload_type: 102,
                ..Default::default()
            },
            RTPCodecType::Video,
        )
        .map_err(peer_err)?;
    let registry = register_default_interceptors(Registry::new(), &mut media).map_err(peer_err)?;
    let mut settings = SettingEngine::default();
    // mDNS needs multicast, which a loopback-only namespace lacks; the
    // server's candidates are plain addresses anyway.
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    settings.set_network_types(vec![NetworkType::Udp4, NetworkType::Udp6]);
    // Loopback candidates too, unless one other address is named: a
    // browser on the same machine (the demo, `make run`) reaches the server
    // through them, and remote browsers simply pair with the others.
    settings.set_include_loopback_candidate(cfg.ice_ip.is_none_or(|ip| ip.is_loopback()));
    if let Some(ip) = cfg.ice_ip {
        settings.set_ip_filter(Box::new(move |candidate: IpAddr| candidate == ip));
    }
    Ok(APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build())
}

fn rtc_configuration(cfg: &RtcConfig) -> RTCConfiguration {
    RTCConfiguration {
        ice_servers: cfg
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

/// A peer connection's state, simplified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    Connecting,
    Connected,
    /// Failed, disconnected for good, or closed: the peer is over.
    Ended,
}

fn watch_state(pc: &RTCPeerConnection) -> watch::Receiver<PeerState> {
    let (tx, rx) = watch::channel(PeerState::Connecting);
    pc.on_peer_connection_state_change(Box::new(move |s: RTCPeerConnectionState| {
        let state = match s {
            RTCPeerConnectionState::Connected => PeerState::Connected,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => PeerState::Ended,
            _ => *tx.borrow(),
        };
        tx.send_replace(state);
        Box::pin(async {})
    }));
    rx
}

/// Sets the local description and waits (at most 5 s) for every local
/// candidate, so the returned SDP is complete (no trickle needed).
async fn set_local_complete(
    pc: &RTCPeerConnection,
    desc: RTCSessionDescription,
) -> Result<String, RtcError> {
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(desc).await.map_err(peer_err)?;
    let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
    Ok(pc
        .local_description()
        .await
        .ok_or_else(|| RtcError::Peer("no local description".into()))?
        .sdp)
}

/// Parses a viewer's candidate: the JSON of an `RTCIceCandidate` (what the
/// signaling payloads carry) or a bare `candidate:` line.
pub fn parse_candidate(text: &str) -> Result<RTCIceCandidateInit, RtcError> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str::<RTCIceCandidateInit>(text)
            .map_err(|e| RtcError::InvalidCandidate(e.to_string()))
    } else {
        Ok(RTCIceCandidateInit {
            candidate: text.trim().to_string(),
            ..Default::default()
        })
    }
}

/// Makes the server's sending peers. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    api: Arc<API>,
    cfg: Arc<RtcConfig>,
}

/// One viewer's peer connection with its video track.
pub struct SendPeer {
    pc: Arc<RTCPeerConnection>,
    track: Arc<TrackLocalStaticSample>,
    state: watch::Receiver<PeerState>,
}

impl Publisher {
    pub fn new(cfg: RtcConfig) -> Result<Publisher, RtcError> {
        Ok(Publisher {
            api: Arc::new(build_api(&cfg)?),
            cfg: Arc::new(cfg),
        })
    }

    /// Answers a viewer's offer with a send-only H.264 track. Returns the
    /// peer and the answer SDP with every local candidate.
    pub async fn answer(&self, offer_sdp: &str) -> Result<(SendPeer, String), RtcError> {
        let offer = RTCSessionDescription::offer(offer_sdp.to_string())
            .map_err(|e| RtcError::InvalidSdp(e.to_string()))?;
        let pc = Arc::new(
            self.api
                .new_peer_connection(rtc_configuration(&self.cfg))
                .await
                .map_err(peer_err)?,
        );
        // Watched before negotiating, so no early state change is missed.
        let state = watch_state(&pc);
        match self.negotiate(&pc, offer).await {
            Ok((track, sdp)) => Ok((SendPeer { pc, track, state }, sdp)),
            Err(e) => {
                let _ = pc.close().await;
                Err(e)
            }
        }
    }

    async fn negotiate(
        &self,
        pc: &Arc<RTCPeerConnection>,
        offer: RTCSessionDescription,
    ) -> Result<(Arc<TrackLocalStaticSample>, String), RtcError> {
        let track = Arc::new(TrackLocalStaticSample::new(
            h264_capability(),
            "video".to_owned(),
            "kinema".to_owned(),
        ));
        let sender = pc
            .add_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>)
            .await
            .map_err(peer_err)?;
        // RTCP from the viewer must be read for the interceptors (NACK
        // resends, keyframe requests) to see it.
        tokio::spawn(async move { while sender.read_rtcp().await.is_ok() {} });
        pc.set_remote_description(offer)
            .await
            .map_err(|e| RtcError::InvalidSdp(e.to_string()))?;
        let has_video = pc.get_transceivers().await.iter().any(|t| {
            t.kind() == RTPCodecType::Video && t.direction() != RTCRtpTransceiverDirection::Inactive
        });
        if !has_video {
            return Err(RtcError::NoVideo);
        }
        let answer = pc.create_answer(None).await.map_err(|e| match e {
            webrtc::Error::ErrSenderWithNoCodecs => RtcError::NoVideo,
            e => peer_err(e),
        })?;
        let sdp = set_local_complete(pc, answer).await?;
        if !sdp.contains("H264") {
            return Err(RtcError::NoVideo);
        }
        Ok((track, sdp))
    }
}

impl SendPeer {
    /// Adds a candidate the viewer trickled (JSON of an `RTCIceCandidate`,
    /// or a `candidate:` line). An empty candidate (end of candidates) is
    /// accepted and ignored.
    pub async fn add_candidate(&self, text: &str) -> Result<(), RtcError> {
        let c = parse_candidate(text)?;
        if c.candidate.is_empty() {
            return Ok(());
        }
        self.pc
            .add_ice_candidate(c)
            .await
            .map_err(|e| RtcError::InvalidCandidate(e.to_string()))
    }

    /// Sends one access unit in Annex B form (start codes, parameter sets
    /// before keyframes), lasting `duration` (it advances the RTP clock).
    pub async fn write(&self, annexb: Bytes, duration: Duration) -> Result<(), RtcError> {
        self.track
            .write_sample(&Sample {
                data: annexb,
                duration,
                ..Default::default()
            })
            .await
            .map_err(peer_err)
    }

    pub fn state(&self) -> watch::Receiver<PeerState> {
        self.state.clone()
    }

    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }
}

/// Whether an H.264 RTP payload (RFC 6184) begins a keyframe: an SPS or
/// IDR NAL unit, alone, first in a STAP-A, or starting an FU-A.
fn starts_keyframe(payload: &[u8]) -> bool {
    let key = |t: u8| t == 5 || t == 7;
    match payload.first().map(|b| b & 0x1f) {
        Some(24) => payload.get(3).is_some_and(|b| key(b & 0x1f)),
        Some(28) => payload
            .get(1)
            .is_some_and(|b| b & 0x80 != 0 && key(b & 0x1f)),
        Some(t) => key(t),
        None => false,
    }
}

/// A receiving peer: offers to receive one video track and counts the
/// H.264 access units (RTP marker bits) that arrive.
pub struct Receiver {
    pc: Arc<RTCPeerConnection>,
    /// Whether the first RTP packet began a keyframe (an SPS, or an IDR
    /// slice), once one arrived.
    first_is_keyframe: Arc<std::sync::OnceLock<bool>>,
    frames: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    first_frame: watch::Receiver<bool>,
}

impl Receiver {
    /// A new peer and its offer (complete, with every local candidate).
    pub async fn offer(cfg: &RtcConfig) -> Result<(Receiver, String), RtcError> {
        let api = build_api(cfg)?;
        let pc = Arc::new(
            api.new_peer_connection(rtc_configuration(cfg))
                .await
                .map_err(peer_err)?,
        );
        pc.add_transceiver_from_kind(
            RTPCodecType::Video,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                send_encodings: vec![],
            }),
        )
        .await
        .map_err(peer_err)?;
        let frames = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (first_tx, first_frame) = watch::channel(false);
        let first_is_keyframe = Arc::new(std::sync::OnceLock::new());
        let (f, b, k) = (frames.clone(), bytes.clone(), first_is_keyframe.clone());
        pc.on_track(Box::new(move |track, _, _| {
            let (f, b, k, first_tx) = (f.clone(), b.clone(), k.clone(), first_tx.clone());
            tokio::spawn(async move {
                while let Ok((pkt, _)) = track.read_rtp().await {
                    let _ = k.set(starts_keyframe(&pkt.payload));
                    b.fetch_add(pkt.payload.len() as u64, Ordering::Relaxed);
                    if pkt.header.marker {
                        f.fetch_add(1, Ordering::Relaxed);
                        first_tx.send_replace(true);
                    }
                }
            });
            Box::pin(async {})
        }));
        let offer = pc.create_offer(None).await.map_err(peer_err)?;
        let sdp = set_local_complete(&pc, offer).await?;
        Ok((
            Receiver {
                pc,
                first_is_keyframe,
                frames,
                bytes,
                first_frame,
            },
            sdp,
        ))
    }

    pub async fn accept_answer(&self, sdp: &str) -> Result<(), RtcError> {
        let answer = RTCSessionDescription::answer(sdp.to_string())
            .map_err(|e| RtcError::InvalidSdp(e.to_string()))?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(|e| RtcError::InvalidSdp(e.to_string()))
    }

    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Whether the first packet received began a keyframe (None before any).
    pub fn first_is_keyframe(&self) -> Option<bool> {
        self.first_is_keyframe.get().copied()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Resolves once the first frame arrived.
    pub async fn first_frame(&self) {
        let mut rx = self.first_frame.clone();
        let _ = rx.wait_for(|b| *b).await;
    }

    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }
}
