//! Playback of stored video (`kinesis-video-archived-media`): HLS and DASH
//! sessions, MP4 clips (GetClip) and still images (GetImages).
//!
//! A session is created by a signed POST and then served by unsigned GETs
//! that carry its token, as players cannot sign requests: the master
//! playlist (or MPD), the media playlist, the init segment and the media
//! segments. Tokens are random, held in memory until they expire, and
//! bounded per stream. Fragment selection and playlist text come from
//! `kinema-hls`, remuxing from `kinema-remux`, decoding from `kinema-media`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use kinema_engine::{FragmentMeta, PlaybackSpan, StreamInfo, TimeKind, now_ms};
use kinema_hls::session::{Candidate, Mode, Selection, default_max_fragments};
use kinema_hls::{Container, Discontinuity, MediaPlaylist, Segment};
use kinema_remux::{Fragment, RemuxError};
use serde::Deserialize;
use serde_json::json;

use crate::video::{Timestamp, endpoint, epoch_seconds, ok, parse};
use crate::{ApiError, AppState};
use kinema_core::aws::MAX_MEDIA_RANGE_MS;
use kinema_core::sync::lock;

type St = State<Arc<AppState>>;

/// GetClip limits of the original service.
const CLIP_MAX_FRAGMENTS: usize = 200;
const CLIP_MAX_BYTES: u64 = 100 << 20;
/// GetImages limits and defaults.
const IMAGES_MAX_RANGE_MS: i64 = 300_000;
const IMAGES_MIN_INTERVAL_MS: i64 = 200;
const IMAGES_DEFAULT_INTERVAL_MS: i64 = 3000;
const IMAGES_DEFAULT_RESULTS: i64 = 25;
const IMAGES_MAX_RESULTS: i64 = 100;
const JPEG_DEFAULT_QUALITY: u8 = 80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Hls,
    Dash,
}

#[derive(Debug, Clone)]
struct Session {
    protocol: Protocol,
    stream: String,
    stream_id: String,
    kind: TimeKind,
    selection: Selection,
    container: Container,
    discontinuity: Discontinuity,
    program_date_time: bool,
    expires_ms: i64,
    /// Wall-clock time (on the selector clock) of media time zero.
    origin_ms: i64,
    /// The fragment whose track header makes the init segment.
    init_fragment: u64,
    codecs: String,
    width: u32,
    height: u32,
    bandwidth: u64,
}

/// Live playback sessions by token.
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    per_stream: usize,
}

impl Sessions {
    /// At most `per_stream` unexpired sessions per stream.
    pub fn new(per_stream: usize) -> Self {
        Sessions {
            map: Mutex::new(HashMap::new()),
            per_stream: per_stream.max(1),
        }
    }

    fn insert(&self, session: Session, now: i64) -> Result<String, ApiError> {
        let mut map = lock(&self.map);
        map.retain(|_, s| s.expires_ms > now);
        let open = map
            .values()
            .filter(|s| s.stream_id == session.stream_id)
            .count();
        if open >= self.per_stream {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "ClientLimitExceededException",
                format!(
                    "stream {} already has {open} open playback sessions (the limit)",
                    session.stream
                ),
            ));
        }
        let mut raw = [0u8; 24];
        getrandom::getrandom(&mut raw).map_err(|_| ApiError::internal())?;
        let token = hex::encode(raw);
        map.insert(token.clone(), session);
        Ok(token)
    }

    fn get(&self, token: &str, now: i64) -> Result<Session, ApiError> {
        let map = lock(&self.map);
        match map.get(token) {
            Some(s) if s.expires_ms > now => Ok(s.clone()),
            Some(_) => Err(forbidden("the playback session has expired")),
            None => Err(forbidden("the session token is not valid")),
        }
    }
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "NotAuthorizedException", message)
}

