//! Writer -> reader round trips, and the chunking-independence property.

use kinema_mkv::{Event, Reader, cluster, ebml_header, element, ids, info, segment_header};
use proptest::prelude::*;

fn tracks_element() -> Vec<u8> {
    let mut entry = Vec::new();
    kinema_mkv::uint_element(&mut entry, ids::TRACK_NUMBER, 1);
    kinema_mkv::uint_element(&mut entry, ids::TRACK_UID, 1);
    kinema_mkv::uint_element(&mut entry, ids::TRACK_TYPE, 1);
    element(&mut entry, ids::CODEC_ID, b"V_MPEG4/ISO/AVC");
    element(&mut entry, ids::CODEC_PRIVATE, &[1, 0x42, 0xc0, 0x1f]);
    let mut tracks = Vec::new();
    element(&mut tracks, ids::TRACK_ENTRY, &entry);
    let mut out = Vec::new();
    element(&mut out, ids::TRACKS, &tracks);
    out
}

/// A live-style document: unknown-size Segment and unknown-size Clusters, as
/// GStreamer's `matroskamux streamable=true` writes them.
fn live_document(clusters: &[(u64, Vec<Vec<u8>>)]) -> Vec<u8> {
    let mut doc = ebml_header();
    doc.extend(segment_header(None));
    doc.extend(info(1_000_000));
    doc.extend(tracks_element());
    for (tc, frames) in clusters {
        let sized = cluster(
            *tc,
            frames.iter().enumerate().map(|(i, f)| {
                (
                    1u64,
                    (i * 33) as i16,
                    if i == 0 { 0x80 } else { 0 },
                    f.as_slice(),
                )
            }),
        );
        // Rewrite the cluster's size as unknown: ID (4 bytes), then the size VINT.
        let (_, size_len) = kinema_mkv::vint::read_size(&sized[4..]).unwrap().unwrap();
        doc.extend_from_slice(&sized[..4]);
        doc.extend_from_slice(&kinema_mkv::UNKNOWN_SIZE);
        doc.extend_from_slice(&sized[4 + size_len..]);
    }
    doc
}

fn read_all(
    chunks: impl IntoIterator<Item = Vec<u8>>,
) -> Vec<Result<Event, kinema_mkv::ReaderError>> {
    let mut reader = Reader::default();
    let mut out = Vec::new();
    let drain = |reader: &mut Reader, out: &mut Vec<_>| {
        for _ in 0..10_000 {
            match reader.poll_event() {
                Ok(Some(ev)) => out.push(Ok(ev)),
                Ok(None) => return,
                Err(e) => out.push(Err(e)),
            }
        }
        panic!("reader did not settle");
    };
    for chunk in chunks {
        reader.push(&chunk);
        drain(&mut reader, &mut out);
    }
    reader.finish();
    drain(&mut reader, &mut out);
    out
}

#[test]
fn live_document_yields_clusters_and_blocks() {
    let doc = live_document(&[
        (0, vec![vec![1, 2, 3], vec![4]]),
        (1000, vec![vec![5; 300]]),
    ]);
    let events = read_all([doc]);
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e.as_ref().unwrap() {
            Event::EbmlHeader { doc_type } => format!("ebml {doc_type}"),
            Event::SegmentStart { size, .. } => format!("segment {size:?}"),
            Event::Info { timecode_scale } => format!("info {timecode_scale}"),
            Event::Tracks { tracks, .. } => {
                format!("tracks {} {}", tracks.len(), tracks[0].codec_id)
            }
            Event::ClusterStart { .. } => "cluster".into(),
            Event::ClusterTimecode(tc) => format!("tc {tc}"),
            Event::Block(b) => format!(
                "block {} {} {} {}",
                b.track,
                b.timecode,
                b.keyframe,
                b.payload.len()
            ),
            Event::ClusterEnd { .. } => "end".into(),
            Event::SegmentEnd { .. } => "segment end".into(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "ebml matroska",
            "segment None",
            "info 1000000",
            "tracks 1 V_MPEG4/ISO/AVC",
            "cluster",
            "tc 0",
            "block 1 0 true 3",
            "block 1 33 false 1",
            "end",
            "cluster",
            "tc 1000",
            "block 1 0 true 300",
            "end",
            "segment end",
        ]
    );
}

