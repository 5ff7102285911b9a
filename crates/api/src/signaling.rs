//! The signaling WebSocket (`GET /?X-Amz-ChannelARN=…[&X-Amz-ClientId=…]`,
//! SigV4-presigned like the service's WSS endpoint) and the
//! `kinesis-video-signaling` REST operations: GetIceServerConfig and
//! SendAlexaOfferToMaster.
//!
//! A connection without `X-Amz-ClientId` is the master, one with it a
//! viewer. Refusals before the upgrade are HTTP errors in the AWS shape
//! (403 for a bad or expired signature, 404 for an unknown channel, 400
//! `ClientLimitExceededException` when the channel has its viewers); after
//! the upgrade every problem with a message is a `STATUS_RESPONSE` and the
//! connection stays open.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use kinema_engine::signaling::{CloseReason, Connection, Outgoing, Role};
use serde::Deserialize;
use serde_json::json;

use crate::video::{ok, parse};
use crate::{ApiError, AppState};

type St = State<Arc<AppState>>;

/// Largest WebSocket message read; the channel refuses payloads over its
/// own limit with a STATUS_RESPONSE, this only bounds memory.
const MAX_WS_MESSAGE: usize = 64 * 1024;
/// How long SendAlexaOfferToMaster waits for the master's answer.
const ALEXA_ANSWER_WAIT: Duration = Duration::from_secs(5);

/// `GET /` with an `Upgrade: websocket`: a signaling connection.
pub(crate) async fn connect(
    State(st): St,
    Query(q): Query<HashMap<String, String>>,
    tcp: Option<axum::Extension<Arc<crate::serve::Connection>>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Ok(ws) = ws else {
        return Err(ApiError::invalid(
            "GET / is the signaling WebSocket: send an Upgrade: websocket request",
        ));
    };
    let arn = q
        .get("X-Amz-ChannelARN")
        .ok_or_else(|| ApiError::invalid("X-Amz-ChannelARN is required"))?;
    let client_id = q.get("X-Amz-ClientId").map(String::as_str);
    let role = if client_id.is_some() {
        Role::Viewer
    } else {
        Role::Master
    };
    let conn = st.hub.connect(arn, role, client_id).await?;
    Ok(ws
        .max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| async move {
            // The socket keeps its place under the connection cap.
            let _tcp = tcp;
            pump(socket, conn).await
        })
        .into_response())
}

