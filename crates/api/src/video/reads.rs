//! Reads of stored video: GetMedia (every start selector, following the
//! live edge), ListFragments and GetMediaForFragmentList.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;
use kinema_archive::chunks::{ChunkWriter, TagStyle};
use kinema_engine::{
    FragmentMeta, StartSelector, TimeKind, fragment_number_string, now_ms, parse_fragment_number,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{St, StreamRef, Timestamp, epoch_seconds, ok, parse};
use crate::metrics::stream as label;
use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StartSelectorInput {
    start_selector_type: Option<String>,
    after_fragment_number: Option<String>,
    start_timestamp: Option<Timestamp>,
    continuation_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetMediaInput {
    #[serde(flatten)]
    stream: StreamRef,
    start_selector: Option<StartSelectorInput>,
}

fn fragment_number(s: Option<&str>, what: &str) -> Result<u64, ApiError> {
    s.and_then(parse_fragment_number)
        .ok_or_else(|| ApiError::invalid(format!("{what} must be a fragment number")))
}

fn media_response(
    st: &AppState,
    stream: String,
    body: impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
) -> Response {
    let metrics = st.metrics.clone();
    let labels = label(&stream);
    let counted = body.map(move |b| {
        if let Ok(b) = &b {
            metrics
                .outgoing_bytes
                .get_or_create(&labels)
                .inc_by(b.len() as u64);
        }
        b
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "video/webm")
        .body(Body::from_stream(counted))
        .expect("static response parts are valid")
}

pub(super) async fn get_media(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: GetMediaInput = parse(&body)?;
    let sel = input
        .start_selector
        .ok_or_else(|| ApiError::invalid("StartSelector is required"))?;
    let need_ts = || {
        sel.start_timestamp.map(|t| t.0).ok_or_else(|| {
            ApiError::invalid("StartTimestamp is required for this StartSelectorType")
        })
    };
    let selector = match sel.start_selector_type.as_deref() {
        Some("NOW") => StartSelector::Now,
        Some("EARLIEST") => StartSelector::Earliest,
        Some("FRAGMENT_NUMBER") => StartSelector::FragmentNumber(fragment_number(
            sel.after_fragment_number.as_deref(),
            "AfterFragmentNumber",
        )?),
        Some("SERVER_TIMESTAMP") => StartSelector::ServerTimestamp(need_ts()?),
        Some("PRODUCER_TIMESTAMP") => StartSelector::ProducerTimestamp(need_ts()?),
        Some("CONTINUATION_TOKEN") => StartSelector::ContinuationToken(fragment_number(
            sel.continuation_token.as_deref(),
            "ContinuationToken",
        )?),
        _ => return Err(ApiError::invalid("StartSelectorType is missing or unknown")),
    };
    let info = st
        .engine
        .describe_stream(input.stream.name(), input.stream.arn())?;
    let mut reader = st.engine.get_media(Some(&info.name), None, selector)?;
    let mut shutdown = st.shutdown.clone();
    let out = async_stream::stream! {
        let mut writer = ChunkWriter::new();
        loop {
            let next = tokio::select! {
                n = reader.next() => n,
                _ = shutdown.changed() => None,
            };
            let Some(item) = next else { break };
            let parts = match item {
                Ok((meta, object)) => writer.fragment(&object, &meta, TagStyle::GetMedia, now_ms()),
                Err(e) => {
                    tracing::error!(error = %e, "GetMedia read failed");
                    Ok(writer.error("Internal error", 5000))
                }
            };
            match parts {
                Ok(parts) => for p in parts { yield Ok::<Bytes, Infallible>(p); },
                Err(e) => {
                    tracing::error!(error = %e, "stored fragment unreadable");
                    for p in writer.error("Requested fragment is not found", 4000) { yield Ok(p); }
                    break;
                }
            }
        }
    };
    Ok(media_response(&st, info.name, out))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TimestampRange {
    start_timestamp: Option<Timestamp>,
    end_timestamp: Option<Timestamp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FragmentSelector {
    fragment_selector_type: Option<String>,
    timestamp_range: Option<TimestampRange>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListFragmentsInput {
    #[serde(flatten)]
    stream: StreamRef,
    max_results: Option<i64>,
    next_token: Option<String>,
    fragment_selector: Option<FragmentSelector>,
}

fn fragment_json(f: &FragmentMeta) -> Value {
    json!({
        "FragmentNumber": fragment_number_string(f.number),
        "FragmentSizeInBytes": f.size,
        "ProducerTimestamp": epoch_seconds(f.producer_ms),
        "ServerTimestamp": epoch_seconds(f.server_ms),
        "FragmentLengthInMilliseconds": f.duration_ms,
    })
}

pub(super) async fn list_fragments(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: ListFragmentsInput = parse(&body)?;
    let max = input.max_results.unwrap_or(1000);
    if !(1..=1000).contains(&max) {
        return Err(ApiError::invalid("MaxResults must be between 1 and 1000"));
    }
    let range = match input.fragment_selector {
        None => None,
        Some(sel) => {
            let kind = match sel.fragment_selector_type.as_deref() {
                Some("PRODUCER_TIMESTAMP") => TimeKind::Producer,
                Some("SERVER_TIMESTAMP") => TimeKind::Server,
                _ => {
                    return Err(ApiError::invalid(
                        "FragmentSelectorType must be PRODUCER_TIMESTAMP or SERVER_TIMESTAMP",
                    ));
                }
            };
            let r = sel
                .timestamp_range
                .ok_or_else(|| ApiError::invalid("TimestampRange is required"))?;
            let (Some(start), Some(end)) = (r.start_timestamp, r.end_timestamp) else {
                return Err(ApiError::invalid(
                    "StartTimestamp and EndTimestamp are required",
                ));
            };
            Some((kind, start.0, end.0))
        }
    };
    let page = st.engine.list_fragments(
        input.stream.name(),
        input.stream.arn(),
        range,
        max as usize,
        input.next_token.as_deref(),
    )?;
    let mut out =
        json!({ "Fragments": page.fragments.iter().map(fragment_json).collect::<Vec<_>>() });
    if let Some(t) = page.next_token {
        out["NextToken"] = json!(t);
    }
    Ok(ok(out))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FragmentListInput {
    #[serde(flatten)]
    stream: StreamRef,
    fragments: Option<Vec<String>>,
}

pub(super) async fn get_media_for_fragment_list(
    State(st): St,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: FragmentListInput = parse(&body)?;
    let list = input
        .fragments
        .ok_or_else(|| ApiError::invalid("Fragments is required"))?;
    if list.is_empty() || list.len() > 1000 {
        return Err(ApiError::invalid(
            "Fragments must hold 1 to 1000 fragment numbers",
        ));
    }
    let numbers = list
        .iter()
        .map(|s| fragment_number(Some(s), "each of Fragments"))
        .collect::<Result<Vec<_>, _>>()?;
    let info = st
        .engine
        .describe_stream(input.stream.name(), input.stream.arn())?;
    let (metas, reader) = st
        .engine
        .fragments_by_number(Some(&info.name), None, &numbers)?;
    let out = async_stream::stream! {
        let mut writer = ChunkWriter::new();
        for meta in metas {
            let parts = match reader.load(&meta).await {
                Ok(object) => writer.fragment(&object, &meta, TagStyle::FragmentList, now_ms()).ok(),
                Err(e) => {
                    tracing::warn!(error = %e, fragment = meta.number, "fragment vanished before it was read");
                    None
                }
            };
            let Some(parts) = parts else {
                for p in writer.error("Requested fragment is not found", 4000) { yield Ok::<Bytes, Infallible>(p); }
                break;
            };
            for p in parts { yield Ok(p); }
        }
    };
    Ok(media_response(&st, info.name, out))
}
