//! The engine over a real store in a temp directory: persistence, recovery
//! after reopening, reads by selector and retention with an injected clock,
//! and the data-stream service's expiries (leases, iterators,
//! subscriptions) and video retention in tokio's paused (virtual) time.

use std::collections::BTreeMap;

use kinema_engine::{Engine, EngineConfig, IngestEvent, StartSelector, TimecodeType};
use kinema_mkv::{element, ids, uint_element};
use kinema_store::Store;

fn config() -> EngineConfig {
    EngineConfig {
        get_media_idle_ms: 50,
        get_media_live_idle_ms: 50,
        live_buffer_ms: 10_000,
        ..EngineConfig::default()
    }
}

/// An `avcC` for 640x360 High profile with one SPS and one PPS.
const AVCC: [u8; 29] = [
    1, 0x64, 0x00, 0x1e, 0xff, 0xe1, // version, profile, level, 4-byte lengths, 1 SPS
    0, 12, 0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0, 0x2f, 0xf9, 0x70, 0x11, // SPS
    1, 0, 6, 0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0, // 1 PPS
];

/// A PutMedia upload of `clusters` one-second fragments of H.264 (ten
/// frames each, a keyframe first; one NAL unit of 60 bytes per frame).
fn upload(clusters: u64) -> Vec<u8> {
    upload_filled(clusters, 0xAB)
}

/// [`upload`] with the frames' payload bytes set to `fill`.
fn upload_filled(clusters: u64, fill: u8) -> Vec<u8> {
    let mut entry = Vec::new();
    uint_element(&mut entry, ids::TRACK_NUMBER, 1);
    uint_element(&mut entry, ids::TRACK_TYPE, 1);
    element(&mut entry, ids::CODEC_ID, b"V_MPEG4/ISO/AVC");
    element(&mut entry, ids::CODEC_PRIVATE, &AVCC);
    let mut tracks = Vec::new();
    element(&mut tracks, ids::TRACK_ENTRY, &entry);
    let mut doc = kinema_mkv::ebml_header();
    doc.extend(kinema_mkv::segment_header(None));
    element(&mut doc, ids::TRACKS, &tracks);
    let frame = |nal_type: u8| {
        let mut f = 60u32.to_be_bytes().to_vec();
        f.push(nal_type);
        f.extend([fill; 59]);
        f
    };
    let (key, delta) = (frame(0x65), frame(0x41));
    for c in 0..clusters {
        doc.extend(kinema_mkv::cluster(
            c * 1000,
            (0..10).map(|i| {
                let (flags, f) = if i == 0 { (0x80, &key) } else { (0, &delta) };
                (1, i * 100, flags, &f[..])
            }),
        ));
    }
    doc
}

async fn ingest(engine: &Engine, name: &str, clusters: u64) -> Vec<u64> {
    ingest_at(engine, name, clusters, 1_700_000_000_000_000_000).await
}

async fn ingest_at(engine: &Engine, name: &str, clusters: u64, start_ns: i128) -> Vec<u64> {
    let mut s = engine
        .begin_put_media(Some(name), None, TimecodeType::Relative, start_ns)
        .unwrap();
    s.push(&upload(clusters));
    s.finish();
    let mut numbers = Vec::new();
    while let Some(ev) = s.poll() {
        if let IngestEvent::Fragment(f) = ev {
            numbers.push(s.persist(f).await.unwrap().number);
        }
    }
    numbers
}

async fn read_all(engine: &Engine, name: &str, sel: StartSelector) -> Vec<u64> {
    let mut r = engine.get_media(Some(name), None, sel).unwrap();
    let mut out = Vec::new();
    while let Some(item) = r.next().await {
        out.push(item.unwrap().0.number);
    }
    out
}

#[tokio::test]
async fn fragments_survive_reopening_and_numbering_continues() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(Store::open_local(dir.path()).unwrap(), config())
            .await
            .unwrap();
        engine
            .create_stream("cam", None, None, None, Some(1), BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(ingest(&engine, "cam", 3).await, [1, 2, 3]);
    }
    // An object written but never indexed (a crash between the two) is removed.
    let orphan_dir = std::fs::read_dir(dir.path().join("objects/streams"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(orphan_dir.join("00000000000000000004.mkv"), b"half").unwrap();

    let engine = Engine::open(Store::open_local(dir.path()).unwrap(), config())
        .await
        .unwrap();
    assert_eq!(
        read_all(&engine, "cam", StartSelector::Earliest).await,
        [1, 2, 3]
    );
    assert!(!orphan_dir.join("00000000000000000004.mkv").exists());
    // The same upload again (a producer resending after a lost connection)
    // is acknowledged with the stored fragments and stores nothing new.
    assert_eq!(ingest(&engine, "cam", 3).await, [1, 2, 3]);
    assert_eq!(
        ingest_at(&engine, "cam", 1, 1_700_000_003_000_000_000).await,
        [4]
    );
    assert_eq!(
        read_all(&engine, "cam", StartSelector::ContinuationToken(2)).await,
        [3, 4]
    );
    assert_eq!(
        read_all(
            &engine,
            "cam",
            StartSelector::ProducerTimestamp(1_700_000_001_500)
        )
        .await,
        [2, 3, 4]
    );
    assert!(
        read_all(&engine, "cam", StartSelector::Now)
            .await
            .is_empty()
    );
    let page = engine
        .list_fragments(Some("cam"), None, None, 3, None)
        .unwrap();
    assert_eq!(page.fragments.len(), 3);
    let rest = engine
        .list_fragments(Some("cam"), None, None, 3, page.next_token.as_deref())
        .unwrap();
    assert_eq!(
        rest.fragments.iter().map(|f| f.number).collect::<Vec<_>>(),
        [4]
    );
    assert!(rest.next_token.is_none());
}

#[tokio::test]
async fn retention_deletes_expired_fragments_durably() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Store::open_local(dir.path()).unwrap(), config())
        .await
        .unwrap();
    engine
        .create_stream("kept", None, None, None, Some(1), BTreeMap::new())
        .await
        .unwrap();
    engine
        .create_stream("live", None, None, None, Some(0), BTreeMap::new())
        .await
        .unwrap();
    ingest(&engine, "kept", 3).await;
    ingest(&engine, "live", 3).await;
    let now = kinema_engine::now_ms();

    // Within retention nothing goes; past the live buffer the zero-retention stream empties.
    assert_eq!(engine.enforce_retention(now + 5_000).await.unwrap(), 0);
    assert_eq!(engine.enforce_retention(now + 20_000).await.unwrap(), 3);
    assert!(
        read_all(&engine, "live", StartSelector::Earliest)
            .await
            .is_empty()
    );
    assert_eq!(
        read_all(&engine, "kept", StartSelector::Earliest).await,
        [1, 2, 3]
    );
    assert_eq!(engine.enforce_retention(now + 3_700_000).await.unwrap(), 3);
    drop(engine);

    let engine = Engine::open(Store::open_local(dir.path()).unwrap(), config())
        .await
        .unwrap();
    assert!(
        read_all(&engine, "kept", StartSelector::Earliest)
            .await
            .is_empty()
    );
    let objects = std::fs::read_dir(dir.path().join("objects/streams"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .count();
    assert_eq!(objects, 0, "expired objects are deleted from disk");
    assert_eq!(
        ingest(&engine, "kept", 1).await,
        [4],
        "numbers never repeat after trimming"
    );
}

#[tokio::test]
async fn deleting_a_stream_removes_its_data_and_name() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Store::open_local(dir.path()).unwrap(), config())
        .await
        .unwrap();
    let info = engine
        .create_stream("gone", None, None, None, Some(1), BTreeMap::new())
        .await
        .unwrap();
    ingest(&engine, "gone", 2).await;
    engine
        .delete_stream(&info.arn, Some(&info.version))
        .await
        .unwrap();
    assert!(engine.describe_stream(Some("gone"), None).is_err());
    let again = engine
        .create_stream("gone", None, None, None, Some(1), BTreeMap::new())
        .await
        .unwrap();
    assert_ne!(again.arn, info.arn);
    assert!(
        read_all(&engine, "gone", StartSelector::Earliest)
            .await
            .is_empty()
    );
}

