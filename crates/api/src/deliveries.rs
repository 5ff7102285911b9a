//! The `kinesis` channel operations (botocore 1.44): `CreateChannel`,
//! `DescribeChannel`, `ListChannels`, `UpdateChannel`, `DeleteChannel`.
//! A channel delivers a data stream to a bucket of Kinema's object store
//! (`<data>/objects/buckets/<bucket>/` on local disk); the engine's
//! `datastreams::delivery` does the work.

use axum::http::StatusCode;
use kinema_datastream::delivery::{self as d, Compression, RecordFormat};
use kinema_engine::datastreams::{ChannelSettings, ChannelView, Logging};
use serde_json::{Value, json};

use crate::video::epoch_seconds;
use crate::{ApiError, AppState};

fn channel_arn(v: &Value) -> Result<&str, ApiError> {
    v.get("ChannelARN")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 2048)
        .ok_or_else(|| ApiError::validation("ChannelARN is required"))
}

/// Runs a channel operation; `None` if `op` is not one.
pub(crate) async fn operation(
    st: &AppState,
    op: &str,
    v: &Value,
) -> Option<Result<Value, ApiError>> {
    let ds = &st.datastreams;
    let out = match op {
        "CreateChannel" => create(st, v).await,
        "DescribeChannel" => channel_arn(v)
            .and_then(|arn| Ok(ds.describe_channel(arn)?))
            .map(|view| json!({"ChannelDescription": description(&view)})),
        "ListChannels" => list(st, v),
        "UpdateChannel" => update(st, v).await,
        "DeleteChannel" => {
            async {
                ds.delete_channel(channel_arn(v)?).await?;
                Ok(json!({}))
            }
            .await
        }
        _ => return None,
    };
    Some(out)
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The bucket name in an S3 bucket ARN (`arn:aws:s3:::name`).
fn bucket(arn: &str, field: &str) -> Result<String, ApiError> {
    let name = arn
        .strip_prefix("arn:")
        .and_then(|r| r.split_once(":s3:::"))
        .map(|(_, n)| n)
        .filter(|n| kinema_core::names::valid_bucket(n))
        .ok_or_else(|| {
            ApiError::validation(format!(
                "{field} must be an S3 bucket ARN (arn:aws:s3:::name)"
            ))
        })?;
    Ok(name.to_string())
}

/// `ExpectedBucketOwner` (required): Kinema's buckets all belong to its
/// account, so any other owner is refused as S3 refuses it.
fn owner(st: &AppState, v: &Value, field: &str) -> Result<String, ApiError> {
    let account = st.engine.config().account_id.clone();
    match v.get("ExpectedBucketOwner") {
        None | Some(Value::Null) => Err(ApiError::validation(format!(
            "{field}.ExpectedBucketOwner is required"
        ))),
        Some(Value::String(o)) if o.len() == 12 && o.chars().all(|c| c.is_ascii_digit()) => {
            if *o == account {
                Ok(account)
            } else {
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "AccessDeniedException",
                    format!("{field}: the bucket is owned by account {account}, not {o}"),
                ))
            }
        }
        Some(_) => Err(ApiError::validation(format!(
            "{field} must be a 12-digit account id"
        ))),
    }
}

fn freshness(v: &Value) -> Result<Option<u32>, ApiError> {
    match v.get("DataFreshnessInSeconds") {
        None | Some(Value::Null) => Ok(None),
        Some(f) => f
            .as_u64()
            .and_then(|f| u32::try_from(f).ok())
            .filter(|f| (1..=d::MAX_FRESHNESS_S).contains(f))
            .map(Some)
            .ok_or_else(|| {
                ApiError::validation(format!(
                    "DataFreshnessInSeconds must be between 1 and {}",
                    d::MAX_FRESHNESS_S
                ))
            }),
    }
}

