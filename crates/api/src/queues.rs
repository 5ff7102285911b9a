//! The `kinesis` queue operations (botocore 1.44): `CreateQueue` …
//! `RestoreDeadLetterQueueRecords`, JSON 1.1 like the rest of `kinesis`.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kinema_datastream::queue::{self as q, MAX_BATCH};
use kinema_datastream::sequence_string;
use kinema_engine::datastreams::{
    EntryAction, QueueAttributes, QueueRecord, QueueStart, QueueView,
};
use serde_json::{Value, json};

use crate::video::epoch_seconds;
use crate::{ApiError, AppState};

fn queue_arn(v: &Value) -> Result<&str, ApiError> {
    v.get("QueueARN")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 2048)
        .ok_or_else(|| ApiError::invalid("QueueARN is required"))
}

/// Runs a queue operation; `None` if `op` is not one.
pub(crate) async fn operation(
    st: &AppState,
    op: &str,
    v: &Value,
) -> Option<Result<Value, ApiError>> {
    let ds = &st.datastreams;
    let out = match op {
        "CreateQueue" => create(st, v).await,
        "DescribeQueue" => {
            async {
                let view = ds.describe_queue(queue_arn(v)?)?;
                Ok(json!({"QueueDescription": description(&view)}))
            }
            .await
        }
        "ListQueues" => list(st, v),
        "UpdateQueue" => {
            async {
                let attrs = v
                    .get("QueueAttributes")
                    .ok_or_else(|| ApiError::validation("QueueAttributes is required"))?;
                let view = ds.update_queue(queue_arn(v)?, attributes(attrs)?).await?;
                Ok(json!({"QueueDescription": description(&view)}))
            }
            .await
        }
        "DeleteQueue" => {
            async {
                ds.delete_queue(queue_arn(v)?).await?;
                Ok(json!({}))
            }
            .await
        }
        "ReceiveQueueRecords" => receive(st, v, false).await,
        "ReceiveDeadLetterQueueRecords" => receive(st, v, true).await,
        "AcknowledgeQueueRecords" => entries(st, v, EntryAction::Acknowledge, false).await,
        "AcknowledgeDeadLetterQueueRecords" => entries(st, v, EntryAction::Acknowledge, true).await,
        "UpdateQueueRecordsVisibility" => entries(st, v, EntryAction::Visibility(0), false).await,
        "UpdateDeadLetterQueueRecordsVisibility" => {
            entries(st, v, EntryAction::Visibility(0), true).await
        }
        "RestoreDeadLetterQueueRecords" => entries(st, v, EntryAction::Restore, true).await,
        _ => return None,
    };
    Some(out)
}

async fn create(st: &AppState, v: &Value) -> Result<Value, ApiError> {
    let name = v
        .get("QueueName")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::validation("QueueName is required"))?;
    let configs = v
        .get("StreamConfigurationList")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::validation("StreamConfigurationList is required"))?;
    let [config] = configs.as_slice() else {
        return Err(ApiError::validation(
            "StreamConfigurationList must contain exactly one entry: a queue reads one data stream",
        ));
    };
    let stream_arn = config
        .get("StreamARN")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::validation("StreamConfigurationList[0].StreamARN is required"))?;
    let start = match config.get("StartingPosition") {
        None | Some(Value::Null) => QueueStart::Latest,
        Some(p) => {
            let ts = p
                .get("Timestamp")
                .and_then(|t| serde_json::from_value::<crate::video::Timestamp>(t.clone()).ok())
                .map(|t| t.0);
            match (p.get("Type").and_then(Value::as_str), ts) {
                (Some("AT_TIMESTAMP"), Some(t)) => QueueStart::AtTimestamp(t),
                (Some("AT_TIMESTAMP"), None) => {
                    return Err(ApiError::validation(
                        "StartingPosition.Timestamp is required for AT_TIMESTAMP",
                    ));
                }
                (Some(_), Some(_)) if p.get("Timestamp").is_some() => {
                    return Err(ApiError::validation(
                        "StartingPosition.Timestamp is allowed only for AT_TIMESTAMP",
                    ));
                }
                (Some("LATEST"), _) => QueueStart::Latest,
                (Some("TRIM_HORIZON"), _) => QueueStart::TrimHorizon,
                _ => {
                    return Err(ApiError::validation(
                        "StartingPosition.Type must be TRIM_HORIZON, LATEST or AT_TIMESTAMP",
                    ));
                }
            }
        }
    };
    let attrs = match v.get("QueueAttributes") {
        None | Some(Value::Null) => QueueAttributes::default(),
        Some(a) => attributes(a)?,
    };
    let tags = tags(v, "queue")?;
    let view = st
        .datastreams
        .create_queue(name, stream_arn, start, attrs, tags)
        .await?;
    Ok(json!({"QueueDescription": description(&view)}))
}

