//! Storage for Kinema: the one crate that names `object_store` or touches
//! the data directory.
//!
//! Layout under the data directory:
//! - `objects/streams/<stream id>/<fragment number>.mkv`: fragment objects,
//!   written through `object_store` (local file system by default);
//! - `index/<stream id>.idx`: each stream's append-only index log
//!   ([`kinema_archive::index`]);
//! - `meta/<name>.json`: small metadata documents replaced atomically;
//! - `data/<stream id>/<segment>.log`: each data stream's record log ([`DataLog`]);
//!   beside it `groups.wal`, `queues/<id>/` and `channels/<id>/position.json`;
//! - `objects/buckets/<bucket>/<key>`: objects that channels deliver.
//!
//! Descriptors: logs are opened for each append and closed after it, and a
//! data log keeps only its newest segment open, so a stream at rest holds
//! at most one file open however many streams and segments there are.
//!
//! Durability: [`Store::put_fragment`] returns only once the object and its
//! directory entry are on disk (fsync), and [`IndexLog::append`] only once
//! the record is (fdatasync). Callers append the index record after the
//! object is durable, so an index entry always names a readable object.
//!
//! Why one file of about 660 lines: every kind of file above shares the
//! same few durable-write primitives (open with torn-tail recovery, append
//! and cut back on failure, fsync of file and directory, atomic replace),
//! which stay private here so that no other code can write the data
//! directory without them. The data log (segments, positional reads) is
//! the part that would move out first if this grows.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::TryStreamExt;
use kinema_archive::index::{self, Record};
use kinema_core::sync::{lock, read, write};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions};

mod cluster;

pub use cluster::{Cluster, ClusterConfig, Conflict, IndexEvent, KeyChange};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("object store: {0}")]
    Object(#[from] object_store::Error),
    #[error("fragment object {0} not found")]
    NotFound(String),
    #[error("metadata document {name} is corrupt: {source}")]
    BadMeta {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("background storage task failed: {0}")]
    Join(String),
    #[error("cluster state: {0}")]
    Cluster(String),
    /// Another node wrote this stream's index: this node is no longer its writer.
    #[error("fenced: {0}")]
    Fenced(String),
    /// A cluster's fragment object that exists already (see
    /// [`Store::replace_fragment`]).
    #[error("fragment object {0} exists")]
    ObjectExists(String),
    /// Another live node holds the stream's writer lease.
    #[error("the stream is written by another node: {0}")]
    LeaseHeld(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
}

/// Replaces `path` with `bytes` atomically and durably: a sibling
/// `<name>.tmp` written and fsynced, renamed over it, the directory synced.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Opens (creating) an append-only log file for reading and appending.
fn open_append(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io(path))
}

/// Opens an append-only log and decodes it with `decode` (which returns
/// what it read and the length of the valid prefix), cutting a torn tail
/// back to that prefix durably. Returns the file, the decoded contents and
/// the valid length.
fn open_recovering<T>(
    path: &Path,
    decode: impl Fn(&[u8]) -> (T, usize),
) -> Result<(File, T, u64), StoreError> {
    let mut file = open_append(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io(path))?;
    let (decoded, valid) = decode(&bytes);
    if valid < bytes.len() {
        tracing::warn!(path = %path.display(), cut = bytes.len() - valid, "cutting a torn tail off a log");
        file.set_len(valid as u64).map_err(io(path))?;
        file.sync_all().map_err(io(path))?;
    }
    Ok((file, decoded, valid as u64))
}

#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    objects: Arc<dyn ObjectStore>,
    /// Where local objects live, so they can be fsynced after `put`.
    local_objects: Option<PathBuf>,
    /// The shared state of a cluster (index, metadata, leases in
    /// JetStream; objects in a bucket), `None` on one machine.
    cluster: Option<Cluster>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