fn media_error(e: RemuxError) -> ApiError {
    let kind = match e {
        RemuxError::UnsupportedCodec(_) | RemuxError::NoVideoTrack => {
            "UnsupportedStreamMediaTypeException"
        }
        RemuxError::MissingCodecPrivate => "MissingCodecPrivateDataException",
        RemuxError::InvalidCodecPrivate => "InvalidCodecPrivateDataException",
        RemuxError::InvalidFrame(_) | RemuxError::Empty | RemuxError::Malformed(_) => {
            "InvalidMediaFrameException"
        }
    };
    ApiError::new(StatusCode::BAD_REQUEST, kind, e.to_string())
}

// ---- session creation ------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Range {
    start_timestamp: Option<Timestamp>,
    end_timestamp: Option<Timestamp>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Selector {
    fragment_selector_type: Option<String>,
    timestamp_range: Option<Range>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HlsInput {
    #[serde(flatten)]
    stream: crate::video::StreamRef,
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
    stream: crate::video::StreamRef,
    playback_mode: Option<String>,
    #[serde(rename = "DASHFragmentSelector")]
    selector: Option<Selector>,
    display_fragment_timestamp: Option<String>,
    display_fragment_number: Option<String>,
    expires: Option<i64>,
    max_manifest_fragment_results: Option<i64>,
}

/// An enum member of the request: absent gives the first option.
fn choice<T: Copy>(v: Option<&str>, what: &str, options: &[(&str, T)]) -> Result<T, ApiError> {
    let v = v.unwrap_or(options[0].0);
    options
        .iter()
        .find(|(name, _)| *name == v)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            ApiError::invalid(format!("{what} {v:?} must be one of {}", names.join(", ")))
        })
}

fn selector_kind(t: Option<&str>) -> Result<TimeKind, ApiError> {
    choice(
        t,
        "FragmentSelectorType",
        &[
            ("SERVER_TIMESTAMP", TimeKind::Server),
            ("PRODUCER_TIMESTAMP", TimeKind::Producer),
        ],
    )
}

fn always_never(v: Option<&str>, what: &str) -> Result<bool, ApiError> {
    choice(v, what, &[("NEVER", false), ("ALWAYS", true)])
}

struct Request<'a> {
    stream: &'a crate::video::StreamRef,
    mode: Option<&'a str>,
    selector: Option<&'a Selector>,
    expires: Option<i64>,
    max: Option<i64>,
}

/// Validates a session request against the stream's fragments; returns the
/// stream and the session parameters (with the first fragment's track).
async fn new_session(
    st: &AppState,
    req: Request<'_>,
    protocol: Protocol,
) -> Result<Session, ApiError> {
    let mode = choice(
        req.mode,
        "PlaybackMode",
        &[
            ("LIVE", Mode::Live),
            ("LIVE_REPLAY", Mode::LiveReplay),
            ("ON_DEMAND", Mode::OnDemand),
        ],
    )?;
    let kind = selector_kind(
        req.selector
            .and_then(|s| s.fragment_selector_type.as_deref()),
    )?;
    let range = req.selector.and_then(|s| s.timestamp_range.as_ref());
    let start = range.and_then(|r| r.start_timestamp).map(|t| t.0);
    let end = range.and_then(|r| r.end_timestamp).map(|t| t.0);
    match mode {
        Mode::Live if start.is_some() || end.is_some() => {
            return Err(ApiError::invalid(
                "TimestampRange must not be set in LIVE mode",
            ));
        }
        Mode::LiveReplay if start.is_none() => {
            return Err(ApiError::invalid(
                "LIVE_REPLAY needs TimestampRange.StartTimestamp",
            ));
        }
        Mode::OnDemand if start.is_none() || end.is_none() => {
            return Err(ApiError::invalid(
                "ON_DEMAND needs TimestampRange.StartTimestamp and EndTimestamp",
            ));
        }
        _ => {}
    }
    if let (Some(s), Some(e)) = (start, end) {
        if e <= s {
            return Err(ApiError::invalid(
                "EndTimestamp must be after StartTimestamp",
            ));
        }
        if mode == Mode::OnDemand && e - s > MAX_MEDIA_RANGE_MS {
            return Err(ApiError::invalid(
                "an ON_DEMAND range spans at most 3 hours",
            ));
        }
    }
    let expires = req.expires.unwrap_or(300);
    if !(300..=43_200).contains(&expires) {
        return Err(ApiError::invalid(
            "Expires must be between 300 and 43200 seconds",
        ));
    }
    let max = req.max.unwrap_or(default_max_fragments(mode) as i64);
    if !(1..=5000).contains(&max) {
        return Err(ApiError::invalid(
            "the maximum fragment count must be between 1 and 5000",
        ));
    }
    let info = archived(st, req.stream)?;
    let selection = Selection {
        mode,
        start_ms: start,
        end_ms: end,
        max_fragments: max as usize,
    };
    let now = now_ms();
    let (_, window) = window(st, &info.name, kind, &selection, now)?;
    let Some(first) = window.first() else {
        return Err(ApiError::not_found(
            "no fragments were found in the stream for the requested range",
        ));
    };
    let (meta, frag) = load(st, &info.name, first.number).await?;
    Ok(Session {
        protocol,
        stream: info.name.clone(),
        stream_id: info.id.clone(),
        kind,
        selection,
        container: Container::FragmentedMp4,
        discontinuity: Discontinuity::Always,
        program_date_time: false,
        expires_ms: now + expires * 1000,
        origin_ms: meta.time(kind),
        init_fragment: meta.number,
        codecs: frag.track.codec_string(),
        width: frag.track.width,
        height: frag.track.height,
        bandwidth: u64::from(meta.size) * 8 * 1000 / u64::from(meta.duration_ms.max(1)),
    })
}