/// Moves messages between one WebSocket and its channel connection until
/// either side ends. At shutdown the hub sends GO_AWAY and closes.
async fn pump(mut socket: WebSocket, mut conn: Connection) {
    loop {
        tokio::select! {
            out = conn.recv() => match out {
                Some(Outgoing::Text(text)) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Some(Outgoing::Close(reason)) => {
                    let reason = match reason {
                        CloseReason::Replaced => "replaced by a newer connection",
                        CloseReason::GoingAway => "the server is going away",
                    };
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame { code: 1000, reason: reason.into() })))
                        .await;
                    return;
                }
                None => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if !conn.send(text.to_string()).await {
                        return;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let status = kinema_signaling::ServerMessage::status(
                        None,
                        "InvalidArgumentException",
                        400,
                        "signaling messages are JSON text frames".into(),
                    );
                    if socket.send(Message::Text(status.to_json().into())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {} // ping, pong: answered by the library
                Some(Err(_)) | None => return,
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IceInput {
    #[serde(rename = "ChannelARN")]
    channel_arn: Option<String>,
    client_id: Option<String>,
    service: Option<String>,
    username: Option<String>,
}

/// `POST /v1/get-ice-server-config`: TURN servers with credentials in the
/// TURN REST style, valid for the configured TTL.
pub(crate) async fn get_ice_server_config(
    State(st): St,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: IceInput = parse(&body)?;
    let arn = input
        .channel_arn
        .ok_or_else(|| ApiError::invalid("ChannelARN is required"))?;
    st.channels.describe(None, Some(&arn))?;
    if let Some(s) = input.service.as_deref()
        && s != "TURN"
    {
        return Err(ApiError::invalid("Service must be TURN"));
    }
    let client = input
        .client_id
        .or(input.username)
        .unwrap_or_else(|| "kinema".into());
    if !(1..=256).contains(&client.len()) || client.contains(':') {
        return Err(ApiError::invalid(
            "ClientId must be 1-256 characters without ':'",
        ));
    }
    let Some(ice) = &st.ice else {
        return Ok(ok(json!({ "IceServerList": [] })));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let creds = kinema_signaling::turn_credentials(&ice.secret, &client, now, ice.ttl_seconds);
    Ok(ok(json!({
        "IceServerList": [{
            "Uris": ice.uris,
            "Username": creds.username,
            "Password": creds.password,
            "Ttl": ice.ttl_seconds,
        }]
    })))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AlexaInput {
    #[serde(rename = "ChannelARN")]
    channel_arn: Option<String>,
    sender_client_id: Option<String>,
    message_payload: Option<String>,
}

/// `POST /v1/send-alexa-offer-to-master`: relays an offer to the master as
/// the given viewer and returns the master's answer.
pub(crate) async fn send_alexa_offer_to_master(
    State(st): St,
    _headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: AlexaInput = parse(&body)?;
    let arn = input
        .channel_arn
        .ok_or_else(|| ApiError::invalid("ChannelARN is required"))?;
    let sender = input
        .sender_client_id
        .ok_or_else(|| ApiError::invalid("SenderClientId is required"))?;
    let payload = input
        .message_payload
        .ok_or_else(|| ApiError::invalid("MessagePayload is required"))?;
    let answer = st
        .hub
        .offer_to_master(&arn, &sender, &payload, ALEXA_ANSWER_WAIT)
        .await?;
    Ok(ok(json!({ "Answer": answer })))
}

/// TURN settings for GetIceServerConfig.
pub struct IceSettings {
    /// `turn:` / `turns:` URIs handed to clients.
    pub uris: Vec<String>,
    /// The shared secret of the TURN REST scheme (also coturn's
    /// `static-auth-secret`).
    pub secret: String,
    pub ttl_seconds: u64,
}

/// WHEP (`POST /v1/whep/{stream}`, body an SDP offer): a live viewer of an
/// ingested stream without signaling; answers `201 Created` with the SDP
/// answer and the session's `Location`.
pub(crate) async fn whep_offer(
    State(st): St,
    axum::extract::Path(stream): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !ct.starts_with("application/sdp") {
        return Err(ApiError::new(
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "InvalidArgumentException",
            "WHEP offers are application/sdp",
        ));
    }
    let offer =
        std::str::from_utf8(&body).map_err(|_| ApiError::invalid("the offer is not UTF-8 text"))?;
    let (id, answer) = st.live.whep_offer(&stream, offer).await?;
    Ok((
        http::StatusCode::CREATED,
        [
            (http::header::CONTENT_TYPE, "application/sdp".to_string()),
            (http::header::LOCATION, format!("/v1/whep/{stream}/{id}")),
        ],
        answer,
    )
        .into_response())
}

/// WHEP session: `DELETE` ends it, `PATCH` (application/trickle-ice-sdpfrag)
/// adds candidates.
pub(crate) async fn whep_delete(
    State(st): St,
    axum::extract::Path((stream, id)): axum::extract::Path<(String, String)>,
) -> Result<Response, ApiError> {
    st.live.whep_delete(&stream, &id).await?;
    Ok(http::StatusCode::OK.into_response())
}

pub(crate) async fn whep_patch(
    State(st): St,
    axum::extract::Path((stream, id)): axum::extract::Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let frag = std::str::from_utf8(&body)
        .map_err(|_| ApiError::invalid("the fragment is not UTF-8 text"))?;
    st.live.whep_candidates(&stream, &id, frag).await?;
    Ok(http::StatusCode::NO_CONTENT.into_response())
}
