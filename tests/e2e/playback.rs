//! Playback of stored video through boto3 (`kinesis-video-archived-media`)
//! and players nobody here wrote: HLS in fMP4 and MPEG-TS for every mode
//! (ffmpeg, GStreamer's hlsdemux), DASH (ffmpeg), GetClip (ffprobe,
//! qtdemux), GetImages (ffprobe reads the images), and every refusal.
//! The scripted checks live in tests/python/playback.py.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// Known video into `stream` with kinemasink: 320x240 at 30 fps with the
/// running time drawn in, a keyframe every 30 frames, B-frames, 1 s
/// fragments.
fn ingest(server: &Server, stream: &str, frames: u32, live: bool) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec gst-launch-1.0 -q videotestsrc is-live={live} num-buffers={frames} \
             ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! timeoverlay \
             ! x264enc speed-preset=ultrafast key-int-max=30 bframes=2 ! video/x-h264,profile=main \
             ! kinemasink endpoint={} stream-name={stream} fragment-duration=1000 retention-period=5",
            server.url()
        ))
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("KINEMA_ACCESS_KEY_ID", KEY_ID)
        .env("KINEMA_SECRET_ACCESS_KEY", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child, server: &Server) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ingest failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
}

/// Waits (at most 30 s) until `stream` has `n` stored fragments.
fn wait_for_fragments(server: &Server, stream: &str, n: usize) {
    let body = format!(r#"{{"StreamName":"{stream}"}}"#);
    wait_for(Duration::from_secs(30), || {
        let (code, list) = api(server, "POST", "/listFragments", Some(&body));
        (code == 200 && list["Fragments"].as_array()?.len() >= n).then_some(())
    })
    .unwrap_or_else(|| panic!("{stream}: {n} fragments within 30 s"));
}

/// Buffers that reach a fakesink behind `pipeline`, counted by gst-launch.
fn gst_count(pipeline: &str) -> usize {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "timeout 120 gst-launch-1.0 -v {pipeline} ! fakesink silent=false"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{pipeline}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("chain") && l.contains("fakesink"))
        .count()
}

#[test]
fn stored_video_plays_as_hls_dash_clips_and_images() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    finish(ingest(&server, "cam", 300, false), &server);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let report = run_python(
        &server,
        "playback.py",
        &["archive", "cam", "30", out.to_str().unwrap()],
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["frames"], 300, "{report}");
    assert_eq!(report["clip"][0], 300, "{report}");

    // GStreamer's own demuxers: qtdemux over the clip, hlsdemux + tsdemux
    // over an ON_DEMAND MPEG-TS session.
    let clip = out.join("clip.mp4");
    assert_eq!(
        gst_count(&format!(
            "filesrc location={} ! qtdemux ! h264parse",
            clip.display()
        )),
        300
    );
    let ts_url = run_python(&server, "playback.py", &["ondemand-url", "cam", "MPEG_TS"]);
    assert_eq!(
        gst_count(&format!(
            "souphttpsrc location=\"{}\" ! hlsdemux ! tsdemux ! h264parse",
            ts_url.trim()
        )),
        300
    );
    // A session token opens only its own window (issue 15, finding 3).
    let scope = run_python(&server, "playback.py", &["token-scope", "cam"]);
    assert_eq!(scope.trim(), "ok");
}

/// LIVE sessions opened while a camera streams: ffmpeg follows the growing
/// playlist (fMP4 and TS) from its first fragment and receives every frame
/// the camera sent, once and in time order; the DASH manifest of a LIVE
/// session is dynamic.
#[test]
fn live_sessions_follow_the_camera_frame_for_frame() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let camera = ingest(&server, "live", 300, true);
    wait_for_fragments(&server, "live", 1);
    let mut readers = Vec::new();
    for fmt in ["FRAGMENTED_MP4", "MPEG_TS"] {
        let url = run_python(&server, "playback.py", &["live-url", "live", fmt]);
        let file = dir.path().join(format!("{fmt}.mkv"));
        // A live playlist never ends: ffmpeg's HLS demuxer ends its input
        // after ten reloads without a new segment (the camera has stopped).
        let ffmpeg = Command::new("timeout")
            .args(["120", "ffmpeg", "-v", "error", "-live_start_index", "0"])
            .args(["-m3u8_hold_counters", "10", "-i", url.trim()])
            .args(["-c", "copy", "-y"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        readers.push((fmt, ffmpeg, file));
    }
    finish(camera, &server);
    run_python(&server, "playback.py", &["dash-live", "live"]);
    for (fmt, ffmpeg, file) in readers {
        let out = ffmpeg.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{fmt}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // Every frame once: 300 frames spanning 10 s, no repeats, no gaps.
        assert_eq!(ffprobe_frames(&file), 300, "{fmt}");
        let pts = gst_demux_pts(&file);
        assert_eq!(pts.len(), 300, "{fmt}");
        let last = pts
            .iter()
            .filter_map(|p| parse_clock(p))
            .fold(0.0, f64::max);
        let first = pts
            .iter()
            .filter_map(|p| parse_clock(p))
            .fold(f64::MAX, f64::min);
        assert!(
            (last - first - 299.0 / 30.0).abs() < 0.05,
            "{fmt}: frames span {first}..{last}"
        );
    }
}

/// Seconds of a GStreamer clock time `H:MM:SS.NNNNNNNNN`.
fn parse_clock(s: &str) -> Option<f64> {
    let mut parts = s.trim().split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + sec)
}

