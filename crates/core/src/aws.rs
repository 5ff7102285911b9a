//! AWS-shaped defaults and the service limits more than one crate enforces.

/// The region a server or client uses when none is configured.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The account id in ARNs when none is configured (AWS's placeholder form).
pub const DEFAULT_ACCOUNT_ID: &str = "000000000000";

/// At most this many records per PutRecords request (Kinesis Data Streams).
pub const MAX_PUT_RECORDS: usize = 500;

/// The longest time range of one ON_DEMAND streaming session or one clip
/// (Kinesis Video archived media: three hours).
pub const MAX_MEDIA_RANGE_MS: i64 = 3 * 3600 * 1000;
