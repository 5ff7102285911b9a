//! The push reader: hand it bytes as they arrive, drain [`Event`]s.
//!
//! Any chunking of the same input yields the same events (a property test
//! proves it), because the reader never acts on a partial element header and
//! reads small elements whole before reporting them. Large elements it does
//! not need (Cues, attachments) are skipped without buffering.
//!
//! Why one file of about 700 lines: the reader is one state machine whose
//! states (element header, element body, skipping, resynchronising) and the
//! parsers of the few elements it reads whole (EBML header, Info, Tracks,
//! blocks, tags) share its buffer and offsets; split apart, each piece
//! would need that state passed in and the resync rules would be spread
//! over several files.

use bytes::{Buf, Bytes, BytesMut};

use crate::ids;
use crate::vint::{self, InvalidVint};

/// Upper bounds on what the reader buffers for one element.
#[derive(Debug, Clone, Copy)]
pub struct ReaderLimits {
    /// Largest SimpleBlock or BlockGroup (one frame).
    pub max_block: u64,
    /// Largest header-like element read whole (EBML header, Info, Tracks).
    pub max_header: u64,
}

impl Default for ReaderLimits {
    fn default() -> Self {
        ReaderLimits {
            max_block: 64 << 20,
            max_header: 1 << 20,
        }
    }
}

/// A track declared in the Tracks element.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrackInfo {
    pub number: u64,
    pub uid: u64,
    pub track_type: u64,
    pub codec_id: String,
    pub codec_private: Option<Bytes>,
    pub default_duration_ns: Option<u64>,
    pub width: Option<u64>,
    pub height: Option<u64>,
}

/// One frame (SimpleBlock, or the Block of a BlockGroup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub track: u64,
    /// Signed offset from the Cluster timecode, in TimecodeScale units.
    pub timecode: i16,
    pub keyframe: bool,
    /// SimpleBlock flags with the keyframe bit as written (lacing bits kept).
    pub flags: u8,
    /// The frame data after the four-byte block header (laced frames kept laced).
    pub payload: Bytes,
}

/// What the reader found, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    EbmlHeader {
        doc_type: String,
    },
    SegmentStart {
        offset: u64,
        size: Option<u64>,
    },
    Info {
        timecode_scale: u64,
    },
    /// Parsed tracks plus the whole Tracks element as received.
    Tracks {
        tracks: Vec<TrackInfo>,
        raw: Bytes,
    },
    ClusterStart {
        offset: u64,
    },
    ClusterTimecode(u64),
    Block(Block),
    ClusterEnd {
        offset: u64,
    },
    SegmentEnd {
        offset: u64,
    },
}

