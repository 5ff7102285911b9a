//! HLS playlists (RFC 8216) built from a list of stored fragments, without
//! I/O or a clock: the caller picks the fragments for the session's mode
//! (LIVE window, LIVE_REPLAY from a start, ON_DEMAND range) and this crate
//! renders the master and media playlists.
//!
//! [`session`] picks a session's fragments for its mode and [`dash`] renders
//! the MPEG-DASH manifest of the same sessions. Golden tests fix the text.

pub mod dash;
pub mod session;

use std::fmt::Write;

/// Media segment container: fragmented MP4 (CMAF, with an init segment
/// named by `EXT-X-MAP`) or MPEG transport stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    FragmentedMp4,
    MpegTs,
}

/// When `EXT-X-DISCONTINUITY` is written between segments (the
/// `DiscontinuityMode` of GetHLSStreamingSessionURL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discontinuity {
    Always,
    Never,
    /// Only where the next fragment does not start where the previous one
    /// ended (beyond `GAP_TOLERANCE_MS`).
    OnDiscontinuity,
}

/// Gaps or overlaps up to this size are not discontinuities.
pub const GAP_TOLERANCE_MS: i64 = 50;

/// One media segment (one stored fragment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Start on the session's timeline (producer or server time), Unix ms.
    pub start_ms: i64,
    pub duration_ms: u32,
    pub uri: String,
}

/// A media playlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPlaylist {
    pub container: Container,
    /// `EXT-X-MEDIA-SEQUENCE`: the sequence number of the first segment.
    pub media_sequence: u64,
    /// `EXT-X-MAP` URI for fragmented MP4.
    pub init_uri: Option<String>,
    pub segments: Vec<Segment>,
    pub discontinuity: Discontinuity,
    /// Write `EXT-X-PROGRAM-DATE-TIME` with each segment's start.
    pub program_date_time: bool,
    /// The playlist is complete (`EXT-X-ENDLIST`, `PLAYLIST-TYPE:VOD`).
    pub ended: bool,
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for Unix milliseconds (proleptic Gregorian, UTC).
pub fn format_utc_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

impl MediaPlaylist {
    /// `EXT-X-TARGETDURATION`: the longest segment, rounded up to whole
    /// seconds (RFC 8216 section 4.3.3.1), at least 1.
    pub fn target_duration(&self) -> u32 {
        self.segments
            .iter()
            .map(|s| s.duration_ms.div_ceil(1000))
            .max()
            .unwrap_or(1)
            .max(1)
    }

    pub fn render(&self) -> String {
        let mut out = String::from("#EXTM3U\n");
        let version = match self.container {
            Container::FragmentedMp4 => 7,
            Container::MpegTs => 3,
        };
        let _ = writeln!(out, "#EXT-X-VERSION:{version}");
        let _ = writeln!(out, "#EXT-X-TARGETDURATION:{}", self.target_duration());
        let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", self.media_sequence);
        if self.ended {
            out.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
        }
        out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
        if let (Container::FragmentedMp4, Some(init)) = (self.container, &self.init_uri) {
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"{init}\"");
        }
        let mut previous_end: Option<i64> = None;
        for s in &self.segments {
            let cut = match (self.discontinuity, previous_end) {
                (_, None) => false,
                (Discontinuity::Always, Some(_)) => true,
                (Discontinuity::Never, Some(_)) => false,
                (Discontinuity::OnDiscontinuity, Some(end)) => {
                    (s.start_ms - end).abs() > GAP_TOLERANCE_MS
                }
            };
            if cut {
                out.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if self.program_date_time {
                let _ = writeln!(
                    out,
                    "#EXT-X-PROGRAM-DATE-TIME:{}",
                    format_utc_ms(s.start_ms)
                );
            }
            let _ = writeln!(
                out,
                "#EXTINF:{}.{:03},",
                s.duration_ms / 1000,
                s.duration_ms % 1000
            );
            let _ = writeln!(out, "{}", s.uri);
            previous_end = Some(s.start_ms + i64::from(s.duration_ms));
        }
        if self.ended {
            out.push_str("#EXT-X-ENDLIST\n");
        }
        out
    }
}

