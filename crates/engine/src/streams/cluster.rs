//! Video streams in a cluster: this node's streams and catalogs are a
//! cache of the shared state, kept current by following the stream
//! metadata bucket and the shared fragment index (`kinema_store::Cluster`).
//! Any node serves any read; the node holding a stream's writer lease
//! appends to it (see `ingest`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{RwLock, Weak};
use std::time::Duration;

use kinema_archive::Catalog;
use kinema_archive::index::Record;
use kinema_core::sync::{lock, read, write};
use kinema_store::{Conflict, IndexEvent, KeyChange, Store};
use tokio::sync::{Mutex, broadcast};

use super::{EngineConfig, Inner, LIVE_FRAGMENTS_QUEUE, Stream, StreamInfo};
use crate::{Engine, EngineError};

/// Stream ids whose data no metadata names are collected only once their
/// creation is this old (a stream's metadata is saved before its data).
const ORPHAN_AGE_MS: i64 = 60_000;

/// Index records of streams whose metadata has not arrived yet.
type Pending = HashMap<String, Vec<Record>>;

impl Engine {
    /// Opens the engine on a cluster's shared state: every stream's
    /// metadata and catalog are read, then followed.
    pub(super) async fn open_cluster(
        store: Store,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        let cluster = store
            .cluster()
            .cloned()
            .ok_or_else(|| EngineError::Internal("not a cluster store".into()))?;
        let (infos, info_changes) = cluster.watch_streams().await?;
        let (records, index_changes) = cluster.follow_index().await?;
        let mut pending = Pending::new();
        for e in records {
            if let Some(r) = e.record {
                pending.entry(e.stream_id).or_default().push(r);
            }
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                config,
                streams: RwLock::new(BTreeMap::new()),
                meta_lock: Mutex::new(()),
                versions: AtomicU64::new(0),
                live_fragments: broadcast::channel(LIVE_FRAGMENTS_QUEUE).0,
                unreadable_meta: AtomicBool::new(false),
            }),
        };
        for change in infos {
            engine.apply_info(change, &mut pending).await;
        }
        tracing::info!(
            node = cluster.node(),
            streams = read(&engine.inner.streams).len(),
            "joined the cluster"
        );
        tokio::spawn(follow(
            Arc::downgrade(&engine.inner),
            info_changes,
            index_changes,
            pending,
        ));
        tokio::spawn(collect_orphans(Arc::downgrade(&engine.inner)));
        Ok(engine)
    }

    /// A stream's metadata as the bucket has it now (`None` if deleted).
    async fn apply_info(&self, change: KeyChange, pending: &mut Pending) {
        let name = change.key;
        let existing = read(&self.inner.streams).get(&name).cloned();
        if let Some(s) = &existing
            && s.revision.load(Ordering::SeqCst) >= change.revision
        {
            return;
        }
        let info = match change
            .value
            .map(|v| serde_json::from_slice::<StreamInfo>(&v))
        {
            Some(Ok(info)) => Some(info),
            Some(Err(e)) => {
                tracing::warn!(stream = %name, error = %e, "ignoring unreadable stream metadata");
                // Its data must not be taken for a deleted stream's.
                self.inner.unreadable_meta.store(true, Ordering::SeqCst);
                return;
            }
            None => None,
        };
        match (existing, info) {
            (Some(s), Some(info)) if s.id() == info.id => {
                *lock(&s.info) = info;
                s.revision.store(change.revision, Ordering::SeqCst);
            }
            (existing, Some(info)) => {
                if let Some(old) = existing {
                    forget(&old);
                }
                let log = match self.inner.store.open_index_async(&info.id).await {
                    Ok(log) => log,
                    Err(e) => {
                        tracing::error!(stream = %name, error = %e, "cannot open a stream's index");
                        return;
                    }
                };
                let mut catalog = Catalog::new();
                for r in pending.remove(&info.id).unwrap_or_default() {
                    apply_record(&mut catalog, r);
                }
                let stream = Arc::new(Stream::new(info, change.revision, catalog, log));
                write(&self.inner.streams).insert(name, stream);
            }
            (Some(s), None) => {
                write(&self.inner.streams).remove(&name);
                pending.remove(&s.id());
                forget(&s);
            }
            (None, None) => {}
        }
    }

    /// One message of the shared index.
    fn apply_index(&self, e: IndexEvent, pending: &mut Pending) {
        let Some(record) = e.record else { return };
        let stream = read(&self.inner.streams)
            .values()
            .find(|s| lock(&s.info).id == e.stream_id)
            .cloned();
        let Some(stream) = stream else {
            pending.entry(e.stream_id).or_default().push(record);
            return;
        };
        let appended = apply_record(&mut write(&stream.catalog), record);
        if let Some(number) = appended {
            stream.live.send_replace(number);
        }
    }

    /// Saves a stream's changed metadata in the shared bucket, retrying
    /// on a concurrent change with the newer metadata; `change` may refuse.
    pub(super) async fn change_shared_info(
        &self,
        stream: &Stream,
        mut change: impl FnMut(&mut StreamInfo) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let cluster = self.cluster()?;
        for _ in 0..8 {
            let mut info = stream.info();
            let revision = stream.revision.load(Ordering::SeqCst);
            change(&mut info)?;
            let value =
                serde_json::to_vec(&info).map_err(|e| EngineError::Internal(e.to_string()))?;
            match cluster
                .update_stream_info(&info.name, value.into(), revision)
                .await?
            {
                Ok(rev) => {
                    *lock(&stream.info) = info;
                    stream.revision.fetch_max(rev, Ordering::SeqCst);
                    return Ok(());
                }
                Err(Conflict::Changed) => self.refresh_info(stream).await?,
            }
        }
        Err(EngineError::ResourceInUse(
            "the stream is being changed by others; try again".into(),
        ))
    }

    /// Rereads a stream's metadata from the bucket.
    async fn refresh_info(&self, stream: &Stream) -> Result<(), EngineError> {
        let name = lock(&stream.info).name.clone();
        match self.cluster()?.stream_info(&name).await? {
            Some((value, rev)) => {
                let info: StreamInfo = serde_json::from_slice(&value)
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                if info.id != stream.id() {
                    return Err(EngineError::ResourceNotFound(format!(
                        "the stream {name} was deleted"
                    )));
                }
                *lock(&stream.info) = info;
                stream.revision.store(rev, Ordering::SeqCst);
                Ok(())
            }
            None => Err(EngineError::ResourceNotFound(format!(
                "the stream {name} was deleted"
            ))),
        }
    }

    /// Creates a stream's metadata in the bucket, or says the name is taken.
    pub(super) async fn create_shared_info(&self, info: &StreamInfo) -> Result<u64, EngineError> {
        let value = serde_json::to_vec(info).map_err(|e| EngineError::Internal(e.to_string()))?;
        match self
            .cluster()?
            .create_stream_info(&info.name, value.into())
            .await?
        {
            Ok(rev) => Ok(rev),
            Err(Conflict::Changed) => Err(EngineError::ResourceInUse(format!(
                "the stream {} already exists",
                info.name
            ))),
        }
    }

    /// Deletes a stream's metadata from the bucket (the version check is
    /// the caller's, on the metadata it read).
    pub(super) async fn delete_shared_info(&self, stream: &Stream) -> Result<(), EngineError> {
        let name = lock(&stream.info).name.clone();
        let revision = stream.revision.load(Ordering::SeqCst);
        match self.cluster()?.delete_stream_info(&name, revision).await? {
            Ok(()) => Ok(()),
            Err(Conflict::Changed) => {
                self.refresh_info(stream).await?;
                Err(EngineError::VersionMismatch(format!(
                    "the stream {name} changed meanwhile; describe it and try again"
                )))
            }
        }
    }

    fn cluster(&self) -> Result<&kinema_store::Cluster, EngineError> {
        self.inner
            .store
            .cluster()
            .ok_or_else(|| EngineError::Internal("not in a cluster".into()))
    }
}

