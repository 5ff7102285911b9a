//! The configuration file: one typed tree, parsed strictly, then resolved
//! against command-line flags and the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4566";
/// The example secret in samples/config.toml (public, so refused).
pub const SAMPLE_SECRET: &str = "kinema-example-secret-change-me";
pub const DEFAULT_DATA_DIR: &str = "kinema-data";
pub use kinema_core::aws::{DEFAULT_ACCOUNT_ID, DEFAULT_REGION};
pub const DEFAULT_LIVE_BUFFER_SECONDS: u64 = 120;
pub const DEFAULT_RETENTION_CHECK_SECONDS: u64 = 60;
pub const DEFAULT_MAX_FRAGMENT_MB: u64 = 50;
pub const DEFAULT_PLAYBACK_SESSIONS_PER_STREAM: usize = 100;
pub const DEFAULT_PRODUCERS_PER_STREAM: usize = 5;
pub const DEFAULT_READERS_PER_STREAM: usize = 10;
pub const DEFAULT_MAX_FRAGMENT_SECONDS: u64 = 10;
pub const DEFAULT_GET_MEDIA_IDLE_SECONDS: u64 = 3;
pub const DEFAULT_GET_MEDIA_LIVE_IDLE_SECONDS: u64 = 30;
pub const DEFAULT_MAX_RECORD_KIB: u64 = 1024;
pub const DEFAULT_MAX_DATA_STREAMS: usize = 1000;
pub const DEFAULT_EVENTS_STREAM: &str = "kinema-events";
pub const DEFAULT_EVENTS_SHARDS: u32 = 1;
pub const DEFAULT_EVENTS_BUCKET: &str = "kinema-events";
pub const DEFAULT_EVENTS_FRESHNESS_S: u32 = 60;
pub const DEFAULT_INTRA_THREADS: usize = 2;
pub const DEFAULT_INFERENCE_WORKERS: usize = 1;
pub const DEFAULT_QUEUE_FRAMES: usize = 1;
pub const DEFAULT_MAX_DETECTORS: usize = 64;
/// Where `models/fetch.sh` caches the model and the ONNX Runtime library.
pub const DEFAULT_MODELS_DIR: &str = ".cache/kinema/models";
pub const DEFAULT_MODEL_FILE: &str = "ssdlite_mobilenet_v2_coco.onnx";
pub const DEFAULT_RUNTIME_FILE: &str = "libonnxruntime.so";
pub const DEFAULT_TURN_PORT: u16 = 3478;
pub const DEFAULT_TURN_REALM: &str = "kinema";
pub const DEFAULT_CREDENTIAL_TTL_SECONDS: u64 = 300;
pub const DEFAULT_MAX_VIEWERS_PER_CHANNEL: usize = 1_000;
pub const DEFAULT_MAX_VIEWERS_PER_STREAM: usize = 200;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub access_keys: Vec<AccessKey>,
    /// Named IAM policies (`[policies.<name>]`, a TOML table in the IAM
    /// shape, or a string of IAM JSON) that access keys attach.
    #[serde(default)]
    pub policies: std::collections::BTreeMap<String, toml::Value>,
    /// Roles keys may assume through the STS endpoint (`[roles.<name>]`).
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, RoleConfig>,
    #[serde(default)]
    pub video: VideoConfig,
    #[serde(default)]
    pub data_streams: DataStreamsConfig,
    /// Cameras the server pulls (RTSP) or files it loops as cameras.
    #[serde(default)]
    pub sources: Vec<kinema_engine::sources::SourceConfig>,
    #[serde(default)]
    pub detection: DetectionConfig,
    /// Detectors by video stream name: `[detectors.<stream>]`.
    #[serde(default)]
    pub detectors: std::collections::BTreeMap<String, kinema_engine::detection::DetectorSettings>,
    #[serde(default)]
    pub webrtc: WebRtcConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub source_access: SourceAccessConfig,
    /// Cluster mode: fragments in an S3-compatible bucket, index, stream
    /// metadata and leases in NATS JetStream (see ARCHITECTURE.md).
    #[serde(default)]
    pub cluster: Option<kinema_store::ClusterConfig>,
}

/// What sources created through the API may reach (`[source_access]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceAccessConfig {
    #[serde(default)]
    pub media_dirs: Vec<PathBuf>,
    #[serde(default)]
    pub allow_networks: Vec<String>,
}