/// Data-stream retention deletes whole expired log segments from disk and
/// the records in them; the rest stays readable, also after reopening.
#[tokio::test]
async fn data_stream_retention_deletes_expired_segments_from_disk() {
    use kinema_engine::datastreams::{DataStreams, DataStreamsConfig, IteratorStart, PutEntry};
    let dir = tempfile::tempdir().unwrap();
    let config = DataStreamsConfig {
        segment_bytes: 2_000,
        ..DataStreamsConfig::default()
    };
    let ds = open_data_streams(dir.path(), config.clone()).await;
    ds.create("logs", 1).await.unwrap();
    for i in 0..100 {
        let entry = PutEntry {
            partition_key: "k".into(),
            explicit_hash_key: None,
            data: bytes::Bytes::from(format!("record {i:03} {}", "x".repeat(40))),
        };
        ds.put("logs", vec![entry]).await.unwrap();
    }
    let segments = || {
        std::fs::read_dir(dir.path().join("data"))
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .filter(|f| f.as_ref().unwrap().path().extension() == Some("log".as_ref()))
            .count()
    };
    let before = segments();
    assert!(before > 3, "small segments roll over: {before}");
    let read_all = |ds: DataStreams| async move {
        let it = ds
            .shard_iterator("logs", 0, IteratorStart::TrimHorizon)
            .unwrap();
        ds.get_records(&it, 10_000).await.unwrap().records
    };
    let now = kinema_engine::now_ms();
    assert_eq!(
        ds.enforce_retention(now).await.unwrap(),
        0,
        "nothing is older than 24 h yet"
    );
    let removed = ds.enforce_retention(now + 25 * 3_600_000).await.unwrap();
    assert!(
        removed > 0 && removed < 100,
        "every segment but the active one goes: {removed}"
    );
    assert_eq!(segments(), 1);
    let left = read_all(ds.clone()).await;
    assert_eq!(left.len(), 100 - removed);
    assert_eq!(
        left.last().unwrap().data,
        bytes::Bytes::from(format!("record 099 {}", "x".repeat(40)))
    );
    drop(ds);
    let ds = open_data_streams(dir.path(), config).await;
    assert_eq!(
        read_all(ds.clone()).await.len(),
        100 - removed,
        "the same records after reopening"
    );
}

// ---------------------------------------------------------------------------
// Virtual time: the services read a Clock that follows tokio's paused
// clock, so hours of expiry run in milliseconds.
// ---------------------------------------------------------------------------

/// 2025-01-01T00:00:00Z, the virtual start of the tests below.
const T0_MS: i64 = 1_735_689_600_000;

/// An engine on a clock following tokio's, with a stream `cam` that keeps
/// `retention_hours` of video.
async fn engine_in_virtual_time(dir: &std::path::Path, retention_hours: u32) -> Engine {
    let engine = Engine::open(
        Store::open_local(dir).unwrap(),
        EngineConfig {
            clock: kinema_engine::Clock::following_tokio(T0_MS),
            ..config()
        },
    )
    .await
    .unwrap();
    engine
        .create_stream(
            "cam",
            None,
            None,
            None,
            Some(retention_hours),
            BTreeMap::new(),
        )
        .await
        .unwrap();
    engine
}

async fn data_streams_in_virtual_time(
    dir: &std::path::Path,
) -> kinema_engine::datastreams::DataStreams {
    use kinema_engine::datastreams::DataStreamsConfig;
    let config = DataStreamsConfig {
        clock: kinema_engine::Clock::following_tokio(T0_MS),
        ..DataStreamsConfig::default()
    };
    let ds = open_data_streams(dir, config).await;
    ds.create("events", 1).await.unwrap();
    ds
}

fn entry(data: &str) -> kinema_engine::datastreams::PutEntry {
    kinema_engine::datastreams::PutEntry {
        partition_key: "k".into(),
        explicit_hash_key: None,
        data: bytes::Bytes::from(data.to_string()),
    }
}

/// A consumer that stops heartbeating loses its lease when it expires; a
/// second consumer then takes the shard over from the last checkpoint,
/// and the first one's late checkpoint is refused.
#[tokio::test(start_paused = true)]
async fn a_lease_expires_in_virtual_time_and_another_consumer_takes_over() {
    use kinema_datastream::leases::Checkpoint;
    use kinema_engine::EngineError;
    let dir = tempfile::tempdir().unwrap();
    let ds = data_streams_in_virtual_time(dir.path()).await;
    let lease_ms = 10_000;
    let got = ds
        .acquire_leases("events", "g", "a", 4, lease_ms)
        .await
        .unwrap();
    assert_eq!(got, vec![(0, None)]);
    ds.checkpoint("events", "g", "a", 0, Checkpoint::At(41))
        .await
        .unwrap();
    tokio::time::advance(std::time::Duration::from_millis(9_000)).await;
    assert!(
        ds.acquire_leases("events", "g", "b", 4, lease_ms)
            .await
            .unwrap()
            .is_empty(),
        "the lease is still a's"
    );
    // a renews (a heartbeat), then goes silent for longer than the lease.
    ds.acquire_leases("events", "g", "a", 4, lease_ms)
        .await
        .unwrap();
    tokio::time::advance(std::time::Duration::from_millis(9_000)).await;
    assert!(
        ds.acquire_leases("events", "g", "b", 4, lease_ms)
            .await
            .unwrap()
            .is_empty(),
        "renewed: not expired 18 s after the first acquire"
    );
    tokio::time::advance(std::time::Duration::from_millis(1_001)).await;
    let taken = ds
        .acquire_leases("events", "g", "b", 4, lease_ms)
        .await
        .unwrap();
    assert_eq!(taken, vec![(0, Some(Checkpoint::At(41)))]);
    assert!(matches!(
        ds.checkpoint("events", "g", "a", 0, Checkpoint::At(50))
            .await,
        Err(EngineError::LeaseLost(_))
    ));
    ds.checkpoint("events", "g", "b", 0, Checkpoint::At(50))
        .await
        .unwrap();
}

/// A shard iterator is good for five minutes of (virtual) time, then
/// GetRecords answers ExpiredIterator; the records stay readable with a
/// new iterator.
#[tokio::test(start_paused = true)]
async fn shard_iterators_expire_after_five_minutes_of_virtual_time() {
    use kinema_engine::EngineError;
    use kinema_engine::datastreams::IteratorStart;
    let dir = tempfile::tempdir().unwrap();
    let ds = data_streams_in_virtual_time(dir.path()).await;
    ds.put("events", vec![entry("one")]).await.unwrap();
    let it = ds
        .shard_iterator("events", 0, IteratorStart::TrimHorizon)
        .unwrap();
    tokio::time::advance(std::time::Duration::from_secs(299)).await;
    let page = ds.get_records(&it, 10).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(
        page.records[0].arrival_ms, T0_MS,
        "arrival on the virtual clock"
    );
    let it = ds
        .shard_iterator("events", 0, IteratorStart::TrimHorizon)
        .unwrap();
    tokio::time::advance(std::time::Duration::from_secs(301)).await;
    assert!(matches!(
        ds.get_records(&it, 10).await,
        Err(EngineError::ExpiredIterator(_))
    ));
    let it = ds
        .shard_iterator("events", 0, IteratorStart::TrimHorizon)
        .unwrap();
    assert_eq!(ds.get_records(&it, 10).await.unwrap().records.len(), 1);
    // A client's AFTER_SEQUENCE_NUMBER of the largest number is no panic.
    let it = ds
        .shard_iterator("events", 0, IteratorStart::AfterSequence(u64::MAX))
        .unwrap();
    assert!(ds.get_records(&it, 10).await.unwrap().records.is_empty());
}

