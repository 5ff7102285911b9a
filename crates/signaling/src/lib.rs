//! WebRTC signaling for one channel, without I/O: the Kinesis Video
//! signaling WebSocket messages, a `SINGLE_MASTER` channel as a state
//! machine, and TURN REST credentials (`ice`).
//!
//! The shell that owns the WebSocket connections tells the [`Channel`]
//! about connects, text messages, disconnects and the time, then drains
//! [`Channel::poll_output`] for the frames to send and the connections to
//! close, and calls [`Channel::handle_timeout`] when [`Channel::poll_timeout`]
//! says. The channel never reads a clock.
//!
//! Behaviour (see `../shared/protocols.md`):
//! - one master: a newer master connection replaces the older one, which is
//!   closed; many viewers by client id: a newer viewer with the same id
//!   replaces the older one;
//! - a viewer's SDP offer, answer or ICE candidate goes to the master with
//!   the viewer's id as `senderClientId`; the master names the viewer in
//!   `recipientClientId`;
//! - a message for a peer that is not connected is kept for the channel's
//!   message TTL and delivered when it connects;
//! - bad messages (malformed JSON, unknown action, bad base64, a payload over
//!   the limit, a missing recipient, too many messages too fast) are answered
//!   with a `STATUS_RESPONSE` carrying the message's `correlationId`, and the
//!   connection stays open.

mod ice;
mod messages;

use std::collections::{BTreeMap, HashMap, VecDeque};

pub use ice::{TurnCredentials, turn_credentials, turn_password, turn_username_current};
pub use messages::{Action, ClientMessage, MessageType, ServerMessage, StatusResponse};

/// A connection, as the shell numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master,
    Viewer,
}

#[derive(Debug, Clone, Copy)]
pub struct ChannelConfig {
    /// How long a message for an absent peer is kept (5 to 120 s).
    pub message_ttl_ms: i64,
    /// Largest `messagePayload` (base64 characters); the original's is 10 KB.
    pub max_payload: usize,
    /// Viewers connected at once (the original caps this at 10).
    pub max_viewers: usize,
    /// Messages kept per absent peer; older ones are dropped first.
    pub max_pending: usize,
    /// Payload bytes kept for absent peers in the whole channel; a message
    /// that would go over is refused (`STATUS_RESPONSE` 429), so a client
    /// naming ever new recipients cannot grow the server's memory.
    pub max_pending_bytes: usize,
    /// Token bucket per connection: sustained messages per second, burst
    /// (a viewer's; the master's is that times one plus the viewer count).
    pub rate_per_second: u32,
    pub burst: u32,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            message_ttl_ms: 60_000,
            max_payload: 10_000,
            max_viewers: 1_000,
            max_pending: 64,
            max_pending_bytes: 4 << 20,
            rate_per_second: 50,
            burst: 200,
        }
    }
}

/// Why the channel closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A newer connection took this one's role (master) or client id.
    Replaced,
    /// The server is going away (after `GO_AWAY`).
    GoingAway,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Send(ConnId, ServerMessage),
    Close(ConnId, CloseReason),
    /// A viewer offered while no master is connected; the offer waits for
    /// one. A shell that can answer as master may connect one now (the
    /// waiting offer is delivered to it on connect).
    MasterWanted,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("a viewer needs a client id")]
    MissingClientId,
    #[error("invalid client id")]
    InvalidClientId,
    #[error("the channel has its maximum of {0} viewers")]
    TooManyViewers(usize),
}

/// Who a pending message waits for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Peer {
    Master,
    Viewer(String),
}

struct Conn {
    role: Role,
    client_id: Option<String>,
    tokens: f64,
    refilled_ms: i64,
}

/// One signaling channel.
pub struct Channel {
    cfg: ChannelConfig,
    conns: BTreeMap<ConnId, Conn>,
    master: Option<ConnId>,
    viewers: HashMap<String, ConnId>,
    pending: HashMap<Peer, VecDeque<(i64, ServerMessage)>>,
    /// Payload bytes in `pending`.
    pending_bytes: usize,
    out: VecDeque<Output>,
}

