//! The cluster backend: what several Kinema nodes share.
//!
//! - Fragment objects go to an S3-compatible bucket (`object_store`'s S3
//!   client), written with `If-None-Match: *` so that two writers can never
//!   replace each other's object.
//! - Each video stream's fragment index is one subject of the JetStream
//!   stream `KINEMA_INDEX` (`kinema.index.<hex of the stream id>`); a
//!   message is one [`Record`] in the index framing, or an empty *takeover
//!   marker* (header `Kinema-Marker`).
//! - Stream metadata is the key-value bucket `kinema_streams` (one key per
//!   stream name, hex-encoded); shared documents (identities, secrets) are
//!   `kinema_docs`; writer leases are `kinema_leases` (one key per stream
//!   id).
//!
//! One writer per stream, fenced twice: a node appends to a stream's index
//! only while it holds the stream's lease (a key-value entry updated with
//! its revision, so a renewal after a takeover fails), and every append
//! names the subject sequence it expects to follow, which a takeover
//! marker moves on: a node that was paused past its lease cannot append
//! even if it never noticed that it lost the lease.
//!
//! Every message names its node (`Kinema-Node`), and a record counts only
//! if its node wrote the subject's last marker before it ([`Owners`]):
//! nats-server before 2.9.21 checks the expected sequence of a replicated
//! stream before proposing a write, not when applying it (nats-server
//! issue 4320), so two writes expecting the same sequence can both land.
//! Under this rule every node reads the same index whatever the server
//! lets through, and a writer whose record landed after another node's
//! marker learns it (the first message after the one it expected is not
//! its own) and reports the append as fenced.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, context, kv, stream};
use bytes::Bytes;
use futures::StreamExt;
use kinema_archive::index::{self, Record};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::StoreError;

const INDEX_STREAM: &str = "KINEMA_INDEX";
const INDEX_PREFIX: &str = "kinema.index.";
const STREAMS_BUCKET: &str = "kinema_streams";
const DOCS_BUCKET: &str = "kinema_docs";
const LEASES_BUCKET: &str = "kinema_leases";
const MARKER_HEADER: &str = "Kinema-Marker";
const NODE_HEADER: &str = "Kinema-Node";
/// How long one message of an index read may take before the read fails.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `[cluster]`: where the shared state lives.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name in leases and logs (default: host name and pid).
    #[serde(default)]
    pub node: Option<String>,
    /// NATS servers, e.g. `nats://10.0.0.1:4222`.
    pub nats_urls: Vec<String>,
    #[serde(default)]
    pub nats_user: Option<String>,
    #[serde(default)]
    pub nats_password: Option<String>,
    #[serde(default)]
    pub nats_token: Option<String>,
    #[serde(default)]
    pub nats_creds_file: Option<std::path::PathBuf>,
    /// JetStream replicas of every stream and bucket Kinema creates.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    pub s3_bucket: String,
    /// An S3-compatible endpoint (MinIO, Ceph, Garage, R2…); AWS when absent.
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub s3_region: String,
    #[serde(default)]
    pub s3_access_key_id: Option<String>,
    #[serde(default)]
    pub s3_secret_access_key: Option<String>,
    /// How long a writer's lease lasts without renewal.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// How long one S3 request may take, retries included.
    #[serde(default = "default_s3_timeout_ms")]
    pub s3_timeout_ms: u64,
}

fn default_replicas() -> usize {
    1
}
fn default_region() -> String {
    kinema_core::aws::DEFAULT_REGION.into()
}
fn default_lease_ms() -> u64 {
    6_000
}
fn default_s3_timeout_ms() -> u64 {
    10_000
}