/// A push subscription delivers what arrives, sends heartbeats while idle,
/// and ends after five minutes, all in virtual time.
#[tokio::test(start_paused = true)]
async fn a_subscription_heartbeats_and_ends_after_five_minutes_of_virtual_time() {
    use kinema_engine::datastreams::{IteratorStart, SUBSCRIPTION_MS};
    let dir = tempfile::tempdir().unwrap();
    let ds = data_streams_in_virtual_time(dir.path()).await;
    let mut sub = ds
        .subscribe_by_name("events", 0, IteratorStart::Latest)
        .unwrap();
    ds.put("events", vec![entry("first")]).await.unwrap();
    let heartbeat = std::time::Duration::from_secs(5);
    let e = sub.next_event(heartbeat).await.unwrap().unwrap();
    assert_eq!(e.records.len(), 1);
    let mut heartbeats = 0;
    while let Some(e) = sub.next_event(heartbeat).await {
        assert!(e.unwrap().records.is_empty());
        heartbeats += 1;
        assert!(heartbeats <= 100, "the subscription must end");
    }
    let expected = SUBSCRIPTION_MS / 5_000;
    assert!(
        (expected - 1..=expected).contains(&heartbeats),
        "{heartbeats} heartbeats of 5 s in 5 minutes"
    );
}

/// Retention runs on its interval and trims fragments once their
/// retention period has passed on the engine's (virtual) clock.
#[tokio::test(start_paused = true)]
async fn retention_trims_expired_fragments_on_its_interval_in_virtual_time() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in_virtual_time(dir.path(), 1).await;
    assert_eq!(ingest(&engine, "cam", 3).await.len(), 3);
    let stored = |e: &Engine| {
        e.list_fragments(Some("cam"), None, None, 100, None)
            .unwrap()
            .fragments
            .len()
    };
    assert_eq!(stored(&engine), 3);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .run_retention(std::time::Duration::from_secs(60), async {
                    let _ = stop_rx.await;
                })
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_secs(59 * 60)).await;
    assert_eq!(stored(&engine), 3, "kept within the hour");
    // A pass waits on file I/O, during which paused time may run ahead to
    // the next timer: look again each virtual second, for a bounded while.
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    let mut waited_s = 0;
    while stored(&engine) > 0 && waited_s < 600 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        waited_s += 1;
    }
    assert_eq!(stored(&engine), 0, "trimmed once the hour has passed");
    assert!(waited_s <= 120, "trimmed within two passes: {waited_s} s");
    stop_tx.send(()).unwrap();
    task.await.unwrap();
}