/// The HTTP edge's limits (`[limits]`); unset values take the defaults of
/// `kinema_api::serve::LimitsConfig`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_connections: Option<usize>,
    pub max_unauthenticated_connections: Option<usize>,
    pub header_read_timeout_seconds: Option<u64>,
    pub body_read_timeout_seconds: Option<u64>,
    pub max_header_kib: Option<usize>,
    pub unauthenticated_body_mib: Option<usize>,
    pub put_media_idle_timeout_seconds: Option<u64>,
    pub put_media_max_duration_seconds: Option<u64>,
}

impl LimitsConfig {
    fn resolve(&self) -> kinema_api::serve::LimitsConfig {
        use std::time::Duration;
        let d = kinema_api::serve::LimitsConfig::default();
        let secs =
            |v: Option<u64>, default: Duration| v.map(Duration::from_secs).unwrap_or(default);
        kinema_api::serve::LimitsConfig {
            max_connections: self.max_connections.unwrap_or(d.max_connections).max(1),
            max_unauthenticated: self
                .max_unauthenticated_connections
                .unwrap_or(d.max_unauthenticated)
                .max(1),
            header_read_timeout: secs(self.header_read_timeout_seconds, d.header_read_timeout)
                .max(Duration::from_secs(1)),
            body_read_timeout: secs(self.body_read_timeout_seconds, d.body_read_timeout)
                .max(Duration::from_secs(1)),
            max_header_bytes: self
                .max_header_kib
                .map(|k| k << 10)
                .unwrap_or(d.max_header_bytes)
                .max(8 << 10),
            unauthenticated_body_bytes: self
                .unauthenticated_body_mib
                .map(|m| m << 20)
                .unwrap_or(d.unauthenticated_body_bytes)
                .max(1 << 20),
            put_media_idle_timeout: secs(
                self.put_media_idle_timeout_seconds,
                d.put_media_idle_timeout,
            )
            .max(Duration::from_secs(1)),
            put_media_max_duration: secs(
                self.put_media_max_duration_seconds,
                d.put_media_max_duration,
            )
            .max(Duration::from_secs(1)),
        }
    }
}

/// Live WebRTC: signaling limits, TURN, and the server as master.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebRtcConfig {
    /// UDP address of the embedded STUN/TURN server ("off" disables it).
    pub turn_listen: Option<String>,
    /// TCP address of the embedded TURN server ("off": UDP only; default:
    /// the UDP address's IP and port).
    pub turn_tcp_listen: Option<String>,
    /// The address relayed candidates carry (default: the listen address).
    pub turn_relay_ip: Option<std::net::IpAddr>,
    /// Host name or address put in the `turn:` URIs handed to clients.
    pub turn_host: Option<String>,
    /// Shared secret of the TURN REST credentials (default: random at start).
    pub turn_secret: Option<String>,
    /// URIs handed out instead of the embedded server's (an external
    /// coturn with `use-auth-secret` and the same `turn_secret`).
    pub turn_uris: Option<Vec<String>>,
    pub credential_ttl_seconds: Option<u64>,
    pub max_viewers_per_channel: Option<usize>,
    pub max_viewers_per_stream: Option<usize>,
    /// The one local address the server's own peers offer as ICE host
    /// candidate (default: every interface).
    pub ice_ip: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DetectionConfig {
    pub runtime_library: Option<PathBuf>,
    pub default_model: Option<PathBuf>,
    pub intra_threads: Option<usize>,
    pub workers: Option<usize>,
    pub queue_frames: Option<usize>,
    pub events_stream: Option<String>,
    pub events_shards: Option<u32>,
    /// A queue to make on the events stream.
    pub events_queue: Option<String>,
    /// A channel to make on the events stream, into `events_bucket`
    /// every `events_freshness_seconds`.
    pub events_channel: Option<String>,
    pub events_bucket: Option<String>,
    pub events_freshness_seconds: Option<u32>,
    /// Where models named through the API must be (default: the default
    /// model's folder).
    pub models_dir: Option<PathBuf>,
    pub max_detectors: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataStreamsConfig {
    pub max_record_kib: Option<u64>,
    pub shard_write_bytes_per_second: Option<u64>,
    pub shard_write_records_per_second: Option<u64>,
    pub max_streams: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub public_url: Option<String>,
    /// HTTPS: a PEM certificate chain and key (the WebRTC SDK for
    /// JavaScript only connects to `wss://` signaling endpoints).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// HTTPS with a certificate made at start for these names (try-out and
    /// tests; clients must be told to trust it).
    pub tls_self_signed: Option<Vec<String>>,
    pub region: Option<String>,
    pub account_id: Option<String>,
    /// When set, `/metrics` answers only `Authorization: Bearer <token>`
    /// (Prometheus's `authorization` scrape setting).
    pub metrics_bearer_token: Option<String>,
}

/// A role (`[roles.<name>]`): its policies, who may assume it, and its
/// longest session.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub policies: Vec<String>,
    /// Access key ids that may assume the role (`"*"`: any key).
    pub trusted_keys: Vec<String>,
    pub max_session_seconds: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
    /// Names of `[policies.*]` the key has. Without the key, it may do
    /// everything (an administrator).
    pub policies: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VideoConfig {
    pub live_buffer_seconds: Option<u64>,
    pub retention_check_seconds: Option<u64>,
    pub max_fragment_mb: Option<u64>,
    pub max_fragment_seconds: Option<u64>,
    pub get_media_idle_seconds: Option<u64>,
    pub get_media_live_idle_seconds: Option<u64>,
    /// Open HLS/DASH sessions allowed per stream.
    pub playback_sessions_per_stream: Option<usize>,
    /// PutMedia uploads, and GetMedia readers, one stream takes at a time.
    pub max_producers_per_stream: Option<usize>,
    pub max_readers_per_stream: Option<usize>,
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }
}

