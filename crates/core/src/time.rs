//! Time conversions (never the clock itself: time is always an input).

/// Unix milliseconds as the epoch seconds (a JSON number with a fraction)
/// that AWS JSON and REST-JSON protocols use for timestamps.
pub fn epoch_seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// Epoch seconds as sent by a client, rounded to Unix milliseconds.
pub fn epoch_seconds_to_ms(s: f64) -> i64 {
    (s * 1000.0).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_survive_the_round_trip() {
        for ms in [0, 1, 999, 1_700_000_000_123, -5] {
            assert_eq!(epoch_seconds_to_ms(epoch_seconds(ms)), ms);
        }
        assert_eq!(epoch_seconds(1_500), 1.5);
    }
}