/// Playback sessions in virtual time: the window each mode lists (LIVE the
/// newest, ON_DEMAND a closed range, LIVE_REPLAY growing until its end has
/// passed), tokens bound to their protocol, and expiry after `Expires`.
#[tokio::test(start_paused = true)]
async fn playback_sessions_list_their_window_and_expire_in_virtual_time() {
    use kinema_engine::EngineError;
    use kinema_engine::playback::{Playback, Protocol, SessionRequest};
    use kinema_hls::session::Mode;
    use kinema_hls::{Container, Discontinuity};
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in_virtual_time(dir.path(), 24).await;
    // Fragments of 1 s at producer times P0, P0 + 1 s, ..., made as the
    // virtual clock starts (a replay's end is still ahead).
    const P0: i64 = T0_MS;
    assert_eq!(
        ingest_at(&engine, "cam", 8, P0 as i128 * 1_000_000)
            .await
            .len(),
        8
    );
    let pb = Playback::new(engine.clone(), 10);
    let req = |mode, start_ms, end_ms, max_fragments| SessionRequest {
        protocol: Protocol::Hls,
        name: Some("cam".into()),
        arn: None,
        mode,
        kind: kinema_engine::TimeKind::Producer,
        start_ms,
        end_ms,
        expires_s: Some(300),
        max_fragments,
        container: Container::FragmentedMp4,
        discontinuity: Discontinuity::Always,
        program_date_time: false,
    };
    let starts = |token: &str| {
        let s = pb.session(token, Protocol::Hls).unwrap();
        let (w, _) = pb.window(&s).unwrap();
        let starts: Vec<i64> = w.fragments.iter().map(|f| f.producer_ms - P0).collect();
        (starts, w.ended)
    };
    let live = pb.open(req(Mode::Live, None, None, Some(3))).await.unwrap();
    assert_eq!(starts(&live), (vec![5_000, 6_000, 7_000], false));
    let on_demand = pb
        .open(req(
            Mode::OnDemand,
            Some(P0 + 2_500),
            Some(P0 + 4_500),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(starts(&on_demand), (vec![2_000, 3_000, 4_000], true));
    let replay = pb
        .open(req(
            Mode::LiveReplay,
            Some(P0 + 6_500),
            Some(P0 + 9_500),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(starts(&replay), (vec![6_000, 7_000], false));
    // The camera goes on (a new upload 8 s later): the replay grows, and
    // ends once a fragment starts after its end.
    ingest_at(&engine, "cam", 3, (P0 as i128 + 8_000) * 1_000_000).await;
    assert_eq!(
        starts(&replay),
        (vec![6_000, 7_000, 8_000, 9_000], true),
        "grown to its end, and ended"
    );
    assert_eq!(starts(&live), (vec![8_000, 9_000, 10_000], false));
    // A token is good only for its protocol, and only until it expires.
    assert!(matches!(
        pb.session(&live, Protocol::Dash),
        Err(EngineError::NotAuthorized(_))
    ));
    tokio::time::advance(std::time::Duration::from_secs(299)).await;
    assert!(pb.session(&live, Protocol::Hls).is_ok());
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    assert!(matches!(
        pb.session(&live, Protocol::Hls),
        Err(EngineError::NotAuthorized(m)) if m.contains("expired")
    ));
    // Requests that contradict their mode are refused.
    assert!(matches!(
        pb.open(req(Mode::Live, Some(P0), None, None)).await,
        Err(EngineError::InvalidArgument(_))
    ));
    assert!(matches!(
        pb.open(req(
            Mode::OnDemand,
            Some(P0),
            Some(P0 + 4 * 3_600_000),
            None
        ))
        .await,
        Err(EngineError::InvalidArgument(_))
    ));
}

/// Lease heartbeats and checkpoints go to the stream's group change log,
/// not to the metadata document (which is rewritten only at compaction);
/// after reopening, the group is as acknowledged, a torn tail of the log
/// loses only the unacknowledged change, and compaction loses nothing.
#[tokio::test]
async fn group_changes_are_logged_cheaply_and_survive_reopening() {
    use kinema_datastream::leases::{Checkpoint, LeaseTable};
    use kinema_engine::datastreams::DataStreamsConfig;
    let dir = tempfile::tempdir().unwrap();
    let config = DataStreamsConfig {
        group_compact_after: 8,
        ..DataStreamsConfig::default()
    };
    let open = || async { open_data_streams(dir.path(), config.clone()).await };
    let meta = dir.path().join("meta/data-streams.json");
    let ds = open().await;
    ds.create("events", 2).await.unwrap();
    let saved = std::fs::read(&meta).unwrap();
    let lease_ms = 60_000;
    assert_eq!(
        ds.acquire_leases("events", "g", "a", 2, lease_ms)
            .await
            .unwrap()
            .len(),
        2
    );
    for seq in 1..=5 {
        ds.checkpoint("events", "g", "a", 0, Checkpoint::At(seq))
            .await
            .unwrap();
    }
    assert_eq!(
        std::fs::read(&meta).unwrap(),
        saved,
        "six changes, no rewrite of the metadata document"
    );
    let wal = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .map(|d| d.unwrap().path().join("groups.wal"))
        .next()
        .unwrap();
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    let acknowledged: LeaseTable = ds.group("events", "g").unwrap();
    drop(ds);
    // A change torn by a crash mid-append was never acknowledged.
    let mut f = std::fs::OpenOptions::new().append(true).open(&wal).unwrap();
    std::io::Write::write_all(&mut f, &[200, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);
    let ds = open().await;
    assert_eq!(ds.group("events", "g").unwrap(), acknowledged);
    // Two more changes reach the compaction point: the document takes the
    // changes in and the log empties; nothing is lost on reopening.
    ds.checkpoint("events", "g", "a", 0, Checkpoint::At(6))
        .await
        .unwrap();
    ds.checkpoint("events", "g", "a", 1, Checkpoint::At(7))
        .await
        .unwrap();
    assert_ne!(std::fs::read(&meta).unwrap(), saved, "compacted");
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
    ds.checkpoint("events", "g", "a", 0, Checkpoint::At(8))
        .await
        .unwrap();
    let acknowledged = ds.group("events", "g").unwrap();
    assert_eq!(acknowledged.shards[&0].checkpoint, Some(Checkpoint::At(8)));
    drop(ds);
    let ds = open().await;
    assert_eq!(ds.group("events", "g").unwrap(), acknowledged);
    // A lost lease is still refused after all this.
    assert!(
        ds.acquire_leases("events", "g", "b", 2, lease_ms)
            .await
            .unwrap()
            .is_empty(),
        "a's leases are still a's"
    );
}

/// Many concurrent puts through the single writer (which batches them into
/// shared appends): each record is acknowledged with its own sequence
/// number, numbers rise in log order, and a reopened service reads back
/// exactly the acknowledged records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_are_group_committed_and_recovered_in_order() {
    use kinema_engine::datastreams::{DataStreamsConfig, IteratorStart};
    let dir = tempfile::tempdir().unwrap();
    let open = || async { open_data_streams(dir.path(), DataStreamsConfig::default()).await };
    let ds = open().await;
    ds.create("events", 1).await.unwrap();
    let puts = (0..64).map(|i| {
        let ds = ds.clone();
        tokio::spawn(async move {
            let batch = (0..5).map(|j| entry(&format!("{i}-{j}"))).collect();
            ds.put("events", batch).await.unwrap()
        })
    });
    let mut acknowledged: Vec<(u64, String)> = Vec::new();
    for (i, p) in puts.enumerate() {
        let outcomes = p.await.unwrap();
        for (j, o) in outcomes.iter().enumerate() {
            acknowledged.push((o.expect("no quota is set").sequence, format!("{i}-{j}")));
        }
    }
    acknowledged.sort();
    let mut seqs: Vec<u64> = acknowledged.iter().map(|(s, _)| *s).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), 320, "every record has its own number");
    let read_all = |ds: kinema_engine::datastreams::DataStreams| async move {
        let it = ds
            .shard_iterator("events", 0, IteratorStart::TrimHorizon)
            .unwrap();
        ds.get_records(&it, 10_000)
            .await
            .unwrap()
            .records
            .into_iter()
            .map(|r| (r.sequence, String::from_utf8(r.data.to_vec()).unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        read_all(ds.clone()).await,
        acknowledged,
        "log order = number order"
    );
    drop(ds);
    assert_eq!(
        read_all(open().await).await,
        acknowledged,
        "the same after reopening"
    );
}

// ---------------------------------------------------------------------------
// Detection with a stand-in model: the real decoder, queues, tracker and
// publisher, and a model that blocks until the test lets it run.
// ---------------------------------------------------------------------------

mod gated {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    use kinema_detect::{BBox, Detection};
    use kinema_engine::detection::{DetectorFailure, Inference, Model, Models};
    use kinema_infer::ModelSpec;

    /// A model that finds one bicycle in every frame, but only once the
    /// gate is open; until then every call to `detect` waits.
    #[derive(Default)]
    pub struct GatedModel {
        open: Mutex<bool>,
        opened: Condvar,
        pub calls: AtomicUsize,
    }

    impl GatedModel {
        pub fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    impl Model for GatedModel {
        fn input_size(&self) -> (u32, u32) {
            (64, 48)
        }
        fn classes(&self) -> usize {
            kinema_detect::coco::ssd_labels().len()
        }
        fn detect(
            &self,
            rgb: &[u8],
            wanted: &[usize],
            _threshold: f32,
            _iou: f32,
        ) -> Result<Inference, String> {
            assert_eq!(rgb.len(), 64 * 48 * 3, "frames come scaled to the input");
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Inference {
                detections: vec![Detection {
                    class: wanted[0],
                    score: 0.9,
                    bbox: BBox {
                        x0: 0.4,
                        y0: 0.4,
                        x1: 0.6,
                        y1: 0.6,
                    },
                }],
                run_time: Duration::from_millis(1),
            })
        }
    }

    pub struct GatedModels(pub Arc<GatedModel>);

    impl Models for GatedModels {
        fn load(&self, _spec: &ModelSpec) -> Result<Arc<dyn Model>, DetectorFailure> {
            Ok(self.0.clone())
        }
    }
}

/// A detector that cannot keep up never slows ingest: with the model
/// stuck, every fragment of a fast camera is still acknowledged, the
/// detector sheds the oldest fragments (and counts them), and once the
/// model runs again the events of the frames it analysed are published,
/// in frame order, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_detector_sheds_fragments_without_slowing_ingest() {
    use kinema_engine::datastreams::{DataStreamsConfig, IteratorStart};
    use kinema_engine::detection::{DetectionConfig, DetectorSettings, Detectors};
    use std::sync::Arc;
    use std::time::Duration;

    const FRAGMENTS: u64 = 30;
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("camera.mkv");
    kinema_media::rtsp_server::write_test_mkv(&clip, FRAGMENTS as u32 * 10, 10).unwrap();
    let upload = std::fs::read(&clip).unwrap();
    let engine = Engine::open(Store::open_local(dir.path()).unwrap(), config())
        .await
        .unwrap();
    engine
        .create_stream("cam", None, None, None, Some(1), BTreeMap::new())
        .await
        .unwrap();
    let ds = open_data_streams(dir.path(), DataStreamsConfig::default()).await;
    let model = Arc::new(gated::GatedModel::default());
    let settings: DetectorSettings = serde_json::from_value(serde_json::json!({
        "classes": ["bicycle"],
        "detections_per_second": 240.0,
        "min_hits": 1,
        "detection_events": true,
    }))
    .unwrap();
    let detectors = Detectors::start_with(
        engine.clone(),
        ds.clone(),
        DetectionConfig {
            runtime_library: "unused".into(),
            default_model: "stand-in.onnx".into(),
            intra_threads: 1,
            workers: 1,
            queue_frames: 1,
            events_stream: "events".into(),
            events_shards: 1,
            events_queue: None,
            events_channel: None,
            public_url: "http://127.0.0.1:1".into(),
            models_dir: dir.path().to_path_buf(),
            max_detectors: 4,
        },
        vec![("cam".into(), settings)],
        Arc::new(gated::GatedModels(model.clone())),
    )
    .await
    .unwrap();

    let mut s = engine
        .begin_put_media(
            Some("cam"),
            None,
            TimecodeType::Relative,
            1_700_000_000_000_000_000,
        )
        .unwrap();
    s.push(&upload);
    s.finish();
    let mut acked = 0;
    while let Some(ev) = s.poll() {
        if let IngestEvent::Fragment(f) = ev {
            s.persist(f).await.unwrap();
            acked += 1;
        }
    }
    assert_eq!(acked, FRAGMENTS, "every fragment acknowledged, model stuck");

    let status = || detectors.get("cam").unwrap();
    for _ in 0..200 {
        if status().fragments == FRAGMENTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stuck = status();
    assert_eq!(stuck.fragments, FRAGMENTS, "the router saw every fragment");
    assert_eq!(stuck.frames_inferred, 0);
    // One fragment at the decoder and four waiting: the rest were shed.
    assert!(
        stuck.fragments_dropped >= FRAGMENTS - 6,
        "dropped {} of {FRAGMENTS}",
        stuck.fragments_dropped
    );
    assert!(stuck.frames_dropped >= 10 * stuck.fragments_dropped);

    model.open();
    for _ in 0..400 {
        if status().frames_inferred >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let ran = status();
    assert!(ran.frames_inferred >= 10, "{ran:?}");
    detectors.shutdown().await;

    let it = ds
        .shard_iterator("events", 0, IteratorStart::TrimHorizon)
        .unwrap();
    let records = ds.get_records(&it, 10_000).await.unwrap().records;
    let events: Vec<serde_json::Value> = records
        .iter()
        .map(|r| serde_json::from_slice(&r.data).unwrap())
        .collect();
    assert!(
        events.len() as u64 >= ran.events,
        "{} published, {} made before shutdown",
        events.len(),
        ran.events
    );
    let frames: Vec<i64> = events
        .iter()
        .filter(|e| e["kind"] == "detection")
        .map(|e| e["producer_timestamp_ms"].as_i64().unwrap())
        .collect();
    assert!(frames.len() >= 10);
    assert!(
        frames.windows(2).all(|w| w[0] < w[1]),
        "one detection event per frame, in frame order"
    );
    assert!(events.iter().all(|e| e["stream"] == "cam"));
}

// ---------------------------------------------------------------------------
// Data streams: resharding and arrival times against the writer.
// ---------------------------------------------------------------------------

/// Every record of a shard read from TRIM_HORIZON to its end (or, for an
/// open shard, to what is there now), and whether the shard is drained
/// (then with its children).
async fn read_shard_fully(
    ds: &kinema_engine::datastreams::DataStreams,
    shard: u32,
) -> (Vec<u64>, Option<Vec<u32>>) {
    use kinema_engine::datastreams::IteratorStart;
    let mut it = ds
        .shard_iterator("events", shard, IteratorStart::TrimHorizon)
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let page = ds.get_records(&it, 10_000).await.unwrap();
        let empty = page.records.is_empty();
        seen.extend(page.records.iter().map(|r| r.sequence));
        match page.next_iterator {
            None => return (seen, Some(page.child_shards.iter().map(|c| c.id).collect())),
            Some(_) if empty => return (seen, None),
            Some(next) => it = next,
        }
    }
}

/// A split whose new map cannot be saved is undone: the stream keeps one
/// open shard, records keep going to it, and they are all there after a
/// restart (none went to a shard that was never saved).
#[tokio::test]
async fn a_reshard_that_cannot_be_saved_changes_nothing() {
    use kinema_engine::datastreams::DataStreamsConfig;
    let dir = tempfile::tempdir().unwrap();
    let open = || async { open_data_streams(dir.path(), DataStreamsConfig::default()).await };
    let ds = open().await;
    ds.create("events", 1).await.unwrap();
    // The metadata document cannot be written while a directory sits where
    // its temporary file goes.
    let blocker = dir.path().join("meta/data-streams.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    assert!(ds.split("events", 0, 1 << 127).await.is_err());
    assert_eq!(ds.describe("events").unwrap().shards.open().len(), 1);
    let keys: Vec<_> = (0..20).map(|i| entry(&format!("r{i}"))).collect();
    let keys = keys
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e.partition_key = format!("key-{i}");
            e
        })
        .collect();
    let acked: Vec<u64> = ds
        .put("events", keys)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.unwrap().sequence)
        .collect();
    assert_eq!(read_shard_fully(&ds, 0).await.0, acked);
    std::fs::remove_dir(&blocker).unwrap();
    drop(ds);
    let ds = open().await;
    assert_eq!(ds.describe("events").unwrap().shards.open().len(), 1);
    assert_eq!(read_shard_fully(&ds, 0).await.0, acked, "after a restart");
}

/// Puts keep arriving while a shard splits; a consumer that reads the
/// parent until it is drained and then its children sees every
/// acknowledged record exactly once (a record admitted to the parent is
/// indexed before the parent closes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_following_a_split_under_load_sees_every_record_once() {
    use kinema_engine::datastreams::DataStreamsConfig;
    let dir = tempfile::tempdir().unwrap();
    let ds = open_data_streams(dir.path(), DataStreamsConfig::default()).await;
    ds.create("events", 1).await.unwrap();
    let putters: Vec<_> = (0..4)
        .map(|p| {
            let ds = ds.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..60 {
                    let batch = (0..4)
                        .map(|j| {
                            let mut e = entry("x");
                            e.partition_key = format!("{p}-{i}-{j}");
                            e
                        })
                        .collect();
                    for o in ds.put("events", batch).await.unwrap() {
                        acked.push(o.unwrap().sequence);
                    }
                }
                acked
            })
        })
        .collect();
    // The consumer follows the parent while the puts run and the split
    // happens.
    let consumer = {
        let ds = ds.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..10_000 {
                let (records, drained) = read_shard_fully(&ds, 0).await;
                if let Some(children) = drained {
                    return (records, children);
                }
                seen = records;
                tokio::task::yield_now().await;
            }
            panic!("the parent never drained ({} records seen)", seen.len());
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    ds.split("events", 0, 1 << 127).await.unwrap();
    let mut acked = Vec::new();
    for p in putters {
        acked.extend(p.await.unwrap());
    }
    let (mut seen, children) = consumer.await.unwrap();
    assert_eq!(children.len(), 2);
    let in_parent = seen.len();
    for c in children {
        seen.extend(read_shard_fully(&ds, c).await.0);
    }
    assert!(
        in_parent > 0 && seen.len() > in_parent,
        "the split came while puts ran ({in_parent} of {} in the parent)",
        seen.len()
    );
    acked.sort_unstable();
    seen.sort_unstable();
    assert_eq!(seen.len(), acked.len(), "no record missed or read twice");
    assert_eq!(seen, acked);
}

