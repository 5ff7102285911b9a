//! One PutMedia upload as a state machine: bytes in, fragments and
//! acknowledgement decisions out.
//!
//! Each Cluster becomes one fragment. A fragment is handed out only when its
//! Cluster is complete; it is stored as a self-contained Matroska file (EBML
//! header, sized Segment, Info, Tracks, one sized Cluster) whose Cluster
//! timecode is rewritten to the producer timestamp, so fragments from
//! different uploads line up on one time axis.

use std::collections::VecDeque;

use bytes::Bytes;
use kinema_mkv::{Block, Event, Reader, ReaderError, ReaderLimits, TrackInfo};

/// Matroska TrackType of video tracks.
const VIDEO_TRACK_TYPE: u64 = 1;

/// PutMedia `ErrorId` codes (Kinesis Video Streams developer guide, PutMedia).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckError {
    StreamReadError = 4000,
    MaxFragmentSizeReached = 4001,
    MaxFragmentDurationReached = 4002,
    MaxConnectionDurationReached = 4003,
    FragmentTimecodeLesserThanPrevious = 4004,
    InvalidMkvData = 4006,
    InvalidProducerTimestamp = 4007,
    StreamNotActive = 4008,
    TrackNumberMismatch = 4010,
    FramesMissingForTrack = 4011,
    MoreThanAllowedTracksFound = 4012,
    InternalError = 5000,
    ArchivalError = 5001,
}

impl AckError {
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The symbolic name sent as the ACK's `ErrorCode`.
    pub fn name(self) -> &'static str {
        match self {
            AckError::StreamReadError => "STREAM_READ_ERROR",
            AckError::MaxFragmentSizeReached => "MAX_FRAGMENT_SIZE_REACHED",
            AckError::MaxFragmentDurationReached => "MAX_FRAGMENT_DURATION_REACHED",
            AckError::MaxConnectionDurationReached => "MAX_CONNECTION_DURATION_REACHED",
            AckError::FragmentTimecodeLesserThanPrevious => {
                "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS"
            }
            AckError::InvalidMkvData => "INVALID_MKV_DATA",
            AckError::InvalidProducerTimestamp => "INVALID_PRODUCER_TIMESTAMP",
            AckError::StreamNotActive => "STREAM_NOT_ACTIVE",
            AckError::TrackNumberMismatch => "TRACK_NUMBER_MISMATCH",
            AckError::FramesMissingForTrack => "FRAMES_MISSING_FOR_TRACK",
            AckError::MoreThanAllowedTracksFound => "MORE_THAN_ALLOWED_TRACKS_FOUND",
            AckError::InternalError => "INTERNAL_ERROR",
            AckError::ArchivalError => "ARCHIVAL_ERROR",
        }
    }
}

/// How cluster timecodes relate to wall time (`x-amzn-fragment-timecode-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimecodeType {
    /// Cluster timecodes are Unix time in TimecodeScale units.
    Absolute,
    /// Cluster timecodes are offsets from the producer start timestamp.
    Relative,
}

#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    pub max_fragment_bytes: u64,
    pub max_fragment_duration_ms: u64,
    pub max_tracks: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_fragment_bytes: 50 * 1024 * 1024,
            max_fragment_duration_ms: 10_000,
            max_tracks: 3,
        }
    }
}

/// A complete fragment, ready to be stored.
#[derive(Debug, Clone)]
pub struct CompletedFragment {
    /// The Cluster timecode as the producer sent it (the ACK's FragmentTimecode).
    pub timecode: u64,
    pub producer_ms: i64,
    pub server_ms: i64,
    pub duration_ms: u32,
    pub frames: u32,
    /// The stored object: a self-contained Matroska file.
    pub object: Bytes,
    pub cluster_offset: u32,
    pub tracks: Vec<TrackInfo>,
}

#[derive(Debug, Clone)]
pub enum IngestEvent {
    /// The first bytes of a fragment arrived (the BUFFERING ack).
    Buffering { timecode: u64 },
    /// A whole fragment arrived (store it, then send RECEIVED and PERSISTED).
    Fragment(CompletedFragment),
    /// The upload violates the protocol; the session is over.
    Error {
        error: AckError,
        timecode: Option<u64>,
        detail: String,
    },
}

struct Pending {
    timecode: Option<u64>,
    producer_ms: i64,
    server_ms: i64,
    bytes: u64,
    blocks: Vec<Block>,
}

