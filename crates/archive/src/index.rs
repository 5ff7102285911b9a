//! The durable index of a stream is an append-only log of framed records:
//! `[payload length: u32 LE][CRC-32 of payload: u32 LE][payload]`.
//!
//! A crash can leave a torn record at the tail; [`decode_log`] returns the
//! records of the longest valid prefix and its length, so the caller can cut
//! the file back to it. A record is appended only after the fragment object
//! it names is durable, so every decoded fragment record names a readable
//! object.

use crate::catalog::FragmentMeta;

const KIND_FRAGMENT: u8 = 1;
const KIND_TRIM: u8 = 2;
const FRAME_HEADER: usize = 8;
const MAX_PAYLOAD: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A fragment was stored and is durable.
    Fragment(FragmentMeta),
    /// Fragments up to and including this number were deleted (retention).
    Trim { through: u64 },
}

pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(48);
    match record {
        Record::Fragment(f) => {
            payload.push(KIND_FRAGMENT);
            payload.extend_from_slice(&f.number.to_le_bytes());
            payload.extend_from_slice(&f.producer_ms.to_le_bytes());
            payload.extend_from_slice(&f.server_ms.to_le_bytes());
            payload.extend_from_slice(&f.duration_ms.to_le_bytes());
            payload.extend_from_slice(&f.size.to_le_bytes());
            payload.extend_from_slice(&f.cluster_offset.to_le_bytes());
            payload.extend_from_slice(&f.frames.to_le_bytes());
        }
        Record::Trim { through } => {
            payload.push(KIND_TRIM);
            payload.extend_from_slice(&through.to_le_bytes());
        }
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }
}

fn decode_payload(payload: &[u8]) -> Option<Record> {
    let (&kind, rest) = payload.split_first()?;
    let mut c = Cursor(rest);
    let record = match kind {
        KIND_FRAGMENT => Record::Fragment(FragmentMeta {
            number: c.u64()?,
            producer_ms: c.i64()?,
            server_ms: c.i64()?,
            duration_ms: c.u32()?,
            size: c.u32()?,
            cluster_offset: c.u32()?,
            frames: c.u32()?,
        }),
        KIND_TRIM => Record::Trim { through: c.u64()? },
        _ => return None,
    };
    c.0.is_empty().then_some(record)
}

/// Decodes the longest valid prefix of a log: its records and its length in bytes.
pub fn decode_log(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut pos = 0;
    while bytes.len() - pos >= FRAME_HEADER {
        let len =
            u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4-byte slice")) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4-byte slice"));
        if len > MAX_PAYLOAD || bytes.len() - pos - FRAME_HEADER < len {
            break;
        }
        let payload = &bytes[pos + FRAME_HEADER..pos + FRAME_HEADER + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(record) = decode_payload(payload) else {
            break;
        };
        records.push(record);
        pos += FRAME_HEADER + len;
    }
    (records, pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frag(n: u64) -> Record {
        Record::Fragment(FragmentMeta {
            number: n,
            producer_ms: 1_700_000_000_000 + n as i64,
            server_ms: -5,
            duration_ms: 1000,
            size: 12345,
            cluster_offset: 321,
            frames: 30,
        })
    }

    proptest! {
        #[test]
        fn any_torn_tail_decodes_to_a_prefix(n in 1u64..20, cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()) {
            let records: Vec<Record> = (1..=n).map(|i| if i % 5 == 0 { Record::Trim { through: i } } else { frag(i) }).collect();
            let mut log = Vec::new();
            let mut ends = vec![0];
            for r in &records {
                encode(r, &mut log);
                ends.push(log.len());
            }
            let (all, len) = decode_log(&log);
            prop_assert_eq!(&all, &records);
            prop_assert_eq!(len, log.len());

            // Cut anywhere: the result is the records wholly before the cut.
            let at = cut.index(log.len() + 1);
            let (some, len) = decode_log(&log[..at]);
            let whole = ends.iter().filter(|&&e| e <= at).count() - 1;
            prop_assert_eq!(&some[..], &records[..whole]);
            prop_assert_eq!(len, ends[whole]);

            // Damage one byte: decoding stops at or before the damaged record.
            let mut damaged = log.clone();
            let i = flip.index(log.len());
            damaged[i] ^= 0x5A;
            let (good, _) = decode_log(&damaged);
            let damaged_record = ends.iter().filter(|&&e| e <= i).count() - 1;
            prop_assert!(good.len() <= damaged_record);
            prop_assert_eq!(&good[..], &records[..good.len()]);
        }
    }
}