/// Arrival times never go back, even when the clock does (here across a
/// restart): records read in sequence order have non-decreasing arrival
/// times, which reads by timestamp rely on.
#[tokio::test(start_paused = true)]
async fn arrival_times_never_go_back_when_the_clock_does() {
    use kinema_engine::datastreams::{DataStreams, DataStreamsConfig, IteratorStart};
    let dir = tempfile::tempdir().unwrap();
    let open = |start_ms: i64| {
        let path = dir.path().to_path_buf();
        async move {
            DataStreams::open(
                Store::open_local(&path).unwrap(),
                DataStreamsConfig {
                    clock: kinema_engine::Clock::following_tokio(start_ms),
                    ..DataStreamsConfig::default()
                },
                [8; 32],
            )
            .await
            .unwrap()
        }
    };
    let ds = open(T0_MS + 3_600_000).await;
    ds.create("events", 1).await.unwrap();
    ds.put("events", vec![entry("before")]).await.unwrap();
    drop(ds);
    // The clock was an hour fast; after the restart it is right.
    let ds = open(T0_MS).await;
    ds.put("events", vec![entry("after")]).await.unwrap();
    let it = ds
        .shard_iterator("events", 0, IteratorStart::TrimHorizon)
        .unwrap();
    let arrivals: Vec<i64> = ds
        .get_records(&it, 10)
        .await
        .unwrap()
        .records
        .iter()
        .map(|r| r.arrival_ms)
        .collect();
    assert_eq!(arrivals, vec![T0_MS + 3_600_000; 2]);
    // A read from a time between finds the first record at or after it.
    let it = ds
        .shard_iterator("events", 0, IteratorStart::AtTimestamp(T0_MS + 1))
        .unwrap();
    assert_eq!(ds.get_records(&it, 10).await.unwrap().records.len(), 2);
}

