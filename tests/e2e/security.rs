//! The server as an attacker finds it: clients that do not authenticate
//! cannot pin memory or hold sockets, and what they send costs no more
//! than its headers (issue 15). Raw sockets, so nothing is hidden by a
//! well-behaved client library.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::*;

/// The server process's resident memory, KiB.
fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads a response head (to the blank line), or what came before the
/// connection closed or the read timed out.
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Whether the server closed the connection (a read ends with EOF or a
/// reset) within the read timeout.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

/// A request head with a claimed body, sent without its body.
fn claim_body(server: &Server, path: &str, length: usize, extra: &str) -> TcpStream {
    let mut s = connect(server);
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {length}\r\n\
         x-amzn-stream-name: cam\r\nx-amzn-fragment-timecode-type: RELATIVE\r\n{extra}\r\n",
        server.port
    )
    .unwrap();
    s
}

/// An Authorization header in the right form for the test key, with a
/// signature that is not the request's.
fn forged_authorization() -> String {
    let now = std::time::SystemTime::now();
    let date = kinema_client_date(now);
    format!(
        "X-Amz-Date: {date}\r\nAuthorization: AWS4-HMAC-SHA256 Credential={KEY_ID}/{}/us-east-1/kinesisvideo/aws4_request, \
         SignedHeaders=host;x-amz-date, Signature={}\r\n",
        &date[..8],
        "0".repeat(64)
    )
}

