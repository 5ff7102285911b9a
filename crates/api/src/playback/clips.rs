//! GetClip: one MP4 for a time range.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Selector, St, selector_kind};
use crate::ApiError;
use crate::video::{StreamRef, parse};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ClipInput {
    #[serde(flatten)]
    stream: StreamRef,
    clip_fragment_selector: Option<Selector>,
}

pub(crate) async fn get_clip(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: ClipInput = parse(&body)?;
    let sel = input
        .clip_fragment_selector
        .ok_or_else(|| ApiError::invalid("ClipFragmentSelector is required"))?;
    let kind = match sel.fragment_selector_type.as_deref() {
        Some(t) => selector_kind(Some(t))?,
        None => return Err(ApiError::invalid("FragmentSelectorType is required")),
    };
    let range = sel.timestamp_range.unwrap_or_default();
    let (Some(start), Some(end)) = (range.start_timestamp, range.end_timestamp) else {
        return Err(ApiError::invalid(
            "TimestampRange needs StartTimestamp and EndTimestamp",
        ));
    };
    let data = st
        .playback
        .clip(
            input.stream.name(),
            input.stream.arn(),
            kind,
            start.0,
            end.0,
        )
        .await?;
    Ok(([(header::CONTENT_TYPE, "video/mp4")], data).into_response())
}
