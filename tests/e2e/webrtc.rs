//! Live WebRTC end to end: Debian's Chromium with the official Kinesis
//! Video WebRTC SDK for JavaScript and our own pages, through the server's
//! signaling (wss, presigned), its embedded TURN server and the server as
//! master of an ingested stream; boto3 for the control plane; coturn
//! accepting the credentials GetIceServerConfig vends; and the signaling
//! WebSocket's answers to bad input.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

fn kvs_sdk() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    PathBuf::from(home)
        .join(".cache/kinema/npm/amazon-kinesis-video-streams-webrtc-2.9.0/dist/kvs-webrtc.min.js")
}

/// Runs tests/browser/webrtc.mjs inside the server's namespace; returns one
/// result per scenario, by name.
fn browser(server: &Server, scenarios: Value) -> std::collections::BTreeMap<String, Value> {
    let cfg = json!({
        "sdk": kvs_sdk(),
        "origin": server.url(),
        "accessKeyId": KEY_ID,
        "secretAccessKey": SECRET,
        "region": "us-east-1",
        "scenarios": scenarios,
    });
    let path = std::env::temp_dir().join(format!("kinema-webrtc-{}.json", server.port));
    std::fs::write(&path, cfg.to_string()).unwrap();
    let script = repo_root().join("tests/browser/webrtc.mjs");
    let out = server
        .command("timeout")
        .args(["300", "node"])
        .arg(&script)
        .arg(&path)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "webrtc.mjs failed\nstdout:\n{stdout}\nstderr:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| (v["name"].as_str().unwrap_or_default().to_string(), v))
        .collect()
}

fn assert_decodes(results: &std::collections::BTreeMap<String, Value>, name: &str) -> Value {
    let r = results
        .get(name)
        .unwrap_or_else(|| panic!("no result for {name}: {results:?}"))
        .clone();
    let frames = r["framesDecoded"].as_u64().unwrap_or(0);
    assert!(frames >= 30, "{name}: decoded {frames} frames: {r}");
    assert_eq!(r["errors"], json!([]), "{name}: {r}");
    r
}

