//! The `kinema` binary's library half: configuration and the function that
//! wires the store, the engine and the HTTP API into a running server.

pub mod admin;
pub mod client_args;
pub mod config;
pub mod events;
pub mod get_media;
pub mod logging;
pub mod put_media;

use std::sync::Arc;
use std::time::Duration;

use kinema_api::{AppState, KeyStore, Metrics};
use kinema_engine::Engine;
use kinema_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Signaling channels one server keeps (the service's default account limit).
const MAX_SIGNALING_CHANNELS: usize = 10_000;

/// A fresh secret for signing shard iterators and page tokens (they do
/// not outlive the process).
fn iterator_key() -> anyhow::Result<[u8; 32]> {
    use std::io::Read;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(key)
}

/// A secret every node of a cluster shares: made by the first node that
/// needs it, kept in the cluster's documents.
async fn shared_key(cluster: &kinema_store::Cluster, name: &str) -> anyhow::Result<[u8; 32]> {
    let fresh = iterator_key()?;
    let kept = cluster.create_doc(name, fresh.to_vec().into()).await?;
    kept.as_ref()
        .try_into()
        .map_err(|_| anyhow::anyhow!("the cluster's {name} is not a 32-byte key"))
}

/// Descriptors kept for everything but client connections beyond the
/// data streams' active segments: TURN and WebRTC sockets, GStreamer,
/// files opened for a moment (fragments, index appends, older segments).
const DESCRIPTOR_RESERVE: u64 = 512;

/// Raises the soft open-file limit to the hard one, then fits the
/// connection caps inside it, warning when the configured ones cannot
/// hold: running out of descriptors stops the server accepting anything.
fn fit_descriptors(cfg: &mut config::Resolved) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (limit.current, limit.maximum)
        && cur < max
    {
        let raised = Rlimit {
            current: Some(max),
            maximum: Some(max),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    let Some(open_files) = limit.current else {
        return;
    };
    let reserve = cfg.data_streams.max_streams as u64 + DESCRIPTOR_RESERVE;
    let room = open_files.saturating_sub(reserve).max(64) as usize;
    let l = &mut cfg.limits;
    if l.max_connections > room {
        tracing::warn!(
            open_files,
            configured = l.max_connections,
            connections = room,
            "the open-file limit cannot hold the configured connections and data streams; \
             connections are capped lower (raise `ulimit -n` or lower [limits] max_connections)"
        );
        l.max_connections = room;
    }
    l.max_unauthenticated = l.max_unauthenticated.min(l.max_connections);
}

/// The key that signs session tokens and derives temporary secrets: made
/// at first start and kept in the data directory (readable by the server
/// only), so temporary credentials outlive a restart.
fn session_key(data_dir: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("sts.key");
    if let Ok(bytes) = std::fs::read(&path) {
        return bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()));
    }
    let key = iterator_key()?;
    std::fs::create_dir_all(data_dir)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(&key)?;
    f.sync_all()?;
    Ok(key)
}