fn payload_len(m: &ServerMessage) -> usize {
    m.message_payload.as_ref().map_or(0, String::len)
}

fn valid_client_id(id: &str) -> bool {
    kinema_core::names::valid(id, kinema_core::names::MAX_CLIENT_ID)
}

impl Channel {
    pub fn new(cfg: ChannelConfig) -> Channel {
        Channel {
            cfg,
            conns: BTreeMap::new(),
            master: None,
            viewers: HashMap::new(),
            pending: HashMap::new(),
            pending_bytes: 0,
            out: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &ChannelConfig {
        &self.cfg
    }

    /// Changes the limits (UpdateSignalingChannel); connections stay.
    pub fn set_config(&mut self, cfg: ChannelConfig) {
        self.cfg = cfg;
    }

    pub fn has_master(&self) -> bool {
        self.master.is_some()
    }

    /// The role of a connected connection.
    pub fn role(&self, conn: ConnId) -> Option<Role> {
        self.conns.get(&conn).map(|c| c.role)
    }

    pub fn viewer_count(&self) -> usize {
        self.viewers.len()
    }

    /// A connection joined. A replaced connection is closed (an output).
    pub fn connect(
        &mut self,
        now_ms: i64,
        conn: ConnId,
        role: Role,
        client_id: Option<&str>,
    ) -> Result<(), ConnectError> {
        // A connection id names one connection: joining again starts over.
        if self.conns.contains_key(&conn) {
            self.disconnect(conn);
        }
        let peer = match role {
            Role::Master => Peer::Master,
            Role::Viewer => {
                let id = client_id.ok_or(ConnectError::MissingClientId)?;
                if !valid_client_id(id) {
                    return Err(ConnectError::InvalidClientId);
                }
                if !self.viewers.contains_key(id) && self.viewers.len() >= self.cfg.max_viewers {
                    return Err(ConnectError::TooManyViewers(self.cfg.max_viewers));
                }
                Peer::Viewer(id.to_string())
            }
        };
        let old = match &peer {
            Peer::Master => self.master.replace(conn),
            Peer::Viewer(id) => self.viewers.insert(id.clone(), conn),
        };
        if let Some(old) = old.filter(|o| *o != conn) {
            self.conns.remove(&old);
            self.out
                .push_back(Output::Close(old, CloseReason::Replaced));
        }
        self.conns.insert(
            conn,
            Conn {
                role,
                client_id: client_id.map(str::to_string),
                tokens: f64::from(self.cfg.burst),
                refilled_ms: now_ms,
            },
        );
        // Deliver what waited for this peer and has not expired.
        if let Some(waiting) = self.pending.remove(&peer) {
            for (expires, msg) in waiting {
                self.pending_bytes = self.pending_bytes.saturating_sub(payload_len(&msg));
                if expires > now_ms {
                    self.out.push_back(Output::Send(conn, msg));
                }
            }
        }
        Ok(())
    }

    /// A connection ended (closed by the peer or by the shell).
    pub fn disconnect(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        match c.role {
            Role::Master => {
                if self.master == Some(conn) {
                    self.master = None;
                }
            }
            Role::Viewer => {
                if let Some(id) = c.client_id
                    && self.viewers.get(&id) == Some(&conn)
                {
                    self.viewers.remove(&id);
                }
            }
        }
    }

    /// A text message from `conn`.
    pub fn receive(&mut self, now_ms: i64, conn: ConnId, text: &str) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let (role, sender) = (c.role, c.client_id.clone());
        // Rate limit first: a flood costs the server as little as possible.
        // The master talks to every viewer, so its messages cost less the
        // more viewers there are (its budget grows with them).
        let cost = match role {
            Role::Master => 1.0 / (1.0 + self.viewers.len() as f64),
            Role::Viewer => 1.0,
        };
        let elapsed = (now_ms - c.refilled_ms).max(0) as f64 / 1000.0;
        c.tokens = (c.tokens + elapsed * f64::from(self.cfg.rate_per_second))
            .min(f64::from(self.cfg.burst));
        c.refilled_ms = now_ms;
        let limited = c.tokens < cost;
        if !limited {
            c.tokens -= cost;
        }
        let msg = match ClientMessage::parse(text, self.cfg.max_payload) {
            Ok(m) => m,
            Err((correlation_id, description)) => {
                return self.status(
                    conn,
                    correlation_id,
                    "InvalidArgumentException",
                    400,
                    description,
                );
            }
        };
        if limited {
            return self.status(
                conn,
                msg.correlation_id,
                "ClientLimitExceededException",
                429,
                "too many messages: slow down".into(),
            );
        }
        let (target, sender_client_id) = match role {
            Role::Viewer => (Peer::Master, sender),
            Role::Master => match msg.recipient_client_id.as_deref() {
                Some(id) if valid_client_id(id) => (Peer::Viewer(id.to_string()), None),
                Some(_) => {
                    return self.status(
                        conn,
                        msg.correlation_id,
                        "InvalidArgumentException",
                        400,
                        "invalid recipientClientId".into(),
                    );
                }
                None => {
                    return self.status(
                        conn,
                        msg.correlation_id,
                        "InvalidArgumentException",
                        400,
                        "a master must name the recipientClientId".into(),
                    );
                }
            },
        };
        let out = ServerMessage {
            sender_client_id,
            message_type: msg.action.into(),
            message_payload: Some(msg.message_payload),
            status_response: None,
        };
        let to = match &target {
            Peer::Master => self.master,
            Peer::Viewer(id) => self.viewers.get(id).copied(),
        };
        let offer_without_master =
            to.is_none() && target == Peer::Master && msg.action == Action::SdpOffer;
        match to {
            Some(to) => self.out.push_back(Output::Send(to, out)),
            None => {
                let len = payload_len(&out);
                if self.pending_bytes + len > self.cfg.max_pending_bytes {
                    return self.status(
                        conn,
                        msg.correlation_id,
                        "ClientLimitExceededException",
                        429,
                        "too many messages wait for peers that are not connected".into(),
                    );
                }
                let q = self.pending.entry(target).or_default();
                while q.len() >= self.cfg.max_pending.max(1) {
                    if let Some((_, old)) = q.pop_front() {
                        self.pending_bytes = self.pending_bytes.saturating_sub(payload_len(&old));
                    }
                }
                q.push_back((now_ms + self.cfg.message_ttl_ms, out));
                self.pending_bytes += len;
                if offer_without_master {
                    self.out.push_back(Output::MasterWanted);
                }
            }
        }
    }

    fn status(
        &mut self,
        conn: ConnId,
        correlation_id: Option<String>,
        error_type: &str,
        code: u16,
        description: String,
    ) {
        self.out.push_back(Output::Send(
            conn,
            ServerMessage::status(correlation_id, error_type, code, description),
        ));
    }

    /// When [`Channel::handle_timeout`] is next due (the earliest expiry of a
    /// kept message), if ever.
    pub fn poll_timeout(&self) -> Option<i64> {
        self.pending
            .values()
            .filter_map(|q| q.front().map(|(e, _)| *e))
            .min()
    }

    /// Drops kept messages whose TTL has passed.
    pub fn handle_timeout(&mut self, now_ms: i64) {
        let mut freed = 0;
        self.pending.retain(|_, q| {
            q.retain(|(e, m)| {
                let keep = *e > now_ms;
                if !keep {
                    freed += payload_len(m);
                }
                keep
            });
            !q.is_empty()
        });
        self.pending_bytes = self.pending_bytes.saturating_sub(freed);
    }

    /// Payload bytes kept for absent peers.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// The server is shutting down: `GO_AWAY` to everyone, then close.
    pub fn go_away(&mut self) {
        let all: Vec<ConnId> = self.conns.keys().copied().collect();
        for c in &all {
            self.out
                .push_back(Output::Send(*c, ServerMessage::go_away()));
        }
        for c in all {
            self.out.push_back(Output::Close(c, CloseReason::GoingAway));
        }
        self.conns.clear();
        self.master = None;
        self.viewers.clear();
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}
