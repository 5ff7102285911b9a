//! The live side of signaling channels: one task per channel in use owns
//! its [`kinema_signaling::Channel`] state machine and the senders of its
//! connections. The HTTP layer turns each WebSocket into a [`Connection`];
//! the server's own master (WebRTC re-publishing of an ingested stream) is
//! a [`Connection`] too, attached when a viewer makes an offer on a channel
//! named after a stream and no other master is connected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kinema_signaling::{Channel, MessageType, Output, ServerMessage};
pub use kinema_signaling::{ChannelConfig, CloseReason, ConnId, ConnectError, Role};
use tokio::sync::{mpsc, oneshot};

use crate::channels::{ChannelInfo, Channels};
use crate::{Clock, EngineError};
use kinema_core::sync::lock;

/// What a connection is sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A text frame (a server message as JSON).
    Text(String),
    /// The channel closed this connection (after any last messages).
    Close(CloseReason),
}

/// The server acting as master on channels named after streams.
pub trait ServerMaster: Send + Sync {
    /// Whether the server can be master of `channel` (a stream of that
    /// name exists). Asked before it joins, so that a channel it cannot
    /// serve keeps its queued offers for a real master.
    fn serves(&self, channel: &str) -> bool;
    /// Takes over `conn` as the master of `channel` if the server can serve
    /// it; otherwise hands it back.
    fn attach(&self, channel: &str, conn: Connection) -> Result<(), Connection>;
}

/// Limits of every channel (the message TTL is each channel's own).
#[derive(Debug, Clone, Copy)]
pub struct SignalingConfig {
    pub channel: ChannelConfig,
    /// Messages queued for one connection before it is dropped as too slow.
    pub outgoing_queue: usize,
    /// The wall clock of the channels' message expiry.
    pub clock: Clock,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            channel: ChannelConfig::default(),
            outgoing_queue: 256,
            clock: Clock::system(),
        }
    }
}

enum Cmd {
    Connect {
        conn: ConnId,
        role: Role,
        client_id: Option<String>,
        ttl_ms: i64,
        out: mpsc::Sender<Outgoing>,
        reply: oneshot::Sender<Result<(), ConnectError>>,
    },
    Receive {
        conn: ConnId,
        text: String,
    },
    Disconnect(ConnId),
    GoAway,
}

/// Queued client messages per channel before a sender waits.
const INBOX: usize = 1024;
/// The server's own master's queue, in units of a connection's queue.
const SERVER_MASTER_QUEUE_FACTOR: usize = 32;

#[derive(Clone)]
struct Task {
    /// Client messages (bounded: a flooding client waits).
    inbox: mpsc::Sender<Cmd>,
    /// Connects, disconnects and shutdown (never refused, never waits).
    control: mpsc::UnboundedSender<Cmd>,
}

/// All live channels. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    channels: Channels,
    cfg: SignalingConfig,
    tasks: Mutex<HashMap<String, Task>>,
    next_conn: AtomicU64,
    master: OnceLock<Arc<dyn ServerMaster>>,
}

/// One connection to a channel: send client messages, receive what the
/// channel sends. Dropping it disconnects.
pub struct Connection {
    pub id: ConnId,
    task: Task,
    out: mpsc::Receiver<Outgoing>,
}

impl Connection {
    /// Hands a client message (JSON text) to the channel. False once the
    /// channel is gone.
    pub async fn send(&self, text: String) -> bool {
        self.task
            .inbox
            .send(Cmd::Receive {
                conn: self.id,
                text,
            })
            .await
            .is_ok()
    }

    /// The next message for this connection; `None` once the channel has
    /// dropped it (closed, replaced, or too slow to read).
    pub async fn recv(&mut self) -> Option<Outgoing> {
        self.out.recv().await
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.task.control.send(Cmd::Disconnect(self.id));
    }
}

impl Hub {
    pub fn new(channels: Channels, cfg: SignalingConfig) -> Hub {
        Hub {
            inner: Arc::new(HubInner {
                channels,
                cfg,
                tasks: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(1),
                master: OnceLock::new(),
            }),
        }
    }

    /// Installs the server's own master (once).
    pub fn set_server_master(&self, master: Arc<dyn ServerMaster>) {
        let _ = self.inner.master.set(master);
    }

