//! One camera's analysis state: each analysed frame's detections go through
//! the tracker and the line counter, and come out as [`Observation`]s, the
//! facts an event publisher turns into records: the number of confirmed
//! objects in view when it changes (and again every `count_interval_ms` of
//! media time, so a late subscriber learns the current count), each line
//! crossing with its direction and the line's running totals, and
//! optionally every tracked detection.
//!
//! Time is the frame's producer timestamp (Unix ms), handed in: replaying
//! the same frames gives the same observations.

use crate::{BBox, Crossing, Detection, Direction, Line, LineCounter, Tracker, TrackerConfig};

#[derive(Debug, Clone)]
pub struct AnalyzerConfig {
    pub tracker: TrackerConfig,
    pub lines: Vec<Line>,
    /// The count is repeated after this long without a change (0: never).
    pub count_interval_ms: i64,
    /// Emit one observation per confirmed, visible track per frame.
    pub detections: bool,
    /// A confirmed track still counts as in view this many analysed frames
    /// after it was last matched, so one missed detection does not make
    /// the count flicker (1, 0, 1) and flood subscribers with changes.
    pub in_view_grace: u32,
}

impl Default for AnalyzerConfig {
    fn default() -> Self {
        AnalyzerConfig {
            tracker: TrackerConfig::default(),
            lines: Vec::new(),
            count_interval_ms: 10_000,
            detections: false,
            in_view_grace: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// Confirmed objects in view now; `previous` is `None` for the first
    /// count and equals `in_view` for a periodic repeat.
    Count {
        in_view: usize,
        previous: Option<usize>,
    },
    /// A confirmed track crossed a line; totals include this crossing.
    Crossing {
        crossing: Crossing,
        class: usize,
        total_a_to_b: u64,
        total_b_to_a: u64,
    },
    Detection {
        track: u64,
        class: usize,
        score: f32,
        bbox: BBox,
    },
}

#[derive(Debug)]
pub struct Analyzer {
    cfg: AnalyzerConfig,
    tracker: Tracker,
    counter: LineCounter,
    last_count: Option<usize>,
    last_count_ms: i64,
}

impl Analyzer {
    pub fn new(cfg: AnalyzerConfig) -> Self {
        Analyzer {
            tracker: Tracker::new(cfg.tracker),
            counter: LineCounter::new(cfg.lines.clone()),
            cfg,
            last_count: None,
            last_count_ms: i64::MIN,
        }
    }

    pub fn config(&self) -> &AnalyzerConfig {
        &self.cfg
    }

    /// Confirmed objects in view after the latest frame (matched within
    /// the last `in_view_grace` frames).
    pub fn in_view(&self) -> usize {
        let tcfg = self.tracker.config();
        self.tracker
            .tracks()
            .iter()
            .filter(|t| t.confirmed(tcfg) && t.misses <= self.cfg.in_view_grace)
            .count()
    }

    /// Feeds one analysed frame (its detections after threshold and NMS).
    pub fn observe(&mut self, ts_ms: i64, detections: &[Detection]) -> Vec<Observation> {
        self.tracker.update(detections);
        let tcfg = *self.tracker.config();
        let mut out = Vec::new();
        let confirmed: Vec<_> = self
            .tracker
            .tracks()
            .iter()
            .filter(|t| t.confirmed(&tcfg))
            .collect();
        for crossing in self.counter.update(confirmed.iter().copied()) {
            let class = confirmed
                .iter()
                .find(|t| t.id == crossing.track)
                .map_or(0, |t| t.class);
            let total = |ab: bool| {
                self.counter
                    .totals
                    .get(&(crossing.line.clone(), ab))
                    .copied()
                    .unwrap_or(0)
            };
            let (total_a_to_b, total_b_to_a) = (total(true), total(false));
            out.push(Observation::Crossing {
                crossing,
                class,
                total_a_to_b,
                total_b_to_a,
            });
        }
        let in_view = self.in_view();
        let changed = self.last_count != Some(in_view);
        // Media time going backwards (a new producer session) restarts the
        // period instead of holding it back.
        let due = self.cfg.count_interval_ms > 0
            && (ts_ms < self.last_count_ms
                || ts_ms.saturating_sub(self.last_count_ms) >= self.cfg.count_interval_ms);
        if changed || due {
            out.push(Observation::Count {
                in_view,
                previous: self.last_count,
            });
            self.last_count = Some(in_view);
            self.last_count_ms = ts_ms;
        }
        if self.cfg.detections {
            for t in self.tracker.visible() {
                // The track's box is this frame's matched detection; find its
                // score by that box.
                let score = detections
                    .iter()
                    .find(|d| d.class == t.class && d.bbox == t.bbox)
                    .map_or(0.0, |d| d.score);
                out.push(Observation::Detection {
                    track: t.id,
                    class: t.class,
                    score,
                    bbox: t.bbox,
                });
            }
        }
        out
    }
}

impl Direction {
    /// The wire spelling used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::AToB => "a_to_b",
            Direction::BToA => "b_to_a",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32) -> Detection {
        Detection {
            class: 1,
            score: 0.8,
            bbox: BBox {
                x0: x - 0.05,
                y0: 0.45,
                x1: x + 0.05,
                y1: 0.55,
            },
        }
    }

    fn line() -> Line {
        Line {
            id: "l".into(),
            a: (0.5, 0.0),
            b: (0.5, 1.0),
            margin: 0.01,
        }
    }

    #[test]
    fn counts_change_repeat_on_interval_and_crossings_carry_totals() {
        let mut a = Analyzer::new(AnalyzerConfig {
            lines: vec![line()],
            count_interval_ms: 1000,
            detections: true,
            ..Default::default()
        });
        // Frame 0: nothing yet -> first count 0.
        assert_eq!(
            a.observe(0, &[]),
            [Observation::Count {
                in_view: 0,
                previous: None
            }]
        );
        // One object (left of the line); confirmed on its second hit.
        assert!(a.observe(100, &[det(0.30)]).is_empty(), "not confirmed yet");
        let obs = a.observe(200, &[det(0.35)]);
        assert_eq!(
            obs[0],
            Observation::Count {
                in_view: 1,
                previous: Some(0)
            }
        );
        assert!(
            matches!(obs[1], Observation::Detection { track: 1, class: 1, score, .. } if score == 0.8)
        );
        // It moves across the line (left to right: B to A for a line
        // pointing down the image, whose left side is negative here).
        let mut crossings = Vec::new();
        for (i, x) in [0.40, 0.45, 0.52, 0.58].into_iter().enumerate() {
            for o in a.observe(300 + 100 * i as i64, &[det(x)]) {
                if let Observation::Crossing {
                    crossing,
                    total_a_to_b,
                    total_b_to_a,
                    class,
                } = o
                {
                    crossings.push((crossing.direction, total_a_to_b + total_b_to_a, class));
                }
            }
        }
        assert_eq!(crossings.len(), 1, "one crossing");
        assert_eq!(crossings[0].1, 1);
        assert_eq!(crossings[0].2, 1);
        // Unchanged count: repeated once the interval has passed (last
        // count at 200 ms).
        let repeat = a.observe(1200, &[det(0.62)]);
        assert!(repeat.contains(&Observation::Count {
            in_view: 1,
            previous: Some(1)
        }));
        let quiet = a.observe(1300, &[det(0.66)]);
        assert!(!quiet.iter().any(|o| matches!(o, Observation::Count { .. })));
        // One missed frame: still in view (grace of one frame), no change.
        let missed = a.observe(1400, &[]);
        assert!(
            !missed
                .iter()
                .any(|o| matches!(o, Observation::Count { .. })),
            "{missed:?}"
        );
        // Seen again, then gone for two frames: the count drops.
        a.observe(1500, &[det(0.70)]);
        a.observe(1600, &[]);
        let gone = a.observe(1700, &[]);
        assert!(gone.contains(&Observation::Count {
            in_view: 0,
            previous: Some(1)
        }));
    }
}