/// Everything a browser does, in one namespace and one browser run: the
/// SDK as master (fake camera) and viewer, the same relay-only through the
/// embedded TURN server, the SDK viewing a stream the server masters (fed
/// by the demo camera and by gst-launch | curl PutMedia), and our own
/// pages (signaling, WHEP, relay, the camera page as master).
#[test]
fn browsers_watch_live_through_signaling_turn_and_the_server_as_master() {
    let dir = tempfile::tempdir().unwrap();
    // The demo camera of `make run` (prepared by setup), looped by the server.
    let clip = PathBuf::from(std::env::var("HOME").unwrap())
        .join(".cache/kinema/assets/market_street_1906_live.mp4");
    assert!(
        clip.exists(),
        "{} is missing: scripts/setup.sh makes it",
        clip.display()
    );
    // A viewer role for temporary credentials (watching only).
    let config = format!(
        "[server]\ntls_self_signed = [\"localhost\", \"127.0.0.1\"]\n\
         [webrtc]\nturn_listen = \"127.0.0.1:0\"\nice_ip = \"127.0.0.1\"\n\
         [[sources]]\nname = \"filecam\"\nstream = \"filecam\"\nurl = \"file://{}\"\n\
         [policies.watch]\nVersion = \"2012-10-17\"\n[[policies.watch.Statement]]\n\
         Effect = \"Allow\"\nAction = [\"kinesisvideo:Describe*\", \"kinesisvideo:Get*\", \
         \"kinesisvideo:ConnectAsViewer\"]\nResource = \"*\"\n\
         [roles.viewer]\npolicies = [\"watch\"]\ntrusted_keys = [\"{KEY_ID}\"]\n",
        clip.display()
    );
    let server = Server::start_in_netns(&dir.path().join("data"), &config);
    assert_eq!(server.scheme, "https");
    // Channels as boto3 sees them: endpoints and TURN credentials.
    let channels: Value = serde_json::from_str(&run_python(
        &server,
        "webrtc.py",
        &["door", "filecam", "pushcam"],
    ))
    .unwrap();
    create_stream(&server, "pushcam", 1);
    // The pushed camera: 60 s of live video through curl's PutMedia (TLS).
    let push = format!(
        "{} | curl -sS -k -N --aws-sigv4 'aws:amz:us-east-1:kinesisvideo' --user {KEY_ID}:{SECRET} \
         -X POST -T - -H 'x-amzn-stream-name: pushcam' -H 'x-amzn-fragment-timecode-type: RELATIVE' \
         -H \"x-amzn-producer-start-timestamp: $(date +%s.%N | cut -c1-14)\" {}/putMedia",
        gst_producer(1800, 30, true),
        server.url()
    );
    let mut producer = server
        .command("sh")
        .args(["-c", &push])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Temporary credentials from AssumeRole, for the SDK and for our page.
    let temporary: Value =
        serde_json::from_str(&run_python(&server, "sts.py", &["assume", "viewer", "900"])).unwrap();
    let temporary_page = format!(
        "/web/viewer.html#key={}&secret={}&token={}&name=pushcam&mode=signaling",
        temporary["AccessKeyId"].as_str().unwrap(),
        temporary["SecretAccessKey"].as_str().unwrap(),
        temporary["SessionToken"].as_str().unwrap()
    );
    let page = |name: &str, mode: &str, relay: bool| {
        format!(
            "/web/viewer.html#key={KEY_ID}&secret={SECRET}&name={name}&mode={mode}{}",
            if relay { "&relay=1" } else { "" }
        )
    };
    let results = browser(
        &server,
        json!([
            {"name": "sdk-p2p", "kind": "p2p", "channel": channels["door"]},
            {"name": "sdk-p2p-relay", "kind": "p2p", "channel": channels["door"], "relay": true},
            {"name": "sdk-server", "kind": "server", "channel": channels["filecam"]},
            {"name": "sdk-server-push", "kind": "server", "channel": channels["pushcam"]},
            {"name": "sdk-server-relay", "kind": "server", "channel": channels["pushcam"], "relay": true},
            {"name": "sdk-server-relay-tcp", "kind": "server", "channel": channels["filecam"], "relay": true, "tcp": true},
            // After an allocation over TCP ended: the listener still serves
            // (ending one allocation used to close the whole TCP listener).
            {"name": "sdk-p2p-relay-tcp", "kind": "p2p", "channel": channels["door"], "relay": true, "tcp": true},
            {"name": "sdk-server-temporary", "kind": "server", "channel": channels["filecam"],
             "credentials": {"accessKeyId": temporary["AccessKeyId"],
                             "secretAccessKey": temporary["SecretAccessKey"],
                             "sessionToken": temporary["SessionToken"]}},
            {"name": "page-temporary", "kind": "page", "path": temporary_page},
            {"name": "page-signaling", "kind": "page", "path": page("pushcam", "signaling", false)},
            {"name": "page-whep", "kind": "page", "path": page("filecam", "whep", false)},
            {"name": "page-relay", "kind": "page", "path": page("pushcam", "signaling", true)},
            {"name": "page-camera", "kind": "page", "path": page("lobby", "signaling", false),
             "masterPath": format!("/web/camera.html#key={KEY_ID}&secret={SECRET}&channel=lobby")},
        ]),
    );
    let _ = producer.kill();
    let _ = producer.wait();
    for name in ["sdk-p2p", "sdk-server", "sdk-server-push"] {
        let r = assert_decodes(&results, name);
        assert!(
            r["framesDecodedLater"].as_u64().unwrap_or(0) > r["framesDecoded"].as_u64().unwrap(),
            "{name}: frames keep coming: {r}"
        );
        assert_eq!(r["state"], "connected", "{name}: {r}");
        assert_eq!(r["localType"], "host", "{name}: {r}");
    }
    assert_eq!(results["sdk-p2p"]["masterErrors"], json!([]));
    for name in ["sdk-p2p-relay", "sdk-server-relay", "page-relay"] {
        let r = assert_decodes(&results, name);
        assert_eq!(r["localType"], "relay", "{name} went through TURN: {r}");
    }
    for name in ["sdk-server-relay-tcp", "sdk-p2p-relay-tcp"] {
        let r = assert_decodes(&results, name);
        assert_eq!(r["localType"], "relay", "{name}: {r}");
        assert_eq!(r["relayProtocol"], "tcp", "{name}: TURN over TCP: {r}");
    }
    // Temporary credentials (AssumeRole) watch through the SDK and our page.
    for name in ["sdk-server-temporary", "page-temporary"] {
        assert_decodes(&results, name);
    }
    for name in ["page-signaling", "page-whep", "page-camera"] {
        let r = assert_decodes(&results, name);
        assert!(
            r["latencyMs"].as_f64().is_some(),
            "{name} shows a latency: {r}"
        );
    }
    // The server saw its viewers and sent them frames.
    let metrics = server
        .command("curl")
        .args(["-sk", &format!("{}/metrics", server.url())])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let sent = metric_value(&metrics, "kinema_webrtc_frames_sent_total");
    assert!(sent >= 150.0, "frames sent: {sent}\n{metrics}");
    assert!(metrics.contains("kinema_webrtc_send_delay_seconds_count"));
    // Working sessions leave no warnings of the WebRTC libraries in the
    // log (mDNS candidates, early candidate checks, closing candidates):
    // an operator cannot act on them.
    let log = server.log();
    let noise: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN webrtc") || l.contains(" WARN turn"))
        .collect();
    assert!(noise.is_empty(), "library warnings: {noise:#?}");
}

