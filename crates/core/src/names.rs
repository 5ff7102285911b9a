//! Resource names: the services' pattern `[a-zA-Z0-9_.-]+` with a length limit
//! that depends on the kind of resource.

/// Video streams and signaling channels: 1-256 characters.
pub const MAX_VIDEO_NAME: usize = 256;
/// Data streams and camera sources: 1-128 characters.
pub const MAX_DATA_NAME: usize = 128;
/// Signaling client ids: 1-256 characters.
pub const MAX_CLIENT_ID: usize = 256;

/// True if `name` has 1 to `max` characters, each of `[a-zA-Z0-9_.-]`.
pub fn valid(name: &str, max: usize) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// True if `name` is an S3 bucket name as channels accept it: 3 to 63
/// characters, each of `[a-z0-9._-]`.
pub fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.' || b == b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_are_lowercase_and_3_to_63_long() {
        assert!(valid_bucket("kinema-events.v2_a"));
        assert!(valid_bucket(&"b".repeat(63)));
        assert!(!valid_bucket(&"b".repeat(64)));
        assert!(!valid_bucket("ab"));
        assert!(!valid_bucket("Upper"));
        assert!(!valid_bucket("a/b"));
    }

    #[test]
    fn names_follow_the_service_pattern_and_length() {
        assert!(valid("cam-1_a.b", MAX_DATA_NAME));
        assert!(valid(&"a".repeat(128), MAX_DATA_NAME));
        assert!(!valid(&"a".repeat(129), MAX_DATA_NAME));
        assert!(valid(&"a".repeat(256), MAX_VIDEO_NAME));
        assert!(!valid("", MAX_VIDEO_NAME));
        assert!(!valid("a/b", MAX_VIDEO_NAME));
        assert!(!valid("..%2f", MAX_VIDEO_NAME));
        assert!(!valid("é", MAX_VIDEO_NAME));
    }
}