/// The session's fragments right now, with their metadata by number.
fn window(
    st: &AppState,
    stream: &str,
    kind: TimeKind,
    selection: &Selection,
    now: i64,
) -> Result<(bool, Vec<FragmentMeta>), ApiError> {
    let span = match selection.mode {
        Mode::Live => PlaybackSpan::Newest(selection.max_fragments),
        // A replay also needs to see whether anything follows its end.
        Mode::LiveReplay => PlaybackSpan::Range {
            from_ms: selection.start_ms.unwrap_or(i64::MIN),
            to_ms: i64::MAX,
        },
        Mode::OnDemand => PlaybackSpan::Range {
            from_ms: selection.start_ms.unwrap_or(i64::MIN),
            to_ms: selection.end_ms.unwrap_or(i64::MAX),
        },
    };
    let metas = st.engine.playback_fragments(stream, kind, span)?;
    let candidates: Vec<Candidate> = metas
        .iter()
        .map(|m| Candidate {
            number: m.number,
            start_ms: m.time(kind),
            duration_ms: m.duration_ms,
        })
        .collect();
    let w = selection.window(&candidates, now);
    let by_number: HashMap<u64, &FragmentMeta> = metas.iter().map(|m| (m.number, m)).collect();
    let chosen = w
        .fragments
        .iter()
        .filter_map(|c| by_number.get(&c.number).map(|m| **m))
        .collect();
    Ok((w.ended, chosen))
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
    let req = Request {
        stream: &input.stream,
        mode: input.playback_mode.as_deref(),
        selector: input.selector.as_ref(),
        expires: input.expires,
        max: input.max_media_playlist_fragment_results,
    };
    let mut session = new_session(&st, req, Protocol::Hls).await?;
    session.container = container;
    session.discontinuity = discontinuity;
    session.program_date_time = program_date_time;
    let base = endpoint(&st, &headers)?;
    let token = st.playback.insert(session, now_ms())?;
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
    let req = Request {
        stream: &input.stream,
        mode: input.playback_mode.as_deref(),
        selector: input.selector.as_ref(),
        expires: input.expires,
        max: input.max_manifest_fragment_results,
    };
    let session = new_session(&st, req, Protocol::Dash).await?;
    let base = endpoint(&st, &headers)?;
    let token = st.playback.insert(session, now_ms())?;
    Ok(ok(json!({
        "DASHStreamingSessionURL": format!("{base}/dash/v1/getDASHManifest.mpd?SessionToken={token}")
    })))
}

// ---- session reads (unsigned, by token) -------------------------------------