/// Ranges too long or inverted, LIVE with a range, nothing in range,
/// retention 0, VP8, forged tokens, and the per-stream session limit, each
/// refused in its documented shape.
#[test]
fn playback_refusals_have_the_documented_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(
        &dir.path().join("data"),
        "[video]\nplayback_sessions_per_stream = 3\n",
    );
    finish(ingest(&server, "cam", 60, false), &server);
    create_stream(&server, "empty", 0);
    create_stream(&server, "vp8", 1);
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gst-launch-1.0 -q videotestsrc num-buffers=60 \
             ! video/x-raw,width=160,height=120,framerate=30/1 ! vp8enc keyframe-max-dist=30 \
             ! matroskamux streamable=true ! fdsink fd=1 \
             | curl -sS -N --aws-sigv4 'aws:amz:us-east-1:kinesisvideo' --user {KEY_ID}:{SECRET} \
             -X POST -T - -H 'x-amzn-stream-name: vp8' -H 'x-amzn-fragment-timecode-type: RELATIVE' \
             -H \"x-amzn-producer-start-timestamp: $(date +%s)\" {}/putMedia | grep -c PERSISTED",
            server.url()
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout).trim() != "0",
        "VP8 upload: {}",
        server.log()
    );
    let out = run_python(
        &server,
        "playback.py",
        &["errors", "cam", "empty", "vp8", "3"],
    );
    assert_eq!(out.trim(), "ok");
    assert!(
        api(&server, "GET", "/health", None).0 == 200,
        "the server stays healthy"
    );
}

/// Plays `url` in Debian's Chromium with hls.js (tests/browser).
fn play_in_chromium(url: &str, start_position: &str) -> serde_json::Value {
    let script = repo_root().join("tests/browser/hls_play.mjs");
    let out = Command::new("timeout")
        .args(["120", "node"])
        .arg(&script)
        .args([url, start_position])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hls_play.mjs failed (run scripts/setup.sh for chromium and the npm packages): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap()
}

fn assert_played(result: &serde_json::Value) {
    assert!(result["advanced"].as_f64().unwrap() >= 2.0, "{result}");
    assert!(result["framesDecoded"].as_u64().unwrap() > 0, "{result}");
    assert!(result["mediaError"].is_null(), "{result}");
    let fatal: Vec<_> = result["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["fatal"] == true)
        .collect();
    assert!(fatal.is_empty(), "{result}");
}

/// A browser plays a LIVE_REPLAY session while the camera still streams:
/// hls.js starts at the fragment holding the requested time (its
/// PROGRAM-DATE-TIME), playback advances, and nothing fails; after the
/// upload, an ON_DEMAND MPEG-TS session plays too (hls.js transmuxes it).
#[test]
fn chromium_plays_sessions_with_hls_js_from_the_requested_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let camera = ingest(&server, "street", 300, true);
    wait_for_fragments(&server, "street", 4);
    let replay = run_python(&server, "playback.py", &["replay-url", "street"]);
    let replay: serde_json::Value = serde_json::from_str(&replay).unwrap();
    let result = play_in_chromium(replay["url"].as_str().unwrap(), "0");
    assert_played(&result);
    assert_eq!(
        result["firstFragment"]["programDateTime"], replay["start_ms"],
        "playback starts at the fragment holding the requested time: {result}"
    );
    finish(camera, &server);
    let url = run_python(
        &server,
        "playback.py",
        &["ondemand-url", "street", "MPEG_TS"],
    );
    assert_played(&play_in_chromium(url.trim(), "0"));
}