/// `YYYYMMDD'T'HHMMSS'Z'` for `t`.
fn kinema_client_date(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Finding 1: a PutMedia claiming a 64 MiB body (with any hash, and no
/// signature, or a signature that does not check out) is refused on its
/// headers; the body is never read into memory, so three such uploads
/// pushing 32 MiB each leave the server's memory where it was.
#[test]
fn unauthenticated_bodies_are_refused_on_their_headers_and_pin_no_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    create_stream(&server, "cam", 1);
    let hash = format!("x-amz-content-sha256: {}\r\n", "ab".repeat(32));
    let before = rss_kib(&server);
    let mut uploads: Vec<TcpStream> = Vec::new();
    for extra in [
        hash.clone(),
        format!("{hash}{}", forged_authorization()),
        hash.clone(),
    ] {
        let mut s = claim_body(&server, "/putMedia", 64 << 20, &extra);
        let head = read_head(&mut s);
        assert!(
            head.starts_with("HTTP/1.1 403"),
            "refused at once: {head:?}"
        );
        uploads.push(s);
    }
    // The JSON protocols do not claim a hash: an unknown key is refused
    // before the body is read.
    let mut json = claim_body(
        &server,
        "/listStreams",
        1 << 20,
        &forged_authorization().replace(KEY_ID, "AKIDUNKNOWN"),
    );
    let head = read_head(&mut json);
    assert!(head.starts_with("HTTP/1.1 403"), "{head:?}");

    // Push the claimed bodies anyway, as far as the server lets us.
    let chunk = vec![0u8; 1 << 20];
    for s in &mut uploads {
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        for _ in 0..32 {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    }
    let after = rss_kib(&server);
    eprintln!("server RSS: {before} KiB before, {after} KiB after 3 x 32 MiB pushed");
    assert!(
        after < before + 24 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
    assert!(api(&server, "GET", "/health", None).0 == 200);
}

/// Finding 2: partial headers, a partial body and an idle keep-alive
/// connection are each cut off after their timeout; when the cap on
/// unauthenticated connections is reached, the oldest idle one makes room
/// for the newcomer instead of locking it out.
#[test]
fn slow_and_idle_clients_are_cut_off_and_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(
        &dir.path().join("data"),
        "[limits]\nheader_read_timeout_seconds = 1\nbody_read_timeout_seconds = 1\n\
         max_unauthenticated_connections = 4\n",
    );
    let started = Instant::now();
    // Partial headers.
    let mut partial = connect(&server);
    write!(partial, "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    assert!(
        closed_by_server(&mut partial),
        "partial headers were cut off"
    );
    // A partial body on a route whose signature needs the body.
    let mut slow = claim_body(&server, "/listStreams", 100, &forged_authorization());
    slow.write_all(b"{\"a\":").unwrap();
    let head = read_head(&mut slow);
    assert!(head.starts_with("HTTP/1.1 408"), "{head:?}");
    // An idle keep-alive connection after one request.
    let mut idle = connect(&server);
    write!(idle, "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    assert!(read_head(&mut idle).starts_with("HTTP/1.1 200"));
    assert!(closed_by_server(&mut idle), "an idle connection was closed");
    eprintln!(
        "three slow clients cut off in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    drop(server);

    // With a long header timeout, four silent connections fill the cap on
    // unauthenticated connections; newcomers still get answers, and the
    // silent ones, oldest first, are closed to make room.
    let server = Server::start_with_config(
        &dir.path().join("data2"),
        "[limits]\nheader_read_timeout_seconds = 60\nmax_unauthenticated_connections = 4\n",
    );
    let mut silent: Vec<TcpStream> = (0..4).map(|_| connect(&server)).collect();
    std::thread::sleep(Duration::from_millis(200));
    // Newcomers stay open too (keep-alive), so each one takes a place.
    let mut newcomers = Vec::new();
    for _ in 0..4 {
        let mut s = connect(&server);
        write!(s, "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let head = read_head(&mut s);
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "a newcomer is served: {head:?}\n{}",
            server.log()
        );
        newcomers.push(s);
    }
    for s in &mut silent {
        assert!(closed_by_server(s), "a silent connection made room");
    }
}

/// Sends `body` to `path` signed with the test key; `unsigned` signs it as
/// `UNSIGNED-PAYLOAD` instead of its hash. Returns the status and body.
fn signed_post(server: &Server, path: &str, body: &[u8], unsigned: bool) -> (u16, String) {
    signed_post_scoped(server, path, body, unsigned, ("us-east-1", "kinesisvideo"))
}

fn signed_post_scoped(
    server: &Server,
    path: &str,
    body: &[u8],
    unsigned: bool,
    (region, service): (&str, &str),
) -> (u16, String) {
    let signer = Signer {
        region,
        sign_body: !unsigned,
        ..Signer::from((KEY_ID, SECRET, service))
    };
    signed_raw(
        server,
        ("POST", path),
        &[("content-type", "application/json")],
        body,
        signer,
    )
}

/// Finding 8: a control-plane call must sign its body; `UNSIGNED-PAYLOAD`
/// is for streaming uploads (and bodiless requests) only.
#[test]
fn control_plane_bodies_must_be_signed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (status, resp) = signed_post(&server, "/listStreams", b"{}", false);
    assert_eq!(status, 200, "{resp}");
    let (status, resp) = signed_post(&server, "/listStreams", b"{}", true);
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("InvalidArgumentException"), "{resp}");
    // A signature scoped to another region or service is not one for
    // Kinema, however valid.
    for scope in [("eu-west-1", "kinesisvideo"), ("us-east-1", "s3")] {
        let (status, resp) = signed_post_scoped(&server, "/listStreams", b"{}", false, scope);
        assert_eq!(status, 403, "{scope:?}: {resp}");
        assert!(resp.contains("scoped to a valid region"), "{resp}");
    }
}

/// Finding 7: descriptors do not run out. Under an open-file limit of 256
/// a video stream holds no descriptor between fragments (300 of them are
/// created), data streams are capped, connections are fitted inside the
/// limit with a warning, and the server keeps answering and ingesting.
#[test]
fn many_streams_fit_in_a_small_open_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_open_files(
        &dir.path().join("data"),
        "[data_streams]\nmax_streams = 20\n",
        256,
    );
    assert!(server.log().contains("open-file limit"), "{}", server.log());
    let created = run_python(&server, "kv.py", &["create_many", "cam", "300"]);
    assert_eq!(created.trim(), "300");
    let created = run_python(&server, "ds.py", &["create_many", "feed", "30"]);
    assert_eq!(created.trim(), "20");
    assert_eq!(api(&server, "GET", "/health", None).0, 200);
    let acks = put_with_gst_curl(&server, "cam-299", 60, 15, false);
    assert_eq!(acks_of(&acks, "PERSISTED").len(), 4, "{acks:?}");
    let open = std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
        .unwrap()
        .count();
    eprintln!("open descriptors with 300 video and 20 data streams: {open}");
    assert!(open < 200, "{open} descriptors open");
}

/// Finding 8: /metrics can be closed with a bearer token, and the sample
/// configuration's example key is refused (with a warning) rather than
/// working for anyone who read the sample.
#[test]
fn metrics_can_be_closed_and_the_sample_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(
        &dir.path().join("data"),
        "[server]\nmetrics_bearer_token = \"scrape-me\"\n\
         [[access_keys]]\nid = \"AKIDKINEMAEXAMPLE\"\nsecret = \"kinema-example-secret-change-me\"\n",
    );
    let metrics = |auth: Option<&str>| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"]);
        if let Some(a) = auth {
            cmd.args(["-H", &format!("Authorization: {a}")]);
        }
        let out = cmd
            .arg(format!("{}/metrics", server.url()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(metrics(None), "401");
    assert_eq!(metrics(Some("Bearer wrong")), "401");
    assert_eq!(metrics(Some("Bearer scrape-me")), "200");

    assert!(server.log().contains("example secret"), "{}", server.log());
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--aws-sigv4", "aws:amz:us-east-1:kinesisvideo"])
        .args([
            "--user",
            "AKIDKINEMAEXAMPLE:kinema-example-secret-change-me",
        ])
        .args(["-d", "{}", &format!("{}/listStreams", server.url())])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    // The server's own key still works.
    assert_eq!(api(&server, "POST", "/listStreams", Some("{}")).0, 200);
}

/// Keys with IAM-shaped policies: a read-only key, one camera's ingest key
/// and a key allowed everything but deleting the front door, each doing
/// exactly what its policy says through boto3 (video, playback, signaling
/// endpoints, data streams), the AWS CLI, curl's PutMedia and the
/// signaling WebSocket; refusals are AccessDeniedException and audited.
const POLICIES: &str = r#"
[policies.read-only]
Version = "2012-10-17"
[[policies.read-only.Statement]]
Effect = "Allow"
Action = ["kinesisvideo:Describe*", "kinesisvideo:List*", "kinesisvideo:Get*",
          "kinesisvideo:ConnectAsViewer", "kinesis:Describe*", "kinesis:List*", "kinesis:Get*"]
Resource = "*"

[policies.front-door-camera]
[[policies.front-door-camera.Statement]]
Effect = "Allow"
Action = ["kinesisvideo:PutMedia", "kinesisvideo:DescribeStream", "kinesisvideo:GetDataEndpoint"]
Resource = "arn:aws:kinesisvideo:*:*:stream/front-door/*"

[policies]
guarded = '''{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": "*", "Resource": "*"},
  {"Effect": "Deny", "Action": "kinesisvideo:DeleteStream",
   "Resource": "arn:aws:kinesisvideo:*:*:stream/front-door/*"}]}'''

[[access_keys]]
id = "AKIDREADER"
secret = "reader-secret"
policies = ["read-only"]

[[access_keys]]
id = "AKIDCAMERA"
secret = "camera-secret"
policies = ["front-door-camera"]

[[access_keys]]
id = "AKIDGUARDED"
secret = "guarded-secret"
policies = ["guarded"]
"#;

/// A short PutMedia of `stream` signed with `key`: the HTTP status and
/// the ACK lines.
fn put_media_as(
    server: &Server,
    stream: &str,
    creds: (&str, &str),
) -> (String, Vec<serde_json::Value>) {
    put_media_with_token(server, stream, creds, None)
}

/// [`put_media_as`] with temporary credentials' session token.
fn put_media_with_token(
    server: &Server,
    stream: &str,
    (key, secret): (&str, &str),
    token: Option<&str>,
) -> (String, Vec<serde_json::Value>) {
    let token = token
        .map(|t| format!("-H 'x-amz-security-token: {t}'"))
        .unwrap_or_default();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} | curl -sS -N -w '\\n%{{http_code}}' --aws-sigv4 'aws:amz:us-east-1:kinesisvideo' \
             --user {key}:{secret} {token} -X POST -T - -H 'x-amzn-stream-name: {stream}' \
             -H 'x-amzn-fragment-timecode-type: RELATIVE' {}/putMedia",
            gst_producer(30, 15, false),
            server.url()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_string(), parse_acks(body.as_bytes()))
}

