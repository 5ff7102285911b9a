//! A small multi-object tracker: detections are matched to tracks greedily
//! by IoU (best pairs first) against each track's box moved by its velocity
//! (constant-velocity prediction, so an object that passes behind something
//! is found again where it should be); unmatched detections open tracks; a track
//! survives `max_misses` frames without a match (occlusion) before it ends.
//! A track is confirmed after `min_hits` matches, which keeps one-frame
//! false positives from being counted.

use crate::{BBox, Detection};

#[derive(Debug, Clone, Copy)]
pub struct TrackerConfig {
    pub iou_match: f32,
    pub max_misses: u32,
    pub min_hits: u32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            iou_match: 0.2,
            max_misses: 10,
            min_hits: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub id: u64,
    pub class: usize,
    pub bbox: BBox,
    pub hits: u32,
    pub misses: u32,
    /// Centre displacement per frame.
    pub velocity: (f32, f32),
}

impl Track {
    /// Where the box should be now, `misses + 1` frames after it was seen.
    fn predicted(&self) -> BBox {
        let k = (self.misses + 1) as f32;
        let (dx, dy) = (self.velocity.0 * k, self.velocity.1 * k);
        BBox {
            x0: self.bbox.x0 + dx,
            y0: self.bbox.y0 + dy,
            x1: self.bbox.x1 + dx,
            y1: self.bbox.y1 + dy,
        }
    }

    pub fn confirmed(&self, cfg: &TrackerConfig) -> bool {
        self.hits >= cfg.min_hits
    }
}

#[derive(Debug, Default)]
pub struct Tracker {
    cfg: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Self {
        Tracker {
            cfg,
            tracks: Vec::new(),
            next_id: 1,
        }
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.cfg
    }

    /// Live tracks (including those currently unseen but not yet ended).
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// Confirmed tracks seen in the latest frame.
    pub fn visible(&self) -> impl Iterator<Item = &Track> {
        self.tracks
            .iter()
            .filter(|t| t.misses == 0 && t.confirmed(&self.cfg))
    }

    /// Updates the tracks with one frame's detections.
    pub fn update(&mut self, detections: &[Detection]) {
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (ti, t) in self.tracks.iter().enumerate() {
            for (di, d) in detections.iter().enumerate() {
                if t.class == d.class {
                    let iou = t.predicted().iou(&d.bbox);
                    if iou >= self.cfg.iou_match {
                        pairs.push((iou, ti, di));
                    }
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut track_used = vec![false; self.tracks.len()];
        let mut det_used = vec![false; detections.len()];
        for (_, ti, di) in pairs {
            if track_used[ti] || det_used[di] {
                continue;
            }
            track_used[ti] = true;
            det_used[di] = true;
            let t = &mut self.tracks[ti];
            let (old, new) = (t.bbox.center(), detections[di].bbox.center());
            let frames = (t.misses + 1) as f32;
            let v = ((new.0 - old.0) / frames, (new.1 - old.1) / frames);
            // Smooth the velocity; the first match takes it as measured.
            t.velocity = if t.hits == 1 {
                v
            } else {
                (
                    0.5 * t.velocity.0 + 0.5 * v.0,
                    0.5 * t.velocity.1 + 0.5 * v.1,
                )
            };
            t.bbox = detections[di].bbox;
            t.hits += 1;
            t.misses = 0;
        }
        for (t, used) in self.tracks.iter_mut().zip(&track_used) {
            if !used {
                t.misses += 1;
            }
        }
        let max = self.cfg.max_misses;
        self.tracks.retain(|t| t.misses <= max);
        for (d, used) in detections.iter().zip(det_used) {
            if !used {
                self.tracks.push(Track {
                    id: self.next_id,
                    class: d.class,
                    bbox: d.bbox,
                    hits: 1,
                    misses: 0,
                    velocity: (0.0, 0.0),
                });
                self.next_id += 1;
            }
        }
    }
}