pub struct IngestSession {
    reader: Reader,
    limits: IngestLimits,
    timecode_type: TimecodeType,
    /// Producer start timestamp in Unix nanoseconds (RELATIVE timecodes).
    start_ns: i128,
    timecode_scale: u64,
    ebml_headers: u32,
    segments: u32,
    tracks: Option<(Vec<TrackInfo>, Bytes)>,
    pending: Option<Pending>,
    last_timecode: Option<u64>,
    out: VecDeque<IngestEvent>,
    failed: bool,
    /// Frames of the video track handed out as they arrive (see
    /// [`IngestSession::set_frame_tap`]); `None` while the tap is off.
    frames: Option<VecDeque<LiveBlock>>,
}

/// One frame of the upload's video track as soon as its block arrived, long
/// before its fragment is complete: what live viewers are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveBlock {
    /// Producer timestamp of the frame (presentation time), Unix ms.
    pub producer_ms: i64,
    pub keyframe: bool,
    /// The frame as stored (for H.264: length-prefixed NAL units).
    pub payload: Bytes,
}

/// Frames kept for [`IngestSession::poll_frame`] before the oldest is dropped.
const MAX_TAPPED_FRAMES: usize = 256;

impl IngestSession {
    /// `start_ns`: the producer start timestamp (RELATIVE), Unix nanoseconds.
    pub fn new(timecode_type: TimecodeType, start_ns: i128, limits: IngestLimits) -> Self {
        IngestSession {
            reader: Reader::new(ReaderLimits {
                max_block: limits.max_fragment_bytes + 1024,
                ..ReaderLimits::default()
            }),
            limits,
            timecode_type,
            start_ns,
            timecode_scale: 1_000_000,
            ebml_headers: 0,
            segments: 0,
            tracks: None,
            pending: None,
            last_timecode: None,
            out: VecDeque::new(),
            failed: false,
            frames: None,
        }
    }

    /// Turns the per-frame tap on or off. While on, every block of the
    /// video track is also queued for [`IngestSession::poll_frame`] as it
    /// arrives; the queue keeps the newest frames if nobody drains it.
    pub fn set_frame_tap(&mut self, on: bool) {
        match (on, self.frames.is_some()) {
            (true, false) => self.frames = Some(VecDeque::new()),
            (false, true) => self.frames = None,
            _ => {}
        }
    }

    /// The next tapped frame, if any.
    pub fn poll_frame(&mut self) -> Option<LiveBlock> {
        self.frames.as_mut()?.pop_front()
    }

    /// The upload's video track (the first track of type video), once its
    /// Tracks element has arrived.
    pub fn video_track(&self) -> Option<&TrackInfo> {
        self.tracks
            .as_ref()?
            .0
            .iter()
            .find(|t| t.track_type == VIDEO_TRACK_TYPE)
    }

    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Feeds upload bytes received at wall time `now_ms`.
    pub fn push(&mut self, data: &[u8], now_ms: i64) {
        if self.failed {
            return;
        }
        self.reader.push(data);
        self.drain(now_ms);
    }

    /// The upload ended cleanly (the last chunk arrived): an open Cluster is
    /// complete. Call only for a clean end; after a broken connection simply
    /// drop the session, discarding the partial fragment.
    pub fn finish(&mut self, now_ms: i64) {
        if self.failed {
            return;
        }
        self.reader.finish();
        self.drain(now_ms);
    }

    pub fn poll(&mut self) -> Option<IngestEvent> {
        self.out.pop_front()
    }

    fn error(&mut self, error: AckError, detail: impl Into<String>) {
        let timecode = self.pending.as_ref().and_then(|p| p.timecode);
        self.pending = None;
        self.failed = true;
        self.out.push_back(IngestEvent::Error {
            error,
            timecode,
            detail: detail.into(),
        });
    }

    fn drain(&mut self, now_ms: i64) {
        while !self.failed {
            match self.reader.poll_event() {
                Ok(Some(ev)) => self.handle(ev, now_ms),
                Ok(None) => return,
                Err(e) => {
                    let code = match e {
                        ReaderError::ElementTooLarge { .. } if self.pending.is_some() => {
                            AckError::MaxFragmentSizeReached
                        }
                        _ => AckError::InvalidMkvData,
                    };
                    self.error(code, e.to_string());
                }
            }
        }
    }

