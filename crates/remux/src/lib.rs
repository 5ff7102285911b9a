//! Stored Matroska fragments turned into the containers players want,
//! without re-encoding and without I/O: fragmented MP4 (an init segment and
//! one `moof`+`mdat` per fragment, as CMAF and MPEG-DASH use it; also whole
//! MP4 clips) and MPEG transport stream segments.
//!
//! The caller decides the time axis: each fragment is placed at a start time
//! in milliseconds on the session's timeline (for example the producer
//! timestamp minus the session's origin), and every sample's offset inside
//! the Matroska Cluster is kept.

pub mod mp4;
pub mod ts;

use bytes::Bytes;
use kinema_mkv::{Event, Reader, ReaderLimits};

/// Media timescale of every track we write: 90 kHz, as MPEG-TS requires.
pub const TIMESCALE: u64 = 90_000;

/// Why a stored fragment cannot be packaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemuxError {
    #[error("the stored fragment is not readable Matroska: {0}")]
    Malformed(String),
    #[error("the fragment has no video track")]
    NoVideoTrack,
    #[error(
        "codec {0} cannot be packaged (H.264 V_MPEG4/ISO/AVC or H.265 V_MPEGH/ISO/HEVC is required)"
    )]
    UnsupportedCodec(String),
    #[error("the video track has no codec private data")]
    MissingCodecPrivate,
    #[error("the video track's codec private data is not a valid decoder configuration record")]
    InvalidCodecPrivate,
    #[error("frame {0} is laced or truncated")]
    InvalidFrame(usize),
    #[error("the fragment holds no video frames")]
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    H264,
    H265,
}

impl Codec {
    /// The Matroska codec id.
    pub fn matroska_id(self) -> &'static str {
        match self {
            Codec::H264 => kinema_mkv::mux::CODEC_H264,
            Codec::H265 => kinema_mkv::mux::CODEC_H265,
        }
    }
}

/// The video track of a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    pub codec: Codec,
    /// The decoder configuration record: `avcC` or `hvcC` contents.
    pub config: Bytes,
    pub width: u32,
    pub height: u32,
    /// Bytes of each NAL unit length prefix in the frames (1, 2 or 4).
    pub nal_length_size: usize,
}

/// One frame, in decode order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Presentation time relative to the fragment's Cluster timecode, ns.
    pub offset_ns: i64,
    pub keyframe: bool,
    /// Length-prefixed NAL units, as in the `avcC`/`hvcC` sample format.
    pub data: Bytes,
}

/// The video of one stored fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub track: Track,
    pub samples: Vec<Sample>,
}

impl Track {
    fn from_info(info: &kinema_mkv::TrackInfo) -> Result<Track, RemuxError> {
        let codec = match info.codec_id.as_str() {
            kinema_mkv::mux::CODEC_H264 => Codec::H264,
            kinema_mkv::mux::CODEC_H265 => Codec::H265,
            other => return Err(RemuxError::UnsupportedCodec(other.to_string())),
        };
        let config = info
            .codec_private
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or(RemuxError::MissingCodecPrivate)?;
        let nal_length_size = match codec {
            Codec::H264 if config.len() >= 7 && config[0] == 1 => (config[4] & 3) as usize + 1,
            Codec::H265 if config.len() >= 23 && config[0] == 1 => (config[21] & 3) as usize + 1,
            _ => return Err(RemuxError::InvalidCodecPrivate),
        };
        if nal_length_size == 3 {
            return Err(RemuxError::InvalidCodecPrivate);
        }
        let track = Track {
            codec,
            config,
            width: info.width.unwrap_or(0).min(u16::MAX as u64) as u32,
            height: info.height.unwrap_or(0).min(u16::MAX as u64) as u32,
            nal_length_size,
        };
        // The parameter sets must parse, or TS output would lack them.
        track.parameter_sets()?;
        Ok(track)
    }

