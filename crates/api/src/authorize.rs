//! Authorisation: every signed request is named as an IAM action on a
//! resource ARN and decided against its caller's policies
//! (`kinema_iam`), before any handler runs. A refusal is
//! `AccessDeniedException` naming both; every refusal and every call that
//! changes something is written to the audit log (target `kinema::audit`).
//!
//! Actions are the AWS ones where Kinema speaks an AWS protocol
//! (`kinesisvideo:PutMedia`, `kinesisvideo:ConnectAsViewer`,
//! `kinesis:PutRecords`, ...) and `kinema:*` for Kinema's own API
//! (sources, detectors, consumer groups, live viewing over WHEP). Lists
//! are on resource `*`, as in IAM.

use axum::http::StatusCode;
use http::request::Parts;
use kinema_iam::Decision;
use serde_json::Value;

use crate::sigv4::Principal;
use crate::{ApiError, AppState};

/// What a request asks to do, in IAM's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub action: String,
    pub resource: String,
}

/// `createStream` -> `CreateStream`.
fn pascal(op: &str) -> String {
    let mut c = op.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn field<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name).and_then(Value::as_str)
}

impl AppState {
    fn region(&self) -> &str {
        &self.engine.config().region
    }

    fn account(&self) -> &str {
        &self.engine.config().account_id
    }

    /// A video stream's ARN: the stored one if the stream exists, else the
    /// ARN any stream of that name has (its creation time a wildcard).
    fn video_arn(&self, name: Option<&str>, arn: Option<&str>) -> String {
        if let Some(a) = arn {
            return a.to_string();
        }
        let Some(name) = name else {
            return "*".into();
        };
        match self.engine.describe_stream(Some(name), None) {
            Ok(info) => info.arn,
            Err(_) => format!(
                "arn:aws:kinesisvideo:{}:{}:stream/{name}/*",
                self.region(),
                self.account()
            ),
        }
    }

    fn channel_arn(&self, name: Option<&str>, arn: Option<&str>) -> String {
        if let Some(a) = arn {
            return a.to_string();
        }
        let Some(name) = name else {
            return "*".into();
        };
        match self.channels.describe(Some(name), None) {
            Ok(c) => c.arn,
            Err(_) => format!(
                "arn:aws:kinesisvideo:{}:{}:channel/{name}/*",
                self.region(),
                self.account()
            ),
        }
    }

    /// A data stream's ARN, from the very name the operation will use
    /// (`DataStreams::resolve_name`, which refuses a name and an ARN that
    /// disagree, and ARNs not of this server's form).
    fn data_stream_arn(&self, name: Option<&str>, arn: Option<&str>) -> Result<String, ApiError> {
        if name.is_none() && arn.is_none() {
            return Ok("*".into());
        }
        let name = self.datastreams.resolve_name(name, arn)?;
        Ok(format!(
            "arn:aws:kinesis:{}:{}:stream/{name}",
            self.region(),
            self.account()
        ))
    }

    fn kinema_arn(&self, kind: &str, name: &str) -> String {
        format!(
            "arn:aws:kinema:{}:{}:{kind}/{name}",
            self.region(),
            self.account()
        )
    }
}

