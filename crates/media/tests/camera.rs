//! The camera adapter against real GStreamer sources: an in-process RTSP
//! server (with and without credentials, H.264 and an unsupported codec)
//! and a local MP4 file.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use kinema_media::rtsp_server::{RtspServer, test_pattern_launch, write_test_clip};
use kinema_media::{Camera, SourceError, SourceEvent, SourceSpec, Transport};

fn spec(url: String, transport: Transport) -> SourceSpec {
    SourceSpec {
        url,
        username: None,
        password: None,
        transport,
    }
}

fn start(spec: &SourceSpec) -> (Camera, mpsc::Receiver<SourceEvent>) {
    let (tx, rx) = mpsc::sync_channel(1024);
    let cam = Camera::start(
        spec,
        Arc::new(move |ev| {
            let _ = tx.send(ev);
        }),
    )
    .unwrap();
    (cam, rx)
}

/// Collects events until `frames` frames arrived, or fails on an error.
fn frames(rx: &mpsc::Receiver<SourceEvent>, frames: usize) -> (Vec<SourceEvent>, usize) {
    let mut events = Vec::new();
    let mut n = 0;
    while n < frames {
        let ev = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("no event within 20 s");
        match &ev {
            SourceEvent::Frame(_) => n += 1,
            SourceEvent::Error(e) => panic!("source error: {e}"),
            SourceEvent::Eos => break,
            SourceEvent::Track(_) => {}
        }
        events.push(ev);
    }
    (events, n)
}

fn check_stream(events: &[SourceEvent], width: u32, height: u32) {
    let SourceEvent::Track(track) = &events[0] else {
        panic!("the first event is not the track: {:?}", events[0]);
    };
    assert_eq!(track.codec_id, "V_MPEG4/ISO/AVC");
    assert_eq!((track.width, track.height), (width, height));
    // avcC: configurationVersion 1, then profile, compatibility, level.
    assert_eq!(track.codec_private[0], 1);
    let frames: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            SourceEvent::Frame(f) => Some(f),
            _ => None,
        })
        .collect();
    assert!(frames[0].keyframe, "the stream starts at a keyframe");
    assert!(frames.iter().skip(1).any(|f| !f.keyframe));
    // Length-prefixed NAL units (AVC form), not Annex B start codes.
    for f in &frames {
        let len = u32::from_be_bytes(f.data[..4].try_into().unwrap()) as usize;
        assert!(len + 4 <= f.data.len());
    }
    // Wall-clock timestamps, increasing.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(frames[0].pts_ns > now - 60_000_000_000 && frames[0].pts_ns <= now);
    // Decode order: with B-frames presentation times are reordered, but
    // every frame has its own.
    let mut pts: Vec<u64> = frames.iter().map(|f| f.pts_ns).collect();
    pts.sort_unstable();
    assert!(pts.windows(2).all(|w| w[1] > w[0]));
}

#[test]
fn rtsp_camera_over_tcp_and_udp_yields_avc_frames_with_wall_clock_times() {
    let server = RtspServer::start(
        0,
        "/cam",
        &test_pattern_launch(320, 240, 30, 15, 500),
        None,
        true,
    )
    .unwrap();
    for transport in [Transport::Tcp, Transport::Udp] {
        let (_cam, rx) = start(&spec(server.url("/cam"), transport));
        let (events, n) = frames(&rx, 45);
        assert_eq!(n, 45);
        check_stream(&events, 320, 240);
    }
}

#[test]
fn rtsp_credentials_are_sent_and_wrong_ones_are_reported() {
    let server = RtspServer::start(
        0,
        "/cam",
        &test_pattern_launch(160, 120, 15, 15, 200),
        Some(("alice", "s3cret")),
        true,
    )
    .unwrap();
    let mut good = spec(server.url("/cam"), Transport::Tcp);
    good.username = Some("alice".into());
    good.password = Some("s3cret".into());
    let (_cam, rx) = start(&good);
    assert_eq!(frames(&rx, 5).1, 5);

    let mut bad = good.clone();
    bad.password = Some("wrong".into());
    let (_cam, rx) = start(&bad);
    let err = loop {
        match rx.recv_timeout(Duration::from_secs(20)).unwrap() {
            SourceEvent::Error(e) => break e,
            SourceEvent::Frame(_) => panic!("frames with a wrong password"),
            _ => {}
        }
    };
    assert!(matches!(err, SourceError::Unauthorized(_)), "{err:?}");
}

#[test]
fn an_unsupported_codec_and_a_wrong_path_are_reported() {
    let server = RtspServer::start(
        0,
        "/vp8",
        "( videotestsrc is-live=true ! video/x-raw,width=160,height=120 ! vp8enc deadline=1 ! rtpvp8pay name=pay0 pt=96 )",
        None,
        true,
    )
    .unwrap();
    let (_cam, rx) = start(&spec(server.url("/vp8"), Transport::Tcp));
    let err = loop {
        match rx.recv_timeout(Duration::from_secs(20)).unwrap() {
            SourceEvent::Error(e) => break e,
            SourceEvent::Frame(_) => panic!("frames from a VP8 camera"),
            _ => {}
        }
    };
    assert!(
        matches!(err, SourceError::UnsupportedCodec(ref c) if c == "VP8"),
        "{err:?}"
    );

    let (_cam, rx) = start(&spec(server.url("/nothing-here"), Transport::Tcp));
    let err = loop {
        if let SourceEvent::Error(e) = rx.recv_timeout(Duration::from_secs(20)).unwrap() {
            break e;
        }
    };
    assert!(matches!(err, SourceError::NotFound(_)), "{err:?}");
}

#[test]
fn a_file_plays_as_a_camera_at_its_own_pace_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    write_test_clip(&path, 30, 10).unwrap();
    let started = std::time::Instant::now();
    let (_cam, rx) = start(&spec(format!("file://{}", path.display()), Transport::Tcp));
    let (events, n) = frames(&rx, 1000);
    assert_eq!(n, 30, "every frame of the file, then the end");
    check_stream(&events, 176, 144);
    // 30 frames at 30 fps: paced like a camera, not read at disk speed.
    assert!(started.elapsed() >= Duration::from_millis(900));
    let unsupported = kinema_media::Camera::start(
        &spec("http://example.invalid/x".into(), Transport::Tcp),
        Arc::new(|_| {}),
    );
    assert!(matches!(unsupported, Err(SourceError::UnsupportedUrl(_))));
}
