//! The data-stream log format: one append-only file per stream holding the
//! records of all its shards, each framed as
//! `[payload length: u32 LE][CRC-32 of payload: u32 LE][payload]` with
//! payload `[shard u32][sequence u64][arrival ms i64][key len u16][key][data]`.
//! A torn tail decodes to the longest valid prefix.

use bytes::Bytes;

const FRAME_HEADER: usize = 8;
const FIXED: usize = 4 + 8 + 8 + 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub shard: u32,
    pub sequence: u64,
    pub arrival_ms: i64,
    pub partition_key: String,
    pub data: Bytes,
}

impl StoredRecord {
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER + FIXED + self.partition_key.len() + self.data.len()
    }
}

pub fn encode(r: &StoredRecord, out: &mut Vec<u8>) {
    let len = FIXED + r.partition_key.len() + r.data.len();
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&r.shard.to_le_bytes());
    out.extend_from_slice(&r.sequence.to_le_bytes());
    out.extend_from_slice(&r.arrival_ms.to_le_bytes());
    out.extend_from_slice(&(r.partition_key.len() as u16).to_le_bytes());
    out.extend_from_slice(r.partition_key.as_bytes());
    out.extend_from_slice(&r.data);
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes one framed record at the start of `buf`: the record and its
/// framed length, or `None` if `buf` does not start with a complete valid one.
pub fn decode_one(buf: &[u8]) -> Option<(StoredRecord, usize)> {
    let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    let payload = buf.get(FRAME_HEADER..FRAME_HEADER.checked_add(len)?)?;
    if len < FIXED || crc32fast::hash(payload) != crc {
        return None;
    }
    let shard = u32::from_le_bytes(payload[0..4].try_into().ok()?);
    let sequence = u64::from_le_bytes(payload[4..12].try_into().ok()?);
    let arrival_ms = i64::from_le_bytes(payload[12..20].try_into().ok()?);
    let key_len = u16::from_le_bytes(payload[20..22].try_into().ok()?) as usize;
    let key = payload.get(FIXED..FIXED + key_len)?;
    let partition_key = String::from_utf8(key.to_vec()).ok()?;
    let data = Bytes::copy_from_slice(&payload[FIXED + key_len..]);
    Some((
        StoredRecord {
            shard,
            sequence,
            arrival_ms,
            partition_key,
            data,
        },
        FRAME_HEADER + len,
    ))
}

/// Decodes the longest valid prefix: `(offset, record)` pairs and its length.
pub fn decode_log(bytes: &[u8]) -> (Vec<(u64, StoredRecord)>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((r, n)) = decode_one(&bytes[pos..]) {
        out.push((pos as u64, r));
        pos += n;
    }
    (out, pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_torn_log_decodes_to_its_complete_records(
            recs in prop::collection::vec(("[a-z]{1,20}", prop::collection::vec(any::<u8>(), 0..300)), 1..20),
            cut in any::<prop::sample::Index>(),
        ) {
            let records: Vec<StoredRecord> = recs.into_iter().enumerate().map(|(i, (k, d))| StoredRecord {
                shard: i as u32 % 3, sequence: i as u64 + 1, arrival_ms: 1000 + i as i64, partition_key: k, data: Bytes::from(d),
            }).collect();
            let mut log = Vec::new();
            let mut ends = vec![0];
            for r in &records {
                encode(r, &mut log);
                prop_assert_eq!(log.len() - ends.last().unwrap(), r.encoded_len());
                ends.push(log.len());
            }
            let at = cut.index(log.len() + 1);
            let (got, len) = decode_log(&log[..at]);
            let whole = ends.iter().filter(|&&e| e <= at).count() - 1;
            prop_assert_eq!(len, ends[whole]);
            let got: Vec<StoredRecord> = got.into_iter().map(|(_, r)| r).collect();
            prop_assert_eq!(&got[..], &records[..whole]);
        }
    }
}
