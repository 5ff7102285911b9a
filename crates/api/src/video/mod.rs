//! Kinesis Video Streams: the control plane (`kinesisvideo`), PutMedia and
//! GetMedia (`kinesis-video-media`), ListFragments and
//! GetMediaForFragmentList (`kinesis-video-archived-media`). REST-JSON:
//! every operation is a POST to its own path. Here: the routes and what
//! the handlers share (body parsing, timestamps, stream references, data
//! endpoints); `control`, `put_media` and `reads` hold the handlers.

mod control;
mod put_media;
mod reads;

// Paging and endpoints, shared with the signaling-channel control plane.
pub(crate) use control::{NameCondition, encode_token, endpoint, page_request};

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kinema_engine::StreamInfo;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{ApiError, AppState};

type St = State<Arc<AppState>>;

/// How often an IDLE ack is sent while a PutMedia upload sends nothing.
const IDLE_ACK_PERIOD: Duration = Duration::from_secs(3);

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/createStream", post(control::create_stream))
        .route("/describeStream", post(control::describe_stream))
        .route("/listStreams", post(control::list_streams))
        .route("/updateStream", post(control::update_stream))
        .route("/deleteStream", post(control::delete_stream))
        .route("/updateDataRetention", post(control::update_data_retention))
        .route("/tagStream", post(control::tag_stream))
        .route("/untagStream", post(control::untag_stream))
        .route("/listTagsForStream", post(control::list_tags_for_stream))
        .route("/getDataEndpoint", post(control::get_data_endpoint))
        .route("/createSignalingChannel", post(crate::channels::create))
        .route("/describeSignalingChannel", post(crate::channels::describe))
        .route("/listSignalingChannels", post(crate::channels::list))
        .route("/updateSignalingChannel", post(crate::channels::update))
        .route("/deleteSignalingChannel", post(crate::channels::delete))
        .route(
            "/getSignalingChannelEndpoint",
            post(crate::channels::get_endpoint),
        )
        .route("/putMedia", post(put_media::put_media))
        .route("/getMedia", post(reads::get_media))
        .route("/listFragments", post(reads::list_fragments))
        .route(
            "/getMediaForFragmentList",
            post(reads::get_media_for_fragment_list),
        )
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("malformed request: {e}")))
}

pub(crate) fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

/// Unix milliseconds as the epoch-seconds number REST-JSON timestamps use.
pub(crate) fn epoch_seconds(ms: i64) -> Value {
    json!(kinema_core::time::epoch_seconds(ms))
}

/// A REST-JSON timestamp: epoch seconds (number or numeric string) or RFC 3339.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timestamp(pub(crate) i64);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let secs = match &v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse::<f64>().ok().or_else(|| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .ok()
                    .map(|t| t.unix_timestamp_nanos() as f64 / 1e9)
            }),
            _ => None,
        };
        match secs {
            Some(s) if s.is_finite() && s.abs() < 1e13 => {
                Ok(Timestamp(kinema_core::time::epoch_seconds_to_ms(s)))
            }
            _ => Err(serde::de::Error::custom("invalid timestamp")),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct StreamRef {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
}

impl StreamRef {
    pub(crate) fn name(&self) -> Option<&str> {
        self.stream_name.as_deref()
    }
    pub(crate) fn arn(&self) -> Option<&str> {
        self.stream_arn.as_deref()
    }
}

fn stream_info_json(i: &StreamInfo) -> Value {
    let mut v = json!({
        "StreamName": i.name,
        "StreamARN": i.arn,
        "Version": i.version,
        "Status": i.status,
        "CreationTime": epoch_seconds(i.creation_ms),
        "DataRetentionInHours": i.retention_hours,
    });
    for (k, val) in [
        ("DeviceName", &i.device_name),
        ("MediaType", &i.media_type),
        ("KmsKeyId", &i.kms_key_id),
    ] {
        if let Some(val) = val {
            v[k] = json!(val);
        }
    }
    v
}