/// `QueueAttributes`: what is given, checked against the model's rules.
fn attributes(a: &Value) -> Result<QueueAttributes, ApiError> {
    let mut out = QueueAttributes::default();
    if let Some(t) = a.get("VisibilityTimeoutSeconds") {
        let s = t
            .as_u64()
            .and_then(|s| u32::try_from(s).ok())
            .filter(|&s| s <= q::MAX_VISIBILITY_S)
            .ok_or_else(|| {
                ApiError::validation(format!(
                    "VisibilityTimeoutSeconds must be between 0 and {}",
                    q::MAX_VISIBILITY_S
                ))
            })?;
        out.visibility_s = Some(s);
    }
    if let Some(d) = a.get("DeadLetterConfiguration") {
        let max = d.get("MaxReceiveCount");
        out.max_receive = Some(match d.get("TargetType").and_then(Value::as_str) {
            Some("BUILT_IN") => {
                let m = max
                    .and_then(Value::as_u64)
                    .and_then(|m| u32::try_from(m).ok())
                    .filter(|m| (1..=q::MAX_MAX_RECEIVE).contains(m))
                    .ok_or_else(|| {
                        ApiError::validation(format!(
                            "MaxReceiveCount between 1 and {} is required with TargetType BUILT_IN",
                            q::MAX_MAX_RECEIVE
                        ))
                    })?;
                Some(m)
            }
            Some("NONE") if max.is_none() => None,
            Some("NONE") => {
                return Err(ApiError::validation(
                    "MaxReceiveCount is allowed only with TargetType BUILT_IN",
                ));
            }
            _ => {
                return Err(ApiError::validation(
                    "DeadLetterConfiguration.TargetType must be BUILT_IN or NONE",
                ));
            }
        });
    }
    Ok(out)
}

fn description(view: &QueueView) -> Value {
    let i = &view.info;
    let kind = match i.start {
        QueueStart::TrimHorizon => "TRIM_HORIZON",
        QueueStart::Latest => "LATEST",
        QueueStart::AtTimestamp(_) => "AT_TIMESTAMP",
    };
    let dead_letters = match i.max_receive {
        Some(m) => json!({"TargetType": "BUILT_IN", "MaxReceiveCount": m}),
        None => json!({"TargetType": "NONE"}),
    };
    // Kinema creates and updates a queue before it answers, so a queue
    // is ACTIVE as soon as it is described.
    json!({
        "QueueName": i.name,
        "QueueARN": i.arn,
        "QueueStatus": "ACTIVE",
        "QueueCreationTimestamp": epoch_seconds(i.created_ms),
        "StreamConfigurationList": [{
            "StreamARN": view.stream_arn,
            "StartingPosition": {"Type": kind, "Timestamp": epoch_seconds(i.effective_start_ms)},
        }],
        "QueueAttributes": {
            "VisibilityTimeoutSeconds": i.visibility_s,
            "DeadLetterConfiguration": dead_letters,
        },
    })
}

/// `Tags` of a create call: strings to strings, at most 50.
pub(crate) fn tags(v: &Value, what: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let tags: BTreeMap<String, String> = match v.get("Tags") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(t) => serde_json::from_value(t.clone())
            .map_err(|_| ApiError::validation("Tags must map strings to strings"))?,
    };
    if tags.len() > 50 {
        return Err(ApiError::validation(format!(
            "a {what} has at most 50 tags"
        )));
    }
    Ok(tags)
}

/// A List call's `MaxResults` (default 100, at most `cap`), one-entry
/// `StreamFilter` and `NextToken` (the last name of the previous page:
/// names are unique and listed in order).
pub(crate) struct ListRequest<'a> {
    pub limit: usize,
    pub stream: Option<&'a str>,
    after: Option<&'a str>,
}