    fn handle(&mut self, ev: Event, now_ms: i64) {
        match ev {
            Event::EbmlHeader { doc_type } => {
                self.ebml_headers += 1;
                if doc_type != "matroska" && doc_type != "webm" {
                    self.error(
                        AckError::InvalidMkvData,
                        format!("unsupported DocType {doc_type:?}"),
                    );
                } else if self.ebml_headers > 1 {
                    self.error(
                        AckError::InvalidMkvData,
                        "a PutMedia session carries one MKV segment; a second EBML header arrived",
                    );
                }
            }
            Event::SegmentStart { .. } => {
                self.segments += 1;
                if self.ebml_headers == 0 {
                    self.error(AckError::InvalidMkvData, "Segment before the EBML header");
                } else if self.segments > 1 {
                    self.error(
                        AckError::InvalidMkvData,
                        "a PutMedia session carries one MKV segment; a second Segment arrived",
                    );
                }
            }
            Event::Info { timecode_scale } => self.timecode_scale = timecode_scale,
            Event::Tracks { tracks, raw } => {
                if tracks.len() > self.limits.max_tracks {
                    self.error(
                        AckError::MoreThanAllowedTracksFound,
                        format!(
                            "{} tracks; at most {} are allowed",
                            tracks.len(),
                            self.limits.max_tracks
                        ),
                    );
                } else if tracks.is_empty() {
                    self.error(AckError::InvalidMkvData, "Tracks element declares no track");
                } else {
                    self.tracks = Some((tracks, raw));
                }
            }
            Event::ClusterStart { .. } => {
                if self.tracks.is_none() {
                    self.error(AckError::InvalidMkvData, "Cluster before Tracks");
                    return;
                }
                self.pending = Some(Pending {
                    timecode: None,
                    producer_ms: 0,
                    server_ms: now_ms,
                    bytes: 0,
                    blocks: Vec::new(),
                });
            }
            Event::ClusterTimecode(tc) => {
                let Some(p) = self.pending.as_mut() else {
                    return self.error(AckError::InvalidMkvData, "Timecode outside a Cluster");
                };
                if p.timecode.is_some() {
                    return self.error(AckError::InvalidMkvData, "two Timecodes in one Cluster");
                }
                if let Some(last) = self.last_timecode
                    && tc < last
                {
                    p.timecode = Some(tc);
                    return self.error(
                        AckError::FragmentTimecodeLesserThanPrevious,
                        format!("cluster timecode {tc} is below the previous {last}"),
                    );
                }
                // Both factors come from the upload: overflow is an error, not a panic.
                let producer_ns = (tc as i128)
                    .checked_mul(self.timecode_scale as i128)
                    .and_then(|ns| match self.timecode_type {
                        TimecodeType::Absolute => Some(ns),
                        TimecodeType::Relative => self.start_ns.checked_add(ns),
                    });
                let producer_ms = producer_ns.map(|ns| ns.div_euclid(1_000_000)).unwrap_or(-1);
                if !(0..=i64::MAX as i128 / 2).contains(&producer_ms) {
                    return self.error(
                        AckError::InvalidProducerTimestamp,
                        "producer timestamp out of range",
                    );
                }
                p.timecode = Some(tc);
                p.producer_ms = producer_ms as i64;
                self.last_timecode = Some(tc);
                self.out.push_back(IngestEvent::Buffering { timecode: tc });
            }
            Event::Block(block) => self.block(block),
            Event::ClusterEnd { .. } => self.complete_cluster(),
            Event::SegmentEnd { .. } => {}
        }
    }

