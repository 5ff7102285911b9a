//! Detection: the real model through the Rust pipeline (GStreamer decode,
//! ONNX Runtime), a YOLO-layout model built by the test, the 1906 Market
//! Street clip as a camera producing bicycle events that boto3 reads back
//! (schema-checked with jsonschema), and a deliberately slow model that
//! drops frames while ingest keeps every fragment.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kinema_infer::{Layout, ModelSpec, Runtime};
use serde_json::Value;

use crate::support::*;

fn cache(path: &str) -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap())
        .join(".cache/kinema")
        .join(path)
}

fn runtime() -> std::sync::Arc<Runtime> {
    let lib = cache("models/libonnxruntime.so");
    assert!(
        lib.exists(),
        "{} is missing: models/fetch.sh installs it",
        lib.display()
    );
    Runtime::load(&lib).expect("ONNX Runtime loads")
}

fn ssd_model() -> PathBuf {
    let m = cache("models/ssdlite_mobilenet_v2_coco.onnx");
    assert!(
        m.exists(),
        "{} is missing: models/fetch.sh makes it",
        m.display()
    );
    m
}

/// Builds a model with `tests/python/detect.py` into `dir`.
fn build_model(kind: &str, dir: &std::path::Path) -> PathBuf {
    let out = dir.join(format!("{kind}.onnx"));
    let status = Command::new(python())
        .arg(repo_root().join("tests/python/detect.py"))
        .arg(kind)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "building the {kind} failed");
    out
}

/// assets.md: on dog.jpg (768x576) SSDLite finds the bicycle at 0.933 at
/// about (139,114)-(574,441) px; person.jpg has no bicycle.
#[test]
fn the_sample_photo_finds_the_bicycle_through_the_rust_pipeline() {
    let rt = runtime();
    let det = rt
        .detector(&ModelSpec {
            path: ssd_model(),
            layout: Layout::Ssd,
            intra_threads: 1,
        })
        .unwrap();
    assert_eq!(det.input_size(), (300, 300));
    assert_eq!(det.classes(), 90);
    let (w, h) = det.input_size();
    let rgb = kinema_media::decode::decode_image_file(&cache("assets/dog.jpg"), w, h).unwrap();
    let bicycle = 1;
    let found = det.detect(&rgb, &[bicycle], 0.5, 0.5).unwrap();
    assert_eq!(found.detections.len(), 1, "{:?}", found.detections);
    let d = found.detections[0];
    assert!((d.score - 0.933).abs() < 0.03, "score {}", d.score);
    let px = [
        d.bbox.x0 * 768.0,
        d.bbox.y0 * 576.0,
        d.bbox.x1 * 768.0,
        d.bbox.y1 * 576.0,
    ];
    for (got, want) in px.iter().zip([139.0, 114.0, 574.0, 441.0]) {
        assert!((got - want).abs() < 15.0, "box {px:?}");
    }
    assert!(found.run_time > Duration::ZERO);
    // The same session serves another request: it is shared, not reloaded.
    let again = rt
        .detector(&ModelSpec {
            path: ssd_model(),
            layout: Layout::Ssd,
            intra_threads: 1,
        })
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(&det, &again));
    let rgb = kinema_media::decode::decode_image_file(&cache("assets/person.jpg"), w, h).unwrap();
    let none = det.detect(&rgb, &[bicycle], 0.5, 0.5).unwrap();
    assert!(none.detections.is_empty(), "{:?}", none.detections);
    // A wrongly sized frame is an error, not a panic.
    assert!(det.detect(&rgb[..100], &[bicycle], 0.5, 0.5).is_err());
}

