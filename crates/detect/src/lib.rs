//! Detection post-processing without I/O: decoding detector outputs into
//! boxes, per-class non-maximum suppression, a multi-object tracker that
//! keeps ids across frames, and counting (objects in view, crossings of a
//! line with direction).
//!
//! The ONNX Runtime adapter (`kinema-infer`) decodes model outputs with the
//! functions here; the engine's detection workers feed each analysed frame
//! through an [`Analyzer`], keep frames under a [`BudgetSampler`], and
//! publish each [`Observation`] as a [`DetectionEvent`].

mod analyze;
pub mod budget;
pub mod coco;
mod count;
pub mod event;
mod track;

pub use analyze::{Analyzer, AnalyzerConfig, Observation};
pub use budget::BudgetSampler;
pub use count::{Crossing, Direction, Line, LineCounter};
pub use event::{DetectionEvent, EventKind, EventSource, FrameInfo};
pub use track::{Track, Tracker, TrackerConfig};

/// An axis-aligned box in normalised image coordinates (0..1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

impl BBox {
    pub fn area(&self) -> f32 {
        (self.x1 - self.x0).max(0.0) * (self.y1 - self.y0).max(0.0)
    }

    pub fn iou(&self, o: &BBox) -> f32 {
        let inter = BBox {
            x0: self.x0.max(o.x0),
            y0: self.y0.max(o.y0),
            x1: self.x1.min(o.x1),
            y1: self.y1.min(o.y1),
        }
        .area();
        let union = self.area() + o.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }

    pub fn center(&self) -> (f32, f32) {
        ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)
    }
}

/// One detected object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Class index in the model's label list.
    pub class: usize,
    pub score: f32,
    pub bbox: BBox,
}

/// Decodes the SSD layout (TensorFlow.js COCO-SSD converted to ONNX):
/// `scores` `[N, classes]` (sigmoid applied; column j is COCO id j+1) and
/// `boxes` `[N, 4]` as `(ymin, xmin, ymax, xmax)` in 0..1. Keeps the
/// classes asked for with a score of at least `threshold`.
pub fn decode_ssd(
    scores: &[f32],
    boxes: &[f32],
    classes: usize,
    wanted: &[usize],
    threshold: f32,
) -> Vec<Detection> {
    let n = (scores.len() / classes.max(1)).min(boxes.len() / 4);
    let mut out = Vec::new();
    for i in 0..n {
        for &c in wanted {
            let Some(&score) = scores.get(i * classes + c) else {
                continue;
            };
            if score >= threshold {
                let b = &boxes[i * 4..i * 4 + 4];
                out.push(Detection {
                    class: c,
                    score,
                    bbox: BBox {
                        x0: b[1].clamp(0.0, 1.0),
                        y0: b[0].clamp(0.0, 1.0),
                        x1: b[3].clamp(0.0, 1.0),
                        y1: b[2].clamp(0.0, 1.0),
                    },
                });
            }
        }
    }
    out
}

/// Decodes the common YOLOv8/YOLO11 export: one output `[4 + classes, N]`
/// (row-major, batch 1) of `cx, cy, w, h` in input pixels followed by class
/// scores. Takes each candidate's best class among `wanted`.
pub fn decode_yolo(
    output: &[f32],
    classes: usize,
    input_w: f32,
    input_h: f32,
    wanted: &[usize],
    threshold: f32,
) -> Vec<Detection> {
    let rows = 4 + classes;
    let n = output.len() / rows;
    let at = |r: usize, i: usize| output[r * n + i];
    let mut out = Vec::new();
    for i in 0..n {
        let best = wanted
            .iter()
            .filter(|&&c| c < classes)
            .map(|&c| (c, at(4 + c, i)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((class, score)) = best else { continue };
        if score < threshold {
            continue;
        }
        let (cx, cy, w, h) = (at(0, i), at(1, i), at(2, i), at(3, i));
        out.push(Detection {
            class,
            score,
            bbox: BBox {
                x0: ((cx - w / 2.0) / input_w).clamp(0.0, 1.0),
                y0: ((cy - h / 2.0) / input_h).clamp(0.0, 1.0),
                x1: ((cx + w / 2.0) / input_w).clamp(0.0, 1.0),
                y1: ((cy + h / 2.0) / input_h).clamp(0.0, 1.0),
            },
        });
    }
    out
}

/// Per-class non-maximum suppression: keeps the best-scoring box and drops
/// same-class boxes overlapping it by more than `iou_threshold`. The result
/// is sorted by descending score.
pub fn nms(mut dets: Vec<Detection>, iou_threshold: f32) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in dets {
        if kept
            .iter()
            .all(|k| k.class != d.class || k.bbox.iou(&d.bbox) <= iou_threshold)
        {
            kept.push(d);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x0: f32, y0: f32, x1: f32, y1: f32) -> BBox {
        BBox { x0, y0, x1, y1 }
    }

    #[test]
    fn nms_keeps_the_best_box_per_class_and_overlap() {
        let d = |class, score, bbox| Detection { class, score, bbox };
        let kept = nms(
            vec![
                d(1, 0.6, b(0.1, 0.1, 0.5, 0.5)),
                d(1, 0.9, b(0.12, 0.1, 0.52, 0.5)),
                d(2, 0.8, b(0.1, 0.1, 0.5, 0.5)),
                d(1, 0.7, b(0.6, 0.6, 0.9, 0.9)),
            ],
            0.5,
        );
        let scores: Vec<f32> = kept.iter().map(|k| k.score).collect();
        assert_eq!(
            scores,
            [0.9, 0.8, 0.7],
            "the 0.6 duplicate of class 1 goes; class 2 stays"
        );
    }

    #[test]
    fn ssd_and_yolo_layouts_decode_to_the_same_box() {
        // SSD: two anchors, 3 classes; anchor 1 has class 1 at 0.9.
        let scores = [0.1, 0.2, 0.1, 0.0, 0.9, 0.3];
        let boxes = [0.0, 0.0, 0.1, 0.1, 0.25, 0.5, 0.75, 1.0];
        let ssd = decode_ssd(&scores, &boxes, 3, &[1], 0.5);
        assert_eq!(ssd.len(), 1);
        assert_eq!(ssd[0].bbox, b(0.5, 0.25, 1.0, 0.75));
        // YOLO: [4 + 3, 2] for a 640x480 input; candidate 1 is the same box.
        let n = 2;
        let mut out = vec![0.0f32; 7 * n];
        let set = |out: &mut Vec<f32>, r: usize, i: usize, v: f32| out[r * n + i] = v;
        set(&mut out, 0, 1, 480.0); // cx
        set(&mut out, 1, 1, 240.0); // cy
        set(&mut out, 2, 1, 320.0); // w
        set(&mut out, 3, 1, 240.0); // h
        set(&mut out, 5, 1, 0.9); // class 1
        let yolo = decode_yolo(&out, 3, 640.0, 480.0, &[1], 0.5);
        assert_eq!(yolo.len(), 1);
        assert_eq!(yolo[0].bbox, ssd[0].bbox);
        assert_eq!(yolo[0].class, 1);
    }
}
