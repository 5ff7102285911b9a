//! Shard iterators: opaque, tamper-evident tokens naming a stream, a shard
//! and a read position, valid for five minutes after they were issued.
//!
//! A token is `hex(payload || HMAC-SHA256(key, payload)[..16])`; the server
//! keeps the key, so a forged or altered token fails verification instead
//! of reading an arbitrary position.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Iterators expire this long after they were issued.
pub const ITERATOR_TTL_MS: i64 = 5 * 60 * 1000;
const MAC_LEN: usize = 16;
const VERSION: u8 = 1;

/// Where the next read starts: the first record with a sequence number at
/// or above this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IteratorPosition {
    /// Identity of the stream (its creation stamp), so a token does not
    /// outlive a deleted and re-created stream of the same name.
    pub stream: u64,
    pub shard: u32,
    pub from_sequence: u64,
    pub issued_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IteratorError {
    #[error("the shard iterator is malformed or was not issued by this server")]
    Invalid,
    #[error("the shard iterator has expired")]
    Expired,
}

/// The server's iterator-signing key.
#[derive(Clone)]
pub struct IteratorKey([u8; 32]);

impl std::fmt::Debug for IteratorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IteratorKey(..)")
    }
}

impl IteratorKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        IteratorKey(bytes)
    }

    fn mac(&self, payload: &[u8]) -> [u8; MAC_LEN] {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        m.update(payload);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    pub fn encode(&self, p: &IteratorPosition) -> String {
        let mut payload = Vec::with_capacity(29 + MAC_LEN);
        payload.push(VERSION);
        payload.extend_from_slice(&p.stream.to_be_bytes());
        payload.extend_from_slice(&p.shard.to_be_bytes());
        payload.extend_from_slice(&p.from_sequence.to_be_bytes());
        payload.extend_from_slice(&p.issued_ms.to_be_bytes());
        let mac = self.mac(&payload);
        payload.extend_from_slice(&mac);
        hex::encode(payload)
    }

    /// Verifies and decodes a token at wall time `now_ms`.
    pub fn decode(&self, token: &str, now_ms: i64) -> Result<IteratorPosition, IteratorError> {
        let bytes = hex::decode(token).map_err(|_| IteratorError::Invalid)?;
        if bytes.len() != 29 + MAC_LEN || bytes[0] != VERSION {
            return Err(IteratorError::Invalid);
        }
        let (payload, mac) = bytes.split_at(29);
        if !bool::from(self.mac(payload).ct_eq(mac)) {
            return Err(IteratorError::Invalid);
        }
        let u64_at = |i: usize| u64::from_be_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
        let p = IteratorPosition {
            stream: u64_at(1),
            shard: u32::from_be_bytes(payload[9..13].try_into().expect("4 bytes")),
            from_sequence: u64_at(13),
            issued_ms: u64_at(21) as i64,
        };
        if now_ms.saturating_sub(p.issued_ms) > ITERATOR_TTL_MS {
            return Err(IteratorError::Expired);
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_expire_and_resist_forgery() {
        let key = IteratorKey::new([7; 32]);
        let p = IteratorPosition {
            stream: 42,
            shard: 3,
            from_sequence: 1000,
            issued_ms: 1_000_000,
        };
        let t = key.encode(&p);
        assert_eq!(key.decode(&t, 1_000_000 + ITERATOR_TTL_MS), Ok(p));
        assert_eq!(
            key.decode(&t, 1_000_001 + ITERATOR_TTL_MS),
            Err(IteratorError::Expired)
        );
        // Flip one hex digit of the sequence number.
        let mut forged = t.clone().into_bytes();
        forged[40] = if forged[40] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            key.decode(std::str::from_utf8(&forged).unwrap(), 1_000_000),
            Err(IteratorError::Invalid)
        );
        assert_eq!(
            IteratorKey::new([8; 32]).decode(&t, 1_000_000),
            Err(IteratorError::Invalid)
        );
        assert_eq!(key.decode("zz", 0), Err(IteratorError::Invalid));
    }
}