    fn block(&mut self, block: Block) {
        let declared = self
            .tracks
            .as_ref()
            .is_some_and(|(t, _)| t.iter().any(|t| t.number == block.track));
        let tap =
            self.frames.is_some() && self.video_track().is_some_and(|t| t.number == block.track);
        let max_bytes = self.limits.max_fragment_bytes;
        let max_ms = self.limits.max_fragment_duration_ms as i128;
        let scale = self.timecode_scale as i128;
        let Some(p) = self.pending.as_mut() else {
            return self.error(AckError::InvalidMkvData, "block outside a Cluster");
        };
        if p.timecode.is_none() {
            return self.error(
                AckError::InvalidMkvData,
                "block before the Cluster Timecode",
            );
        }
        if !declared {
            return self.error(
                AckError::TrackNumberMismatch,
                format!(
                    "block for track {} which Tracks does not declare",
                    block.track
                ),
            );
        }
        p.bytes += block.payload.len() as u64;
        if p.bytes > max_bytes {
            return self.error(
                AckError::MaxFragmentSizeReached,
                format!("fragment over {max_bytes} bytes"),
            );
        }
        if (block.timecode as i128).abs() * scale > max_ms * 1_000_000 {
            return self.error(
                AckError::MaxFragmentDurationReached,
                format!("fragment longer than {max_ms} ms"),
            );
        }
        let tapped = tap.then(|| LiveBlock {
            producer_ms: p.producer_ms + (block.timecode as i128 * scale / 1_000_000) as i64,
            keyframe: block.keyframe,
            payload: block.payload.clone(),
        });
        p.blocks.push(block);
        if let (Some(frame), Some(frames)) = (tapped, self.frames.as_mut()) {
            if frames.len() >= MAX_TAPPED_FRAMES {
                frames.pop_front();
            }
            frames.push_back(frame);
        }
    }

    fn complete_cluster(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let (Some(timecode), false) = (p.timecode, p.blocks.is_empty()) else {
            // An empty Cluster carries no media; nothing to store.
            return;
        };
        let (tracks, tracks_raw) = self
            .tracks
            .clone()
            .expect("a Cluster starts only after Tracks");
        let scale = self.timecode_scale;
        let duration_ms = estimate_duration_ns(&p.blocks, &tracks, scale) / 1_000_000;
        // The stored Cluster is stamped with the producer timestamp in
        // TimecodeScale units, so GetMedia output has one time axis.
        let stored_tc =
            u64::try_from(p.producer_ms as u128 * 1_000_000 / scale as u128).unwrap_or(u64::MAX);
        let cluster = kinema_mkv::cluster(
            stored_tc,
            p.blocks.iter().map(|b| {
                (
                    b.track,
                    b.timecode,
                    b.flags | if b.keyframe { 0x80 } else { 0 },
                    &b.payload[..],
                )
            }),
        );
        let info = kinema_mkv::info(scale);
        let mut object = kinema_mkv::ebml_header();
        object.extend(kinema_mkv::segment_header(Some(
            (info.len() + tracks_raw.len() + cluster.len()) as u64,
        )));
        object.extend(info);
        object.extend_from_slice(&tracks_raw);
        let cluster_offset = object.len() as u32;
        object.extend(cluster);
        self.out.push_back(IngestEvent::Fragment(CompletedFragment {
            timecode,
            producer_ms: p.producer_ms,
            server_ms: p.server_ms,
            duration_ms: duration_ms.min(u32::MAX as u64) as u32,
            frames: p.blocks.len() as u32,
            object: Bytes::from(object),
            cluster_offset,
            tracks,
        }));
    }
}