#[test]
fn truncated_block_is_reported_not_returned() {
    let doc = live_document(&[(0, vec![vec![1, 2, 3]]), (1000, vec![vec![9; 100]])]);
    let cut = doc.len() - 10;
    let events = read_all([doc[..cut].to_vec()]);
    let blocks = events
        .iter()
        .filter(|e| matches!(e, Ok(Event::Block(_))))
        .count();
    assert_eq!(blocks, 1, "only the complete first block is returned");
    assert!(matches!(
        events.last(),
        Some(Err(kinema_mkv::ReaderError::Truncated { .. }))
    ));
}

#[test]
fn garbage_is_an_error_and_the_reader_resyncs_on_the_next_cluster() {
    let good = live_document(&[(0, vec![vec![1]]), (1000, vec![vec![2]])]);
    // Corrupt the first cluster's timecode element header with an invalid VINT.
    let first_cluster = good
        .windows(4)
        .position(|w| w == ids::CLUSTER.to_be_bytes())
        .unwrap();
    let mut bad = good.clone();
    bad[first_cluster + 12] = 0x00;
    let events = read_all([bad]);
    assert!(events.iter().any(|e| e.is_err()));
    let timecodes: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Ok(Event::ClusterTimecode(t)) => Some(*t),
            _ => None,
        })
        .collect();
    assert_eq!(timecodes, [1000], "the second cluster is recovered");
}

#[test]
fn pure_garbage_never_panics() {
    let events = read_all([b"this is not matroska at all".to_vec()]);
    assert!(matches!(events.first(), Some(Err(_))));
}

proptest! {
    #[test]
    fn any_chunking_yields_identical_events(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..12),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let clusters: Vec<(u64, Vec<Vec<u8>>)> = frames
            .chunks(3)
            .enumerate()
            .map(|(i, fs)| (i as u64 * 1000, fs.to_vec()))
            .collect();
        let doc = live_document(&clusters);
        let whole = read_all([doc.clone()]);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(doc.len() + 1)).collect();
        points.sort();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(doc[last..p].to_vec());
            last = p;
        }
        chunks.push(doc[last..].to_vec());
        let chunked = read_all(chunks);
        prop_assert_eq!(&whole, &chunked);
        prop_assert!(whole.iter().all(|e| e.is_ok()));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2000), split in any::<prop::sample::Index>()) {
        let at = split.index(data.len() + 1);
        let _ = read_all([data[..at].to_vec(), data[at..].to_vec()]);
    }
}

/// The fuzz corpus doubles as a regression suite on the stable toolchain,
/// and its GStreamer-written file checks the reader against a real muxer.
#[test]
fn fuzz_corpus_replays_and_gstreamer_output_parses() {
    // The checkout being tested: read at run time, because a test binary
    // built from another checkout sharing the target directory keeps that
    // checkout's compile-time path.
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let dir = std::path::Path::new(&manifest).join("../../fuzz/corpus/mkv_reader");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        let _ = read_all([data]);
        files += 1;
    }
    assert!(files >= 4);
    let gst = read_all([std::fs::read(dir.join("gst_live_4frames.mkv")).unwrap()]);
    assert!(gst.iter().all(|e| e.is_ok()), "{gst:?}");
    let blocks = gst
        .iter()
        .filter(|e| matches!(e, Ok(Event::Block(_))))
        .count();
    assert_eq!(blocks, 4);
    let keyframes = gst
        .iter()
        .filter(|e| matches!(e, Ok(Event::Block(b)) if b.keyframe))
        .count();
    // ffprobe -show_entries packet=flags reports K, -, K, K for this file.
    assert_eq!(keyframes, 3);
}
