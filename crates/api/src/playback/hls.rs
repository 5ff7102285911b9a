//! An HLS session's master and media playlists (RFC 8216).

use axum::extract::{Query, State};
use axum::response::Response;
use kinema_engine::playback::{Protocol, SegmentFormat};
use kinema_hls::{Container, MediaPlaylist, Segment};

use super::segments::media_file;
use super::{NO_CACHE, Params, St, reply, session_of};
use crate::ApiError;

const PLAYLIST: &str = "application/vnd.apple.mpegurl";

pub(crate) async fn hls_master(State(st): St, Query(q): Params) -> Result<Response, ApiError> {
    let (t, s) = session_of(&st, &q, Protocol::Hls)?;
    let text = kinema_hls::master_playlist(
        &format!("getHLSMediaPlaylist.m3u8?SessionToken={t}"),
        s.bandwidth.max(1),
        &s.codecs,
        (s.width > 0 && s.height > 0).then_some((s.width, s.height)),
    );
    Ok(reply(PLAYLIST, NO_CACHE, text))
}

pub(crate) async fn hls_media(State(st): St, Query(q): Params) -> Result<Response, ApiError> {
    let (t, s) = session_of(&st, &q, Protocol::Hls)?;
    let (w, _) = st.playback.window(&s)?;
    let format = match s.container {
        Container::FragmentedMp4 => SegmentFormat::Mp4,
        Container::MpegTs => SegmentFormat::Ts,
    };
    let segment_path = media_file(format);
    let playlist = MediaPlaylist {
        container: s.container,
        media_sequence: w.fragments.first().map_or(0, |f| f.number),
        init_uri: Some(format!("getMP4InitFragment.mp4?SessionToken={t}")),
        segments: w
            .fragments
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
        ended: w.ended,
    };
    Ok(reply(PLAYLIST, NO_CACHE, playlist.render()))
}