/// Damage in the input. After an error the reader resynchronises on the next
/// Cluster ID, so a caller may keep polling to salvage later clusters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReaderError {
    #[error("invalid variable-size integer at offset {offset}")]
    InvalidVint { offset: u64 },
    #[error("unexpected element {id:#x} at offset {offset}: {reason}")]
    UnexpectedElement {
        id: u32,
        offset: u64,
        reason: &'static str,
    },
    #[error("element {id:#x} at offset {offset} is {size} bytes, over the limit of {limit}")]
    ElementTooLarge {
        id: u32,
        offset: u64,
        size: u64,
        limit: u64,
    },
    #[error("malformed {what} at offset {offset}")]
    Malformed { what: &'static str, offset: u64 },
    #[error("input ends inside an element at offset {offset}")]
    Truncated { offset: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Elements,
    Skip(u64),
    /// Scanning for the next Cluster ID. `true`: the byte at the read
    /// position starts the damaged element and must not match again.
    Resync(bool),
}

/// The push reader. See the module documentation.
#[derive(Debug)]
pub struct Reader {
    buf: BytesMut,
    /// Absolute stream offset of `buf[0]`.
    base: u64,
    mode: Mode,
    limits: ReaderLimits,
    in_segment: bool,
    segment_end: Option<u64>,
    in_cluster: bool,
    cluster_end: Option<u64>,
    finished: bool,
}

impl Default for Reader {
    fn default() -> Self {
        Self::new(ReaderLimits::default())
    }
}

struct Header {
    id: u32,
    size: Option<u64>,
    len: usize,
}

impl Reader {
    pub fn new(limits: ReaderLimits) -> Self {
        Reader {
            buf: BytesMut::new(),
            base: 0,
            mode: Mode::Elements,
            limits,
            in_segment: false,
            segment_end: None,
            in_cluster: false,
            cluster_end: None,
            finished: false,
        }
    }

    /// Appends input. Call [`Reader::poll_event`] until it returns `Ok(None)`.
    pub fn push(&mut self, data: &[u8]) {
        if let Mode::Skip(n) = self.mode {
            // Skip straight from the input without copying it.
            let take = (n.min(data.len() as u64)) as usize;
            self.base += take as u64;
            self.mode = if n == take as u64 {
                Mode::Elements
            } else {
                Mode::Skip(n - take as u64)
            };
            self.buf.extend_from_slice(&data[take..]);
            return;
        }
        self.buf.extend_from_slice(data);
    }

    /// Declares the end of input: open unknown-size elements are closed, and
    /// a partial element becomes [`ReaderError::Truncated`].
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Stream offset of the next unread byte.
    pub fn position(&self) -> u64 {
        self.base
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        self.base += n as u64;
    }

    fn fail(&mut self, err: ReaderError) -> Result<Option<Event>, ReaderError> {
        self.mode = Mode::Resync(true);
        self.in_cluster = false;
        self.cluster_end = None;
        Err(err)
    }

    fn peek_header(&self) -> Result<Option<Header>, ReaderError> {
        let offset = self.base;
        let bad = |_: InvalidVint| ReaderError::InvalidVint { offset };
        let Some((id, id_len)) = vint::read_id(&self.buf).map_err(bad)? else {
            return Ok(None);
        };
        let Some((size, size_len)) = vint::read_size(&self.buf[id_len..]).map_err(bad)? else {
            return Ok(None);
        };
        Ok(Some(Header {
            id,
            size,
            len: id_len + size_len,
        }))
    }

    /// Returns the next event, `Ok(None)` when more input is needed (or the
    /// input is exhausted after [`Reader::finish`]), or an error for damage.
    pub fn poll_event(&mut self) -> Result<Option<Event>, ReaderError> {
        loop {
            match self.mode {
                Mode::Skip(n) => {
                    let take = (n.min(self.buf.len() as u64)) as usize;
                    self.consume(take);
                    if n > take as u64 {
                        self.mode = Mode::Skip(n - take as u64);
                        if self.finished {
                            self.mode = Mode::Elements;
                            return self.fail(ReaderError::Truncated { offset: self.base });
                        }
                        return Ok(None);
                    }
                    self.mode = Mode::Elements;
                }
                Mode::Resync(skip_first) => {
                    let cluster = ids::CLUSTER.to_be_bytes();
                    let from = usize::from(skip_first).min(self.buf.len());
                    match self.buf[from..].windows(4).position(|w| w == cluster) {
                        Some(pos) => {
                            self.consume(from + pos);
                            self.mode = Mode::Elements;
                            self.in_segment = true;
                            self.segment_end = None;
                        }
                        None => {
                            let keep = self.buf.len().min(3);
                            let drop = (self.buf.len() - keep).max(from);
                            self.consume(drop);
                            if drop > 0 {
                                self.mode = Mode::Resync(false);
                            }
                            if self.finished {
                                let n = self.buf.len();
                                self.consume(n);
                            }
                            return Ok(None);
                        }
                    }
                }
                Mode::Elements => {}
            }

            // Known-size containers end at a byte offset.
            if self.in_cluster && self.cluster_end == Some(self.base) {
                self.in_cluster = false;
                self.cluster_end = None;
                return Ok(Some(Event::ClusterEnd { offset: self.base }));
            }
            if self.in_segment && !self.in_cluster && self.segment_end == Some(self.base) {
                self.in_segment = false;
                self.segment_end = None;
                return Ok(Some(Event::SegmentEnd { offset: self.base }));
            }

            let header = match self.peek_header() {
                Ok(Some(h)) => h,
                Ok(None) => return self.at_end_of_input(),
                Err(e) => return self.fail(e),
            };
            let offset = self.base;
            let total = header.size.map(|s| s + header.len as u64);

            // An element may not cross the end of a known-size parent.
            let parent_end = if self.in_cluster {
                self.cluster_end.or(self.segment_end)
            } else if self.in_segment {
                self.segment_end
            } else {
                None
            };
            if let (Some(end), Some(total)) = (parent_end, total)
                && offset + total > end
            {
                return self.fail(ReaderError::Malformed {
                    what: "element crossing its parent's end",
                    offset,
                });
            }

            if self.in_cluster {
                match self.cluster_child(header, offset)? {
                    Step::Event(ev) => return Ok(Some(ev)),
                    Step::More => return self.at_end_of_input(),
                    Step::Continue => continue,
                }
            } else if self.in_segment {
                match self.segment_child(header, offset)? {
                    Step::Event(ev) => return Ok(Some(ev)),
                    Step::More => return self.at_end_of_input(),
                    Step::Continue => continue,
                }
            } else {
                match self.top_level(header, offset)? {
                    Step::Event(ev) => return Ok(Some(ev)),
                    Step::More => return self.at_end_of_input(),
                    Step::Continue => continue,
                }
            }
        }
    }

    /// Called when an element is incomplete: wait for more, or close out.
    fn at_end_of_input(&mut self) -> Result<Option<Event>, ReaderError> {
        if !self.finished {
            return Ok(None);
        }
        if !self.buf.is_empty() {
            let offset = self.base;
            let n = self.buf.len();
            self.consume(n);
            self.in_cluster = false;
            self.in_segment = false;
            return Err(ReaderError::Truncated { offset });
        }
        if self.in_cluster {
            self.in_cluster = false;
            if self.cluster_end.take().is_some() {
                return Err(ReaderError::Truncated { offset: self.base });
            }
            return Ok(Some(Event::ClusterEnd { offset: self.base }));
        }
        if self.in_segment {
            self.in_segment = false;
            if self.segment_end.take().is_some() {
                return Err(ReaderError::Truncated { offset: self.base });
            }
            return Ok(Some(Event::SegmentEnd { offset: self.base }));
        }
        Ok(None)
    }

    /// Takes a whole element's data out of the buffer, if it is all here.
    fn take_whole(
        &mut self,
        header: &Header,
        limit: u64,
        offset: u64,
    ) -> Result<Option<Bytes>, ReaderError> {
        let Some(size) = header.size else {
            return Err(ReaderError::UnexpectedElement {
                id: header.id,
                offset,
                reason: "unknown size is only allowed for Segment and Cluster",
            });
        };
        if size > limit {
            return Err(ReaderError::ElementTooLarge {
                id: header.id,
                offset,
                size,
                limit,
            });
        }
        let need = header.len + size as usize;
        if self.buf.len() < need {
            return Ok(None);
        }
        self.consume(header.len);
        let data = self.buf.split_to(size as usize).freeze();
        self.base += size;
        Ok(Some(data))
    }

    fn skip(&mut self, header: &Header, offset: u64) -> Result<Step, ReaderError> {
        let Some(size) = header.size else {
            self.fail(ReaderError::UnexpectedElement {
                id: header.id,
                offset,
                reason: "unknown size is only allowed for Segment and Cluster",
            })?;
            return Ok(Step::Continue);
        };
        self.consume(header.len);
        self.mode = Mode::Skip(size);
        Ok(Step::Continue)
    }

    fn whole_or_fail(
        &mut self,
        header: &Header,
        limit: u64,
        offset: u64,
    ) -> Result<Option<Bytes>, ReaderError> {
        match self.take_whole(header, limit, offset) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.fail(e.clone())?;
                Err(e)
            }
        }
    }

    fn top_level(&mut self, header: Header, offset: u64) -> Result<Step, ReaderError> {
        match header.id {
            ids::EBML => {
                let Some(data) = self.whole_or_fail(&header, self.limits.max_header, offset)?
                else {
                    return Ok(Step::More);
                };
                let mut doc_type = String::new();
                for child in children(&data, offset) {
                    let (id, body) = child.map_err(|e| self.poison(e))?;
                    if id == ids::DOC_TYPE {
                        doc_type = String::from_utf8_lossy(body)
                            .trim_end_matches('\0')
                            .to_string();
                    }
                }
                Ok(Step::Event(Event::EbmlHeader { doc_type }))
            }
            ids::SEGMENT => {
                self.consume(header.len);
                self.in_segment = true;
                self.segment_end = header.size.map(|s| self.base + s);
                Ok(Step::Event(Event::SegmentStart {
                    offset,
                    size: header.size,
                }))
            }
            ids::VOID => self.skip(&header, offset),
            id => {
                self.fail(ReaderError::UnexpectedElement {
                    id,
                    offset,
                    reason: "expected an EBML header or a Segment",
                })?;
                Ok(Step::Continue)
            }
        }
    }

    fn segment_child(&mut self, header: Header, offset: u64) -> Result<Step, ReaderError> {
        match header.id {
            ids::EBML | ids::SEGMENT if self.segment_end.is_none() => {
                // A new EBML document ends an unknown-size Segment.
                self.in_segment = false;
                Ok(Step::Event(Event::SegmentEnd { offset }))
            }
            ids::CLUSTER => {
                self.consume(header.len);
                self.in_cluster = true;
                self.cluster_end = header.size.map(|s| self.base + s);
                Ok(Step::Event(Event::ClusterStart { offset }))
            }
            ids::INFO => {
                let Some(data) = self.whole_or_fail(&header, self.limits.max_header, offset)?
                else {
                    return Ok(Step::More);
                };
                let mut timecode_scale = 1_000_000;
                for child in children(&data, offset) {
                    let (id, body) = child.map_err(|e| self.poison(e))?;
                    if id == ids::TIMECODE_SCALE {
                        timecode_scale = read_uint(body, offset).map_err(|e| self.poison(e))?;
                    }
                }
                if timecode_scale == 0 {
                    return Err(self.poison(ReaderError::Malformed {
                        what: "TimecodeScale of zero",
                        offset,
                    }));
                }
                Ok(Step::Event(Event::Info { timecode_scale }))
            }
            ids::TRACKS => {
                let start = header.len;
                let Some(data) = self.whole_or_fail(&header, self.limits.max_header, offset)?
                else {
                    return Ok(Step::More);
                };
                let tracks = parse_tracks(&data, offset).map_err(|e| self.poison(e))?;
                // Rebuild the element bytes (header + data) for callers that keep it verbatim.
                let mut raw = Vec::with_capacity(start + data.len());
                vint::write_id(&mut raw, ids::TRACKS);
                vint::write_size(&mut raw, data.len() as u64);
                raw.extend_from_slice(&data);
                Ok(Step::Event(Event::Tracks {
                    tracks,
                    raw: Bytes::from(raw),
                }))
            }
            ids::SEEK_HEAD
            | ids::CUES
            | ids::TAGS
            | ids::CHAPTERS
            | ids::ATTACHMENTS
            | ids::VOID
            | ids::CRC32 => self.skip(&header, offset),
            _ if header.size.is_some() => self.skip(&header, offset),
            id => {
                self.fail(ReaderError::UnexpectedElement {
                    id,
                    offset,
                    reason: "unknown Segment child of unknown size",
                })?;
                Ok(Step::Continue)
            }
        }
    }

    fn cluster_child(&mut self, header: Header, offset: u64) -> Result<Step, ReaderError> {
        if ends_cluster(header.id) {
            if self.cluster_end.is_some() {
                self.fail(ReaderError::Malformed {
                    what: "top-level element inside a sized Cluster",
                    offset,
                })?;
                return Ok(Step::Continue);
            }
            self.in_cluster = false;
            return Ok(Step::Event(Event::ClusterEnd { offset }));
        }
        match header.id {
            ids::TIMECODE => {
                let Some(data) = self.whole_or_fail(&header, 8, offset)? else {
                    return Ok(Step::More);
                };
                let tc = read_uint(&data, offset).map_err(|e| self.poison(e))?;
                Ok(Step::Event(Event::ClusterTimecode(tc)))
            }
            ids::SIMPLE_BLOCK => {
                let Some(data) = self.whole_or_fail(&header, self.limits.max_block, offset)? else {
                    return Ok(Step::More);
                };
                let block = parse_block(data, offset, None).map_err(|e| self.poison(e))?;
                Ok(Step::Event(Event::Block(block)))
            }
            ids::BLOCK_GROUP => {
                let Some(data) = self.whole_or_fail(&header, self.limits.max_block, offset)? else {
                    return Ok(Step::More);
                };
                let mut block = None;
                let mut referenced = false;
                for child in children(&data, offset) {
                    let (id, body) = child.map_err(|e| self.poison(e))?;
                    match id {
                        ids::BLOCK => block = Some(data.slice_ref(body)),
                        ids::REFERENCE_BLOCK => referenced = true,
                        _ => {}
                    }
                }
                let Some(block) = block else {
                    return Err(self.poison(ReaderError::Malformed {
                        what: "BlockGroup without a Block",
                        offset,
                    }));
                };
                let block =
                    parse_block(block, offset, Some(!referenced)).map_err(|e| self.poison(e))?;
                Ok(Step::Event(Event::Block(block)))
            }
            _ => self.skip(&header, offset),
        }
    }

    fn poison(&mut self, err: ReaderError) -> ReaderError {
        // The damaged element was consumed already: the next byte may start a Cluster.
        self.mode = Mode::Resync(false);
        self.in_cluster = false;
        self.cluster_end = None;
        err
    }
}