impl Store {
    /// Opens (creating if needed) a store in `root` on the local file system.
    pub fn open_local(root: &Path) -> Result<Store, StoreError> {
        let objects_dir = root.join("objects");
        for dir in [
            root.to_path_buf(),
            objects_dir.clone(),
            root.join("index"),
            root.join("meta"),
        ] {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        let streams_dir = objects_dir.join("streams");
        fs::create_dir_all(&streams_dir).map_err(io(&streams_dir))?;
        sync_dir(&objects_dir)?;
        sync_dir(root)?;
        let objects = LocalFileSystem::new_with_prefix(&objects_dir)?;
        Ok(Store {
            root: root.to_path_buf(),
            objects: Arc::new(objects),
            local_objects: Some(objects_dir),
            cluster: None,
        })
    }

    /// Opens a cluster node's store: fragment objects in the bucket, index,
    /// stream metadata and leases in JetStream (created on first use), and
    /// node-local documents and data streams under `root`.
    pub async fn open_cluster(root: &Path, config: &ClusterConfig) -> Result<Store, StoreError> {
        for dir in [root.to_path_buf(), root.join("index"), root.join("meta")] {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        let objects = cluster::s3(config)?;
        let cluster = Cluster::connect(config).await?;
        Ok(Store {
            root: root.to_path_buf(),
            objects,
            local_objects: None,
            cluster: Some(cluster),
        })
    }

    /// The cluster's shared state, `None` on one machine.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn fragment_key(stream_id: &str, number: u64) -> ObjectPath {
        ObjectPath::from(format!("streams/{stream_id}/{number:020}.mkv"))
    }

    /// Creates a stream's object directory and makes its entry durable, so
    /// the first fragment's fsync of that directory is enough afterwards.
    pub async fn prepare_stream(&self, stream_id: &str) -> Result<(), StoreError> {
        let Some(base) = self.local_objects.clone() else {
            return Ok(());
        };
        let dir = base.join("streams").join(stream_id);
        blocking(move || {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
            sync_dir(dir.parent().expect("streams/ is the parent"))?;
            sync_dir(&base)
        })
        .await
    }

    /// Ids of every stream with an index or objects stored.
    pub async fn stored_stream_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut ids = std::collections::BTreeSet::new();
        if let Some(c) = &self.cluster {
            ids.extend(c.indexed_stream_ids().await?);
            let listed = self
                .objects
                .list_with_delimiter(Some(&ObjectPath::from("streams")))
                .await?;
            ids.extend(
                listed
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.filename().map(str::to_string)),
            );
            return Ok(ids.into_iter().collect());
        }
        let index = self.root.join("index");
        for e in fs::read_dir(&index).map_err(io(&index))? {
            let name = e
                .map_err(io(&index))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if let Some(id) = name.strip_suffix(".idx") {
                ids.insert(id.to_string());
            }
        }
        if let Some(base) = &self.local_objects {
            let streams = base.join("streams");
            if streams.exists() {
                for e in fs::read_dir(&streams).map_err(io(&streams))? {
                    ids.insert(
                        e.map_err(io(&streams))?
                            .file_name()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        Ok(ids.into_iter().collect())
    }

    /// Stores a fragment object durably.
    pub async fn put_fragment(
        &self,
        stream_id: &str,
        number: u64,
        object: Bytes,
    ) -> Result<(), StoreError> {
        let key = Self::fragment_key(stream_id, number);
        if self.cluster.is_some() {
            // Never replace an object here: one left by a writer that lost
            // its lease is replaced only by a writer that proved it holds
            // the fence ([`Store::replace_fragment`]).
            return match self
                .objects
                .put_opts(&key, object.into(), PutMode::Create.into())
                .await
            {
                Ok(_) => Ok(()),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    Err(StoreError::ObjectExists(key.to_string()))
                }
                Err(e) => Err(e.into()),
            };
        }
        self.objects.put(&key, object.into()).await?;
        if let Some(base) = &self.local_objects {
            // object_store's local backend renames a staged file into place
            // but does not fsync; make both the file and the rename durable.
            let file = base.join(key.as_ref());
            blocking(move || {
                File::open(&file)
                    .and_then(|f| f.sync_data())
                    .map_err(io(&file))?;
                sync_dir(file.parent().expect("object paths have a parent directory"))
            })
            .await?;
        }
        Ok(())
    }

    /// Replaces an object that [`Store::put_fragment`] found in place (an
    /// earlier writer's, never indexed). Only for the stream's current
    /// writer, after [`IndexLog::confirm_writer`].
    pub async fn replace_fragment(
        &self,
        stream_id: &str,
        number: u64,
        object: Bytes,
    ) -> Result<(), StoreError> {
        let key = Self::fragment_key(stream_id, number);
        tracing::info!(key = %key, "replacing an unindexed object of an earlier writer");
        self.delete_fragment(stream_id, number).await?;
        let opts = PutOptions::from(PutMode::Create);
        self.objects.put_opts(&key, object.into(), opts).await?;
        Ok(())
    }

    pub async fn get_fragment(&self, stream_id: &str, number: u64) -> Result<Bytes, StoreError> {
        let key = Self::fragment_key(stream_id, number);
        match self.objects.get(&key).await {
            Ok(r) => Ok(r.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound(key.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete_fragment(&self, stream_id: &str, number: u64) -> Result<(), StoreError> {
        match self
            .objects
            .delete(&Self::fragment_key(stream_id, number))
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Fragment numbers of every object stored for a stream.
    pub async fn list_fragments(&self, stream_id: &str) -> Result<Vec<u64>, StoreError> {
        let prefix = ObjectPath::from(format!("streams/{stream_id}"));
        let metas: Vec<_> = self.objects.list(Some(&prefix)).try_collect().await?;
        let mut numbers: Vec<u64> = metas
            .iter()
            .filter_map(|m| m.location.filename()?.strip_suffix(".mkv")?.parse().ok())
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// Removes every object and the index of a deleted stream.
    pub async fn delete_stream(&self, stream_id: &str) -> Result<(), StoreError> {
        for n in self.list_fragments(stream_id).await? {
            self.delete_fragment(stream_id, n).await?;
        }
        if let Some(base) = &self.local_objects {
            let _ = fs::remove_dir(base.join("streams").join(stream_id));
        }
        if let Some(c) = &self.cluster {
            return c.delete_index(stream_id).await;
        }
        let idx = self.index_path(stream_id);
        match fs::remove_file(&idx) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&idx)(e)),
        }
    }

    fn index_path(&self, stream_id: &str) -> PathBuf {
        self.root.join("index").join(format!("{stream_id}.idx"))
    }

    /// Opens a stream's index log, cutting a torn tail back to the last
    /// complete record, and returns it with the records it holds.
    pub fn open_index(&self, stream_id: &str) -> Result<(IndexLog, Vec<Record>), StoreError> {
        let path = self.index_path(stream_id);
        // Recovered, the file is closed: appends open it (no descriptor
        // per stream is held between fragments).
        let (_, records, _) = open_recovering(&path, index::decode_log)?;
        sync_dir(path.parent().expect("index files live in index/"))?;
        Ok((
            IndexLog {
                kind: IndexKind::File {
                    file: Arc::new(Mutex::new(LogFile { broken: false })),
                    path,
                },
            },
            records,
        ))
    }

    /// [`Store::open_index`] on the blocking pool; in a cluster, the
    /// stream's shared index, whose writer has yet to take the lease (see
    /// [`IndexLog::prepare_write`]).
    pub async fn open_index_async(&self, stream_id: &str) -> Result<IndexLog, StoreError> {
        if let Some(c) = &self.cluster {
            return Ok(IndexLog {
                kind: IndexKind::Shared(Box::new(SharedIndex {
                    cluster: c.clone(),
                    stream_id: stream_id.to_string(),
                    last: 0,
                    lease: None,
                    seqs: BTreeMap::new(),
                })),
            });
        }
        let (store, id) = (self.clone(), stream_id.to_string());
        blocking(move || Ok(store.open_index(&id)?.0)).await
    }

    /// Drops the records before `records` from a stream's index: the file
    /// is rewritten with just them; a shared index purges the messages of
    /// trimmed fragments.
    pub async fn compact_index(
        &self,
        log: &mut IndexLog,
        stream_id: &str,
        records: Vec<Record>,
    ) -> Result<(), StoreError> {
        if let IndexKind::Shared(shared) = &mut log.kind {
            return shared.compact(&records).await;
        }
        let (store, id) = (self.clone(), stream_id.to_string());
        *log = blocking(move || store.rewrite_index(&id, &records)).await?;
        Ok(())
    }

    /// Rewrites a stream's index with just `records` (compaction after trims).
    pub fn rewrite_index(
        &self,
        stream_id: &str,
        records: &[Record],
    ) -> Result<IndexLog, StoreError> {
        let path = self.index_path(stream_id);
        let mut bytes = Vec::new();
        for r in records {
            index::encode(r, &mut bytes);
        }
        replace_file(&path, &bytes)?;
        Ok(self.open_index(stream_id)?.0)
    }

    /// Reads a metadata document, `None` if it does not exist yet.
    pub fn load_meta<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        let path = self.root.join("meta").join(format!("{name}.json"));
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StoreError::BadMeta {
                        name: name.to_string(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// A document every node of a cluster shares (its documents bucket)
    /// and its revision; on one machine, [`Store::load_meta`] at revision 0.
    pub async fn load_shared<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<(Option<T>, u64), StoreError> {
        let Some(c) = &self.cluster else {
            return Ok((self.load_meta(name)?, 0));
        };
        let (bytes, revision) = c.load_doc_revision(name).await?;
        let value = bytes
            .map(|b| serde_json::from_slice(&b))
            .transpose()
            .map_err(|source| StoreError::BadMeta {
                name: name.to_string(),
                source,
            })?;
        Ok((value, revision))
    }

    /// Replaces a shared document if no node changed it since `revision`
    /// (from [`Store::load_shared`] or the last save); returns the new
    /// revision. On one machine it always saves ([`Store::save_meta`]).
    pub async fn save_shared<T: serde::Serialize>(
        &self,
        name: &str,
        value: &T,
        revision: u64,
    ) -> Result<Result<u64, Conflict>, StoreError> {
        let Some(c) = &self.cluster else {
            self.save_meta(name, value).await?;
            return Ok(Ok(0));
        };
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::BadMeta {
            name: name.to_string(),
            source,
        })?;
        c.update_doc(name, bytes.into(), revision).await
    }

    /// Replaces a metadata document atomically and durably.
    pub async fn save_meta<T: serde::Serialize>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::BadMeta {
            name: name.to_string(),
            source,
        })?;
        let path = self.root.join("meta").join(format!("{name}.json"));
        blocking(move || replace_file(&path, &bytes)).await
    }
}

/// A stream's append-only index: a log file, or in a cluster the
/// stream's subject of the shared index with this node's writer lease.
#[derive(Debug)]
pub struct IndexLog {
    kind: IndexKind,
}

#[derive(Debug)]
enum IndexKind {
    File {
        file: Arc<Mutex<LogFile>>,
        path: PathBuf,
    },
    Shared(Box<SharedIndex>),
}

/// A writer's view of a shared index.
struct SharedIndex {
    cluster: Cluster,
    stream_id: String,
    /// The subject's last sequence as this writer knows it: every append
    /// expects it (the fence).
    last: u64,
    /// The lease's revision and when it was last renewed.
    lease: Option<(u64, std::time::Instant)>,
    /// Sequence of each live fragment's record (for compaction).
    seqs: BTreeMap<u64, u64>,
}

impl std::fmt::Debug for SharedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedIndex")
            .field("stream_id", &self.stream_id)
            .field("last", &self.last)
            .field("lease", &self.lease)
            .finish()
    }
}

impl SharedIndex {
    async fn prepare(&mut self) -> Result<Option<Vec<Record>>, StoreError> {
        let renew_after = std::time::Duration::from_millis(self.cluster.lease_ms() / 3);
        if let Some((_, at)) = self.lease
            && at.elapsed() < renew_after
        {
            return Ok(None);
        }
        let held = self.lease.map(|(rev, _)| rev);
        let started = std::time::Instant::now();
        let (rev, taken_over) = match self.cluster.acquire_lease(&self.stream_id, held).await {
            Ok(r) => r,
            Err(e) => {
                self.lease = None;
                return Err(e);
            }
        };
        self.lease = Some((rev, started));
        if !taken_over {
            return Ok(None);
        }
        // A new writer: move the subject past every earlier writer's
        // expected sequence, then read what they wrote.
        let result = async {
            let last = self.cluster.last_sequence(&self.stream_id).await?;
            self.cluster
                .append_index(&self.stream_id, None, last)
                .await?;
            self.cluster.read_index(&self.stream_id).await
        }
        .await;
        let (records, seqs, last) = match result {
            Ok(r) => r,
            Err(e) => {
                self.lease = None;
                return Err(e);
            }
        };
        self.last = last;
        self.seqs = seqs;
        tracing::info!(stream_id = %self.stream_id, records = records.len(), "took over a stream's index");
        Ok(Some(records))
    }

    async fn append(&mut self, record: &Record) -> Result<(), StoreError> {
        if self.lease.is_none() {
            return Err(StoreError::Fenced("this node holds no lease".into()));
        }
        match self
            .cluster
            .append_index(&self.stream_id, Some(record), self.last)
            .await
        {
            Ok(seq) => {
                self.last = seq;
                if let Record::Fragment(f) = record {
                    self.seqs.insert(f.number, seq);
                }
                Ok(())
            }
            Err(e) => {
                // Unknown state: the next write takes the lease anew and
                // rereads the index.
                self.lease = None;
                Err(e)
            }
        }
    }

    async fn compact(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let first_live = records.iter().find_map(|r| match r {
            Record::Fragment(f) => Some(f.number),
            Record::Trim { .. } => None,
        });
        let keep_from = match first_live {
            Some(n) => {
                self.seqs = self.seqs.split_off(&n);
                // Without the first live record's own sequence nothing is
                // purged: a later one would drop live records.
                match self.seqs.get(&n) {
                    Some(&seq) => seq,
                    None => return Ok(()),
                }
            }
            None => {
                self.seqs.clear();
                self.last
            }
        };
        // The newest Trim record is at or after `keep_from` when nothing
        // lives; otherwise the fragments kept say what remains.
        self.cluster.compact_index(&self.stream_id, keep_from).await
    }
}

/// An append-only file of framed records whose appends return once they
/// are on disk: the index logs and the data streams' group change logs.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppendLog {
    file: Arc<Mutex<LogFile>>,
    path: PathBuf,
}

/// The state of a log file between appends (each append opens it, so an
/// idle stream holds no descriptor).
#[derive(Debug)]
struct LogFile {
    /// Set when a failed append could not be cut back: the tail is unknown,
    /// so nothing may be appended after it.
    broken: bool,
}

impl IndexLog {
    /// Appends a record and returns once it is durable (on disk, or
    /// acknowledged by JetStream). In a cluster, [`IndexLog::prepare_write`]
    /// must have succeeded first.
    pub async fn append(&mut self, record: Record) -> Result<(), StoreError> {
        match &mut self.kind {
            IndexKind::File { file, path } => {
                let mut bytes = Vec::with_capacity(64);
                index::encode(&record, &mut bytes);
                append_durably(file.clone(), path.clone(), bytes).await
            }
            IndexKind::Shared(shared) => shared.append(&record).await,
        }
    }

