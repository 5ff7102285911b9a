//! The embedded STUN/TURN server (webrtc-rs `turn`, RFC 8489 / RFC 8656)
//! on one UDP socket, accepting exactly the TURN REST credentials that
//! GetIceServerConfig vends (`<expiry>:<client id>` and
//! `base64(HMAC-SHA1(secret, username))`) until they expire.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use webrtc::turn::auth::{AuthHandler, generate_auth_key};
use webrtc::turn::relay::relay_static::RelayAddressGeneratorStatic;
use webrtc::turn::server::Server;
use webrtc::turn::server::config::{ConnConfig, ServerConfig};
use webrtc::util::vnet::net::Net;

use crate::RtcError;

mod peers {
    //! Which peers a relay may send to. A TURN server is a way into the
    //! network it stands in: a relay whose own address is public sends to
    //! public addresses only; one on a private network (a LAN deployment)
    //! also to private ones; loopback peers only from a loopback relay
    //! (tests, a single machine). Link-local, multicast, broadcast and
    //! unspecified addresses never.

    use std::net::{IpAddr, SocketAddr};
    use std::sync::Arc;

    use webrtc::turn::relay::RelayAddressGenerator;
    use webrtc::util::{Conn, Error};

    /// Whether a relay at `relay` may send to `peer` (IPv4 written as IPv6
    /// is judged as IPv4; carrier-grade NAT counts as private).
    pub(super) fn allowed(relay: IpAddr, peer: IpAddr) -> bool {
        use kinema_core::net::{Reach, reach};
        match reach(peer) {
            Reach::Never => false,
            Reach::Loopback => reach(relay) == Reach::Loopback,
            Reach::Private => matches!(reach(relay), Reach::Loopback | Reach::Private),
            Reach::Public => true,
        }
    }

    pub(super) struct Guarded<G> {
        pub(super) inner: G,
        pub(super) relay_ip: IpAddr,
    }

    #[async_trait::async_trait]
    impl<G: RelayAddressGenerator + Send + Sync> RelayAddressGenerator for Guarded<G> {
        fn validate(&self) -> Result<(), webrtc::turn::Error> {
            self.inner.validate()
        }

        async fn allocate_conn(
            &self,
            use_ipv4: bool,
            requested_port: u16,
        ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), webrtc::turn::Error> {
            let (conn, addr) = self.inner.allocate_conn(use_ipv4, requested_port).await?;
            let guarded: Arc<dyn Conn + Send + Sync> = Arc::new(GuardedConn {
                inner: conn,
                relay_ip: self.relay_ip,
            });
            Ok((guarded, addr))
        }
    }

    /// A relay socket that drops what it may not send.
    struct GuardedConn {
        inner: Arc<dyn Conn + Send + Sync>,
        relay_ip: IpAddr,
    }