enum Step {
    Event(Event),
    More,
    Continue,
}

fn ends_cluster(id: u32) -> bool {
    ids::is_segment_child(id) || id == ids::EBML || id == ids::SEGMENT
}

/// Iterates the children of a master element held whole in memory.
fn children(data: &[u8], offset: u64) -> impl Iterator<Item = Result<(u32, &[u8]), ReaderError>> {
    let mut pos = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || pos >= data.len() {
            return None;
        }
        let bad = ReaderError::Malformed {
            what: "child element",
            offset: offset + pos as u64,
        };
        let parsed = (|| {
            let (id, il) = vint::read_id(&data[pos..]).ok()??;
            let (size, sl) = vint::read_size(&data[pos + il..]).ok()??;
            let size = size? as usize;
            let start = pos + il + sl;
            let end = start.checked_add(size)?;
            if end > data.len() {
                return None;
            }
            Some((id, start, end))
        })();
        match parsed {
            Some((id, start, end)) => {
                pos = end;
                Some(Ok((id, &data[start..end])))
            }
            None => {
                failed = true;
                Some(Err(bad))
            }
        }
    })
}

fn read_uint(body: &[u8], offset: u64) -> Result<u64, ReaderError> {
    if body.len() > 8 {
        return Err(ReaderError::Malformed {
            what: "unsigned integer wider than 8 bytes",
            offset,
        });
    }
    Ok(body.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64))
}

