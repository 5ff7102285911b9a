//! The HTTP edge of Kinema: the only crate that knows axum, HTTP and the AWS
//! wire shapes. Every request but `/health` and `/metrics` is verified with
//! SigV4 before it reaches a handler; handlers translate JSON into engine
//! calls and engine errors into AWS error shapes.

mod channels;
mod detectors;
pub mod error;
mod kinesis;
pub mod metrics;
pub mod playback;
mod push;
pub mod signaling;
pub mod sigv4;
mod sources;
pub mod tls;
mod video;
mod web;

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kinema_engine::Engine;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::ApiError;
pub use metrics::Metrics;
pub use sigv4::KeyStore;

/// Largest non-streaming request body accepted.
const MAX_JSON_BODY: usize = 1 << 20;
/// Largest streaming upload whose body hash (rather than an empty or
/// `UNSIGNED-PAYLOAD` hash) is verified by reading it whole first.
const MAX_HASHED_UPLOAD: usize = 64 << 20;

/// Shared state of all handlers.
pub struct AppState {
    pub engine: Engine,
    pub datastreams: kinema_engine::datastreams::DataStreams,
    pub sources: kinema_engine::sources::Sources,
    pub detectors: kinema_engine::detection::Detectors,
    pub channels: kinema_engine::channels::Channels,
    /// Live signaling channels (WebSocket connections and their messages).
    pub hub: kinema_engine::signaling::Hub,
    /// The server's own WebRTC peers (as master, and WHEP).
    pub live: kinema_engine::live::Live,
    /// TURN servers and their shared secret for GetIceServerConfig (none:
    /// an empty list).
    pub ice: Option<signaling::IceSettings>,
    /// Whether the listener speaks TLS (endpoints are then `https://` and
    /// `wss://`).
    pub tls: bool,
    pub keys: KeyStore,
    pub metrics: Arc<Metrics>,
    /// HLS and DASH playback sessions.
    pub playback: kinema_engine::playback::Playback,
    /// Base URL returned by GetDataEndpoint; derived from `Host` when unset.
    pub public_url: Option<String>,
    /// Flips to `true` when the server shuts down, ending long-lived streams.
    pub shutdown: watch::Receiver<bool>,
}

/// The full router.
pub fn router(state: Arc<AppState>) -> Router {
    let signed = video::routes()
        .route("/", post(kinesis::dispatch).get(signaling::connect))
        .route(
            "/v1/get-ice-server-config",
            post(signaling::get_ice_server_config),
        )
        .route(
            "/v1/send-alexa-offer-to-master",
            post(signaling::send_alexa_offer_to_master),
        )
        .route("/v1/datastreams/{stream}/subscribe", get(push::subscribe))
        .route(
            "/v1/datastreams/{stream}/groups/{group}",
            get(push::group_state),
        )
        .route(
            "/v1/datastreams/{stream}/groups/{group}/{action}",
            post(push::group_action),
        )
        .route("/v1/whep/{stream}", post(signaling::whep_offer))
        .route(
            "/v1/whep/{stream}/{id}",
            axum::routing::delete(signaling::whep_delete).patch(signaling::whep_patch),
        )
        .route("/v1/sources", get(sources::list).post(sources::create))
        .route(
            "/v1/sources/{name}",
            get(sources::get).delete(sources::delete),
        )
        .route("/v1/detectors", get(detectors::list))
        .route(
            "/v1/detectors/{stream}",
            get(detectors::get)
                .put(detectors::put)
                .delete(detectors::delete),
        )
        .route("/v1/replay/{stream}", get(detectors::replay))
        .route(
            "/getHLSStreamingSessionURL",
            post(playback::get_hls_streaming_session_url),
        )
        .route(
            "/getDASHStreamingSessionURL",
            post(playback::get_dash_streaming_session_url),
        )
        .route("/getClip", post(playback::get_clip))
        .route("/getImages", post(playback::get_images))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state.clone());
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(render_metrics))
        .route("/web", get(web::index))
        .route("/web/", get(web::index))
        .route("/web/{file}", get(web::file))
        .merge(playback_routes())
        .merge(signed)
        .fallback(post(unknown_operation).get(unknown_operation))
        .with_state(state)
}