impl ClusterConfig {
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "kinema".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

fn nats<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Cluster(format!("{what}: {e}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Lower-case hex: subjects and keys cannot hold every character a name
/// can (a `.` separates subject tokens).
pub(crate) fn hex_key(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn index_subject(stream_id: &str) -> String {
    format!("{INDEX_PREFIX}{}", hex_key(stream_id))
}

/// The shared state's handles. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    client: async_nats::Client,
    js: jetstream::Context,
    index: stream::Stream,
    streams: kv::Store,
    docs: kv::Store,
    leases: kv::Store,
    node: String,
    lease_ms: u64,
}

/// A change of one key of a key-value bucket: `value` is `None` for a
/// deletion.
#[derive(Debug, Clone)]
pub struct KeyChange {
    pub key: String,
    pub value: Option<Bytes>,
    pub revision: u64,
}

/// One message of the shared fragment index.
#[derive(Debug, Clone)]
pub struct IndexEvent {
    pub stream_id: String,
    pub sequence: u64,
    /// `None` for a takeover marker.
    pub record: Option<Record>,
    /// The node that wrote it (absent in messages of older versions).
    pub node: Option<String>,
}

/// Which node owns each stream's index: the writer of its last marker.
/// Records of any other node are void (see the module documentation).
#[derive(Debug, Default)]
pub struct Owners(std::collections::HashMap<String, String>);

impl Owners {
    /// Takes in one message in index order; whether its record counts.
    pub fn admit(&mut self, e: &IndexEvent) -> bool {
        match (&e.record, &e.node) {
            (None, Some(node)) => {
                self.0.insert(e.stream_id.clone(), node.clone());
                false
            }
            (None, None) => false,
            (Some(_), Some(node)) => self.0.get(&e.stream_id).is_none_or(|o| o == node),
            (Some(_), None) => true,
        }
    }
}

/// What a key-value write can answer besides an error.
#[derive(Debug)]
pub enum Conflict {
    /// The key exists (create) or moved on (update, delete).
    Changed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseValue {
    node: String,
    expires_ms: i64,
}

impl Cluster {
    pub async fn connect(config: &ClusterConfig) -> Result<Cluster, StoreError> {
        let node = config.node_name();
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("kinema {node}"))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5)));
        if let (Some(u), Some(p)) = (&config.nats_user, &config.nats_password) {
            options = options.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &config.nats_token {
            options = options.token(t.clone());
        }
        if let Some(path) = &config.nats_creds_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(nats("NATS credentials file"))?;
        }
        let addrs: Vec<async_nats::ServerAddr> = config
            .nats_urls
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()
            .map_err(nats("NATS URL"))?;
        let client = tokio::time::timeout(Duration::from_secs(30), options.connect(addrs))
            .await
            .map_err(|_| StoreError::Cluster("no NATS server answered in 30 s".into()))?
            .map_err(nats("connecting to NATS"))?;
        let js = jetstream::new(client.clone());
        let replicas = config.replicas.max(1);
        let index = retry("creating the index stream", || {
            js.get_or_create_stream(stream::Config {
                name: INDEX_STREAM.into(),
                subjects: vec![format!("{INDEX_PREFIX}>")],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                allow_rollup: true,
                deny_delete: false,
                // Each append's message id is remembered this long, so
                // that a retry is answered as a duplicate.
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
        })
        .await?;
        let streams = key_value(&js, STREAMS_BUCKET, replicas).await?;
        let docs = key_value(&js, DOCS_BUCKET, replicas).await?;
        let leases = key_value(&js, LEASES_BUCKET, replicas).await?;
        Ok(Cluster {
            client,
            js,
            index,
            streams,
            docs,
            leases,
            node,
            lease_ms: config.lease_ms.max(1_000),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    // ----- stream metadata -------------------------------------------------

    /// Every stream's metadata now, and its changes from then on.
    pub async fn watch_streams(
        &self,
    ) -> Result<(Vec<KeyChange>, mpsc::UnboundedReceiver<KeyChange>), StoreError> {
        watch_bucket(self.streams.clone()).await
    }

    pub async fn create_stream_info(
        &self,
        name: &str,
        value: Bytes,
    ) -> Result<Result<u64, Conflict>, StoreError> {
        match self.streams.create(hex_key(name), value).await {
            Ok(rev) => Ok(Ok(rev)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Err(Conflict::Changed)),
            Err(e) => Err(nats("saving stream metadata")(e)),
        }
    }

    pub async fn update_stream_info(
        &self,
        name: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<Result<u64, Conflict>, StoreError> {
        match self.streams.update(hex_key(name), value, revision).await {
            Ok(rev) => Ok(Ok(rev)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Ok(Err(Conflict::Changed))
            }
            Err(e) => Err(nats("saving stream metadata")(e)),
        }
    }

    pub async fn stream_info(&self, name: &str) -> Result<Option<(Bytes, u64)>, StoreError> {
        let entry = self
            .streams
            .entry(hex_key(name))
            .await
            .map_err(nats("reading stream metadata"))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| (e.value, e.revision)))
    }

    pub async fn delete_stream_info(
        &self,
        name: &str,
        revision: u64,
    ) -> Result<Result<(), Conflict>, StoreError> {
        match self
            .streams
            .delete_expect_revision(hex_key(name), Some(revision))
            .await
        {
            Ok(()) => Ok(Ok(())),
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => {
                Ok(Err(Conflict::Changed))
            }
            Err(e) => Err(nats("deleting stream metadata")(e)),
        }
    }

    // ----- shared documents ------------------------------------------------

    pub async fn load_doc(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        self.docs
            .get(name)
            .await
            .map_err(nats("reading a document"))
    }

    /// A document and its revision (0: it does not exist yet).
    pub async fn load_doc_revision(&self, name: &str) -> Result<(Option<Bytes>, u64), StoreError> {
        let entry = self
            .docs
            .entry(name)
            .await
            .map_err(nats("reading a document"))?;
        Ok(match entry {
            Some(e) if e.operation == kv::Operation::Put => (Some(e.value), e.revision),
            Some(e) => (None, e.revision),
            None => (None, 0),
        })
    }

    /// Replaces a document if it is still at `revision` (0: absent);
    /// returns the new revision.
    pub async fn update_doc(
        &self,
        name: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<Result<u64, Conflict>, StoreError> {
        if revision == 0 {
            return match self.docs.create(name, value).await {
                Ok(rev) => Ok(Ok(rev)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Ok(Err(Conflict::Changed))
                }
                Err(e) => Err(nats("saving a document")(e)),
            };
        }
        match self.docs.update(name, value, revision).await {
            Ok(rev) => Ok(Ok(rev)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Ok(Err(Conflict::Changed))
            }
            Err(e) => Err(nats("saving a document")(e)),
        }
    }

    /// Creates a document unless it exists; returns the value that stays.
    pub async fn create_doc(&self, name: &str, value: Bytes) -> Result<Bytes, StoreError> {
        match self.docs.create(name, value.clone()).await {
            Ok(_) => Ok(value),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => self
                .load_doc(name)
                .await?
                .ok_or_else(|| StoreError::Cluster(format!("document {name} vanished"))),
            Err(e) => Err(nats("creating a document")(e)),
        }
    }

    /// A signal whenever the document `name` changes (on any node), found
    /// by reading its revision every `every`: plain reads keep working
    /// through server failures that can leave a watch silent.
    /// Call it before reading the document the first time: a change made
    /// after this call is signalled.
    pub async fn doc_changes(&self, name: &str, every: Duration) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel(1);
        let (docs, name) = (self.docs.clone(), name.to_string());
        let revision = |e: Option<kv::Entry>| e.map(|e| e.revision).unwrap_or(0);
        // Unknown (a failed read) counts as changed once it is known.
        let mut seen = docs.entry(name.as_str()).await.ok().map(revision);
        let mut signal_first = seen.is_none();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if tx.is_closed() {
                    return;
                }
                let now = match docs.entry(name.as_str()).await {
                    Ok(e) => revision(e),
                    Err(e) => {
                        tracing::debug!(error = %e, "polling a shared document");
                        continue;
                    }
                };
                if seen.is_some_and(|s| s != now) || std::mem::take(&mut signal_first) {
                    let _ = tx.try_send(());
                }
                seen = Some(now);
            }
        });
        rx
    }

    // ----- the fragment index ----------------------------------------------

    /// The whole shared index now (every stream's records in order), and
    /// every message appended from then on.
    pub async fn follow_index(
        &self,
    ) -> Result<(Vec<IndexEvent>, mpsc::UnboundedReceiver<IndexEvent>), StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut messages = ordered(self, format!("{INDEX_PREFIX}>"), 1).await?;
        let mut owners = Owners::default();
        let mut initial = Vec::new();
        let mut next = 1;
        if messages.pending > 0 {
            loop {
                let m = tokio::time::timeout(READ_TIMEOUT, messages.stream.next())
                    .await
                    .map_err(|_| StoreError::Cluster("the index stopped answering".into()))?
                    .ok_or_else(|| StoreError::Cluster("the index read ended".into()))?
                    .map_err(nats("reading the index"))?;
                let Ok(info) = m.info() else { continue };
                let (seq, pending) = (info.stream_sequence, info.pending);
                next = seq + 1;
                if let Some(e) = index_event(&m.subject, seq, &m)
                    && owners.admit(&e)
                {
                    initial.push(e);
                }
                if pending == 0 {
                    break;
                }
            }
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut messages = messages.stream;
            loop {
                while let Some(m) = messages.next().await {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            // Missed heartbeats after a server died: the
                            // consumer is made anew on a live server.
                            tracing::warn!(error = %e, "index follower: resubscribing");
                            break;
                        }
                    };
                    let Ok(info) = m.info() else { continue };
                    let seq = info.stream_sequence;
                    if seq < next {
                        continue;
                    }
                    next = seq + 1;
                    if let Some(e) = index_event(&m.subject, seq, &m)
                        && owners.admit(&e)
                        && tx.send(e).is_err()
                    {
                        return;
                    }
                }
                // Start again after the last message seen.
                loop {
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match ordered(&cluster, format!("{INDEX_PREFIX}>"), next).await {
                        Ok(o) => {
                            messages = o.stream;
                            break;
                        }
                        Err(e) => tracing::warn!(error = %e, "index follower: resubscribing"),
                    }
                }
            }
        });
        Ok((initial, rx))
    }

    /// A stream's index records as they are now, the sequence of each
    /// fragment's record, and the sequence of its last message (0 if it
    /// has none).
    pub(crate) async fn read_index(
        &self,
        stream_id: &str,
    ) -> Result<(Vec<Record>, BTreeMap<u64, u64>, u64), StoreError> {
        let subject = index_subject(stream_id);
        // Read up to the last message as of now: messages purged meanwhile
        // are not waited for.
        let end = self.last_sequence(stream_id).await?;
        let (mut records, mut seqs, mut owners) = (Vec::new(), BTreeMap::new(), Owners::default());
        if end == 0 {
            return Ok((records, seqs, 0));
        }
        let mut messages = ordered(self, subject.clone(), 1).await?;
        if messages.pending == 0 {
            return Ok((records, seqs, end));
        }
        loop {
            let m = tokio::time::timeout(READ_TIMEOUT, messages.stream.next())
                .await
                .map_err(|_| StoreError::Cluster("the index stopped answering".into()))?
                .ok_or_else(|| StoreError::Cluster("the index read ended".into()))?
                .map_err(nats("reading an index"))?;
            let Ok(info) = m.info() else { continue };
            let seq = info.stream_sequence;
            if m.subject.as_str() == subject
                && let Some(e) = index_event(&m.subject, seq, &m)
                && owners.admit(&e)
                && let Some(r) = e.record
            {
                if let Record::Fragment(f) = r {
                    seqs.insert(f.number, seq);
                }
                records.push(r);
            }
            if seq >= end || info.pending == 0 {
                break;
            }
        }
        Ok((records, seqs, end))
    }

    /// Appends to a stream's index after `expected` (the subject's last
    /// sequence as this writer knows it); returns the new message's
    /// sequence, or [`StoreError::Fenced`] if another writer moved it.
    pub(crate) async fn append_index(
        &self,
        stream_id: &str,
        record: Option<&Record>,
        expected: u64,
    ) -> Result<u64, StoreError> {
        let mut payload = Vec::with_capacity(64);
        // A message id unique to this append: a retry after a lost
        // acknowledgement is answered by JetStream's duplicate detection
        // with the first attempt's sequence, before the expected sequence
        // is checked.
        let mut publish = context::Publish::build()
            .expected_last_subject_sequence(expected)
            .message_id(format!("{}-{}", self.node, nuid()))
            .header(NODE_HEADER, self.node.as_str());
        match record {
            Some(r) => index::encode(r, &mut payload),
            None => publish = publish.header(MARKER_HEADER, self.node.as_str()),
        }
        let publish = publish.payload(payload.into());
        let subject = index_subject(stream_id);
        let mut tries = 0;
        loop {
            tries += 1;
            let result = match self.js.send_publish(subject.clone(), publish.clone()).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match result {
                Ok(ack) if record.is_none() => return Ok(ack.sequence),
                Ok(ack) => return self.check_own(&subject, expected, ack.sequence).await,
                Err(e) if e.kind() == context::PublishErrorKind::WrongLastSequence => {
                    return Err(StoreError::Fenced(format!(
                        "the index of {stream_id} moved past {expected}: another node writes it"
                    )));
                }
                // No answer while JetStream elects a leader: try again for
                // a few seconds (the message id makes a retry safe).
                Err(e) if tries < 8 => {
                    tracing::debug!(error = %e, tries, "index append: retrying");
                    tokio::time::sleep(Duration::from_millis(250 * tries)).await;
                }
                Err(e) => return Err(nats("appending to the index")(e)),
            }
        }
    }

    /// A record appended at `sequence` counts only if nothing came between
    /// it and the message it expected to follow (see [`Owners`]).
    async fn check_own(
        &self,
        subject: &str,
        expected: u64,
        sequence: u64,
    ) -> Result<u64, StoreError> {
        // The stream leader's answer (a direct get may come from a
        // replica that has not applied the append yet).
        let first = retry("checking an index append", || {
            self.index
                .get_first_raw_message_by_subject(subject, expected + 1)
        })
        .await?;
        let seq = Some(first.sequence);
        match seq {
            Some(s) if s == sequence => Ok(sequence),
            _ => Err(StoreError::Fenced(format!(
                "another node's message came before this append to {subject}"
            ))),
        }
    }

    pub(crate) async fn last_sequence(&self, stream_id: &str) -> Result<u64, StoreError> {
        match self
            .index
            .get_last_raw_message_by_subject(&index_subject(stream_id))
            .await
        {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(nats("reading the index")(e)),
        }
    }

    /// Removes a stream's index messages older than `sequence`.
    pub(crate) async fn compact_index(
        &self,
        stream_id: &str,
        sequence: u64,
    ) -> Result<(), StoreError> {
        self.index
            .purge()
            .filter(index_subject(stream_id))
            .sequence(sequence)
            .await
            .map(|_| ())
            .map_err(nats("compacting the index"))
    }

    pub(crate) async fn delete_index(&self, stream_id: &str) -> Result<(), StoreError> {
        self.index
            .purge()
            .filter(index_subject(stream_id))
            .await
            .map(|_| ())
            .map_err(nats("deleting an index"))
    }

    /// Ids of every stream with index messages.
    pub(crate) async fn indexed_stream_ids(&self) -> Result<Vec<String>, StoreError> {
        let index = self.index.clone();
        let info = index
            .info_with_subjects(format!("{INDEX_PREFIX}>"))
            .await
            .map_err(nats("listing indexes"))?;
        let subjects: Vec<(String, usize)> = info
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        Ok(subjects
            .into_iter()
            .filter_map(|(s, _)| unhex(s.strip_prefix(INDEX_PREFIX)?))
            .collect())
    }

    // ----- writer leases ---------------------------------------------------

    /// Takes or renews the writer lease of a stream. `held` is the revision
    /// of this node's current lease, if it has one. Returns the new
    /// revision and whether the lease was taken over (this node did not
    /// hold it just before), or `LeaseHeld` naming the live holder.
    pub(crate) async fn acquire_lease(
        &self,
        stream_id: &str,
        held: Option<u64>,
    ) -> Result<(u64, bool), StoreError> {
        let key = hex_key(stream_id);
        let value = Bytes::from(
            serde_json::to_vec(&LeaseValue {
                node: self.node.clone(),
                expires_ms: now_ms() + self.lease_ms as i64,
            })
            .expect("a lease serialises"),
        );
        if let Some(rev) = held {
            match self.leases.update(&key, value.clone(), rev).await {
                Ok(rev) => return Ok((rev, false)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(nats("renewing a lease")(e)),
            }
        }
        let entry = self
            .leases
            .entry(key.clone())
            .await
            .map_err(nats("reading a lease"))?;
        let taken = |_| StoreError::LeaseHeld("another node took it first".into());
        let Some(e) = entry else {
            return match self.leases.create(&key, value).await {
                Ok(rev) => Ok((rev, true)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(taken(())),
                Err(e) => Err(nats("taking a lease")(e)),
            };
        };
        // A released lease is a delete marker: free, at its revision.
        let lease: Option<LeaseValue> = (e.operation == kv::Operation::Put)
            .then(|| serde_json::from_slice(&e.value).ok())
            .flatten();
        if let Some(l) = lease
            .as_ref()
            .filter(|l| l.expires_ms > now_ms() && l.node != self.node)
        {
            return Err(StoreError::LeaseHeld(format!(
                "node {} writes this stream (lease for {} ms more)",
                l.node,
                l.expires_ms - now_ms()
            )));
        }
        let own = lease.is_some_and(|l| l.node == self.node) && held == Some(e.revision);
        match self.leases.update(&key, value, e.revision).await {
            Ok(rev) => Ok((rev, !own)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(taken(())),
            Err(e) => Err(nats("taking a lease")(e)),
        }
    }

    /// Gives a lease back so that another node can take it at once.
    pub(crate) async fn release_lease(&self, stream_id: &str, revision: u64) {
        if let Err(e) = self
            .leases
            .delete_expect_revision(hex_key(stream_id), Some(revision))
            .await
        {
            tracing::debug!(stream_id, error = %e, "lease release");
        }
    }

    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }
}

/// Retries an idempotent JetStream call while a leader is being elected.
async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &'static str,
    mut call: impl FnMut() -> F,
) -> Result<T, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if tries < 20 => {
                tracing::debug!(error = %e, what, "retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(nats(what)(e)),
        }
    }
}

