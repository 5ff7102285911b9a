//! A live Matroska muxer for one video track: frames in, the byte pieces of
//! a streaming PutMedia upload out (RFC 9559).
//!
//! The stream is one Segment of unknown size holding Info, Tracks and then
//! unknown-size Clusters. A new Cluster (a fragment) starts at a keyframe
//! once the current one spans at least the fragment duration, so every
//! fragment starts with a keyframe. Cluster timecodes are in milliseconds
//! (TimecodeScale 1 ms) and are whatever the caller's timestamps mean:
//! Unix time for ABSOLUTE uploads, an offset from the producer start for
//! RELATIVE ones.
//!
//! The pieces are returned separately (the stream header, then each
//! Cluster start and each block) so a producer can keep every fragment's
//! bytes until the server acknowledges it and resend them after a reconnect.

use bytes::Bytes;

use crate::{ids, vint, writer};

/// The one video track of a camera upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoTrack {
    /// Matroska codec id, e.g. `V_MPEG4/ISO/AVC`.
    pub codec_id: String,
    /// The decoder configuration record (`avcC` for H.264, `hvcC` for H.265).
    pub codec_private: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Matroska codec id of H.264 in AVC (length-prefixed) form.
pub const CODEC_H264: &str = "V_MPEG4/ISO/AVC";
/// Matroska codec id of H.265 in HVC (length-prefixed) form.
pub const CODEC_H265: &str = "V_MPEGH/ISO/HEVC";

/// One encoded video frame (an access unit in length-prefixed form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Presentation time in nanoseconds on the upload's time axis.
    pub pts_ns: u64,
    pub keyframe: bool,
    pub data: Bytes,
}

/// What one pushed frame produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A new fragment starts: the Cluster header with its timecode (ms).
    Cluster { timecode_ms: u64, bytes: Vec<u8> },
    /// A SimpleBlock of the current fragment.
    Block { bytes: Vec<u8> },
}

/// Why a frame was not muxed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    #[error("the first frame of a stream must be a keyframe")]
    NoKeyframeYet,
}

/// The longest a Cluster may span: SimpleBlock timecodes are signed 16-bit
/// offsets from the Cluster timecode.
const MAX_CLUSTER_SPAN_MS: u64 = i16::MAX as u64;

/// Splits frames into keyframe-aligned fragments and writes them as Matroska.
#[derive(Debug, Clone)]
pub struct Muxer {
    fragment_ms: u64,
    cluster_ms: Option<u64>,
}

impl Muxer {
    /// `fragment_ms`: the shortest fragment; a fragment ends at the first
    /// keyframe at least this long after its start.
    pub fn new(fragment_ms: u64) -> Self {
        Muxer {
            fragment_ms,
            cluster_ms: None,
        }
    }

    /// The bytes that open an upload: EBML header, Segment (unknown size),
    /// Info and Tracks. A resent upload starts with these again, followed by
    /// whole fragments, so [`Muxer::restart`] must be called with it.
    pub fn header(track: &VideoTrack) -> Vec<u8> {
        let mut out = writer::ebml_header();
        out.extend(writer::segment_header(None));
        out.extend(writer::info(1_000_000));
        let mut video = Vec::new();
        writer::uint_element(&mut video, ids::PIXEL_WIDTH, track.width as u64);
        writer::uint_element(&mut video, ids::PIXEL_HEIGHT, track.height as u64);
        let mut entry = Vec::new();
        writer::uint_element(&mut entry, ids::TRACK_NUMBER, 1);
        writer::uint_element(&mut entry, ids::TRACK_UID, 1);
        writer::uint_element(&mut entry, ids::TRACK_TYPE, 1);
        writer::element(&mut entry, ids::CODEC_ID, track.codec_id.as_bytes());
        if !track.codec_private.is_empty() {
            writer::element(&mut entry, ids::CODEC_PRIVATE, &track.codec_private);
        }
        writer::element(&mut entry, ids::VIDEO, &video);
        let mut tracks = Vec::new();
        writer::element(&mut tracks, ids::TRACK_ENTRY, &entry);
        writer::element(&mut out, ids::TRACKS, &tracks);
        out
    }

    /// Forgets the current fragment: the next keyframe starts a new one.
    pub fn restart(&mut self) {
        self.cluster_ms = None;
    }