    /// Makes this node the stream's writer before an append: nothing on
    /// one machine; in a cluster, takes or renews the writer lease. When
    /// the lease was taken over (no append of this node may follow an
    /// earlier writer's unseen ones), returns the index's records as they
    /// are now, which the caller's catalog must be rebuilt from.
    pub async fn prepare_write(&mut self) -> Result<Option<Vec<Record>>, StoreError> {
        match &mut self.kind {
            IndexKind::File { .. } => Ok(None),
            IndexKind::Shared(shared) => shared.prepare().await,
        }
    }

    /// Proves that this node is still the stream's writer: its lease
    /// renews and no other node appended since its last append.
    pub async fn confirm_writer(&mut self) -> Result<(), StoreError> {
        let IndexKind::Shared(shared) = &mut self.kind else {
            return Ok(());
        };
        let held = shared.lease.map(|(rev, _)| rev);
        let started = std::time::Instant::now();
        let renewed = shared.cluster.acquire_lease(&shared.stream_id, held).await;
        let last = shared.cluster.last_sequence(&shared.stream_id).await;
        match (renewed, last) {
            (Ok((rev, false)), Ok(last)) if last == shared.last => {
                shared.lease = Some((rev, started));
                Ok(())
            }
            (Err(e), _) | (_, Err(e)) => {
                shared.lease = None;
                Err(e)
            }
            _ => {
                // The index moved or the lease was taken anew: the next
                // write takes over again and rereads the index.
                shared.lease = None;
                Err(StoreError::Fenced("another node wrote this stream".into()))
            }
        }
    }

