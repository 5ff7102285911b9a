//! Writing the Matroska pieces Kinema stores and streams: an EBML header, a
//! Segment header, Info, known-size Clusters of SimpleBlocks, and Tags.

use crate::ids;
use crate::vint;

/// The eight-byte "unknown size" VINT GStreamer and Kinema write for live Segments.
pub const UNKNOWN_SIZE: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

/// Appends a complete element.
pub fn element(out: &mut Vec<u8>, id: u32, data: &[u8]) {
    vint::write_id(out, id);
    vint::write_size(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// Appends an unsigned-integer element in its shortest big-endian form.
pub fn uint_element(out: &mut Vec<u8>, id: u32, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = ((value.leading_zeros() / 8) as usize).min(7);
    element(out, id, &bytes[skip..]);
}

/// The EBML header of a Matroska document.
pub fn ebml_header() -> Vec<u8> {
    let mut body = Vec::new();
    uint_element(&mut body, ids::EBML_VERSION, 1);
    uint_element(&mut body, ids::EBML_READ_VERSION, 1);
    uint_element(&mut body, ids::EBML_MAX_ID_LENGTH, 4);
    uint_element(&mut body, ids::EBML_MAX_SIZE_LENGTH, 8);
    element(&mut body, ids::DOC_TYPE, b"matroska");
    uint_element(&mut body, ids::DOC_TYPE_VERSION, 4);
    uint_element(&mut body, ids::DOC_TYPE_READ_VERSION, 2);
    let mut out = Vec::new();
    element(&mut out, ids::EBML, &body);
    out
}

/// A Segment header with an eight-byte size field: `None` writes "unknown".
/// The fixed width lets a stored fragment's header be turned into a live
/// stream's header by overwriting those eight bytes.
pub fn segment_header(size: Option<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    vint::write_id(&mut out, ids::SEGMENT);
    match size {
        Some(s) => vint::write_size_len(&mut out, s, 8),
        None => out.extend_from_slice(&UNKNOWN_SIZE),
    }
    out
}

/// An Info element with the given TimecodeScale (nanoseconds per tick).
pub fn info(timecode_scale: u64) -> Vec<u8> {
    let mut body = Vec::new();
    uint_element(&mut body, ids::TIMECODE_SCALE, timecode_scale);
    element(&mut body, ids::MUXING_APP, b"kinema");
    element(&mut body, ids::WRITING_APP, b"kinema");
    let mut out = Vec::new();
    element(&mut out, ids::INFO, &body);
    out
}

/// A SimpleBlock element.
pub fn simple_block(out: &mut Vec<u8>, track: u64, timecode: i16, flags: u8, payload: &[u8]) {
    let mut head = Vec::with_capacity(8);
    vint::write_size(&mut head, track);
    head.extend_from_slice(&timecode.to_be_bytes());
    head.push(flags);
    vint::write_id(out, ids::SIMPLE_BLOCK);
    vint::write_size(out, (head.len() + payload.len()) as u64);
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
}

/// A known-size Cluster holding a Timecode and the given SimpleBlocks
/// (`(track, relative timecode, flags, payload)`).
pub fn cluster<'a>(
    timecode: u64,
    blocks: impl IntoIterator<Item = (u64, i16, u8, &'a [u8])>,
) -> Vec<u8> {
    let mut body = Vec::new();
    uint_element(&mut body, ids::TIMECODE, timecode);
    for (track, tc, flags, payload) in blocks {
        simple_block(&mut body, track, tc, flags, payload);
    }
    let mut out = Vec::with_capacity(body.len() + 12);
    vint::write_id(&mut out, ids::CLUSTER);
    vint::write_size(&mut out, body.len() as u64);
    out.extend_from_slice(&body);
    out
}

/// A Tags element with one Tag (no targets: it applies to the Segment)
/// holding one SimpleTag per `(name, value)`.
pub fn tags(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut tag = Vec::new();
    element(&mut tag, ids::TARGETS, &[]);
    for (name, value) in pairs {
        let mut simple = Vec::new();
        element(&mut simple, ids::TAG_NAME, name.as_bytes());
        element(&mut simple, ids::TAG_STRING, value.as_bytes());
        element(&mut tag, ids::SIMPLE_TAG, &simple);
    }
    let mut tags = Vec::new();
    element(&mut tags, ids::TAG, &tag);
    let mut out = Vec::new();
    element(&mut out, ids::TAGS, &tags);
    out
}