/// Runs the server on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    cfg: config::Resolved,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut cfg = cfg;
    fit_descriptors(&mut cfg);
    let store = match &cfg.cluster {
        Some(c) => Store::open_cluster(&cfg.data_dir, c).await?,
        None => Store::open_local(&cfg.data_dir)?,
    };
    let engine = Engine::open(store.clone(), cfg.engine.clone()).await?;
    let datastreams = kinema_engine::datastreams::DataStreams::open(
        store.clone(),
        cfg.data_streams.clone(),
        iterator_key()?,
    )
    .await?;
    if cfg.keys.is_empty() {
        tracing::warn!("no access keys configured: every signed request will be refused");
    }
    let sources = kinema_engine::sources::Sources::start(
        engine.clone(),
        cfg.sources.clone(),
        cfg.source_access.clone(),
    )
    .await?;
    let addr = listener.local_addr()?;
    let mut detection = cfg.detection.clone();
    detection.public_url = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let detectors = kinema_engine::detection::Detectors::start(
        engine.clone(),
        datastreams.clone(),
        detection,
        cfg.detectors.clone(),
    )
    .await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let channels = kinema_engine::channels::Channels::open(
        store.clone(),
        &cfg.engine.region,
        &cfg.engine.account_id,
        MAX_SIGNALING_CHANNELS,
        cfg.engine.clock,
    )
    .await?;
    let w = &cfg.webrtc;
    let hub = kinema_engine::signaling::Hub::new(
        channels.clone(),
        kinema_engine::signaling::SignalingConfig {
            channel: kinema_signaling::ChannelConfig {
                max_viewers: w.max_viewers_per_channel,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let live = kinema_engine::live::Live::new(
        engine.clone(),
        kinema_engine::live::LiveConfig {
            rtc: kinema_rtc::RtcConfig {
                ice_ip: w.ice_ip,
                ice_servers: Vec::new(),
            },
            max_viewers_per_stream: w.max_viewers_per_stream,
        },
    )?;
    hub.set_server_master(Arc::new(live.clone()));
    let turn_secret = match &w.turn_secret {
        Some(s) => s.clone(),
        None => hex::encode(iterator_key()?),
    };
    let turn = match w.turn_listen {
        Some(listen) => {
            let started = kinema_rtc::turn::TurnServer::start(kinema_rtc::turn::TurnConfig {
                listen,
                tcp_listen: w.turn_tcp_listen.map(|tcp| {
                    // With an OS-chosen UDP port, TCP chooses its own too.
                    if listen.port() == 0 {
                        std::net::SocketAddr::new(tcp.ip(), 0)
                    } else {
                        tcp
                    }
                }),
                relay_ip: w.turn_relay_ip,
                realm: config::DEFAULT_TURN_REALM.into(),
                secret: turn_secret.clone(),
            })
            .await;
            match started {
                Ok(t) => Some(t),
                Err(e) if !w.turn_explicit => {
                    tracing::warn!(error = %e, "no embedded TURN server (set webrtc.turn_listen)");
                    None
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => None,
    };
    let ice_uris = match (&w.turn_uris, &turn) {
        (Some(uris), _) => Some(uris.clone()),
        (None, Some(t)) => {
            let a = t.local_addr();
            let host = w.turn_host.clone().unwrap_or_else(|| match a.ip() {
                ip if ip.is_unspecified() => addr.ip().to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            });
            let mut uris = vec![format!("turn:{host}:{}?transport=udp", a.port())];
            if let Some(tcp) = t.tcp_addr() {
                uris.push(format!("turn:{host}:{}?transport=tcp", tcp.port()));
            }
            uris.push(format!("stun:{host}:{}", a.port()));
            Some(uris)
        }
        (None, None) => None,
    };
    let tls = match &cfg.tls {
        config::Tls::Off => None,
        config::Tls::Pem { cert, key } => {
            Some(kinema_api::tls::TlsIdentity::from_pem_files(cert, key)?)
        }
        config::Tls::SelfSigned(names) => {
            let id = kinema_api::tls::TlsIdentity::self_signed(names)?;
            let pem = cfg.data_dir.join("self-signed.pem");
            std::fs::write(&pem, id.certificate_pem())?;
            tracing::info!(certificate = %pem.display(), "made a self-signed TLS certificate");
            Some(id)
        }
    };
    let state = Arc::new(AppState {
        engine: engine.clone(),
        datastreams,
        sources: sources.clone(),
        detectors: detectors.clone(),
        channels,
        hub: hub.clone(),
        live: live.clone(),
        ice: ice_uris.map(|uris| kinema_api::signaling::IceSettings {
            uris,
            secret: turn_secret,
            ttl_seconds: w.credential_ttl_seconds,
        }),
        tls: tls.is_some(),
        keys: KeyStore::with_policies(cfg.keys.clone())
            .with_named_policies(cfg.named_policies.clone())
            .in_region(&cfg.engine.region)
            .with_sessions(kinema_api::sts::Sessions {
                key: match store.cluster() {
                    Some(c) => shared_key(c, "sts-key").await?,
                    None => session_key(&cfg.data_dir)?,
                },
                roles: cfg
                    .roles
                    .iter()
                    .map(|r| (r.name.clone(), r.clone()))
                    .collect(),
                account_id: cfg.engine.account_id.clone(),
            }),
        token_key: match store.cluster() {
            // Page tokens made on one node are read on another.
            Some(c) => shared_key(c, "page-token-key").await?,
            None => iterator_key()?,
        },
        metrics_token: cfg.metrics_bearer_token.clone(),
        limits: Arc::new(kinema_api::serve::Limits::new(cfg.limits.clone())),
        metrics: Metrics::new(sources.clone(), detectors.clone(), live.clone()),
        public_url: cfg.public_url.clone(),
        playback: {
            let playback = kinema_engine::playback::Playback::new(
                engine.clone(),
                cfg.playback_sessions_per_stream,
            );
            match store.cluster() {
                // A session opened on one node plays from every node.
                Some(c) => playback.with_signed_tokens(shared_key(c, "playback-token-key").await?),
                None => playback,
            }
        },
        shutdown: stop_rx.clone(),
    });
    // Keys and policies made at run time by earlier runs.
    if let Some(sessions) = state.keys.sessions() {
        let server_key = sessions.key;
        // In a cluster, keys and policies changed on any node.
        let changes = engine
            .watch_shared_document(kinema_api::admin::META_DOC)
            .await?;
        kinema_api::admin::load(&state.keys, &engine, &server_key)
            .await
            .map_err(|e| anyhow::anyhow!("loading saved access keys: {e}"))?;
        if let Some(mut changes) = changes {
            let (state, engine) = (state.clone(), engine.clone());
            tokio::spawn(async move {
                while changes.recv().await.is_some() {
                    if let Err(e) = kinema_api::admin::load(&state.keys, &engine, &server_key).await
                    {
                        tracing::error!(error = %e, "reloading access keys changed on another node");
                    }
                }
            });
        }
    }
    let mut retention_stop = stop_rx.clone();
    let retention = tokio::spawn({
        let engine = engine.clone();
        let every = Duration::from_secs(cfg.retention_check_seconds);
        async move {
            engine
                .run_retention(every, async move {
                    let _ = retention_stop.changed().await;
                })
                .await
        }
    });
    let mut ds_stop = stop_rx.clone();
    let ds_retention = tokio::spawn({
        let ds = state.datastreams.clone();
        let every = Duration::from_secs(cfg.retention_check_seconds);
        async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = ds_stop.changed() => return,
                    _ = tick.tick() => {
                        if let Err(e) = ds.enforce_retention(ds.config().clock.now_ms()).await {
                            tracing::error!(error = %e, "data-stream retention failed");
                        }
                    }
                }
            }
        }
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(data_dir = %cfg.data_dir.display(), "listening on {scheme}://{addr}");
    let result = kinema_api::serve(listener, tls, state, async move {
        shutdown.await;
        tracing::info!("shutting down");
        hub.go_away();
        let _ = stop_tx.send(true);
    })
    .await;
    if let Some(t) = &turn {
        t.close().await;
    }
    sources.shutdown().await;
    detectors.shutdown().await;
    let _ = retention.await;
    let _ = ds_retention.await;
    Ok(result?)
}