impl<'a> ListRequest<'a> {
    pub fn parse(v: &'a Value, cap: usize) -> Result<ListRequest<'a>, ApiError> {
        let limit = match v.get("MaxResults") {
            None => 100,
            Some(m) => m
                .as_u64()
                .filter(|m| (1..=10_000).contains(m))
                .ok_or_else(|| ApiError::validation("MaxResults must be between 1 and 10000"))?
                .min(cap as u64) as usize,
        };
        let stream =
            match v.get("StreamFilter").and_then(Value::as_array) {
                None => None,
                Some(list) => match list.as_slice() {
                    [one] => Some(one.get("StreamARN").and_then(Value::as_str).ok_or_else(
                        || ApiError::validation("StreamFilter[0].StreamARN is required"),
                    )?),
                    _ => {
                        return Err(ApiError::validation(
                            "StreamFilter must contain exactly one entry",
                        ));
                    }
                },
            };
        let after = v.get("NextToken").and_then(Value::as_str);
        Ok(ListRequest {
            limit,
            stream,
            after,
        })
    }

    /// The page of `items` (in name order) this request asks for, and
    /// the token for the next one.
    pub fn page<T>(&self, items: Vec<T>, name: impl Fn(&T) -> &str) -> (Vec<T>, Option<String>) {
        let mut rest = items
            .into_iter()
            .filter(|i| self.after.is_none_or(|a| name(i) > a));
        let page: Vec<T> = rest.by_ref().take(self.limit).collect();
        let next = rest
            .next()
            .and(page.last())
            .map(|last| name(last).to_string());
        (page, next)
    }
}

fn list(st: &AppState, v: &Value) -> Result<Value, ApiError> {
    let request = ListRequest::parse(v, 10_000)?;
    let (page, next) = request.page(st.datastreams.list_queues(request.stream)?, |q| {
        q.info.name.as_str()
    });
    let summaries: Vec<Value> = page
        .iter()
        .map(|view| {
            json!({
                "QueueName": view.info.name,
                "QueueARN": view.info.arn,
                "QueueStatus": "ACTIVE",
                "QueueCreationTimestamp": epoch_seconds(view.info.created_ms),
                "Streams": [{"StreamARN": view.stream_arn,
                             "StreamCreationTimestamp": epoch_seconds(view.stream_created_ms)}],
            })
        })
        .collect();
    let mut out = json!({"QueueSummaries": summaries});
    if let Some(next) = next {
        out["NextToken"] = json!(next);
    }
    Ok(out)
}

async fn receive(st: &AppState, v: &Value, dead: bool) -> Result<Value, ApiError> {
    let arn = queue_arn(v)?;
    let limit = match v.get("Limit") {
        None => MAX_BATCH,
        Some(l) => l
            .as_u64()
            .filter(|l| (1..=MAX_BATCH as u64).contains(l))
            .ok_or_else(|| ApiError::invalid(format!("Limit must be between 1 and {MAX_BATCH}")))?
            as usize,
    };
    let wait = match v.get("WaitTimeSeconds") {
        None => q::DEFAULT_WAIT_S,
        Some(w) => w
            .as_u64()
            .filter(|w| (1..=u64::from(q::MAX_WAIT_S)).contains(w))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "WaitTimeSeconds must be between 1 and {}",
                    q::MAX_WAIT_S
                ))
            })? as u32,
    };
    let records = st
        .datastreams
        .receive_queue(arn, limit, Duration::from_secs(u64::from(wait)), dead)
        .await?;
    Ok(json!({"QueueRecords": records.iter().map(record_json).collect::<Vec<_>>()}))
}

fn record_json(r: &QueueRecord) -> Value {
    json!({
        "ReceiptHandle": r.receipt_handle,
        "RecordId": sequence_string(r.sequence),
        "PartitionKey": r.partition_key,
        "Data": B64.encode(&r.data),
        "ApproximateArrivalTimestamp": epoch_seconds(r.arrival_ms),
        "FirstReceiveTimestamp": epoch_seconds(r.first_receive_ms),
        "ReceiveCount": r.receive_count,
    })
}

/// The batch operations: one result per entry, `Successful` and `Failed`.
async fn entries(
    st: &AppState,
    v: &Value,
    action: EntryAction,
    dead: bool,
) -> Result<Value, ApiError> {
    let arn = queue_arn(v)?;
    let list = v
        .get("Entries")
        .and_then(Value::as_array)
        .filter(|l| (1..=MAX_BATCH).contains(&l.len()))
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "Entries must hold between 1 and {MAX_BATCH} entries"
            ))
        })?;
    let mut handles = Vec::with_capacity(list.len());
    let mut actions = Vec::with_capacity(list.len());
    for e in list {
        let h = e
            .get("ReceiptHandle")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty() && h.len() <= 1024)
            .ok_or_else(|| ApiError::invalid("every entry needs a ReceiptHandle"))?;
        let a = match action {
            EntryAction::Visibility(_) => {
                let s = e
                    .get("VisibilityTimeoutSeconds")
                    .and_then(Value::as_u64)
                    .and_then(|s| u32::try_from(s).ok())
                    .filter(|&s| s <= q::MAX_VISIBILITY_S)
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "every entry needs a VisibilityTimeoutSeconds between 0 and {}",
                            q::MAX_VISIBILITY_S
                        ))
                    })?;
                EntryAction::Visibility(s)
            }
            other => other,
        };
        handles.push(h.to_string());
        actions.push(a);
    }
    let results = st
        .datastreams
        .queue_entries(arn, &actions, dead, &handles)
        .await?;
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for (h, r) in handles.iter().zip(results) {
        match r {
            Ok(()) => ok.push(json!({"ReceiptHandle": h})),
            Err(e) => failed
                .push(json!({"ReceiptHandle": h, "ErrorCode": e.code, "ErrorMessage": e.message})),
        }
    }
    Ok(json!({"Successful": ok, "Failed": failed}))
}
