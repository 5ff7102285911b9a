//! A DASH session's manifest (MPD).

use axum::extract::{Query, State};
use axum::response::Response;
use kinema_engine::playback::{Protocol, SegmentFormat};

use super::segments::media_file;
use super::{NO_CACHE, Params, St, reply, session_of};
use crate::ApiError;

pub(crate) async fn dash_manifest(State(st): St, Query(q): Params) -> Result<Response, ApiError> {
    let (t, s) = session_of(&st, &q, Protocol::Dash)?;
    let (w, now) = st.playback.window(&s)?;
    let segment_path = media_file(SegmentFormat::Mp4);
    let manifest = kinema_hls::dash::Manifest {
        dynamic: !w.ended,
        origin_ms: s.origin_ms,
        now_ms: now,
        codecs: s.codecs.clone(),
        width: s.width,
        height: s.height,
        bandwidth: s.bandwidth.max(1),
        init_uri: format!("getMP4InitFragment.mp4?SessionToken={t}"),
        segments: w
            .fragments
            .iter()
            .map(|f| kinema_hls::dash::DashSegment {
                start_ms: f.time(s.kind) - s.origin_ms,
                duration_ms: f.duration_ms,
                uri: format!(
                    "{segment_path}?SessionToken={t}&FragmentNumber={}",
                    f.number
                ),
            })
            .collect(),
    };
    Ok(reply("application/dash+xml", NO_CACHE, manifest.render()))
}