/// Issue 15, finding 8: the longest stream name (256 characters) makes a
/// stream whose files fit the file system, and a create refused past the
/// stream limit leaves no files behind.
#[tokio::test]
async fn long_names_fit_on_disk_and_refused_creates_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let open = || async {
        Engine::open(
            Store::open_local(dir.path()).unwrap(),
            EngineConfig {
                max_streams: 2,
                ..config()
            },
        )
        .await
        .unwrap()
    };
    let engine = open().await;
    let long = "n".repeat(256);
    engine
        .create_stream(&long, None, None, None, Some(1), BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(ingest(&engine, &long, 2).await, vec![1, 2]);
    engine
        .create_stream("b", None, None, None, Some(1), BTreeMap::new())
        .await
        .unwrap();
    let count = |sub: &str| std::fs::read_dir(dir.path().join(sub)).unwrap().count();
    let before = (count("index"), count("objects/streams"));
    assert!(matches!(
        engine
            .create_stream("c", None, None, None, Some(1), BTreeMap::new())
            .await,
        Err(kinema_engine::EngineError::ClientLimitExceeded(_))
    ));
    assert_eq!((count("index"), count("objects/streams")), before);
    drop(engine);
    let engine = open().await;
    assert_eq!(
        read_all(&engine, &long, StartSelector::Earliest).await,
        vec![1, 2]
    );
}

/// Issue 15, finding 8: a resend (same start, frames and duration, same
/// content) is acknowledged with the stored fragment; a different fragment
/// that only shares the start, frame count and duration is stored.
#[tokio::test]
async fn only_a_true_resend_is_taken_for_the_stored_fragment() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Store::open_local(dir.path()).unwrap(), config())
        .await
        .unwrap();
    engine
        .create_stream("cam", None, None, None, Some(1), BTreeMap::new())
        .await
        .unwrap();
    let put = |body: Vec<u8>| {
        let engine = engine.clone();
        async move {
            let mut s = engine
                .begin_put_media(
                    Some("cam"),
                    None,
                    TimecodeType::Relative,
                    1_700_000_000_000_000_000,
                )
                .unwrap();
            s.push(&body);
            s.finish();
            let mut numbers = Vec::new();
            while let Some(ev) = s.poll() {
                if let IngestEvent::Fragment(f) = ev {
                    numbers.push(s.persist(f).await.unwrap().number);
                }
            }
            numbers
        }
    };
    assert_eq!(put(upload_filled(1, 0xAB)).await, vec![1]);
    assert_eq!(put(upload_filled(1, 0xAB)).await, vec![1], "a resend");
    assert_eq!(put(upload_filled(1, 0xCD)).await, vec![2], "other content");
    assert_eq!(
        read_all(&engine, "cam", StartSelector::Earliest).await,
        vec![1, 2]
    );
}

/// Issue 15, finding 8: a stream takes a bounded number of producers and
/// readers at a time; a place comes free when its holder ends.
#[tokio::test]
async fn producers_and_readers_per_stream_are_capped() {
    use kinema_engine::EngineError;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        Store::open_local(dir.path()).unwrap(),
        EngineConfig {
            max_producers_per_stream: 1,
            max_readers_per_stream: 2,
            ..config()
        },
    )
    .await
    .unwrap();
    engine
        .create_stream("cam", None, None, None, Some(1), BTreeMap::new())
        .await
        .unwrap();
    let put = || engine.begin_put_media(Some("cam"), None, TimecodeType::Relative, 0);
    let first = put().unwrap();
    assert!(matches!(put(), Err(EngineError::ClientLimitExceeded(_))));
    drop(first);
    let _again = put().unwrap();
    let read = || engine.get_media(Some("cam"), None, StartSelector::Earliest);
    let (a, _b) = (read().unwrap(), read().unwrap());
    assert!(matches!(read(), Err(EngineError::ClientLimitExceeded(_))));
    assert!(matches!(
        engine.fragments_by_number(Some("cam"), None, &[]),
        Err(EngineError::ClientLimitExceeded(_))
    ));
    drop(a);
    assert!(read().is_ok());
}

/// An SDP offer sent to a channel whose master is away waits for a real
/// master, also when the server cannot be master of that channel (no
/// stream of its name): the server must not take the offer and drop it.
#[tokio::test]
async fn an_offer_waits_for_a_master_the_server_cannot_replace() {
    use kinema_engine::channels::Channels;
    use kinema_engine::signaling::{
        Connection, Hub, Outgoing, Role, ServerMaster, SignalingConfig,
    };
    use std::sync::Arc;

    /// A server that serves no stream (as for a channel named after none).
    struct NoStreams;
    impl ServerMaster for NoStreams {
        fn serves(&self, _channel: &str) -> bool {
            false
        }
        fn attach(&self, _channel: &str, conn: Connection) -> Result<(), Connection> {
            Err(conn)
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let channels = Channels::open(
        Store::open_local(dir.path()).unwrap(),
        "us-east-1",
        "000000000000",
        10,
        kinema_engine::Clock::system(),
    )
    .await
    .unwrap();
    let arn = channels
        .create("doorbell", None, None, BTreeMap::new())
        .await
        .unwrap()
        .arn;
    let hub = Hub::new(channels, SignalingConfig::default());
    hub.set_server_master(Arc::new(NoStreams));
    let viewer = hub.connect(&arn, Role::Viewer, Some("v1")).await.unwrap();
    assert!(
        viewer
            .send(r#"{"action": "SDP_OFFER", "messagePayload": "b2ZmZXI="}"#.into())
            .await
    );
    let mut master = hub.connect(&arn, Role::Master, None).await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), master.recv())
        .await
        .expect("the master gets the waiting offer");
    match got {
        Some(Outgoing::Text(t)) => {
            assert!(t.contains("SDP_OFFER") && t.contains("b2ZmZXI="), "{t}")
        }
        other => panic!("{other:?}"),
    }
}

/// Two creates of one name in the same millisecond share an on-disk id:
/// the refused one must leave the winner's files alone.
#[tokio::test(start_paused = true)]
async fn a_refused_create_in_the_same_millisecond_keeps_the_winners_files() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        Store::open_local(dir.path()).unwrap(),
        EngineConfig {
            clock: kinema_engine::Clock::following_tokio(T0_MS),
            ..config()
        },
    )
    .await
    .unwrap();
    let create = || engine.create_stream("twin", None, None, None, Some(1), BTreeMap::new());
    let (a, b) = tokio::join!(create(), create());
    assert!(a.is_ok() != b.is_ok(), "one wins: {a:?} {b:?}");
    let id = a.or(b).unwrap().id;
    assert!(
        dir.path().join(format!("index/{id}.idx")).exists(),
        "the winner's index is still there"
    );
}

