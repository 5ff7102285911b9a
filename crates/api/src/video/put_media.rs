//! PutMedia: one chunked MKV upload in, JSON ACK lines out as fragments
//! are buffered, received and persisted (or refused with an ErrorId).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use kinema_engine::{
    AckError, EngineError, IngestEvent, PutMediaSession, TimecodeType, fragment_number_string,
    now_ms,
};
use serde_json::json;
use tokio::sync::mpsc;

use super::{IDLE_ACK_PERIOD, St};
use crate::metrics::ErrorLabel;
use crate::metrics::stream as label;
use crate::{ApiError, AppState};

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
    ack_with_message(event, timecode, number, error, None)
}

/// An ack line; an ERROR may say why in `ErrorMessage` (a field of
/// Kinema's: clients that know only the documented ones skip it).
fn ack_with_message(
    event: &str,
    timecode: Option<u64>,
    number: Option<u64>,
    error: Option<AckError>,
    message: Option<&str>,
) -> Bytes {
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
    if let Some(m) = message {
        v["ErrorMessage"] = json!(m);
    }
    let mut line = v.to_string();
    line.push('\n');
    Bytes::from(line)
}

pub(super) async fn put_media(
    State(st): St,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
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
    let limits = &st.limits.config;
    let mut last_data = tokio::time::Instant::now();
    let ends = tokio::time::sleep(limits.put_media_max_duration);
    tokio::pin!(ends);
    loop {
        tokio::select! {
            chunk = body.next() => match chunk {
                Some(Ok(data)) => {
                    active = true;
                    last_data = tokio::time::Instant::now();
                    st.metrics.incoming_bytes.get_or_create(&labels).inc_by(data.len() as u64);
                    session.push(&data);
                    if !drain(&st, &mut session, &tx, &stream).await {
                        discard_rest(&mut body).await;
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
                if last_data.elapsed() >= limits.put_media_idle_timeout {
                    // Complete fragments are stored; the partial one is not.
                    tracing::info!(%stream, "PutMedia upload sent nothing for too long; ended");
                    break;
                }
                if !active && tx.send(ack("IDLE", None, None, None)).await.is_err() {
                    break;
                }
                active = false;
            }
            _ = &mut ends => {
                tracing::info!(%stream, "PutMedia upload reached its maximum duration; ended");
                break;
            }
            _ = shutdown.changed() => break,
        }
    }
    st.metrics.put_media_sessions.get_or_create(&labels).dec();
}

/// After an ERROR ack, how long and how much of the rest of the upload is
/// read and dropped before the connection closes. Closing with unread
/// bytes makes the kernel reset the connection, and a reset can discard
/// the ERROR ack before the producer reads it.
const DISCARD_AFTER_ERROR: Duration = Duration::from_secs(2);
const DISCARD_AFTER_ERROR_BYTES: usize = 16 * 1024 * 1024;

async fn discard_rest<S>(body: &mut S)
where
    S: futures::Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    let mut left = DISCARD_AFTER_ERROR_BYTES;
    let _ = tokio::time::timeout(DISCARD_AFTER_ERROR, async {
        while let Some(Ok(chunk)) = body.next().await {
            left = left.saturating_sub(chunk.len());
            if left == 0 {
                break;
            }
        }
    })
    .await;
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
                let line = ack_with_message("ERROR", timecode, None, Some(error), Some(&detail));
                let _ = tx.send(line).await;
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

#[cfg(test)]
mod tests {
    use serde_json::Value;

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