    /// Muxes one frame; returns a Cluster header first when it starts a
    /// fragment.
    pub fn push(&mut self, frame: &Frame) -> Result<Vec<Piece>, MuxError> {
        let ms = frame.pts_ns / 1_000_000;
        let mut out = Vec::with_capacity(2);
        let start = match self.cluster_ms {
            None if !frame.keyframe => return Err(MuxError::NoKeyframeYet),
            None => true,
            Some(c) => {
                let span = ms.saturating_sub(c);
                let back = c.saturating_sub(ms);
                (frame.keyframe && span >= self.fragment_ms)
                    || span > MAX_CLUSTER_SPAN_MS
                    || back > MAX_CLUSTER_SPAN_MS
            }
        };
        if start {
            let mut bytes = Vec::with_capacity(16);
            vint::write_id(&mut bytes, ids::CLUSTER);
            bytes.extend_from_slice(&writer::UNKNOWN_SIZE);
            writer::uint_element(&mut bytes, ids::TIMECODE, ms);
            self.cluster_ms = Some(ms);
            out.push(Piece::Cluster {
                timecode_ms: ms,
                bytes,
            });
        }
        let cluster = self.cluster_ms.unwrap_or(ms);
        // In range: a new Cluster starts whenever the offset would leave i16.
        let rel = (ms as i64 - cluster as i64) as i16;
        let flags = if frame.keyframe { 0x80 } else { 0 };
        let mut bytes = Vec::with_capacity(frame.data.len() + 16);
        writer::simple_block(&mut bytes, 1, rel, flags, &frame.data);
        out.push(Piece::Block { bytes });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, Reader, ReaderLimits};

    fn track() -> VideoTrack {
        VideoTrack {
            codec_id: CODEC_H264.into(),
            codec_private: vec![1, 0x42, 0, 0x1f, 0xff, 0xe0, 0],
            width: 320,
            height: 240,
        }
    }

    fn frame(ms: u64, keyframe: bool) -> Frame {
        Frame {
            pts_ns: ms * 1_000_000,
            keyframe,
            data: Bytes::from(vec![0, 0, 0, 1, if keyframe { 0x65 } else { 0x41 }]),
        }
    }

    /// 30 fps with a keyframe every 15 frames and 1 s fragments: clusters
    /// start on every second keyframe, and our own reader sees each block.
    #[test]
    fn fragments_start_at_keyframes_after_the_fragment_duration() {
        let mut mux = Muxer::new(1000);
        let mut bytes = Muxer::header(&track());
        let mut cluster_starts = Vec::new();
        for i in 0..90u64 {
            for piece in mux.push(&frame(i * 1000 / 30, i % 15 == 0)).unwrap() {
                match piece {
                    Piece::Cluster {
                        timecode_ms,
                        bytes: b,
                    } => {
                        cluster_starts.push(timecode_ms);
                        bytes.extend(b);
                    }
                    Piece::Block { bytes: b } => bytes.extend(b),
                }
            }
        }
        assert_eq!(cluster_starts, vec![0, 1000, 2000]);
        let mut reader = Reader::new(ReaderLimits::default());
        reader.push(&bytes);
        reader.finish();
        let (mut blocks, mut clusters, mut keyframes) = (0, Vec::new(), 0);
        while let Some(ev) = reader.poll_event().unwrap() {
            match ev {
                Event::ClusterTimecode(tc) => clusters.push(tc),
                Event::Block(b) => {
                    blocks += 1;
                    keyframes += b.keyframe as u32;
                }
                Event::Tracks { tracks, .. } => {
                    assert_eq!(tracks[0].codec_id, CODEC_H264);
                    assert_eq!(tracks[0].width, Some(320));
                }
                _ => {}
            }
        }
        assert_eq!((blocks, keyframes), (90, 6));
        assert_eq!(clusters, vec![0, 1000, 2000]);
    }

    #[test]
    fn a_stream_must_open_with_a_keyframe_and_restart_waits_for_the_next() {
        let mut mux = Muxer::new(1000);
        assert_eq!(mux.push(&frame(0, false)), Err(MuxError::NoKeyframeYet));
        assert_eq!(mux.push(&frame(10, true)).unwrap().len(), 2);
        assert_eq!(mux.push(&frame(20, false)).unwrap().len(), 1);
        mux.restart();
        assert_eq!(mux.push(&frame(30, false)), Err(MuxError::NoKeyframeYet));
        assert!(matches!(
            mux.push(&frame(40, true)).unwrap()[0],
            Piece::Cluster {
                timecode_ms: 40,
                ..
            }
        ));
    }

    /// A GOP longer than a SimpleBlock offset can express splits the Cluster
    /// instead of wrapping the 16-bit timecode.
    #[test]
    fn a_gop_longer_than_the_block_offset_range_splits_the_cluster() {
        let mut mux = Muxer::new(1000);
        mux.push(&frame(0, true)).unwrap();
        mux.push(&frame(32_767, false)).unwrap();
        let pieces = mux.push(&frame(32_768, false)).unwrap();
        assert!(matches!(
            pieces[0],
            Piece::Cluster {
                timecode_ms: 32_768,
                ..
            }
        ));
    }
}
