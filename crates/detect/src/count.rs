//! Counting line crossings with direction.
//!
//! A line is a segment in normalised image coordinates. Each tracked
//! object's centre is on side A (positive cross product), side B, or in the
//! band of half-width `margin` around the line, which counts as no side, so
//! an object stopping on the line or jittering across it is not counted
//! again and again. A crossing is counted when an object's side changes
//! from one side to the other (possibly through the band, possibly while
//! occluded) at a point inside the segment's extent; each change counts
//! once, with its direction.

use std::collections::HashMap;

use crate::track::Track;

#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub id: String,
    pub a: (f32, f32),
    pub b: (f32, f32),
    /// Half-width of the no-side band around the line (normalised units).
    pub margin: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the left of a->b to its right.
    AToB,
    BToA,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub line: String,
    pub track: u64,
    pub direction: Direction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Line {
    /// Signed distance of `p` from the infinite line (positive: side A),
    /// and whether its projection falls within the segment.
    fn locate(&self, p: (f32, f32)) -> (f32, bool) {
        let (dx, dy) = (self.b.0 - self.a.0, self.b.1 - self.a.1);
        let len = (dx * dx + dy * dy).sqrt().max(f32::EPSILON);
        let (px, py) = (p.0 - self.a.0, p.1 - self.a.1);
        let signed = (dx * py - dy * px) / len;
        let t = (px * dx + py * dy) / (len * len);
        (signed, (0.0..=1.0).contains(&t))
    }
}

/// Counts crossings of several lines by confirmed tracks.
#[derive(Debug, Default)]
pub struct LineCounter {
    lines: Vec<Line>,
    /// Last definite side per (line index, track id).
    sides: HashMap<(usize, u64), Side>,
    pub totals: HashMap<(String, bool), u64>,
}

impl LineCounter {
    pub fn new(lines: Vec<Line>) -> Self {
        LineCounter {
            lines,
            ..Default::default()
        }
    }

    /// Feeds the tracks after a frame; returns the crossings it completed.
    /// Only tracks seen in this frame move; unseen (occluded) tracks keep
    /// their last side, so a crossing made while hidden counts when they
    /// reappear.
    pub fn update<'a>(&mut self, tracks: impl IntoIterator<Item = &'a Track>) -> Vec<Crossing> {
        let mut out = Vec::new();
        let mut alive = Vec::new();
        for t in tracks {
            alive.push(t.id);
            if t.misses > 0 {
                continue;
            }
            for (li, line) in self.lines.iter().enumerate() {
                let (d, within) = line.locate(t.bbox.center());
                let side = if d > line.margin {
                    Some(Side::A)
                } else if d < -line.margin {
                    Some(Side::B)
                } else {
                    None
                };
                let Some(side) = side else { continue };
                let key = (li, t.id);
                match self.sides.insert(key, side) {
                    Some(prev) if prev != side && within => {
                        let direction = if prev == Side::A {
                            Direction::AToB
                        } else {
                            Direction::BToA
                        };
                        *self
                            .totals
                            .entry((line.id.clone(), direction == Direction::AToB))
                            .or_default() += 1;
                        out.push(Crossing {
                            line: line.id.clone(),
                            track: t.id,
                            direction,
                        });
                    }
                    _ => {}
                }
            }
        }
        self.sides.retain(|(_, id), _| alive.contains(id));
        out
    }
}