fn parse_block(data: Bytes, offset: u64, keyframe: Option<bool>) -> Result<Block, ReaderError> {
    let bad = ReaderError::Malformed {
        what: "block header",
        offset,
    };
    let (track, n) = match vint::read_track(&data) {
        Ok(Some(v)) => v,
        _ => return Err(bad),
    };
    if data.len() < n + 3 {
        return Err(bad);
    }
    let timecode = i16::from_be_bytes([data[n], data[n + 1]]);
    let flags = data[n + 2];
    Ok(Block {
        track,
        timecode,
        keyframe: keyframe.unwrap_or(flags & 0x80 != 0),
        flags,
        payload: data.slice(n + 3..),
    })
}

fn parse_tracks(data: &[u8], offset: u64) -> Result<Vec<TrackInfo>, ReaderError> {
    let mut tracks = Vec::new();
    for child in children(data, offset) {
        let (id, body) = child?;
        if id != ids::TRACK_ENTRY {
            continue;
        }
        let mut t = TrackInfo::default();
        for field in children(body, offset) {
            let (fid, fbody) = field?;
            match fid {
                ids::TRACK_NUMBER => t.number = read_uint(fbody, offset)?,
                ids::TRACK_UID => t.uid = read_uint(fbody, offset)?,
                ids::TRACK_TYPE => t.track_type = read_uint(fbody, offset)?,
                ids::CODEC_ID => {
                    t.codec_id = String::from_utf8_lossy(fbody)
                        .trim_end_matches('\0')
                        .to_string()
                }
                ids::CODEC_PRIVATE => t.codec_private = Some(Bytes::copy_from_slice(fbody)),
                ids::DEFAULT_DURATION => t.default_duration_ns = Some(read_uint(fbody, offset)?),
                ids::VIDEO => {
                    for v in children(fbody, offset) {
                        let (vid, vbody) = v?;
                        match vid {
                            ids::PIXEL_WIDTH => t.width = Some(read_uint(vbody, offset)?),
                            ids::PIXEL_HEIGHT => t.height = Some(read_uint(vbody, offset)?),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if t.number == 0 {
            return Err(ReaderError::Malformed {
                what: "TrackEntry without a TrackNumber",
                offset,
            });
        }
        tracks.push(t);
    }
    Ok(tracks)
}