#[test]
fn every_key_does_exactly_what_its_policy_says() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(&dir.path().join("data"), POLICIES);
    assert_eq!(run_python(&server, "iam.py", &["setup"]).trim(), "ok");
    assert_eq!(run_python(&server, "iam.py", &["check"]).trim(), "ok");

    // The camera key streams to its own stream and to no other.
    let camera = ("AKIDCAMERA", "camera-secret");
    let (status, acks) = put_media_as(&server, "front-door", camera);
    assert_eq!(status, "200");
    assert_eq!(acks_of(&acks, "PERSISTED").len(), 2, "{acks:?}");
    let (status, _) = put_media_as(&server, "back-yard", camera);
    assert_eq!(status, "403");
    let (status, _) = put_media_as(&server, "front-door", ("AKIDREADER", "reader-secret"));
    assert_eq!(status, "403");

    // Kinema's own API and WHEP are checked too.
    for (method, path) in [
        ("GET", "/v1/sources"),
        ("GET", "/v1/detectors/front-door"),
        ("POST", "/v1/whep/front-door"),
        ("GET", "/v1/datastreams/events/subscribe"),
    ] {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
            .args(["--aws-sigv4", "aws:amz:us-east-1:kinesisvideo"])
            .args(["--user", &format!("{}:{}", camera.0, camera.1)])
            .arg(format!("{}{path}", server.url()))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "403",
            "{method} {path}"
        );
    }

    // The AWS CLI with the read-only key.
    let reader = ("AKIDREADER", "reader-secret");
    let (ok, out, err) = run_aws_as(&server, reader, &["kinesisvideo", "list-streams"]);
    assert!(ok && out.contains("front-door"), "{out}{err}");
    let (ok, _, err) = run_aws_as(
        &server,
        reader,
        &["kinesisvideo", "create-stream", "--stream-name", "cli-made"],
    );
    assert!(!ok && err.contains("AccessDeniedException"), "{err}");
    let (ok, _, err) = run_aws_as(
        &server,
        reader,
        &[
            "kinesis",
            "put-record",
            "--stream-name",
            "events",
            "--partition-key",
            "k",
            "--data",
            "eA==",
        ],
    );
    assert!(!ok && err.contains("AccessDeniedException"), "{err}");

    // Signaling: a viewer-only key can connect as a viewer, not as master.
    let arn = {
        let body = r#"{"ChannelName": "door-chan"}"#;
        let (_, v) = api(&server, "POST", "/describeSignalingChannel", Some(body));
        v["ChannelInfo"]["ChannelARN"].as_str().unwrap().to_string()
    };
    let ws = |client: Option<&str>| {
        let url = kinema_client::signaling_url(
            &format!("ws://127.0.0.1:{}", server.port),
            &arn,
            client,
            reader.0,
            reader.1,
            "us-east-1",
            std::time::SystemTime::now(),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            match tokio_tungstenite::connect_async(url).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        })
    };
    assert_eq!(ws(None), 403, "a viewer-only key cannot be the master");
    assert_eq!(ws(Some("viewer-1")), 101);

    // Every refusal is in the audit log with who, what, on what, from where.
    let log = server.log();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("kinema::audit"))
        .collect();
    assert!(
        audit.iter().any(|l| l.contains("key=\"AKIDREADER\"")
            && l.contains("action=\"kinesisvideo:CreateStream\"")
            && l.contains("outcome=\"denied\"")
            && l.contains("peer=\"127.0.0.1:")),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains("action=\"kinesisvideo:DeleteStream\"")
                && l.contains("outcome=\"allowed\"")),
        "{audit:#?}"
    );
}