/// Duration of a fragment: the span of its block timecodes plus one frame,
/// the frame length taken from the track's DefaultDuration or, failing
/// that, from the typical gap between its frames.
fn estimate_duration_ns(blocks: &[Block], tracks: &[TrackInfo], scale: u64) -> u64 {
    let first_track = blocks[0].track;
    let mut times: Vec<i64> = blocks
        .iter()
        .filter(|b| b.track == first_track)
        .map(|b| b.timecode as i64)
        .collect();
    times.sort_unstable();
    // Block timecodes are i16, but TimecodeScale and DefaultDuration come
    // from the upload: compute in u128 and saturate.
    let span = (times[times.len() - 1] - times[0]) as u128 * scale as u128;
    let frame = tracks
        .iter()
        .find(|t| t.number == first_track)
        .and_then(|t| t.default_duration_ns)
        .map(u128::from)
        .or_else(|| {
            let mut gaps: Vec<i64> = times
                .windows(2)
                .map(|w| w[1] - w[0])
                .filter(|g| *g > 0)
                .collect();
            gaps.sort_unstable();
            gaps.get(gaps.len() / 2).map(|g| *g as u128 * scale as u128)
        })
        .unwrap_or(0);
    u64::try_from(span + frame).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinema_mkv::{element, ids, uint_element};

    fn header(track_count: u64) -> Vec<u8> {
        let mut tracks = Vec::new();
        for n in 1..=track_count {
            let mut entry = Vec::new();
            uint_element(&mut entry, ids::TRACK_NUMBER, n);
            uint_element(&mut entry, ids::TRACK_TYPE, 1);
            element(&mut entry, ids::CODEC_ID, b"V_MPEG4/ISO/AVC");
            element(&mut tracks, ids::TRACK_ENTRY, &entry);
        }
        let mut doc = kinema_mkv::ebml_header();
        doc.extend(kinema_mkv::segment_header(None));
        doc.extend(kinema_mkv::info(1_000_000));
        element(&mut doc, ids::TRACKS, &tracks);
        doc
    }

    fn cluster(tc: u64, track: u64, frames: i16) -> Vec<u8> {
        let payload = [0u8; 100];
        kinema_mkv::cluster(
            tc,
            (0..frames).map(|i| (track, i * 33, if i == 0 { 0x80 } else { 0 }, &payload[..])),
        )
    }

    fn run(doc: &[u8], clean: bool) -> Vec<IngestEvent> {
        let mut s = IngestSession::new(
            TimecodeType::Relative,
            1_700_000_000_000_000_000,
            IngestLimits::default(),
        );
        s.push(doc, 5);
        if clean {
            s.finish(6);
        }
        std::iter::from_fn(|| s.poll()).collect()
    }

    fn fragments(events: &[IngestEvent]) -> Vec<&CompletedFragment> {
        events
            .iter()
            .filter_map(|e| match e {
                IngestEvent::Fragment(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    fn error(events: &[IngestEvent]) -> Option<AckError> {
        events.iter().find_map(|e| match e {
            IngestEvent::Error { error, .. } => Some(*error),
            _ => None,
        })
    }

    #[test]
    fn clusters_become_self_contained_fragments() {
        let mut doc = header(1);
        doc.extend(cluster(0, 1, 30));
        doc.extend(cluster(1000, 1, 30));
        let events = run(&doc, true);
        let frags = fragments(&events);
        assert_eq!(frags.len(), 2);
        assert_eq!(frags[0].producer_ms, 1_700_000_000_000);
        assert_eq!(frags[1].producer_ms, 1_700_000_001_000);
        assert_eq!(frags[0].duration_ms, 990);
        assert_eq!(frags[0].frames, 30);
        // The stored object is itself a complete Matroska document.
        let mut r = kinema_mkv::Reader::default();
        r.push(&frags[1].object);
        r.finish();
        let mut tcs = Vec::new();
        while let Some(ev) = r.poll_event().unwrap() {
            if let Event::ClusterTimecode(t) = ev {
                tcs.push(t);
            }
        }
        assert_eq!(tcs, [1_700_000_001_000]);
        assert_eq!(error(&events), None);
    }

    #[test]
    fn rule_violations_get_their_error_codes() {
        let mut backwards = header(1);
        backwards.extend(cluster(1000, 1, 2));
        backwards.extend(cluster(500, 1, 2));
        let ev = run(&backwards, true);
        assert_eq!(
            error(&ev),
            Some(AckError::FragmentTimecodeLesserThanPrevious)
        );
        assert_eq!(
            fragments(&ev).len(),
            1,
            "the fragment before the violation is kept"
        );

        let mut four = header(4);
        four.extend(cluster(0, 1, 2));
        assert_eq!(
            error(&run(&four, true)),
            Some(AckError::MoreThanAllowedTracksFound)
        );

        let mut undeclared = header(1);
        undeclared.extend(cluster(0, 2, 2));
        assert_eq!(
            error(&run(&undeclared, true)),
            Some(AckError::TrackNumberMismatch)
        );

        let mut long = header(1);
        long.extend(kinema_mkv::cluster(
            0,
            [(1, 0, 0x80, &b"x"[..]), (1, 10_001, 0, &b"y"[..])],
        ));
        assert_eq!(
            error(&run(&long, true)),
            Some(AckError::MaxFragmentDurationReached)
        );

        let mut second = header(1);
        second.extend(cluster(0, 1, 2));
        second.extend(header(1));
        let ev = run(&second, true);
        assert_eq!(error(&ev), Some(AckError::InvalidMkvData));
        assert_eq!(fragments(&ev).len(), 1);

        assert_eq!(
            error(&run(b"garbage, not matroska", true)),
            Some(AckError::InvalidMkvData)
        );
    }

    #[test]
    fn absolute_timecodes_are_the_producer_timestamps() {
        let mut s = IngestSession::new(TimecodeType::Absolute, 0, IngestLimits::default());
        let mut doc = header(1);
        doc.extend(cluster(1_700_000_000_123, 1, 3));
        s.push(&doc, 0);
        s.finish(0);
        let events: Vec<_> = std::iter::from_fn(|| s.poll()).collect();
        assert_eq!(fragments(&events)[0].producer_ms, 1_700_000_000_123);
    }

    #[test]
    fn huge_timecode_scale_is_an_error_not_an_overflow() {
        let mut tracks = Vec::new();
        let mut entry = Vec::new();
        uint_element(&mut entry, ids::TRACK_NUMBER, 1);
        uint_element(&mut entry, ids::DEFAULT_DURATION, u64::MAX);
        element(&mut tracks, ids::TRACK_ENTRY, &entry);
        let mut doc = kinema_mkv::ebml_header();
        doc.extend(kinema_mkv::segment_header(None));
        doc.extend(kinema_mkv::info(u64::MAX));
        element(&mut doc, ids::TRACKS, &tracks);
        doc.extend(kinema_mkv::cluster(u64::MAX, [(1, -5, 0x80, &b"x"[..])]));
        let mut s = IngestSession::new(
            TimecodeType::Relative,
            i128::from(i64::MAX),
            IngestLimits::default(),
        );
        s.push(&doc, 0);
        s.finish(0);
        let events: Vec<_> = std::iter::from_fn(|| s.poll()).collect();
        assert_eq!(error(&events), Some(AckError::InvalidProducerTimestamp));
    }

    #[test]
    fn oversized_fragment_is_refused() {
        let mut s = IngestSession::new(
            TimecodeType::Relative,
            0,
            IngestLimits {
                max_fragment_bytes: 1000,
                ..IngestLimits::default()
            },
        );
        let mut doc = header(1);
        doc.extend(cluster(0, 1, 20));
        s.push(&doc, 0);
        let events: Vec<_> = std::iter::from_fn(|| s.poll()).collect();
        assert_eq!(error(&events), Some(AckError::MaxFragmentSizeReached));
    }

    #[test]
    fn a_broken_upload_keeps_only_complete_fragments() {
        let mut doc = header(1);
        doc.extend(cluster(0, 1, 5));
        doc.extend(cluster(1000, 1, 5));
        let cut = doc.len() - 50;
        // Unclean end: the open (second) cluster is not complete.
        let events = run(&doc[..cut], false);
        assert_eq!(fragments(&events).len(), 1);
        assert_eq!(error(&events), None);
    }

    /// Live viewers get each frame when its block arrives, with its
    /// producer time, before the fragment holding it is complete.
    #[test]
    fn the_frame_tap_hands_out_frames_before_their_fragment_completes() {
        let mut s = IngestSession::new(
            TimecodeType::Relative,
            1_700_000_000_000_000_000,
            IngestLimits::default(),
        );
        s.push(&header(1), 1);
        assert_eq!(s.poll_frame(), None, "the tap is off by default");
        s.set_frame_tap(true);
        let c = cluster(0, 1, 3);
        // All but the last byte: two frames are whole, the fragment is open.
        s.push(&c[..c.len() - 1], 2);
        let mut frames: Vec<LiveBlock> = std::iter::from_fn(|| s.poll_frame()).collect();
        assert_eq!(frames.len(), 2);
        assert!(
            !std::iter::from_fn(|| s.poll()).any(|e| matches!(e, IngestEvent::Fragment(_))),
            "the fragment is not complete yet"
        );
        s.push(&c[c.len() - 1..], 3);
        frames.extend(std::iter::from_fn(|| s.poll_frame()));
        assert_eq!(
            frames.iter().map(|f| f.producer_ms).collect::<Vec<_>>(),
            [1_700_000_000_000, 1_700_000_000_033, 1_700_000_000_066]
        );
        assert_eq!(
            frames.iter().map(|f| f.keyframe).collect::<Vec<_>>(),
            [true, false, false]
        );
        assert_eq!(frames[0].payload.len(), 100);
        assert_eq!(s.video_track().map(|t| t.number), Some(1));
        // Off again: nothing is queued.
        s.set_frame_tap(false);
        s.push(&cluster(100, 1, 2), 3);
        assert_eq!(s.poll_frame(), None);
    }
}