    #[async_trait::async_trait]
    impl Conn for GuardedConn {
        async fn connect(&self, addr: SocketAddr) -> Result<(), Error> {
            self.inner.connect(addr).await
        }
        async fn recv(&self, buf: &mut [u8]) -> Result<usize, Error> {
            self.inner.recv(buf).await
        }
        async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), Error> {
            self.inner.recv_from(buf).await
        }
        async fn send(&self, buf: &[u8]) -> Result<usize, Error> {
            self.inner.send(buf).await
        }
        async fn send_to(&self, buf: &[u8], target: SocketAddr) -> Result<usize, Error> {
            if !allowed(self.relay_ip, target.ip()) {
                tracing::debug!(%target, "TURN: dropped a packet for a forbidden peer");
                return Ok(buf.len());
            }
            self.inner.send_to(buf, target).await
        }
        fn local_addr(&self) -> Result<SocketAddr, Error> {
            self.inner.local_addr()
        }
        fn remote_addr(&self) -> Option<SocketAddr> {
            self.inner.remote_addr()
        }
        async fn close(&self) -> Result<(), Error> {
            self.inner.close().await
        }
        fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
            self
        }
    }

    #[cfg(test)]
    mod tests {
        use super::allowed;

        #[test]
        fn relays_reach_only_the_networks_they_stand_in() {
            let ip = |s: &str| s.parse().unwrap();
            let public = ip("203.0.113.7");
            assert!(allowed(public, ip("198.51.100.1")));
            assert!(!allowed(public, ip("127.0.0.1")));
            assert!(!allowed(public, ip("10.0.0.5")));
            assert!(!allowed(public, ip("192.168.1.2")));
            assert!(!allowed(public, ip("169.254.169.254")));
            assert!(!allowed(public, ip("::1")));
            assert!(!allowed(public, ip("fd00::1")));
            let lan = ip("192.168.1.10");
            assert!(allowed(lan, ip("192.168.1.2")));
            assert!(allowed(lan, ip("198.51.100.1")));
            assert!(!allowed(lan, ip("127.0.0.1")));
            let lo = ip("127.0.0.1");
            assert!(allowed(lo, ip("127.0.0.1")));
            assert!(allowed(lo, ip("10.0.0.5")));
            assert!(!allowed(lo, ip("224.0.0.1")));
            assert!(!allowed(lo, ip("0.0.0.0")));
            // IPv4 written as IPv6 is judged as IPv4; carrier-grade NAT
            // is a private network.
            assert!(!allowed(public, ip("::ffff:127.0.0.1")));
            assert!(!allowed(public, ip("::ffff:10.0.0.5")));
            assert!(!allowed(public, ip("64:ff9b::a9fe:a9fe")));
            assert!(!allowed(public, ip("100.64.0.1")));
            assert!(allowed(lan, ip("100.64.0.1")));
        }
    }
}

mod tcp {
    //! TURN over TCP (RFC 8656 §12.5) for the webrtc-rs server, whose
    //! listeners are packet connections: each accepted stream is cut into
    //! whole STUN messages and ChannelData messages (padded to four bytes
    //! on streams) and handed to the server as packets from the client's
    //! address; packets to that address are written back to its stream.

    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use webrtc::util::{Conn, Error};

    use crate::RtcError;

    /// Packets received and not yet read by the server.
    const INBOX: usize = 256;
    /// Packets queued for one client before more are dropped (as UDP would).
    const OUTBOX: usize = 256;
    /// Open TCP clients at once.
    const MAX_CLIENTS: usize = 1024;
    /// How long a new connection may take to send its first message.
    const FIRST_MESSAGE: std::time::Duration = std::time::Duration::from_secs(10);
    /// How long a connection may stay silent.
    const IDLE: std::time::Duration = std::time::Duration::from_secs(600);

    type Writers = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>>;

    pub(super) struct TcpPackets {
        addr: SocketAddr,
        inbox: tokio::sync::Mutex<mpsc::Receiver<(Bytes, SocketAddr)>>,
        writers: Writers,
        accept: tokio::task::JoinHandle<()>,
    }

    use kinema_core::sync::lock;

    /// Reads one framed message: STUN (first two bits 00, 20-byte header)
    /// or ChannelData (01, 4-byte header, padded to four bytes).
    async fn read_message(r: &mut (impl AsyncReadExt + Unpin)) -> Option<Bytes> {
        let mut head = [0u8; 4];
        r.read_exact(&mut head).await.ok()?;
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let (total, keep) = match head[0] >> 6 {
            0 => (20 + len, 20 + len),
            1 => (4 + len.div_ceil(4) * 4, 4 + len),
            _ => return None,
        };
        let mut msg = vec![0u8; total];
        msg[..4].copy_from_slice(&head);
        r.read_exact(&mut msg[4..]).await.ok()?;
        msg.truncate(keep);
        Some(Bytes::from(msg))
    }

