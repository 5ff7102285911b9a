//! The detection event record: what a detector publishes onto the events
//! data stream for each observation. Schema: `docs/detection-event.schema.json`.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::Observation;

/// Which observation an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Count,
    Crossing,
    Detection,
}

impl EventKind {
    /// The wire spelling (the event's `kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Count => "count",
            EventKind::Crossing => "crossing",
            EventKind::Detection => "detection",
        }
    }
}

/// The kind-specific part of an event: exactly one of the `count`,
/// `crossing` and `detection` members.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventBody {
    Count {
        in_view: usize,
        previous: Option<usize>,
    },
    Crossing {
        line: String,
        direction: &'static str,
        track: u64,
        total_a_to_b: u64,
        total_b_to_a: u64,
    },
    Detection {
        track: u64,
        score: f32,
        #[serde(rename = "box")]
        bbox: [f32; 4],
    },
}

/// One event record, serialised as one JSON object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectionEvent {
    pub id: String,
    pub kind: EventKind,
    pub stream: String,
    /// The analysed frame's producer timestamp, RFC 3339.
    pub producer_timestamp: String,
    pub producer_timestamp_ms: i64,
    /// The stored fragment holding the frame, as 20 digits.
    pub fragment_number: Option<String>,
    pub model: String,
    pub threshold: f32,
    pub classes: Vec<String>,
    /// When the frame was decoded (server wall clock, Unix ms).
    pub decoded_at_ms: i64,
    pub replay_url: String,
    /// The object's label (crossings and detections).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(flatten)]
    pub body: EventBody,
}

/// What a detector knows about itself that every event repeats.
#[derive(Debug, Clone)]
pub struct EventSource<'a> {
    pub stream: &'a str,
    pub model: &'a str,
    pub threshold: f32,
    pub classes: &'a [String],
    /// The model's labels, indexed by class.
    pub labels: &'a [String],
    /// Base URL of the replay links.
    pub public_url: &'a str,
}

/// The analysed frame an observation came from.
#[derive(Debug, Clone, Copy)]
pub struct FrameInfo {
    /// Producer timestamp, Unix ms.
    pub ts_ms: i64,
    pub fragment_number: Option<u64>,
    pub decoded_at_ms: i64,
}

impl DetectionEvent {
    /// The event reporting `o`, seen in `frame` by `source`.
    pub fn new(source: &EventSource<'_>, frame: FrameInfo, o: &Observation) -> DetectionEvent {
        let label = |class: usize| source.labels.get(class).cloned().unwrap_or_default();
        let (kind, subject, class, body) = match o {
            Observation::Count { in_view, previous } => (
                EventKind::Count,
                String::new(),
                None,
                EventBody::Count {
                    in_view: *in_view,
                    previous: *previous,
                },
            ),
            Observation::Crossing {
                crossing,
                class,
                total_a_to_b,
                total_b_to_a,
            } => (
                EventKind::Crossing,
                format!("{}/{}", crossing.line, crossing.track),
                Some(label(*class)),
                EventBody::Crossing {
                    line: crossing.line.clone(),
                    direction: crossing.direction.as_str(),
                    track: crossing.track,
                    total_a_to_b: *total_a_to_b,
                    total_b_to_a: *total_b_to_a,
                },
            ),
            Observation::Detection {
                track,
                class,
                score,
                bbox,
            } => (
                EventKind::Detection,
                track.to_string(),
                Some(label(*class)),
                EventBody::Detection {
                    track: *track,
                    score: *score,
                    bbox: [bbox.x0, bbox.y0, bbox.x1, bbox.y1],
                },
            ),
        };
        DetectionEvent {
            id: event_id(source.stream, frame.ts_ms, kind, &subject),
            kind,
            stream: source.stream.to_string(),
            producer_timestamp: rfc3339(frame.ts_ms),
            producer_timestamp_ms: frame.ts_ms,
            fragment_number: frame.fragment_number.map(|n| format!("{n:020}")),
            model: source.model.to_string(),
            threshold: source.threshold,
            classes: source.classes.to_vec(),
            decoded_at_ms: frame.decoded_at_ms,
            replay_url: format!(
                "{}/v1/replay/{}?start_ms={}",
                source.public_url.trim_end_matches('/'),
                source.stream,
                frame.ts_ms
            ),
            class,
            body,
        }
    }

