//! Data streams through boto3 and the AWS CLI, and durability under SIGKILL.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use serde_json::Value;

use crate::support::*;

#[test]
fn boto3_drives_data_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let out = run_python(&server, "ds.py", &["suite"]);
    assert!(out.contains("data streams ok"));
}

#[test]
fn subscribe_to_shard_pushes_records_to_a_registered_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let out = run_python(&server, "ds.py", &["subscribe"]);
    assert!(out.contains("subscribe ok"));
}

/// The server-sent-events push: all shards from TRIM_HORIZON, then live
/// records as they are appended, in order per shard.
#[test]
fn sse_subscription_delivers_stored_then_live_records_in_shard_order() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    run_python(&server, "ds.py", &["create", "feed", "2"]);
    let acks = |out: String| -> Vec<Value> {
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let mut expected = acks(run_python(&server, "ds.py", &["produce", "feed", "1"]));

    let path = "/v1/datastreams/feed/subscribe?from=TRIM_HORIZON";
    let mut req = http::Request::get(format!("{}{path}", server.url()))
        .header("host", format!("127.0.0.1:{}", server.port))
        .body(())
        .unwrap();
    kinema_server::put_media::sign_request(&mut req, KEY_ID, SECRET, "us-east-1", "kinesis", None)
        .unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\n").unwrap();
    for (k, v) in req.headers() {
        write!(s, "{k}: {}\r\n", v.to_str().unwrap()).unwrap();
    }
    write!(s, "\r\n").unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut lines = BufReader::new(s).lines();
    let status = lines.next().unwrap().unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    let mut seen: Vec<(String, String, String)> = Vec::new();
    let mut read_until = |n: usize, seen: &mut Vec<(String, String, String)>| {
        while seen.len() < n {
            let line = lines
                .next()
                .expect("event stream open")
                .expect("event within 30 s");
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let ev: Value = serde_json::from_str(data).unwrap();
            for r in ev["records"].as_array().unwrap() {
                seen.push((
                    ev["shardId"].as_str().unwrap().to_string(),
                    r["sequenceNumber"].as_str().unwrap().to_string(),
                    String::from_utf8(base64_decode(r["data"].as_str().unwrap())).unwrap(),
                ));
            }
        }
    };
    read_until(100, &mut seen);
    // Live: records appended now arrive on the same subscription.
    expected.extend(acks(run_python(
        &server,
        "ds.py",
        &["produce", "feed", "1"],
    )));
    read_until(200, &mut seen);
    assert_eq!(seen.len(), 200);
    let mut by_seq: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (shard, seq, data) in &seen {
        by_seq.insert(seq.clone(), (shard.clone(), data.clone()));
    }
    for a in &expected {
        let (shard, data) = &by_seq[a[1].as_str().unwrap()];
        assert_eq!(
            (shard.as_str(), data.as_str()),
            (a[0].as_str().unwrap(), a[2].as_str().unwrap())
        );
    }
    let mut last: BTreeMap<&str, &str> = BTreeMap::new();
    for (shard, seq, _) in &seen {
        if let Some(prev) = last.insert(shard, seq) {
            assert!(prev < seq.as_str(), "{shard}: {prev} then {seq}");
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64 data")
}

#[test]
fn write_quotas_throttle_per_entry_and_boto3_retries_through_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(
        &dir.path().join("data"),
        "[data_streams]\nshard_write_records_per_second = 2\n",
    );
    let out = run_python(&server, "ds.py", &["quota"]);
    assert!(out.contains("quota ok"), "{out}");
}

/// Sends a signed JSON 1.1 request with a raw body; returns status and body.
fn raw_kinesis(server: &Server, target: &str, body: &[u8]) -> (u16, Value) {
    let (status, resp) = signed_raw(
        server,
        ("POST", "/"),
        &[
            ("x-amz-target", target),
            ("content-type", "application/x-amz-json-1.1"),
        ],
        body,
        (KEY_ID, SECRET, "kinesis"),
    );
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn malformed_json_and_unknown_targets_get_the_expected_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (status, body) = raw_kinesis(&server, "Kinesis_20131202.ListStreams", b"{not json");
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("SerializationException")),
        "{body}"
    );
    let (status, body) = raw_kinesis(&server, "Kinesis_20131202.FlyToTheMoon", b"{}");
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("UnknownOperationException")),
        "{body}"
    );
    let (status, body) = raw_kinesis(&server, "DynamoDB_20120810.ListTables", b"{}");
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("UnknownOperationException")),
        "{body}"
    );
    let (status, body) = raw_kinesis(
        &server,
        "Kinesis_20131202.CreateStream",
        br#"{"StreamName": "ok", "ShardCount": 0}"#,
    );
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("InvalidArgumentException")),
        "{body}"
    );
    let (status, body) = raw_kinesis(&server, "Kinesis_20131202.ListStreams", b"{}");
    assert_eq!(
        status, 200,
        "nothing was created by the bad requests: {body}"
    );
    assert_eq!(body["StreamNames"], serde_json::json!([]));
}