fn logging(v: &Value) -> Result<Logging, ApiError> {
    let c = v
        .get("CloudWatchLogs")
        .filter(|c| c.is_object())
        .ok_or_else(|| ApiError::validation("LoggingConfiguration.CloudWatchLogs is required"))?;
    let enabled = c
        .get("Enabled")
        .and_then(Value::as_bool)
        .ok_or_else(|| ApiError::validation("CloudWatchLogs.Enabled is required"))?;
    let text = |k: &str| -> Result<Option<String>, ApiError> {
        match c.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if (1..=512).contains(&s.len()) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::validation(format!(
                "CloudWatchLogs.{k} must be 1-512 characters"
            ))),
        }
    };
    Ok(Logging {
        enabled,
        group: text("LogGroupName")?,
        stream: text("LogStreamName")?,
    })
}

async fn create(st: &AppState, v: &Value) -> Result<Value, ApiError> {
    let name =
        str_at(v, "ChannelName").ok_or_else(|| ApiError::validation("ChannelName is required"))?;
    let role = str_at(v, "ServiceExecutionRoleARN")
        .ok_or_else(|| ApiError::validation("ServiceExecutionRoleARN is required"))?;
    if !valid_role(role) {
        return Err(ApiError::validation(
            "ServiceExecutionRoleARN must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)",
        ));
    }
    let configs = v
        .get("StreamConfigurationList")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::validation("StreamConfigurationList is required"))?;
    let [config] = configs.as_slice() else {
        return Err(ApiError::validation(
            "StreamConfigurationList must contain exactly one entry: a channel reads one data stream",
        ));
    };
    let stream_arn = str_at(config, "StreamARN")
        .ok_or_else(|| ApiError::validation("StreamConfigurationList[0].StreamARN is required"))?;
    let record = config.get("RecordConfiguration").ok_or_else(|| {
        ApiError::validation("StreamConfigurationList[0].RecordConfiguration is required")
    })?;
    let format = match str_at(record, "RecordFormatType") {
        Some("GSR_JSON") => {
            return Err(ApiError::invalid(
                "RecordFormatType GSR_JSON needs the AWS Glue Schema Registry, which Kinema \
                 does not have: use JSON, STRING or BYTE_ARRAY",
            ));
        }
        Some(f) => RecordFormat::parse(f).ok_or_else(|| {
            ApiError::validation("RecordFormatType must be GSR_JSON, JSON, STRING or BYTE_ARRAY")
        })?,
        None => {
            return Err(ApiError::validation(
                "RecordConfiguration.RecordFormatType is required",
            ));
        }
    };
    if record.get("GSRSchemaARN").is_some_and(|s| !s.is_null()) {
        return Err(ApiError::validation(
            "GSRSchemaARN is allowed only with RecordFormatType GSR_JSON",
        ));
    }
    if v.get("S3TablesDestinationConfiguration")
        .is_some_and(|s| !s.is_null())
    {
        return Err(ApiError::invalid(
            "S3TablesDestinationConfiguration (Apache Iceberg tables) is not supported by \
             Kinema: use S3DestinationConfiguration",
        ));
    }
    if v.get("EncryptionConfiguration")
        .is_some_and(|s| !s.is_null())
    {
        return Err(ApiError::invalid(
            "EncryptionConfiguration needs AWS KMS, which Kinema does not have",
        ));
    }
    let s3 = v
        .get("S3DestinationConfiguration")
        .filter(|s| s.is_object())
        .ok_or_else(|| ApiError::validation("S3DestinationConfiguration is required"))?;
    let storage = s3
        .get("StorageConfiguration")
        .filter(|s| s.is_object())
        .ok_or_else(|| {
            ApiError::validation("S3DestinationConfiguration.StorageConfiguration is required")
        })?;
    let bucket_arn = str_at(storage, "BucketARN")
        .ok_or_else(|| ApiError::validation("StorageConfiguration.BucketARN is required"))?;
    let compression = match str_at(storage, "CompressionType") {
        Some(c) => Compression::parse(c)
            .ok_or_else(|| ApiError::validation("CompressionType must be NONE, GZIP or ZSTD"))?,
        None => {
            return Err(ApiError::validation(
                "StorageConfiguration.CompressionType is required",
            ));
        }
    };
    let storage_class = match str_at(storage, "StorageClass") {
        None => None,
        Some(c @ ("STANDARD" | "INTELLIGENT_TIERING" | "GLACIER_IR")) => Some(c.to_string()),
        Some(_) => {
            return Err(ApiError::validation(
                "StorageClass must be STANDARD, INTELLIGENT_TIERING or GLACIER_IR",
            ));
        }
    };
    let template = str_at(storage, "OutputKeyTemplate").map(str::to_string);
    let error = match s3.get("DeadLetterQueueS3Configuration") {
        None | Some(Value::Null) => None,
        Some(e) => {
            let arn = str_at(e, "BucketARN").ok_or_else(|| {
                ApiError::validation("DeadLetterQueueS3Configuration.BucketARN is required")
            })?;
            let prefix = match e.get("ErrorOutputPrefix") {
                None | Some(Value::Null) => None,
                Some(Value::String(p))
                    if (1..=d::MAX_TEMPLATE).contains(&p.len())
                        && p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "!-_'.()/".contains(c))
                        && !p.starts_with('/')
                        && !p.starts_with("./")
                        && !p.contains("/./")
                        && !p.contains("..")
                        && !p.contains("//") =>
                {
                    Some(p.clone())
                }
                Some(_) => {
                    return Err(ApiError::validation(
                        "ErrorOutputPrefix must be 1-1024 characters of [0-9A-Za-z!-_'.()/], \
                         not start with '/' and hold no '..', '//' or './'",
                    ));
                }
            };
            Some((
                (
                    bucket(arn, "DeadLetterQueueS3Configuration.BucketARN")?,
                    owner(st, e, "DeadLetterQueueS3Configuration")?,
                ),
                prefix,
            ))
        }
    };
    let (error_bucket, error_prefix) = match error {
        Some((b, p)) => (Some(b), p),
        None => (None, None),
    };
    let logging = match v.get("LoggingConfiguration") {
        None | Some(Value::Null) => Logging::default(),
        Some(l) => logging(l)?,
    };
    let settings = ChannelSettings {
        role_arn: role.to_string(),
        format,
        bucket: bucket(bucket_arn, "StorageConfiguration.BucketARN")?,
        bucket_owner: owner(st, storage, "StorageConfiguration")?,
        template,
        storage_class,
        compression,
        freshness_s: freshness(s3)?.unwrap_or(d::DEFAULT_FRESHNESS_S),
        error_bucket,
        error_prefix,
        logging,
    };
    let tags = crate::queues::tags(v, "channel")?;
    let view = st
        .datastreams
        .create_channel(name, stream_arn, settings, tags)
        .await?;
    Ok(json!({"ChannelDescription": description(&view)}))
}

