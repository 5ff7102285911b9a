//! GetMedia and GetMediaForFragmentList output: stored fragments turned into
//! one continuous Matroska stream.
//!
//! The stream opens with an EBML header and an unknown-size Segment carrying
//! Info and Tracks; each fragment then contributes a Tags element (fragment
//! number and timestamps), its Cluster, and for GetMedia a second Tags
//! element (millis behind now, continuation token). When a fragment's track
//! header differs from the open Segment's, a new EBML header and Segment
//! start, as Matroska allows for concatenated documents.

use bytes::Bytes;

use crate::catalog::FragmentMeta;
use crate::{fragment_number_string, millis_to_seconds_string};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("stored fragment {number} is not in the expected layout")]
    BadObject { number: u64 },
}

/// Which API's tag names to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagStyle {
    GetMedia,
    FragmentList,
}

/// Splits a stored object into its track header (Info + Tracks) and Cluster.
fn split(object: &Bytes, meta: &FragmentMeta) -> Option<(Bytes, Bytes)> {
    let (id, il) = kinema_mkv::vint::read_id(object).ok()??;
    if id != kinema_mkv::ids::EBML {
        return None;
    }
    let (size, sl) = kinema_mkv::vint::read_size(&object[il..]).ok()??;
    let seg = il + sl + size? as usize;
    let (seg_id, sil) = kinema_mkv::vint::read_id(object.get(seg..)?).ok()??;
    let (_, ssl) = kinema_mkv::vint::read_size(object.get(seg + sil..)?).ok()??;
    let body = seg + sil + ssl;
    let cluster = meta.cluster_offset as usize;
    if seg_id != kinema_mkv::ids::SEGMENT || body > cluster || cluster > object.len() {
        return None;
    }
    Some((object.slice(body..cluster), object.slice(cluster..)))
}

/// Turns fragments into stream bytes, remembering the open Segment's header.
#[derive(Debug, Default)]
pub struct ChunkWriter {
    open_header: Option<Bytes>,
}

impl ChunkWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes for one fragment. `now_ms` is the wall clock (for
    /// MILLIS_BEHIND_NOW).
    pub fn fragment(
        &mut self,
        object: &Bytes,
        meta: &FragmentMeta,
        style: TagStyle,
        now_ms: i64,
    ) -> Result<Vec<Bytes>, ChunkError> {
        let (header, cluster) = split(object, meta).ok_or(ChunkError::BadObject {
            number: meta.number,
        })?;
        let mut out = Vec::with_capacity(5);
        if self.open_header.as_ref() != Some(&header) {
            let mut start = kinema_mkv::ebml_header();
            start.extend(kinema_mkv::segment_header(None));
            out.push(Bytes::from(start));
            out.push(header.clone());
            self.open_header = Some(header);
        }
        let number = fragment_number_string(meta.number);
        let server = millis_to_seconds_string(meta.server_ms);
        let producer = millis_to_seconds_string(meta.producer_ms);
        let before = match style {
            TagStyle::GetMedia => kinema_mkv::tags(&[
                ("AWS_KINESISVIDEO_FRAGMENT_NUMBER", &number),
                ("AWS_KINESISVIDEO_SERVER_TIMESTAMP", &server),
                ("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP", &producer),
            ]),
            TagStyle::FragmentList => kinema_mkv::tags(&[
                ("AWS_KINESISVIDEO_FRAGMENT_NUMBER", &number),
                ("AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP", &server),
                ("AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP", &producer),
            ]),
        };
        out.push(Bytes::from(before));
        out.push(cluster);
        if style == TagStyle::GetMedia {
            let behind = (now_ms - meta.server_ms).max(0).to_string();
            out.push(Bytes::from(kinema_mkv::tags(&[
                ("AWS_KINESISVIDEO_MILLIS_BEHIND_NOW", &behind),
                ("AWS_KINESISVIDEO_CONTINUATION_TOKEN", &number),
            ])));
        }
        Ok(out)
    }

    /// Error tags that end a GetMedia stream (`AWS_KINESISVIDEO_ERROR_*`).
    pub fn error(&mut self, code: &str, id: u32) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.open_header.is_none() {
            let mut start = kinema_mkv::ebml_header();
            start.extend(kinema_mkv::segment_header(None));
            out.push(Bytes::from(start));
            self.open_header = Some(Bytes::new());
        }
        out.push(Bytes::from(kinema_mkv::tags(&[
            ("AWS_KINESISVIDEO_ERROR_CODE", code),
            ("AWS_KINESISVIDEO_ERROR_ID", &id.to_string()),
        ])));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{IngestEvent, IngestLimits, IngestSession, TimecodeType};
    use kinema_mkv::{Event, element, ids, uint_element};

    fn stored(codec: &[u8], tc: u64) -> (Bytes, FragmentMeta) {
        let mut entry = Vec::new();
        uint_element(&mut entry, ids::TRACK_NUMBER, 1);
        element(&mut entry, ids::CODEC_ID, codec);
        let mut tracks = Vec::new();
        element(&mut tracks, ids::TRACK_ENTRY, &entry);
        let mut doc = kinema_mkv::ebml_header();
        doc.extend(kinema_mkv::segment_header(None));
        element(&mut doc, ids::TRACKS, &tracks);
        doc.extend(kinema_mkv::cluster(tc, [(1, 0, 0x80, &b"frame"[..])]));
        let mut s = IngestSession::new(TimecodeType::Absolute, 0, IngestLimits::default());
        s.push(&doc, 0);
        s.finish(0);
        let f = std::iter::from_fn(|| s.poll())
            .find_map(|e| match e {
                IngestEvent::Fragment(f) => Some(f),
                _ => None,
            })
            .unwrap();
        let meta = FragmentMeta {
            number: tc,
            producer_ms: f.producer_ms,
            server_ms: 0,
            duration_ms: 0,
            size: f.object.len() as u32,
            cluster_offset: f.cluster_offset,
            frames: 1,
        };
        (f.object, meta)
    }

    #[test]
    fn stream_reads_back_as_one_document_with_tags_between_clusters() {
        let mut w = ChunkWriter::new();
        let mut stream = Vec::new();
        for (codec, tc) in [
            (&b"V_MPEG4/ISO/AVC"[..], 1000),
            (b"V_MPEG4/ISO/AVC", 2000),
            (b"V_MPEGH/ISO/HEVC", 3000),
        ] {
            let (obj, meta) = stored(codec, tc);
            for b in w.fragment(&obj, &meta, TagStyle::GetMedia, 5000).unwrap() {
                stream.extend_from_slice(&b);
            }
        }
        let mut r = kinema_mkv::Reader::default();
        r.push(&stream);
        r.finish();
        let mut seen = Vec::new();
        while let Some(ev) = r.poll_event().unwrap() {
            match ev {
                Event::EbmlHeader { .. } => seen.push("ebml".to_string()),
                Event::Tracks { tracks, .. } => seen.push(tracks[0].codec_id.clone()),
                Event::ClusterTimecode(t) => seen.push(t.to_string()),
                _ => {}
            }
        }
        assert_eq!(
            seen,
            [
                "ebml",
                "V_MPEG4/ISO/AVC",
                "1000",
                "2000",
                "ebml",
                "V_MPEGH/ISO/HEVC",
                "3000"
            ]
        );
        let text = String::from_utf8_lossy(&stream);
        assert!(text.contains("AWS_KINESISVIDEO_CONTINUATION_TOKEN"));
        assert!(text.contains("00000000000000002000"));
    }
}
