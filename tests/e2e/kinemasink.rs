//! `kinemasink`, our GStreamer element, in real `gst-launch-1.0` pipelines:
//! what it stores plays back (GetMedia, ffprobe), a server killed with
//! SIGKILL and restarted mid-stream loses no frame the element sent, and
//! an unreachable server ends in a bus error after buffer-full warnings.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

pub(crate) fn gst(pipeline: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("exec gst-launch-1.0 {pipeline}"))
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("KINEMA_ACCESS_KEY_ID", KEY_ID)
        .env("KINEMA_SECRET_ACCESS_KEY", SECRET);
    cmd
}

/// Live test video: `frames` at 30 fps, a keyframe every `gop`.
pub(crate) fn camera(frames: u32, gop: u32, live: bool, kbps: u32) -> String {
    format!(
        "videotestsrc is-live={live} num-buffers={frames} \
         ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate={kbps} \
         ! video/x-h264,profile=constrained-baseline"
    )
}

/// A `gst-launch-1.0` pipeline in the background (kinemasink's
/// environment), its standard output (bus warnings) read as it comes.
pub(crate) struct Pipeline {
    child: std::process::Child,
    output: std::thread::JoinHandle<String>,
}

impl Pipeline {
    pub(crate) fn start(pipeline: &str) -> Pipeline {
        let mut child = gst(pipeline)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let output = std::thread::spawn(move || read_to_string(stdout));
        Pipeline { child, output }
    }

    /// Waits up to `limit` for the pipeline to end (killing it after);
    /// its exit status if it ended, and everything it printed.
    pub(crate) fn finish(mut self, limit: Duration) -> (Option<std::process::ExitStatus>, String) {
        let status = wait_for(limit, || self.child.try_wait().unwrap());
        if status.is_none() {
            let _ = self.child.kill();
        }
        (status, self.output.join().unwrap())
    }
}

#[test]
fn gst_inspect_documents_every_property() {
    let out = Command::new("gst-inspect-1.0")
        .arg("kinemasink")
        .env("GST_PLUGIN_PATH", plugin_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for prop in [
        "endpoint",
        "stream-name",
        "aws-region",
        "access-key",
        "secret-key",
        "session-token",
        "create-stream-if-missing",
        "retention-period",
        "fragment-duration",
        "storage-size",
        "absolute-fragment-times",
        "retry-timeout",
    ] {
        let line = text
            .lines()
            .find(|l| {
                l.trim_start().starts_with(&format!("{prop} "))
                    || l.trim_start().starts_with(&format!("{prop}:"))
            })
            .unwrap_or_else(|| panic!("{prop} is not documented:\n{text}"));
        let blurb = line.split_once(':').unwrap().1.trim();
        assert!(blurb.len() > 15, "{prop} has no real description: {line}");
    }
}

/// Byte-stream H.264 (x264enc's output) with absolute times, and AVC with
/// relative times, each stored as keyframe-aligned fragments that GetMedia
/// returns and ffprobe decodes frame for frame; the element creates the
/// stream with the retention it was given.
#[test]
fn kinemasink_stores_fragments_that_play_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let endpoint = server.url();
    let runs = [
        ("bytestream", "", "true"),
        (
            "avc",
            "! h264parse ! video/x-h264,stream-format=avc,alignment=au",
            "false",
        ),
    ];
    for (stream, caps, absolute) in runs {
        let out = gst(&format!(
            "-q {} {caps} ! kinemasink endpoint={endpoint} stream-name={stream} \
             fragment-duration=1000 retention-period=5 absolute-fragment-times={absolute}",
            camera(90, 30, true, 500)
        ))
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "{stream}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        let (file, got) = get_media(&server, stream, dir.path());
        assert_eq!(
            got["fragments"].as_array().unwrap().len(),
            3,
            "{stream}: {got}"
        );
        assert_eq!(ffprobe_frames(&file), 90, "{stream}");
        assert_eq!(gst_demux_pts(&file).len(), 90, "{stream}");
    }
    let described = run_python(&server, "kv.py", &["describe", "avc"]);
    let described: Value = serde_json::from_str(&described).unwrap();
    assert_eq!(described["DataRetentionInHours"], 5, "{described}");
}

/// SIGKILL the server mid-stream, restart it on the same port: the element
/// reconnects, resends what was not persisted, the server skips what it
/// already had, and every one of the 300 frames is stored exactly once.
#[test]
fn a_server_killed_mid_stream_loses_no_frame_the_element_sent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data);
    let port = server.port;
    let endpoint = server.url();
    let producer = Pipeline::start(&format!(
        "{} ! kinemasink endpoint={endpoint} stream-name=cam fragment-duration=500 retry-timeout=30",
        camera(300, 15, true, 500)
    ));
    // Let some fragments be persisted, then kill the server hard.
    let listed = wait_for(Duration::from_secs(20), || {
        let out = run_python(&server, "kv.py", &["list", "cam"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        (v.as_array()?.len() >= 3).then_some(v)
    });
    assert!(listed.is_some(), "no fragments: {}", server.log());
    server.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    let server = Server::start_on(&data, port);
    let (status, output) = producer.finish(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "the element did not finish: {status:?}\n{output}\n{}",
        server.log()
    );
    assert!(
        output.contains("resending") || output.contains("retrying"),
        "{output}"
    );
    let (file, _) = get_media(&server, "cam", dir.path());
    assert_eq!(ffprobe_frames(&file), 300, "{}", server.log());
    assert_eq!(demuxed_frames_and_distinct(&file), (300, 300));
}

/// Nobody listens at the endpoint: with a 1 MiB buffer the oldest frames are
/// dropped with a warning, and after the retry timeout the element posts an
/// error, so the pipeline fails instead of hanging.
#[test]
fn an_unreachable_server_gives_buffer_warnings_then_a_pipeline_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = gst(&format!(
        "{} ! kinemasink endpoint=http://127.0.0.1:{port} stream-name=lost \
         create-stream-if-missing=false storage-size=1 retry-timeout=3 fragment-duration=100",
        camera(300, 10, false, 8000)
    ))
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let all = format!("{stdout}\n{stderr}");
    assert!(all.contains("dropped the"), "{all}");
    assert!(all.contains("could not deliver fragments"), "{all}");
}