/// `arn:aws[-a-z0-9]*:iam::<12 digits>:role/<path and name>`.
fn valid_role(arn: &str) -> bool {
    let Some(rest) = arn.strip_prefix("arn:aws") else {
        return false;
    };
    let Some((partition, rest)) = rest.split_once(":iam::") else {
        return false;
    };
    let Some((account, role)) = rest.split_once(":role/") else {
        return false;
    };
    arn.len() <= 2048
        && partition
            .chars()
            .all(|c| c == '-' || c.is_ascii_lowercase() || c.is_ascii_digit())
        && account.len() == 12
        && account.chars().all(|c| c.is_ascii_digit())
        && !role.is_empty()
        && role
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c))
}

async fn update(st: &AppState, v: &Value) -> Result<Value, ApiError> {
    let arn = channel_arn(v)?;
    if v.get("S3TablesDestinationConfiguration")
        .is_some_and(|s| !s.is_null())
    {
        return Err(ApiError::invalid(
            "S3TablesDestinationConfiguration (Apache Iceberg tables) is not supported by Kinema",
        ));
    }
    let fresh = match v.get("S3DestinationConfiguration") {
        None | Some(Value::Null) => None,
        Some(s3) => freshness(s3)?,
    };
    let logs = match v.get("LoggingConfiguration") {
        None | Some(Value::Null) => None,
        Some(l) => Some(logging(l)?),
    };
    let view = st.datastreams.update_channel(arn, fresh, logs).await?;
    Ok(json!({"ChannelDescription": description(&view)}))
}

