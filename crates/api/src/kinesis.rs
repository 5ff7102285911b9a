//! Kinesis Data Streams (`kinesis`): JSON 1.1, every operation a POST to `/`
//! named by `X-Amz-Target: Kinesis_20131202.<Operation>`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kinema_datastream::{
    Shard, parse_hash_key, parse_sequence, parse_shard_id, sequence_string, shard_id_string,
};
use kinema_engine::datastreams::{DataStreamInfo, IteratorStart, PutEntry};
use serde_json::{Value, json};

use crate::{ApiError, AppState};

const TARGET_PREFIX: &str = "Kinesis_20131202.";
use crate::video::epoch_seconds;
use kinema_core::aws::MAX_PUT_RECORDS;

fn json_response(v: Value) -> Response {
    let mut resp = (StatusCode::OK, v.to_string()).into_response();
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    resp
}

fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn stream_name(st: &AppState, v: &Value) -> Result<String, ApiError> {
    Ok(st
        .datastreams
        .resolve_name(str_field(v, "StreamName"), str_field(v, "StreamARN"))?)
}

fn shard_arg(v: &Value, k: &str) -> Result<u32, ApiError> {
    str_field(v, k)
        .and_then(parse_shard_id)
        .ok_or_else(|| ApiError::invalid(format!("{k} must be a shard id")))
}

fn u32_arg(v: &Value, k: &str) -> Result<u32, ApiError> {
    v.get(k)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| ApiError::invalid(format!("{k} is required and must be a positive integer")))
}

fn shard_json(s: &Shard) -> Value {
    let mut v = json!({
        "ShardId": shard_id_string(s.id),
        "HashKeyRange": {"StartingHashKey": s.start.to_string(), "EndingHashKey": s.end.to_string()},
        "SequenceNumberRange": {"StartingSequenceNumber": sequence_string(s.starting_sequence)},
    });
    if let Some(p) = s.parent {
        v["ParentShardId"] = json!(shard_id_string(p));
    }
    if let Some(p) = s.adjacent_parent {
        v["AdjacentParentShardId"] = json!(shard_id_string(p));
    }
    if let Some(e) = s.ending_sequence {
        v["SequenceNumberRange"]["EndingSequenceNumber"] = json!(sequence_string(e));
    }
    v
}

fn description(i: &DataStreamInfo) -> Value {
    json!({
        "StreamName": i.name,
        "StreamARN": i.arn,
        "StreamStatus": "ACTIVE",
        "StreamModeDetails": {"StreamMode": "PROVISIONED"},
        "RetentionPeriodHours": i.retention_hours,
        "StreamCreationTimestamp": epoch_seconds(i.created_ms),
        "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
        "EncryptionType": "NONE",
    })
}