    /// Forgets the writer lease without giving it back: the next write
    /// takes the stream over again (after a takeover whose follow-up
    /// failed).
    pub fn abandon(&mut self) {
        if let IndexKind::Shared(shared) = &mut self.kind {
            shared.lease = None;
        }
    }

    /// Gives up the writer lease (a cluster's other nodes may write at once).
    pub async fn release(&mut self) {
        if let IndexKind::Shared(shared) = &mut self.kind
            && let Some((rev, _)) = shared.lease.take()
        {
            shared.cluster.release_lease(&shared.stream_id, rev).await;
        }
    }
}

impl AppendLog {
    /// Appends encoded records and returns once they are on disk.
    pub async fn append(&self, bytes: Vec<u8>) -> Result<(), StoreError> {
        append_durably(self.file.clone(), self.path.clone(), bytes).await
    }

    /// Empties the log (its records are saved elsewhere) durably.
    pub async fn truncate(&self) -> Result<(), StoreError> {
        let (file, path) = (self.file.clone(), self.path.clone());
        blocking(move || {
            let mut log = lock(&file);
            let f = open_append(&path)?;
            f.set_len(0)
                .and_then(|_| f.sync_data())
                .map_err(io(&path))?;
            log.broken = false;
            Ok(())
        })
        .await
    }
}

/// Appends `bytes` at the end of a log file and syncs them; a failed
/// append is cut back so that no partial record precedes later ones.
async fn append_durably(
    file: Arc<Mutex<LogFile>>,
    path: PathBuf,
    bytes: Vec<u8>,
) -> Result<(), StoreError> {
    blocking(move || {
        // The lock only serialises appends; a poisoned lock still guards a valid file.
        let mut log = lock(&file);
        if log.broken {
            return Err(StoreError::Io {
                path: path.clone(),
                source: std::io::Error::other("the log failed earlier and takes no more records"),
            });
        }
        let mut file = open_append(&path)?;
        let f = &mut file;
        let before = f.seek(SeekFrom::End(0)).map_err(io(&path))?;
        let result = f.write_all(&bytes).and_then(|_| f.sync_data());
        if let Err(e) = result {
            // A partial record must not stay in front of later appends:
            // recovery stops at the first bad record and would drop
            // everything after it. Cut back; if even that fails, refuse
            // further appends rather than acknowledge unrecoverable ones.
            let cut = f.set_len(before).and_then(|_| f.sync_data());
            if cut.is_err() {
                log.broken = true;
            }
            return Err(io(&path)(e));
        }
        Ok(())
    })
    .await
}

/// Bits of a data-log position that hold the offset inside a segment; the
/// bits above hold the segment number.
const SEGMENT_SHIFT: u32 = 40;

/// The segment number of a data-log position.
pub fn segment_of(pos: u64) -> u32 {
    (pos >> SEGMENT_SHIFT) as u32
}

/// A data log's segments: the active one open (appends and reads of
/// recent records), the older ones only named (a read opens them), so a
/// stream holds one descriptor however many segments it keeps.
type Segments = Arc<std::sync::RwLock<BTreeMap<u32, Option<Arc<File>>>>>;

/// A data stream's append-only record log: a directory of segment files
/// (`data/<stream id>/<segment>.log`). Records are addressed by a position
/// `segment << 40 | offset`. Appends come from one writer at a time and go
/// to the newest segment, which rolls over past `segment_bytes`; whole old
/// segments are deleted for retention; reads are positional and may run
/// concurrently with appends.
#[derive(Debug)]
pub struct DataLog {
    dir: PathBuf,
    segments: Segments,
    active: u32,
    len: u64,
    segment_bytes: u64,
}

impl Store {
    fn data_log_dir(&self, stream_id: &str) -> PathBuf {
        self.root.join("data").join(stream_id)
    }

