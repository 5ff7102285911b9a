//! GetHLSStreamingSessionURL and GetDASHStreamingSessionURL.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use kinema_engine::playback::{Protocol, SessionRequest};
use kinema_hls::session::Mode;
use kinema_hls::{Container, Discontinuity};
use serde::Deserialize;
use serde_json::json;

use super::{Selector, St, always_never, choice, selector_kind};
use crate::ApiError;
use crate::video::{StreamRef, endpoint, ok, parse};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HlsInput {
    #[serde(flatten)]
    stream: StreamRef,
    playback_mode: Option<String>,
    #[serde(rename = "HLSFragmentSelector")]
    selector: Option<Selector>,
    container_format: Option<String>,
    discontinuity_mode: Option<String>,
    display_fragment_timestamp: Option<String>,
    expires: Option<i64>,
    max_media_playlist_fragment_results: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DashInput {
    #[serde(flatten)]
    stream: StreamRef,
    playback_mode: Option<String>,
    #[serde(rename = "DASHFragmentSelector")]
    selector: Option<Selector>,
    display_fragment_timestamp: Option<String>,
    display_fragment_number: Option<String>,
    expires: Option<i64>,
    max_manifest_fragment_results: Option<i64>,
}

/// The members both session kinds share, parsed into a request.
fn request(
    protocol: Protocol,
    stream: &StreamRef,
    mode: Option<&str>,
    selector: Option<&Selector>,
    expires: Option<i64>,
    max: Option<i64>,
) -> Result<SessionRequest, ApiError> {
    let mode = choice(
        mode,
        "PlaybackMode",
        &[
            ("LIVE", Mode::Live),
            ("LIVE_REPLAY", Mode::LiveReplay),
            ("ON_DEMAND", Mode::OnDemand),
        ],
    )?;
    let kind = selector_kind(selector.and_then(|s| s.fragment_selector_type.as_deref()))?;
    let range = selector.and_then(|s| s.timestamp_range.as_ref());
    Ok(SessionRequest {
        protocol,
        name: stream.name().map(str::to_string),
        arn: stream.arn().map(str::to_string),
        mode,
        kind,
        start_ms: range.and_then(|r| r.start_timestamp).map(|t| t.0),
        end_ms: range.and_then(|r| r.end_timestamp).map(|t| t.0),
        expires_s: expires,
        max_fragments: max,
        container: Container::FragmentedMp4,
        discontinuity: Discontinuity::Always,
        program_date_time: false,
    })
}

pub(crate) async fn get_hls_streaming_session_url(
    State(st): St,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: HlsInput = parse(&body)?;
    let container = choice(
        input.container_format.as_deref(),
        "ContainerFormat",
        &[
            ("FRAGMENTED_MP4", Container::FragmentedMp4),
            ("MPEG_TS", Container::MpegTs),
        ],
    )?;
    let discontinuity = choice(
        input.discontinuity_mode.as_deref(),
        "DiscontinuityMode",
        &[
            ("ALWAYS", Discontinuity::Always),
            ("NEVER", Discontinuity::Never),
            ("ON_DISCONTINUITY", Discontinuity::OnDiscontinuity),
        ],
    )?;
    let program_date_time = always_never(
        input.display_fragment_timestamp.as_deref(),
        "DisplayFragmentTimestamp",
    )?;
    let req = SessionRequest {
        container,
        discontinuity,
        program_date_time,
        ..request(
            Protocol::Hls,
            &input.stream,
            input.playback_mode.as_deref(),
            input.selector.as_ref(),
            input.expires,
            input.max_media_playlist_fragment_results,
        )?
    };
    let base = endpoint(&st, &headers)?;
    let token = st.playback.open(req).await?;
    Ok(ok(json!({
        "HLSStreamingSessionURL":
            format!("{base}/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken={token}")
    })))
}

pub(crate) async fn get_dash_streaming_session_url(
    State(st): St,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: DashInput = parse(&body)?;
    // Accepted for compatibility; the MPD carries times in its timeline.
    always_never(
        input.display_fragment_timestamp.as_deref(),
        "DisplayFragmentTimestamp",
    )?;
    always_never(
        input.display_fragment_number.as_deref(),
        "DisplayFragmentNumber",
    )?;
    let req = request(
        Protocol::Dash,
        &input.stream,
        input.playback_mode.as_deref(),
        input.selector.as_ref(),
        input.expires,
        input.max_manifest_fragment_results,
    )?;
    let base = endpoint(&st, &headers)?;
    let token = st.playback.open(req).await?;
    Ok(ok(json!({
        "DASHStreamingSessionURL": format!("{base}/dash/v1/getDASHManifest.mpd?SessionToken={token}")
    })))
}