/// Applies one index record to a catalog; returns the number of a fragment
/// it added. Records this node wrote itself come back here too: those
/// already in the catalog are skipped.
pub(super) fn apply_record(catalog: &mut Catalog, record: Record) -> Option<u64> {
    match record {
        Record::Fragment(m) => {
            if m.number < catalog.next_number() {
                return None;
            }
            catalog.append(m).ok().map(|m| m.number)
        }
        Record::Trim { through } => {
            catalog.trim_through(through);
            None
        }
    }
}

/// A stream this node no longer lists: readers and writers end.
fn forget(stream: &Stream) {
    stream.deleted.store(true, Ordering::SeqCst);
    stream.live.send_modify(|_| {});
}

/// Applies metadata changes and index messages as they come, for as long
/// as the engine lives.
async fn follow(
    inner: Weak<Inner>,
    mut infos: tokio::sync::mpsc::UnboundedReceiver<KeyChange>,
    mut index: tokio::sync::mpsc::UnboundedReceiver<IndexEvent>,
    mut pending: Pending,
) {
    loop {
        tokio::select! {
            Some(change) = infos.recv() => {
                let Some(inner) = inner.upgrade() else { return };
                Engine { inner }.apply_info(change, &mut pending).await;
            }
            Some(event) = index.recv() => {
                let Some(inner) = inner.upgrade() else { return };
                Engine { inner }.apply_index(event, &mut pending);
            }
            else => return,
        }
    }
}

/// Removes the data of streams no metadata names (a node that died while
/// deleting a stream), once at start.
async fn collect_orphans(inner: Weak<Inner>) {
    tokio::time::sleep(Duration::from_secs(5)).await;
    let Some(inner) = inner.upgrade() else { return };
    let engine = Engine { inner };
    if engine.inner.unreadable_meta.load(Ordering::SeqCst) {
        tracing::warn!("some stream metadata is unreadable here: no data is collected");
        return;
    }
    let ids = match engine.inner.store.stored_stream_ids().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list stored streams");
            return;
        }
    };
    let now = engine.clock().now_ms();
    for id in ids {
        let known = read(&engine.inner.streams).values().any(|s| s.id() == id);
        let created: Option<i64> = id.split('-').next().and_then(|t| t.parse().ok());
        if known || created.is_none_or(|c| now - c < ORPHAN_AGE_MS) {
            continue;
        }
        tracing::info!(stream_id = %id, "removing the data of a deleted stream");
        if let Err(e) = engine.inner.store.delete_stream(&id).await {
            tracing::warn!(stream_id = %id, error = %e, "cannot remove a deleted stream's data");
        }
    }
}
