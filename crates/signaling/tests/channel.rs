//! A signaling channel with many simulated peers: exact routing of offers,
//! answers and candidates, the newest master winning, viewers replaced by
//! id, messages kept for absent peers until their TTL, limits answered with
//! STATUS_RESPONSE, and GO_AWAY on shutdown.

use std::collections::HashMap;

use base64::Engine as _;
use kinema_signaling::{
    Channel, ChannelConfig, CloseReason, ConnId, ConnectError, MessageType, Output, Role,
    ServerMessage,
};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn msg(action: &str, payload: &str, to: Option<&str>, cid: &str) -> String {
    let mut v = serde_json::json!({
        "action": action, "messagePayload": b64(payload), "correlationId": cid,
    });
    if let Some(to) = to {
        v["recipientClientId"] = to.into();
    }
    v.to_string()
}

/// Frames sent, per connection.
type Sent = HashMap<ConnId, Vec<ServerMessage>>;
/// Connections the channel closed, in order.
type Closed = Vec<(ConnId, CloseReason)>;

/// Every output, grouped: frames per connection, closed connections.
fn drain(ch: &mut Channel) -> (Sent, Closed) {
    let mut sent: HashMap<ConnId, Vec<ServerMessage>> = HashMap::new();
    let mut closed = Vec::new();
    while let Some(o) = ch.poll_output() {
        match o {
            Output::Send(c, m) => sent.entry(c).or_default().push(m),
            Output::Close(c, r) => closed.push((c, r)),
            Output::MasterWanted => {}
        }
    }
    (sent, closed)
}

/// How many `MasterWanted` outputs are waiting (and drains the rest).
fn masters_wanted(ch: &mut Channel) -> usize {
    std::iter::from_fn(|| ch.poll_output())
        .filter(|o| *o == Output::MasterWanted)
        .count()
}

fn payload(m: &ServerMessage) -> String {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(m.message_payload.as_deref().unwrap())
        .unwrap();
    String::from_utf8(raw).unwrap()
}

#[test]
fn two_hundred_viewers_negotiate_with_one_master_and_every_message_reaches_its_peer() {
    let mut ch = Channel::new(ChannelConfig::default());
    let master = ConnId(0);
    ch.connect(0, master, Role::Master, None).unwrap();
    let n = 200u64;
    for i in 1..=n {
        ch.connect(0, ConnId(i), Role::Viewer, Some(&format!("viewer-{i}")))
            .unwrap();
    }
    assert_eq!(ch.viewer_count(), 200);
    // Each viewer offers and sends three candidates.
    for i in 1..=n {
        ch.receive(
            1,
            ConnId(i),
            &msg("SDP_OFFER", &format!("offer {i}"), None, "o"),
        );
        for k in 0..3 {
            ch.receive(
                1,
                ConnId(i),
                &msg("ICE_CANDIDATE", &format!("cand {i}.{k}"), None, "c"),
            );
        }
    }
    let (sent, closed) = drain(&mut ch);
    assert!(closed.is_empty());
    let at_master = &sent[&master];
    assert_eq!(at_master.len(), 800);
    for m in at_master {
        let sender = m.sender_client_id.clone().unwrap();
        let i = sender.strip_prefix("viewer-").unwrap();
        let p = payload(m);
        assert!(
            p.ends_with(i) || p.contains(&format!("cand {i}.")),
            "{sender}: {p}"
        );
    }
    // Per viewer, order is kept: the offer first, then its candidates.
    let first = at_master
        .iter()
        .find(|m| m.sender_client_id.as_deref() == Some("viewer-7"))
        .unwrap();
    assert_eq!(first.message_type, MessageType::SdpOffer);
    // The master answers each viewer; each answer reaches exactly its viewer.
    for i in 1..=n {
        let to = format!("viewer-{i}");
        ch.receive(
            2,
            master,
            &msg("SDP_ANSWER", &format!("answer {i}"), Some(&to), "a"),
        );
        ch.receive(
            2,
            master,
            &msg("ICE_CANDIDATE", &format!("mcand {i}"), Some(&to), "a"),
        );
    }
    let (sent, _) = drain(&mut ch);
    assert_eq!(sent.len(), 200);
    for i in 1..=n {
        let got = &sent[&ConnId(i)];
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].message_type, MessageType::SdpAnswer);
        assert_eq!(payload(&got[0]), format!("answer {i}"));
        assert_eq!(payload(&got[1]), format!("mcand {i}"));
        assert_eq!(got[0].sender_client_id, None, "from the master");
    }
}