    /// Joins the channel `arn` as `role` (a viewer with its client id).
    pub async fn connect(
        &self,
        arn: &str,
        role: Role,
        client_id: Option<&str>,
    ) -> Result<Connection, EngineError> {
        let info = self.inner.channels.describe(None, Some(arn))?;
        let id = ConnId(self.inner.next_conn.fetch_add(1, Ordering::Relaxed));
        // A task that ended between lookup and send is replaced once.
        for _ in 0..2 {
            let task = self.task(&info);
            let (out_tx, out_rx) = mpsc::channel(self.inner.cfg.outgoing_queue.max(1));
            let (reply_tx, reply_rx) = oneshot::channel();
            let sent = task.control.send(Cmd::Connect {
                conn: id,
                role,
                client_id: client_id.map(str::to_string),
                ttl_ms: i64::from(info.message_ttl_seconds) * 1000,
                out: out_tx,
                reply: reply_tx,
            });
            let Ok(()) = sent else {
                self.forget(&info.arn, &task);
                continue;
            };
            let Ok(result) = reply_rx.await else {
                self.forget(&info.arn, &task);
                continue;
            };
            return match result {
                Ok(()) => Ok(Connection {
                    id,
                    task,
                    out: out_rx,
                }),
                Err(e @ ConnectError::TooManyViewers(_)) => {
                    Err(EngineError::ClientLimitExceeded(e.to_string()))
                }
                Err(e) => Err(EngineError::InvalidArgument(e.to_string())),
            };
        }
        Err(EngineError::Internal(
            "the channel task is not running".into(),
        ))
    }

    /// SendAlexaOfferToMaster: delivers an SDP offer to the master as the
    /// viewer `client_id` and waits up to `wait` for the master's answer
    /// (its base64 payload).
    pub async fn offer_to_master(
        &self,
        arn: &str,
        client_id: &str,
        payload: &str,
        wait: Duration,
    ) -> Result<String, EngineError> {
        let mut conn = self.connect(arn, Role::Viewer, Some(client_id)).await?;
        // What waited for this client id (a late answer to an earlier
        // call) is not the answer to this offer.
        while let Ok(Outgoing::Text(_)) = conn.out.try_recv() {}
        let msg = serde_json::json!({ "action": "SDP_OFFER", "messagePayload": payload });
        if !conn.send(msg.to_string()).await {
            return Err(EngineError::Internal("the channel task stopped".into()));
        }
        let answer = tokio::time::timeout(wait, async {
            while let Some(out) = conn.recv().await {
                let Outgoing::Text(text) = out else {
                    break;
                };
                let Ok(m) = serde_json::from_str::<ServerMessage>(&text) else {
                    continue;
                };
                match m.message_type {
                    MessageType::SdpAnswer => return m.message_payload,
                    MessageType::StatusResponse => {
                        return None;
                    }
                    _ => {}
                }
            }
            None
        })
        .await;
        match answer {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(EngineError::InvalidArgument(
                "the offer was refused or the master went away".into(),
            )),
            Err(_) => Err(EngineError::ResourceNotFound(
                "no master answered the offer in time".into(),
            )),
        }
    }

    /// Drops the map entry of a task that has ended, unless another task
    /// already took its place.
    fn forget(&self, arn: &str, task: &Task) {
        let mut tasks = lock(&self.inner.tasks);
        if tasks
            .get(arn)
            .is_some_and(|t| t.control.same_channel(&task.control))
        {
            tasks.remove(arn);
        }
    }

    /// The channel was deleted: GO_AWAY to its connections, then close them.
    pub fn close_channel(&self, arn: &str) {
        if let Some(t) = lock(&self.inner.tasks).get(arn) {
            let _ = t.control.send(Cmd::GoAway);
        }
    }

    /// GO_AWAY to every connection of every channel, then close them.
    pub fn go_away(&self) {
        for t in lock(&self.inner.tasks).values() {
            let _ = t.control.send(Cmd::GoAway);
        }
    }

    fn task(&self, info: &ChannelInfo) -> Task {
        let mut tasks = lock(&self.inner.tasks);
        if let Some(t) = tasks.get(&info.arn)
            && !t.control.is_closed()
        {
            return t.clone();
        }
        let (inbox, inbox_rx) = mpsc::channel(INBOX);
        let (control, control_rx) = mpsc::unbounded_channel();
        let task = Task { inbox, control };
        tasks.insert(info.arn.clone(), task.clone());
        let runner = Runner {
            hub: self.clone(),
            arn: info.arn.clone(),
            name: info.name.clone(),
            channel: Channel::new(ChannelConfig {
                message_ttl_ms: i64::from(info.message_ttl_seconds) * 1000,
                ..self.inner.cfg.channel
            }),
            conns: HashMap::new(),
            task: task.clone(),
        };
        tokio::spawn(runner.run(inbox_rx, control_rx));
        task
    }
}