    /// Opens a data stream's group change log (`data/<id>/groups.wal`),
    /// cutting a torn or corrupt tail, and returns the changes it holds.
    pub fn open_group_log(
        &self,
        stream_id: &str,
    ) -> Result<(AppendLog, Vec<kinema_datastream::leases::GroupChange>), StoreError> {
        let dir = self.data_log_dir(stream_id);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join("groups.wal");
        let (_, changes, _) = open_recovering(&path, kinema_datastream::leases::decode_changes)?;
        sync_dir(&dir)?;
        let log = AppendLog {
            file: Arc::new(Mutex::new(LogFile { broken: false })),
            path,
        };
        Ok((log, changes))
    }

    fn queue_dir(&self, stream_id: &str, queue_id: &str) -> PathBuf {
        self.data_log_dir(stream_id).join("queues").join(queue_id)
    }

    /// Opens a queue's change log (`data/<stream id>/queues/<queue
    /// id>/changes.wal`), cutting a torn or corrupt tail, and returns it
    /// with the changes it holds and the queue's last snapshot
    /// (`state.json`, `None` before the first).
    #[allow(clippy::type_complexity)]
    pub fn open_queue_log(
        &self,
        stream_id: &str,
        queue_id: &str,
    ) -> Result<
        (
            AppendLog,
            Vec<kinema_datastream::queue::QueueChange>,
            Option<kinema_datastream::queue::QueueState>,
        ),
        StoreError,
    > {
        let dir = self.queue_dir(stream_id, queue_id);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let parent = dir.parent().expect("queues/ is the parent");
        sync_dir(parent)?;
        sync_dir(parent.parent().expect("the stream's directory"))?;
        let snapshot_path = dir.join("state.json");
        let snapshot = match fs::read(&snapshot_path) {
            Ok(bytes) => {
                Some(
                    serde_json::from_slice(&bytes).map_err(|source| StoreError::BadMeta {
                        name: snapshot_path.display().to_string(),
                        source,
                    })?,
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&snapshot_path)(e)),
        };
        let path = dir.join("changes.wal");
        let (_, changes, _) = open_recovering(&path, kinema_datastream::queue::decode_changes)?;
        sync_dir(&dir)?;
        let log = AppendLog {
            file: Arc::new(Mutex::new(LogFile { broken: false })),
            path,
        };
        Ok((log, changes, snapshot))
    }