#[test]
fn the_newest_master_wins_and_a_viewer_id_is_replaced_by_its_newer_connection() {
    let mut ch = Channel::new(ChannelConfig::default());
    ch.connect(0, ConnId(1), Role::Master, None).unwrap();
    ch.connect(0, ConnId(2), Role::Master, None).unwrap();
    ch.connect(0, ConnId(3), Role::Viewer, Some("v")).unwrap();
    ch.connect(0, ConnId(4), Role::Viewer, Some("v")).unwrap();
    let (_, closed) = drain(&mut ch);
    assert_eq!(
        closed,
        [
            (ConnId(1), CloseReason::Replaced),
            (ConnId(3), CloseReason::Replaced)
        ]
    );
    ch.receive(1, ConnId(4), &msg("SDP_OFFER", "x", None, "1"));
    ch.receive(1, ConnId(2), &msg("SDP_ANSWER", "y", Some("v"), "2"));
    // The replaced connections are gone: their messages are ignored.
    ch.receive(1, ConnId(1), &msg("SDP_ANSWER", "stale", Some("v"), "3"));
    let (sent, _) = drain(&mut ch);
    assert_eq!(payload(&sent[&ConnId(2)][0]), "x");
    assert_eq!(sent[&ConnId(4)].len(), 1);
    assert_eq!(payload(&sent[&ConnId(4)][0]), "y");
    // A late disconnect of a replaced connection does not remove its successor.
    ch.disconnect(ConnId(3));
    assert_eq!(ch.viewer_count(), 1);
    ch.disconnect(ConnId(1));
    assert!(ch.has_master());
}

#[test]
fn messages_for_an_absent_peer_wait_for_the_ttl() {
    let mut ch = Channel::new(ChannelConfig {
        message_ttl_ms: 5_000,
        ..ChannelConfig::default()
    });
    ch.connect(0, ConnId(1), Role::Viewer, Some("early"))
        .unwrap();
    ch.receive(
        0,
        ConnId(1),
        &msg("SDP_OFFER", "before the master", None, "1"),
    );
    ch.connect(0, ConnId(9), Role::Viewer, Some("late"))
        .unwrap();
    ch.receive(0, ConnId(9), &msg("SDP_OFFER", "too early", None, "2"));
    assert_eq!(ch.poll_timeout(), Some(5_000));
    // The master comes after 3 s: the offers are delivered.
    ch.connect(3_000, ConnId(2), Role::Master, None).unwrap();
    let (sent, _) = drain(&mut ch);
    let got: Vec<String> = sent[&ConnId(2)].iter().map(payload).collect();
    assert_eq!(got, ["before the master", "too early"]);
    // An answer for a viewer who has not connected yet waits; one that
    // waits past the TTL is dropped.
    ch.receive(
        3_000,
        ConnId(2),
        &msg("SDP_ANSWER", "for v2", Some("v2"), "3"),
    );
    ch.receive(
        3_000,
        ConnId(2),
        &msg("SDP_ANSWER", "for v3", Some("v3"), "4"),
    );
    ch.connect(7_000, ConnId(5), Role::Viewer, Some("v2"))
        .unwrap();
    ch.handle_timeout(8_001);
    assert_eq!(ch.poll_timeout(), None);
    ch.connect(8_002, ConnId(6), Role::Viewer, Some("v3"))
        .unwrap();
    let (sent, _) = drain(&mut ch);
    assert_eq!(payload(&sent[&ConnId(5)][0]), "for v2");
    assert!(!sent.contains_key(&ConnId(6)), "expired before v3 came");
}

