//! The wall clock of the engine's services. Each service is handed a
//! [`Clock`] in its configuration and reads the time only through it, so a
//! test can run hours of expiry (retention, iterators, leases,
//! subscriptions, messages kept for absent peers) in milliseconds under
//! tokio's paused time. The sans-IO crates take time as a parameter and
//! may not read a clock at all (their `clippy.toml`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds, from the system clock. For code outside the
/// engine's services (the API, tools); services read their [`Clock`].
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A source of Unix time in milliseconds; cheap to clone.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    /// `None`: the system clock. `Some((start_ms, at))`: `start_ms` at the
    /// tokio instant `at`, then advancing with tokio's clock.
    follows_tokio: Option<(i64, tokio::time::Instant)>,
}

impl Clock {
    /// The system clock (the default).
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that reads `start_ms` now and then advances exactly as
    /// tokio's clock does: under `tokio::time::pause()` only when the test
    /// advances it (or the runtime skips ahead to its next timer). Call it
    /// inside a tokio runtime.
    pub fn following_tokio(start_ms: i64) -> Clock {
        Clock {
            follows_tokio: Some((start_ms, tokio::time::Instant::now())),
        }
    }

    /// The current Unix time in milliseconds.
    pub fn now_ms(&self) -> i64 {
        match self.follows_tokio {
            None => now_ms(),
            Some((start_ms, at)) => {
                start_ms.saturating_add(at.elapsed().as_millis().min(i64::MAX as u128) as i64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_only_with_tokio_time() {
        let c = Clock::following_tokio(1_000);
        assert_eq!(c.now_ms(), 1_000);
        tokio::time::advance(std::time::Duration::from_secs(3600)).await;
        assert_eq!(c.now_ms(), 1_000 + 3_600_000);
        assert!(Clock::system().now_ms() > 1_700_000_000_000);
    }
}
