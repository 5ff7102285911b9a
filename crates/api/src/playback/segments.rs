//! Init and media segments of HLS and DASH sessions: one handler, routed
//! from one table. A new container is a `SegmentFormat` variant and a row.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use kinema_engine::playback::{Protocol, SegmentFormat};

use super::{IMMUTABLE, reply, session_of};
use crate::{ApiError, AppState};

/// What a segment route serves.
#[derive(Debug, Clone, Copy)]
enum Part {
    /// The fMP4 init segment (`EXT-X-MAP`, DASH initialization).
    Init,
    Media(SegmentFormat),
}

/// The file name a format's media segments are served under.
pub(super) fn media_file(format: SegmentFormat) -> &'static str {
    match format {
        SegmentFormat::Mp4 => "getMP4MediaFragment.mp4",
        SegmentFormat::Ts => "getTSFragment.ts",
    }
}

const INIT_FILE: &str = "getMP4InitFragment.mp4";

/// Every segment route: protocol, path prefix, what it serves.
const ROUTES: &[(Protocol, &str, Part)] = &[
    (Protocol::Hls, "/hls/v1/", Part::Init),
    (Protocol::Hls, "/hls/v1/", Part::Media(SegmentFormat::Mp4)),
    (Protocol::Hls, "/hls/v1/", Part::Media(SegmentFormat::Ts)),
    (Protocol::Dash, "/dash/v1/", Part::Init),
    (Protocol::Dash, "/dash/v1/", Part::Media(SegmentFormat::Mp4)),
];

/// The segment routes, for the token-authorised part of the router.
pub(crate) fn segment_routes() -> Router<Arc<AppState>> {
    ROUTES
        .iter()
        .fold(Router::new(), |router, &(protocol, prefix, part)| {
            let file = match part {
                Part::Init => INIT_FILE,
                Part::Media(f) => media_file(f),
            };
            router.route(
                &format!("{prefix}{file}"),
                get(move |st, q| segment(st, q, protocol, part)),
            )
        })
}

async fn segment(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
    protocol: Protocol,
    part: Part,
) -> Result<Response, ApiError> {
    let (_, s) = session_of(&st, &q, protocol)?;
    match part {
        Part::Init => Ok(reply(
            SegmentFormat::Mp4.content_type(),
            IMMUTABLE,
            st.playback.init_segment(&s).await?,
        )),
        Part::Media(format) => {
            let number = q
                .get("FragmentNumber")
                .and_then(|n| kinema_engine::parse_fragment_number(n))
                .ok_or_else(|| ApiError::invalid("FragmentNumber must be a fragment number"))?;
            let data = st.playback.media_segment(&s, number, format).await?;
            Ok(reply(format.content_type(), IMMUTABLE, data))
        }
    }
}