fn bucket_arn(name: &str) -> String {
    format!("arn:aws:s3:::{name}")
}

fn description(view: &ChannelView) -> Value {
    let i = &view.info;
    let s = &i.settings;
    let mut storage = json!({
        "BucketARN": bucket_arn(&s.bucket),
        "ExpectedBucketOwner": s.bucket_owner,
        "OutputKeyTemplate": s.template.as_deref().unwrap_or(d::DEFAULT_TEMPLATE),
        "CompressionType": s.compression.as_str(),
    });
    if let Some(c) = &s.storage_class {
        storage["StorageClass"] = json!(c);
    }
    let (error_bucket, error_owner) = s
        .error_bucket
        .clone()
        .unwrap_or_else(|| (s.bucket.clone(), s.bucket_owner.clone()));
    let mut cloudwatch = json!({"Enabled": s.logging.enabled});
    if let Some(g) = &s.logging.group {
        cloudwatch["LogGroupName"] = json!(g);
    }
    if let Some(n) = &s.logging.stream {
        cloudwatch["LogStreamName"] = json!(n);
    }
    // Kinema creates a channel before it answers, so it is ACTIVE when
    // described; a failing delivery is named in the status reason.
    let mut out = json!({
        "ChannelName": i.name,
        "ChannelARN": i.arn,
        "ChannelId": i.id,
        "ChannelStatus": "ACTIVE",
        "ChannelCreationTimestamp": epoch_seconds(i.created_ms),
        "ServiceExecutionRoleARN": s.role_arn,
        "StreamConfigurationList": [{
            "StreamARN": view.stream_arn,
            "StreamCreationTimestamp": epoch_seconds(view.stream_created_ms),
            "RecordConfiguration": {"RecordFormatType": s.format.as_str()},
        }],
        "S3DestinationConfiguration": {
            "DataFreshnessInSeconds": s.freshness_s,
            "DeadLetterQueueS3Configuration": {
                "BucketARN": bucket_arn(&error_bucket),
                "ExpectedBucketOwner": error_owner,
                "ErrorOutputPrefix": s.error_prefix.as_deref().unwrap_or(d::DEFAULT_ERROR_PREFIX),
            },
            "StorageConfiguration": storage,
        },
        "LoggingConfiguration": {"CloudWatchLogs": cloudwatch},
    });
    if let Some(e) = &view.error {
        out["ChannelStatusReason"] = reason(e);
    }
    out
}

/// `ChannelStatusReason` for a failing delivery (at most 2048 bytes).
fn reason(error: &str) -> Value {
    let mut r = format!("the last delivery failed: {error}");
    if r.len() > 2048 {
        let mut end = 2045;
        while !r.is_char_boundary(end) {
            end -= 1;
        }
        r.truncate(end);
        r.push_str("...");
    }
    json!(r)
}

fn list(st: &AppState, v: &Value) -> Result<Value, ApiError> {
    // "If you specify a value greater than 100, at most 100 results are
    // returned."
    let request = crate::queues::ListRequest::parse(v, 100)?;
    let (page, next) = request.page(st.datastreams.list_channels(request.stream)?, |c| {
        c.info.name.as_str()
    });
    let summaries: Vec<Value> = page
        .iter()
        .map(|view| {
            let mut s = json!({
                "ChannelName": view.info.name,
                "ChannelARN": view.info.arn,
                "ChannelId": view.info.id,
                "ChannelStatus": "ACTIVE",
                "ChannelCreationTimestamp": epoch_seconds(view.info.created_ms),
                "ChannelDestinationType": "S3",
                "Streams": [{"StreamARN": view.stream_arn,
                             "StreamCreationTimestamp": epoch_seconds(view.stream_created_ms)}],
            });
            if let Some(e) = &view.error {
                s["ChannelStatusReason"] = reason(e);
            }
            s
        })
        .collect();
    let mut out = json!({"ChannelSummaries": summaries});
    if let Some(next) = next {
        out["NextToken"] = json!(next);
    }
    Ok(out)
}
