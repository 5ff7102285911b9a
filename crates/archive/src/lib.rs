//! The video archive without I/O: which fragments exist and where time maps
//! to them ([`catalog`]), how the durable index is encoded ([`index`]), how a
//! PutMedia upload turns into fragments and acknowledgements ([`ingest`]),
//! how stored fragments become GetMedia chunks ([`chunks`]), and which
//! fragments and frames a clip or stills need ([`plan`]).
//!
//! Time is always an input here: callers pass wall-clock milliseconds.

pub mod catalog;
pub mod chunks;
pub mod index;
pub mod ingest;
pub mod plan;

pub use catalog::{Catalog, FragmentMeta, TimeKind};

/// Formats a fragment number the way the API shows it: a fixed-width decimal
/// string, so lexical and numeric order agree.
pub fn fragment_number_string(n: u64) -> String {
    format!("{n:020}")
}

/// Parses a fragment number as shown by the API (any decimal width).
pub fn parse_fragment_number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Wall-clock milliseconds as `seconds.millis`, the form the timestamp tags use.
pub fn millis_to_seconds_string(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}
