//! Video streams: control plane, PutMedia, GetMedia, ListFragments,
//! GetMediaForFragmentList, authentication, crash recovery.

use std::io::{BufRead, BufReader, Read, Write};

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

fn json(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn boto3_drives_the_whole_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let out = run_python(&server, "kv.py", &["control_plane"]);
    assert!(out.contains("control plane ok"));
}

#[test]
fn the_aws_cli_creates_and_lists_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let run = |args: &[&str]| run_aws(&server, args);
    let (ok, out, err) = run(&[
        "kinesisvideo",
        "create-stream",
        "--stream-name",
        "cli-cam",
        "--data-retention-in-hours",
        "1",
    ]);
    assert!(ok, "{err}");
    assert!(
        json(&out)["StreamARN"]
            .as_str()
            .unwrap()
            .contains("cli-cam")
    );
    let (ok, out, err) = run(&["kinesisvideo", "list-streams"]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["StreamInfoList"][0]["StreamName"], "cli-cam");
    let (ok, _, err) = run(&["kinesisvideo", "describe-stream", "--stream-name", "absent"]);
    assert!(!ok);
    assert!(err.contains("ResourceNotFoundException"), "{err}");
}

/// The README's zero-install producer: gst-launch piped into curl's SigV4
/// PutMedia. Every fragment is acknowledged and reads back frame for frame.
#[test]
fn gst_launch_into_curl_stores_fragments_that_play_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    create_stream(&server, "cam", 24);
    let acks = put_with_gst_curl(&server, "cam", 90, 30, true);
    let persisted: Vec<String> = acks_of(&acks, "PERSISTED")
        .iter()
        .map(|a| a["FragmentNumber"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(persisted.len(), 3, "acks: {acks:?}");
    assert_eq!(acks_of(&acks, "BUFFERING").len(), 3);
    assert_eq!(acks_of(&acks, "RECEIVED").len(), 3);
    assert!(acks_of(&acks, "ERROR").is_empty());
    assert!(
        persisted.windows(2).all(|w| w[0] < w[1]),
        "fragment numbers increase: {persisted:?}"
    );

    // GetMedia from the start, read by ffprobe and GStreamer's matroskademux.
    let file = dir.path().join("earliest.mkv");
    let out = json(&run_python(
        &server,
        "kv.py",
        &["getmedia", "cam", "EARLIEST", "", file.to_str().unwrap()],
    ));
    assert_eq!(out["fragments"], serde_json::json!(persisted));
    assert_eq!(ffprobe_frames(&file), 90);
    let pts = gst_demux_pts(&file);
    assert_eq!(pts.len(), 90, "matroskademux frames");
    // Timestamps as sent: 30 fps from the producer start timestamp on.
    let pts: Vec<f64> = pts.iter().map(|p| gst_time_seconds(p)).collect();
    for w in pts.windows(2) {
        assert!(
            (w[1] - w[0] - 1.0 / 30.0).abs() < 0.002,
            "frame spacing {:?}",
            w
        );
    }
    let tag_names: Vec<&str> = out["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t[0].as_str().unwrap())
        .collect();
    for t in [
        "FRAGMENT_NUMBER",
        "SERVER_TIMESTAMP",
        "PRODUCER_TIMESTAMP",
        "MILLIS_BEHIND_NOW",
        "CONTINUATION_TOKEN",
    ] {
        assert!(tag_names.contains(&t), "missing tag {t}: {tag_names:?}");
    }

    // ListFragments, with and without a time range, paged two at a time.
    let all = json(&run_python(&server, "kv.py", &["list", "cam"]));
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 3);
    let first_producer = all[0]["producer"].as_f64().unwrap();
    assert!(
        (pts[0] - first_producer).abs() < 0.002,
        "first frame at the producer timestamp: {} vs {first_producer}",
        pts[0]
    );
    for (f, n) in all.iter().zip(&persisted) {
        assert_eq!(f["number"], *n);
        assert!(
            (900..=1100).contains(&f["length_ms"].as_i64().unwrap()),
            "{f}"
        );
    }
    // botocore sends REST-JSON timestamps in whole seconds, so ranges and
    // selectors are chosen to be unambiguous at that precision.
    let p1 = all[1]["producer"].as_f64().unwrap();
    let p2 = all[2]["producer"].as_f64().unwrap();
    let ranged = json(&run_python(
        &server,
        "kv.py",
        &[
            "list",
            "cam",
            "PRODUCER_TIMESTAMP",
            &p1.floor().to_string(),
            &p2.ceil().to_string(),
        ],
    ));
    let ranged: Vec<&Value> = ranged
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["number"])
        .collect();
    assert_eq!(
        ranged,
        [&all[1]["number"], &all[2]["number"]],
        "inclusive range holds fragments 2 and 3"
    );
    let s0 = all[0]["server"].as_f64().unwrap();
    let by_server = json(&run_python(
        &server,
        "kv.py",
        &[
            "list",
            "cam",
            "SERVER_TIMESTAMP",
            &(s0 - 10.0).to_string(),
            &s0.ceil().to_string(),
        ],
    ));
    assert_eq!(by_server[0]["number"], persisted[0]);

    // Every start selector starts at the right fragment.
    let start = |sel: &str, arg: &str| -> Vec<String> {
        let f = dir.path().join("sel.mkv");
        let out = json(&run_python(
            &server,
            "kv.py",
            &["getmedia", "cam", sel, arg, f.to_str().unwrap()],
        ));
        out["fragments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(start("FRAGMENT_NUMBER", &persisted[1]), persisted[1..]);
    assert_eq!(start("CONTINUATION_TOKEN", &persisted[0]), persisted[1..]);
    assert_eq!(
        start("PRODUCER_TIMESTAMP", &p1.ceil().to_string()),
        persisted[1..]
    );
    let s2 = all[2]["server"].as_f64().unwrap();
    assert_eq!(
        start("SERVER_TIMESTAMP", &s2.ceil().to_string()),
        persisted[2..]
    );
    assert!(
        start("NOW", "").is_empty(),
        "NOW waits for new fragments; none come"
    );

    // GetMediaForFragmentList returns exactly the fragments asked for.
    let f = dir.path().join("list.mkv");
    let out = json(&run_python(
        &server,
        "kv.py",
        &[
            "fragment_list",
            "cam",
            f.to_str().unwrap(),
            &persisted[2],
            &persisted[0],
        ],
    ));
    assert_eq!(
        out["fragments"],
        serde_json::json!([persisted[2], persisted[0]])
    );
    assert_eq!(ffprobe_frames(&f), 60);

    run_python(&server, "kv.py", &["errors", "cam"]);

    // Metrics saw the upload.
    let metrics = http_get(&server, "/metrics");
    assert!(
        metrics.contains("kinema_incoming_fragments_total{stream=\"cam\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kinema_incoming_bytes_total{stream=\"cam\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kinema_persisted_ack_latency_seconds_count 3"),
        "{metrics}"
    );
}

#[test]
fn get_media_now_streams_fragments_as_they_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    create_stream(&server, "live", 1);
    let producer = gst_curl_command(&server, "live", 60, 30, true);
    let out = json(&run_python(
        &server,
        "kv.py",
        &["live", "live", &producer, "2"],
    ));
    assert_eq!(out["fragments"].as_array().unwrap().len(), 2);
}

#[test]
fn kinema_put_media_uploads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    create_stream(&server, "file-cam", 1);
    let file = dir.path().join("clip.mkv");
    make_clip(&file, 120, 30);
    let out = Command::new(env!("CARGO_BIN_EXE_kinema"))
        .args([
            "put-media",
            "--stream",
            "file-cam",
            "--endpoint",
            &server.url(),
        ])
        .arg(&file)
        .env("KINEMA_ACCESS_KEY_ID", KEY_ID)
        .env("KINEMA_SECRET_ACCESS_KEY", SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("4 fragments received, 4 persisted, 0 errors"),
        "{stderr}"
    );
    let listed = json(&run_python(&server, "kv.py", &["list", "file-cam"]));
    assert_eq!(listed.as_array().unwrap().len(), 4);
}