/// The task of one channel.
struct Runner {
    hub: Hub,
    arn: String,
    name: String,
    channel: Channel,
    conns: HashMap<ConnId, mpsc::Sender<Outgoing>>,
    /// Its own senders, for the server master's connection.
    task: Task,
}

impl Runner {
    fn now_ms(&self) -> i64 {
        self.hub.inner.cfg.clock.now_ms()
    }

    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Cmd>,
        mut control: mpsc::UnboundedReceiver<Cmd>,
    ) {
        loop {
            let deadline = self.channel.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => {
                        let wait = (at - self.now_ms()).max(0) as u64;
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            let cmd = tokio::select! {
                biased;
                c = control.recv() => c,
                c = inbox.recv() => c,
                _ = sleep => {
                    self.channel.handle_timeout(self.now_ms());
                    None
                }
            };
            if let Some(cmd) = cmd {
                self.handle(cmd);
            }
            self.flush();
            // An idle channel (nobody connected, nothing kept) ends its
            // task; the map entry goes under the lock so no connect is lost:
            // a connect that still reaches the closed task retries.
            if self.conns.is_empty() && self.channel.poll_timeout().is_none() {
                let mut tasks = lock(&self.hub.inner.tasks);
                if control.is_empty() && inbox.is_empty() {
                    if tasks
                        .get(&self.arn)
                        .is_some_and(|t| t.control.same_channel(&self.task.control))
                    {
                        tasks.remove(&self.arn);
                    }
                    return;
                }
            }
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        let now = self.now_ms();
        match cmd {
            Cmd::Connect {
                conn,
                role,
                client_id,
                ttl_ms,
                out,
                reply,
            } => {
                if self.channel.config().message_ttl_ms != ttl_ms {
                    self.channel.set_config(ChannelConfig {
                        message_ttl_ms: ttl_ms,
                        ..*self.channel.config()
                    });
                }
                let result = self.channel.connect(now, conn, role, client_id.as_deref());
                if result.is_ok() {
                    self.conns.insert(conn, out);
                }
                let _ = reply.send(result);
            }
            Cmd::Receive { conn, text } => self.channel.receive(now, conn, &text),
            Cmd::Disconnect(conn) => {
                self.channel.disconnect(conn);
                self.conns.remove(&conn);
            }
            Cmd::GoAway => self.channel.go_away(),
        }
    }

    /// Lets the server answer as master if it serves a stream of this
    /// channel's name.
    fn attach_server_master(&mut self, now: i64) {
        let Some(master) = self.hub.inner.master.get().cloned() else {
            return;
        };
        // Joining hands the master the offers that wait: only join when
        // the server can answer them.
        if !master.serves(&self.name) {
            return;
        }
        let id = ConnId(self.hub.inner.next_conn.fetch_add(1, Ordering::Relaxed));
        // The server's master answers every viewer of the channel; its
        // queue is sized for all of them offering at once.
        let queue = self.hub.inner.cfg.outgoing_queue.max(1) * SERVER_MASTER_QUEUE_FACTOR;
        let (out_tx, out_rx) = mpsc::channel(queue);
        if self.channel.connect(now, id, Role::Master, None).is_err() {
            return;
        }
        self.conns.insert(id, out_tx);
        let conn = Connection {
            id,
            task: self.task.clone(),
            out: out_rx,
        };
        if let Err(conn) = master.attach(&self.name, conn) {
            // Undo now, so the offer waits for a real master instead (the
            // disconnect its drop queues then finds nothing).
            self.channel.disconnect(id);
            self.conns.remove(&id);
            drop(conn);
        }
    }

    /// Sends what the channel produced. A connection whose queue is full
    /// reads too slowly: it is dropped rather than slowing the channel.
    fn flush(&mut self) {
        while let Some(out) = self.channel.poll_output() {
            match out {
                Output::MasterWanted => self.attach_server_master(self.now_ms()),
                Output::Send(conn, msg) => {
                    let Some(tx) = self.conns.get(&conn) else {
                        continue;
                    };
                    if tx.try_send(Outgoing::Text(msg.to_json())).is_err() {
                        tracing::info!(channel = %self.name, conn = conn.0, "dropping a connection that reads too slowly");
                        self.channel.disconnect(conn);
                        self.conns.remove(&conn);
                    }
                }
                Output::Close(conn, reason) => {
                    if let Some(tx) = self.conns.remove(&conn) {
                        let _ = tx.try_send(Outgoing::Close(reason));
                    }
                }
            }
        }
    }
}