/// The master playlist naming one media playlist.
pub fn master_playlist(
    media_uri: &str,
    bandwidth: u64,
    codecs: &str,
    resolution: Option<(u32, u32)>,
) -> String {
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    let _ = write!(
        out,
        "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},CODECS=\"{codecs}\""
    );
    if let Some((w, h)) = resolution {
        let _ = write!(out, ",RESOLUTION={w}x{h}");
    }
    let _ = writeln!(out, "\n{media_uri}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start_ms: i64, duration_ms: u32, n: u32) -> Segment {
        Segment {
            start_ms,
            duration_ms,
            uri: format!("getMP4MediaFragment.mp4?FragmentNumber={n}&SessionToken=t"),
        }
    }

    #[test]
    fn on_demand_fmp4_with_program_date_time_golden() {
        let p = MediaPlaylist {
            container: Container::FragmentedMp4,
            media_sequence: 0,
            init_uri: Some("getMP4InitFragment.mp4?SessionToken=t".into()),
            segments: vec![
                seg(1_795_327_917_518, 1000, 1),
                seg(1_795_327_918_518, 1001, 2),
            ],
            discontinuity: Discontinuity::OnDiscontinuity,
            program_date_time: true,
            ended: true,
        };
        assert_eq!(
            p.render(),
            "#EXTM3U\n\
             #EXT-X-VERSION:7\n\
             #EXT-X-TARGETDURATION:2\n\
             #EXT-X-MEDIA-SEQUENCE:0\n\
             #EXT-X-PLAYLIST-TYPE:VOD\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-MAP:URI=\"getMP4InitFragment.mp4?SessionToken=t\"\n\
             #EXT-X-PROGRAM-DATE-TIME:2026-11-22T06:11:57.518Z\n\
             #EXTINF:1.000,\n\
             getMP4MediaFragment.mp4?FragmentNumber=1&SessionToken=t\n\
             #EXT-X-PROGRAM-DATE-TIME:2026-11-22T06:11:58.518Z\n\
             #EXTINF:1.001,\n\
             getMP4MediaFragment.mp4?FragmentNumber=2&SessionToken=t\n\
             #EXT-X-ENDLIST\n"
        );
    }

    #[test]
    fn live_ts_window_marks_only_real_gaps() {
        let p = MediaPlaylist {
            container: Container::MpegTs,
            media_sequence: 41,
            init_uri: None,
            segments: vec![seg(0, 1000, 41), seg(1020, 1000, 42), seg(5000, 2500, 43)],
            discontinuity: Discontinuity::OnDiscontinuity,
            program_date_time: false,
            ended: false,
        };
        let text = p.render();
        assert!(text.starts_with(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:3\n#EXT-X-MEDIA-SEQUENCE:41\n"
        ));
        assert_eq!(
            text.matches("#EXT-X-DISCONTINUITY").count(),
            1,
            "20 ms is tolerated, 3 s is not"
        );
        assert!(
            !text.contains("ENDLIST")
                && !text.contains("PLAYLIST-TYPE")
                && !text.contains("EXT-X-MAP")
        );
        let always = MediaPlaylist {
            discontinuity: Discontinuity::Always,
            ..p.clone()
        };
        assert_eq!(always.render().matches("#EXT-X-DISCONTINUITY").count(), 2);
        let never = MediaPlaylist {
            discontinuity: Discontinuity::Never,
            ..p
        };
        assert_eq!(never.render().matches("#EXT-X-DISCONTINUITY").count(), 0);
    }

    #[test]
    fn dates_and_master_playlist() {
        assert_eq!(format_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_utc_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            master_playlist(
                "getHLSMediaPlaylist.m3u8?SessionToken=t",
                2_000_000,
                "avc1.42c01f",
                Some((640, 360))
            ),
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-STREAM-INF:BANDWIDTH=2000000,CODECS=\"avc1.42c01f\",RESOLUTION=640x360\n\
             getHLSMediaPlaylist.m3u8?SessionToken=t\n"
        );
    }
}