    /// Replaces a queue's snapshot atomically and durably.
    pub async fn save_queue_snapshot(
        &self,
        stream_id: &str,
        queue_id: &str,
        state: &kinema_datastream::queue::QueueState,
    ) -> Result<(), StoreError> {
        let path = self.queue_dir(stream_id, queue_id).join("state.json");
        let bytes = serde_json::to_vec(state).map_err(|source| StoreError::BadMeta {
            name: format!("queue {queue_id}"),
            source,
        })?;
        blocking(move || replace_file(&path, &bytes)).await
    }

    fn channel_dir(&self, stream_id: &str, channel_id: &str) -> PathBuf {
        self.data_log_dir(stream_id)
            .join("channels")
            .join(channel_id)
    }

    /// A channel's position (`data/<stream id>/channels/<channel
    /// id>/position.json`), `None` before the first is saved.
    pub fn load_channel_position<T: serde::de::DeserializeOwned>(
        &self,
        stream_id: &str,
        channel_id: &str,
    ) -> Result<Option<T>, StoreError> {
        let path = self
            .channel_dir(stream_id, channel_id)
            .join("position.json");
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StoreError::BadMeta {
                        name: path.display().to_string(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Replaces a channel's position atomically and durably.
    pub async fn save_channel_position<T: serde::Serialize>(
        &self,
        stream_id: &str,
        channel_id: &str,
        position: &T,
    ) -> Result<(), StoreError> {
        let dir = self.channel_dir(stream_id, channel_id);
        let bytes = serde_json::to_vec(position).map_err(|source| StoreError::BadMeta {
            name: format!("channel {channel_id}"),
            source,
        })?;
        blocking(move || {
            if !dir.exists() {
                fs::create_dir_all(&dir).map_err(io(&dir))?;
                let parent = dir.parent().expect("channels/ is the parent");
                sync_dir(parent)?;
                sync_dir(parent.parent().expect("the stream's directory"))?;
            }
            replace_file(&dir.join("position.json"), &bytes)
        })
        .await
    }

    /// Removes a channel's position.
    pub fn delete_channel_state(
        &self,
        stream_id: &str,
        channel_id: &str,
    ) -> Result<(), StoreError> {
        let dir = self.channel_dir(stream_id, channel_id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&dir)(e)),
        }
    }

    fn delivered_key(bucket: &str, key: &str) -> ObjectPath {
        ObjectPath::from(format!("buckets/{bucket}/{key}"))
    }

    /// Where a delivered object lies on this machine's disk (one machine
    /// only; in a cluster objects are in the bucket).
    pub fn delivered_path(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        let base = self.local_objects.as_ref()?;
        Some(base.join(Self::delivered_key(bucket, key).as_ref()))
    }

    /// Whether a delivered object exists.
    pub async fn has_delivered(&self, bucket: &str, key: &str) -> Result<bool, StoreError> {
        match self.objects.head(&Self::delivered_key(bucket, key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes an object a channel delivers (`buckets/<bucket>/<key>` in
    /// the object store), replacing one of the same key; returns once it
    /// is durable, with every directory it needed.
    pub async fn put_delivered(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
    ) -> Result<(), StoreError> {
        let path = Self::delivered_key(bucket, key);
        self.objects.put(&path, body.into()).await?;
        if let Some(base) = self.local_objects.clone() {
            let file = base.join(path.as_ref());
            blocking(move || {
                File::open(&file)
                    .and_then(|f| f.sync_data())
                    .map_err(io(&file))?;
                // New directories may have been made for the key: each
                // entry is durable only once its parent is synced.
                let mut dir = file.parent();
                while let Some(d) = dir {
                    sync_dir(d)?;
                    if d == base {
                        break;
                    }
                    dir = d.parent();
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Removes a queue's change log and snapshot.
    pub fn delete_queue_log(&self, stream_id: &str, queue_id: &str) -> Result<(), StoreError> {
        let dir = self.queue_dir(stream_id, queue_id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&dir)(e)),
        }
    }

    /// Opens a data stream's log, cutting a torn tail of the newest segment
    /// back to its last complete record; returns it with every record and
    /// its position.
    pub fn open_data_log(
        &self,
        stream_id: &str,
        segment_bytes: u64,
    ) -> Result<(DataLog, Vec<(u64, kinema_datastream::record::StoredRecord)>), StoreError> {
        let dir = self.data_log_dir(stream_id);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        sync_dir(dir.parent().expect("data/ is the parent"))?;
        let mut numbers: Vec<u32> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()
            })
            .collect();
        numbers.sort_unstable();
        if numbers.is_empty() {
            numbers.push(0);
        }
        let mut segments = BTreeMap::new();
        let mut records = Vec::new();
        let mut len = 0;
        let last = *numbers.last().expect("at least one segment");
        for n in numbers {
            let path = dir.join(format!("{n:010}.log"));
            // Only the newest segment can have a torn tail; an older one
            // with damage is cut too, so recovery never stops midway.
            let (file, recs, valid) =
                open_recovering(&path, kinema_datastream::record::decode_log)?;
            records.extend(
                recs.into_iter()
                    .map(|(off, r)| ((u64::from(n) << SEGMENT_SHIFT) | off, r)),
            );
            if n == last {
                len = valid;
            }
            segments.insert(n, (n == last).then(|| Arc::new(file)));
        }
        sync_dir(&dir)?;
        Ok((
            DataLog {
                dir,
                segments: Arc::new(std::sync::RwLock::new(segments)),
                active: last,
                len,
                segment_bytes: segment_bytes.max(1),
            },
            records,
        ))
    }

    pub fn delete_data_log(&self, stream_id: &str) -> Result<(), StoreError> {
        let dir = self.data_log_dir(stream_id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&dir)(e)),
        }
    }
}

impl DataLog {
    fn active_file(&self) -> Result<Arc<File>, StoreError> {
        read(&self.segments)
            .get(&self.active)
            .cloned()
            .flatten()
            .ok_or_else(|| StoreError::NotFound(format!("data log segment {}", self.active)))
    }

    /// Appends encoded records (kept in one segment) and returns their
    /// starting position once they are on disk (fdatasync). Blocking: call
    /// it off the async runtime. On failure the segment is cut back, so no
    /// partial record stays in front of later appends.
    pub fn append(&mut self, bytes: &[u8]) -> Result<u64, StoreError> {
        if self.len > 0 && self.len + bytes.len() as u64 > self.segment_bytes {
            let next = self.active + 1;
            let file = open_append(&self.dir.join(format!("{next:010}.log")))?;
            sync_dir(&self.dir)?;
            let mut segments = write(&self.segments);
            // The old segment is closed; reads open it from now on.
            segments.insert(self.active, None);
            segments.insert(next, Some(Arc::new(file)));
            self.active = next;
            self.len = 0;
        }
        let file = self.active_file()?;
        let offset = self.len;
        let result = (&*file).write_all(bytes).and_then(|_| file.sync_data());
        if let Err(e) = result {
            let _ = file.set_len(offset).and_then(|_| file.sync_data());
            return Err(io(&self.dir)(e));
        }
        self.len += bytes.len() as u64;
        Ok((u64::from(self.active) << SEGMENT_SHIFT) | offset)
    }

    /// The segment appends go to.
    pub fn active_segment(&self) -> u32 {
        self.active
    }

    /// Deletes the files of the given (older) segments. Blocking.
    pub fn delete_segments(&mut self, numbers: &[u32]) -> Result<(), StoreError> {
        for &n in numbers.iter().filter(|n| **n != self.active) {
            write(&self.segments).remove(&n);
            let path = self.dir.join(format!("{n:010}.log"));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        sync_dir(&self.dir)
    }

    /// A reader sharing the segment files.
    pub fn reader(&self) -> DataLogReader {
        DataLogReader {
            segments: self.segments.clone(),
            dir: self.dir.clone(),
        }
    }
}

/// Positional reads of a data log; cheap to clone.
#[derive(Debug, Clone)]
pub struct DataLogReader {
    segments: Segments,
    dir: PathBuf,
}

impl DataLogReader {
    /// Reads `len` bytes at position `pos`. Blocking.
    pub fn read_at(&self, pos: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        Ok(self.read_many(&[(pos, len)])?.remove(0))
    }

    /// Reads each `(position, length)` span, opening each older segment
    /// once for the call. A segment deleted meanwhile is `NotFound`.
    /// Blocking.
    pub fn read_many(&self, spans: &[(u64, usize)]) -> Result<Vec<Vec<u8>>, StoreError> {
        use std::os::unix::fs::FileExt;
        let mut open: Option<(u32, Arc<File>)> = None;
        let mut out = Vec::with_capacity(spans.len());
        for &(pos, len) in spans {
            let n = segment_of(pos);
            let file = match &open {
                Some((m, f)) if *m == n => f.clone(),
                _ => {
                    let missing = || StoreError::NotFound(format!("data log segment {n}"));
                    let f = match read(&self.segments).get(&n).ok_or_else(missing)? {
                        Some(active) => active.clone(),
                        None => {
                            let path = self.dir.join(format!("{n:010}.log"));
                            match File::open(&path) {
                                Ok(f) => Arc::new(f),
                                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                                    return Err(missing());
                                }
                                Err(e) => return Err(io(&path)(e)),
                            }
                        }
                    };
                    open = Some((n, f.clone()));
                    f
                }
            };
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, pos & ((1 << SEGMENT_SHIFT) - 1))
                .map_err(io(&self.dir))?;
            out.push(buf);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinema_archive::FragmentMeta;

    fn meta(number: u64) -> FragmentMeta {
        FragmentMeta {
            number,
            producer_ms: 1,
            server_ms: 2,
            duration_ms: 3,
            size: 4,
            cluster_offset: 5,
            frames: 6,
        }
    }

    #[tokio::test]
    async fn fragments_and_index_survive_reopening_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_local(dir.path()).unwrap();
        store
            .put_fragment("s1", 7, Bytes::from_static(b"mkv"))
            .await
            .unwrap();
        let (mut log, recs) = store.open_index("s1").unwrap();
        assert!(recs.is_empty());
        log.append(Record::Fragment(meta(7))).await.unwrap();
        log.append(Record::Trim { through: 3 }).await.unwrap();
        drop(log);
        // Simulate a crash in the middle of a third append.
        let idx = dir.path().join("index/s1.idx");
        let mut f = OpenOptions::new().append(true).open(&idx).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        drop(f);

        let store = Store::open_local(dir.path()).unwrap();
        let (_log, recs) = store.open_index("s1").unwrap();
        assert_eq!(
            recs,
            [Record::Fragment(meta(7)), Record::Trim { through: 3 }]
        );
        assert_eq!(
            store.get_fragment("s1", 7).await.unwrap(),
            Bytes::from_static(b"mkv")
        );
        assert_eq!(store.list_fragments("s1").await.unwrap(), [7]);
        assert!(matches!(
            store.get_fragment("s1", 8).await,
            Err(StoreError::NotFound(_))
        ));
        store.delete_stream("s1").await.unwrap();
        assert!(store.list_fragments("s1").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn metadata_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_local(dir.path()).unwrap();
        assert_eq!(store.load_meta::<Vec<u32>>("x").unwrap(), None);
        store.save_meta("x", &vec![1u32, 2]).await.unwrap();
        assert_eq!(store.load_meta::<Vec<u32>>("x").unwrap(), Some(vec![1, 2]));
    }
}