/// The JSON 1.1 endpoint.
pub async fn dispatch(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let Some(op) = target.strip_prefix(TARGET_PREFIX) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("unknown X-Amz-Target {target:?}"),
        )
        .into_response();
    };
    let input: Value = match serde_json::from_slice(if body.is_empty() { b"{}" } else { &body }) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "SerializationException",
                "the request body is not a JSON object",
            )
            .into_response();
        }
    };
    if op == "SubscribeToShard" {
        return match subscribe_to_shard(&st, &input) {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    match operation(&st, op, &input).await {
        Ok(v) => json_response(v),
        Err(e) => e.into_response(),
    }
}

async fn operation(st: &AppState, op: &str, v: &Value) -> Result<Value, ApiError> {
    let ds = &st.datastreams;
    match op {
        "CreateStream" => {
            let name = str_field(v, "StreamName")
                .ok_or_else(|| ApiError::invalid("StreamName is required"))?;
            let count = match v.get("ShardCount") {
                None => 4,
                Some(_) => u32_arg(v, "ShardCount")?,
            };
            ds.create(name, count).await?;
            Ok(json!({}))
        }
        "DeleteStream" => {
            ds.delete(&stream_name(st, v)?).await?;
            Ok(json!({}))
        }
        "DescribeStream" => {
            let info = ds.describe(&stream_name(st, v)?)?;
            let limit = v
                .get("Limit")
                .and_then(Value::as_u64)
                .unwrap_or(100)
                .clamp(1, 10_000) as usize;
            let after = str_field(v, "ExclusiveStartShardId").and_then(parse_shard_id);
            let mut shards = info
                .shards
                .shards()
                .iter()
                .filter(|s| after.is_none_or(|a| s.id > a));
            let page: Vec<Value> = shards.by_ref().take(limit).map(shard_json).collect();
            let mut d = description(&info);
            d["Shards"] = json!(page);
            d["HasMoreShards"] = json!(shards.next().is_some());
            Ok(json!({ "StreamDescription": d }))
        }
        "DescribeStreamSummary" => {
            let info = ds.describe(&stream_name(st, v)?)?;
            let mut d = description(&info);
            d["OpenShardCount"] = json!(info.shards.open().len());
            d["ConsumerCount"] = json!(0);
            Ok(json!({ "StreamDescriptionSummary": d }))
        }
        "ListStreams" => {
            let limit = v
                .get("Limit")
                .and_then(Value::as_u64)
                .unwrap_or(100)
                .clamp(1, 10_000) as usize;
            let after = str_field(v, "ExclusiveStartStreamName")
                .or_else(|| str_field(v, "NextToken"))
                .map(str::to_string);
            let mut names = ds
                .list()
                .into_iter()
                .filter(|n| after.as_ref().is_none_or(|a| n > a));
            let page: Vec<String> = names.by_ref().take(limit).collect();
            let more = names.next().is_some();
            let summaries: Vec<Value> = page
                .iter()
                .filter_map(|n| ds.describe(n).ok())
                .map(|i| {
                    json!({"StreamName": i.name, "StreamARN": i.arn, "StreamStatus": "ACTIVE",
                           "StreamModeDetails": {"StreamMode": "PROVISIONED"},
                           "StreamCreationTimestamp": epoch_seconds(i.created_ms)})
                })
                .collect();
            let mut out =
                json!({"StreamNames": page, "HasMoreStreams": more, "StreamSummaries": summaries});
            if more {
                out["NextToken"] = json!(page.last());
            }
            Ok(out)
        }
        "ListShards" => {
            let (name, after) = match str_field(v, "NextToken") {
                Some(t) => {
                    let (n, s) = t
                        .split_once('/')
                        .ok_or_else(|| ApiError::invalid("NextToken is not valid"))?;
                    (n.to_string(), parse_shard_id(s))
                }
                None => (
                    stream_name(st, v)?,
                    str_field(v, "ExclusiveStartShardId").and_then(parse_shard_id),
                ),
            };
            let info = ds.describe(&name)?;
            let max = v
                .get("MaxResults")
                .and_then(Value::as_u64)
                .unwrap_or(1000)
                .clamp(1, 10_000) as usize;
            let mut shards = info
                .shards
                .shards()
                .iter()
                .filter(|s| after.is_none_or(|a| s.id > a));
            let page: Vec<&Shard> = shards.by_ref().take(max).collect();
            let mut out =
                json!({ "Shards": page.iter().map(|s| shard_json(s)).collect::<Vec<_>>() });
            if shards.next().is_some()
                && let Some(last) = page.last()
            {
                out["NextToken"] = json!(format!("{name}/{}", shard_id_string(last.id)));
            }
            Ok(out)
        }
        "IncreaseStreamRetentionPeriod" | "DecreaseStreamRetentionPeriod" => {
            let hours = u32_arg(v, "RetentionPeriodHours")?;
            ds.set_retention(&stream_name(st, v)?, hours, op.starts_with("Increase"))
                .await?;
            Ok(json!({}))
        }
        "AddTagsToStream" => {
            let tags: BTreeMap<String, String> =
                serde_json::from_value(v.get("Tags").cloned().unwrap_or_default())
                    .map_err(|_| ApiError::invalid("Tags must map strings to strings"))?;
            ds.add_tags(&stream_name(st, v)?, tags).await?;
            Ok(json!({}))
        }
        "ListTagsForStream" => {
            let info = ds.describe(&stream_name(st, v)?)?;
            let tags: Vec<Value> = info
                .tags
                .iter()
                .map(|(k, v)| json!({"Key": k, "Value": v}))
                .collect();
            Ok(json!({"Tags": tags, "HasMoreTags": false}))
        }
        "SplitShard" => {
            let at = str_field(v, "NewStartingHashKey")
                .and_then(parse_hash_key)
                .ok_or_else(|| {
                    ApiError::invalid("NewStartingHashKey must be a decimal 128-bit integer")
                })?;
            ds.split(&stream_name(st, v)?, shard_arg(v, "ShardToSplit")?, at)
                .await?;
            Ok(json!({}))
        }
        "MergeShards" => {
            ds.merge(
                &stream_name(st, v)?,
                shard_arg(v, "ShardToMerge")?,
                shard_arg(v, "AdjacentShardToMerge")?,
            )
            .await?;
            Ok(json!({}))
        }
        "UpdateShardCount" => {
            let name = stream_name(st, v)?;
            let target = u32_arg(v, "TargetShardCount")?;
            if str_field(v, "ScalingType").unwrap_or("UNIFORM_SCALING") != "UNIFORM_SCALING" {
                return Err(ApiError::invalid("ScalingType must be UNIFORM_SCALING"));
            }
            let before = ds.update_shard_count(&name, target).await?;
            Ok(json!({"StreamName": name, "CurrentShardCount": before, "TargetShardCount": target}))
        }
        "PutRecord" => {
            let name = stream_name(st, v)?;
            let entry = put_entry(st, v).map_err(|(_, m)| ApiError::invalid(m))?;
            let r = ds.put(&name, vec![entry]).await?;
            let r = r.first().copied().flatten().ok_or_else(throttled)?;
            Ok(
                json!({"ShardId": shard_id_string(r.shard), "SequenceNumber": sequence_string(r.sequence), "EncryptionType": "NONE"}),
            )
        }
        "PutRecords" => {
            let name = stream_name(st, v)?;
            let records = v
                .get("Records")
                .and_then(Value::as_array)
                .ok_or_else(|| ApiError::invalid("Records is required"))?;
            if records.is_empty() || records.len() > MAX_PUT_RECORDS {
                return Err(ApiError::invalid(format!(
                    "Records must hold 1 to {MAX_PUT_RECORDS} entries"
                )));
            }
            // Entries that fail validation fail alone; the rest are stored.
            let checked: Vec<Result<PutEntry, (&str, String)>> =
                records.iter().map(|r| put_entry(st, r)).collect();
            let valid: Vec<PutEntry> = checked
                .iter()
                .filter_map(|c| c.as_ref().ok().cloned())
                .collect();
            let mut stored = ds.put(&name, valid).await?.into_iter();
            let mut failed = 0;
            let out: Vec<Value> = checked
                .iter()
                .map(|c| match c {
                    Ok(_) => match stored.next().flatten() {
                        Some(r) => json!({"ShardId": shard_id_string(r.shard), "SequenceNumber": sequence_string(r.sequence)}),
                        None => {
                            failed += 1;
                            json!({"ErrorCode": "ProvisionedThroughputExceededException",
                                   "ErrorMessage": "Rate exceeded for shard in stream under account."})
                        }
                    },
                    Err((code, msg)) => {
                        failed += 1;
                        json!({"ErrorCode": code, "ErrorMessage": msg})
                    }
                })
                .collect();
            Ok(json!({"FailedRecordCount": failed, "Records": out, "EncryptionType": "NONE"}))
        }
        "GetShardIterator" => {
            let name = stream_name(st, v)?;
            let shard = shard_arg(v, "ShardId")?;
            let start = iterator_start(
                str_field(v, "ShardIteratorType"),
                str_field(v, "StartingSequenceNumber"),
                v.get("Timestamp").and_then(Value::as_f64),
                ["ShardIteratorType", "StartingSequenceNumber", "Timestamp"],
            )?;
            Ok(json!({"ShardIterator": ds.shard_iterator(&name, shard, start)?}))
        }
        "GetRecords" => {
            let it = str_field(v, "ShardIterator")
                .ok_or_else(|| ApiError::invalid("ShardIterator is required"))?;
            let limit = match v.get("Limit") {
                None => kinema_engine::datastreams::MAX_GET_RECORDS,
                Some(_) => u32_arg(v, "Limit")? as usize,
            };
            let page = ds.get_records(it, limit).await?;
            let mut out = json!({
                "Records": records_json(&page.records),
                "MillisBehindLatest": page.millis_behind_latest,
            });
            match page.next_iterator {
                Some(n) => out["NextShardIterator"] = json!(n),
                None => out["ChildShards"] = json!(child_shards_json(&page.child_shards)),
            }
            Ok(out)
        }
        "RegisterStreamConsumer" => {
            let stream_arn = str_field(v, "StreamARN")
                .ok_or_else(|| ApiError::invalid("StreamARN is required"))?;
            let name = str_field(v, "ConsumerName")
                .ok_or_else(|| ApiError::invalid("ConsumerName is required"))?;
            let c = ds.register_consumer(stream_arn, name).await?;
            Ok(json!({"Consumer": consumer_json(&c)}))
        }
        "DescribeStreamConsumer" => {
            let (c, stream_arn) = ds.describe_consumer(
                str_field(v, "ConsumerARN"),
                str_field(v, "StreamARN"),
                str_field(v, "ConsumerName"),
            )?;
            let mut d = consumer_json(&c);
            d["StreamARN"] = json!(stream_arn);
            Ok(json!({"ConsumerDescription": d}))
        }
        "ListStreamConsumers" => {
            let stream_arn = str_field(v, "StreamARN")
                .ok_or_else(|| ApiError::invalid("StreamARN is required"))?;
            let list = ds.list_consumers(stream_arn)?;
            Ok(json!({"Consumers": list.iter().map(consumer_json).collect::<Vec<_>>()}))
        }
        "DeregisterStreamConsumer" => {
            ds.deregister_consumer(
                str_field(v, "ConsumerARN"),
                str_field(v, "StreamARN"),
                str_field(v, "ConsumerName"),
            )
            .await?;
            Ok(json!({}))
        }
        other if let Some(out) = crate::queues::operation(st, other, v).await => out,
        other if let Some(out) = crate::deliveries::operation(st, other, v).await => out,
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("operation {other} is not supported"),
        )),
    }
}