/// A queue in virtual time: in-flight records come back after their
/// timeout, also after reopening across snapshots; a long poll wakes for
/// a put; records past the stream's retention leave the queue.
#[tokio::test(start_paused = true)]
async fn a_queue_keeps_its_state_across_reopening_and_drops_records_past_retention() {
    use kinema_engine::datastreams::{
        DataStreams, DataStreamsConfig, EntryAction, IteratorStart, QueueAttributes, QueueStart,
    };
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let config = DataStreamsConfig {
        clock: kinema_engine::Clock::following_tokio(T0_MS),
        group_compact_after: 3,
        segment_bytes: 2_000,
        ..DataStreamsConfig::default()
    };
    let open = || async { open_data_streams(dir.path(), config.clone()).await };
    let ds = open().await;
    ds.create("events", 1).await.unwrap();
    for i in 0..100 {
        ds.put(
            "events",
            vec![entry(&format!("record {i:03} {}", "x".repeat(40)))],
        )
        .await
        .unwrap();
    }
    let stream_arn = ds.describe("events").unwrap().arn;
    let attrs = QueueAttributes {
        visibility_s: Some(30),
        max_receive: Some(None),
    };
    let q = ds
        .create_queue(
            "q",
            &stream_arn,
            QueueStart::TrimHorizon,
            attrs,
            BTreeMap::new(),
        )
        .await
        .unwrap()
        .info
        .arn;
    let wait = Duration::from_secs(1);
    let data = |r: &kinema_engine::datastreams::QueueRecord| {
        String::from_utf8_lossy(&r.data)[..10].to_string()
    };
    let first = ds.receive_queue(&q, 10, wait, false).await.unwrap();
    assert_eq!(data(&first[0]), "record 000");
    async fn ack_all(
        ds: &DataStreams,
        q: &str,
        records: &[kinema_engine::datastreams::QueueRecord],
    ) {
        let handles: Vec<String> = records.iter().map(|r| r.receipt_handle.clone()).collect();
        let actions = vec![EntryAction::Acknowledge; handles.len()];
        let out = ds
            .queue_entries(q, &actions, false, &handles)
            .await
            .unwrap();
        assert!(out.iter().all(Result::is_ok), "{out:?}");
    }
    ack_all(&ds, &q, &first[..5]).await;
    for _ in 0..3 {
        let batch = ds.receive_queue(&q, 10, wait, false).await.unwrap();
        ack_all(&ds, &q, &batch).await;
    }
    let queue_dir = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("queues");
    let state = std::fs::read_dir(&queue_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("state.json");
    let snapshot = std::fs::read(&state).unwrap();
    assert!(
        String::from_utf8_lossy(&snapshot).contains("\"lsn\":"),
        "compacted into a snapshot"
    );
    drop(ds);

    let ds = open().await;
    // Five of the first batch are still in flight: the next receive goes on
    // with first deliveries.
    let next = ds.receive_queue(&q, 10, wait, false).await.unwrap();
    assert_eq!(data(&next[0]), "record 040");
    ack_all(&ds, &q, &next).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    let back = ds.receive_queue(&q, 5, wait, false).await.unwrap();
    assert_eq!(
        back.iter().map(data).collect::<Vec<_>>(),
        first[5..].iter().map(data).collect::<Vec<_>>(),
        "redelivered after the timeout"
    );
    assert!(back.iter().all(|r| r.receive_count == 2));
    assert!(
        back.iter()
            .zip(&first[5..])
            .all(|(b, f)| b.first_receive_ms == f.first_receive_ms)
    );

    // A long poll on an empty stream tail answers when a record is put.
    let drained = {
        let mut all = Vec::new();
        loop {
            let batch = ds.receive_queue(&q, 10, wait, false).await.unwrap();
            if batch.is_empty() {
                break all;
            }
            ack_all(&ds, &q, &batch).await;
            all.extend(batch);
        }
    };
    assert_eq!(drained.len(), 100 - 50);
    let poll = {
        let ds = ds.clone();
        let q = q.clone();
        tokio::spawn(async move {
            ds.receive_queue(&q, 10, Duration::from_secs(20), false)
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let put_at = ds.config().clock.now_ms();
    ds.put("events", vec![entry("late")]).await.unwrap();
    let polled = poll.await.unwrap().unwrap();
    assert_eq!(polled.len(), 1);
    assert!(
        polled[0].first_receive_ms - put_at < 1000,
        "answered at the put"
    );

    // The five in flight (not acknowledged) and everything the stream
    // trims leave the queue.
    let now = ds.config().clock.now_ms();
    let removed = ds.enforce_retention(now + 25 * 3_600_000).await.unwrap();
    assert!(removed > 0);
    tokio::time::advance(Duration::from_secs(3600)).await;
    let it = ds
        .shard_iterator("events", 0, IteratorStart::TrimHorizon)
        .unwrap();
    let kept = ds.get_records(&it, 10_000).await.unwrap().records;
    let again = ds.receive_queue(&q, 10, wait, false).await.unwrap();
    let oldest = kept.first().unwrap().sequence;
    assert!(
        again.iter().all(|r| r.sequence >= oldest),
        "nothing past retention is delivered: {:?}",
        again.iter().map(|r| r.sequence).collect::<Vec<_>>()
    );
    assert_eq!(
        again.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        vec![polled[0].sequence]
    );
}

/// A data-stream service over the store in `dir`.
async fn open_data_streams(
    dir: &std::path::Path,
    config: kinema_engine::datastreams::DataStreamsConfig,
) -> kinema_engine::datastreams::DataStreams {
    kinema_engine::datastreams::DataStreams::open(Store::open_local(dir).unwrap(), config, [4; 32])
        .await
        .unwrap()
}

/// A JSON channel into bucket `archive` of account 123456789012.
fn channel_settings(
    compression: kinema_datastream::delivery::Compression,
    freshness_s: u32,
    template: Option<&str>,
) -> kinema_engine::datastreams::ChannelSettings {
    kinema_engine::datastreams::ChannelSettings {
        role_arn: "arn:aws:iam::123456789012:role/channel".into(),
        format: kinema_datastream::delivery::RecordFormat::Json,
        bucket: "archive".into(),
        bucket_owner: "123456789012".into(),
        template: template.map(str::to_string),
        storage_class: None,
        compression,
        freshness_s,
        error_bucket: None,
        error_prefix: None,
        logging: kinema_engine::datastreams::Logging::default(),
    }
}

/// Every file under `dir`, relative to it, with its bytes.
fn files_under(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn a_channel_delivers_each_record_once_across_a_failed_write_and_a_crash() {
    use kinema_datastream::delivery::Compression;
    use kinema_engine::datastreams::{DataStreams, DataStreamsConfig, PutEntry};
    let dir = tempfile::tempdir().unwrap();
    let open = || async { open_data_streams(dir.path(), DataStreamsConfig::default()).await };
    // Records 3, 10, 17, ... are not JSON: dead letters.
    let put = |ds: DataStreams, range: std::ops::Range<u32>| async move {
        for i in range {
            let data = if i % 7 == 3 {
                format!("not json {i}")
            } else {
                format!("{{\"n\":{i},\n\"pad\":\"{}\"}}", "x".repeat(30))
            };
            ds.put(
                "events",
                vec![PutEntry {
                    partition_key: format!("key-{i}"),
                    explicit_hash_key: None,
                    data: bytes::Bytes::from(data),
                }],
            )
            .await
            .unwrap();
        }
    };
    let ds = open().await;
    ds.create("events", 2).await.unwrap();
    let stream_arn = ds.describe("events").unwrap().arn;
    put(ds.clone(), 1000..1001).await;
    let settings = channel_settings(Compression::None, 900, None);
    let channel = ds
        .create_channel("archive", &stream_arn, settings, BTreeMap::new())
        .await
        .unwrap()
        .info;
    assert!(
        ds.delete("events").await.is_err(),
        "a stream with a channel is not deleted"
    );
    put(ds.clone(), 0..20).await;
    ds.flush_channels(&stream_arn).await.unwrap();

    // The next write fails: a file stands where the channel's directory
    // must be. The delivery stays pending.
    let bucket = dir.path().join("objects/buckets/archive");
    let blocker = bucket.join("kinesis-channel/archive");
    put(ds.clone(), 20..40).await;
    let first = files_under(&bucket);
    std::fs::rename(&blocker, dir.path().join("aside")).unwrap();
    std::fs::write(&blocker, b"in the way").unwrap();
    assert!(ds.flush_channels(&stream_arn).await.is_err());
    let failed = ds.describe_channel(&channel.arn).unwrap().error.unwrap();
    assert!(failed.contains("object store"), "{failed}");
    let root = dir.path().display().to_string();
    assert!(!failed.contains(&root), "no server paths: {failed}");
    let position = files_under(&dir.path().join("data"))
        .into_iter()
        .find(|(k, _)| k.ends_with("position.json"))
        .unwrap();
    let pending = position.1.clone();
    assert!(String::from_utf8_lossy(&pending).contains("\"until\""));
    std::fs::remove_file(&blocker).unwrap();
    std::fs::rename(dir.path().join("aside"), &blocker).unwrap();
    ds.flush_channels(&stream_arn).await.unwrap();
    let view = ds.describe_channel(&channel.arn).unwrap();
    assert_eq!((view.deliveries, view.records, view.failed), (2, 34, 6));
    assert_eq!(view.error, None);
    let second = files_under(&bucket);
    drop(ds);

    // A crash after the object was written but before the cursors moved:
    // the pending delivery is written again under the same key.
    std::fs::write(dir.path().join("data").join(&position.0), &pending).unwrap();
    let ds = open().await;
    ds.flush_channels(&stream_arn).await.unwrap();
    let view = ds.describe_channel(&channel.arn).unwrap();
    assert_eq!((view.deliveries, view.records, view.failed), (2, 34, 6));
    let third = files_under(&bucket);
    assert_eq!(
        third.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>()
    );
    assert!(first.len() < second.len());

    let (mut numbers, mut dead) = (Vec::new(), Vec::new());
    for (key, body) in &third {
        let text = String::from_utf8(body.clone()).unwrap();
        if key.starts_with("kinesis-channel/errors/archive/") {
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["errorCode"], "InvalidJson", "{line}");
                let raw = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    v["rawData"].as_str().unwrap(),
                )
                .unwrap();
                dead.push(String::from_utf8(raw).unwrap());
            }
        } else {
            assert!(key.starts_with(&format!("kinesis-channel/archive/{}/", channel.id)));
            assert!(key.ends_with(".jsonl"), "{key}");
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                numbers.push(v["n"].as_u64().unwrap());
            }
        }
    }
    numbers.sort();
    let expected: Vec<u64> = (0..40).filter(|i| i % 7 != 3).collect();
    assert_eq!(numbers, expected, "each JSON record once, none from before");
    dead.sort();
    assert_eq!(
        dead,
        [
            "not json 10",
            "not json 17",
            "not json 24",
            "not json 3",
            "not json 31",
            "not json 38"
        ]
    );

    // Deleting the channel forgets its position and keeps its objects.
    ds.delete_channel(&channel.arn).await.unwrap();
    assert!(ds.describe_channel(&channel.arn).is_err());
    assert!(
        !files_under(&dir.path().join("data"))
            .keys()
            .any(|k| k.contains("channels/"))
    );
    assert_eq!(files_under(&bucket).len(), third.len());
    ds.delete("events").await.unwrap();
}

#[tokio::test]
async fn a_channel_on_a_new_stream_delivers_on_its_own_once_records_are_due() {
    use kinema_datastream::delivery::Compression;
    use kinema_engine::datastreams::DataStreamsConfig;
    let dir = tempfile::tempdir().unwrap();
    let ds = open_data_streams(dir.path(), DataStreamsConfig::default()).await;
    ds.create("events", 1).await.unwrap();
    let stream_arn = ds.describe("events").unwrap().arn;
    let settings = channel_settings(Compression::Gzip, 1, None);
    let arn = ds
        .create_channel("archive", &stream_arn, settings, BTreeMap::new())
        .await
        .unwrap()
        .info
        .arn;
    for i in 0..3 {
        ds.put("events", vec![entry(&format!("{{\"n\":{i}}}"))])
            .await
            .unwrap();
    }
    // Bounded: 20 s of 50 ms looks.
    let mut view = ds.describe_channel(&arn).unwrap();
    for _ in 0..400 {
        if view.records == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        view = ds.describe_channel(&arn).unwrap();
    }
    assert_eq!((view.records, view.error), (3, None));
    let objects = files_under(&dir.path().join("objects/buckets/archive"));
    assert_eq!(objects.len(), 1, "{:?}", objects.keys());
    assert!(objects.keys().all(|k| k.ends_with(".jsonl.gz")));
}

/// A crash between writing an object and moving the cursors, then
/// retention trimming some of its records: the redo keeps the complete
/// object rather than replace it with what is left.
#[tokio::test]
async fn a_redo_after_retention_keeps_the_complete_object() {
    use kinema_datastream::delivery::Compression;
    use kinema_engine::datastreams::DataStreamsConfig;
    let dir = tempfile::tempdir().unwrap();
    let config = DataStreamsConfig {
        segment_bytes: 2_000,
        ..DataStreamsConfig::default()
    };
    let open = || async { open_data_streams(dir.path(), config.clone()).await };
    let ds = open().await;
    ds.create("events", 1).await.unwrap();
    let stream_arn = ds.describe("events").unwrap().arn;
    let settings = channel_settings(
        Compression::None,
        900,
        Some("out/!{channel-name}!{extension}"),
    );
    ds.create_channel("archive", &stream_arn, settings, BTreeMap::new())
        .await
        .unwrap();
    for i in 0..50 {
        ds.put(
            "events",
            vec![entry(&format!(
                "{{\"n\":{i},\"pad\":\"{}\"}}",
                "x".repeat(40)
            ))],
        )
        .await
        .unwrap();
    }
    // The plan is saved; its write fails (a file where the folder goes).
    let out = dir.path().join("objects/buckets/archive/out");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, b"in the way").unwrap();
    assert!(ds.flush_channels(&stream_arn).await.is_err());
    let (position, pending) = files_under(&dir.path().join("data"))
        .into_iter()
        .find(|(k, _)| k.ends_with("position.json"))
        .unwrap();
    std::fs::remove_file(&out).unwrap();
    ds.flush_channels(&stream_arn).await.unwrap();
    let lines = |dir: &std::path::Path| -> usize {
        files_under(dir)
            .values()
            .map(|b| String::from_utf8_lossy(b).lines().count())
            .sum()
    };
    assert_eq!(lines(&out), 50);
    let now = ds.config().clock.now_ms();
    assert!(ds.enforce_retention(now + 25 * 3_600_000).await.unwrap() > 0);
    drop(ds);

    // As if the process died after the object and before the cursors.
    std::fs::write(dir.path().join("data").join(&position), &pending).unwrap();
    let ds = open().await;
    ds.flush_channels(&stream_arn).await.unwrap();
    assert_eq!(files_under(&out).len(), 1);
    assert_eq!(lines(&out), 50, "the complete object stays");
}
