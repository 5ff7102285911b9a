//! Kinema's own JSON API for camera sources (no AWS protocol covers them):
//! `GET /v1/sources`, `POST /v1/sources`, `GET|DELETE /v1/sources/{name}` (DELETE answers with the final status).
//! Errors use the same `__type`/`message` shape as the rest of the API.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kinema_engine::sources::SourceConfig;
use serde_json::json;

use crate::{ApiError, AppState};

pub async fn list(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(json!({ "sources": st.sources.list().await })).into_response()
}

pub async fn create(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let cfg: SourceConfig = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("malformed source: {e}")))?;
    let status = st.sources.create(cfg).await?;
    Ok((StatusCode::CREATED, axum::Json(status)).into_response())
}

pub async fn get(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(st.sources.get(&name).await?).into_response())
}

pub async fn delete(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(st.sources.delete(&name).await?).into_response())
}