type Params = Query<HashMap<String, String>>;

/// The session named by the request's token, and the token.
fn session_of<'q>(
    st: &AppState,
    q: &'q HashMap<String, String>,
    protocol: Protocol,
) -> Result<(&'q str, Session), ApiError> {
    let token = q
        .get("SessionToken")
        .ok_or_else(|| forbidden("SessionToken is required"))?;
    let s = st.playback.get(token, now_ms())?;
    if s.protocol != protocol {
        return Err(forbidden(
            "the session token is not valid for this protocol",
        ));
    }
    // A stream deleted (or deleted and re-created) ends its sessions.
    match st.engine.describe_stream(Some(&s.stream), None) {
        Ok(info) if info.id == s.stream_id => Ok((token, s)),
        _ => Err(ApiError::not_found(format!(
            "stream {} no longer exists",
            s.stream
        ))),
    }
}

fn reply(
    content_type: &'static str,
    cache: &'static str,
    body: impl Into<axum::body::Body>,
) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
        ],
        body.into(),
    )
        .into_response()
}

const NO_CACHE: &str = "no-cache";
const IMMUTABLE: &str = "max-age=3600";

pub(crate) async fn hls_master(State(st): St, Query(q): Params) -> Result<Response, ApiError> {
    let (t, s) = session_of(&st, &q, Protocol::Hls)?;
    let text = kinema_hls::master_playlist(
        &format!("getHLSMediaPlaylist.m3u8?SessionToken={t}"),
        s.bandwidth.max(1),
        &s.codecs,
        (s.width > 0 && s.height > 0).then_some((s.width, s.height)),
    );
    Ok(reply("application/vnd.apple.mpegurl", NO_CACHE, text))
}

pub(crate) async fn hls_media(State(st): St, Query(q): Params) -> Result<Response, ApiError> {
    let (t, s) = session_of(&st, &q, Protocol::Hls)?;
    let (ended, frags) = window(&st, &s.stream, s.kind, &s.selection, now_ms())?;
    let segment_path = match s.container {
        Container::FragmentedMp4 => "getMP4MediaFragment.mp4",
        Container::MpegTs => "getTSFragment.ts",
    };
    let playlist = MediaPlaylist {
        container: s.container,
        media_sequence: frags.first().map_or(0, |f| f.number),
        init_uri: Some(format!("getMP4InitFragment.mp4?SessionToken={t}")),
        segments: frags
            .iter()
            .map(|f| Segment {
                start_ms: f.time(s.kind),
                duration_ms: f.duration_ms,
                uri: format!(
                    "{segment_path}?SessionToken={t}&FragmentNumber={}",
                    f.number
                ),
            })
            .collect(),
        discontinuity: s.discontinuity,
        program_date_time: s.program_date_time,
        ended,
    };
    Ok(reply(
        "application/vnd.apple.mpegurl",
        NO_CACHE,
        playlist.render(),
    ))
}

/// Loads and parses one stored fragment of `stream`.
async fn load(
    st: &AppState,
    stream: &str,
    number: u64,
) -> Result<(FragmentMeta, Fragment), ApiError> {
    let (meta, object) = st.engine.fragment(stream, number).await?;
    let frag = kinema_remux::parse_fragment(&object).map_err(media_error)?;
    Ok((meta, frag))
}

fn fragment_param(q: &HashMap<String, String>) -> Result<u64, ApiError> {
    q.get("FragmentNumber")
        .and_then(|n| kinema_engine::parse_fragment_number(n))
        .ok_or_else(|| ApiError::invalid("FragmentNumber must be a fragment number"))
}

async fn init_segment(
    st: &AppState,
    q: &HashMap<String, String>,
    protocol: Protocol,
) -> Result<Response, ApiError> {
    let (_, s) = session_of(st, q, protocol)?;
    let frag = match load(st, &s.stream, s.init_fragment).await {
        Ok((_, f)) => f,
        // Trimmed by retention: any fragment of the current window will do.
        Err(_) => {
            let (_, frags) = window(st, &s.stream, s.kind, &s.selection, now_ms())?;
            let first = frags
                .first()
                .ok_or_else(|| ApiError::not_found("the session has no fragments left"))?;
            load(st, &s.stream, first.number).await?.1
        }
    };
    Ok(reply(
        "video/mp4",
        IMMUTABLE,
        kinema_remux::mp4::init_segment(&frag.track, 0),
    ))
}

