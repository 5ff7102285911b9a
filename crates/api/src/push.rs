//! Kinema's own push subscription to a data stream, as server-sent events:
//! `GET /v1/datastreams/{stream}/subscribe?from=...&shard=...`, signed like
//! every other request (a presigned URL works for browsers' EventSource).
//!
//! Query: `shard` (a shard id; omitted = every shard of the stream), `from`
//! (`TRIM_HORIZON` | `LATEST` (default) | `AT_SEQUENCE_NUMBER` |
//! `AFTER_SEQUENCE_NUMBER` | `AT_TIMESTAMP`), `sequence` (for the sequence
//! positions), `timestamp` (epoch seconds, for `AT_TIMESTAMP`).
//! Each `records` event carries `{"shardId", "records": [{"sequenceNumber",
//! "partitionKey", "data" (base64), "approximateArrivalTimestamp"}],
//! "millisBehindLatest"}`; records arrive in order within a shard.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kinema_datastream::{parse_sequence, parse_shard_id, sequence_string, shard_id_string};
use serde_json::json;
use tokio::sync::mpsc;

use crate::{ApiError, AppState};

pub async fn subscribe(
    State(st): State<Arc<AppState>>,
    Path(stream): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let start = crate::kinesis::iterator_start(
        Some(q.get("from").map(String::as_str).unwrap_or("LATEST")),
        q.get("sequence").map(String::as_str),
        q.get("timestamp").and_then(|t| t.parse::<f64>().ok()),
        ["from", "sequence", "timestamp"],
    )?;
    let shards: Vec<u32> = match q.get("shard") {
        Some(s) => {
            vec![parse_shard_id(s).ok_or_else(|| ApiError::invalid("shard must be a shard id"))?]
        }
        None => st
            .datastreams
            .describe(&stream)?
            .shards
            .shards()
            .iter()
            .map(|s| s.id)
            .collect(),
    };
    // Subscribe to every shard first so a bad position fails the request.
    let subs = shards
        .iter()
        .map(|&s| {
            st.datastreams
                .subscribe_by_name(&stream, s, start)
                .map(|sub| (s, sub))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    for (shard, mut sub) in subs {
        let tx = tx.clone();
        let mut shutdown = st.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    e = sub.next_event(Duration::from_secs(15)) => e,
                    _ = shutdown.changed() => None,
                };
                let Some(Ok(ev)) = next else { break };
                if ev.records.is_empty() {
                    continue;
                }
                let records: Vec<_> = ev
                    .records
                    .iter()
                    .map(|r| {
                        json!({"sequenceNumber": sequence_string(r.sequence), "partitionKey": r.partition_key,
                               "data": B64.encode(&r.data), "approximateArrivalTimestamp": kinema_core::time::epoch_seconds(r.arrival_ms)})
                    })
                    .collect();
                let data = json!({"shardId": shard_id_string(shard), "records": records,
                                  "millisBehindLatest": ev.millis_behind_latest});
                if tx
                    .send(Event::default().event("records").data(data.to_string()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    drop(tx);
    let events = async_stream::stream! {
        while let Some(e) = rx.recv().await {
            yield Ok::<Event, Infallible>(e);
        }
    };
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Consumer groups: `POST /v1/datastreams/{stream}/groups/{group}/{action}`
/// with a JSON body, and `GET /v1/datastreams/{stream}/groups/{group}`.
///
/// - `leases` `{"consumer", "maxShards"?, "leaseMs"?}` renews the consumer's
///   leases and takes free shards (parents before children); answers
///   `{"leases": [{"shardId", "checkpoint": sequence | "SHARD_END" | null}]}`.
/// - `checkpoint` `{"consumer", "shardId", "sequenceNumber" | "SHARD_END"}`
///   stores a checkpoint durably (409 `LeaseLostException` unless the
///   consumer holds the shard's lease).
/// - `release` `{"consumer"}` gives the consumer's leases up.
pub async fn group_action(
    State(st): State<Arc<AppState>>,
    Path((stream, group, action)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    use kinema_datastream::leases::Checkpoint;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))?;
    let consumer = v["consumer"]
        .as_str()
        .ok_or_else(|| ApiError::invalid("consumer is required"))?;
    let ds = &st.datastreams;
    let out = match action.as_str() {
        "leases" => {
            let max = v["maxShards"].as_u64().unwrap_or(u64::from(u32::MAX)) as usize;
            let lease_ms = v["leaseMs"]
                .as_i64()
                .unwrap_or(kinema_engine::datastreams::DEFAULT_LEASE_MS)
                .clamp(100, 600_000);
            let leases = ds
                .acquire_leases(&stream, &group, consumer, max, lease_ms)
                .await?;
            let leases: Vec<_> = leases
                .iter()
                .map(|(s, c)| {
                    let cp = match c {
                        Some(Checkpoint::At(n)) => json!(sequence_string(*n)),
                        Some(Checkpoint::ShardEnd) => json!("SHARD_END"),
                        None => serde_json::Value::Null,
                    };
                    json!({"shardId": shard_id_string(*s), "checkpoint": cp})
                })
                .collect();
            json!({ "leases": leases, "leaseMs": lease_ms })
        }
        "checkpoint" => {
            let shard = v["shardId"]
                .as_str()
                .and_then(parse_shard_id)
                .ok_or_else(|| ApiError::invalid("shardId is required"))?;
            let at = match v["sequenceNumber"].as_str() {
                Some("SHARD_END") => Checkpoint::ShardEnd,
                Some(s) => Checkpoint::At(
                    parse_sequence(s)
                        .ok_or_else(|| ApiError::invalid("sequenceNumber is malformed"))?,
                ),
                None => return Err(ApiError::invalid("sequenceNumber is required")),
            };
            ds.checkpoint(&stream, &group, consumer, shard, at).await?;
            json!({})
        }
        "release" => {
            ds.release_leases(&stream, &group, consumer).await?;
            json!({})
        }
        other => return Err(ApiError::not_found(format!("no group action {other}"))),
    };
    Ok(axum::Json(out).into_response())
}

/// `GET /v1/datastreams/{stream}/groups/{group}`: every shard's owner,
/// lease expiry and checkpoint.
pub async fn group_state(
    State(st): State<Arc<AppState>>,
    Path((stream, group)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    use kinema_datastream::leases::Checkpoint;
    let table = st.datastreams.group(&stream, &group)?;
    let shards: Vec<_> = table
        .shards
        .iter()
        .map(|(s, l)| {
            json!({
                "shardId": shard_id_string(*s),
                "owner": l.owner,
                "leaseExpires": kinema_core::time::epoch_seconds(l.expires_ms),
                "checkpoint": match l.checkpoint {
                    Some(Checkpoint::At(n)) => json!(sequence_string(n)),
                    Some(Checkpoint::ShardEnd) => json!("SHARD_END"),
                    None => serde_json::Value::Null,
                },
            })
        })
        .collect();
    Ok(axum::Json(json!({ "group": group, "shards": shards })).into_response())
}