    impl TcpPackets {
        pub(super) async fn bind(addr: SocketAddr) -> Result<TcpPackets, RtcError> {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| RtcError::Turn(format!("cannot bind TCP {addr}: {e}")))?;
            let addr = listener
                .local_addr()
                .map_err(|e| RtcError::Turn(e.to_string()))?;
            let (tx, rx) = mpsc::channel(INBOX);
            let writers: Writers = Arc::default();
            let w = writers.clone();
            let accept = tokio::spawn(async move {
                while let Ok((stream, peer)) = listener.accept().await {
                    if lock(&w).len() >= MAX_CLIENTS {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let (mut rd, mut wr) = stream.into_split();
                    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(OUTBOX);
                    lock(&w).insert(peer, out_tx.clone());
                    let writer = tokio::spawn(async move {
                        while let Some(b) = out_rx.recv().await {
                            if wr.write_all(&b).await.is_err() {
                                return;
                            }
                        }
                    });
                    let (tx, w) = (tx.clone(), w.clone());
                    tokio::spawn(async move {
                        // A client must speak within FIRST_MESSAGE, then at
                        // least every IDLE (allocations refresh well within).
                        let mut wait = FIRST_MESSAGE;
                        while let Ok(Some(msg)) =
                            tokio::time::timeout(wait, read_message(&mut rd)).await
                        {
                            wait = IDLE;
                            if tx.send((msg, peer)).await.is_err() {
                                break;
                            }
                        }
                        writer.abort();
                        let mut writers = lock(&w);
                        if writers.get(&peer).is_some_and(|t| t.same_channel(&out_tx)) {
                            writers.remove(&peer);
                        }
                    });
                }
            });
            Ok(TcpPackets {
                addr,
                inbox: tokio::sync::Mutex::new(rx),
                writers,
                accept,
            })
        }

        pub(super) fn addr(&self) -> SocketAddr {
            self.addr
        }
    }

    impl Drop for TcpPackets {
        fn drop(&mut self) {
            self.accept.abort();
        }
    }

    #[async_trait::async_trait]
    impl Conn for TcpPackets {
        async fn connect(&self, _addr: SocketAddr) -> Result<(), Error> {
            Err(Error::Other(
                "TURN over TCP accepts, it does not connect".into(),
            ))
        }

        async fn recv(&self, buf: &mut [u8]) -> Result<usize, Error> {
            self.recv_from(buf).await.map(|(n, _)| n)
        }

        async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), Error> {
            let Some((msg, peer)) = self.inbox.lock().await.recv().await else {
                return Err(Error::Other("the TURN TCP listener stopped".into()));
            };
            let n = msg.len().min(buf.len());
            buf[..n].copy_from_slice(&msg[..n]);
            Ok((n, peer))
        }

        async fn send(&self, _buf: &[u8]) -> Result<usize, Error> {
            Err(Error::Other("TURN over TCP sends to an address".into()))
        }

        async fn send_to(&self, buf: &[u8], target: SocketAddr) -> Result<usize, Error> {
            let mut data = buf.to_vec();
            // ChannelData on a stream is padded to a multiple of four.
            if buf.first().is_some_and(|b| b >> 6 == 1) {
                data.resize(buf.len().div_ceil(4) * 4, 0);
            }
            let tx = lock(&self.writers).get(&target).cloned();
            if let Some(tx) = tx {
                // A full queue drops the packet, as a congested UDP path would.
                let _ = tx.try_send(Bytes::from(data));
            }
            Ok(buf.len())
        }

        fn local_addr(&self) -> Result<SocketAddr, Error> {
            Ok(self.addr)
        }

        fn remote_addr(&self) -> Option<SocketAddr> {
            None
        }

        /// Nothing: the server calls this on its listener whenever one
        /// allocation ends; the listener lives until it is dropped.
        async fn close(&self) -> Result<(), Error> {
            Ok(())
        }

        fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
            self
        }
    }
}

#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// UDP address to listen on (port 0: any).
    pub listen: SocketAddr,
    /// TCP address to listen on too (RFC 8656 TURN over TCP; the relayed
    /// side stays UDP), if any.
    pub tcp_listen: Option<SocketAddr>,
    /// The address relayed candidates carry (the listen address if unset
    /// and not a wildcard).
    pub relay_ip: Option<IpAddr>,
    pub realm: String,
    /// Shared secret of the TURN REST credentials.
    pub secret: String,
}