async fn media_segment(
    st: &AppState,
    q: &HashMap<String, String>,
    protocol: Protocol,
    ts: bool,
) -> Result<Response, ApiError> {
    let (_, s) = session_of(st, q, protocol)?;
    if ts != (s.container == Container::MpegTs) {
        return Err(ApiError::invalid(
            "the session uses the other container format",
        ));
    }
    let number = fragment_param(q)?;
    let (meta, frag) = load(st, &s.stream, number).await?;
    let start = meta.time(s.kind) - s.origin_ms;
    let times = kinema_remux::timing(&frag, start, meta.duration_ms);
    if ts {
        Ok(reply(
            "video/mp2t",
            IMMUTABLE,
            kinema_remux::ts::segment(&frag, &times),
        ))
    } else {
        let sequence = (number % u64::from(u32::MAX)).max(1) as u32;
        Ok(reply(
            "video/mp4",
            IMMUTABLE,
            kinema_remux::mp4::media_segment(sequence, &frag, &times),
        ))
    }
}

pub(crate) async fn hls_init(State(st): St, Query(q): Params) -> Result<Response, ApiError> {
    init_segment(&st, &q, Protocol::Hls).await
}

pub(crate) async fn hls_mp4(State(st): St, Query(q): Params) -> Result<Response, ApiError> {
    media_segment(&st, &q, Protocol::Hls, false).await
}

pub(crate) async fn hls_ts(State(st): St, Query(q): Params) -> Result<Response, ApiError> {
    media_segment(&st, &q, Protocol::Hls, true).await
}

pub(crate) async fn dash_init(State(st): St, Query(q): Params) -> Result<Response, ApiError> {
    init_segment(&st, &q, Protocol::Dash).await
}

pub(crate) async fn dash_mp4(State(st): St, Query(q): Params) -> Result<Response, ApiError> {
    media_segment(&st, &q, Protocol::Dash, false).await
}

pub(crate) async fn dash_manifest(State(st): St, Query(q): Params) -> Result<Response, ApiError> {
    let (t, s) = session_of(&st, &q, Protocol::Dash)?;
    let now = now_ms();
    let (ended, frags) = window(&st, &s.stream, s.kind, &s.selection, now)?;
    let manifest = kinema_hls::dash::Manifest {
        dynamic: !ended,
        origin_ms: s.origin_ms,
        now_ms: now,
        codecs: s.codecs.clone(),
        width: s.width,
        height: s.height,
        bandwidth: s.bandwidth.max(1),
        init_uri: format!("getMP4InitFragment.mp4?SessionToken={t}"),
        segments: frags
            .iter()
            .map(|f| kinema_hls::dash::DashSegment {
                start_ms: f.time(s.kind) - s.origin_ms,
                duration_ms: f.duration_ms,
                uri: format!(
                    "getMP4MediaFragment.mp4?SessionToken={t}&FragmentNumber={}",
                    f.number
                ),
            })
            .collect(),
    };
    Ok(reply("application/dash+xml", NO_CACHE, manifest.render()))
}

// ---- GetClip -----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ClipInput {
    #[serde(flatten)]
    stream: crate::video::StreamRef,
    clip_fragment_selector: Option<Selector>,
}

/// Checks a stream keeps data.
fn archived(st: &AppState, stream: &crate::video::StreamRef) -> Result<StreamInfo, ApiError> {
    let info = st.engine.describe_stream(stream.name(), stream.arn())?;
    if info.retention_hours == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "NoDataRetentionException",
            format!("stream {} keeps no data (retention 0)", info.name),
        ));
    }
    Ok(info)
}

