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

#[cfg(test)]
mod tests {
    use super::*;

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
