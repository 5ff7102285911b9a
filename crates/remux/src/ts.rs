//! MPEG-2 transport stream segments (ISO/IEC 13818-1) for HLS: each segment
//! opens with a PAT and a PMT, then carries one PES packet per frame in
//! Annex B form with an access unit delimiter, the parameter sets before
//! every keyframe, and a PCR on every keyframe.
//!
//! Segments are independent: continuity counters start at zero in each,
//! and the first packet of each PID says so with the discontinuity
//! indicator.

use crate::{Codec, Fragment, Timing};

const PACKET: usize = 188;
const PMT_PID: u16 = 0x1000;
const VIDEO_PID: u16 = 0x100;
/// Added to every timestamp so shifted decode times and the PCR stay
/// positive: one second.
pub const TS_OFFSET: i64 = 90_000;
const WRAP: i64 = 1 << 33;

/// MPEG-2 CRC-32 (polynomial 0x04C11DB7, not reflected) for PSI sections.
fn crc32_mpeg(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for b in data {
        crc ^= (*b as u32) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[derive(Default)]
struct Adaptation {
    discontinuity: bool,
    random_access: bool,
    pcr: Option<i64>,
}

struct Writer {
    out: Vec<u8>,
    cc: [(u16, u8); 3],
}

impl Writer {
    fn next_cc(&mut self, pid: u16) -> (u8, bool) {
        for slot in self.cc.iter_mut() {
            if slot.0 == pid {
                let cc = slot.1;
                slot.1 = (cc + 1) & 0x0f;
                return (cc, false);
            }
        }
        let free = self
            .cc
            .iter_mut()
            .find(|s| s.0 == u16::MAX)
            .expect("three PIDs at most");
        *free = (pid, 1);
        (0, true)
    }

    /// Writes one packet carrying as much of `data` as fits; returns how
    /// many bytes it took. Short payloads are padded with adaptation-field
    /// stuffing.
    fn packet(&mut self, pid: u16, start: bool, mut af: Adaptation, data: &[u8]) -> usize {
        let (cc, first) = self.next_cc(pid);
        af.discontinuity |= first;
        let mut fields = Vec::new();
        let mut flags = 0u8;
        if af.discontinuity {
            flags |= 0x80;
        }
        if af.random_access {
            flags |= 0x40;
        }
        if let Some(pcr) = af.pcr {
            flags |= 0x10;
            let base = pcr.rem_euclid(WRAP) as u64;
            fields.extend([
                (base >> 25) as u8,
                (base >> 17) as u8,
                (base >> 9) as u8,
                (base >> 1) as u8,
                ((base & 1) << 7) as u8 | 0x7e,
                0,
            ]);
        }
        let mut af_len = if flags != 0 { 2 + fields.len() } else { 0 };
        let take = data.len().min(PACKET - 4 - af_len);
        let room = PACKET - 4 - af_len - take;
        if room > 0 {
            af_len += room;
        }
        let control = match (af_len > 0, take > 0) {
            (true, true) => 0x30,
            (true, false) => 0x20,
            _ => 0x10,
        };
        let o = &mut self.out;
        o.push(0x47);
        o.push(((start as u8) << 6) | (pid >> 8) as u8);
        o.push(pid as u8);
        o.push(control | cc);
        if af_len > 0 {
            o.push((af_len - 1) as u8);
            if af_len > 1 {
                o.push(flags);
                o.extend(&fields);
                let used = 2 + fields.len();
                o.extend(std::iter::repeat_n(0xff, af_len.saturating_sub(used)));
            }
        }
        o.extend(&data[..take]);
        take
    }

    fn section(&mut self, pid: u16, table_id: u8, id: u16, body: &[u8]) {
        let mut s = vec![table_id];
        let len = 5 + body.len() + 4;
        s.push(0xb0 | (len >> 8) as u8);
        s.push(len as u8);
        s.extend(id.to_be_bytes());
        s.push(0xc1); // version 0, current
        s.extend([0, 0]); // section number, last section number
        s.extend(body);
        let crc = crc32_mpeg(&s);
        s.extend(crc.to_be_bytes());
        let mut payload = vec![0u8]; // pointer field
        payload.extend(s);
        self.packet(pid, true, Adaptation::default(), &payload);
    }

    fn pes(&mut self, payload: &[u8], t: &Timing, keyframe: bool) {
        let pts = (t.pts + TS_OFFSET).rem_euclid(WRAP);
        let dts = (t.dts + TS_OFFSET).rem_euclid(WRAP);
        let mut pes = vec![0, 0, 1, 0xe0, 0, 0, 0x80];
        let stamp = |prefix: u8, v: i64, o: &mut Vec<u8>| {
            let v = v as u64;
            o.push((prefix << 4) | (((v >> 30) as u8 & 0x07) << 1) | 1);
            o.extend((((v >> 15) as u16 & 0x7fff) << 1 | 1).to_be_bytes());
            o.extend((((v as u16) & 0x7fff) << 1 | 1).to_be_bytes());
        };
        if pts != dts {
            pes.extend([0xc0, 10]);
            stamp(0x3, pts, &mut pes);
            stamp(0x1, dts, &mut pes);
        } else {
            pes.extend([0x80, 5]);
            stamp(0x2, pts, &mut pes);
        }
        pes.extend(payload);
        // A bounded PES (length set) can be handed on by a demuxer as soon
        // as its last byte arrives, without waiting for the next PES: the
        // last frame of a live segment plays before the next segment exists.
        // Frames over 64 KiB keep the unbounded form video PES allow.
        if let Ok(len) = u16::try_from(pes.len() - 6) {
            pes[4..6].copy_from_slice(&len.to_be_bytes());
        }
        let mut pos = 0;
        let mut first = true;
        while pos < pes.len() {
            let af = if first && keyframe {
                Adaptation {
                    random_access: true,
                    pcr: Some(t.dts + TS_OFFSET),
                    ..Default::default()
                }
            } else {
                Adaptation::default()
            };
            pos += self.packet(VIDEO_PID, first, af, &pes[pos..]);
            first = false;
        }
    }
}

/// One TS segment for a fragment with the given sample times (as from
/// [`crate::timing`]; decode times are shifted here so none follows its
/// presentation time).
pub fn segment(frag: &Fragment, times: &[Timing]) -> Vec<u8> {
    let payload: usize = frag.samples.iter().map(|s| s.data.len() + 64).sum();
    let mut w = Writer {
        out: Vec::with_capacity(payload * 189 / 184 + 4 * PACKET),
        cc: [(u16::MAX, 0); 3],
    };
    w.section(
        0,
        0x00,
        1,
        &[0x00, 0x01, 0xe0 | (PMT_PID >> 8) as u8, PMT_PID as u8],
    );
    let stream_type = match frag.track.codec {
        Codec::H264 => 0x1b,
        Codec::H265 => 0x24,
    };
    w.section(
        PMT_PID,
        0x02,
        1,
        &[
            0xe0 | (VIDEO_PID >> 8) as u8,
            VIDEO_PID as u8,
            0xf0,
            0x00,
            stream_type,
            0xe0 | (VIDEO_PID >> 8) as u8,
            VIDEO_PID as u8,
            0xf0,
            0x00,
        ],
    );
    let sets = frag.track.parameter_sets().unwrap_or_default();
    let aud: &[u8] = if frag.track.codec == Codec::H265 {
        &[0x46, 0x01, 0x50]
    } else {
        &[0x09, 0xf0]
    };
    let shifted = Timing::shifted(times);
    let mut annexb = Vec::new();
    for (s, t) in frag.samples.iter().zip(&shifted) {
        annexb.clear();
        crate::write_annexb(
            &mut annexb,
            &frag.track,
            &sets,
            &s.data,
            s.keyframe,
            Some(aud),
        );
        w.pes(&annexb, t, s.keyframe);
    }
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::*;
    use crate::{parse_fragment, timing};

    #[test]
    fn mpeg_crc_matches_the_known_pat_checksum() {
        // PAT for program 1 on PID 0x1000, as ffmpeg writes it (CRC 2AB104B2).
        let pat = [
            0x00, 0xb0, 0x0d, 0x00, 0x01, 0xc1, 0x00, 0x00, 0x00, 0x01, 0xf0, 0x00,
        ];
        assert_eq!(crc32_mpeg(&pat), 0x2ab1_04b2);
    }

    #[test]
    fn segments_are_whole_packets_with_tables_first_and_ordered_counters() {
        let frag = parse_fragment(&stored(&avcc())).unwrap();
        let seg = segment(&frag, &timing(&frag, 0, 133));
        assert_eq!(seg.len() % PACKET, 0);
        let packets: Vec<&[u8]> = seg.chunks(PACKET).collect();
        assert!(packets.iter().all(|p| p[0] == 0x47));
        let pid = |p: &[u8]| ((p[1] as u16 & 0x1f) << 8) | p[2] as u16;
        assert_eq!(pid(packets[0]), 0);
        assert_eq!(pid(packets[1]), PMT_PID);
        let video: Vec<&&[u8]> = packets.iter().filter(|p| pid(p) == VIDEO_PID).collect();
        for (i, p) in video.iter().enumerate() {
            assert_eq!(p[3] & 0x0f, (i & 0x0f) as u8);
        }
        // Four PES packets start (one per frame); the first is a random
        // access point with a PCR and begins with AUD, SPS, PPS, IDR.
        let starts: Vec<&&&[u8]> = video.iter().filter(|p| p[1] & 0x40 != 0).collect();
        assert_eq!(starts.len(), 4);
        let first = starts[0];
        assert_eq!(first[3] & 0x30, 0x30);
        assert!(first[5] & 0x40 != 0 && first[5] & 0x10 != 0);
        let body = &first[4 + 1 + first[4] as usize..];
        assert_eq!(&body[..4], &[0, 0, 1, 0xe0]);
        // The PES length counts everything after the length field.
        let pes_len = u16::from_be_bytes([body[4], body[5]]) as usize;
        // Start code + NAL each: AUD (2), SPS (12), PPS (6), IDR (301).
        let es_len = (4 + 2) + (4 + 12) + (4 + 6) + (4 + 301);
        // Flags, header length, PTS and DTS, then the access unit.
        assert_eq!(pes_len, 3 + 10 + es_len);
        let es = &body[9 + body[8] as usize..];
        assert_eq!(&es[..6], &[0, 0, 0, 1, 0x09, 0xf0]);
        assert_eq!(&es[6..11], &[0, 0, 0, 1, 0x67]);
    }
}