pub(crate) async fn get_clip(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: ClipInput = parse(&body)?;
    let sel = input
        .clip_fragment_selector
        .ok_or_else(|| ApiError::invalid("ClipFragmentSelector is required"))?;
    let kind = match sel.fragment_selector_type.as_deref() {
        Some(t) => selector_kind(Some(t))?,
        None => return Err(ApiError::invalid("FragmentSelectorType is required")),
    };
    let range = sel.timestamp_range.unwrap_or_default();
    let (Some(start), Some(end)) = (range.start_timestamp, range.end_timestamp) else {
        return Err(ApiError::invalid(
            "TimestampRange needs StartTimestamp and EndTimestamp",
        ));
    };
    let (start, end) = (start.0, end.0);
    if end <= start {
        return Err(ApiError::invalid(
            "EndTimestamp must be after StartTimestamp",
        ));
    }
    if end - start > MAX_MEDIA_RANGE_MS {
        return Err(ApiError::invalid("a clip spans at most 3 hours"));
    }
    let info = archived(&st, &input.stream)?;
    let selection = Selection {
        mode: Mode::OnDemand,
        start_ms: Some(start),
        end_ms: Some(end),
        max_fragments: CLIP_MAX_FRAGMENTS + 1,
    };
    let (_, frags) = window(&st, &info.name, kind, &selection, now_ms())?;
    if frags.is_empty() {
        return Err(ApiError::not_found(
            "no fragments were found in the stream for the requested range",
        ));
    }
    if frags.len() > CLIP_MAX_FRAGMENTS {
        return Err(ApiError::invalid(format!(
            "the range holds more than {CLIP_MAX_FRAGMENTS} fragments; request a shorter clip"
        )));
    }
    let bytes: u64 = frags.iter().map(|f| u64::from(f.size)).sum();
    if bytes > CLIP_MAX_BYTES {
        return Err(ApiError::invalid(
            "the range holds more than 100 MB of media; request a shorter clip",
        ));
    }
    let origin = frags[0].time(kind);
    let mut parts: Vec<(Fragment, i64, u32)> = Vec::with_capacity(frags.len());
    for meta in &frags {
        let (_, frag) = load(&st, &info.name, meta.number).await?;
        if let Some((first, _, _)) = parts.first()
            && frag.track.config != first.track.config
        {
            // A clip has one sample description: stop where the camera's
            // codec parameters change.
            break;
        }
        parts.push((frag, meta.time(kind) - origin, meta.duration_ms));
    }
    let data = kinema_remux::mp4::clip(&parts).ok_or_else(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "video/mp4")], data).into_response())
}

// ---- GetImages ---------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImagesInput {
    #[serde(flatten)]
    stream: crate::video::StreamRef,
    image_selector_type: Option<String>,
    start_timestamp: Option<Timestamp>,
    end_timestamp: Option<Timestamp>,
    sampling_interval: Option<i64>,
    format: Option<String>,
    format_config: Option<HashMap<String, String>>,
    width_pixels: Option<i64>,
    height_pixels: Option<i64>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