/// Opens a key-value bucket, creating its stream first if needed. The
/// stream is made here rather than by `create_key_value`, which asks for
/// account information in a shape nats-server 2.9 does not answer.
async fn key_value(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<kv::Store, StoreError> {
    retry("opening a key-value bucket", || async {
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            // Reads go to the stream leader: a replica's direct answer
            // can be older than one read before it, and a node polling
            // a document could then settle on a stale copy.
            allow_direct: false,
            discard: stream::DiscardPolicy::New,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        js.get_key_value(bucket).await.map_err(|e| e.to_string())
    })
    .await
}

struct Ordered {
    stream: consumer::push::Ordered,
    pending: u64,
}

async fn ordered(cluster: &Cluster, filter: String, from: u64) -> Result<Ordered, StoreError> {
    let consumer = cluster
        .index
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: cluster.client.new_inbox(),
            filter_subject: filter,
            deliver_policy: if from <= 1 {
                consumer::DeliverPolicy::All
            } else {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                }
            },
            replay_policy: consumer::ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(nats("subscribing to the index"))?;
    let pending = consumer.cached_info().num_pending;
    let stream = consumer
        .messages()
        .await
        .map_err(nats("subscribing to the index"))?;
    Ok(Ordered { stream, pending })
}

/// A process-unique name: time, process id and a counter.
fn nuid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{nanos:x}{:x}{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn index_event(subject: &str, seq: u64, m: &jetstream::Message) -> Option<IndexEvent> {
    let stream_id = unhex(subject.strip_prefix(INDEX_PREFIX)?)?;
    let marker = m
        .headers
        .as_ref()
        .is_some_and(|h| h.get(MARKER_HEADER).is_some());
    let record = if marker {
        None
    } else {
        let (records, _) = index::decode_log(&m.payload);
        match records.first() {
            Some(r) => Some(*r),
            None => {
                tracing::warn!(stream_id, seq, "skipping an undecodable index message");
                return None;
            }
        }
    };
    let node = m
        .headers
        .as_ref()
        .and_then(|h| h.get(NODE_HEADER).or_else(|| h.get(MARKER_HEADER)))
        .map(|v| v.as_str().to_string());
    Some(IndexEvent {
        stream_id,
        sequence: seq,
        record,
        node,
    })
}

/// Every key's value now, then changes, from a bucket.
async fn watch_bucket(
    store: kv::Store,
) -> Result<(Vec<KeyChange>, mpsc::UnboundedReceiver<KeyChange>), StoreError> {
    let values = store
        .status()
        .await
        .map_err(nats("reading a bucket"))?
        .values();
    let mut watch = store
        .watch_with_history(">")
        .await
        .map_err(nats("watching a bucket"))?;
    let change = |e: kv::Entry| KeyChange {
        key: unhex(&e.key).unwrap_or(e.key.clone()),
        value: (e.operation == kv::Operation::Put).then_some(e.value),
        revision: e.revision,
    };
    let mut initial: BTreeMap<String, KeyChange> = BTreeMap::new();
    if values > 0 {
        while let Some(e) = watch.next().await {
            let e = e.map_err(nats("watching a bucket"))?;
            let current = e.delta == 0;
            let c = change(e);
            initial.insert(c.key.clone(), c);
            if current {
                break;
            }
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            while let Some(e) = watch.next().await {
                match e {
                    Ok(e) => {
                        if tx.send(change(e)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // Values seen again are ignored by revision.
                        tracing::warn!(error = %e, "bucket watch: resubscribing");
                        break;
                    }
                }
            }
            loop {
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                match store.watch_with_history(">").await {
                    Ok(w) => {
                        watch = w;
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "bucket watch: resubscribing"),
                }
            }
        }
    });
    Ok((initial.into_values().collect(), rx))
}

/// The S3 client for fragment objects.
pub(crate) fn s3(config: &ClusterConfig) -> Result<Arc<dyn object_store::ObjectStore>, StoreError> {
    use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&config.s3_bucket)
        .with_region(&config.s3_region)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_millis(config.s3_timeout_ms),
            ..Default::default()
        })
        .with_client_options(
            object_store::ClientOptions::new()
                .with_timeout(Duration::from_millis(config.s3_timeout_ms))
                .with_connect_timeout(Duration::from_secs(3)),
        );
    if let Some(e) = &config.s3_endpoint {
        b = b
            .with_endpoint(e)
            .with_allow_http(e.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    if let (Some(k), Some(s)) = (&config.s3_access_key_id, &config.s3_secret_access_key) {
        b = b.with_access_key_id(k).with_secret_access_key(s);
    }
    Ok(Arc::new(b.build()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_marker_writer_s_records_count() {
        let e = |stream: &str, node: Option<&str>, record: bool| IndexEvent {
            stream_id: stream.into(),
            sequence: 0,
            record: record.then_some(Record::Trim { through: 0 }),
            node: node.map(str::to_string),
        };
        let mut owners = Owners::default();
        // Before any marker, and records of older versions, count.
        assert!(owners.admit(&e("s", Some("a"), true)));
        assert!(
            !owners.admit(&e("s", Some("a"), false)),
            "a marker is no record"
        );
        assert!(owners.admit(&e("s", Some("a"), true)));
        // b takes over: a's late record, landed after b's marker, is void.
        assert!(!owners.admit(&e("s", Some("b"), false)));
        assert!(!owners.admit(&e("s", Some("a"), true)));
        assert!(owners.admit(&e("s", Some("b"), true)));
        assert!(owners.admit(&e("s", None, true)));
        // Streams are independent.
        assert!(owners.admit(&e("t", Some("a"), true)));
    }

    #[test]
    fn hex_keys_round_trip_every_name() {
        for name in ["a", ".leading", "trailing.", "a..b", "1700000000000-cam_1"] {
            assert_eq!(unhex(&hex_key(name)).as_deref(), Some(name));
        }
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
