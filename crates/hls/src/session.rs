//! Which stored fragments a playback session shows right now, for the three
//! modes of GetHLSStreamingSessionURL and GetDASHStreamingSessionURL. Pure:
//! the caller passes the candidate fragments and the wall clock.

/// A session's playback mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The newest fragments; the window slides as fragments are persisted.
    Live,
    /// From a start timestamp on, growing as fragments are persisted, until
    /// the optional end.
    LiveReplay,
    /// A closed range.
    OnDemand,
}

/// A fragment as a session sees it: the time is on the session's selector
/// clock (producer or server timestamp), Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub number: u64,
    pub start_ms: i64,
    pub duration_ms: u32,
}

impl Candidate {
    fn end_ms(&self) -> i64 {
        self.start_ms + i64::from(self.duration_ms)
    }
}

/// What the session's playlist or manifest holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The fragments to list, in playback order.
    pub fragments: Vec<Candidate>,
    /// No fragment will be added any more (`EXT-X-ENDLIST`, static MPD).
    pub ended: bool,
}

/// The session's parameters as validated at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    pub mode: Mode,
    /// Start of the range (LIVE_REPLAY, ON_DEMAND).
    pub start_ms: Option<i64>,
    /// End of the range (ON_DEMAND; optional for LIVE_REPLAY).
    pub end_ms: Option<i64>,
    /// At most this many fragments are listed.
    pub max_fragments: usize,
}

/// The default `MaxMediaPlaylistFragmentResults`: 5 for LIVE, 1000 otherwise.
pub fn default_max_fragments(mode: Mode) -> usize {
    match mode {
        Mode::Live => 5,
        _ => 1000,
    }
}

impl Selection {
    /// Whether a fragment lies in the session's range (LIVE_REPLAY,
    /// ON_DEMAND: the same test as [`Selection::window`]); a LIVE session
    /// has no range.
    pub fn covers(&self, c: &Candidate) -> bool {
        match self.mode {
            Mode::Live => true,
            Mode::LiveReplay | Mode::OnDemand => {
                c.end_ms() > self.start_ms.unwrap_or(i64::MIN)
                    && c.start_ms <= self.end_ms.unwrap_or(i64::MAX)
            }
        }
    }

    /// The window for `candidates`, which must be sorted by start time and
    /// cover at least the session's range (earlier and later fragments are
    /// filtered here). `now_ms` ends a LIVE_REPLAY whose end has passed.
    pub fn window(&self, candidates: &[Candidate], now_ms: i64) -> Window {
        let max = self.max_fragments.max(1);
        match self.mode {
            Mode::Live => {
                let from = candidates.len().saturating_sub(max);
                Window {
                    fragments: candidates[from..].to_vec(),
                    ended: false,
                }
            }
            Mode::LiveReplay | Mode::OnDemand => {
                let end = self.end_ms.unwrap_or(i64::MAX);
                // A fragment that starts before the range but runs into it
                // is included, so playback can start at the requested time.
                let in_range: Vec<Candidate> = candidates
                    .iter()
                    .filter(|c| self.covers(c))
                    .copied()
                    .collect();
                if self.mode == Mode::OnDemand {
                    let mut fragments = in_range;
                    fragments.truncate(max);
                    return Window {
                        fragments,
                        ended: true,
                    };
                }
                let later = candidates.iter().any(|c| c.start_ms > end);
                let ended = self.end_ms.is_some() && (later || now_ms > end);
                // Growing from the start; once past the limit the window
                // slides, keeping the newest `max`.
                let from = in_range.len().saturating_sub(max);
                Window {
                    fragments: in_range[from..].to_vec(),
                    ended,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frags(n: u64) -> Vec<Candidate> {
        (1..=n)
            .map(|i| Candidate {
                number: i,
                start_ms: 10_000 + (i as i64 - 1) * 2000,
                duration_ms: 2000,
            })
            .collect()
    }

    fn numbers(w: &Window) -> Vec<u64> {
        w.fragments.iter().map(|c| c.number).collect()
    }

    #[test]
    fn live_shows_the_newest_fragments() {
        let s = Selection {
            mode: Mode::Live,
            start_ms: None,
            end_ms: None,
            max_fragments: 3,
        };
        let w = s.window(&frags(10), 0);
        assert_eq!(numbers(&w), [8, 9, 10]);
        assert!(!w.ended);
        assert_eq!(numbers(&s.window(&frags(2), 0)), [1, 2]);
        assert!(s.window(&[], 0).fragments.is_empty());
    }

    #[test]
    fn live_replay_starts_at_the_fragment_holding_the_start_and_grows() {
        let s = Selection {
            mode: Mode::LiveReplay,
            start_ms: Some(13_500),
            end_ms: None,
            max_fragments: 1000,
        };
        // 13.5 s lies inside fragment 2 (12 s to 14 s).
        assert_eq!(numbers(&s.window(&frags(4), 0)), [2, 3, 4]);
        assert_eq!(numbers(&s.window(&frags(6), 0)), [2, 3, 4, 5, 6]);
        assert!(!s.window(&frags(6), i64::MAX).ended);
        let small = Selection {
            max_fragments: 2,
            ..s
        };
        assert_eq!(numbers(&small.window(&frags(6), 0)), [5, 6]);
    }

    #[test]
    fn live_replay_with_an_end_stops_once_the_end_is_reached() {
        let s = Selection {
            mode: Mode::LiveReplay,
            start_ms: Some(12_000),
            end_ms: Some(15_000),
            max_fragments: 1000,
        };
        let w = s.window(&frags(3), 15_000);
        assert_eq!(numbers(&w), [2, 3]);
        assert!(!w.ended, "fragments up to the end may still arrive");
        let w = s.window(&frags(4), 15_000);
        assert_eq!(numbers(&w), [2, 3]);
        assert!(w.ended, "a later fragment exists");
        assert!(s.window(&frags(3), 15_001).ended, "the end has passed");
    }

    #[test]
    fn on_demand_is_the_closed_range_and_ended() {
        let s = Selection {
            mode: Mode::OnDemand,
            start_ms: Some(11_000),
            end_ms: Some(16_000),
            max_fragments: 1000,
        };
        let w = s.window(&frags(10), 0);
        // Fragment 1 (10-12 s) runs into the range; 4 starts at 16 s.
        assert_eq!(numbers(&w), [1, 2, 3, 4]);
        assert!(w.ended);
        let capped = Selection {
            max_fragments: 2,
            ..s
        };
        assert_eq!(numbers(&capped.window(&frags(10), 0)), [1, 2]);
        assert_eq!(default_max_fragments(Mode::Live), 5);
        assert_eq!(default_max_fragments(Mode::OnDemand), 1000);
    }
}