fn metric_value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0)
}

/// Presigned signaling URL for `arn` (viewer when `client` is given).
fn ws_url(
    server: &Server,
    arn: &str,
    client: Option<&str>,
    secret: &str,
    at: SystemTime,
) -> String {
    let endpoint = format!("ws://127.0.0.1:{}", server.port);
    kinema_client::signaling_url(&endpoint, arn, client, KEY_ID, secret, "us-east-1", at).unwrap()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Result<Ws, u16> {
    match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect {url}: {e}"),
    }
}

/// The next text message within 5 s, parsed (None: closed or nothing).
async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).ok(),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return None,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Whether the server closes `ws` within 5 s (messages still queued for
/// it are read and skipped, at most 2000).
async fn closed(ws: &mut Ws) -> bool {
    for _ in 0..2000 {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return true,
            Ok(Some(Ok(_))) => continue,
            Err(_) => return false,
        }
    }
    false
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Bad input at the signaling WebSocket: each refusal in the documented
/// shape, and the server healthy afterwards.
#[test]
fn signaling_refuses_bad_input_and_relays_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(
        &dir.path().join("data"),
        "[webrtc]\nturn_listen = \"off\"\nmax_viewers_per_channel = 3\n",
    );
    let arn = channel(&server, "gate");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let now = SystemTime::now();
        // Unsigned, expired, wrongly signed, unknown channel.
        let unsigned = format!(
            "ws://127.0.0.1:{}/?X-Amz-ChannelARN={}",
            server.port,
            kinema_client::uri_encode(&arn)
        );
        assert_eq!(connect(&unsigned).await.err(), Some(403));
        let expired = ws_url(&server, &arn, None, SECRET, now - Duration::from_secs(600));
        assert_eq!(connect(&expired).await.err(), Some(403));
        let forged = ws_url(&server, &arn, None, "not-the-secret", now);
        assert_eq!(connect(&forged).await.err(), Some(403));
        let tampered = ws_url(&server, &arn, None, SECRET, now).replace("gate", "gale");
        assert_eq!(connect(&tampered).await.err(), Some(403));
        let unknown = ws_url(&server, &format!("{arn}0"), None, SECRET, now);
        assert_eq!(connect(&unknown).await.err(), Some(404));

        // A master and a viewer: relayed both ways with senderClientId.
        let mut master = connect(&ws_url(&server, &arn, None, SECRET, now)).await.unwrap();
        let mut viewer = connect(&ws_url(&server, &arn, Some("v1"), SECRET, now)).await.unwrap();
        let offer = b64(r#"{"type":"offer","sdp":"v=0"}"#);
        viewer
            .send(Message::text(json!({"action": "SDP_OFFER", "messagePayload": offer}).to_string()))
            .await
            .unwrap();
        let got = next_json(&mut master).await.unwrap();
        assert_eq!(got["messageType"], "SDP_OFFER");
        assert_eq!(got["senderClientId"], "v1");
        assert_eq!(got["messagePayload"], offer.as_str());
        let answer = b64(r#"{"type":"answer","sdp":"v=0"}"#);
        master
            .send(Message::text(
                json!({"action": "SDP_ANSWER", "messagePayload": answer, "recipientClientId": "v1"})
                    .to_string(),
            ))
            .await
            .unwrap();
        let got = next_json(&mut viewer).await.unwrap();
        assert_eq!(got["messageType"], "SDP_ANSWER");
        assert_eq!(got["messagePayload"], answer.as_str());

        // Bad messages: STATUS_RESPONSE with the correlation id; the
        // connection stays open.
        for (msg, want) in [
            ("{not json".to_string(), "InvalidArgumentException"),
            (
                json!({"action": "SDP_OFFER", "messagePayload": "A".repeat(20_000), "correlationId": "big"}).to_string(),
                "InvalidArgumentException",
            ),
            (
                json!({"action": "SDP_ANSWER", "messagePayload": answer, "correlationId": "nr"}).to_string(),
                "InvalidArgumentException",
            ),
            (
                json!({"action": "SDP_ANSWER", "messagePayload": answer, "recipientClientId": "bad id!", "correlationId": "bad"}).to_string(),
                "InvalidArgumentException",
            ),
        ] {
            master.send(Message::text(msg.clone())).await.unwrap();
            let got = next_json(&mut master).await.unwrap_or_else(|| panic!("no answer to {msg:.80}"));
            assert_eq!(got["messageType"], "STATUS_RESPONSE", "{msg:.80}: {got}");
            assert_eq!(got["statusResponse"]["errorType"], want, "{got}");
            assert_eq!(got["statusResponse"]["statusCode"], "400", "{got}");
        }
        // A message for a viewer that is not there waits for it (TTL).
        master
            .send(Message::text(
                json!({"action": "ICE_CANDIDATE", "messagePayload": b64("{}"), "recipientClientId": "later"})
                    .to_string(),
            ))
            .await
            .unwrap();
        let mut later = connect(&ws_url(&server, &arn, Some("later"), SECRET, now)).await.unwrap();
        let got = next_json(&mut later).await.unwrap();
        assert_eq!(got["messageType"], "ICE_CANDIDATE");

        // A flood of candidates: rate-limited with 429, not relayed in full.
        let cand = json!({"action": "ICE_CANDIDATE", "messagePayload": b64(r#"{"candidate":"c"}"#)}).to_string();
        for _ in 0..600 {
            viewer.send(Message::text(cand.clone())).await.unwrap();
        }
        let mut limited = 0;
        while let Some(m) = next_json(&mut viewer).await {
            if m["statusResponse"]["errorType"] == "ClientLimitExceededException" {
                assert_eq!(m["statusResponse"]["statusCode"], "429");
                limited += 1;
            }
            if limited >= 5 {
                break;
            }
        }
        assert!(limited >= 5, "the flood is refused");
        let mut relayed = 0;
        while let Some(m) = next_json(&mut master).await {
            if m["messageType"] == "ICE_CANDIDATE" {
                relayed += 1;
            }
        }
        assert!((100..600).contains(&relayed), "relayed {relayed} of 600");

        // Viewer limit (3 here): v1 and later are connected, a third fits,
        // a fourth is refused before the upgrade.
        let _third = connect(&ws_url(&server, &arn, Some("v3"), SECRET, now)).await.unwrap();
        assert_eq!(
            connect(&ws_url(&server, &arn, Some("v4"), SECRET, now)).await.err(),
            Some(400)
        );
        // A newer viewer with the same id replaces the old connection.
        let mut v1b = connect(&ws_url(&server, &arn, Some("v1"), SECRET, now)).await.unwrap();
        assert!(closed(&mut viewer).await, "the old v1 is closed");
        // A second master: the newest wins, the old one is closed.
        let mut master2 = connect(&ws_url(&server, &arn, None, SECRET, now)).await.unwrap();
        assert!(closed(&mut master).await, "the old master is closed");
        v1b.send(Message::text(json!({"action": "SDP_OFFER", "messagePayload": offer}).to_string()))
            .await
            .unwrap();
        assert_eq!(next_json(&mut master2).await.unwrap()["senderClientId"], "v1");
        // A message over the WebSocket frame limit ends that connection only.
        let _ = v1b.send(Message::text("x".repeat(100_000))).await;
        assert!(closed(&mut v1b).await, "an oversized frame ends the connection");
    });
    // SendAlexaOfferToMaster through boto3, answered by a master.
    let answered = rt.block_on(async {
        let mut master = connect(&ws_url(&server, &arn, None, SECRET, SystemTime::now()))
            .await
            .unwrap();
        let py = format!(
            "import boto3,os\n\
             s=boto3.client('kinesis-video-signaling',endpoint_url=os.environ['KINEMA_ENDPOINT'],region_name='us-east-1')\n\
             print(s.send_alexa_offer_to_master(ChannelARN='{arn}',SenderClientId='alexa',MessagePayload='b2ZmZXI=')['Answer'])\n"
        );
        let mut child = tokio::process::Command::new(python())
            .args(["-c", &py])
            .env("KINEMA_ENDPOINT", server.url())
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let offer = next_json(&mut master).await.unwrap();
        assert_eq!(offer["senderClientId"], "alexa");
        assert_eq!(offer["messagePayload"], "b2ZmZXI=");
        master
            .send(Message::text(
                json!({"action": "SDP_ANSWER", "messagePayload": "YW5zd2Vy", "recipientClientId": "alexa"})
                    .to_string(),
            ))
            .await
            .unwrap();
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(child.stdout.as_mut().unwrap(), &mut out)
            .await
            .unwrap();
        assert!(child.wait().await.unwrap().success());
        out.trim().to_string()
    });
    assert_eq!(answered, "YW5zd2Vy");
    // Deleting a channel ends its live connections (GO_AWAY, then close).
    let brief = channel(&server, "brief");
    rt.block_on(async {
        let mut viewer = connect(&ws_url(
            &server,
            &brief,
            Some("v"),
            SECRET,
            SystemTime::now(),
        ))
        .await
        .unwrap();
        let (ok, _, err) = run_aws(
            &server,
            &[
                "kinesisvideo",
                "delete-signaling-channel",
                "--channel-arn",
                &brief,
            ],
        );
        assert!(ok, "{err}");
        let got = next_json(&mut viewer).await.expect("GO_AWAY on delete");
        assert_eq!(got["messageType"], "GO_AWAY");
        assert!(closed(&mut viewer).await, "closed after GO_AWAY");
        assert_eq!(
            connect(&ws_url(
                &server,
                &brief,
                Some("v"),
                SECRET,
                SystemTime::now()
            ))
            .await
            .err(),
            Some(404)
        );
    });
    // Still healthy; and at shutdown a connected client gets GO_AWAY.
    let health = Command::new("curl")
        .args(["-s", &format!("{}/health", server.url())])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok");
    rt.block_on(async {
        let mut master = connect(&ws_url(&server, &arn, None, SECRET, SystemTime::now()))
            .await
            .unwrap();
        let pid = server.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let got = next_json(&mut master)
            .await
            .expect("GO_AWAY before the close");
        assert_eq!(got["messageType"], "GO_AWAY");
    });
}

/// The first `turn:` URI's address and the credentials GetIceServerConfig
/// vends for `client`.
fn vended_turn(
    server: &Server,
    arn: &str,
    client: &str,
) -> (std::net::SocketAddr, String, String, u64) {
    let (status, body) = api(
        server,
        "POST",
        "/v1/get-ice-server-config",
        Some(&json!({"ChannelARN": arn, "ClientId": client, "Service": "TURN"}).to_string()),
    );
    assert_eq!(status, 200, "{body}");
    let s = &body["IceServerList"][0];
    let uri = s["Uris"][0].as_str().unwrap();
    let addr = uri
        .trim_start_matches("turn:")
        .split('?')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (
        addr,
        s["Username"].as_str().unwrap().to_string(),
        s["Password"].as_str().unwrap().to_string(),
        s["Ttl"].as_u64().unwrap(),
    )
}

/// Creates a signaling channel with the AWS CLI; returns its ARN.
fn channel(server: &Server, name: &str) -> String {
    let (ok, out, err) = run_aws(
        server,
        &[
            "kinesisvideo",
            "create-signaling-channel",
            "--channel-name",
            name,
        ],
    );
    assert!(ok, "{err}");
    serde_json::from_str::<Value>(&out).unwrap()["ChannelARN"]
        .as_str()
        .unwrap()
        .to_string()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Allocations with what GetIceServerConfig vends succeed, at the embedded
/// TURN server and at Debian's coturn (`use-auth-secret` with the same
/// secret); expired, forged and other-secret credentials are refused.
#[test]
fn turn_servers_accept_exactly_the_vended_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(
        &dir.path().join("data"),
        "[webrtc]\nturn_listen = \"127.0.0.1:0\"\nturn_secret = \"north-wind\"\ncredential_ttl_seconds = 120\n",
    );
    let arn = channel(&server, "porch");
    let (addr, user, pass, ttl) = vended_turn(&server, &arn, "viewer-7");
    assert_eq!(ttl, 120);
    assert!(user.ends_with(":viewer-7"), "{user}");
    let expiry: u64 = user.split(':').next().unwrap().parse().unwrap();
    assert!(
        (unix_now() + 100..=unix_now() + 121).contains(&expiry),
        "{user}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let probe = |addr, user: &str, pass: &str| {
        rt.block_on(kinema_rtc::turn::probe_allocation(addr, user, pass))
    };
    let expired =
        kinema_signaling::turn_credentials("north-wind", "viewer-7", unix_now() - 300, 60);
    let other = kinema_signaling::turn_credentials("south-wind", "viewer-7", unix_now(), 60);
    let check = |addr, user: &str, pass: &str, name: &str| {
        let relayed = probe(addr, user, pass).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(relayed.ip().to_string(), "127.0.0.1", "{name}");
        assert!(
            probe(addr, user, "d3Jvbmc=").is_err(),
            "{name}: wrong password"
        );
        assert!(
            probe(addr, &expired.username, &expired.password).is_err(),
            "{name}: expired"
        );
        assert!(
            probe(addr, &other.username, &other.password).is_err(),
            "{name}: another secret"
        );
    };
    check(addr, &user, &pass, "embedded");

    // coturn, configured as the external TURN server of a second Kinema.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let coturn = Killed(
        Command::new("turnserver")
            .args([
                "-n",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                "--log-file=stdout",
            ])
            .args([
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                "--allow-loopback-peers",
            ])
            .arg(format!("--listening-port={port}"))
            .args([
                "--use-auth-secret",
                "--static-auth-secret=north-wind",
                "--realm=kinema",
            ])
            .args(["--min-port=40000", "--max-port=40100"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("coturn (Debian package coturn) runs"),
    );
    let external = Server::start_with_config(
        &dir.path().join("data2"),
        &format!(
            "[webrtc]\nturn_listen = \"off\"\nturn_secret = \"north-wind\"\n\
             turn_uris = [\"turn:127.0.0.1:{port}?transport=udp\"]\n"
        ),
    );
    let arn2 = channel(&external, "porch");
    let (addr2, user2, pass2, _) = vended_turn(&external, &arn2, "viewer-7");
    assert_eq!(addr2.port(), port);
    // coturn needs a moment to open its port; bounded.
    let ready = wait_for(Duration::from_secs(10), || {
        probe(addr2, &user2, &pass2).ok()
    });
    assert!(ready.is_some(), "coturn accepts the vended credentials");
    check(addr2, &user2, &pass2, "coturn");
    drop(coturn);
}

/// A child process killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A WHEP request through curl's SigV4: (status, Location, body).
fn whep(
    server: &Server,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (headers, data) = (dir.path().join("h"), dir.path().join("b"));
    std::fs::write(&data, body).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-D"])
        .arg(&headers)
        .args(["--aws-sigv4", "aws:amz:us-east-1:kinesisvideo"])
        .args(["--user", &format!("{KEY_ID}:{SECRET}"), "-X", method])
        .args(["-H", &format!("content-type: {content_type}")])
        .arg("--data-binary")
        .arg(format!("@{}", data.display()))
        .arg(format!("{}{path}", server.url()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let location = std::fs::read_to_string(&headers)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (
        status.trim().parse().unwrap_or(0),
        location,
        body.to_string(),
    )
}

/// WHEP viewers of a live `kinemasink` camera (webrtc-rs receivers on
/// loopback): each
/// starts at a keyframe although it joins mid-GOP, frames keep coming, the
/// per-stream viewer limit holds, sessions end with DELETE, and bad offers
/// get the documented errors.
#[test]
fn whep_viewers_start_at_a_keyframe_within_the_viewer_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(
        &dir.path().join("data"),
        "[webrtc]\nturn_listen = \"off\"\nice_ip = \"127.0.0.1\"\nmax_viewers_per_stream = 2\n",
    );
    create_stream(&server, "cam", 1);
    // kinemasink: 30 s of live 30 fps video, a keyframe every 1.5 s.
    let _camera = Killed(
        Command::new("gst-launch-1.0")
            .args(["-q", "videotestsrc", "is-live=true", "num-buffers=900", "!"])
            .args([
                "video/x-raw,format=I420,width=320,height=240,framerate=30/1",
                "!",
            ])
            .args(["x264enc", "tune=zerolatency", "key-int-max=45", "!"])
            .args([
                "video/x-h264,profile=constrained-baseline",
                "!",
                "kinemasink",
            ])
            .arg(format!("endpoint={}", server.url()))
            .args(["stream-name=cam", "fragment-duration=1500"])
            .env("GST_PLUGIN_PATH", plugin_dir())
            .env("KINEMA_ACCESS_KEY_ID", KEY_ID)
            .env("KINEMA_SECRET_ACCESS_KEY", SECRET)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cfg = kinema_rtc::RtcConfig {
        ice_ip: Some("127.0.0.1".parse().unwrap()),
        ice_servers: vec![],
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let offer = || rt.block_on(kinema_rtc::Receiver::offer(&cfg)).unwrap();
    let (status, _, body) = whep(
        &server,
        "POST",
        "/v1/whep/cam",
        "application/sdp",
        "v=0\r\nnot an offer",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("InvalidArgumentException"), "{body}");
    let mut viewers = Vec::new();
    let mut sessions = Vec::new();
    // Join at different points of the GOP.
    for wait_ms in [2_200, 700] {
        std::thread::sleep(Duration::from_millis(wait_ms));
        let (rx, sdp) = offer();
        let (status, location, answer) =
            whep(&server, "POST", "/v1/whep/cam", "application/sdp", &sdp);
        assert_eq!(status, 201, "{answer}");
        assert!(location.starts_with("/v1/whep/cam/"), "{location}");
        assert!(answer.contains("H264"), "{answer}");
        rt.block_on(rx.accept_answer(&answer)).unwrap();
        viewers.push(rx);
        sessions.push(location);
    }
    for (i, rx) in viewers.iter().enumerate() {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), rx.first_frame())
                .await
                .unwrap_or_else(|_| panic!("viewer {i} got no frame\n{}", server.log()))
        });
        assert_eq!(
            rx.first_is_keyframe(),
            Some(true),
            "viewer {i} starts at a keyframe"
        );
    }
    let got = wait_for(Duration::from_secs(15), || {
        viewers.iter().all(|r| r.frames() >= 60).then_some(())
    });
    assert!(
        got.is_some(),
        "frames: {:?}",
        viewers.iter().map(|r| r.frames()).collect::<Vec<_>>()
    );
    // The limit: a third viewer is refused.
    let (_, sdp) = offer();
    let (status, _, body) = whep(&server, "POST", "/v1/whep/cam", "application/sdp", &sdp);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("ClientLimitExceededException"), "{body}");
    // Bad offers.
    let (status, _, body) = whep(&server, "POST", "/v1/whep/cam", "application/json", &sdp);
    assert_eq!(status, 415, "{body}");
    let (status, _, body) = whep(&server, "POST", "/v1/whep/nope", "application/sdp", &sdp);
    assert_eq!(status, 404, "{body}");
    // DELETE ends a session and frees its place.
    let (status, _, body) = whep(&server, "DELETE", &sessions[0], "application/sdp", "");
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = whep(&server, "DELETE", &sessions[0], "application/sdp", "");
    assert_eq!(status, 404);
    let freed = wait_for(Duration::from_secs(10), || {
        let (_, sdp) = offer();
        let (status, _, _) = whep(&server, "POST", "/v1/whep/cam", "application/sdp", &sdp);
        (status == 201).then_some(())
    });
    assert!(freed.is_some(), "a deleted session frees its place");
    for r in &viewers {
        rt.block_on(r.close());
    }
}
