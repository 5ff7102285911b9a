//! The HTTP edge of Kinema: the only crate that knows axum, hyper and the
//! AWS wire shapes. `serve` runs the connections under their limits; every
//! request but `/health`, `/metrics`, the web pages and session-token reads
//! is verified with SigV4 before it reaches a handler; handlers translate
//! JSON into engine calls and engine errors into AWS error shapes.

pub mod admin;
mod authorize;
mod channels;
mod deliveries;
mod detectors;
pub mod error;
mod kinesis;
pub mod metrics;
pub mod playback;
mod push;
mod queues;
pub mod serve;
pub mod signaling;
pub mod sigv4;
mod sources;
pub mod sts;
pub mod tls;
mod video;
mod web;

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::{Body, Bytes};
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
/// Largest streaming upload signed with its body's hash but without
/// claiming it in `x-amz-content-sha256` (curl's `--data-binary @file`):
/// such a body is read whole, within the unauthenticated body budget,
/// before its signature can be checked.
const MAX_HASHED_UPLOAD: usize = 8 << 20;

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
    /// When set, `/metrics` needs `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
    /// Signs the page tokens the server hands out (GetImages NextToken).
    pub token_key: [u8; 32],
    /// Connection caps, timeouts and the unauthenticated body budget.
    pub limits: Arc<serve::Limits>,
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
        .route("/", post(root_post).get(signaling::connect))
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
        .route("/v1/keys", get(admin::list_keys).post(admin::create_key))
        .route("/v1/keys/{id}", axum::routing::delete(admin::delete_key))
        .route("/v1/keys/{id}/rotate", post(admin::rotate_key))
        .route("/v1/policies", get(admin::list_policies))
        .route(
            "/v1/policies/{name}",
            axum::routing::put(admin::put_policy).delete(admin::delete_policy),
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
        .layer(middleware::from_fn(session_authenticates))
        .layer(middleware::map_response(|mut resp: Response| async move {
            resp.headers_mut().insert(
                http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                http::HeaderValue::from_static("*"),
            );
            resp
        }))
}

/// `POST /`: Kinesis Data Streams (JSON, by `X-Amz-Target`) or STS (the
/// Query protocol: a form with an `Action`).
async fn root_post(
    state: State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<sigv4::Principal>,
    headers: http::HeaderMap,
    body: Bytes,
) -> Response {
    if headers.contains_key("x-amz-target") {
        return kinesis::dispatch(state, headers, body).await;
    }
    sts::dispatch(&state, &caller, &body).await
}

/// A request whose session token served it authenticates its connection
/// (a player keeps it open for the next segment).
async fn session_authenticates(req: Request, next: Next) -> Response {
    let conn = req.extensions().get::<Arc<serve::Connection>>().cloned();
    let resp = next.run(req).await;
    if resp.status().is_success()
        && let Some(c) = conn
    {
        c.authenticated();
    }
    resp
}

async fn render_metrics(State(state): State<Arc<AppState>>, headers: http::HeaderMap) -> Response {
    if let Some(token) = &state.metrics_token {
        use subtle::ConstantTimeEq;
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "NotAuthorizedException",
                "/metrics needs its bearer token",
            )
            .into_response();
        }
    }
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
    let acceptor = match tls {
        Some(identity) => Some(identity.acceptor().map_err(std::io::Error::other)?),
        None => None,
    };
    let limits = state.limits.clone();
    serve::serve(listener, acceptor, router(state), limits, shutdown).await
}

/// Routes whose request body is a long-lived stream: their payload is
/// signed as `UNSIGNED-PAYLOAD`, or (curl's `--aws-sigv4`, which cannot hash
/// a pipe) as the hash of an empty body.
fn is_streaming_upload(path: &str) -> bool {
    path == "/putMedia"
}

async fn authenticate(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let conn = parts.extensions.get::<Arc<serve::Connection>>().cloned();
    let peer = conn
        .as_ref()
        .map(|c| c.peer.to_string())
        .unwrap_or_default();
    // STS speaks the Query protocol: its refusals are XML.
    let sts = parts.method == http::Method::POST
        && parts.uri.path() == "/"
        && !parts.headers.contains_key("x-amz-target");
    let refuse = |e: ApiError| {
        if sts {
            sts::from_api_error(e)
        } else {
            e.into_response()
        }
    };
    match check_request(&state, &parts, body).await {
        Ok((principal, body, bytes)) => {
            if let Some(c) = conn {
                c.authenticated();
            }
            let targets = match authorize::target(&state, &parts, bytes.as_deref()) {
                Ok(t) => t,
                Err(e) => return refuse(e),
            };
            for target in &targets {
                if let Err(e) = authorize::authorize(&principal, target, &peer) {
                    return refuse(e);
                }
            }
            let mut req = Request::from_parts(parts, body);
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(path = %parts.uri.path(), %peer, error = %e.message, "refused unauthenticated request");
            refuse(e)
        }
    }
}