#[test]
fn a_yolo_layout_model_decodes_and_serves_a_detector() {
    let dir = tempfile::tempdir().unwrap();
    let model = build_model("yolo-model", dir.path());
    let det = runtime()
        .detector(&ModelSpec {
            path: model.clone(),
            layout: Layout::Yolo,
            intra_threads: 1,
        })
        .unwrap();
    assert_eq!(det.input_size(), (64, 64));
    assert_eq!(det.classes(), 3);
    let found = det
        .detect(&vec![0u8; 64 * 64 * 3], &[0, 1, 2], 0.5, 0.5)
        .unwrap();
    assert_eq!(found.detections.len(), 1, "{:?}", found.detections);
    let d = found.detections[0];
    assert_eq!(d.class, 1);
    assert!((d.score - 0.9).abs() < 1e-6);
    // cx 48, cy 32, w 32, h 16 in a 64x64 input.
    let b = d.bbox;
    assert_eq!([b.x0, b.y0, b.x1, b.y1], [0.5, 0.375, 1.0, 0.625]);
    // The SSD layout is refused for it, with the reason.
    let err = runtime()
        .detector(&ModelSpec {
            path: model.clone(),
            layout: Layout::Ssd,
            intra_threads: 1,
        })
        .err()
        .expect("wrong layout refused");
    assert!(err.to_string().contains("layout"), "{err}");

    // Through the JSON API: a user's own model (in the models folder) and
    // label list, for existing streams.
    let config = format!(
        "[detection]\nmodels_dir = {:?}\nmax_detectors = 2\n",
        dir.path().display().to_string()
    );
    let server = Server::start_with_config(&dir.path().join("data"), &config);
    for stream in ["cam", "cam2", "cam3"] {
        create_stream(&server, stream, 1);
    }
    let body = serde_json::json!({
        "model": model, "layout": "yolo", "labels": ["person", "bicycle", "car"],
        "classes": ["bicycle"], "threshold": 0.6,
        "lines": [{"id": "l1", "from": [0.5, 0.0], "to": [0.5, 1.0]}],
    });
    let (code, s) = api(&server, "PUT", "/v1/detectors/cam", Some(&body.to_string()));
    assert_eq!(code, 200, "{s}");
    // Ready, but its stream has sent no video: idle, not running.
    assert_eq!(s["state"], "idle", "{s}");
    assert_eq!(s["last_video_ms"], serde_json::Value::Null, "{s}");
    assert_eq!(s["model"], "yolo-model");
    // Labels that do not match the model's class columns.
    let bad = serde_json::json!({"model": model, "layout": "yolo", "labels": ["bicycle"]});
    let (code, s) = api(&server, "PUT", "/v1/detectors/cam2", Some(&bad.to_string()));
    assert_eq!(code, 200);
    assert_eq!(s["state"], "failed");
    assert!(s["error"].as_str().unwrap().contains("3 classes"), "{s}");
    // Bad input gets the AWS error shape.
    for (body, what) in [
        ("{not json", "malformed"),
        (r#"{"threshold": 2}"#, "threshold"),
        (
            r#"{"lines": [{"id": "a", "from": [0.1, 0.1], "to": [0.1, 0.1]}]}"#,
            "distinct",
        ),
        (r#"{"detections_per_second": 0}"#, "detections_per_second"),
        (r#"{"unknown_key": 1}"#, "unknown"),
    ] {
        let (code, e) = api(&server, "PUT", "/v1/detectors/cam3", Some(body));
        assert_eq!(code, 400, "{body}: {e}");
        assert_eq!(e["__type"], "InvalidArgumentException");
        assert!(e["message"].as_str().unwrap().contains(what), "{body}: {e}");
    }
    // Issue 15, finding 6: a detector needs an existing stream, loads
    // models only from the models folder (one refusal for every other
    // path, so it tells nothing about the server's files), and there are
    // at most max_detectors.
    let (code, e) = api(&server, "PUT", "/v1/detectors/nostream", Some("{}"));
    assert_eq!(
        (code, e["__type"].as_str()),
        (404, Some("ResourceNotFoundException")),
        "{e}"
    );
    let mut refusals = Vec::new();
    for model in [
        "/etc/passwd",
        "/no/such/model.onnx",
        "../../etc/hostname",
        "data",
    ] {
        let body = serde_json::json!({ "model": model }).to_string();
        let (code, e) = api(&server, "PUT", "/v1/detectors/cam3", Some(&body));
        assert_eq!(
            (code, e["__type"].as_str()),
            (400, Some("InvalidArgumentException")),
            "{model}: {e}"
        );
        refusals.push(e["message"].clone());
    }
    assert!(refusals.windows(2).all(|w| w[0] == w[1]), "{refusals:?}");
    let (code, e) = api(&server, "PUT", "/v1/detectors/cam3", Some("{}"));
    assert_eq!(
        (code, e["__type"].as_str()),
        (400, Some("LimitExceededException")),
        "{e}"
    );
    let (code, list) = api(&server, "GET", "/v1/detectors", None);
    assert_eq!(code, 200);
    assert_eq!(list["detectors"].as_array().unwrap().len(), 2);
    let (code, _) = api(&server, "DELETE", "/v1/detectors/cam2", None);
    assert_eq!(code, 200);
    let (code, e) = api(&server, "GET", "/v1/detectors/cam2", None);
    assert_eq!(code, 404);
    assert_eq!(e["__type"], "ResourceNotFoundException");
    // API-set detectors survive a restart.
    drop(server);
    let server = Server::start_with_config(&dir.path().join("data"), &config);
    let (code, s) = api(&server, "GET", "/v1/detectors/cam", None);
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["origin"], "api");
    assert_eq!(s["settings"]["threshold"].as_f64().unwrap() as f32, 0.6);
}

/// A metric's value for a label set, from `/metrics`.
fn metric(server: &Server, name: &str, stream: &str) -> Option<f64> {
    let out = Command::new("curl")
        .args(["-sS", &format!("{}/metrics", server.url())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !rest.starts_with('{') || !rest.contains(&format!("stream=\"{stream}\"")) {
            return None;
        }
        rest.rsplit(' ').next()?.parse().ok()
    })
}

/// The frame ranges of assets.md where cyclists ride through the clip.
const CYCLIST_FRAMES: [(i64, i64); 4] = [(200, 480), (720, 840), (1230, 1320), (1480, 1560)];

#[test]
fn the_market_street_clip_as_a_camera_publishes_bicycle_events_boto3_reads_in_order() {
    let clip = cache("assets/market_street_1906.mp4");
    assert!(
        clip.exists(),
        "{} missing: setup fetches it",
        clip.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let source = format!("market-street=file://{}", clip.display());
    let demo = repo_root().join("samples/demo.toml");
    let server = Server::start_args(
        &dir.path().join("data"),
        &["--config", demo.to_str().unwrap(), "--source", &source],
    );
    // The clip is 60 s long and plays at its own pace; its last GOP is
    // complete (stored, then analysed) when the loop starts again.
    let status = wait_for(Duration::from_secs(150), || {
        let (_, s) = api(&server, "GET", "/v1/detectors/market-street", None);
        (s["fragments"].as_u64() >= Some(8)).then_some(s)
    })
    .unwrap_or_else(|| panic!("the clip did not play through\n{}", server.log()));
    assert_eq!(status["state"], "running", "{status}");
    assert!(status["last_video_ms"].as_i64().is_some(), "{status}");
    assert_eq!(status["fragments_dropped"], 0, "{status}");
    // Wait for the analysis of the last complete fragment to finish.
    let done = wait_for(Duration::from_secs(60), || {
        let (_, s) = api(&server, "GET", "/v1/detectors/market-street", None);
        let sampled = s["frames_sampled"].as_u64()?;
        (sampled > 0 && s["frames_inferred"].as_u64()? + s["frames_dropped"].as_u64()? >= sampled)
            .then_some(s)
    })
    .expect("analysis finishes");
    // 10 analysed frames a second over the 58 s of the first seven GOPs.
    assert!(done["frames_inferred"].as_u64().unwrap() >= 500, "{done}");

    let summary: Value = serde_json::from_str(
        run_python(
            &server,
            "detect.py",
            &[
                "events",
                "kinema-events",
                "market-street",
                "first",
                repo_root()
                    .join("docs/detection-event.schema.json")
                    .to_str()
                    .unwrap(),
            ],
        )
        .trim(),
    )
    .unwrap();
    let seen: Vec<i64> = summary["seen_frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    // Only the first loop of the clip.
    let seen: Vec<i64> = seen.into_iter().filter(|f| *f < 1798).collect();
    let near = |f: i64, (a, b): (i64, i64)| f >= a - 15 && f <= b + 15;
    for f in &seen {
        assert!(
            CYCLIST_FRAMES.iter().any(|r| near(*f, *r)),
            "a bicycle counted at frame {f}, where the clip has none: {summary}"
        );
    }
    let ranges_hit = CYCLIST_FRAMES
        .iter()
        .filter(|r| seen.iter().any(|f| near(*f, **r)))
        .count();
    assert!(
        ranges_hit >= 3,
        "bicycles seen in {ranges_hit} of 4 ranges: {summary}"
    );
    let crossings = summary["crossings"].as_array().unwrap();
    assert!(
        crossings.iter().any(|c| {
            let f = c[0].as_i64().unwrap();
            c[1] == "street" && c[3] == "bicycle" && near(f, (1480, 1560))
        }),
        "the cyclist at 50 s crosses the demo line: {summary}"
    );

    // The first event's replay link opens HLS at that event's fragment.
    let first = &summary["first"];
    let link = first["replay_url"].as_str().unwrap();
    let path = link
        .strip_prefix(&server.url())
        .expect("link to this server");
    let (code, body) = api(&server, "GET", path, None);
    assert_eq!(code, 303, "{body}");
    let master = body["HLSStreamingSessionURL"].as_str().unwrap().to_string();
    let master_text = read_to_string(
        Command::new("curl")
            .args(["-sSf", &master])
            .output()
            .unwrap()
            .stdout
            .as_slice(),
    );
    let media_path = master_text
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .expect("a media playlist")
        .to_string();
    let media_url = format!(
        "{}/hls/v1/{}",
        server.url(),
        media_path.trim_start_matches("./")
    );
    let media = read_to_string(
        Command::new("curl")
            .args(["-sSf", &media_url])
            .output()
            .unwrap()
            .stdout
            .as_slice(),
    );
    let seq: u64 = media
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .expect("media sequence")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        seq,
        first["fragment_number"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        "{media}"
    );

    // samples/demo.toml's queue hands the events out and its channel
    // archives each of them once.
    let objects = dir.path().join("data/objects/buckets");
    let out = run_python(
        &server,
        "delivery_channels.py",
        &[
            "events",
            objects.to_str().unwrap(),
            "kinema-events",
            "kinema-events-workers",
            "kinema-events-archive",
            "kinema-events",
        ],
    );
    assert!(out.contains("events ok"), "{out}");

    // `kinema events tail` prints the same events.
    let out = Command::new(env!("CARGO_BIN_EXE_kinema"))
        .args([
            "events",
            "tail",
            "--from-start",
            "--count",
            "3",
            "--endpoint",
            &server.url(),
        ])
        .env("KINEMA_ACCESS_KEY_ID", KEY_ID)
        .env("KINEMA_SECRET_ACCESS_KEY", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["id"], first["id"]);
    assert!(
        metric(
            &server,
            "kinema_detector_frames_inferred_total",
            "market-street"
        )
        .unwrap()
            >= 500.0
    );
}

#[test]
fn a_slow_model_drops_frames_while_ingest_keeps_every_fragment() {
    let dir = tempfile::tempdir().unwrap();
    let model = build_model("slow-model", dir.path());
    let config = format!(
        "[detection]\nintra_threads = 1\n\n[detectors.slow]\nmodel = {:?}\ndetections_per_second = 30\n",
        model.display().to_string()
    );
    let server = Server::start_with_config(&dir.path().join("data"), &config);
    create_stream(&server, "slow", 24);
    // 10 s of live 30 fps video, a fragment every 0.5 s.
    let acks = put_with_gst_curl(&server, "slow", 300, 15, true);
    let persisted = acks_of(&acks, "PERSISTED");
    assert_eq!(persisted.len(), 20, "{acks:?}");
    assert!(acks_of(&acks, "ERROR").is_empty(), "{acks:?}");
    let listed: Value =
        serde_json::from_str(&run_python(&server, "kv.py", &["list", "slow"])).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(20), "{listed}");
    let dropped = wait_for(Duration::from_secs(30), || {
        metric(&server, "kinema_detector_frames_dropped_total", "slow").filter(|d| *d > 0.0)
    });
    assert!(dropped.is_some(), "no frames dropped\n{}", server.log());
    let (_, s) = api(&server, "GET", "/v1/detectors/slow", None);
    assert!(s["fragments_dropped"].as_u64().unwrap() > 0, "{s}");
    assert!(
        s["frames_inferred"].as_u64().unwrap() < s["frames_sampled"].as_u64().unwrap(),
        "{s}"
    );
}

/// The event record of `kinema-detect`, one of each kind and with the
/// optional members absent and present, against the published schema
/// (`docs/detection-event.schema.json`) in Python's jsonschema.
#[test]
fn detection_events_of_every_kind_match_the_published_schema() {
    use kinema_detect::Observation;
    use kinema_detect::{BBox, Crossing, DetectionEvent, Direction, EventSource, FrameInfo};
    let labels: Vec<String> = ["person", "bicycle"].map(String::from).to_vec();
    let classes = vec!["bicycle".to_string()];
    let source = EventSource {
        stream: "cam.1_a-b",
        model: "ssdlite_mobilenet_v2_coco",
        threshold: 0.5,
        classes: &classes,
        labels: &labels,
        public_url: "https://kinema.example:4566/",
    };
    let observations = [
        Observation::Count {
            in_view: 0,
            previous: None,
        },
        Observation::Count {
            in_view: 3,
            previous: Some(2),
        },
        Observation::Crossing {
            crossing: Crossing {
                line: "gate".into(),
                track: 4,
                direction: Direction::BToA,
            },
            class: 1,
            total_a_to_b: 0,
            total_b_to_a: 1,
        },
        Observation::Detection {
            track: 4,
            class: 1,
            score: 0.93,
            bbox: BBox {
                x0: 0.0,
                y0: 0.25,
                x1: 0.5,
                y1: 1.0,
            },
        },
    ];
    let mut lines = String::new();
    for (i, fragment_number) in [None, Some(42u64)].into_iter().enumerate() {
        let frame = FrameInfo {
            ts_ms: 1_764_700_000_000 + i as i64 * 33,
            fragment_number,
            decoded_at_ms: 1_764_700_000_050,
        };
        for o in &observations {
            let e = DetectionEvent::new(&source, frame, o);
            lines.push_str(std::str::from_utf8(&e.to_json()).unwrap());
            lines.push('\n');
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    std::fs::write(&path, lines).unwrap();
    let out = Command::new(python())
        .arg(repo_root().join("tests/python/detect.py"))
        .arg("validate")
        .arg(repo_root().join("docs/detection-event.schema.json"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], 8, "{v}");
}