/// Where an iterator or subscription starts, from its type and the input
/// that type needs (a sequence number, or epoch seconds). `fields` names
/// the three inputs in error messages.
pub(crate) fn iterator_start(
    kind: Option<&str>,
    sequence: Option<&str>,
    timestamp_s: Option<f64>,
    fields: [&str; 3],
) -> Result<IteratorStart, ApiError> {
    let seq = || {
        sequence
            .and_then(parse_sequence)
            .ok_or_else(|| ApiError::invalid(format!("{} is missing or malformed", fields[1])))
    };
    Ok(match kind {
        Some("TRIM_HORIZON") => IteratorStart::TrimHorizon,
        Some("LATEST") => IteratorStart::Latest,
        Some("AT_SEQUENCE_NUMBER") => IteratorStart::AtSequence(seq()?),
        Some("AFTER_SEQUENCE_NUMBER") => IteratorStart::AfterSequence(seq()?),
        Some("AT_TIMESTAMP") => {
            let t = timestamp_s.ok_or_else(|| {
                ApiError::invalid(format!("{} is required for AT_TIMESTAMP", fields[2]))
            })?;
            IteratorStart::AtTimestamp(kinema_core::time::epoch_seconds_to_ms(t))
        }
        _ => {
            return Err(ApiError::invalid(format!(
                "{} is missing or unknown",
                fields[0]
            )));
        }
    })
}