    /// The record's bytes (one JSON object).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings, numbers and enums cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The event id: a UUID-shaped hash of (stream, frame time, kind, subject),
/// so the same analysis of the same frame always gives the same id and a
/// consumer can drop repeats whatever their cause.
pub fn event_id(stream: &str, ts_ms: i64, kind: EventKind, subject: &str) -> String {
    let mut h = Sha256::new();
    h.update(stream.as_bytes());
    h.update([0]);
    h.update(ts_ms.to_be_bytes());
    h.update(kind.as_str().as_bytes());
    h.update([0]);
    h.update(subject.as_bytes());
    let d = hex::encode(&h.finalize()[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &d[..8],
        &d[8..12],
        &d[12..16],
        &d[16..20],
        &d[20..]
    )
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BBox, Crossing, Direction};

    /// One event of each kind, as the schema test in `tests/e2e` also uses.
    pub fn samples() -> Vec<DetectionEvent> {
        let labels = vec!["person".to_string(), "bicycle".to_string()];
        let classes = vec!["bicycle".to_string()];
        let src = EventSource {
            stream: "cam-1",
            model: "ssd",
            threshold: 0.5,
            classes: &classes,
            labels: &labels,
            public_url: "http://127.0.0.1:4566/",
        };
        let frame = FrameInfo {
            ts_ms: 1_700_000_000_123,
            fragment_number: Some(7),
            decoded_at_ms: 1_700_000_000_200,
        };
        [
            Observation::Count {
                in_view: 2,
                previous: None,
            },
            Observation::Crossing {
                crossing: Crossing {
                    line: "gate".into(),
                    track: 3,
                    direction: Direction::AToB,
                },
                class: 1,
                total_a_to_b: 1,
                total_b_to_a: 0,
            },
            Observation::Detection {
                track: 3,
                class: 1,
                score: 0.75,
                bbox: BBox {
                    x0: 0.1,
                    y0: 0.2,
                    x1: 0.3,
                    y1: 0.4,
                },
            },
        ]
        .iter()
        .map(|o| DetectionEvent::new(&src, frame, o))
        .collect()
    }

    #[test]
    fn events_have_the_documented_fields() {
        let v: Vec<serde_json::Value> = samples()
            .iter()
            .map(|e| serde_json::from_slice(&e.to_json()).unwrap())
            .collect();
        assert_eq!(v[0]["kind"], "count");
        assert_eq!(v[0]["count"]["in_view"], 2);
        assert!(v[0]["count"]["previous"].is_null());
        assert!(v[0].get("class").is_none());
        assert_eq!(v[1]["kind"], "crossing");
        assert_eq!(v[1]["class"], "bicycle");
        assert_eq!(v[1]["crossing"]["direction"], "a_to_b");
        assert_eq!(v[2]["detection"]["box"].as_array().unwrap().len(), 4);
        assert_eq!(v[0]["fragment_number"], "00000000000000000007");
        assert_eq!(v[0]["producer_timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(
            v[0]["replay_url"],
            "http://127.0.0.1:4566/v1/replay/cam-1?start_ms=1700000000123"
        );
    }

    #[test]
    fn ids_are_deterministic_and_differ_by_subject() {
        let a = samples();
        let b = samples();
        assert_eq!(a, b);
        assert_ne!(a[0].id, a[1].id);
        assert_ne!(a[1].id, a[2].id);
        assert_eq!(
            event_id("cam-1", 5, EventKind::Count, ""),
            event_id("cam-1", 5, EventKind::Count, "")
        );
        assert_ne!(
            event_id("cam-1", 5, EventKind::Count, ""),
            event_id("cam-1", 6, EventKind::Count, "")
        );
    }
}
