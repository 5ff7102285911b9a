//! The framing of the change logs (consumer groups, queues): each record
//! is its length (u32 LE), the CRC-32 of its payload (u32 LE) and the
//! payload, a JSON change carrying a rising `lsn`.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest change record accepted when decoding.
pub const MAX_CHANGE: usize = 1 << 20;

/// Appends one change record.
pub fn encode<T: Serialize>(change: &T, out: &mut Vec<u8>) {
    // The changes are strings, integers and enums: serialising cannot fail.
    let payload = serde_json::to_vec(change).unwrap_or_default();
    out.extend((payload.len() as u32).to_le_bytes());
    out.extend(crc32fast::hash(&payload).to_le_bytes());
    out.extend(payload);
}

/// Decodes the longest valid prefix of a change log: it stops at a torn or
/// corrupt record, an oversized length, or an `lsn` that does not rise.
/// Returns the changes and the length of the valid prefix.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], lsn: impl Fn(&T) -> u64) -> (Vec<T>, usize) {
    let mut out: Vec<T> = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let (len, crc) = (word(at) as usize, word(at + 4));
        if len > MAX_CHANGE || bytes.len() - at - 8 < len {
            break;
        }
        let payload = &bytes[at + 8..at + 8 + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Ok(change) = serde_json::from_slice::<T>(payload) else {
            break;
        };
        if out.last().is_some_and(|l| lsn(&change) <= lsn(l)) {
            break;
        }
        out.push(change);
        at += 8 + len;
    }
    (out, at)
}