/// A running TURN server; closed on [`TurnServer::close`].
pub struct TurnServer {
    server: Server,
    addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
}

/// Checks TURN REST usernames and derives their keys from the secret.
struct RestAuth {
    secret: String,
}

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src: SocketAddr,
    ) -> Result<Vec<u8>, webrtc::turn::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if !kinema_signaling::turn_username_current(username, now) {
            tracing::info!(%src, username, "TURN: refused an expired or malformed username");
            return Err(webrtc::turn::Error::Other(format!(
                "expired or malformed username {username}"
            )));
        }
        let password = kinema_signaling::turn_password(&self.secret, username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

impl TurnServer {
    pub async fn start(cfg: TurnConfig) -> Result<TurnServer, RtcError> {
        let socket = UdpSocket::bind(cfg.listen)
            .await
            .map_err(|e| RtcError::Turn(format!("cannot bind {}: {e}", cfg.listen)))?;
        let addr = socket
            .local_addr()
            .map_err(|e| RtcError::Turn(e.to_string()))?;
        let relay_ip = match cfg.relay_ip {
            Some(ip) => ip,
            None if !addr.ip().is_unspecified() => addr.ip(),
            None => {
                return Err(RtcError::Turn(
                    "turn_relay_ip is required when TURN listens on every interface".into(),
                ));
            }
        };
        // Relays are bound on the listen address (all interfaces for a
        // wildcard) and advertised as `relay_ip`.
        let relays = || {
            Box::new(peers::Guarded {
                inner: RelayAddressGeneratorStatic {
                    relay_address: relay_ip,
                    address: addr.ip().to_string(),
                    net: Arc::new(Net::new(None)),
                },
                relay_ip,
            })
        };
        let mut conn_configs = vec![ConnConfig {
            conn: Arc::new(socket),
            relay_addr_generator: relays(),
        }];
        let mut tcp_addr = None;
        if let Some(tcp) = cfg.tcp_listen {
            let conn = tcp::TcpPackets::bind(tcp).await?;
            tcp_addr = Some(conn.addr());
            conn_configs.push(ConnConfig {
                conn: Arc::new(conn),
                relay_addr_generator: relays(),
            });
        }
        let server = Server::new(ServerConfig {
            conn_configs,
            realm: cfg.realm,
            auth_handler: Arc::new(RestAuth { secret: cfg.secret }),
            channel_bind_timeout: std::time::Duration::from_secs(0),
            alloc_close_notify: None,
        })
        .await
        .map_err(|e| RtcError::Turn(e.to_string()))?;
        tracing::info!(%addr, tcp = ?tcp_addr, %relay_ip, "TURN server listening");
        Ok(TurnServer {
            server,
            addr,
            tcp_addr,
        })
    }

    /// The UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TCP address, when TURN over TCP is on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    pub async fn close(&self) {
        let _ = self.server.close().await;
    }
}

/// Allocates a relay on the TURN server at `server` (UDP) with the given
/// credentials and releases it: Ok(the relayed address) proves the server
/// accepts them. For checks of a deployment (embedded TURN or coturn) and
/// for tests.
pub async fn probe_allocation(
    server: SocketAddr,
    username: &str,
    password: &str,
) -> Result<SocketAddr, RtcError> {
    use webrtc::turn::client::{Client, ClientConfig};
    use webrtc::util::Conn;
    let local: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("a literal socket address");
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| RtcError::Turn(e.to_string()))?;
    let client = Client::new(ClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: server.to_string(),
        username: username.to_string(),
        password: password.to_string(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(socket),
        vnet: None,
    })
    .await
    .map_err(|e| RtcError::Turn(e.to_string()))?;
    client
        .listen()
        .await
        .map_err(|e| RtcError::Turn(e.to_string()))?;
    let result = match client.allocate().await {
        Ok(relay) => {
            let addr = relay
                .local_addr()
                .map_err(|e| RtcError::Turn(e.to_string()));
            let _ = relay.close().await;
            addr
        }
        Err(e) => Err(RtcError::Turn(e.to_string())),
    };
    let _ = client.close().await;
    result
}
