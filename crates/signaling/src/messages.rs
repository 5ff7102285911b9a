//! The signaling WebSocket's JSON messages (Kinesis Video Streams WebRTC).
//!
//! Client to server: `{"action", "messagePayload" (base64 of the JSON
//! description or candidate), "recipientClientId"?, "correlationId"?}`.
//! Server to client: `{"senderClientId"?, "messageType", "messagePayload"?,
//! "statusResponse"?: {"correlationId", "errorType", "statusCode",
//! "description"}}`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    SdpOffer,
    SdpAnswer,
    IceCandidate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MessageType {
    SdpOffer,
    SdpAnswer,
    IceCandidate,
    GoAway,
    ReconnectIceServer,
    StatusResponse,
}

impl From<Action> for MessageType {
    fn from(a: Action) -> Self {
        match a {
            Action::SdpOffer => MessageType::SdpOffer,
            Action::SdpAnswer => MessageType::SdpAnswer,
            Action::IceCandidate => MessageType::IceCandidate,
        }
    }
}

/// A message from a client, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage {
    pub action: Action,
    pub message_payload: String,
    pub recipient_client_id: Option<String>,
    pub correlation_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawClientMessage {
    action: Option<String>,
    message_payload: Option<String>,
    recipient_client_id: Option<String>,
    correlation_id: Option<String>,
}

/// Correlation ids are echoed back; keep them short.
const MAX_CORRELATION_ID: usize = 256;

impl ClientMessage {
    /// Parses and validates one text frame. On failure: the correlation id
    /// (if one could be read) and a description for the `STATUS_RESPONSE`.
    pub fn parse(
        text: &str,
        max_payload: usize,
    ) -> Result<ClientMessage, (Option<String>, String)> {
        // Reject what cannot be a valid message before parsing it.
        if text.len() > max_payload + 1024 {
            return Err((None, format!("message over {max_payload} bytes")));
        }
        let raw: RawClientMessage =
            serde_json::from_str(text).map_err(|e| (None, format!("malformed message: {e}")))?;
        let cid = raw.correlation_id.filter(|c| c.len() <= MAX_CORRELATION_ID);
        let fail = |d: String| Err((cid.clone(), d));
        let action = match raw.action.as_deref() {
            Some("SDP_OFFER") => Action::SdpOffer,
            Some("SDP_ANSWER") => Action::SdpAnswer,
            Some("ICE_CANDIDATE") => Action::IceCandidate,
            Some(other) => return fail(format!("unknown action {other:?}")),
            None => return fail("action is required".into()),
        };
        let Some(payload) = raw.message_payload.filter(|p| !p.is_empty()) else {
            return fail("messagePayload is required".into());
        };
        if payload.len() > max_payload {
            return fail(format!("messagePayload over {max_payload} characters"));
        }
        if base64::engine::general_purpose::STANDARD
            .decode(payload.as_bytes())
            .is_err()
        {
            return fail("messagePayload is not base64".into());
        }
        Ok(ClientMessage {
            action,
            message_payload: payload,
            recipient_client_id: raw.recipient_client_id,
            correlation_id: cid,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    pub error_type: String,
    pub status_code: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerMessage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_client_id: Option<String>,
    pub message_type: MessageType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_response: Option<StatusResponse>,
}

impl ServerMessage {
    pub fn status(
        correlation_id: Option<String>,
        error_type: &str,
        code: u16,
        description: String,
    ) -> ServerMessage {
        ServerMessage {
            sender_client_id: None,
            message_type: MessageType::StatusResponse,
            message_payload: None,
            status_response: Some(StatusResponse {
                correlation_id,
                error_type: error_type.to_string(),
                status_code: code.to_string(),
                description,
            }),
        }
    }

    pub fn go_away() -> ServerMessage {
        ServerMessage {
            sender_client_id: None,
            message_type: MessageType::GoAway,
            message_payload: None,
            status_response: None,
        }
    }

    /// The text frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain strings and enums always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_and_bad_ones_keep_their_correlation_id() {
        let ok = ClientMessage::parse(
            r#"{"action":"SDP_OFFER","messagePayload":"eyJ0eXBlIjoib2ZmZXIifQ==","correlationId":"c1"}"#,
            10_000,
        )
        .unwrap();
        assert_eq!(ok.action, Action::SdpOffer);
        assert_eq!(ok.correlation_id.as_deref(), Some("c1"));
        assert_eq!(ok.recipient_client_id, None);
        for (text, want) in [
            ("{", "malformed"),
            (
                r#"{"action":"HELLO","messagePayload":"YQ==","correlationId":"c2"}"#,
                "unknown action",
            ),
            (r#"{"action":"SDP_OFFER","correlationId":"c2"}"#, "required"),
            (
                r#"{"action":"SDP_OFFER","messagePayload":"***","correlationId":"c2"}"#,
                "base64",
            ),
        ] {
            let (cid, d) = ClientMessage::parse(text, 10_000).unwrap_err();
            assert!(d.contains(want), "{text}: {d}");
            if text != "{" {
                assert_eq!(cid.as_deref(), Some("c2"));
            }
        }
        let big = format!(
            r#"{{"action":"SDP_OFFER","messagePayload":"{}"}}"#,
            "A".repeat(12_000)
        );
        assert!(
            ClientMessage::parse(&big, 10_000)
                .unwrap_err()
                .1
                .contains("over")
        );
    }

    #[test]
    fn server_messages_use_the_wire_names() {
        let m = ServerMessage {
            sender_client_id: Some("v1".into()),
            message_type: MessageType::IceCandidate,
            message_payload: Some("YQ==".into()),
            status_response: None,
        };
        assert_eq!(
            m.to_json(),
            r#"{"senderClientId":"v1","messageType":"ICE_CANDIDATE","messagePayload":"YQ=="}"#
        );
        let s = ServerMessage::status(
            Some("c".into()),
            "InvalidArgumentException",
            400,
            "d".into(),
        );
        assert_eq!(
            s.to_json(),
            r#"{"messageType":"STATUS_RESPONSE","statusResponse":{"correlationId":"c","errorType":"InvalidArgumentException","statusCode":"400","description":"d"}}"#
        );
        assert_eq!(
            ServerMessage::go_away().to_json(),
            r#"{"messageType":"GO_AWAY"}"#
        );
    }
}