/// The configuration after flags and environment are applied.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub public_url: Option<String>,
    /// Access keys: id, secret and policies.
    pub keys: Vec<(String, String, kinema_iam::Policies)>,
    /// Roles for AssumeRole, by name.
    pub roles: Vec<kinema_api::sts::Role>,
    /// The `[policies.*]`, by name (keys made at run time name them).
    pub named_policies: Vec<(String, kinema_iam::Policy)>,
    pub engine: kinema_engine::EngineConfig,
    pub data_streams: kinema_engine::datastreams::DataStreamsConfig,
    pub retention_check_seconds: u64,
    pub sources: Vec<kinema_engine::sources::SourceConfig>,
    pub playback_sessions_per_stream: usize,
    /// Detection settings; `public_url` is filled in once the server is bound.
    pub detection: kinema_engine::detection::DetectionConfig,
    pub detectors: Vec<(String, kinema_engine::detection::DetectorSettings)>,
    pub tls: Tls,
    pub webrtc: WebRtc,
    pub limits: kinema_api::serve::LimitsConfig,
    pub source_access: kinema_engine::sources::SourceAccess,
    pub metrics_bearer_token: Option<String>,
    pub cluster: Option<kinema_store::ClusterConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Tls {
    Off,
    Pem { cert: PathBuf, key: PathBuf },
    SelfSigned(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct WebRtc {
    /// Embedded TURN server address (None: off).
    pub turn_listen: Option<SocketAddr>,
    /// Whether the address was configured (a default that is taken is only
    /// a warning).
    pub turn_explicit: bool,
    pub turn_tcp_listen: Option<SocketAddr>,
    pub turn_relay_ip: Option<std::net::IpAddr>,
    pub turn_host: Option<String>,
    pub turn_secret: Option<String>,
    pub turn_uris: Option<Vec<String>>,
    pub credential_ttl_seconds: u64,
    pub max_viewers_per_channel: usize,
    pub max_viewers_per_stream: usize,
    pub ice_ip: Option<std::net::IpAddr>,
}

/// `~/.cache/kinema/models/<file>` (`$KINEMA_CACHE/models/<file>` when the
/// setup's cache was moved), unless `env` names another path.
fn model_path(env: &str, file: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(cache) = std::env::var_os("KINEMA_CACHE").filter(|p| !p.is_empty()) {
        return Path::new(&cache).join("models").join(file);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    Path::new(&home).join(DEFAULT_MODELS_DIR).join(file)
}

impl Config {
    /// Applies flags (which win), then the environment's access key.
    pub fn resolve(
        &self,
        listen: Option<SocketAddr>,
        data_dir: Option<PathBuf>,
        env_key: Option<(String, String)>,
    ) -> anyhow::Result<Resolved> {
        let named = |name: &str| -> anyhow::Result<kinema_iam::Policy> {
            let value = self
                .policies
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("no [policies.{name}] for an access key"))?;
            let policy = match value {
                toml::Value::String(json) => kinema_iam::Policy::parse(json),
                table => kinema_iam::Policy::from_value(serde_json::to_value(table)?),
            };
            policy.map_err(|e| anyhow::anyhow!("[policies.{name}]: {e}"))
        };
        let d = &self.detection;
        if d.events_channel.is_none()
            && (d.events_bucket.is_some() || d.events_freshness_seconds.is_some())
        {
            anyhow::bail!(
                "[detection] events_bucket and events_freshness_seconds need events_channel"
            );
        }
        for (key, name) in [
            ("events_queue", &d.events_queue),
            ("events_channel", &d.events_channel),
        ] {
            if let Some(n) = name
                && !kinema_core::names::valid(n, kinema_core::names::MAX_DATA_NAME)
            {
                anyhow::bail!("[detection] {key} must be 1-128 characters of [a-zA-Z0-9_.-]");
            }
        }
        let max_freshness = kinema_engine::datastreams::MAX_FRESHNESS_S;
        if let Some(f) = d.events_freshness_seconds
            && !(1..=max_freshness).contains(&f)
        {
            anyhow::bail!(
                "[detection] events_freshness_seconds must be between 1 and {max_freshness}"
            );
        }
        if let Some(b) = &d.events_bucket
            && !kinema_core::names::valid_bucket(b)
        {
            anyhow::bail!("[detection] events_bucket must be 3-63 characters of [a-z0-9._-]");
        }
        let admin = || kinema_iam::Policies {
            identity: vec![kinema_iam::Policy::allow_all()],
            session: None,
        };
        let mut keys: Vec<(String, String, kinema_iam::Policies)> = Vec::new();
        for k in &self.access_keys {
            let policies = match &k.policies {
                None => admin(),
                Some(names) => kinema_iam::Policies {
                    identity: names.iter().map(|n| named(n)).collect::<Result<_, _>>()?,
                    session: None,
                },
            };
            keys.push((k.id.clone(), k.secret.clone(), policies));
        }
        let keys: Vec<(String, String, kinema_iam::Policies)> = keys
            .into_iter()
            .filter(|(id, secret, _)| {
                // The sample configuration's key is public: never a key.
                let example = secret == SAMPLE_SECRET;
                if example {
                    tracing::warn!(
                        %id,
                        "an access key has the sample configuration's example secret and is \
                         refused: give it a secret of your own"
                    );
                }
                !example
            })
            .collect();
        let mut keys = keys;
        keys.extend(env_key.map(|(id, secret)| (id, secret, admin())));
        let roles = self
            .roles
            .iter()
            .map(|(name, r)| {
                Ok(kinema_api::sts::Role {
                    name: name.clone(),
                    policies: kinema_iam::Policies {
                        identity: r
                            .policies
                            .iter()
                            .map(|n| named(n))
                            .collect::<Result<_, _>>()?,
                        session: None,
                    },
                    trusted: r.trusted_keys.clone(),
                    max_session_seconds: r
                        .max_session_seconds
                        .unwrap_or(kinema_api::sts::MAX_SESSION_SECONDS),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let named_policies = self
            .policies
            .keys()
            .map(|n| Ok((n.clone(), named(n)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let v = &self.video;
        let engine = kinema_engine::EngineConfig {
            region: self
                .server
                .region
                .clone()
                .unwrap_or_else(|| DEFAULT_REGION.into()),
            account_id: self
                .server
                .account_id
                .clone()
                .unwrap_or_else(|| DEFAULT_ACCOUNT_ID.into()),
            ingest: kinema_engine::IngestLimits {
                max_fragment_bytes: v.max_fragment_mb.unwrap_or(DEFAULT_MAX_FRAGMENT_MB)
                    * 1024
                    * 1024,
                max_fragment_duration_ms: v
                    .max_fragment_seconds
                    .unwrap_or(DEFAULT_MAX_FRAGMENT_SECONDS)
                    * 1000,
                ..Default::default()
            },
            live_buffer_ms: (v.live_buffer_seconds.unwrap_or(DEFAULT_LIVE_BUFFER_SECONDS) * 1000)
                as i64,
            get_media_idle_ms: v
                .get_media_idle_seconds
                .unwrap_or(DEFAULT_GET_MEDIA_IDLE_SECONDS)
                * 1000,
            get_media_live_idle_ms: v
                .get_media_live_idle_seconds
                .unwrap_or(DEFAULT_GET_MEDIA_LIVE_IDLE_SECONDS)
                * 1000,
            max_producers_per_stream: v
                .max_producers_per_stream
                .unwrap_or(DEFAULT_PRODUCERS_PER_STREAM)
                .max(1),
            max_readers_per_stream: v
                .max_readers_per_stream
                .unwrap_or(DEFAULT_READERS_PER_STREAM)
                .max(1),
            ..Default::default()
        };
        let d = &self.data_streams;
        let data_streams = kinema_engine::datastreams::DataStreamsConfig {
            region: engine.region.clone(),
            account_id: engine.account_id.clone(),
            max_record_bytes: (d.max_record_kib.unwrap_or(DEFAULT_MAX_RECORD_KIB) * 1024) as usize,
            shard_write_bytes_per_s: d.shard_write_bytes_per_second.unwrap_or(0),
            shard_write_records_per_s: d.shard_write_records_per_second.unwrap_or(0),
            max_streams: d.max_streams.unwrap_or(DEFAULT_MAX_DATA_STREAMS).max(1),
            ..Default::default()
        };
        Ok(Resolved {
            data_streams,
            listen: listen
                .or(self.server.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("the default address parses")),
            data_dir: data_dir
                .or_else(|| self.server.data_dir.clone())
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            public_url: self.server.public_url.clone().filter(|u| !u.is_empty()),
            keys,
            roles,
            named_policies,
            engine,
            retention_check_seconds: v
                .retention_check_seconds
                .unwrap_or(DEFAULT_RETENTION_CHECK_SECONDS)
                .max(1),
            sources: self.sources.clone(),
            detection: {
                let d = &self.detection;
                let default_model = d
                    .default_model
                    .clone()
                    .unwrap_or_else(|| model_path("KINEMA_MODEL", DEFAULT_MODEL_FILE));
                kinema_engine::detection::DetectionConfig {
                    models_dir: d.models_dir.clone().unwrap_or_else(|| {
                        default_model
                            .parent()
                            .map(Path::to_path_buf)
                            .unwrap_or_default()
                    }),
                    max_detectors: d.max_detectors.unwrap_or(DEFAULT_MAX_DETECTORS).max(1),
                    runtime_library: d
                        .runtime_library
                        .clone()
                        .unwrap_or_else(|| model_path("ORT_DYLIB_PATH", DEFAULT_RUNTIME_FILE)),
                    default_model,
                    intra_threads: d.intra_threads.unwrap_or(DEFAULT_INTRA_THREADS).max(1),
                    workers: d.workers.unwrap_or(DEFAULT_INFERENCE_WORKERS).max(1),
                    queue_frames: d.queue_frames.unwrap_or(DEFAULT_QUEUE_FRAMES).max(1),
                    events_stream: d
                        .events_stream
                        .clone()
                        .unwrap_or_else(|| DEFAULT_EVENTS_STREAM.into()),
                    events_shards: d.events_shards.unwrap_or(DEFAULT_EVENTS_SHARDS).max(1),
                    events_queue: d.events_queue.clone(),
                    events_channel: d.events_channel.clone().map(|name| {
                        kinema_engine::detection::EventsChannel {
                            name,
                            bucket: d
                                .events_bucket
                                .clone()
                                .unwrap_or_else(|| DEFAULT_EVENTS_BUCKET.into()),
                            freshness_s: d
                                .events_freshness_seconds
                                .unwrap_or(DEFAULT_EVENTS_FRESHNESS_S),
                        }
                    }),
                    public_url: String::new(),
                }
            },
            detectors: self
                .detectors
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            playback_sessions_per_stream: v
                .playback_sessions_per_stream
                .unwrap_or(DEFAULT_PLAYBACK_SESSIONS_PER_STREAM),
            tls: match (
                &self.server.tls_cert,
                &self.server.tls_key,
                &self.server.tls_self_signed,
            ) {
                (Some(cert), Some(key), _) => Tls::Pem {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                (_, _, Some(names)) => Tls::SelfSigned(names.clone()),
                _ => Tls::Off,
            },
            webrtc: self.webrtc.resolve(listen.or(self.server.listen))?,
            limits: self.limits.resolve(),
            metrics_bearer_token: self
                .server
                .metrics_bearer_token
                .clone()
                .filter(|t| !t.is_empty()),
            cluster: self.cluster.clone(),
            source_access: kinema_engine::sources::SourceAccess {
                media_dirs: self.source_access.media_dirs.clone(),
                allow_networks: self
                    .source_access
                    .allow_networks
                    .iter()
                    .map(|n| n.parse())
                    .collect::<Result<_, String>>()
                    .map_err(|e| anyhow::anyhow!("[source_access] allow_networks: {e}"))?,
            },
        })
    }
}

impl WebRtcConfig {
    fn resolve(&self, http: Option<SocketAddr>) -> anyhow::Result<WebRtc> {
        let http_ip = http
            .map(|a| a.ip())
            .unwrap_or_else(|| std::net::Ipv4Addr::LOCALHOST.into());
        let turn_listen = match self.turn_listen.as_deref() {
            Some("off") => None,
            Some(a) => Some(
                a.parse()
                    .map_err(|e| anyhow::anyhow!("webrtc.turn_listen {a:?}: {e}"))?,
            ),
            // Beside an OS-chosen HTTP port (tests), an OS-chosen TURN port.
            None => Some(SocketAddr::new(
                http_ip,
                if http.is_some_and(|a| a.port() == 0) {
                    0
                } else {
                    DEFAULT_TURN_PORT
                },
            )),
        };
        if self.turn_uris.is_some() && self.turn_secret.as_deref().is_none_or(str::is_empty) {
            anyhow::bail!(
                "webrtc.turn_uris names an external TURN server: set webrtc.turn_secret to its shared secret"
            );
        }
        let turn_tcp_listen = match (self.turn_tcp_listen.as_deref(), turn_listen) {
            (Some("off"), _) | (_, None) => None,
            (Some(a), _) => Some(
                a.parse()
                    .map_err(|e| anyhow::anyhow!("webrtc.turn_tcp_listen {a:?}: {e}"))?,
            ),
            (None, Some(udp)) => Some(udp),
        };
        Ok(WebRtc {
            turn_tcp_listen,
            turn_explicit: self.turn_listen.is_some(),
            turn_listen,
            turn_relay_ip: self.turn_relay_ip,
            turn_host: self.turn_host.clone(),
            turn_secret: self.turn_secret.clone().filter(|s| !s.is_empty()),
            turn_uris: self.turn_uris.clone(),
            credential_ttl_seconds: self
                .credential_ttl_seconds
                .unwrap_or(DEFAULT_CREDENTIAL_TTL_SECONDS)
                .clamp(30, 86_400),
            max_viewers_per_channel: self
                .max_viewers_per_channel
                .unwrap_or(DEFAULT_MAX_VIEWERS_PER_CHANNEL)
                .max(1),
            max_viewers_per_stream: self
                .max_viewers_per_stream
                .unwrap_or(DEFAULT_MAX_VIEWERS_PER_STREAM)
                .max(1),
            ice_ip: self.ice_ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample with its examples in use: a bare `#` before a key or a
    /// table header removed (prose comments start `# `).
    fn with_examples(text: &str) -> String {
        text.lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c == '[' || c.is_ascii_alphabetic()) => {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_sample_config_runs_as_it_is() {
        let text = include_str!("../../../samples/config.toml");
        let cfg = Config::parse(text).expect("samples/config.toml parses");
        // Nothing of a particular machine or camera is in use.
        assert!(cfg.access_keys.is_empty());
        let r = cfg.resolve(None, None, None).unwrap();
        assert!(r.sources.is_empty());
        assert!(r.detectors.is_empty());
        assert!(!r.detection.runtime_library.starts_with("/opt"));
    }

    #[test]
    fn the_sample_config_parses_and_sets_every_section() {
        let text = with_examples(include_str!("../../../samples/config.toml"));
        let cfg = Config::parse(&text).expect("samples/config.toml parses with its examples");
        assert_eq!(cfg.server.listen, Some("127.0.0.1:4566".parse().unwrap()));
        assert_eq!(cfg.access_keys.len(), 1);
        assert_eq!(cfg.video.max_fragment_seconds, Some(10));
        let r = cfg
            .resolve(None, None, Some(("ENV".into(), "secret".into())))
            .unwrap();
        // The sample's own key is an example, and refused.
        let ids: Vec<&str> = r.keys.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(ids, ["ENV"]);
        assert_eq!(r.engine.ingest.max_fragment_bytes, 50 * 1024 * 1024);
        assert_eq!(r.data_streams.max_record_bytes, 1024 * 1024);
        assert_eq!(r.data_streams.shard_write_records_per_s, 0);
        assert_eq!(r.sources.len(), 1);
        assert_eq!(r.sources[0].stream, "front-door");
        assert_eq!(
            r.sources[0].transport,
            kinema_engine::sources::SourceTransport::Tcp
        );
        assert_eq!(r.detection.events_stream, "kinema-events");
        assert_eq!(
            r.detection.events_queue.as_deref(),
            Some("kinema-events-workers")
        );
        assert_eq!(
            r.detection.events_channel,
            Some(kinema_engine::detection::EventsChannel {
                name: "kinema-events-archive".into(),
                bucket: "kinema-events".into(),
                freshness_s: 60,
            })
        );
        for (bad, why) in [
            (
                "events_channel = \"a\"\nevents_freshness_seconds = 0",
                "between 1 and 900",
            ),
            (
                "events_channel = \"a\"\nevents_bucket = \"UP\"",
                "events_bucket must be",
            ),
            ("events_bucket = \"abc\"", "need events_channel"),
            ("events_queue = \"a b\"", "events_queue must be"),
        ] {
            let e = Config::parse(&format!("[detection]\n{bad}\n"))
                .unwrap()
                .resolve(None, None, None)
                .err()
                .unwrap_or_else(|| panic!("{bad} is refused"));
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        assert_eq!(r.detection.intra_threads, 2);
        assert_eq!(r.detectors.len(), 1);
        let (stream, d) = &r.detectors[0];
        assert_eq!(stream, "front-door");
        assert_eq!(d.classes, ["bicycle"]);
        assert_eq!(d.lines.len(), 1);
        assert_eq!(d.lines[0].from, [0.5, 0.2]);
        assert!((d.threshold - 0.4).abs() < 1e-6);
        assert_eq!(r.tls, Tls::Off);
        assert_eq!(
            r.webrtc.turn_listen,
            Some("127.0.0.1:3478".parse().unwrap())
        );
        assert_eq!(r.webrtc.credential_ttl_seconds, 300);
        assert_eq!(r.webrtc.max_viewers_per_stream, 200);
        assert_eq!(r.webrtc.max_viewers_per_channel, 1000);
        let tls = Config::parse(
            "[server]\ntls_self_signed = [\"localhost\"]\n[webrtc]\nturn_listen = \"off\"\n",
        )
        .unwrap()
        .resolve(None, None, None)
        .unwrap();
        assert_eq!(tls.tls, Tls::SelfSigned(vec!["localhost".into()]));
        assert_eq!(tls.webrtc.turn_listen, None);
        assert!(
            Config::parse("[webrtc]\nturn_uris = [\"turn:example.com\"]\n")
                .unwrap()
                .resolve(None, None, None)
                .is_err()
        );
        assert!(
            Config::parse("[webrtc]\nturn_listen = \"nowhere\"\n")
                .unwrap()
                .resolve(None, None, None)
                .is_err()
        );
        let demo = Config::parse(include_str!("../../../samples/demo.toml"))
            .expect("samples/demo.toml parses");
        assert!(demo.detectors.contains_key("market-street"));
    }

    #[test]
    fn the_cluster_sample_parses() {
        let cfg = Config::parse(include_str!("../../../samples/cluster.toml"))
            .expect("samples/cluster.toml parses");
        let r = cfg.resolve(None, None, None).unwrap();
        let c = r.cluster.expect("a [cluster] section");
        assert_eq!(c.nats_urls.len(), 3);
        assert_eq!((c.replicas, c.lease_ms), (3, 6000));
        assert_eq!(c.s3_bucket, "kinema-video");
        assert_eq!(c.node_name(), "kinema-a");
        assert!(
            Config::parse("[cluster]\nnats_urls = []\n").is_err(),
            "a bucket is needed"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Config::parse("[server]\nlisten_addr = \"x\"\n").is_err());
        assert!(Config::parse("").is_ok());
    }
}
