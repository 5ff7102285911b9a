//! The data stream without I/O: a stream's shards and their hash-key
//! ranges, routing of partition keys, sequence numbers, resharding (split,
//! merge, uniform shard count) and shard iterator tokens.
//!
//! Nothing here reads a clock or touches storage: callers pass wall-clock
//! milliseconds and persist what they need. This is the core the Kinesis
//! Data Streams API (issue: data streams) is built on.

mod changelog;
pub mod delivery;
pub mod eventstream;
mod iterator;
pub mod leases;
pub mod log;
pub mod queue;
pub mod quota;
pub mod record;
mod shards;

pub use iterator::{ITERATOR_TTL_MS, IteratorError, IteratorKey, IteratorPosition};
pub use shards::{
    Shard, ShardError, ShardMap, hash_key, parse_hash_key, parse_shard_id, shard_id_string,
};

/// Sequence numbers are shown as 56-digit decimal strings (`49` then the
/// stream-wide counter zero-padded to 54 digits), the width the original
/// service uses, so they sort the same as strings and as numbers.
pub fn sequence_string(seq: u64) -> String {
    format!("49{seq:054}")
}

/// Parses a sequence number as shown by [`sequence_string`].
pub fn parse_sequence(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("49")?;
    if digits.len() != 54 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (high, low) = digits.split_at(34);
    if high.bytes().any(|b| b != b'0') {
        return None;
    }
    low.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sequence_strings_round_trip_and_sort_like_numbers(a in any::<u64>(), b in any::<u64>()) {
            let (sa, sb) = (sequence_string(a), sequence_string(b));
            prop_assert_eq!(sa.len(), 56);
            prop_assert_eq!(parse_sequence(&sa), Some(a));
            prop_assert_eq!(sa.cmp(&sb), a.cmp(&b));
        }
    }

    #[test]
    fn malformed_sequence_numbers_are_refused() {
        assert_eq!(parse_sequence("49"), None);
        assert_eq!(parse_sequence("12345"), None);
        assert_eq!(parse_sequence(&format!("49{}", "9".repeat(54))), None);
        assert_eq!(parse_sequence(&format!("49{}x", "0".repeat(53))), None);
    }
}