pub(crate) async fn get_images(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    use kinema_media::images::{EncodedFrame, ImageFormat, StillRequest, render_stills};
    let input: ImagesInput = parse(&body)?;
    let kind = match input.image_selector_type.as_deref() {
        Some(t) => selector_kind(Some(t))?,
        None => return Err(ApiError::invalid("ImageSelectorType is required")),
    };
    let (Some(start), Some(end)) = (input.start_timestamp, input.end_timestamp) else {
        return Err(ApiError::invalid(
            "StartTimestamp and EndTimestamp are required",
        ));
    };
    let (start, end) = (start.0, end.0);
    if end < start {
        return Err(ApiError::invalid(
            "EndTimestamp must not be before StartTimestamp",
        ));
    }
    if end - start > IMAGES_MAX_RANGE_MS {
        return Err(ApiError::invalid("the range spans at most 300 seconds"));
    }
    let interval = input
        .sampling_interval
        .unwrap_or(IMAGES_DEFAULT_INTERVAL_MS);
    if interval < IMAGES_MIN_INTERVAL_MS {
        return Err(ApiError::invalid("SamplingInterval is at least 200 ms"));
    }
    let quality = match input
        .format_config
        .as_ref()
        .and_then(|c| c.get("JPEGQuality"))
    {
        None => JPEG_DEFAULT_QUALITY,
        Some(q) => q
            .parse::<u8>()
            .ok()
            .filter(|q| (1..=100).contains(q))
            .ok_or_else(|| ApiError::invalid("JPEGQuality must be an integer from 1 to 100"))?,
    };
    let format = match input.format.as_deref() {
        Some("JPEG") => ImageFormat::Jpeg { quality },
        Some("PNG") => ImageFormat::Png,
        _ => return Err(ApiError::invalid("Format must be JPEG or PNG")),
    };
    let dimension = |v: Option<i64>, max: i64, what: &str| match v {
        None => Ok(None),
        Some(n) if (1..=max).contains(&n) => Ok(Some(n as u32)),
        Some(_) => Err(ApiError::invalid(format!(
            "{what} must be between 1 and {max}"
        ))),
    };
    let width = dimension(input.width_pixels, 3840, "WidthPixels")?;
    let height = dimension(input.height_pixels, 2160, "HeightPixels")?;
    let max_results = input.max_results.unwrap_or(IMAGES_DEFAULT_RESULTS);
    if !(1..=IMAGES_MAX_RESULTS).contains(&max_results) {
        return Err(ApiError::invalid("MaxResults must be between 1 and 100"));
    }
    let first_index = match &input.next_token {
        None => 0,
        Some(t) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("img:").and_then(|n| n.parse::<i64>().ok()))
            .ok_or_else(|| ApiError::invalid("NextToken is not valid for this request"))?,
    };
    let info = archived(&st, &input.stream)?;
    let count = (end - start) / interval + 1;
    let last_index = (first_index + max_results).min(count);
    let times: Vec<i64> = (first_index..last_index)
        .map(|i| start + i * interval)
        .collect();
    let Some((&t_first, &t_last)) = times.first().zip(times.last()) else {
        return Ok(ok(json!({ "Images": [] })));
    };
    let metas = st.engine.playback_fragments(
        &info.name,
        kind,
        PlaybackSpan::Range {
            from_ms: t_first,
            to_ms: t_last,
        },
    )?;
    // Each sample time falls in at most one fragment; decode each fragment
    // once for all of its sample times.
    let mut plan: Vec<(FragmentMeta, Vec<i64>)> = Vec::new();
    let mut images: Vec<serde_json::Value> = Vec::with_capacity(times.len());
    let mut slot_of: HashMap<i64, usize> = HashMap::new();
    for t in &times {
        let holder = metas
            .iter()
            .rev()
            .find(|m| m.time(kind) <= *t && *t < m.time(kind) + i64::from(m.duration_ms.max(1)));
        slot_of.insert(*t, images.len());
        images.push(json!({ "TimeStamp": epoch_seconds(*t), "Error": "NO_MEDIA" }));
        if let Some(m) = holder {
            match plan.iter_mut().find(|(p, _)| p.number == m.number) {
                Some((_, ts)) => ts.push(*t),
                None => plan.push((*m, vec![*t])),
            }
        }
    }
    for (meta, sample_times) in plan {
        let rendered = async {
            let (_, frag) = load(&st, &info.name, meta.number).await.ok()?;
            let base = meta.time(kind);
            let frames: Vec<EncodedFrame> = frag
                .samples
                .iter()
                .map(|s| EncodedFrame {
                    pts_ns: s.offset_ns,
                    keyframe: s.keyframe,
                    data: s.data.clone(),
                })
                .collect();
            // For each sample time: the last frame shown at or before it.
            let mut by_pts: Vec<i64> = frames.iter().map(|f| f.pts_ns).collect();
            by_pts.sort_unstable();
            let pick: Vec<(i64, i64)> = sample_times
                .iter()
                .map(|t| {
                    let offset = (t - base) * 1_000_000;
                    let i = by_pts.partition_point(|p| *p <= offset);
                    (*t, by_pts[i.saturating_sub(1)])
                })
                .collect();
            let wanted: Vec<i64> = pick.iter().map(|(_, p)| *p).collect();
            let codec_id = frag.track.codec.matroska_id();
            let config = frag.track.config.clone();
            // One dimension alone keeps the picture's aspect ratio.
            let (tw, th) = (u64::from(frag.track.width), u64::from(frag.track.height));
            let (width, height) = match (width, height) {
                (Some(w), None) if tw > 0 && th > 0 => (
                    Some(w),
                    Some(((u64::from(w) * th + tw / 2) / tw).max(1) as u32),
                ),
                (None, Some(h)) if tw > 0 && th > 0 => (
                    Some(((u64::from(h) * tw + th / 2) / th).max(1) as u32),
                    Some(h),
                ),
                other => other,
            };
            let stills = tokio::task::spawn_blocking(move || {
                render_stills(&StillRequest {
                    codec_id,
                    config: &config,
                    frames: &frames,
                    wanted: &wanted,
                    format,
                    width,
                    height,
                })
            })
            .await
            .ok()?;
            Some((pick, stills))
        }
        .await;
        let Some((pick, stills)) = rendered else {
            for t in &sample_times {
                images[slot_of[t]]["Error"] = json!("MEDIA_ERROR");
            }
            continue;
        };
        match stills {
            Ok(stills) => {
                for (t, pts) in pick {
                    let slot = &mut images[slot_of[&t]];
                    match stills.iter().find(|(p, _)| *p == pts) {
                        Some((_, data)) => {
                            *slot = json!({
                                "TimeStamp": epoch_seconds(t),
                                "ImageContent": base64::engine::general_purpose::STANDARD.encode(data),
                            });
                        }
                        None => slot["Error"] = json!("MEDIA_ERROR"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(stream = %info.name, fragment = meta.number, error = %e, "image decoding failed");
                for (t, _) in pick {
                    images[slot_of[&t]]["Error"] = json!("MEDIA_ERROR");
                }
            }
        }
    }
    let mut out = json!({ "Images": images });
    if last_index < count {
        out["NextToken"] = json!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("img:{last_index}"))
        );
    }
    Ok(ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(stream_id: &str, expires_ms: i64) -> Session {
        Session {
            protocol: Protocol::Hls,
            stream: "cam".into(),
            stream_id: stream_id.into(),
            kind: TimeKind::Producer,
            selection: Selection {
                mode: Mode::Live,
                start_ms: None,
                end_ms: None,
                max_fragments: 5,
            },
            container: Container::FragmentedMp4,
            discontinuity: Discontinuity::Always,
            program_date_time: false,
            expires_ms,
            origin_ms: 0,
            init_fragment: 1,
            codecs: "avc1.42c01f".into(),
            width: 320,
            height: 240,
            bandwidth: 1,
        }
    }

    #[test]
    fn tokens_expire_and_forged_ones_are_refused_with_403() {
        let sessions = Sessions::new(10);
        let token = sessions.insert(session("a", 1_000), 0).unwrap();
        assert_eq!(token.len(), 48);
        assert!(sessions.get(&token, 999).is_ok());
        let expired = sessions.get(&token, 1_000).unwrap_err();
        assert_eq!(expired.status, StatusCode::FORBIDDEN);
        assert_eq!(expired.kind, "NotAuthorizedException");
        assert!(expired.message.contains("expired"));
        let forged = sessions.get("0123", 0).unwrap_err();
        assert_eq!(forged.status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn sessions_per_stream_are_bounded_and_expired_ones_free_their_slot() {
        let sessions = Sessions::new(2);
        sessions.insert(session("a", 1_000), 0).unwrap();
        sessions.insert(session("a", 5_000), 0).unwrap();
        sessions.insert(session("b", 5_000), 0).unwrap();
        let refused = sessions.insert(session("a", 5_000), 0).unwrap_err();
        assert_eq!(refused.kind, "ClientLimitExceededException");
        // Once the first session of stream a has expired there is room again.
        assert!(sessions.insert(session("a", 5_000), 1_000).is_ok());
    }
}
