//! Channels through boto3 (botocore 1.44's `kinesis` model): the control
//! plane with its error shapes, delivery in each record format and
//! compression read back by DuckDB, dead letters, and SIGKILL while
//! records are put and delivered.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::support::*;

#[test]
fn boto3_drives_channels_and_duckdb_reads_what_they_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let objects = dir.path().join("objects/buckets");
    let out = run_python(
        &server,
        "delivery_channels.py",
        &["suite", objects.to_str().unwrap()],
    );
    assert!(out.contains("channels ok"), "{out}");
}

/// SIGKILL while records are put one by one and delivered every second:
/// after a restart every acknowledged record is delivered, none twice.
#[test]
fn kill9_during_delivery_loses_no_acknowledged_record_and_repeats_none() {
    const RECORDS: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let objects = data.join("objects/buckets");
    let objects = objects.to_str().unwrap();
    let mut server = Server::start(&data);
    run_python(&server, "delivery_channels.py", &["setup", objects, "0"]);
    let mut load = python_command(
        &server,
        "delivery_channels.py",
        &["load", objects, "0", &RECORDS.to_string()],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(load.stdout.take().unwrap()).lines();
    let mut acked = BTreeSet::new();
    // Long enough for several deliveries to have been written.
    while acked.len() < RECORDS / 2 {
        let line = lines.next().expect("producer output").unwrap();
        acked.insert(line.trim().parse::<u64>().unwrap());
    }
    server.kill9();
    for line in lines.map_while(Result::ok) {
        acked.insert(line.trim().parse::<u64>().unwrap());
    }
    let _ = load.wait();
    assert!(acked.len() < RECORDS, "the crash came before the end");
    let list = dir.path().join("acked.json");
    std::fs::write(
        &list,
        serde_json::to_string(&acked.iter().collect::<Vec<_>>()).unwrap(),
    )
    .unwrap();

    let server = Server::start(&data);
    let out = run_python(
        &server,
        "delivery_channels.py",
        &["check", objects, list.to_str().unwrap()],
    );
    assert!(out.contains("check ok"), "{out}");
}

/// Keys whose policies name a stream or channels do just that.
#[test]
fn channel_calls_are_authorised_on_the_channel_and_create_on_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[policies.cams]\n[[policies.cams.Statement]]\nEffect = \"Allow\"\n\
         Action = \"kinesis:*\"\nResource = \"arn:aws:kinesis:*:*:stream/cams\"\n\
         [policies.channels]\n[[policies.channels.Statement]]\nEffect = \"Allow\"\n\
         Action = \"kinesis:*\"\nResource = \"arn:aws:kinesis:*:*:channel/*\"\n\
         [[policies.channels.Statement]]\nEffect = \"Allow\"\n\
         Action = \"kinesis:ListChannels\"\nResource = \"*\"\n\
         [[access_keys]]\nid = \"AKIDSTREAM\"\nsecret = \"stream-secret\"\npolicies = [\"cams\"]\n\
         [[access_keys]]\nid = \"AKIDCHANNELS\"\nsecret = \"channels-secret\"\npolicies = [\"channels\"]\n";
    let server = Server::start_with_config(&dir.path().join("data"), config);
    let objects = dir.path().join("data/objects/buckets");
    let out = run_python(
        &server,
        "delivery_channels.py",
        &["iam", objects.to_str().unwrap()],
    );
    assert!(out.contains("iam ok"), "{out}");
    // A stream operation carrying a stray ChannelARN (or QueueARN) is
    // judged by its stream, which this key may not touch.
    for field in ["ChannelARN", "QueueARN"] {
        let body = format!(
            r#"{{"StreamName": "cams", "PartitionKey": "k", "Data": "eA==",
                "{field}": "arn:aws:kinesis:us-east-1:000000000000:channel/0000000000000001"}}"#
        );
        let (status, resp) = signed_raw(
            &server,
            ("POST", "/"),
            &[
                ("x-amz-target", "Kinesis_20131202.PutRecord"),
                ("content-type", "application/x-amz-json-1.1"),
            ],
            body.as_bytes(),
            ("AKIDCHANNELS", "channels-secret", "kinesis"),
        );
        assert_eq!(status, 403, "{field}: {resp}");
        assert!(resp.contains("AccessDeniedException"), "{resp}");
        assert!(resp.contains(":stream/cams"), "{resp}");
    }
}
