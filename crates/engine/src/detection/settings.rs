//! A stream detector's settings: the `[detectors.<stream>]` table or the
//! JSON body of `PUT /v1/detectors/{stream}`, with defaults and validation.

use std::collections::HashSet;
use std::path::PathBuf;

use kinema_detect::{AnalyzerConfig, Line, TrackerConfig};
use kinema_infer::Layout;
use serde::{Deserialize, Serialize};

/// A line to count crossings of, in normalised image coordinates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineSettings {
    pub id: String,
    pub from: [f32; 2],
    pub to: [f32; 2],
    /// Half-width of the band around the line that counts as neither side.
    #[serde(default = "default_margin")]
    pub margin: f32,
}

/// One stream's detector (a `[[detectors]]` entry or a JSON API body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSettings {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// ONNX model file; the server's default model when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// `ssd` (default) or `yolo`.
    #[serde(default)]
    pub layout: LayoutName,
    /// The model's labels, one per output class column; the COCO lists of
    /// the layout when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Labels to detect, track and count.
    #[serde(default = "default_classes")]
    pub classes: Vec<String>,
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    #[serde(default = "default_iou")]
    pub nms_iou: f32,
    /// Budget: frames analysed per second of video.
    #[serde(default = "default_budget")]
    pub detections_per_second: f32,
    /// Matches a track needs before it counts.
    #[serde(default = "default_min_hits")]
    pub min_hits: u32,
    /// The count in view is repeated after this long unchanged (0: never).
    #[serde(default = "default_count_interval")]
    pub count_interval_ms: i64,
    /// Analysed frames a missed object still counts as in view.
    #[serde(default = "default_grace")]
    pub in_view_grace_frames: u32,
    #[serde(default)]
    pub lines: Vec<LineSettings>,
    /// Also publish one event per tracked detection per analysed frame.
    #[serde(default)]
    pub detection_events: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutName {
    #[default]
    Ssd,
    Yolo,
}

fn yes() -> bool {
    true
}
fn default_margin() -> f32 {
    0.01
}
fn default_classes() -> Vec<String> {
    vec!["bicycle".into()]
}
fn default_threshold() -> f32 {
    0.5
}
fn default_iou() -> f32 {
    0.5
}
fn default_budget() -> f32 {
    5.0
}
fn default_min_hits() -> u32 {
    2
}
fn default_count_interval() -> i64 {
    10_000
}
fn default_grace() -> u32 {
    1
}

/// Why a detector's settings were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    #[error("threshold and nms_iou must be within 0..1")]
    NotAUnitFraction,
    #[error("detections_per_second must be above 0 and at most 240")]
    Budget,
    #[error("classes must name at least one label")]
    NoClasses,
    #[error("count_interval_ms must not be negative")]
    NegativeCountInterval,
    #[error("every line needs a unique, non-empty id")]
    LineId,
    #[error("line {0:?} needs two distinct finite points")]
    LinePoints(String),
    #[error("line {0:?}: margin must be within 0..0.5")]
    LineMargin(String),
}

impl DetectorSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        let unit = |v: f32| (0.0..=1.0).contains(&v);
        if !unit(self.threshold) || !unit(self.nms_iou) {
            return Err(SettingsError::NotAUnitFraction);
        }
        if !(self.detections_per_second > 0.0 && self.detections_per_second <= 240.0) {
            return Err(SettingsError::Budget);
        }
        if self.classes.is_empty() {
            return Err(SettingsError::NoClasses);
        }
        if self.count_interval_ms < 0 {
            return Err(SettingsError::NegativeCountInterval);
        }
        let mut ids = HashSet::new();
        for l in &self.lines {
            let coords = l.from.iter().chain(&l.to);
            if l.id.is_empty() || !ids.insert(&l.id) {
                return Err(SettingsError::LineId);
            }
            if coords.clone().any(|c| !c.is_finite()) || l.from == l.to {
                return Err(SettingsError::LinePoints(l.id.clone()));
            }
            if !(0.0..0.5).contains(&l.margin) {
                return Err(SettingsError::LineMargin(l.id.clone()));
            }
        }
        Ok(())
    }

    /// The output layout of the model.
    pub fn layout(&self) -> Layout {
        match self.layout {
            LayoutName::Ssd => Layout::Ssd,
            LayoutName::Yolo => Layout::Yolo,
        }
    }

    /// The tracker and counters these settings ask for.
    pub fn analyzer_config(&self) -> AnalyzerConfig {
        AnalyzerConfig {
            tracker: TrackerConfig {
                min_hits: self.min_hits.max(1),
                ..TrackerConfig::default()
            },
            lines: self
                .lines
                .iter()
                .map(|l| Line {
                    id: l.id.clone(),
                    a: (l.from[0], l.from[1]),
                    b: (l.to[0], l.to[1]),
                    margin: l.margin,
                })
                .collect(),
            count_interval_ms: self.count_interval_ms,
            detections: self.detection_events,
            in_view_grace: self.in_view_grace_frames,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> DetectorSettings {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_fill_an_empty_body_and_validate() {
        let s = settings("{}");
        assert!(s.enabled);
        assert_eq!(s.classes, ["bicycle"]);
        assert_eq!(s.layout(), Layout::Ssd);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn each_bad_setting_has_its_own_error() {
        let cases = [
            (r#"{"threshold": 1.5}"#, SettingsError::NotAUnitFraction),
            (r#"{"detections_per_second": 0}"#, SettingsError::Budget),
            (r#"{"classes": []}"#, SettingsError::NoClasses),
            (
                r#"{"count_interval_ms": -1}"#,
                SettingsError::NegativeCountInterval,
            ),
            (
                r#"{"lines": [{"id": "a", "from": [0,0], "to": [1,1]}, {"id": "a", "from": [0,0], "to": [1,0]}]}"#,
                SettingsError::LineId,
            ),
            (
                r#"{"lines": [{"id": "a", "from": [0.5,0.5], "to": [0.5,0.5]}]}"#,
                SettingsError::LinePoints("a".into()),
            ),
            (
                r#"{"lines": [{"id": "a", "from": [0,0], "to": [1,1], "margin": 0.5}]}"#,
                SettingsError::LineMargin("a".into()),
            ),
        ];
        for (json, want) in cases {
            assert_eq!(settings(json).validate(), Err(want), "{json}");
        }
        assert!(serde_json::from_str::<DetectorSettings>(r#"{"colour": 1}"#).is_err());
    }
}
