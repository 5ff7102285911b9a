//! Kinema's own JSON API for detection (no AWS protocol covers it):
//! `GET /v1/detectors`, `GET|PUT|DELETE /v1/detectors/{stream}` (PUT takes
//! the detector settings, see `samples/config.toml`; DELETE answers with the
//! final status), and `GET /v1/replay/{stream}?start_ms=` — the link every
//! detection event carries: it opens an HLS LIVE_REPLAY session from that
//! moment and redirects (303) to its master playlist.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kinema_engine::detection::DetectorSettings;
use serde::Deserialize;
use serde_json::json;

use crate::{ApiError, AppState};

pub async fn list(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(json!({
        "events_stream": st.detectors.events_stream(),
        "detectors": st.detectors.list(),
    }))
    .into_response()
}

pub async fn put(
    State(st): State<Arc<AppState>>,
    Path(stream): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let settings: DetectorSettings = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("malformed detector settings: {e}")))?;
    let status = st.detectors.set(&stream, settings).await?;
    Ok((StatusCode::OK, axum::Json(status)).into_response())
}

pub async fn get(
    State(st): State<Arc<AppState>>,
    Path(stream): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(st.detectors.get(&stream)?).into_response())
}

pub async fn delete(
    State(st): State<Arc<AppState>>,
    Path(stream): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(st.detectors.delete(&stream).await?).into_response())
}

#[derive(Deserialize)]
pub struct ReplayQuery {
    start_ms: Option<String>,
    /// `FRAGMENTED_MP4` (default) or `MPEG_TS`.
    container: Option<String>,
}

pub async fn replay(
    State(st): State<Arc<AppState>>,
    Path(stream): Path<String>,
    Query(q): Query<ReplayQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let start_ms: i64 = q
        .start_ms
        .as_deref()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::invalid("start_ms (Unix milliseconds) is required"))?;
    let mut body = json!({
        "StreamName": stream,
        "PlaybackMode": "LIVE_REPLAY",
        "HLSFragmentSelector": {
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": { "StartTimestamp": kinema_core::time::epoch_seconds(start_ms) },
        },
    });
    if let Some(c) = q.container {
        body["ContainerFormat"] = json!(c);
    }
    let resp = crate::playback::get_hls_streaming_session_url(
        State(st),
        headers,
        Bytes::from(body.to_string()),
    )
    .await?;
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .map_err(|_| ApiError::internal())?;
    let url = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["HLSStreamingSessionURL"].as_str().map(str::to_string))
        .ok_or_else(ApiError::internal)?;
    Ok((
        StatusCode::SEE_OTHER,
        [(http::header::LOCATION, url.clone())],
        axum::Json(json!({ "HLSStreamingSessionURL": url })),
    )
        .into_response())
}