    /// The RFC 6381 codec string for playlists and manifests, for example
    /// `avc1.64001f` or `hvc1.1.6.L93.B0`.
    pub fn codec_string(&self) -> String {
        let c = &self.config;
        match self.codec {
            Codec::H264 => format!("avc1.{:02x}{:02x}{:02x}", c[1], c[2], c[3]),
            Codec::H265 => {
                let space = ["", "A", "B", "C"][(c[1] >> 6) as usize];
                let tier = if c[1] & 0x20 != 0 { 'H' } else { 'L' };
                let profile = c[1] & 0x1f;
                let compat = u32::from_be_bytes([c[2], c[3], c[4], c[5]]).reverse_bits();
                let level = c[12];
                let mut s = format!("hvc1.{space}{profile}.{compat:x}.{tier}{level}");
                // Constraint bytes, trailing zero bytes omitted.
                let constraints = &c[6..12];
                let used = constraints
                    .iter()
                    .rposition(|b| *b != 0)
                    .map_or(0, |i| i + 1);
                for b in &constraints[..used] {
                    s.push_str(&format!(".{b:X}"));
                }
                s
            }
        }
    }

    /// The parameter sets (SPS/PPS, and VPS for H.265) from the
    /// configuration record, in the order a decoder needs them.
    pub fn parameter_sets(&self) -> Result<Vec<Bytes>, RemuxError> {
        let c = &self.config;
        let bad = || RemuxError::InvalidCodecPrivate;
        let mut out = Vec::new();
        let mut take = |pos: &mut usize| -> Result<(), RemuxError> {
            let len = u16::from_be_bytes([
                *c.get(*pos).ok_or_else(bad)?,
                *c.get(*pos + 1).ok_or_else(bad)?,
            ]) as usize;
            let nal = c.get(*pos + 2..*pos + 2 + len).ok_or_else(bad)?;
            out.push(c.slice_ref(nal));
            *pos += 2 + len;
            Ok(())
        };
        match self.codec {
            Codec::H264 => {
                let mut pos = 6;
                let sps = c[5] & 0x1f;
                for _ in 0..sps {
                    take(&mut pos)?;
                }
                let pps = *c.get(pos).ok_or_else(bad)?;
                pos += 1;
                for _ in 0..pps {
                    take(&mut pos)?;
                }
            }
            Codec::H265 => {
                let arrays = c[22];
                let mut pos = 23;
                for _ in 0..arrays {
                    pos += 1; // array_completeness, NAL unit type
                    let n = u16::from_be_bytes([
                        *c.get(pos).ok_or_else(bad)?,
                        *c.get(pos + 1).ok_or_else(bad)?,
                    ]);
                    pos += 2;
                    for _ in 0..n {
                        take(&mut pos)?;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Reads the video track and its frames from one stored fragment object.
pub fn parse_fragment(object: &[u8]) -> Result<Fragment, RemuxError> {
    let mut reader = Reader::new(ReaderLimits::default());
    reader.push(object);
    reader.finish();
    let mut scale: u64 = 1_000_000;
    let mut video: Option<(u64, Track)> = None;
    let mut samples = Vec::new();
    loop {
        let event = reader
            .poll_event()
            .map_err(|e| RemuxError::Malformed(e.to_string()))?;
        let Some(event) = event else { break };
        match event {
            Event::Info { timecode_scale } => scale = timecode_scale.max(1),
            Event::Tracks { tracks, .. } => {
                let info = tracks
                    .iter()
                    .find(|t| t.track_type == 1)
                    .ok_or(RemuxError::NoVideoTrack)?;
                video = Some((info.number, Track::from_info(info)?));
            }
            Event::Block(block) => {
                let Some((number, _)) = &video else {
                    return Err(RemuxError::NoVideoTrack);
                };
                if block.track != *number {
                    continue;
                }
                if block.flags & 0x06 != 0 {
                    return Err(RemuxError::InvalidFrame(samples.len()));
                }
                let offset_ns = (block.timecode as i64).saturating_mul(scale as i64);
                samples.push(Sample {
                    offset_ns,
                    keyframe: block.keyframe,
                    data: block.payload,
                });
            }
            _ => {}
        }
    }
    let (_, track) = video.ok_or(RemuxError::NoVideoTrack)?;
    if samples.is_empty() {
        return Err(RemuxError::Empty);
    }
    for (i, s) in samples.iter().enumerate() {
        if !nal_units_fit(&s.data, track.nal_length_size) {
            return Err(RemuxError::InvalidFrame(i));
        }
    }
    Ok(Fragment { track, samples })
}

/// Live frames of one track as Annex B access units (start codes, the
/// parameter sets again before every keyframe), the form RTP payloaders
/// and decoders joining mid-stream need.
#[derive(Debug, Clone)]
pub struct AnnexB {
    track: Track,
    sets: Vec<Bytes>,
}

impl AnnexB {
    pub fn new(info: &kinema_mkv::TrackInfo) -> Result<AnnexB, RemuxError> {
        let track = Track::from_info(info)?;
        let sets = track.parameter_sets()?;
        Ok(AnnexB { track, sets })
    }

    pub fn codec(&self) -> Codec {
        self.track.codec
    }

    /// One frame (length-prefixed NAL units) as an Annex B access unit.
    /// A frame whose lengths do not add up is refused, not sent broken.
    pub fn convert(&self, data: &[u8], keyframe: bool) -> Result<Bytes, RemuxError> {
        if !nal_units_fit(data, self.track.nal_length_size) {
            return Err(RemuxError::InvalidFrame(0));
        }
        let mut out = Vec::with_capacity(data.len() + 64);
        write_annexb(&mut out, &self.track, &self.sets, data, keyframe, None);
        Ok(Bytes::from(out))
    }
}

/// Appends one frame as an Annex B access unit: `aud` first if given, the
/// configuration record's parameter sets before a keyframe, then the
/// frame's NAL units without in-band AUDs (one per access unit at most)
/// and, on keyframes, without in-band parameter sets (written already).
pub(crate) fn write_annexb(
    out: &mut Vec<u8>,
    track: &Track,
    sets: &[Bytes],
    data: &[u8],
    keyframe: bool,
    aud: Option<&[u8]>,
) {
    let h265 = track.codec == Codec::H265;
    // NAL unit type from the first header byte.
    let nal_type = |h: u8| if h265 { (h >> 1) & 0x3f } else { h & 0x1f };
    let is_aud = |h: u8| nal_type(h) == if h265 { 35 } else { 9 };
    let is_set = |h: u8| {
        if h265 {
            matches!(nal_type(h), 32..=34)
        } else {
            matches!(nal_type(h), 7 | 8)
        }
    };
    if let Some(aud) = aud {
        out.extend([0, 0, 0, 1]);
        out.extend(aud);
    }
    if keyframe {
        for set in sets {
            out.extend([0, 0, 0, 1]);
            out.extend(&set[..]);
        }
    }
    for nal in nal_units(data, track.nal_length_size) {
        let Some(&h) = nal.first() else { continue };
        if is_aud(h) || (keyframe && is_set(h)) {
            continue;
        }
        out.extend([0, 0, 0, 1]);
        out.extend(nal);
    }
}

/// Whether `data` is exactly a sequence of length-prefixed NAL units.
fn nal_units_fit(data: &[u8], size: usize) -> bool {
    nal_units(data, size)
        .map(|nal| size + nal.len())
        .sum::<usize>()
        == data.len()
}

/// The NAL units of a length-prefixed frame.
pub(crate) fn nal_units(data: &[u8], size: usize) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let prefix = data.get(pos..pos + size)?;
        let len = prefix
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        let nal = data.get(pos + size..pos + size + len)?;
        pos += size + len;
        Some(nal)
    })
}

/// Decode and presentation times of one sample, in [`TIMESCALE`] units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub dts: i64,
    pub pts: i64,
    pub duration: u32,
}

fn ticks(ns: i64) -> i64 {
    (ns as i128 * TIMESCALE as i128 / 1_000_000_000) as i64
}

/// Times for the samples of a fragment placed at `start_ms` on the
/// session timeline and lasting `duration_ms`.
///
/// Matroska stores presentation times only. Decode times are the sorted
/// presentation times, so the first decode time is the fragment's earliest
/// presentation time and decode times run on continuously from one
/// fragment to the next; composition offsets may then be negative (MP4
/// `trun` version 1). Use [`Timing::shifted`] where they may not.
pub fn timing(frag: &Fragment, start_ms: i64, duration_ms: u32) -> Vec<Timing> {
    let base = start_ms.saturating_mul(TIMESCALE as i64 / 1000);
    let pts: Vec<i64> = frag
        .samples
        .iter()
        .map(|s| base + ticks(s.offset_ns))
        .collect();
    let mut dts = pts.clone();
    dts.sort_unstable();
    let end = base + ticks(duration_ms as i64 * 1_000_000);
    let n = dts.len();
    let typical = if n > 1 {
        ((dts[n - 1] - dts[0]) / (n as i64 - 1)).max(1)
    } else {
        3000
    };
    (0..n)
        .map(|i| {
            let next = if i + 1 < n {
                dts[i + 1]
            } else if end > dts[i] {
                end
            } else {
                dts[i] + typical
            };
            Timing {
                dts: dts[i],
                pts: pts[i],
                duration: (next - dts[i]).clamp(0, u32::MAX as i64) as u32,
            }
        })
        .collect()
}

impl Timing {
    /// Decode times moved back so none is after its presentation time (as
    /// MPEG-TS requires): by the largest reordering delay in `times`.
    pub fn shifted(times: &[Timing]) -> Vec<Timing> {
        let shift = times
            .iter()
            .map(|t| t.dts - t.pts)
            .max()
            .unwrap_or(0)
            .max(0);
        times
            .iter()
            .map(|t| Timing {
                dts: t.dts - shift,
                ..*t
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod testdata {
    use super::*;

    /// An `avcC` for 640x360 High profile with one SPS and one PPS.
    pub fn avcc() -> Bytes {
        let sps = [
            0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0, 0x2f, 0xf9, 0x70, 0x11,
        ];
        let pps = [0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];
        let mut v = vec![1, 0x64, 0x00, 0x1e, 0xff, 0xe1];
        v.extend((sps.len() as u16).to_be_bytes());
        v.extend(sps);
        v.push(1);
        v.extend((pps.len() as u16).to_be_bytes());
        v.extend(pps);
        Bytes::from(v)
    }

    /// A fragment as the ingest path stores it: I P B B at 30 fps.
    pub fn stored(codec_private: &[u8]) -> Vec<u8> {
        use kinema_mkv::{element, ids, uint_element};
        let mut entry = Vec::new();
        uint_element(&mut entry, ids::TRACK_NUMBER, 1);
        uint_element(&mut entry, ids::TRACK_TYPE, 1);
        element(&mut entry, ids::CODEC_ID, b"V_MPEG4/ISO/AVC");
        element(&mut entry, ids::CODEC_PRIVATE, codec_private);
        let mut video = Vec::new();
        uint_element(&mut video, ids::PIXEL_WIDTH, 640);
        uint_element(&mut video, ids::PIXEL_HEIGHT, 360);
        element(&mut entry, ids::VIDEO, &video);
        let mut tracks = Vec::new();
        element(&mut tracks, ids::TRACK_ENTRY, &entry);
        let frame = |nal_type: u8, len: usize| {
            let mut f = (len as u32 + 1).to_be_bytes().to_vec();
            f.push(nal_type);
            f.extend(std::iter::repeat_n(0xAB, len));
            f
        };
        let frames = [
            (0i16, 0x80u8, frame(0x65, 300)),
            (100, 0, frame(0x41, 50)),
            (33, 0, frame(0x01, 20)),
            (67, 0, frame(0x01, 20)),
        ];
        let cluster = kinema_mkv::cluster(
            1_700_000_000_000,
            frames
                .iter()
                .map(|(tc, flags, data)| (1u64, *tc, *flags, &data[..])),
        );
        let mut doc = kinema_mkv::ebml_header();
        doc.extend(kinema_mkv::segment_header(None));
        doc.extend(kinema_mkv::info(1_000_000));
        element(&mut doc, ids::TRACKS, &tracks);
        doc.extend(cluster);
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::*;
    use super::*;

    #[test]
    fn live_frames_become_annex_b_with_parameter_sets_before_keyframes() {
        let info = kinema_mkv::TrackInfo {
            number: 1,
            uid: 1,
            track_type: 1,
            codec_id: "V_MPEG4/ISO/AVC".into(),
            codec_private: Some(avcc()),
            default_duration_ns: None,
            width: None,
            height: None,
        };
        let a = AnnexB::new(&info).unwrap();
        let frame = [0, 0, 0, 2, 0x65, 0xAA, 0, 0, 0, 1, 0x06];
        let key = a.convert(&frame, true).unwrap();
        let sets = Track::from_info(&info).unwrap().parameter_sets().unwrap();
        let mut want = Vec::new();
        for nal in sets
            .iter()
            .map(|s| &s[..])
            .chain([&[0x65, 0xAA][..], &[0x06][..]])
        {
            want.extend([0, 0, 0, 1]);
            want.extend(nal);
        }
        assert_eq!(&key[..], &want[..]);
        let delta = a.convert(&frame, false).unwrap();
        assert_eq!(&delta[..], &[0, 0, 0, 1, 0x65, 0xAA, 0, 0, 0, 1, 0x06][..]);
        // In-band AUD and parameter sets are not sent twice.
        let inband = [
            0, 0, 0, 2, 0x09, 0xf0, 0, 0, 0, 2, 0x67, 0x01, 0, 0, 0, 2, 0x65, 0xAA,
        ];
        let key2 = a.convert(&inband, true).unwrap();
        let mut want2 = Vec::new();
        for nal in sets.iter().map(|s| &s[..]).chain([&[0x65, 0xAA][..]]) {
            want2.extend([0, 0, 0, 1]);
            want2.extend(nal);
        }
        assert_eq!(&key2[..], &want2[..]);
        // A length running past the end is refused, not sent truncated.
        assert!(a.convert(&[0, 0, 0, 9, 0x65], false).is_err());
        let vp8 = kinema_mkv::TrackInfo {
            codec_id: "V_VP8".into(),
            ..info
        };
        assert!(AnnexB::new(&vp8).is_err());
    }

    #[test]
    fn parses_the_video_track_and_frames_in_decode_order() {
        let frag = parse_fragment(&stored(&avcc())).unwrap();
        assert_eq!(frag.track.codec, Codec::H264);
        assert_eq!((frag.track.width, frag.track.height), (640, 360));
        assert_eq!(frag.track.nal_length_size, 4);
        assert_eq!(frag.track.codec_string(), "avc1.64001e");
        let offsets: Vec<i64> = frag
            .samples
            .iter()
            .map(|s| s.offset_ns / 1_000_000)
            .collect();
        assert_eq!(offsets, [0, 100, 33, 67]);
        assert!(frag.samples[0].keyframe && !frag.samples[1].keyframe);
        let sets = frag.track.parameter_sets().unwrap();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0][0], 0x67);
        assert_eq!(sets[1][0], 0x68);
    }

    #[test]
    fn decode_times_are_sorted_presentation_times() {
        let frag = parse_fragment(&stored(&avcc())).unwrap();
        let t = timing(&frag, 1000, 133);
        let dts: Vec<i64> = t.iter().map(|t| t.dts).collect();
        let pts: Vec<i64> = t.iter().map(|t| t.pts).collect();
        assert_eq!(dts, [90_000, 92_970, 96_030, 99_000]);
        assert_eq!(pts, [90_000, 99_000, 92_970, 96_030]);
        // The last frame lasts until the fragment's end.
        assert_eq!(t[3].duration, (90_000 + 133 * 90 - 99_000) as u32);
        let total: u64 = t.iter().map(|t| t.duration as u64).sum();
        assert_eq!(total, 133 * 90);
        let s = Timing::shifted(&t);
        assert!(s.iter().all(|t| t.dts <= t.pts));
        assert_eq!(s[0].dts, 90_000 - (96_030 - 92_970));
    }

    #[test]
    fn bad_tracks_are_refused_with_the_reason() {
        assert_eq!(
            parse_fragment(&stored(&[])),
            Err(RemuxError::MissingCodecPrivate)
        );
        assert_eq!(
            parse_fragment(&stored(&[1, 2, 3])),
            Err(RemuxError::InvalidCodecPrivate)
        );
        let mut vp8 = stored(&avcc());
        let at = vp8
            .windows(15)
            .position(|w| w == b"V_MPEG4/ISO/AVC")
            .unwrap();
        vp8[at..at + 15].copy_from_slice(b"V_VP8__________");
        assert!(matches!(
            parse_fragment(&vp8),
            Err(RemuxError::UnsupportedCodec(_))
        ));
        assert!(parse_fragment(b"not matroska").is_err());
        assert!(parse_fragment(&[]).is_err());
    }
}