/// `kinema` as a client run by a user: nothing from the test's own
/// environment or home, only `env`.
fn kinema_client(home: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kinema"));
    cmd.args(args).env("HOME", home).env("RUST_BACKTRACE", "0");
    for var in [
        "KINEMA_ACCESS_KEY_ID",
        "KINEMA_SECRET_ACCESS_KEY",
        "KINEMA_SESSION_TOKEN",
        "KINEMA_ENDPOINT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn kinema_put_media_finds_aws_credentials_and_takes_mp4_and_raw_h264() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    create_stream(&server, "cli", 1);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mp4 = dir.path().join("clip.mp4");
    make_mp4(&mp4, 90, 30);
    // A raw H.264 byte stream (no container, no timestamps), as cameras dump.
    let h264 = dir.path().join("clip.h264");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(&mp4)
        .args(["-c", "copy", "-bsf:v", "h264_mp4toannexb", "-f", "h264"])
        .arg(&h264)
        .status()
        .unwrap();
    assert!(status.success());

    // Without any credentials: an error that says where to put them.
    let (ok, err) = kinema_client(&home, &[], &["put-media", "--stream", "cli", "x.mp4"]);
    assert!(!ok);
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");

    // The AWS variables and AWS_ENDPOINT_URL, as the README's "Try it"
    // exports them; an MP4 file.
    let url = server.url();
    let aws_env = [
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", url.as_str()),
    ];
    let mp4_arg = mp4.to_str().unwrap();
    let (ok, err) = kinema_client(&home, &aws_env, &["put-media", "--stream", "cli", mp4_arg]);
    assert!(ok, "{err}");
    assert!(
        err.contains("2 fragments received, 2 persisted, 0 errors"),
        "{err}"
    );

    // A profile of ~/.aws/credentials chosen with AWS_PROFILE, its endpoint
    // and region in ~/.aws/config; a raw H.264 file.
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    std::fs::write(
        home.join(".aws/credentials"),
        format!("[default]\naws_access_key_id = WRONG\naws_secret_access_key = wrong\n\n[cams]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    std::fs::write(
        home.join(".aws/config"),
        format!("[profile cams]\nregion = us-east-1\nendpoint_url = {url}\n"),
    )
    .unwrap();
    let h264_arg = h264.to_str().unwrap();
    let (ok, err) = kinema_client(
        &home,
        &[("AWS_PROFILE", "cams")],
        &["put-media", "--stream", "cli", h264_arg],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("2 fragments received, 2 persisted, 0 errors"),
        "{err}"
    );
    // The default profile's key is not the server's: its refusal is shown.
    let (ok, err) = kinema_client(
        &home,
        &[("AWS_ENDPOINT_URL", url.as_str())],
        &["events", "tail", "--count", "1"],
    );
    assert!(!ok);
    assert!(
        err.contains("UnrecognizedClientException") || err.contains("NotAuthorized"),
        "{err}"
    );

    // Every frame of both uploads is stored, with the file's spacing.
    let listed = json(&run_python(&server, "kv.py", &["list", "cli"]));
    assert_eq!(listed.as_array().unwrap().len(), 4, "{listed}");
    // (One Matroska segment per track header: get-media cuts them apart.)
    let out = dir.path().join("cli.mkv");
    let (ok, err) = kinema_client(
        &home,
        &aws_env,
        &["get-media", "--stream", "cli", "-o", out.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    let mut frames = 0;
    for n in 1..=2 {
        let f = if n == 1 {
            out.clone()
        } else {
            dir.path().join(format!("cli-{n}.mkv"))
        };
        if f.exists() {
            frames += ffprobe_frames(&f);
        }
    }
    assert_eq!(frames, 180, "{err}");

    // A refused upload: the server's code and reason reach the user.
    let bad = dir.path().join("bad.mkv");
    let mut bytes = vec![0x1a, 0x45, 0xdf, 0xa3, 0x00, 0x00, 0x00, 0x00];
    bytes.extend(std::iter::repeat_n(0x55u8, 4096));
    std::fs::write(&bad, bytes).unwrap();
    let (ok, err) = kinema_client(
        &home,
        &aws_env,
        &["put-media", "--stream", "cli", bad.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(err.contains("4006 INVALID_MKV_DATA: "), "{err}");
    // Not a video at all: said before anything is sent.
    let junk = dir.path().join("notes.txt");
    std::fs::write(&junk, "not a video\n".repeat(100)).unwrap();
    let (ok, err) = kinema_client(
        &home,
        &aws_env,
        &["put-media", "--stream", "cli", junk.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(err.contains("cannot read"), "{err}");
    // A stream that does not exist: the AWS error, typed.
    let (ok, err) = kinema_client(&home, &aws_env, &["put-media", "--stream", "nope", mp4_arg]);
    assert!(!ok);
    assert!(err.contains("404 ResourceNotFoundException"), "{err}");
}

/// `H:MM:SS.nnnnnnnnn` as GStreamer prints a clock time, in seconds.
fn gst_time_seconds(t: &str) -> f64 {
    let parts: Vec<f64> = t.trim().split(':').map(|p| p.parse().unwrap()).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

fn make_clip(path: &std::path::Path, frames: u32, gop: u32) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} > {}",
            gst_producer(frames, gop, false),
            path.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
}

fn http_get(server: &Server, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_to_string(&mut s)
}

/// Sends `body` as a chunked PutMedia upload over a raw socket (no
/// signature: the caller signs with curl where it matters; this helper is
/// for unauthenticated and broken-connection cases), returning the socket.
fn raw_put_media(server: &Server, stream: &str, auth: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        s,
        "POST /putMedia HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nx-amzn-stream-name: {stream}\r\n\
         x-amzn-fragment-timecode-type: RELATIVE\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n{auth}\r\n",
        server.port
    )
    .unwrap();
    s
}

#[test]
fn unsigned_and_badly_signed_requests_get_403_in_the_aws_shape() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    // No signature at all.
    let mut s = raw_put_media(&server, "x", "");
    write!(s, "0\r\n\r\n").unwrap();
    let resp = read_to_string(&mut s);
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(
        resp.to_lowercase()
            .contains("x-amzn-errortype: notauthorizedexception"),
        "{resp}"
    );
    assert!(
        resp.contains("\"__type\":\"NotAuthorizedException\""),
        "{resp}"
    );

    // A stale date, correctly signed otherwise (curl signs at its own clock;
    // the server must refuse a date over 15 minutes away).
    let stale = curl_signed(
        &server,
        SECRET,
        "/listStreams",
        &["-H", "X-Amz-Date: 20200101T000000Z", "-d", "{}"],
    );
    assert!(stale.ends_with("403"), "{stale}");
    assert!(stale.contains("NotAuthorizedException"), "{stale}");

    // curl's own signature is accepted; the same request signed with a
    // wrong secret is not.
    let signed = curl_signed(&server, SECRET, "/listStreams", &["-d", "{}"]);
    assert!(signed.ends_with("200"), "{signed}");
    let wrong = curl_signed(&server, "wrong-secret", "/listStreams", &["-d", "{}"]);
    assert!(wrong.ends_with("403"), "{wrong}");
    // The health endpoint needs no signature.
    assert!(http_get(&server, "/health").starts_with("HTTP/1.1 200"));
}

/// A POST to `path` signed by curl's `--aws-sigv4` with `secret`; returns
/// the response body followed by the HTTP status code.
fn curl_signed(server: &Server, secret: &str, path: &str, extra: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "%{http_code}"])
        .args(["--aws-sigv4", "aws:amz:us-east-1:kinesisvideo"])
        .args(["--user", &format!("{KEY_ID}:{secret}"), "-X", "POST"])
        .args(extra)
        .arg(format!("{}{path}", server.url()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An upload that goes quiet gets IDLE keep-alives, signed by Kinema's own
/// signer with `UNSIGNED-PAYLOAD` over a raw socket.
#[test]
fn a_quiet_upload_gets_idle_acks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    create_stream(&server, "quiet", 1);
    let uri = format!("{}/putMedia", server.url());
    let host = format!("127.0.0.1:{}", server.port);
    let mut req = http::Request::post(&uri)
        .header("host", &host)
        .header("x-amzn-stream-name", "quiet")
        .header("x-amzn-fragment-timecode-type", "RELATIVE")
        .header("transfer-encoding", "chunked")
        .body(())
        .unwrap();
    kinema_server::put_media::sign_request(
        &mut req,
        KEY_ID,
        SECRET,
        "us-east-1",
        "kinesisvideo",
        None,
    )
    .unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(s, "POST /putMedia HTTP/1.1\r\n").unwrap();
    for (k, v) in req.headers() {
        write!(s, "{k}: {}\r\n", v.to_str().unwrap()).unwrap();
    }
    write!(s, "\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    let mut idle = 0;
    while idle < 1 && reader.read_line(&mut line).unwrap() > 0 {
        if line.contains("\"EventType\":\"IDLE\"") {
            idle += 1;
        }
        line.clear();
    }
    assert_eq!(
        idle, 1,
        "an IDLE ack arrives while the producer sends nothing"
    );
    write!(s, "0\r\n\r\n").unwrap();
}

/// A live producer with a wrong secret is refused at once, not after the
/// server has read (and buffered) its stream.
#[test]
fn a_streaming_upload_with_a_wrong_secret_gets_403_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    create_stream(&server, "cam", 1);
    // An endless live source: if the server waited for the body, curl would
    // hang until `timeout` ends it with status 124.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gst-launch-1.0 -q videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1,format=I420 \
             ! x264enc tune=zerolatency ! h264parse ! matroskamux streamable=true ! fdsink fd=1 \
             | timeout 60 curl -sS -o /dev/null -w '%{{http_code}}' --aws-sigv4 'aws:amz:us-east-1:kinesisvideo' \
               --user {KEY_ID}:wrong-secret -X POST -T - -H 'x-amzn-stream-name: cam' \
               -H 'x-amzn-fragment-timecode-type: RELATIVE' {}/putMedia; echo \" curl=$?\"",
            server.url()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("403"), "{text}");
    assert!(
        !text.contains("curl=124"),
        "the refusal came before the stream ended: {text}"
    );
}

/// Each PutMedia rule, broken on purpose through the real server, gets its
/// documented ErrorId, after the fragments before the violation are stored.
#[test]
fn protocol_violations_get_their_error_ids_over_http() {
    use kinema_mkv::{element, ids, uint_element};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    create_stream(&server, "rules", 1);
    let header = |tracks: u64| {
        let mut all = Vec::new();
        for n in 1..=tracks {
            let mut entry = Vec::new();
            uint_element(&mut entry, ids::TRACK_NUMBER, n);
            uint_element(&mut entry, ids::TRACK_TYPE, 1);
            element(&mut entry, ids::CODEC_ID, b"V_MPEG4/ISO/AVC");
            element(&mut all, ids::TRACK_ENTRY, &entry);
        }
        let mut doc = kinema_mkv::ebml_header();
        doc.extend(kinema_mkv::segment_header(None));
        doc.extend(kinema_mkv::info(1_000_000));
        element(&mut doc, ids::TRACKS, &all);
        doc
    };
    let frame = [0u8; 200];
    let cluster = |tc: u64, track: u64, last_offset: i16| {
        kinema_mkv::cluster(
            tc,
            [
                (track, 0, 0x80, &frame[..]),
                (track, last_offset, 0, &frame[..]),
            ],
        )
    };
    let cases: Vec<(&str, Vec<u8>, u64, usize)> = vec![
        (
            "more than three tracks",
            [header(4), cluster(0, 1, 33)].concat(),
            4012,
            0,
        ),
        (
            "undeclared track",
            [header(1), cluster(0, 1, 33), cluster(1000, 2, 33)].concat(),
            4010,
            1,
        ),
        (
            "timecode going backwards",
            [header(1), cluster(5000, 1, 33), cluster(1000, 1, 33)].concat(),
            4004,
            1,
        ),
        (
            "fragment over 10 s",
            [header(1), cluster(0, 1, 33), cluster(1000, 1, 11_000)].concat(),
            4002,
            1,
        ),
        (
            "blocks before tracks",
            [
                kinema_mkv::ebml_header(),
                kinema_mkv::segment_header(None),
                cluster(0, 1, 33),
            ]
            .concat(),
            4006,
            0,
        ),
    ];
    for (what, doc, code, kept) in cases {
        let file = dir.path().join("case.mkv");
        std::fs::write(&file, &doc).unwrap();
        let acks = curl_put_file(&server, "rules", &file);
        let errors = acks_of(&acks, "ERROR");
        assert_eq!(errors.len(), 1, "{what}: {acks:?}");
        assert_eq!(errors[0]["ErrorId"], code, "{what}");
        assert_eq!(acks_of(&acks, "PERSISTED").len(), kept, "{what}: {acks:?}");
    }
}

/// PutMedia through curl with the body from a file.
fn curl_put_file(server: &Server, stream: &str, file: &std::path::Path) -> Vec<Value> {
    let out = Command::new("curl")
        .args(["-sS", "-N", "--aws-sigv4", "aws:amz:us-east-1:kinesisvideo"])
        .args(["--user", &format!("{KEY_ID}:{SECRET}"), "-X", "POST"])
        .args([
            "-H",
            &format!("x-amzn-stream-name: {stream}"),
            "-H",
            "x-amzn-fragment-timecode-type: RELATIVE",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("{}/putMedia", server.url()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_acks(&out.stdout)
}

#[test]
fn garbage_gets_an_error_ack_and_the_server_stays_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    create_stream(&server, "bad", 1);
    let junk = dir.path().join("junk.bin");
    std::fs::write(
        &junk,
        b"this is certainly not a matroska stream".repeat(100),
    )
    .unwrap();
    let acks = curl_put_file(&server, "bad", &junk);
    let errors = acks_of(&acks, "ERROR");
    assert_eq!(errors.len(), 1, "{acks:?}");
    assert_eq!(errors[0]["ErrorId"], 4006);

    // A second MKV segment in one session: the first segment's fragments
    // are kept, then ERROR.
    let clip = dir.path().join("clip.mkv");
    make_clip(&clip, 60, 30);
    let mut twice = std::fs::read(&clip).unwrap();
    twice.extend(std::fs::read(&clip).unwrap());
    let twice_file = dir.path().join("twice.mkv");
    std::fs::write(&twice_file, &twice).unwrap();
    let acks = curl_put_file(&server, "bad", &twice_file);
    assert_eq!(acks_of(&acks, "PERSISTED").len(), 2, "{acks:?}");
    assert_eq!(acks_of(&acks, "ERROR")[0]["ErrorId"], 4006);

    // An unknown stream is refused before any media is read.
    let text = curl_signed(
        &server,
        SECRET,
        "/putMedia",
        &[
            "-H",
            "x-amzn-stream-name: nope",
            "-H",
            "x-amzn-fragment-timecode-type: RELATIVE",
            "--data-binary",
            "@/dev/null",
        ],
    );
    assert!(
        text.contains("ResourceNotFoundException") && text.ends_with("404"),
        "{text}"
    );
    assert!(http_get(&server, "/health").starts_with("HTTP/1.1 200"));
    let metrics = http_get(&server, "/metrics");
    assert!(
        metrics.contains("kinema_put_media_errors_total{stream=\"bad\",code=\"4006\"} 2"),
        "{metrics}"
    );
}

#[test]
fn a_truncated_upload_keeps_every_complete_fragment() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    create_stream(&server, "cut", 1);
    let clip = dir.path().join("clip.mkv");
    make_clip(&clip, 150, 30);
    let bytes = std::fs::read(&clip).unwrap();
    // Cut inside the fifth cluster (each cluster starts with 1F 43 B6 75).
    let clusters: Vec<usize> = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == [0x1F, 0x43, 0xB6, 0x75])
        .map(|(i, _)| i)
        .collect();
    assert_eq!(clusters.len(), 5);
    let cut = clusters[4] + 200;
    let truncated = dir.path().join("truncated.mkv");
    std::fs::write(&truncated, &bytes[..cut]).unwrap();
    // A clean end after a cut: four complete fragments, then ERROR for the torn one.
    let acks = curl_put_file(&server, "cut", &truncated);
    assert_eq!(acks_of(&acks, "PERSISTED").len(), 4, "{acks:?}");
    assert_eq!(acks_of(&acks, "ERROR").len(), 1, "{acks:?}");

    // A connection dropped mid-upload: curl streams the cut file from a pipe
    // that stays open, then is killed, so the chunked body never ends.
    create_stream(&server, "dropped", 1);
    let mut child = Command::new("curl")
        .args(["-sS", "-N", "--aws-sigv4", "aws:amz:us-east-1:kinesisvideo"])
        .args([
            "--user",
            &format!("{KEY_ID}:{SECRET}"),
            "-X",
            "POST",
            "-T",
            "-",
        ])
        .args([
            "-H",
            "x-amzn-stream-name: dropped",
            "-H",
            "x-amzn-fragment-timecode-type: RELATIVE",
        ])
        .arg(format!("{}/putMedia", server.url()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&bytes[..cut]).unwrap();
    stdin.flush().unwrap();
    // curl blocks reading its stdin, so watch the server, not curl's output.
    let count = || {
        json(&run_python(&server, "kv.py", &["list", "dropped"]))
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(
        wait_for(Duration::from_secs(20), || (count() == 4).then_some(())),
        Some(())
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(stdin);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(), 4, "the torn fifth fragment is never stored");
    assert!(http_get(&server, "/health").starts_with("HTTP/1.1 200"));
}

/// PERSISTED is sent only after the fragment object, its directory entry and
/// its index record are on disk: the server's system calls, traced with
/// strace, show fdatasync(object), fsync(directory) and fdatasync(index)
/// before the write of each PERSISTED ack.
#[test]
fn persisted_acks_follow_the_fsyncs_of_object_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    create_stream(&server, "durable", 1);
    let trace = dir.path().join("strace.log");
    let mut strace = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-s",
            "120",
            "-e",
            "trace=fsync,fdatasync,write,writev,sendto",
            "-o",
        ])
        .arg(&trace)
        .args(["-p", &server.child.id().to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("strace (installed by scripts/setup.sh)");
    // Attached once a /health response shows up in the trace.
    let attached = wait_for(Duration::from_secs(20), || {
        http_get(&server, "/health");
        std::fs::read_to_string(&trace)
            .ok()?
            .contains("HTTP/1.1 200 OK")
            .then_some(())
    });
    assert!(attached.is_some(), "strace attached to the server");
    let acks = put_with_gst_curl(&server, "durable", 90, 30, false);
    let numbers: Vec<String> = acks_of(&acks, "PERSISTED")
        .iter()
        .map(|a| a["FragmentNumber"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(numbers.len(), 3);
    let _ = Command::new("kill")
        .args(["-TERM", &strace.id().to_string()])
        .status();
    let _ = strace.wait();
    let log = std::fs::read_to_string(&trace).unwrap();
    let merged = merge_unfinished(&log);
    let lines: Vec<&str> = merged.iter().map(String::as_str).collect();
    for n in &numbers {
        let ack = lines
            .iter()
            .position(|l| l.contains("PERSISTED") && l.contains(n.as_str()))
            .unwrap_or_else(|| panic!("no ack write for {n} in the trace"));
        let object = lines[..ack]
            .iter()
            .rposition(|l| {
                l.contains("fdatasync(") && l.contains(&format!("{n}.mkv>")) && l.ends_with("= 0")
            })
            .unwrap_or_else(|| panic!("fragment {n}: no fdatasync of its object before the ack"));
        let dir_sync = lines[object..ack]
            .iter()
            .position(|l| {
                l.contains("fsync(")
                    && l.contains("/objects/streams/")
                    && !l.contains(".mkv")
                    && l.ends_with("= 0")
            })
            .unwrap_or_else(|| {
                panic!("fragment {n}: no fsync of its directory between object and ack")
            });
        assert!(
            lines[object + dir_sync..ack]
                .iter()
                .any(|l| l.contains("fdatasync(") && l.contains(".idx>") && l.ends_with("= 0")),
            "fragment {n}: no fdatasync of the index between the object and the ack"
        );
    }
}

/// Joins strace's `<unfinished ...>` / `<... resumed>` pairs (system calls
/// interrupted by another thread's output) into one line placed where the
/// call completed, so line order is completion order.
fn merge_unfinished(log: &str) -> Vec<String> {
    let mut pending: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in log.lines() {
        let pid = line.split_whitespace().next().unwrap_or_default();
        if let Some(start) = line.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, start.to_string());
        } else if line.contains("<... ") && line.contains(" resumed>") {
            let rest = line.split(" resumed>").nth(1).unwrap_or_default();
            let start = pending.remove(pid).unwrap_or_default();
            out.push(format!("{start}{rest}"));
        } else {
            out.push(line.to_string());
        }
    }
    out
}

/// SIGKILL during ingest: every fragment acknowledged PERSISTED before the
/// kill is listed and readable after a restart, and nothing else is served.
#[test]
fn kill9_during_ingest_loses_no_persisted_fragment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data);
    create_stream(&server, "crash", 24);
    // A live producer: 1 fragment per second for up to 20 s.
    let mut producer = Command::new("sh")
        .arg("-c")
        .arg(gst_curl_command(&server, "crash", 600, 30, true))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acks = BufReader::new(producer.stdout.take().unwrap());
    let mut persisted = Vec::new();
    let mut line = String::new();
    while persisted.len() < 4 && acks.read_line(&mut line).unwrap() > 0 {
        let ack = json(&line);
        if ack["EventType"] == "PERSISTED" {
            persisted.push(ack["FragmentNumber"].as_str().unwrap().to_string());
        }
        line.clear();
    }
    assert_eq!(persisted.len(), 4);
    server.kill9();
    // Acks already in flight before the kill count too.
    let mut rest = String::new();
    let _ = acks.read_to_string(&mut rest);
    for l in rest.lines().filter(|l| l.contains("PERSISTED")) {
        persisted.push(json(l)["FragmentNumber"].as_str().unwrap().to_string());
    }
    let _ = producer.kill();
    let _ = Command::new("pkill")
        .args(["-f", "videotestsrc is-live=true num-buffers=600"])
        .status();
    let _ = producer.wait();

    let server = Server::start(&data);
    let listed = json(&run_python(&server, "kv.py", &["list", "crash"]));
    let listed: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["number"].as_str().unwrap().to_string())
        .collect();
    for n in &persisted {
        assert!(
            listed.contains(n),
            "persisted fragment {n} missing after restart: {listed:?}"
        );
    }
    // Every listed fragment is whole: read them all back and decode.
    let f = dir.path().join("after.mkv");
    let mut args = vec!["fragment_list", "crash", f.to_str().unwrap()];
    args.extend(listed.iter().map(String::as_str));
    let out = json(&run_python(&server, "kv.py", &args));
    assert_eq!(out["fragments"].as_array().unwrap().len(), listed.len());
    assert_eq!(
        ffprobe_frames(&f),
        30 * listed.len() as u64,
        "every listed fragment decodes fully"
    );
    // New uploads continue the numbering after the recovered fragments.
    let acks = put_with_gst_curl(&server, "crash", 30, 30, false);
    let next = acks_of(&acks, "PERSISTED")[0]["FragmentNumber"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(listed.iter().all(|n| *n < next), "{next} after {listed:?}");
}

/// The signaling-channel control plane through boto3 (create, describe,
/// list with paging, versioned update and delete, endpoints, the error
/// shapes), and the channels surviving a restart.
#[test]
fn signaling_channels_through_boto3_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    assert_eq!(run_python(&server, "channels.py", &[]).trim(), "ok");
    drop(server);
    let server = Server::start(&data);
    let (ok, out, err) = run_aws(&server, &["kinesisvideo", "list-signaling-channels"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["ChannelInfoList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ChannelName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cam-0", "cam-1", "cam-2", "cam-3", "cam-4"]);
}
