//! Kinesis Video Streams: the control plane (`kinesisvideo`), PutMedia and
//! GetMedia (`kinesis-video-media`), ListFragments and
//! GetMediaForFragmentList (`kinesis-video-archived-media`). REST-JSON:
//! every operation is a POST to its own path.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use kinema_archive::chunks::{ChunkWriter, TagStyle};
use kinema_engine::{
    AckError, EngineError, FragmentMeta, IngestEvent, PutMediaSession, StartSelector, StreamInfo,
    StreamUpdate, TimeKind, TimecodeType, fragment_number_string, now_ms, parse_fragment_number,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::metrics::{ErrorLabel, stream as label};
use crate::{ApiError, AppState};

type St = State<Arc<AppState>>;

/// How often an IDLE ack is sent while a PutMedia upload sends nothing.
const IDLE_ACK_PERIOD: Duration = Duration::from_secs(3);

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/createStream", post(create_stream))
        .route("/describeStream", post(describe_stream))
        .route("/listStreams", post(list_streams))
        .route("/updateStream", post(update_stream))
        .route("/deleteStream", post(delete_stream))
        .route("/updateDataRetention", post(update_data_retention))
        .route("/tagStream", post(tag_stream))
        .route("/untagStream", post(untag_stream))
        .route("/listTagsForStream", post(list_tags_for_stream))
        .route("/getDataEndpoint", post(get_data_endpoint))
        .route("/createSignalingChannel", post(crate::channels::create))
        .route("/describeSignalingChannel", post(crate::channels::describe))
        .route("/listSignalingChannels", post(crate::channels::list))
        .route("/updateSignalingChannel", post(crate::channels::update))
        .route("/deleteSignalingChannel", post(crate::channels::delete))
        .route(
            "/getSignalingChannelEndpoint",
            post(crate::channels::get_endpoint),
        )
        .route("/putMedia", post(put_media))
        .route("/getMedia", post(get_media))
        .route("/listFragments", post(list_fragments))
        .route(
            "/getMediaForFragmentList",
            post(get_media_for_fragment_list),
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

// ---- control plane ---------------------------------------------------------

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

async fn create_stream(State(st): St, body: Bytes) -> Result<Response, ApiError> {
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

async fn describe_stream(State(st): St, body: Bytes) -> Result<Response, ApiError> {
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

async fn list_streams(State(st): St, body: Bytes) -> Result<Response, ApiError> {
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

async fn update_stream(State(st): St, body: Bytes) -> Result<Response, ApiError> {
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

async fn delete_stream(State(st): St, body: Bytes) -> Result<Response, ApiError> {
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

async fn update_data_retention(State(st): St, body: Bytes) -> Result<Response, ApiError> {
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

async fn tag_stream(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: TagInput = parse(&body)?;
    let tags = input
        .tags
        .ok_or_else(|| ApiError::invalid("Tags is required"))?;
    st.engine
        .tag_stream(input.stream.name(), input.stream.arn(), tags)
        .await?;
    Ok(ok(json!({})))
}

async fn untag_stream(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: TagInput = parse(&body)?;
    let keys = input
        .tag_key_list
        .ok_or_else(|| ApiError::invalid("TagKeyList is required"))?;
    st.engine
        .untag_stream(input.stream.name(), input.stream.arn(), &keys)
        .await?;
    Ok(ok(json!({})))
}

async fn list_tags_for_stream(State(st): St, body: Bytes) -> Result<Response, ApiError> {
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

async fn get_data_endpoint(
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

// ---- PutMedia --------------------------------------------------------------

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Parses `x-amzn-producer-start-timestamp` (decimal epoch seconds) to nanoseconds.
fn parse_start_timestamp(s: &str) -> Option<i128> {
    let (secs, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    let secs: i128 = secs.parse().ok()?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) || !(0..1 << 40).contains(&secs)
    {
        return None;
    }
    let frac_ns: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(secs * 1_000_000_000 + frac_ns)
}

fn ack(event: &str, timecode: Option<u64>, number: Option<u64>, error: Option<AckError>) -> Bytes {
    let mut v = json!({ "EventType": event });
    if let Some(tc) = timecode {
        v["FragmentTimecode"] = json!(tc);
    }
    if let Some(n) = number {
        v["FragmentNumber"] = json!(fragment_number_string(n));
    }
    if let Some(e) = error {
        v["ErrorId"] = json!(e.code());
        v["ErrorCode"] = json!(e.name());
    }
    let mut line = v.to_string();
    line.push('\n');
    Bytes::from(line)
}

async fn put_media(State(st): St, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let name = header(&headers, "x-amzn-stream-name");
    let arn = header(&headers, "x-amzn-stream-arn");
    if name.is_some() && arn.is_some() {
        return Err(ApiError::invalid(
            "specify x-amzn-stream-name or x-amzn-stream-arn, not both",
        ));
    }
    let timecode_type = match header(&headers, "x-amzn-fragment-timecode-type") {
        Some("ABSOLUTE") => TimecodeType::Absolute,
        Some("RELATIVE") => TimecodeType::Relative,
        _ => {
            return Err(ApiError::invalid(
                "x-amzn-fragment-timecode-type must be ABSOLUTE or RELATIVE",
            ));
        }
    };
    let start_ns = match header(&headers, "x-amzn-producer-start-timestamp") {
        Some(s) => parse_start_timestamp(s).ok_or_else(|| {
            ApiError::invalid("x-amzn-producer-start-timestamp must be decimal epoch seconds")
        })?,
        None => now_ms() as i128 * 1_000_000,
    };
    let session = st
        .engine
        .begin_put_media(name, arn, timecode_type, start_ns)?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(ingest(st.clone(), session, body, tx));
    let stream = tokio_stream_from(rx);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("static response parts are valid"))
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Bytes>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    async_stream::stream! {
        while let Some(b) = rx.recv().await {
            yield Ok(b);
        }
    }
}

/// Reads one PutMedia upload to its end, persisting fragments and sending acks.
async fn ingest(
    st: Arc<AppState>,
    mut session: PutMediaSession,
    body: Body,
    tx: mpsc::Sender<Bytes>,
) {
    let stream = session.stream_name();
    let labels = label(&stream);
    st.metrics.put_media_sessions.get_or_create(&labels).inc();
    let mut body = body.into_data_stream();
    let mut shutdown = st.shutdown.clone();
    let mut idle = tokio::time::interval(IDLE_ACK_PERIOD);
    idle.tick().await;
    let mut active = false;
    loop {
        tokio::select! {
            chunk = body.next() => match chunk {
                Some(Ok(data)) => {
                    active = true;
                    st.metrics.incoming_bytes.get_or_create(&labels).inc_by(data.len() as u64);
                    session.push(&data);
                    if !drain(&st, &mut session, &tx, &stream).await {
                        break;
                    }
                }
                Some(Err(e)) => {
                    // A broken upload: complete fragments are stored; the
                    // partial one is dropped, never acknowledged.
                    tracing::info!(%stream, error = %e, "PutMedia upload broke off");
                    break;
                }
                None => {
                    session.finish();
                    drain(&st, &mut session, &tx, &stream).await;
                    break;
                }
            },
            _ = idle.tick() => {
                if !active && tx.send(ack("IDLE", None, None, None)).await.is_err() {
                    break;
                }
                active = false;
            }
            _ = shutdown.changed() => break,
        }
    }
    st.metrics.put_media_sessions.get_or_create(&labels).dec();
}

/// Sends the acks for everything the session produced. Returns false when
/// the upload must end.
async fn drain(
    st: &AppState,
    session: &mut PutMediaSession,
    tx: &mpsc::Sender<Bytes>,
    stream: &str,
) -> bool {
    while let Some(ev) = session.poll() {
        match ev {
            IngestEvent::Buffering { timecode } => {
                let _ = tx.send(ack("BUFFERING", Some(timecode), None, None)).await;
            }
            IngestEvent::Fragment(frag) => {
                let received_at = Instant::now();
                let timecode = frag.timecode;
                let _ = tx.send(ack("RECEIVED", Some(timecode), None, None)).await;
                match session.persist(frag).await {
                    Ok(meta) => {
                        st.metrics
                            .incoming_fragments
                            .get_or_create(&label(stream))
                            .inc();
                        if session.acks_persisted() {
                            let _ = tx
                                .send(ack("PERSISTED", Some(timecode), Some(meta.number), None))
                                .await;
                            st.metrics
                                .persisted_ack_latency
                                .observe(received_at.elapsed().as_secs_f64());
                        }
                    }
                    Err(e) => {
                        let code = match e {
                            EngineError::ResourceNotFound(_) => AckError::StreamNotActive,
                            _ => AckError::ArchivalError,
                        };
                        tracing::error!(%stream, error = %e, "failed to persist a fragment");
                        count_error(st, stream, code);
                        let _ = tx
                            .send(ack("ERROR", Some(timecode), None, Some(code)))
                            .await;
                        return false;
                    }
                }
            }
            IngestEvent::Error {
                error,
                timecode,
                detail,
            } => {
                tracing::info!(%stream, code = error.code(), %detail, "PutMedia upload refused");
                count_error(st, stream, error);
                let _ = tx.send(ack("ERROR", timecode, None, Some(error))).await;
                return false;
            }
        }
    }
    true
}

fn count_error(st: &AppState, stream: &str, code: AckError) {
    st.metrics
        .put_media_errors
        .get_or_create(&ErrorLabel {
            stream: stream.to_string(),
            code: code.code(),
        })
        .inc();
}

// ---- reads -----------------------------------------------------------------

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

async fn get_media(State(st): St, body: Bytes) -> Result<Response, ApiError> {
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

async fn list_fragments(State(st): St, body: Bytes) -> Result<Response, ApiError> {
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

async fn get_media_for_fragment_list(State(st): St, body: Bytes) -> Result<Response, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_timestamps_parse_as_decimal_seconds() {
        assert_eq!(
            parse_start_timestamp("1700000000"),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(
            parse_start_timestamp("1700000000.25"),
            Some(1_700_000_000_250_000_000)
        );
        assert_eq!(parse_start_timestamp("17x"), None);
        assert_eq!(parse_start_timestamp("-5"), None);
    }

    #[test]
    fn acks_have_the_service_shape() {
        let line = ack("PERSISTED", Some(1000), Some(7), None);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["EventType"], "PERSISTED");
        assert_eq!(v["FragmentTimecode"], 1000);
        assert_eq!(v["FragmentNumber"], "00000000000000000007");
        let err: Value =
            serde_json::from_slice(&ack("ERROR", None, None, Some(AckError::InvalidMkvData)))
                .unwrap();
        assert_eq!(err["ErrorId"], 4006);
        assert_eq!(err["ErrorCode"], "INVALID_MKV_DATA");
    }
}
