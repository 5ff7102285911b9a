//! Fragmented MP4 (ISO/IEC 14496-12) for one video track: the init segment
//! (`ftyp` + `moov` with an empty sample table and `mvex`), one media
//! segment (`moof` + `mdat`) per fragment, and whole clips (init segment
//! followed by the media segments, with the total duration in `mehd`).

use crate::{Codec, Fragment, TIMESCALE, Timing, Track};

const TRACK_ID: u32 = 1;

/// Writes a box: size, type, then whatever `body` appends.
fn bx(out: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend([0, 0, 0, 0]);
    out.extend(kind);
    body(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// Writes a full box (with version and flags).
fn full(
    out: &mut Vec<u8>,
    kind: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    bx(out, kind, |o| {
        o.push(version);
        o.extend(&flags.to_be_bytes()[1..]);
        body(o);
    });
}

fn u16be(o: &mut Vec<u8>, v: u16) {
    o.extend(v.to_be_bytes());
}
fn u32be(o: &mut Vec<u8>, v: u32) {
    o.extend(v.to_be_bytes());
}
fn u64be(o: &mut Vec<u8>, v: u64) {
    o.extend(v.to_be_bytes());
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// The init segment. `duration` (in [`TIMESCALE`] units) is zero for live
/// sessions; clips give their total length.
pub fn init_segment(track: &Track, duration: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(800);
    bx(&mut out, b"ftyp", |o| {
        o.extend(b"iso6");
        u32be(o, 0);
        for brand in [b"iso6", b"cmfc", b"isom", b"mp41", b"dash"] {
            o.extend(brand);
        }
    });
    let movie_ms = duration * 1000 / TIMESCALE;
    bx(&mut out, b"moov", |o| {
        full(o, b"mvhd", 1, 0, |o| {
            u64be(o, 0); // creation time
            u64be(o, 0); // modification time
            u32be(o, 1000);
            u64be(o, movie_ms);
            u32be(o, 0x0001_0000); // rate 1.0
            u16be(o, 0x0100); // volume 1.0
            o.extend([0; 10]);
            MATRIX.iter().for_each(|m| u32be(o, *m));
            o.extend([0; 24]);
            u32be(o, TRACK_ID + 1);
        });
        bx(o, b"trak", |o| {
            full(o, b"tkhd", 1, 0x3, |o| {
                u64be(o, 0);
                u64be(o, 0);
                u32be(o, TRACK_ID);
                u32be(o, 0);
                u64be(o, movie_ms);
                o.extend([0; 8]);
                u16be(o, 0); // layer
                u16be(o, 0); // alternate group
                u16be(o, 0); // volume: video
                u16be(o, 0);
                MATRIX.iter().for_each(|m| u32be(o, *m));
                u32be(o, track.width << 16);
                u32be(o, track.height << 16);
            });
            bx(o, b"mdia", |o| {
                full(o, b"mdhd", 1, 0, |o| {
                    u64be(o, 0);
                    u64be(o, 0);
                    u32be(o, TIMESCALE as u32);
                    u64be(o, duration);
                    u16be(o, 0x55c4); // language "und"
                    u16be(o, 0);
                });
                full(o, b"hdlr", 0, 0, |o| {
                    u32be(o, 0);
                    o.extend(b"vide");
                    o.extend([0; 12]);
                    o.extend(b"Kinema video\0");
                });
                bx(o, b"minf", |o| {
                    full(o, b"vmhd", 0, 1, |o| o.extend([0; 8]));
                    bx(o, b"dinf", |o| {
                        full(o, b"dref", 0, 0, |o| {
                            u32be(o, 1);
                            full(o, b"url ", 0, 1, |_| {});
                        });
                    });
                    bx(o, b"stbl", |o| {
                        full(o, b"stsd", 0, 0, |o| {
                            u32be(o, 1);
                            sample_entry(o, track);
                        });
                        full(o, b"stts", 0, 0, |o| u32be(o, 0));
                        full(o, b"stsc", 0, 0, |o| u32be(o, 0));
                        full(o, b"stsz", 0, 0, |o| {
                            u32be(o, 0);
                            u32be(o, 0);
                        });
                        full(o, b"stco", 0, 0, |o| u32be(o, 0));
                    });
                });
            });
        });
        bx(o, b"mvex", |o| {
            if duration > 0 {
                full(o, b"mehd", 1, 0, |o| u64be(o, movie_ms));
            }
            full(o, b"trex", 0, 0, |o| {
                u32be(o, TRACK_ID);
                u32be(o, 1); // sample description index
                u32be(o, 0);
                u32be(o, 0);
                u32be(o, 0);
            });
        });
    });
    out
}

fn sample_entry(o: &mut Vec<u8>, track: &Track) {
    let (entry, config) = match track.codec {
        Codec::H264 => (b"avc1", b"avcC"),
        Codec::H265 => (b"hvc1", b"hvcC"),
    };
    bx(o, entry, |o| {
        o.extend([0; 6]);
        u16be(o, 1); // data reference index
        o.extend([0; 16]);
        u16be(o, track.width as u16);
        u16be(o, track.height as u16);
        u32be(o, 0x0048_0000); // 72 dpi
        u32be(o, 0x0048_0000);
        u32be(o, 0);
        u16be(o, 1); // frame count
        o.extend([0; 32]); // compressor name
        u16be(o, 0x18); // depth
        u16be(o, 0xffff);
        bx(o, config, |o| o.extend(&track.config[..]));
    });
}

/// Sample flags: a sync sample depends on nothing; others depend on others
/// and are not sync samples.
fn sample_flags(keyframe: bool) -> u32 {
    if keyframe { 0x0200_0000 } else { 0x0101_0000 }
}

/// One media segment (`moof` + `mdat`) holding a whole fragment.
/// `sequence` is the `mfhd` sequence number (1-based, increasing).
pub fn media_segment(sequence: u32, frag: &Fragment, times: &[Timing]) -> Vec<u8> {
    let payload: usize = frag.samples.iter().map(|s| s.data.len()).sum();
    let mut out = Vec::with_capacity(payload + 64 + 16 * times.len());
    let mut data_offset_at = 0;
    bx(&mut out, b"moof", |o| {
        full(o, b"mfhd", 0, 0, |o| u32be(o, sequence));
        bx(o, b"traf", |o| {
            // default-base-is-moof: data offsets count from the moof start.
            full(o, b"tfhd", 0, 0x02_0000, |o| u32be(o, TRACK_ID));
            full(o, b"tfdt", 1, 0, |o| {
                u64be(o, times.first().map_or(0, |t| t.dts.max(0) as u64))
            });
            // data offset, duration, size, flags, composition offset.
            full(o, b"trun", 1, 0x0F01, |o| {
                u32be(o, frag.samples.len() as u32);
                data_offset_at = o.len();
                u32be(o, 0);
                for (s, t) in frag.samples.iter().zip(times) {
                    u32be(o, t.duration);
                    u32be(o, s.data.len() as u32);
                    u32be(o, sample_flags(s.keyframe));
                    u32be(o, (t.pts - t.dts) as i32 as u32);
                }
            });
        });
    });
    let offset = (out.len() + 8) as u32;
    out[data_offset_at..data_offset_at + 4].copy_from_slice(&offset.to_be_bytes());
    out.extend(((payload + 8) as u32).to_be_bytes());
    out.extend(b"mdat");
    for s in &frag.samples {
        out.extend(&s.data[..]);
    }
    out
}

/// A whole MP4 clip: fragments placed one after another from time zero.
/// Each entry is a fragment and its start (ms) relative to the clip start.
pub fn clip(parts: &[(Fragment, i64, u32)]) -> Option<Vec<u8>> {
    let (first, _, _) = parts.first()?;
    let times: Vec<Vec<Timing>> = parts
        .iter()
        .map(|(f, start, dur)| crate::timing(f, *start, *dur))
        .collect();
    let end = times
        .iter()
        .flatten()
        .map(|t| t.dts + t.duration as i64)
        .max()
        .unwrap_or(0);
    let mut out = init_segment(&first.track, end.max(0) as u64);
    for (i, ((frag, _, _), t)) in parts.iter().zip(&times).enumerate() {
        out.extend(media_segment(i as u32 + 1, frag, t));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::*;
    use crate::{parse_fragment, timing};

    /// Top-level boxes as (type, size).
    fn boxes(data: &[u8]) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos + 8 <= data.len() {
            let size = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
            out.push((
                String::from_utf8_lossy(&data[pos + 4..pos + 8]).into_owned(),
                size,
            ));
            assert!(size >= 8, "box sizes are whole");
            pos += size;
        }
        assert_eq!(pos, data.len(), "boxes cover the data exactly");
        out
    }

    #[test]
    fn init_and_media_segments_are_well_formed_boxes() {
        let frag = parse_fragment(&stored(&avcc())).unwrap();
        let init = init_segment(&frag.track, 0);
        let kinds: Vec<String> = boxes(&init).into_iter().map(|b| b.0).collect();
        assert_eq!(kinds, ["ftyp", "moov"]);
        let at = init.windows(4).position(|w| w == b"avcC").unwrap();
        assert_eq!(
            &init[at + 4..at + 4 + frag.track.config.len()],
            &frag.track.config[..]
        );

        let t = timing(&frag, 0, 133);
        let seg = media_segment(7, &frag, &t);
        let b = boxes(&seg);
        assert_eq!(b[0].0, "moof");
        assert_eq!(b[1].0, "mdat");
        let payload: usize = frag.samples.iter().map(|s| s.data.len()).sum();
        assert_eq!(b[1].1, payload + 8);
        // The trun data offset points at the first sample byte.
        let trun = seg.windows(4).position(|w| w == b"trun").unwrap();
        let offset = u32::from_be_bytes(seg[trun + 12..trun + 16].try_into().unwrap()) as usize;
        assert_eq!(&seg[offset..offset + 5], &frag.samples[0].data[..5]);
        // Composition offset of the B frame is negative (version 1 trun).
        let second_cts = trun + 16 + 16 + 12;
        assert_eq!(
            i32::from_be_bytes(seg[second_cts..second_cts + 4].try_into().unwrap()),
            (t[1].pts - t[1].dts) as i32
        );
    }

    #[test]
    fn a_clip_is_an_init_segment_then_one_fragment_per_part() {
        let frag = parse_fragment(&stored(&avcc())).unwrap();
        let parts = vec![(frag.clone(), 0, 133), (frag, 133, 133)];
        let data = clip(&parts).unwrap();
        let kinds: Vec<String> = boxes(&data).into_iter().map(|b| b.0).collect();
        assert_eq!(kinds, ["ftyp", "moov", "moof", "mdat", "moof", "mdat"]);
        assert!(clip(&[]).is_none());
    }
}
