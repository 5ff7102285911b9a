//! MPEG-DASH manifests (ISO/IEC 23009-1) for fMP4 sessions: one period, one
//! video representation, a `SegmentList` whose `SegmentTimeline` gives each
//! fragment's start and duration and whose `SegmentURL`s carry the session
//! token. Live sessions are `dynamic` and anchored at the session origin
//! (`availabilityStartTime`), so media time zero is that wall-clock instant.

use std::fmt::Write;

use crate::format_utc_ms;

/// One media segment: start relative to the session origin, ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashSegment {
    pub start_ms: i64,
    pub duration_ms: u32,
    pub uri: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Live sessions: `type="dynamic"`, reloaded by the player.
    pub dynamic: bool,
    /// Wall-clock time of media time zero (Unix ms).
    pub origin_ms: i64,
    /// When this manifest was produced (Unix ms), for `publishTime`.
    pub now_ms: i64,
    pub codecs: String,
    pub width: u32,
    pub height: u32,
    pub bandwidth: u64,
    pub init_uri: String,
    pub segments: Vec<DashSegment>,
}

fn duration(ms: i64) -> String {
    format!("PT{}.{:03}S", ms / 1000, ms % 1000)
}

fn xml_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
}

impl Manifest {
    pub fn render(&self) -> String {
        let first = self.segments.first().map_or(0, |s| s.start_ms);
        let end = self
            .segments
            .last()
            .map_or(0, |s| s.start_ms + i64::from(s.duration_ms));
        let longest = self
            .segments
            .iter()
            .map(|s| i64::from(s.duration_ms))
            .max()
            .unwrap_or(1000);
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = write!(
            out,
            "<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" \
             profiles=\"urn:mpeg:dash:profile:isoff-live:2011\" minBufferTime=\"{}\"",
            duration(longest)
        );
        if self.dynamic {
            let _ = write!(
                out,
                " type=\"dynamic\" availabilityStartTime=\"{}\" publishTime=\"{}\" \
                 minimumUpdatePeriod=\"PT1S\" timeShiftBufferDepth=\"{}\" \
                 suggestedPresentationDelay=\"{}\"",
                format_utc_ms(self.origin_ms),
                format_utc_ms(self.now_ms),
                duration((end - first).max(longest)),
                duration(longest * 2),
            );
        } else {
            let _ = write!(
                out,
                " type=\"static\" mediaPresentationDuration=\"{}\"",
                duration(end - first)
            );
        }
        out.push_str(">\n  <Period id=\"0\" start=\"PT0S\">\n");
        out.push_str(
            "    <AdaptationSet id=\"0\" contentType=\"video\" mimeType=\"video/mp4\" \
             segmentAlignment=\"true\" startWithSAP=\"1\">\n",
        );
        let _ = writeln!(
            out,
            "      <Representation id=\"1\" codecs=\"{}\" bandwidth=\"{}\" width=\"{}\" height=\"{}\">",
            xml_attr(&self.codecs),
            self.bandwidth,
            self.width,
            self.height
        );
        // A static presentation starts at its first segment.
        let offset = if self.dynamic { 0 } else { first };
        let _ = writeln!(
            out,
            "        <SegmentList timescale=\"1000\" presentationTimeOffset=\"{offset}\">"
        );
        let _ = writeln!(
            out,
            "          <Initialization sourceURL=\"{}\"/>",
            xml_attr(&self.init_uri)
        );
        out.push_str("          <SegmentTimeline>\n");
        for s in &self.segments {
            let _ = writeln!(
                out,
                "            <S t=\"{}\" d=\"{}\"/>",
                s.start_ms, s.duration_ms
            );
        }
        out.push_str("          </SegmentTimeline>\n");
        for s in &self.segments {
            let _ = writeln!(
                out,
                "          <SegmentURL media=\"{}\"/>",
                xml_attr(&s.uri)
            );
        }
        out.push_str(
            "        </SegmentList>\n      </Representation>\n    </AdaptationSet>\n  </Period>\n</MPD>\n",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_manifest_golden() {
        let m = Manifest {
            dynamic: false,
            origin_ms: 1_795_327_917_518,
            now_ms: 1_795_327_999_000,
            codecs: "avc1.42c01f".into(),
            width: 640,
            height: 360,
            bandwidth: 1_000_000,
            init_uri: "getMP4InitFragment.mp4?SessionToken=t".into(),
            segments: vec![
                DashSegment {
                    start_ms: 0,
                    duration_ms: 2000,
                    uri: "getMP4MediaFragment.mp4?FragmentNumber=1&SessionToken=t".into(),
                },
                DashSegment {
                    start_ms: 2000,
                    duration_ms: 1500,
                    uri: "getMP4MediaFragment.mp4?FragmentNumber=2&SessionToken=t".into(),
                },
            ],
        };
        assert_eq!(
            m.render(),
            r#"<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-live:2011" minBufferTime="PT2.000S" type="static" mediaPresentationDuration="PT3.500S">
  <Period id="0" start="PT0S">
    <AdaptationSet id="0" contentType="video" mimeType="video/mp4" segmentAlignment="true" startWithSAP="1">
      <Representation id="1" codecs="avc1.42c01f" bandwidth="1000000" width="640" height="360">
        <SegmentList timescale="1000" presentationTimeOffset="0">
          <Initialization sourceURL="getMP4InitFragment.mp4?SessionToken=t"/>
          <SegmentTimeline>
            <S t="0" d="2000"/>
            <S t="2000" d="1500"/>
          </SegmentTimeline>
          <SegmentURL media="getMP4MediaFragment.mp4?FragmentNumber=1&amp;SessionToken=t"/>
          <SegmentURL media="getMP4MediaFragment.mp4?FragmentNumber=2&amp;SessionToken=t"/>
        </SegmentList>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>
"#
        );
    }

    #[test]
    fn dynamic_manifest_is_anchored_at_the_origin() {
        let m = Manifest {
            dynamic: true,
            origin_ms: 0,
            now_ms: 61_000,
            codecs: "avc1.42c01f".into(),
            width: 640,
            height: 360,
            bandwidth: 1,
            init_uri: "i".into(),
            segments: vec![DashSegment {
                start_ms: 58_000,
                duration_ms: 2000,
                uri: "s".into(),
            }],
        };
        let text = m.render();
        assert!(text.contains(
            "type=\"dynamic\" availabilityStartTime=\"1970-01-01T00:00:00.000Z\" \
             publishTime=\"1970-01-01T00:01:01.000Z\""
        ));
        assert!(text.contains("presentationTimeOffset=\"0\""));
        assert!(text.contains("<S t=\"58000\" d=\"2000\"/>"));
        assert!(!text.contains("mediaPresentationDuration"));
    }
}