fn throttled() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "ProvisionedThroughputExceededException",
        "Rate exceeded for shard in stream under account.",
    )
}

fn consumer_json(c: &kinema_engine::datastreams::ConsumerInfo) -> Value {
    json!({"ConsumerName": c.name, "ConsumerARN": c.arn, "ConsumerStatus": "ACTIVE",
           "ConsumerCreationTimestamp": epoch_seconds(c.created_ms)})
}

fn records_json(records: &[kinema_engine::datastreams::ReadRecord]) -> Vec<Value> {
    records
        .iter()
        .map(|r| {
            json!({"SequenceNumber": sequence_string(r.sequence), "ApproximateArrivalTimestamp": epoch_seconds(r.arrival_ms),
                   "Data": B64.encode(&r.data), "PartitionKey": r.partition_key})
        })
        .collect()
}

fn child_shards_json(children: &[Shard]) -> Vec<Value> {
    children
        .iter()
        .map(|c| {
            json!({
                "ShardId": shard_id_string(c.id),
                "ParentShards": c.parents().map(shard_id_string).collect::<Vec<_>>(),
                "HashKeyRange": {"StartingHashKey": c.start.to_string(), "EndingHashKey": c.end.to_string()},
            })
        })
        .collect()
}

/// How often an idle subscription sends an empty event.
const SUBSCRIBE_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