/// Session reads: players cannot sign requests, so these are authorised by
/// the session token, and any web page may read them (CORS), as with the
/// original service.
fn playback_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/hls/v1/getHLSMasterPlaylist.m3u8",
            get(playback::hls_master),
        )
        .route("/hls/v1/getHLSMediaPlaylist.m3u8", get(playback::hls_media))
        .route("/dash/v1/getDASHManifest.mpd", get(playback::dash_manifest))
        .merge(playback::segment_routes())
        .layer(middleware::map_response(|mut resp: Response| async move {
            resp.headers_mut().insert(
                http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                http::HeaderValue::from_static("*"),
            );
            resp
        }))
}

async fn render_metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

async fn unknown_operation() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "UnknownOperationException",
        "no such operation",
    )
}

/// Serves until `shutdown` resolves; with a TLS identity, HTTPS only.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tls::TlsIdentity>,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = router(state);
    match tls {
        None => {
            // Small messages (signaling, ACK lines) go out at once.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(identity) => {
            let listener =
                tls::TlsListener::new(listener, identity).map_err(std::io::Error::other)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Routes whose request body is a long-lived stream: their payload is
/// signed as `UNSIGNED-PAYLOAD`, or (curl's `--aws-sigv4`, which cannot hash
/// a pipe) as the hash of an empty body.
fn is_streaming_upload(path: &str) -> bool {
    path == "/putMedia"
}

async fn authenticate(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let claimed = parts
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let streaming = is_streaming_upload(parts.uri.path());
    // A streaming upload's body may be hashed only when its whole length is
    // declared and bounded; otherwise it is signed as UNSIGNED-PAYLOAD or,
    // as `curl -T -` does, over an empty payload.
    let hashable_length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .filter(|n| *n <= MAX_HASHED_UPLOAD);
    let verify = |hash: &str| {
        sigv4::verify(
            &state.keys,
            &sigv4::RequestParts {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                query: parts.uri.query(),
                headers: &parts.headers,
                payload_hash: hash,
            },
            SystemTime::now(),
        )
    };
    let read_hashed = |body: Body, limit: usize| async move {
        let bytes = axum::body::to_bytes(body, limit).await.ok()?;
        let hash = hex::encode(Sha256::digest(&bytes));
        Some((bytes, hash))
    };
    let (verdict, body) = match (streaming, claimed.as_deref()) {
        (true, Some(sigv4::UNSIGNED_PAYLOAD)) => (verify(sigv4::UNSIGNED_PAYLOAD), body),
        (true, Some(claimed)) => {
            // A signed body hash: check the body really has it before use.
            let Some(limit) = hashable_length else {
                return ApiError::invalid(
                    "a streaming upload with a body hash needs a Content-Length up to 64 MiB; \
                     sign streams with x-amz-content-sha256: UNSIGNED-PAYLOAD",
                )
                .into_response();
            };
            match read_hashed(body, limit).await {
                Some((bytes, actual)) if actual == claimed => (verify(&actual), Body::from(bytes)),
                _ => return ApiError::from(sigv4::AuthError::BadSignature).into_response(),
            }
        }
        (true, None) => match verify(sigv4::EMPTY_SHA256) {
            Err(sigv4::AuthError::BadSignature) if hashable_length.is_some() => {
                // A producer that knew its whole body (curl --data-binary
                // @file) signed the body's real hash.
                let limit = hashable_length.unwrap_or_default();
                match read_hashed(body, limit).await {
                    Some((bytes, actual)) => (verify(&actual), Body::from(bytes)),
                    None => return ApiError::from(sigv4::AuthError::BadSignature).into_response(),
                }
            }
            verdict => (verdict, body),
        },
        (false, claimed) => {
            let Some((bytes, actual)) = read_hashed(body, MAX_JSON_BODY).await else {
                return ApiError::invalid("request body too large or unreadable").into_response();
            };
            match claimed {
                Some(c) if c == sigv4::UNSIGNED_PAYLOAD => (verify(c), Body::from(bytes)),
                Some(c) if c != actual => {
                    return ApiError::from(sigv4::AuthError::BadSignature).into_response();
                }
                _ => (verify(&actual), Body::from(bytes)),
            }
        }
    };
    match verdict {
        Ok(principal) => {
            let mut req = Request::from_parts(parts, body);
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(path = %parts.uri.path(), error = %e, "refused unauthenticated request");
            ApiError::from(e).into_response()
        }
    }
}