#[test]
fn bad_input_and_floods_get_status_responses_and_the_channel_keeps_working() {
    let mut ch = Channel::new(ChannelConfig {
        rate_per_second: 10,
        burst: 20,
        max_viewers: 2,
        ..ChannelConfig::default()
    });
    ch.connect(0, ConnId(1), Role::Master, None).unwrap();
    ch.connect(0, ConnId(2), Role::Viewer, Some("v")).unwrap();
    assert_eq!(
        ch.connect(0, ConnId(3), Role::Viewer, None),
        Err(ConnectError::MissingClientId)
    );
    assert_eq!(
        ch.connect(0, ConnId(3), Role::Viewer, Some("bad id!")),
        Err(ConnectError::InvalidClientId)
    );
    ch.connect(0, ConnId(3), Role::Viewer, Some("w")).unwrap();
    assert_eq!(
        ch.connect(0, ConnId(4), Role::Viewer, Some("x")),
        Err(ConnectError::TooManyViewers(2))
    );
    let big = format!(
        r#"{{"action":"SDP_OFFER","messagePayload":"{}","correlationId":"big"}}"#,
        "A".repeat(10_004)
    );
    for (conn, text, code) in [
        (ConnId(2), "not json".to_string(), "400"),
        (ConnId(2), big, "400"),
        (
            ConnId(1),
            msg("SDP_ANSWER", "no recipient", None, "r"),
            "400",
        ),
        (
            ConnId(1),
            msg("SDP_ANSWER", "bad recipient", Some("a b"), "r2"),
            "400",
        ),
    ] {
        ch.receive(0, conn, &text);
        let (sent, _) = drain(&mut ch);
        let m = &sent[&conn][0];
        assert_eq!(m.message_type, MessageType::StatusResponse, "{text:.40}");
        assert_eq!(m.status_response.as_ref().unwrap().status_code, code);
    }
    // A flood of candidates: the burst passes (less the two bad messages
    // above, which cost tokens too, plus one token refilled in 100 ms), the
    // rest is refused with 429 (ClientLimitExceededException), not relayed.
    for k in 0..100 {
        ch.receive(
            100,
            ConnId(2),
            &msg("ICE_CANDIDATE", &format!("c{k}"), None, &format!("f{k}")),
        );
    }
    let (sent, _) = drain(&mut ch);
    assert_eq!(sent[&ConnId(1)].len(), 19, "the burst reached the master");
    let refused = &sent[&ConnId(2)];
    assert_eq!(refused.len(), 81);
    let s = refused[0].status_response.as_ref().unwrap();
    assert_eq!(s.error_type, "ClientLimitExceededException");
    assert_eq!(s.status_code, "429");
    assert_eq!(s.correlation_id.as_deref(), Some("f19"));
    // Tokens come back with time; the other viewer was never limited.
    ch.receive(1_200, ConnId(2), &msg("ICE_CANDIDATE", "later", None, "l"));
    ch.receive(100, ConnId(3), &msg("SDP_OFFER", "w offers", None, "w"));
    let (sent, _) = drain(&mut ch);
    assert_eq!(sent[&ConnId(1)].len(), 2);
}

#[test]
fn go_away_reaches_every_connection_before_it_closes() {
    let mut ch = Channel::new(ChannelConfig::default());
    ch.connect(0, ConnId(1), Role::Master, None).unwrap();
    for i in 2..12 {
        ch.connect(0, ConnId(i), Role::Viewer, Some(&format!("v{i}")))
            .unwrap();
    }
    ch.go_away();
    let mut order = Vec::new();
    while let Some(o) = ch.poll_output() {
        order.push(o);
    }
    assert_eq!(order.len(), 22);
    for o in &order[..11] {
        assert!(matches!(o, Output::Send(_, m) if m.message_type == MessageType::GoAway));
    }
    for o in &order[11..] {
        assert!(matches!(o, Output::Close(_, CloseReason::GoingAway)));
    }
    assert!(!ch.has_master());
    assert_eq!(ch.viewer_count(), 0);
}

