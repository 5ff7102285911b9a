//! Data-stream queues through boto3 (botocore 1.44's `kinesis` model):
//! the control plane and record operations with their error shapes,
//! competing consumers with a crash and a poison record, and SIGKILL
//! during receive/acknowledge load.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::support::*;

#[test]
fn boto3_drives_queues() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let out = run_python(&server, "queues.py", &["suite"]);
    assert!(out.contains("queues ok"), "{out}");
}

#[test]
fn a_poison_record_becomes_a_dead_letter_while_competing_consumers_finish_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let out = run_python(&server, "queues.py", &["poison"]);
    assert!(out.contains("poison ok"), "{out}");
}

/// SIGKILL while four consumers receive and acknowledge: after a restart
/// every record not acknowledged comes back (the in-flight ones once their
/// timeout passes), and no acknowledged one does. A record whose
/// acknowledgement was sent but not answered when the server died may go
/// either way (the server may have made it durable).
#[test]
fn kill9_during_receive_and_acknowledge_loses_nothing_and_repeats_no_ack() {
    const RECORDS: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data);
    let queue = run_python(
        &server,
        "queues.py",
        &["setup", "load", &RECORDS.to_string()],
    );
    let queue = queue.trim().to_string();
    let mut consumers = python_command(&server, "queues.py", &["consume", &queue, "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(consumers.stdout.take().unwrap()).lines();
    let mut acked = BTreeSet::new();
    let mut received = BTreeSet::new();
    let mut acking = BTreeSet::new();
    let mut record = |line: &str, acked: &mut BTreeSet<String>| match line.split_once(' ') {
        Some(("A", d)) => assert!(acked.insert(d.to_string()), "{d} acknowledged twice"),
        Some(("R", d)) => {
            received.insert(d.to_string());
        }
        Some(("K", d)) => {
            acking.insert(d.to_string());
        }
        _ => panic!("consumer said {line:?}"),
    };
    while acked.len() < RECORDS / 3 {
        let line = lines.next().expect("consumer output").unwrap();
        record(&line, &mut acked);
    }
    server.kill9();
    for line in lines.map_while(Result::ok) {
        record(&line, &mut acked);
    }
    let _ = consumers.wait();
    assert!(acked.len() < RECORDS, "the crash came before the end");
    let in_flight = received.difference(&acked).count();

    let server = Server::start(&data);
    let out = run_python(&server, "queues.py", &["consume", &queue, "2"]);
    let mut again = BTreeSet::new();
    for line in out.lines() {
        if let Some(d) = line.strip_prefix("A ") {
            assert!(
                !acked.contains(d),
                "{d} was acknowledged before the crash and delivered again"
            );
            again.insert(d.to_string());
        }
    }
    let all: BTreeSet<String> = (0..RECORDS).map(|i| format!("r-{i}")).collect();
    let union: BTreeSet<String> = acked.union(&again).cloned().collect();
    // Unanswered acknowledgements: at most one batch of 10 per consumer.
    let unanswered: BTreeSet<String> = acking.difference(&acked).cloned().collect();
    assert!(unanswered.len() <= 40, "{unanswered:?}");
    let missing: BTreeSet<String> = all.difference(&union).cloned().collect();
    assert!(
        missing.is_subset(&unanswered),
        "every record is acknowledged across the crash ({in_flight} were in flight); \
         missing {missing:?}, of which only unanswered acknowledgements may be: {unanswered:?}"
    );
    assert!(
        union.len() + 40 >= RECORDS,
        "{} of {RECORDS} acknowledged",
        union.len()
    );
}