/// Names a signed request as the actions on resources it needs (usually
/// one). `body` is the JSON body when the route has one (streaming uploads
/// carry their stream in headers). Path segments and query keys are read
/// decoded, as the handlers see them; a query that names its channel or
/// client twice is refused. Unknown routes are named too, so that nothing
/// is unchecked.
pub(crate) fn target(
    st: &AppState,
    parts: &Parts,
    body: Option<&[u8]>,
) -> Result<Vec<Target>, ApiError> {
    let json: Value = body
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(Value::Null);
    let path = parts.uri.path();
    let decoded: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        // As the router decodes a segment for its handler: no '+' rule.
        .map(|s| crate::sigv4::percent_decode(s, false))
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let pairs = crate::sigv4::query_pairs(parts.uri.query().unwrap_or_default());
    for name in ["X-Amz-ChannelARN", "X-Amz-ClientId"] {
        if pairs.iter().filter(|(k, _)| k == name).count() > 1 {
            return Err(ApiError::invalid(format!("{name} is given more than once")));
        }
    }
    let query = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let video = |b: &Value| st.video_arn(field(b, "StreamName"), field(b, "StreamARN"));
    let t = |action: String, resource: String| Target { action, resource };
    let method = parts.method.as_str();
    let one = match (method, segments.as_slice()) {
        ("POST", [""]) if header("x-amz-target").is_none() => {
            let form = crate::sts::form(body.unwrap_or_default());
            let action = form.get("Action").map_or("Unknown", String::as_str);
            let resource = match action {
                "AssumeRole" => form.get("RoleArn").cloned().unwrap_or_else(|| "*".into()),
                _ => "*".into(),
            };
            t(format!("sts:{action}"), resource)
        }
        ("POST", [""]) => {
            let op = header("x-amz-target")
                .and_then(|t| t.strip_prefix("Kinesis_20131202."))
                .unwrap_or("Unknown");
            // The stream the operation will act on: a consumer's own
            // stream, an iterator's, a page token's, or the named one.
            let resource = match op {
                "ListStreams" | "ListQueues" | "ListChannels" => "*".to_string(),
                // Only the operations that act on a queue or a channel are
                // judged by its ARN: a stream operation with a stray
                // QueueARN or ChannelARN field is judged by its stream.
                "DescribeQueue"
                | "UpdateQueue"
                | "DeleteQueue"
                | "ReceiveQueueRecords"
                | "ReceiveDeadLetterQueueRecords"
                | "AcknowledgeQueueRecords"
                | "AcknowledgeDeadLetterQueueRecords"
                | "UpdateQueueRecordsVisibility"
                | "UpdateDeadLetterQueueRecordsVisibility"
                | "RestoreDeadLetterQueueRecords" => {
                    field(&json, "QueueARN").unwrap_or("*").to_string()
                }
                "DescribeChannel" | "UpdateChannel" | "DeleteChannel" => {
                    field(&json, "ChannelARN").unwrap_or("*").to_string()
                }
                "CreateQueue" | "CreateChannel" => {
                    let stream = json
                        .get("StreamConfigurationList")
                        .and_then(|l| l.get(0))
                        .and_then(|c| c.get("StreamARN"))
                        .and_then(Value::as_str);
                    st.data_stream_arn(None, stream)?
                }
                _ if field(&json, "ConsumerARN").is_some() => {
                    let consumer = field(&json, "ConsumerARN").unwrap_or_default();
                    let stream = consumer.split("/consumer/").next().unwrap_or_default();
                    st.data_stream_arn(None, Some(stream))?
                }
                "GetRecords" => {
                    let stream = field(&json, "ShardIterator")
                        .and_then(|i| st.datastreams.iterator_stream(i));
                    match stream {
                        Some(n) => st.data_stream_arn(Some(&n), None)?,
                        // The operation refuses it; nothing to name.
                        None => "*".into(),
                    }
                }
                "ListShards" if field(&json, "NextToken").is_some() => {
                    let token = field(&json, "NextToken").unwrap_or_default();
                    let stream = token.split_once('/').map_or(token, |(n, _)| n);
                    st.data_stream_arn(Some(stream), None)?
                }
                _ => st.data_stream_arn(field(&json, "StreamName"), field(&json, "StreamARN"))?,
            };
            t(format!("kinesis:{op}"), resource)
        }
        ("GET", [""]) => {
            let arn = query("X-Amz-ChannelARN").unwrap_or_else(|| "*".into());
            let action = if query("X-Amz-ClientId").is_some() {
                "kinesisvideo:ConnectAsViewer"
            } else {
                "kinesisvideo:ConnectAsMaster"
            };
            t(action.into(), arn)
        }
        ("POST", ["putMedia"]) => t(
            "kinesisvideo:PutMedia".into(),
            st.video_arn(header("x-amzn-stream-name"), header("x-amzn-stream-arn")),
        ),
        ("POST", ["listStreams"]) | ("POST", ["listSignalingChannels"]) => {
            t(format!("kinesisvideo:{}", pascal(segments[0])), "*".into())
        }
        ("POST", [op])
            if op.ends_with("SignalingChannel") || *op == "getSignalingChannelEndpoint" =>
        {
            t(
                format!("kinesisvideo:{}", pascal(op)),
                st.channel_arn(field(&json, "ChannelName"), field(&json, "ChannelARN")),
            )
        }
        ("POST", ["v1", "get-ice-server-config"]) => t(
            "kinesisvideo:GetIceServerConfig".into(),
            st.channel_arn(None, field(&json, "ChannelARN")),
        ),
        ("POST", ["v1", "send-alexa-offer-to-master"]) => t(
            "kinesisvideo:SendAlexaOfferToMaster".into(),
            st.channel_arn(None, field(&json, "ChannelARN")),
        ),
        ("POST", [op]) => t(format!("kinesisvideo:{}", pascal(op)), video(&json)),
        (_, ["v1", "whep", stream, ..]) => t(
            "kinema:ConnectAsViewer".into(),
            st.video_arn(Some(stream), None),
        ),
        ("GET", ["v1", "datastreams", stream, "subscribe"]) => t(
            "kinesis:SubscribeToShard".into(),
            st.data_stream_arn(Some(stream), None)?,
        ),
        ("GET", ["v1", "datastreams", stream, "groups", _]) => t(
            "kinema:DescribeConsumerGroup".into(),
            st.data_stream_arn(Some(stream), None)?,
        ),
        ("POST", ["v1", "datastreams", stream, "groups", _, action]) => t(
            format!("kinema:{}ConsumerGroup", pascal(action)),
            st.data_stream_arn(Some(stream), None)?,
        ),
        ("GET", ["v1", "keys"]) => t("kinema:ListAccessKeys".into(), "*".into()),
        ("POST", ["v1", "keys"]) => t("kinema:CreateAccessKey".into(), st.kinema_arn("key", "*")),
        ("DELETE", ["v1", "keys", id]) => {
            t("kinema:DeleteAccessKey".into(), st.kinema_arn("key", id))
        }
        ("POST", ["v1", "keys", id, "rotate"]) => {
            t("kinema:RotateAccessKey".into(), st.kinema_arn("key", id))
        }
        ("GET", ["v1", "policies"]) => t("kinema:ListPolicies".into(), "*".into()),
        ("PUT", ["v1", "policies", name]) => {
            t("kinema:PutPolicy".into(), st.kinema_arn("policy", name))
        }
        ("DELETE", ["v1", "policies", name]) => {
            t("kinema:DeletePolicy".into(), st.kinema_arn("policy", name))
        }
        ("GET", ["v1", "sources"]) => t("kinema:ListSources".into(), "*".into()),
        ("POST", ["v1", "sources"]) => {
            // A source writes into its stream as a producer would.
            return Ok(vec![
                t(
                    "kinema:CreateSource".into(),
                    st.kinema_arn("source", field(&json, "name").unwrap_or("*")),
                ),
                t(
                    "kinesisvideo:PutMedia".into(),
                    st.video_arn(Some(field(&json, "stream").unwrap_or("*")), None),
                ),
            ]);
        }
        (m, ["v1", "sources", name]) => t(
            format!(
                "kinema:{}Source",
                if m == "DELETE" { "Delete" } else { "Describe" }
            ),
            st.kinema_arn("source", name),
        ),
        ("GET", ["v1", "detectors"]) => t("kinema:ListDetectors".into(), "*".into()),
        (m, ["v1", "detectors", stream]) => t(
            format!(
                "kinema:{}Detector",
                match m {
                    "PUT" => "Put",
                    "DELETE" => "Delete",
                    _ => "Describe",
                }
            ),
            st.video_arn(Some(stream), None),
        ),
        ("GET", ["v1", "replay", stream]) => t(
            "kinesisvideo:GetHLSStreamingSessionURL".into(),
            st.video_arn(Some(stream), None),
        ),
        _ => t(format!("kinema:{method}{path}"), "*".into()),
    };
    Ok(vec![one])
}

