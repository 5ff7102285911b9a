//! The detection budget: which decoded frames are analysed, by media time.

/// Keeps frames so that on average one is kept every `interval` of media
/// time (a frame up to half an interval early counts, so 30 a second of
/// 29.97 fps video keeps every frame); a jump in time (a new producer
/// session, a gap) starts the schedule again.
#[derive(Debug, Default, Clone)]
pub struct BudgetSampler {
    next_due: Option<i64>,
    last: Option<i64>,
}

impl BudgetSampler {
    /// Whether the frame at `pts` (any unit, `interval` in the same unit)
    /// is analysed. Call once per decoded frame, in decode order.
    pub fn keep(&mut self, pts: i64, interval: i64) -> bool {
        let restart = match (self.next_due, self.last) {
            (Some(next), Some(last)) => pts < last || pts > next.saturating_add(interval),
            _ => true,
        };
        let due = restart
            || self
                .next_due
                .is_some_and(|n| pts.saturating_add(interval / 2) > n);
        if due {
            self.next_due = Some(if restart {
                pts.saturating_add(interval)
            } else {
                self.next_due.unwrap_or(pts).saturating_add(interval)
            });
        }
        self.last = Some(pts);
        due
    }
}

/// The sampling interval in nanoseconds for a budget of `per_second`
/// analysed frames per second of video.
pub fn interval_ns(per_second: f32) -> i64 {
    (1e9 / f64::from(per_second)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kept frames of `n` frames at 29.97 fps (millisecond times).
    fn kept(per_second: f32, n: i64) -> usize {
        let interval = interval_ns(per_second);
        let mut s = BudgetSampler::default();
        (0..n)
            .filter(|i| {
                s.keep(
                    i * 1_000_000_000 * 1001 / 30_000 / 1_000_000 * 1_000_000,
                    interval,
                )
            })
            .count()
    }

    #[test]
    fn the_budget_keeps_the_asked_rate_on_average() {
        assert_eq!(
            kept(30.0, 300),
            300,
            "30 a second of 29.97 fps: every frame"
        );
        let ten = kept(10.0, 300);
        assert!((99..=101).contains(&ten), "{ten}");
        let five = kept(5.0, 300);
        assert!((49..=51).contains(&five), "{five}");
    }

    #[test]
    fn a_jump_in_time_restarts_the_schedule() {
        let mut s = BudgetSampler::default();
        let iv = 200_000_000;
        assert!(s.keep(10_000_000_000, iv));
        assert!(!s.keep(10_033_000_000, iv));
        // Back in time (a new session): kept at once.
        assert!(s.keep(1_000_000_000, iv));
        // Far ahead (a gap): kept at once, then the schedule follows it.
        assert!(s.keep(50_000_000_000, iv));
        assert!(!s.keep(50_100_000_000, iv));
        assert!(s.keep(50_200_000_000, iv));
    }
}