#[test]
fn the_aws_cli_puts_and_reads_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let aws = |args: &[&str]| -> Value {
        let args: Vec<&str> = std::iter::once("kinesis")
            .chain(args.iter().copied())
            .collect();
        let (ok, out, err) = run_aws(&server, &args);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap_or(Value::Null)
    };
    aws(&[
        "create-stream",
        "--stream-name",
        "cli",
        "--shard-count",
        "1",
    ]);
    let put = aws(&[
        "put-record",
        "--stream-name",
        "cli",
        "--partition-key",
        "k",
        "--data",
        "hello",
    ]);
    assert_eq!(put["ShardId"], "shardId-000000000000");
    let it = aws(&[
        "get-shard-iterator",
        "--stream-name",
        "cli",
        "--shard-id",
        "shardId-000000000000",
        "--shard-iterator-type",
        "TRIM_HORIZON",
    ]);
    let recs = aws(&[
        "get-records",
        "--shard-iterator",
        it["ShardIterator"].as_str().unwrap(),
    ]);
    assert_eq!(recs["Records"][0]["Data"], "aGVsbG8=");
    assert_eq!(recs["Records"][0]["SequenceNumber"], put["SequenceNumber"]);
    aws(&[
        "increase-stream-retention-period",
        "--stream-name",
        "cli",
        "--retention-period-hours",
        "48",
    ]);
    let summary = aws(&["describe-stream-summary", "--stream-name", "cli"]);
    assert_eq!(
        summary["StreamDescriptionSummary"]["RetentionPeriodHours"],
        48
    );
    aws(&[
        "update-shard-count",
        "--stream-name",
        "cli",
        "--target-shard-count",
        "2",
        "--scaling-type",
        "UNIFORM_SCALING",
    ]);
    let shards = aws(&["list-shards", "--stream-name", "cli"]);
    assert_eq!(
        shards["Shards"].as_array().unwrap().len(),
        3,
        "the parent and two children"
    );
    let streams = aws(&["list-streams"]);
    assert_eq!(streams["StreamNames"], serde_json::json!(["cli"]));
}

/// Every acknowledged record survives SIGKILL, in the same order with the
/// same sequence numbers; the log is not corrupt afterwards.
#[test]
fn kill9_keeps_every_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data);
    run_python(&server, "ds.py", &["create", "events", "3"]);
    let mut producer = python_command(&server, "ds.py", &["produce", "events", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(producer.stdout.take().unwrap()).lines();
    let mut acked: Vec<Value> = Vec::new();
    while acked.len() < 1500 {
        let line = lines.next().expect("producer output").unwrap();
        acked.push(serde_json::from_str(&line).unwrap());
    }
    server.kill9();
    for line in lines.map_while(Result::ok) {
        acked.push(serde_json::from_str(&line).unwrap());
    }
    let _ = producer.wait();

    let server = Server::start(&data);
    let dumped: Vec<Value> =
        serde_json::from_str(&run_python(&server, "ds.py", &["dump", "events"])).unwrap();
    let stored: BTreeMap<String, (String, String)> = dumped
        .iter()
        .map(|r| {
            (
                r[1].as_str().unwrap().to_string(),
                (
                    r[0].as_str().unwrap().to_string(),
                    r[2].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    for a in &acked {
        let seq = a[1].as_str().unwrap();
        let (shard, data) = stored
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged record {a} lost"));
        assert_eq!(
            (shard.as_str(), data.as_str()),
            (a[0].as_str().unwrap(), a[2].as_str().unwrap())
        );
    }
    // Within each shard the dump is in strictly increasing sequence order.
    let mut last: BTreeMap<&str, &str> = BTreeMap::new();
    for r in &dumped {
        let (shard, seq) = (r[0].as_str().unwrap(), r[1].as_str().unwrap());
        if let Some(prev) = last.insert(shard, seq) {
            assert!(prev < seq, "{shard}: {prev} then {seq}");
        }
    }
    // New records continue above everything recovered.
    let out = run_python(&server, "ds.py", &["produce", "events", "1"]);
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(
        stored
            .keys()
            .all(|s| s.as_str() < first[1].as_str().unwrap())
    );
}