const ROLES: &str = r#"
[roles.camera]
policies = ["front-door-camera"]
trusted_keys = ["AKIDKINEMATEST"]

[roles.viewer]
policies = ["read-only"]
trusted_keys = ["AKIDKINEMATEST"]
max_session_seconds = 3600
"#;

/// Temporary credentials from the STS endpoint: AssumeRole and
/// GetSessionToken through boto3's sts client; the credentials work (and
/// only as far as their role and session policy allow) with boto3 and
/// with curl's PutMedia; tampered tokens are refused and expired ones get
/// ExpiredTokenException.
#[test]
fn temporary_credentials_work_until_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with_config(&data, &format!("{POLICIES}{ROLES}"));
    assert_eq!(run_python(&server, "iam.py", &["setup"]).trim(), "ok");
    assert_eq!(run_python(&server, "sts.py", &["check"]).trim(), "ok");

    let creds: serde_json::Value =
        serde_json::from_str(&run_python(&server, "sts.py", &["assume", "camera", "900"])).unwrap();
    let (key, secret, token) = (
        creds["AccessKeyId"].as_str().unwrap(),
        creds["SecretAccessKey"].as_str().unwrap(),
        creds["SessionToken"].as_str().unwrap(),
    );
    let (status, acks) = put_media_with_token(&server, "front-door", (key, secret), Some(token));
    assert_eq!(status, "200", "{acks:?}");
    assert_eq!(acks_of(&acks, "PERSISTED").len(), 2, "{acks:?}");
    let (status, _) = put_media_with_token(&server, "back-yard", (key, secret), Some(token));
    assert_eq!(status, "403");
    let (status, _) = put_media_with_token(&server, "front-door", (key, secret), None);
    assert_eq!(status, "403", "no token, no key");

    // kinemasink streams with the same temporary credentials (from the
    // environment, as a camera's launcher would hand them over).
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gst-launch-1.0 -q videotestsrc num-buffers=60 \
             ! video/x-raw,format=I420,width=160,height=120,framerate=30/1 \
             ! x264enc speed-preset=ultrafast key-int-max=15 \
             ! kinemasink endpoint={} stream-name=front-door fragment-duration=500",
            server.url()
        ))
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("KINEMA_ACCESS_KEY_ID", key)
        .env("KINEMA_SECRET_ACCESS_KEY", secret)
        .env("KINEMA_SESSION_TOKEN", token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kinemasink with temporary credentials: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let (_, listed) = api(
        &server,
        "POST",
        "/listFragments",
        Some(r#"{"StreamName": "front-door"}"#),
    );
    assert!(
        listed["Fragments"].as_array().unwrap().len() >= 2 + 4,
        "curl's 2 and kinemasink's 4: {listed}"
    );

    // A token that expired (made with the server's own key, as if issued
    // fifteen minutes ago for fifteen minutes).
    let session_key: [u8; 32] = std::fs::read(data.join("sts.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let claims = kinema_iam::session::SessionClaims {
        access_key_id: "ASIAEXPIREDSESSION01".into(),
        issuer: KEY_ID.into(),
        role: Some("camera".into()),
        session_name: Some("old".into()),
        expires_ms: kinema_engine::now_ms() - 1_000,
        policy: None,
        issuer_mark: kinema_iam::session::issuer_mark(&session_key, SECRET),
    };
    let expired_secret = kinema_iam::session::secret_of(&session_key, &claims.access_key_id);
    let expired_token = kinema_iam::session::token(&session_key, &claims);
    assert_eq!(
        run_python(
            &server,
            "sts.py",
            &[
                "expired",
                &claims.access_key_id,
                &expired_secret,
                &expired_token
            ]
        )
        .trim(),
        "ok"
    );
}

/// The proof of the "safe to expose" target: a bounded flood of clients
/// that never authenticate (slow headers, slow bodies, large claimed
/// bodies, connect-and-drop) while a live camera streams. Every fragment
/// the camera sends is acknowledged, and the server's resident memory
/// stays within 64 MiB of where it was with the camera alone.
#[test]
fn a_camera_keeps_streaming_through_an_unauthenticated_flood() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start_with_config(
        &dir.path().join("data"),
        "[limits]\nmax_unauthenticated_connections = 64\nheader_read_timeout_seconds = 2\n\
         body_read_timeout_seconds = 2\n",
    ));
    create_stream(&server, "cam", 1);
    // 12 s of live video, a fragment every half second.
    let camera = {
        let server = server.clone();
        std::thread::spawn(move || put_with_gst_curl(&server, "cam", 360, 15, true))
    };
    std::thread::sleep(Duration::from_secs(2));
    let baseline = rss_kib(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(8);
    let attacker = |kind: usize| {
        let (server, stop, attempts) = (server.clone(), stop.clone(), attempts.clone());
        std::thread::spawn(move || {
            // Bounded in count and in time.
            for i in 0..2_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                attempts.fetch_add(1, Ordering::Relaxed);
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", server.port)) else {
                    continue;
                };
                let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                match kind {
                    // Slow headers: a byte at a time.
                    0 => {
                        for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " {
                            if s.write_all(&[*b]).is_err() || Instant::now() > deadline {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                    // A large claimed body, pushed until the server stops it.
                    1 => {
                        let _ = write!(
                            s,
                            "POST /putMedia HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
                             x-amz-content-sha256: {}\r\n\r\n",
                            64 << 20,
                            "cd".repeat(32)
                        );
                        let chunk = vec![i as u8; 256 << 10];
                        for _ in 0..64 {
                            if s.write_all(&chunk).is_err() || Instant::now() > deadline {
                                break;
                            }
                        }
                    }
                    // A slow body on a route whose signature needs the body.
                    2 => {
                        let _ = write!(
                            s,
                            "POST /listStreams HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n{}\r\n{{",
                            forged_authorization()
                        );
                        let mut buf = [0u8; 512];
                        let _ = s.read(&mut buf);
                    }
                    // Connect and drop.
                    _ => {}
                }
            }
        })
    };
    let attackers: Vec<_> = (0..16).map(|i| attacker(i % 4)).collect();
    let mut peak = baseline;
    while Instant::now() < deadline {
        peak = peak.max(rss_kib(&server));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.join();
    }
    let acks = camera.join().unwrap();
    let persisted = acks_of(&acks, "PERSISTED").len();
    eprintln!(
        "flood: {} unauthenticated attempts in 8 s; server RSS {baseline} KiB with the camera, \
         peak {peak} KiB (+{} KiB); camera: {persisted} of 24 fragments persisted",
        attempts.load(Ordering::Relaxed),
        peak.saturating_sub(baseline)
    );
    assert_eq!(persisted, 24, "{acks:?}");
    assert!(acks_of(&acks, "ERROR").is_empty(), "{acks:?}");
    assert!(
        peak < baseline + 64 * 1024,
        "memory grew from {baseline} KiB to {peak} KiB"
    );
    assert_eq!(api(&server, "GET", "/health", None).0, 200);
}

/// Runs `kinema ARGS` as the test's administrator; returns its JSON.
pub(crate) fn kinema_cli(server: &Server, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kinema"))
        .args(args)
        .args(["--endpoint", &server.url()])
        .env("KINEMA_ACCESS_KEY_ID", KEY_ID)
        .env("KINEMA_SECRET_ACCESS_KEY", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kinema {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Temporary credentials for `role` assumed with `key` through STS
/// (boto3): key id, secret and session token.
fn assume_as(server: &Server, (id, secret): (&str, &str), role: &str) -> (String, String, String) {
    let temp: serde_json::Value = serde_json::from_str(&run_python(
        server,
        "sts.py",
        &["assume_as", id, secret, role],
    ))
    .unwrap();
    let field = |k: &str| temp[k].as_str().unwrap().to_string();
    (
        field("AccessKeyId"),
        field("SecretAccessKey"),
        field("SessionToken"),
    )
}

/// Keys and policies managed at run time with the `kinema` CLI: a key
/// made with a policy does what it says (AWS CLI); a policy changed at run
/// time applies at once; a rotated secret replaces the old one; keys
/// survive a restart with their secrets sealed on disk; deleting a key
/// revokes the temporary credentials it made.
#[test]
fn keys_and_policies_change_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = format!(
        "{POLICIES}{ROLES}\n[roles.anyone]\npolicies = [\"read-only\"]\ntrusted_keys = [\"*\"]\n"
    );
    let server = Server::start_with_config(&data, &config);
    assert_eq!(run_python(&server, "iam.py", &["setup"]).trim(), "ok");

    let writer = dir.path().join("writer.json");
    std::fs::write(
        &writer,
        r#"{"Version": "2012-10-17", "Statement": {"Effect": "Allow",
            "Action": "kinesisvideo:CreateStream", "Resource": "*"}}"#,
    )
    .unwrap();
    kinema_cli(
        &server,
        &["policies", "put", "writer", writer.to_str().unwrap()],
    );
    let made = kinema_cli(
        &server,
        &[
            "keys",
            "create",
            "--policy",
            "read-only",
            "--policy",
            "writer",
        ],
    );
    let id = made["AccessKeyId"].as_str().unwrap().to_string();
    let secret = made["SecretAccessKey"].as_str().unwrap().to_string();
    let key = (id.as_str(), secret.as_str());
    let (ok, out, err) = run_aws_as(&server, key, &["kinesisvideo", "list-streams"]);
    assert!(ok && out.contains("front-door"), "{err}");
    let create = |name: &str, key: (&str, &str)| {
        run_aws_as(
            &server,
            key,
            &["kinesisvideo", "create-stream", "--stream-name", name],
        )
    };
    assert!(create("made-by-key", key).0);
    let (ok, _, err) = run_aws_as(
        &server,
        key,
        &[
            "kinesisvideo",
            "delete-stream",
            "--stream-arn",
            "arn:aws:kinesisvideo:us-east-1:000000000000:stream/made-by-key/1",
        ],
    );
    assert!(!ok && err.contains("AccessDeniedException"), "{err}");
    // The policy narrows at run time: the key loses CreateStream at once.
    std::fs::write(
        &writer,
        r#"{"Statement": {"Effect": "Allow", "Action": ["kinesisvideo:TagStream", "sts:AssumeRole"],
            "Resource": "*"}}"#,
    )
    .unwrap();
    kinema_cli(
        &server,
        &["policies", "put", "writer", writer.to_str().unwrap()],
    );
    let (ok, _, err) = create("made-later", key);
    assert!(!ok && err.contains("AccessDeniedException"), "{err}");
    // Listing shows the key, never a secret.
    let listed = kinema_cli(&server, &["keys", "list"]);
    assert!(listed.to_string().contains(&id));
    assert!(!listed.to_string().contains(&secret));
    // Rotation: the old secret stops working, the new one works.
    let rotated = kinema_cli(&server, &["keys", "rotate", &id]);
    let new_secret = rotated["SecretAccessKey"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    assert!(!run_aws_as(&server, key, &["kinesisvideo", "list-streams"]).0);
    let key = (id.as_str(), new_secret.as_str());
    assert!(run_aws_as(&server, key, &["kinesisvideo", "list-streams"]).0);

    // A restart keeps the key; on disk its secret is sealed.
    drop(server);
    let doc = std::fs::read_to_string(data.join("meta/identities.json")).unwrap();
    assert!(doc.contains(&id) && !doc.contains(&new_secret), "{doc}");
    let server = Server::start_with_config(&data, &config);
    assert!(run_aws_as(&server, key, &["kinesisvideo", "list-streams"]).0);

    // Temporary credentials it made end with it.
    let temp = assume_as(&server, key, "anyone");
    let (tid, tsecret, ttoken) = (temp.0.as_str(), temp.1.as_str(), temp.2.as_str());
    assert_eq!(
        run_python(&server, "sts.py", &["use", tid, tsecret, ttoken, "ok"]).trim(),
        "ok"
    );
    // Rotating the key ends the sessions it made.
    let rotated = kinema_cli(&server, &["keys", "rotate", &id]);
    let third = rotated["SecretAccessKey"].as_str().unwrap().to_string();
    assert_eq!(
        run_python(
            &server,
            "sts.py",
            &["use", tid, tsecret, ttoken, "UnrecognizedClientException"]
        )
        .trim(),
        "ok"
    );
    let key = (id.as_str(), third.as_str());
    let temp = assume_as(&server, key, "anyone");
    let (tid, tsecret, ttoken) = (temp.0.as_str(), temp.1.as_str(), temp.2.as_str());
    assert_eq!(
        run_python(&server, "sts.py", &["use", tid, tsecret, ttoken, "ok"]).trim(),
        "ok"
    );
    kinema_cli(&server, &["keys", "delete", &id]);
    assert!(!run_aws_as(&server, key, &["kinesisvideo", "list-streams"]).0);
    assert_eq!(
        run_python(
            &server,
            "sts.py",
            &["use", tid, tsecret, ttoken, "UnrecognizedClientException"]
        )
        .trim(),
        "ok"
    );
    // Keys of the configuration file are not changed through the API.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kinema"))
        .args(["keys", "delete", "AKIDREADER", "--endpoint", &server.url()])
        .env("KINEMA_ACCESS_KEY_ID", KEY_ID)
        .env("KINEMA_SECRET_ACCESS_KEY", SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("configuration file"));
}

