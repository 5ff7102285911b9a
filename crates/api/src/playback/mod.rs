//! Playback of stored video (`kinesis-video-archived-media`) at the HTTP
//! edge: requests parsed into `engine::playback` calls, and its answers
//! rendered. `sessions` creates HLS and DASH sessions (signed POSTs);
//! `hls`, `dash` and `segments` serve them by token (unsigned GETs, as
//! players cannot sign); `clips` is GetClip and `images` GetImages.

mod clips;
mod dash;
mod hls;
mod images;
mod segments;
mod sessions;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use kinema_engine::TimeKind;
use kinema_engine::playback::{Protocol, Session};
use serde::Deserialize;

use crate::video::Timestamp;
use crate::{ApiError, AppState};

pub(crate) use clips::get_clip;
pub(crate) use images::get_images;
pub(crate) use segments::segment_routes;
pub(crate) use sessions::{get_dash_streaming_session_url, get_hls_streaming_session_url};
pub(crate) use {dash::dash_manifest, hls::hls_master, hls::hls_media};

type St = State<Arc<AppState>>;
type Params = Query<HashMap<String, String>>;

const NO_CACHE: &str = "no-cache";
const IMMUTABLE: &str = "max-age=3600";

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Range {
    start_timestamp: Option<Timestamp>,
    end_timestamp: Option<Timestamp>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Selector {
    fragment_selector_type: Option<String>,
    timestamp_range: Option<Range>,
}

/// An enum member of the request: absent gives the first option.
fn choice<T: Copy>(v: Option<&str>, what: &str, options: &[(&str, T)]) -> Result<T, ApiError> {
    let v = v.unwrap_or(options[0].0);
    options
        .iter()
        .find(|(name, _)| *name == v)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            ApiError::invalid(format!("{what} {v:?} must be one of {}", names.join(", ")))
        })
}

fn selector_kind(t: Option<&str>) -> Result<TimeKind, ApiError> {
    choice(
        t,
        "FragmentSelectorType",
        &[
            ("SERVER_TIMESTAMP", TimeKind::Server),
            ("PRODUCER_TIMESTAMP", TimeKind::Producer),
        ],
    )
}

fn always_never(v: Option<&str>, what: &str) -> Result<bool, ApiError> {
    choice(v, what, &[("NEVER", false), ("ALWAYS", true)])
}

/// The session named by the request's token, and the token.
fn session_of<'q>(
    st: &AppState,
    q: &'q HashMap<String, String>,
    protocol: Protocol,
) -> Result<(&'q str, Session), ApiError> {
    let token = q.get("SessionToken").ok_or_else(|| {
        ApiError::from(kinema_engine::EngineError::NotAuthorized(
            "SessionToken is required".into(),
        ))
    })?;
    Ok((token, st.playback.session(token, protocol)?))
}

fn reply(
    content_type: &'static str,
    cache: &'static str,
    body: impl Into<axum::body::Body>,
) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
        ],
        body.into(),
    )
        .into_response()
}