/// Whether an action changes something (and so is audited when allowed).
fn mutating(action: &str) -> bool {
    let op = action.split_once(':').map_or(action, |(_, op)| op);
    ![
        "Get",
        "List",
        "Describe",
        "Connect",
        "Subscribe",
        "AssumeRole",
    ]
    .iter()
    .any(|p| op.starts_with(p))
}

/// Decides a request; refusals and allowed changes go to the audit log.
pub(crate) fn authorize(
    principal: &Principal,
    target: &Target,
    peer: &str,
) -> Result<(), ApiError> {
    let decision = principal.policies.decide(&target.action, &target.resource);
    let (action, resource, key) = (
        target.action.as_str(),
        target.resource.as_str(),
        principal.access_key_id.as_str(),
    );
    match decision {
        Decision::Allow => {
            if mutating(action) {
                tracing::info!(target: "kinema::audit", key, action, resource, peer, outcome = "allowed");
            }
            Ok(())
        }
        denied => {
            tracing::warn!(target: "kinema::audit", key, action, resource, peer, outcome = "denied");
            let how = if denied == Decision::ExplicitDeny {
                " with an explicit deny"
            } else {
                ""
            };
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "AccessDeniedException",
                format!(
                    "User: {key} is not authorized to perform: {action} on resource: {resource}{how}"
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_not_audited_and_changes_are() {
        assert!(!mutating("kinesisvideo:GetMedia"));
        assert!(!mutating("kinesis:ListShards"));
        assert!(!mutating("kinesisvideo:ConnectAsViewer"));
        assert!(mutating("kinesisvideo:PutMedia"));
        assert!(mutating("kinesis:PutRecords"));
        assert!(mutating("kinema:DeleteSource"));
        assert_eq!(
            pascal("getHLSStreamingSessionURL"),
            "GetHLSStreamingSessionURL"
        );
    }
}
