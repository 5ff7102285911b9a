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

#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// UDP address to listen on (port 0: any).
    pub listen: SocketAddr,
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
        let server = Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn: Arc::new(socket),
                relay_addr_generator: Box::new(RelayAddressGeneratorStatic {
                    relay_address: relay_ip,
                    address: addr.ip().to_string(),
                    net: Arc::new(Net::new(None)),
                }),
            }],
            realm: cfg.realm,
            auth_handler: Arc::new(RestAuth { secret: cfg.secret }),
            channel_bind_timeout: std::time::Duration::from_secs(0),
            alloc_close_notify: None,
        })
        .await
        .map_err(|e| RtcError::Turn(e.to_string()))?;
        tracing::info!(%addr, %relay_ip, "TURN server listening (UDP)");
        Ok(TurnServer { server, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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