/// SubscribeToShard: an `initial-response` event, then a
/// `SubscribeToShardEvent` whenever records arrive (or every few seconds),
/// for five minutes, in the AWS event-stream encoding.
fn subscribe_to_shard(st: &AppState, v: &Value) -> Result<Response, ApiError> {
    use kinema_datastream::eventstream;
    let consumer =
        str_field(v, "ConsumerARN").ok_or_else(|| ApiError::invalid("ConsumerARN is required"))?;
    let shard = shard_arg(v, "ShardId")?;
    let pos = v
        .get("StartingPosition")
        .ok_or_else(|| ApiError::invalid("StartingPosition is required"))?;
    let start = iterator_start(
        str_field(pos, "Type"),
        str_field(pos, "SequenceNumber"),
        pos.get("Timestamp").and_then(Value::as_f64),
        [
            "StartingPosition.Type",
            "StartingPosition.SequenceNumber",
            "StartingPosition.Timestamp",
        ],
    )?;
    let mut sub = st.datastreams.subscribe(consumer, shard, start)?;
    let mut shutdown = st.shutdown.clone();
    let body = async_stream::stream! {
        yield Ok::<Bytes, std::convert::Infallible>(Bytes::from(eventstream::event("initial-response", b"{}")));
        loop {
            let next = tokio::select! {
                e = sub.next_event(SUBSCRIBE_HEARTBEAT) => e,
                _ = shutdown.changed() => None,
            };
            match next {
                None => break,
                Some(Ok(ev)) => {
                    let mut payload = json!({
                        "Records": records_json(&ev.records),
                        "ContinuationSequenceNumber": sequence_string(ev.continuation_sequence),
                        "MillisBehindLatest": ev.millis_behind_latest,
                    });
                    if !ev.child_shards.is_empty() {
                        payload["ChildShards"] = json!(child_shards_json(&ev.child_shards));
                    }
                    yield Ok(Bytes::from(eventstream::event("SubscribeToShardEvent", payload.to_string().as_bytes())));
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "subscription failed");
                    let msg = json!({"message": "the subscription failed"}).to_string();
                    yield Ok(Bytes::from(eventstream::exception("InternalFailureException", msg.as_bytes())));
                    break;
                }
            }
        }
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/vnd.amazon.eventstream")
        .body(axum::body::Body::from_stream(body))
        .expect("static response parts are valid"))
}

/// Validates one record of PutRecord/PutRecords: `(ErrorCode, message)` on failure.
fn put_entry(st: &AppState, v: &Value) -> Result<PutEntry, (&'static str, String)> {
    let invalid = |m: String| ("InvalidArgumentException", m);
    let key =
        str_field(v, "PartitionKey").ok_or_else(|| invalid("PartitionKey is required".into()))?;
    let chars = key.chars().count();
    if !(1..=256).contains(&chars) {
        return Err(invalid(format!(
            "PartitionKey must be 1-256 characters, not {chars}"
        )));
    }
    let data = str_field(v, "Data")
        .and_then(|d| B64.decode(d).ok())
        .ok_or_else(|| invalid("Data is required and must be base64".into()))?;
    let max = st.datastreams.config().max_record_bytes;
    if data.len() + key.len() > max {
        return Err(invalid(format!(
            "a record's data and partition key must total at most {max} bytes"
        )));
    }
    let explicit_hash_key =
        match str_field(v, "ExplicitHashKey") {
            None => None,
            Some(h) => Some(parse_hash_key(h).ok_or_else(|| {
                invalid("ExplicitHashKey must be a decimal 128-bit integer".into())
            })?),
        };
    Ok(PutEntry {
        partition_key: key.to_string(),
        explicit_hash_key,
        data: Bytes::from(data),
    })
}