/// Finding 8: a PutMedia upload that goes quiet is ended after the idle
/// timeout, keeping the fragments it completed, instead of holding its
/// connection for as long as the producer likes.
#[test]
fn a_quiet_put_media_is_ended_after_its_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(
        &dir.path().join("data"),
        "[limits]\nput_media_idle_timeout_seconds = 2\n",
    );
    create_stream(&server, "cam", 1);
    // Two GOPs of video: the first fragment completes when the second
    // begins; then the producer goes quiet without ending its upload.
    let mkv = dir.path().join("two.mkv");
    let made = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} > {}",
            gst_producer(30, 15, false),
            mkv.display()
        ))
        .status()
        .unwrap();
    assert!(made.success());
    let body = std::fs::read(&mkv).unwrap();
    let mut req = http::Request::post(format!("{}/putMedia", server.url()))
        .header("host", format!("127.0.0.1:{}", server.port))
        .header("x-amzn-stream-name", "cam")
        .header("x-amzn-fragment-timecode-type", "RELATIVE")
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
    let mut s = connect(&server);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /putMedia HTTP/1.1\r\ntransfer-encoding: chunked\r\n"
    )
    .unwrap();
    for (k, v) in req.headers() {
        write!(s, "{k}: {}\r\n", v.to_str().unwrap()).unwrap();
    }
    write!(s, "\r\n{:x}\r\n", body.len()).unwrap();
    s.write_all(&body).unwrap();
    s.write_all(b"\r\n").unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    let closed = loop {
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
        if String::from_utf8_lossy(&response).contains("0\r\n\r\n") {
            break true;
        }
    };
    let text = String::from_utf8_lossy(&response).into_owned();
    eprintln!(
        "a quiet upload was ended {:.1} s after its last byte",
        started.elapsed().as_secs_f64()
    );
    assert!(closed, "the server ended the quiet upload: {text}");
    assert_eq!(text.matches("PERSISTED").count(), 1, "{text}");
}