/// Checks a request's signature, reading as little of its body as that
/// needs: when the body's hash is claimed in `x-amz-content-sha256` (a
/// signed value), the signature over the headers is checked first and the
/// body only then, against the claim (a streaming upload as it arrives).
/// Only requests that do not claim a hash (the SDKs' JSON protocols) have
/// their bodies read first, after every check that needs no body, within
/// the server-wide budget for such reads and in bounded time.
async fn check_request(
    state: &AppState,
    parts: &http::request::Parts,
    body: Body,
) -> Result<(sigv4::Principal, Body, Option<Bytes>), ApiError> {
    let claimed = parts
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let streaming = is_streaming_upload(parts.uri.path());
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let keys = &state.keys;
    let verify = |hash: &str| {
        let req = sigv4::RequestParts {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            payload_hash: hash,
        };
        sigv4::verify(keys, &req, SystemTime::now())
    };
    // A request with neither a length nor a chunked body has none.
    let has_body = declared.is_some_and(|n| n > 0)
        || parts.headers.contains_key(http::header::TRANSFER_ENCODING);
    let unsigned = sigv4::UNSIGNED_PAYLOAD.to_ascii_lowercase();
    match claimed {
        Some(c) if c == unsigned => {
            if !streaming && has_body {
                return Err(ApiError::invalid(
                    "x-amz-content-sha256: UNSIGNED-PAYLOAD is accepted only on streaming \
                     uploads and requests without a body; sign the hash of the body",
                ));
            }
            Ok((verify(sigv4::UNSIGNED_PAYLOAD)?, body, None))
        }
        Some(claimed) => {
            let principal = verify(&claimed)?;
            if streaming {
                return Ok((principal, hash_checked(body, claimed), None));
            }
            let bytes = read_body(state, body, MAX_JSON_BODY).await?;
            if hex::encode(Sha256::digest(&bytes)) != claimed {
                return Err(content_mismatch());
            }
            Ok((principal, Body::from(bytes.clone()), Some(bytes)))
        }
        None if streaming => match verify(sigv4::EMPTY_SHA256) {
            // A producer that knew its whole body (curl --data-binary
            // @file) signed the body's real hash without claiming it.
            Err(sigv4::AuthError::BadSignature) => match declared {
                Some(n) if n <= MAX_HASHED_UPLOAD => {
                    let bytes = read_unauthenticated(state, parts, body, n).await?;
                    let principal = verify(&hex::encode(Sha256::digest(&bytes)))?;
                    Ok((principal, Body::from(bytes), None))
                }
                _ => Err(sigv4::AuthError::BadSignature.into()),
            },
            verdict => Ok((verdict?, body, None)),
        },
        None if !has_body => Ok((verify(sigv4::EMPTY_SHA256)?, Body::empty(), None)),
        None => {
            let bytes = read_unauthenticated(state, parts, body, MAX_JSON_BODY).await?;
            let principal = verify(&hex::encode(Sha256::digest(&bytes)))?;
            Ok((principal, Body::from(bytes.clone()), Some(bytes)))
        }
    }
}

fn content_mismatch() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "XAmzContentSHA256Mismatch",
        "the body does not match its x-amz-content-sha256",
    )
}

/// Reads a body of at most `limit` bytes in the body timeout.
async fn read_body(state: &AppState, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(
        state.limits.config.body_read_timeout,
        axum::body::to_bytes(body, limit),
    )
    .await
    {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "InvalidArgumentException",
            format!("the request body is unreadable or over {limit} bytes"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeoutException",
            "the request body did not arrive in time",
        )),
    }
}

/// Reads the body of a request whose signature cannot be checked without
/// it: only once everything else about the signature checks out, within
/// the server-wide budget for such bodies.
async fn read_unauthenticated(
    state: &AppState,
    parts: &http::request::Parts,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    sigv4::precheck(
        &state.keys,
        &sigv4::RequestParts {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            payload_hash: sigv4::EMPTY_SHA256,
        },
        SystemTime::now(),
    )?;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "InvalidArgumentException",
            format!("the request body is over {limit} bytes"),
        ));
    }
    let _room = state
        .limits
        .reserve_unauthenticated_body(declared.unwrap_or(limit))
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
                "too many requests are being authenticated; retry",
            )
        })?;
    read_body(state, body, limit).await
}

/// A streaming body checked against its claimed SHA-256 as it arrives: a
/// mismatch ends it with an error after the last byte.
fn hash_checked(body: Body, claimed: String) -> Body {
    use futures::StreamExt;
    let stream = async_stream::stream! {
        let mut hasher = Sha256::new();
        let mut data = body.into_data_stream();
        while let Some(chunk) = data.next().await {
            match chunk {
                Ok(b) => {
                    hasher.update(&b);
                    yield Ok(b);
                }
                Err(e) => {
                    yield Err(e);
                    return;
                }
            }
        }
        if hex::encode(hasher.finalize()) != claimed {
            yield Err(axum::Error::new("the body does not match its x-amz-content-sha256"));
        }
    };
    Body::from_stream(stream)
}
