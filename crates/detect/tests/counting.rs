//! Line-crossing counts on deterministic synthetic tracks: objects moving
//! across, back and forth, stopping on the line, occluded while crossing,
//! passing beyond the line's end, and one-frame false positives.

use kinema_detect::{BBox, Detection, Direction, Line, LineCounter, Tracker, TrackerConfig};

const BICYCLE: usize = 1;

/// A vertical counting line at x = 0.5 from y = 0.1 (a) to y = 0.9 (b):
/// moving left to right is A to B.
fn line() -> Line {
    Line {
        id: "street".into(),
        a: (0.5, 0.1),
        b: (0.5, 0.9),
        margin: 0.01,
    }
}

fn det(x: f32, y: f32) -> Detection {
    Detection {
        class: BICYCLE,
        score: 0.9,
        bbox: BBox {
            x0: x - 0.04,
            y0: y - 0.04,
            x1: x + 0.04,
            y1: y + 0.04,
        },
    }
}

/// Runs frames of object centres (`None`: not detected in that frame)
/// through the tracker and the counter; returns every crossing's direction
/// and track id.
fn run(frames: &[Vec<Option<(f32, f32)>>]) -> Vec<(Direction, u64)> {
    let mut tracker = Tracker::new(TrackerConfig::default());
    let mut counter = LineCounter::new(vec![line()]);
    let mut out = Vec::new();
    for frame in frames {
        let dets: Vec<Detection> = frame.iter().flatten().map(|&(x, y)| det(x, y)).collect();
        tracker.update(&dets);
        let cfg = *tracker.config();
        let confirmed: Vec<_> = tracker
            .tracks()
            .iter()
            .filter(|t| t.confirmed(&cfg))
            .cloned()
            .collect();
        out.extend(
            counter
                .update(&confirmed)
                .into_iter()
                .map(|c| (c.direction, c.track)),
        );
    }
    out
}

fn path(from: f32, to: f32, step: f32, y: f32) -> Vec<Vec<Option<(f32, f32)>>> {
    let n = ((to - from) / step).abs().round() as usize;
    (0..=n)
        .map(|i| vec![Some((from + (to - from) * i as f32 / n as f32, y))])
        .collect()
}

#[test]
fn one_object_moving_across_counts_once() {
    let c = run(&path(0.2, 0.8, 0.02, 0.5));
    assert_eq!(c.iter().map(|c| c.0).collect::<Vec<_>>(), [Direction::AToB]);
}

#[test]
fn back_and_forth_counts_every_crossing_with_its_direction() {
    let mut frames = path(0.3, 0.7, 0.02, 0.5);
    frames.extend(path(0.7, 0.3, 0.02, 0.5).into_iter().skip(1));
    frames.extend(path(0.3, 0.7, 0.02, 0.5).into_iter().skip(1));
    let c = run(&frames);
    assert_eq!(
        c.iter().map(|c| c.0).collect::<Vec<_>>(),
        [Direction::AToB, Direction::BToA, Direction::AToB]
    );
    assert!(c.iter().all(|x| x.1 == c[0].1), "one track throughout");
}

#[test]
fn stopping_and_jittering_on_the_line_does_not_count() {
    let mut frames = path(0.3, 0.5, 0.02, 0.5);
    for i in 0..30 {
        let jitter = if i % 2 == 0 { 0.006 } else { -0.006 };
        frames.push(vec![Some((0.5 + jitter, 0.5))]);
    }
    frames.extend(path(0.5, 0.3, 0.02, 0.5));
    assert_eq!(run(&frames), []);
    // The same stop, then onwards across: exactly one crossing.
    let mut frames = path(0.3, 0.5, 0.02, 0.5);
    frames.extend((0..30).map(|_| vec![Some((0.5, 0.5))]));
    frames.extend(path(0.5, 0.7, 0.02, 0.5));
    assert_eq!(run(&frames).len(), 1);
}

#[test]
fn a_crossing_while_occluded_counts_once_when_the_object_reappears() {
    let frames: Vec<Vec<Option<(f32, f32)>>> = path(0.2, 0.8, 0.02, 0.5)
        .into_iter()
        .map(|f| {
            let x = f[0].unwrap().0;
            // Hidden behind a tram from x = 0.42 to 0.58 (8 frames).
            if (0.42..0.58).contains(&x) {
                vec![None]
            } else {
                f
            }
        })
        .collect();
    let c = run(&frames);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].0, Direction::AToB);
}

#[test]
fn passing_beyond_the_end_of_the_line_does_not_count() {
    assert_eq!(run(&path(0.2, 0.8, 0.02, 0.97)), []);
}

#[test]
fn two_objects_crossing_opposite_ways_count_separately() {
    let a = path(0.2, 0.8, 0.02, 0.3);
    let b = path(0.8, 0.2, 0.02, 0.7);
    let frames: Vec<_> = a
        .into_iter()
        .zip(b)
        .map(|(x, y)| vec![x[0], y[0]])
        .collect();
    let mut c = run(&frames);
    c.sort_by_key(|x| x.1);
    assert_eq!(c.len(), 2);
    assert_ne!(c[0].1, c[1].1);
    let dirs: Vec<Direction> = c.iter().map(|x| x.0).collect();
    assert!(dirs.contains(&Direction::AToB) && dirs.contains(&Direction::BToA));
}

#[test]
fn a_one_frame_false_positive_is_not_in_view() {
    let mut tracker = Tracker::new(TrackerConfig::default());
    let real = det(0.3, 0.5);
    tracker.update(&[real]);
    tracker.update(&[real]);
    assert_eq!(tracker.visible().count(), 1, "confirmed after two frames");
    tracker.update(&[real, det(0.8, 0.2)]);
    assert_eq!(
        tracker.visible().count(),
        1,
        "the spurious box is not counted in view"
    );
    tracker.update(&[real]);
    assert_eq!(tracker.visible().count(), 1);
    assert_eq!(
        tracker.tracks().len(),
        2,
        "it lingers unconfirmed until it expires"
    );
}