/// Deterministic random operations (a tiny xorshift, no clock): the
/// channel's bookkeeping never panics and never routes to a closed or
/// replaced connection.
#[test]
fn random_operation_sequences_never_route_to_a_dead_connection() {
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut ch = Channel::new(ChannelConfig::default());
    let mut live: HashMap<ConnId, (Role, Option<String>)> = HashMap::new();
    let mut now = 0i64;
    for step in 0..20_000u64 {
        now += (next() % 50) as i64;
        let conn = ConnId(next() % 40);
        match next() % 6 {
            0 => {
                let role = if next() % 4 == 0 {
                    Role::Master
                } else {
                    Role::Viewer
                };
                let id = format!("v{}", next() % 12);
                let id = (role == Role::Viewer).then_some(id);
                // Joining again ends the connection's earlier session.
                live.remove(&conn);
                if ch.connect(now, conn, role, id.as_deref()).is_ok() {
                    live.insert(conn, (role, id));
                }
            }
            1 => {
                ch.disconnect(conn);
                live.remove(&conn);
            }
            2 => ch.handle_timeout(now),
            _ => {
                let to = format!("v{}", next() % 12);
                let text = match next() % 5 {
                    0 => "garbage".to_string(),
                    _ => msg("ICE_CANDIDATE", &format!("s{step}"), Some(&to), "x"),
                };
                ch.receive(now, conn, &text);
            }
        }
        while let Some(o) = ch.poll_output() {
            match o {
                Output::Send(c, _) => assert!(live.contains_key(&c), "sent to dead {c:?}"),
                Output::Close(c, _) => {
                    live.remove(&c);
                }
                Output::MasterWanted => {}
            }
        }
    }
}

/// A master naming ever new absent recipients fills the channel's budget
/// for kept messages and is then refused with 429; delivery and expiry
/// give the budget back.
#[test]
fn messages_for_absent_peers_are_bounded_per_channel() {
    let mut ch = Channel::new(ChannelConfig {
        max_pending_bytes: 10_000,
        burst: 10_000,
        message_ttl_ms: 5_000,
        ..ChannelConfig::default()
    });
    ch.connect(0, ConnId(1), Role::Master, None).unwrap();
    let body = "x".repeat(750); // 1000 base64 characters
    for i in 0..10 {
        ch.receive(
            0,
            ConnId(1),
            &msg("ICE_CANDIDATE", &body, Some(&format!("ghost-{i}")), "k"),
        );
    }
    assert_eq!(ch.pending_bytes(), 10_000);
    let (sent, _) = drain(&mut ch);
    assert!(sent.is_empty(), "kept quietly: {sent:?}");
    ch.receive(
        0,
        ConnId(1),
        &msg("ICE_CANDIDATE", &body, Some("ghost-10"), "over"),
    );
    let (sent, _) = drain(&mut ch);
    let status = sent[&ConnId(1)][0].status_response.clone().unwrap();
    assert_eq!(status.status_code, "429");
    assert_eq!(status.correlation_id.as_deref(), Some("over"));
    assert_eq!(ch.pending_bytes(), 10_000);
    // A ghost connects: its message is delivered and its bytes freed.
    ch.connect(1, ConnId(2), Role::Viewer, Some("ghost-3"))
        .unwrap();
    assert_eq!(ch.pending_bytes(), 9_000);
    let (sent, _) = drain(&mut ch);
    assert_eq!(sent[&ConnId(2)].len(), 1);
    // The rest expire with the TTL.
    ch.handle_timeout(5_001);
    assert_eq!(ch.pending_bytes(), 0);
    assert_eq!(ch.poll_timeout(), None);
}

#[test]
fn only_a_queued_viewer_offer_without_a_master_asks_for_one() {
    let mut ch = Channel::new(ChannelConfig::default());
    let viewer = ConnId(1);
    ch.connect(0, viewer, Role::Viewer, Some("v1")).unwrap();
    // Candidates and malformed offers do not ask for a master.
    ch.receive(0, viewer, &msg("ICE_CANDIDATE", "c", None, "1"));
    ch.receive(0, viewer, r#"{"action":"SDP_OFFER"}"#);
    ch.receive(0, viewer, "SDP_OFFER");
    assert_eq!(masters_wanted(&mut ch), 0);
    // An offer that waits for the master does, once per offer.
    ch.receive(0, viewer, &msg("SDP_OFFER", "offer", None, "2"));
    assert_eq!(masters_wanted(&mut ch), 1);
    // The master that then connects gets what waited.
    let master = ConnId(0);
    ch.connect(1, master, Role::Master, None).unwrap();
    let (sent, _) = drain(&mut ch);
    let got: Vec<String> = sent[&master].iter().map(payload).collect();
    assert_eq!(got, ["c", "offer"]);
    // With a master connected, an offer goes straight to it.
    ch.receive(2, viewer, &msg("SDP_OFFER", "again", None, "3"));
    assert_eq!(masters_wanted(&mut ch), 0);
}
