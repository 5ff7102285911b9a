//! `kinesisvideo` signaling-channel operations (REST-JSON): Create,
//! Describe, List, Update, Delete and GetSignalingChannelEndpoint. The
//! endpoints returned name this server: `wss://` / `https://` with TLS,
//! `ws://` / `http://` on a plain listener (the WebSocket is `signaling.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use kinema_engine::channels::ChannelInfo;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::video::{epoch_seconds, ok, parse};
use crate::{ApiError, AppState};

type St = State<Arc<AppState>>;

fn info_json(c: &ChannelInfo) -> Value {
    json!({
        "ChannelName": c.name,
        "ChannelARN": c.arn,
        "ChannelType": c.channel_type,
        "ChannelStatus": c.status,
        "CreationTime": epoch_seconds(c.creation_ms),
        "SingleMasterConfiguration": { "MessageTtlSeconds": c.message_ttl_seconds },
        "Version": c.version,
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct SingleMaster {
    message_ttl_seconds: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Tag {
    key: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateInput {
    channel_name: Option<String>,
    channel_type: Option<String>,
    single_master_configuration: Option<SingleMaster>,
    #[serde(default)]
    tags: Vec<Tag>,
}

fn ttl(c: Option<&SingleMaster>) -> Result<Option<u32>, ApiError> {
    match c.and_then(|c| c.message_ttl_seconds) {
        None => Ok(None),
        Some(t) if (5..=120).contains(&t) => Ok(Some(t as u32)),
        Some(_) => Err(ApiError::invalid(
            "MessageTtlSeconds must be between 5 and 120",
        )),
    }
}

pub(crate) async fn create(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: CreateInput = parse(&body)?;
    let name = input
        .channel_name
        .ok_or_else(|| ApiError::invalid("ChannelName is required"))?;
    let tags: BTreeMap<String, String> = input.tags.into_iter().map(|t| (t.key, t.value)).collect();
    let info = st
        .channels
        .create(
            &name,
            input.channel_type.as_deref(),
            ttl(input.single_master_configuration.as_ref())?,
            tags,
        )
        .await?;
    Ok(ok(json!({ "ChannelARN": info.arn })))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ChannelRef {
    channel_name: Option<String>,
    #[serde(rename = "ChannelARN")]
    channel_arn: Option<String>,
}

pub(crate) async fn describe(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let r: ChannelRef = parse(&body)?;
    let info = st
        .channels
        .describe(r.channel_name.as_deref(), r.channel_arn.as_deref())?;
    Ok(ok(json!({ "ChannelInfo": info_json(&info) })))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListInput {
    max_results: Option<i64>,
    next_token: Option<String>,
    channel_name_condition: Option<crate::video::NameCondition>,
}

pub(crate) async fn list(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: ListInput = parse(&body)?;
    let (prefix, after, max) = crate::video::page_request(
        input.max_results,
        input.next_token.as_deref(),
        input.channel_name_condition.as_ref(),
    )?;
    let (page, more) = st.channels.list(prefix, after.as_deref(), max);
    let mut out = json!({ "ChannelInfoList": page.iter().map(info_json).collect::<Vec<_>>() });
    if more && let Some(last) = page.last() {
        out["NextToken"] = json!(crate::video::encode_token(&last.name));
    }
    Ok(ok(out))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateInput {
    #[serde(rename = "ChannelARN")]
    channel_arn: Option<String>,
    current_version: Option<String>,
    single_master_configuration: Option<SingleMaster>,
}

pub(crate) async fn update(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: UpdateInput = parse(&body)?;
    let arn = input
        .channel_arn
        .ok_or_else(|| ApiError::invalid("ChannelARN is required"))?;
    let version = input
        .current_version
        .ok_or_else(|| ApiError::invalid("CurrentVersion is required"))?;
    st.channels
        .update(
            &arn,
            &version,
            ttl(input.single_master_configuration.as_ref())?,
        )
        .await?;
    Ok(ok(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteInput {
    #[serde(rename = "ChannelARN")]
    channel_arn: Option<String>,
    current_version: Option<String>,
}

pub(crate) async fn delete(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: DeleteInput = parse(&body)?;
    let arn = input
        .channel_arn
        .ok_or_else(|| ApiError::invalid("ChannelARN is required"))?;
    st.channels
        .delete(&arn, input.current_version.as_deref())
        .await?;
    st.hub.close_channel(&arn);
    Ok(ok(json!({})))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct EndpointConfig {
    protocols: Option<Vec<String>>,
    role: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointInput {
    #[serde(rename = "ChannelARN")]
    channel_arn: Option<String>,
    single_master_channel_endpoint_configuration: Option<EndpointConfig>,
}

pub(crate) async fn get_endpoint(
    State(st): St,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: EndpointInput = parse(&body)?;
    let arn = input
        .channel_arn
        .ok_or_else(|| ApiError::invalid("ChannelARN is required"))?;
    st.channels.describe(None, Some(&arn))?;
    let cfg = input
        .single_master_channel_endpoint_configuration
        .unwrap_or_default();
    match cfg.role.as_deref() {
        None | Some("MASTER") | Some("VIEWER") => {}
        Some(_) => return Err(ApiError::invalid("Role must be MASTER or VIEWER")),
    }
    let protocols = cfg
        .protocols
        .unwrap_or_else(|| vec!["WSS".into(), "HTTPS".into()]);
    let base = crate::video::endpoint(&st, &headers)?;
    let mut list = Vec::new();
    for p in &protocols {
        let endpoint = match p.as_str() {
            "WSS" => base
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1),
            "HTTPS" => base.clone(),
            "WEBRTC" => base.clone(),
            _ => return Err(ApiError::invalid("Protocols are WSS, HTTPS or WEBRTC")),
        };
        list.push(json!({ "Protocol": p, "ResourceEndpoint": endpoint }));
    }
    Ok(ok(json!({ "ResourceEndpointList": list })))
}