/// Found by review: authorisation must name the object the operation acts
/// on. A data-stream call whose name and ARN disagree, or whose ARN hides
/// another name, is refused; a signaling URL naming two channels is
/// refused; percent-encoded path segments are judged decoded; a source
/// may only feed a stream its creator may put media into; and rotating a
/// key ends the sessions it made.
#[test]
fn authorisation_names_the_object_the_operation_uses() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{POLICIES}\n[policies.events-only]\nVersion = \"2012-10-17\"\n\
         [[policies.events-only.Statement]]\nEffect = \"Allow\"\nAction = \"kinesis:*\"\n\
         Resource = \"arn:aws:kinesis:*:*:stream/events\"\n\
         [policies.no-secret-source]\n[[policies.no-secret-source.Statement]]\n\
         Effect = \"Allow\"\nAction = [\"kinema:*\"]\nResource = \"*\"\n\
         [[policies.no-secret-source.Statement]]\nEffect = \"Deny\"\n\
         Action = \"kinema:DescribeSource\"\nResource = \"arn:aws:kinema:*:*:source/secret\"\n\
         [[access_keys]]\nid = \"AKIDEVENTS\"\nsecret = \"events-secret\"\npolicies = [\"events-only\"]\n\
         [[access_keys]]\nid = \"AKIDSOURCES\"\nsecret = \"sources-secret\"\npolicies = [\"no-secret-source\"]\n"
    );
    let server = Server::start_with_config(&dir.path().join("data"), &config);
    assert_eq!(run_python(&server, "iam.py", &["setup"]).trim(), "ok");
    run_python(&server, "ds.py", &["create", "secret", "1"]);
    let events = ("AKIDEVENTS", "events-secret", "kinesis");
    let kinesis = |op: &str, body: &str| {
        signed_raw(
            &server,
            ("POST", "/"),
            &[
                ("x-amz-target", &format!("Kinesis_20131202.{op}")),
                ("content-type", "application/x-amz-json-1.1"),
            ],
            body.as_bytes(),
            events,
        )
    };
    let (status, resp) = kinesis(
        "DeleteStream",
        r#"{"StreamName": "secret", "StreamARN": "arn:aws:kinesis:us-east-1:000000000000:stream/events"}"#,
    );
    assert_eq!(status, 400, "{resp}");
    let (status, resp) = kinesis(
        "DeleteStream",
        r#"{"StreamARN": "arn:aws:kinesis:us-east-1:000000000000:stream/events:stream/secret"}"#,
    );
    assert_eq!(status, 400, "{resp}");
    let (status, resp) = kinesis("DescribeStreamSummary", r#"{"StreamName": "events"}"#);
    assert_eq!(status, 200, "{resp}");
    let (status, resp) = signed_raw(
        &server,
        ("POST", "/"),
        &[
            ("x-amz-target", "Kinesis_20131202.DescribeStreamSummary"),
            ("content-type", "application/x-amz-json-1.1"),
        ],
        br#"{"StreamName": "secret"}"#,
        (KEY_ID, SECRET, "kinesis"),
    );
    assert_eq!(status, 200, "the other stream is still there: {resp}");

    // Two channels in one signaling URL.
    let (_, chan) = api(
        &server,
        "POST",
        "/describeSignalingChannel",
        Some(r#"{"ChannelName": "door-chan"}"#),
    );
    let arn = chan["ChannelInfo"]["ChannelARN"].as_str().unwrap();
    let enc = kinema_client::uri_encode(arn);
    let url = kinema_client::presign_url(
        &format!(
            "ws://127.0.0.1:{}/?X-Amz-ChannelARN={enc}&X-Amz-ChannelARN={enc}x",
            server.port
        ),
        KEY_ID,
        SECRET,
        "us-east-1",
        "kinesisvideo",
        Duration::from_secs(60),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        match tokio_tungstenite::connect_async(url).await {
            Ok(_) => 101,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("{e}"),
        }
    });
    assert_eq!(status, 400, "two channels in one URL are refused");

    // An encoded path segment is the segment the handler sees.
    let sources = ("AKIDSOURCES", "sources-secret", "kinesisvideo");
    let (status, resp) = signed_raw(&server, ("GET", "/v1/sources/%73ecret"), &[], b"", sources);
    assert_eq!(status, 403, "{resp}");
    // A source feeds only a stream its creator may put media into.
    let body = br#"{"name": "intruder", "url": "rtsp://192.0.2.1/cam", "stream": "front-door"}"#;
    let (status, resp) = signed_raw(
        &server,
        ("POST", "/v1/sources"),
        &[("content-type", "application/json")],
        body,
        sources,
    );
    assert_eq!(status, 403, "{resp}");
    assert!(resp.contains("kinesisvideo:PutMedia"), "{resp}");
}
