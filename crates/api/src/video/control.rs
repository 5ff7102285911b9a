//! The `kinesisvideo` control plane for streams: create, describe, list,
//! update, retention, delete, tags and GetDataEndpoint.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use kinema_engine::StreamUpdate;
use serde::Deserialize;
use serde_json::json;

use super::{St, StreamRef, ok, parse, stream_info_json};
use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateStreamInput {
    stream_name: Option<String>,
    device_name: Option<String>,
    media_type: Option<String>,
    kms_key_id: Option<String>,
    data_retention_in_hours: Option<i64>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

pub(super) async fn create_stream(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: CreateStreamInput = parse(&body)?;
    let name = input
        .stream_name
        .ok_or_else(|| ApiError::invalid("StreamName is required"))?;
    let retention = match input.data_retention_in_hours {
        Some(h) if !(0..=87_600).contains(&h) => {
            return Err(ApiError::invalid(
                "DataRetentionInHours must be between 0 and 87600",
            ));
        }
        h => h.map(|h| h as u32),
    };
    let info = st
        .engine
        .create_stream(
            &name,
            input.device_name,
            input.media_type,
            input.kms_key_id,
            retention,
            input.tags,
        )
        .await?;
    Ok(ok(json!({ "StreamARN": info.arn })))
}

pub(super) async fn describe_stream(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let r: StreamRef = parse(&body)?;
    let info = st.engine.describe_stream(r.name(), r.arn())?;
    Ok(ok(json!({ "StreamInfo": stream_info_json(&info) })))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NameCondition {
    comparison_operator: Option<String>,
    comparison_value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListStreamsInput {
    max_results: Option<i64>,
    next_token: Option<String>,
    stream_name_condition: Option<NameCondition>,
}

pub(super) async fn list_streams(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: ListStreamsInput = parse(&body)?;
    let (prefix, after, max) = page_request(
        input.max_results,
        input.next_token.as_deref(),
        input.stream_name_condition.as_ref(),
    )?;
    let (page, more) = st.engine.list_streams(prefix, after.as_deref(), max);
    let mut out =
        json!({ "StreamInfoList": page.iter().map(stream_info_json).collect::<Vec<_>>() });
    if more && let Some(last) = page.last() {
        out["NextToken"] = json!(encode_token(&last.name));
    }
    Ok(ok(out))
}

/// A list request's paging, shared by ListStreams and
/// ListSignalingChannels: (name prefix, start after this name, page size).
pub(crate) fn page_request<'a>(
    max_results: Option<i64>,
    next_token: Option<&str>,
    condition: Option<&'a NameCondition>,
) -> Result<(Option<&'a str>, Option<String>, usize), ApiError> {
    let max = max_results.unwrap_or(10_000);
    if !(1..=10_000).contains(&max) {
        return Err(ApiError::invalid("MaxResults must be between 1 and 10000"));
    }
    let prefix = match condition {
        Some(c) => {
            if c.comparison_operator.as_deref().unwrap_or("BEGINS_WITH") != "BEGINS_WITH" {
                return Err(ApiError::invalid("ComparisonOperator must be BEGINS_WITH"));
            }
            c.comparison_value.as_deref()
        }
        None => None,
    };
    let after = next_token.map(decode_token).transpose()?;
    Ok((prefix, after, max as usize))
}

/// Paging tokens are the hex of the last returned key.
pub(crate) fn encode_token(key: &str) -> String {
    hex::encode(key)
}

fn decode_token(token: &str) -> Result<String, ApiError> {
    hex::decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::invalid("NextToken is not valid"))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateStreamInput {
    #[serde(flatten)]
    stream: StreamRef,
    current_version: Option<String>,
    device_name: Option<String>,
    media_type: Option<String>,
}

pub(super) async fn update_stream(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: UpdateStreamInput = parse(&body)?;
    let version = input
        .current_version
        .ok_or_else(|| ApiError::invalid("CurrentVersion is required"))?;
    st.engine
        .update_stream(
            input.stream.name(),
            input.stream.arn(),
            &version,
            StreamUpdate {
                device_name: input.device_name,
                media_type: input.media_type,
            },
        )
        .await?;
    Ok(ok(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteStreamInput {
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    current_version: Option<String>,
}

pub(super) async fn delete_stream(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: DeleteStreamInput = parse(&body)?;
    let arn = input
        .stream_arn
        .ok_or_else(|| ApiError::invalid("StreamARN is required"))?;
    st.engine
        .delete_stream(&arn, input.current_version.as_deref())
        .await?;
    Ok(ok(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateRetentionInput {
    #[serde(flatten)]
    stream: StreamRef,
    current_version: Option<String>,
    operation: Option<String>,
    data_retention_change_in_hours: Option<i64>,
}

pub(super) async fn update_data_retention(
    State(st): St,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: UpdateRetentionInput = parse(&body)?;
    let version = input
        .current_version
        .ok_or_else(|| ApiError::invalid("CurrentVersion is required"))?;
    let increase = match input.operation.as_deref() {
        Some("INCREASE_DATA_RETENTION") => true,
        Some("DECREASE_DATA_RETENTION") => false,
        _ => {
            return Err(ApiError::invalid(
                "Operation must be INCREASE_DATA_RETENTION or DECREASE_DATA_RETENTION",
            ));
        }
    };
    let change = match input.data_retention_change_in_hours {
        Some(h) if (1..=87_600).contains(&h) => h as u32,
        _ => {
            return Err(ApiError::invalid(
                "DataRetentionChangeInHours must be between 1 and 87600",
            ));
        }
    };
    st.engine
        .update_data_retention(
            input.stream.name(),
            input.stream.arn(),
            &version,
            increase,
            change,
        )
        .await?;
    Ok(ok(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagInput {
    #[serde(flatten)]
    stream: StreamRef,
    tags: Option<BTreeMap<String, String>>,
    tag_key_list: Option<Vec<String>>,
}

pub(super) async fn tag_stream(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: TagInput = parse(&body)?;
    let tags = input
        .tags
        .ok_or_else(|| ApiError::invalid("Tags is required"))?;
    st.engine
        .tag_stream(input.stream.name(), input.stream.arn(), tags)
        .await?;
    Ok(ok(json!({})))
}

pub(super) async fn untag_stream(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: TagInput = parse(&body)?;
    let keys = input
        .tag_key_list
        .ok_or_else(|| ApiError::invalid("TagKeyList is required"))?;
    st.engine
        .untag_stream(input.stream.name(), input.stream.arn(), &keys)
        .await?;
    Ok(ok(json!({})))
}

pub(super) async fn list_tags_for_stream(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let r: StreamRef = parse(&body)?;
    let info = st.engine.describe_stream(r.name(), r.arn())?;
    Ok(ok(json!({ "Tags": info.tags })))
}

const API_NAMES: &[&str] = &[
    "PUT_MEDIA",
    "GET_MEDIA",
    "LIST_FRAGMENTS",
    "GET_MEDIA_FOR_FRAGMENT_LIST",
    "GET_HLS_STREAMING_SESSION_URL",
    "GET_DASH_STREAMING_SESSION_URL",
    "GET_CLIP",
    "GET_IMAGES",
];

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DataEndpointInput {
    #[serde(flatten)]
    stream: StreamRef,
    #[serde(rename = "APIName")]
    api_name: Option<String>,
}

pub(super) async fn get_data_endpoint(
    State(st): St,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: DataEndpointInput = parse(&body)?;
    match input.api_name.as_deref() {
        Some(n) if API_NAMES.contains(&n) => {}
        _ => {
            return Err(ApiError::invalid(format!(
                "APIName must be one of {}",
                API_NAMES.join(", ")
            )));
        }
    }
    st.engine
        .describe_stream(input.stream.name(), input.stream.arn())?;
    Ok(ok(json!({ "DataEndpoint": endpoint(&st, &headers)? })))
}

/// Our own base URL: the configured public URL, or the one the client used.
pub(crate) fn endpoint(st: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    Ok(match &st.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let host = headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .ok_or_else(|| ApiError::invalid("the Host header is required"))?;
            let scheme = if st.tls { "https" } else { "http" };
            format!("{scheme}://{host}")
        }
    })
}
