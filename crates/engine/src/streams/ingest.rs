//! Ingest: a PutMedia upload bound to its stream, and persisting its
//! fragments (object, then index record, then visible and acknowledged).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kinema_archive::index::Record;
use kinema_archive::ingest::{CompletedFragment, IngestEvent, IngestSession, TimecodeType};
use kinema_archive::{Catalog, FragmentMeta};
use kinema_core::sync::{lock, read, write};
use kinema_store::{IndexLog, StoreError};

use super::{Engine, LiveFragment, LiveFrame, Stream};
use crate::EngineError;

impl Engine {
    /// Starts a PutMedia upload. `start_ns` is the producer start timestamp
    /// (Unix nanoseconds) for RELATIVE timecodes.
    pub fn begin_put_media(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        timecode_type: TimecodeType,
        start_ns: i128,
    ) -> Result<PutMediaSession, EngineError> {
        let stream = self.resolve(name, arn)?;
        super::take_place(
            &stream.producers,
            self.inner.config.max_producers_per_stream,
            "producers",
        )?;
        if stream.producers.load(Ordering::SeqCst) == 1 {
            self.keep_writing(&stream);
        }
        Ok(PutMediaSession {
            engine: self.clone(),
            session: IngestSession::new(timecode_type, start_ns, self.inner.config.ingest),
            stream,
            track: None,
        })
    }

    /// In a cluster, renews the stream's lease while producers are
    /// connected here, so that fragments longer than the lease (or a pause
    /// between them) do not let another node take a stream that is still
    /// being written through this one.
    fn keep_writing(&self, stream: &Arc<Stream>) {
        let Some(lease_ms) = self.inner.store.cluster().map(|c| c.lease_ms()) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (engine, stream) = (self.clone(), stream.clone());
        let every = std::time::Duration::from_millis(lease_ms / 3);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if stream.producers.load(Ordering::SeqCst) == 0
                    || stream.deleted.load(Ordering::SeqCst)
                {
                    return;
                }
                let mut log = stream.persist.lock().await;
                if let Err(e) = engine.become_writer(&stream, &mut log).await {
                    tracing::debug!(error = %e, "renewing a stream's lease");
                }
            }
        });
    }

    async fn persist(
        &self,
        stream: &Stream,
        frag: CompletedFragment,
    ) -> Result<FragmentMeta, EngineError> {
        let mut log = stream.persist.lock().await;
        if stream.deleted.load(Ordering::SeqCst) {
            return Err(EngineError::ResourceNotFound(
                "the stream was deleted".into(),
            ));
        }
        let patience = self
            .inner
            .store
            .cluster()
            .map(|c| std::time::Duration::from_millis(c.lease_ms() + 1_000))
            .unwrap_or_default();
        self.become_writer_patiently(stream, &mut log, patience)
            .await?;
        let (number, floor) = {
            let c = read(&stream.catalog);
            (
                c.next_number(),
                c.last().map(|f| f.server_ms).unwrap_or(i64::MIN),
            )
        };
        let meta = FragmentMeta {
            number,
            producer_ms: frag.producer_ms,
            server_ms: frag.server_ms.max(floor),
            duration_ms: frag.duration_ms,
            size: frag.object.len() as u32,
            cluster_offset: frag.cluster_offset,
            frames: frag.frames,
        };
        // A producer resending after a lost connection: the fragment is
        // already durable, so acknowledge the stored one instead of storing
        // it twice. Only the same frames count: a different fragment that
        // happens to start at the same time with as many frames is stored.
        let id = stream.id();
        let candidate = read(&stream.catalog).duplicate_of(&meta).copied();
        if let Some(stored) = candidate
            && stored.size == meta.size
            && let Ok(object) = self.inner.store.get_fragment(&id, stored.number).await
            && object.get(stored.cluster_offset as usize..)
                == frag.object.get(meta.cluster_offset as usize..)
        {
            return Ok(stored);
        }
        let object = frag.object;
        match self
            .inner
            .store
            .put_fragment(&id, number, object.clone())
            .await
        {
            Err(StoreError::ObjectExists(_)) => {
                // An earlier writer's object that never made it into the
                // index: replaced only while this node provably writes.
                log.confirm_writer().await?;
                self.inner
                    .store
                    .replace_fragment(&id, number, object.clone())
                    .await?;
            }
            r => r?,
        }
        log.append(Record::Fragment(meta)).await?;
        {
            // In a cluster the index follower may have added it already.
            let mut catalog = write(&stream.catalog);
            if number >= catalog.next_number() {
                catalog
                    .append(meta)
                    .expect("numbers are assigned under the persist lock, so they always increase");
            }
        }
        stream.live.send_replace(number);
        if self.inner.live_fragments.receiver_count() > 0 {
            let _ = self.inner.live_fragments.send(LiveFragment {
                stream: lock(&stream.info).name.clone(),
                meta,
                object,
            });
        }
        Ok(meta)
    }
}

impl Engine {
    /// Makes this node the stream's writer (in a cluster: its lease). A
    /// node that takes a stream over rebuilds the catalog from the shared
    /// index, so numbering continues after every earlier writer's last
    /// fragment, and removes objects no index record names (an earlier
    /// writer's unindexed or trimmed ones).
    pub(super) async fn become_writer(
        &self,
        stream: &Stream,
        log: &mut IndexLog,
    ) -> Result<(), EngineError> {
        let Some(records) = log.prepare_write().await? else {
            return Ok(());
        };
        let rebuilt = self.rebuild_catalog(stream, records).await;
        if rebuilt.is_err() {
            // The catalog may lack the earlier writer's last fragments:
            // the next write must take the stream over (and reread) again.
            log.abandon();
        }
        rebuilt
    }

    /// Like [`Engine::become_writer`], waiting up to `patience` for a
    /// lease another node holds (a node that died keeps it until it
    /// expires): a producer that reconnects through another node is
    /// answered once the stream is free, not refused meanwhile.
    pub(super) async fn become_writer_patiently(
        &self,
        stream: &Stream,
        log: &mut IndexLog,
        patience: std::time::Duration,
    ) -> Result<(), EngineError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.become_writer(stream, log).await {
                Err(EngineError::Storage(StoreError::LeaseHeld(why)))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(why, "waiting for a stream's writer lease");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                r => return r,
            }
        }
    }

    async fn rebuild_catalog(
        &self,
        stream: &Stream,
        records: Vec<Record>,
    ) -> Result<(), EngineError> {
        let mut catalog = Catalog::new();
        let trims = records
            .iter()
            .filter(|r| matches!(r, Record::Trim { .. }))
            .count();
        for r in records {
            super::cluster::apply_record(&mut catalog, r);
        }
        let id = stream.id();
        for n in self.inner.store.list_fragments(&id).await? {
            if catalog.get(n).is_none() {
                self.inner.store.delete_fragment(&id, n).await?;
            }
        }
        let last = catalog.last().map(|f| f.number);
        *write(&stream.catalog) = catalog;
        stream.trims.store(trims, Ordering::Relaxed);
        if let Some(n) = last {
            stream.live.send_replace(n);
        }
        Ok(())
    }
}

/// One PutMedia upload bound to its stream.
pub struct PutMediaSession {
    engine: Engine,
    stream: Arc<Stream>,
    session: IngestSession,
    /// The upload's video track, shared by the frames sent to live viewers.
    track: Option<Arc<kinema_mkv::TrackInfo>>,
}

impl PutMediaSession {
    pub fn stream_name(&self) -> String {
        lock(&self.stream.info).name.clone()
    }

    /// Whether PERSISTED acknowledgements are sent: only for streams that
    /// archive (retention above zero), as in Kinesis Video Streams.
    pub fn acks_persisted(&self) -> bool {
        lock(&self.stream.info).retention_hours > 0
    }

    pub fn push(&mut self, data: &[u8]) {
        // Frames are tapped only while someone watches the stream live.
        let watched = self.stream.frames.receiver_count() > 0;
        self.session.set_frame_tap(watched);
        self.session.push(data, self.engine.clock().now_ms());
        if watched {
            self.send_frames();
        }
    }

    pub fn finish(&mut self) {
        self.session.finish(self.engine.clock().now_ms());
        self.send_frames();
    }

    fn send_frames(&mut self) {
        let now = std::time::Instant::now();
        while let Some(f) = self.session.poll_frame() {
            let track = match &self.track {
                Some(t) => t.clone(),
                None => {
                    let Some(info) = self.session.video_track() else {
                        return;
                    };
                    self.track.insert(Arc::new(info.clone())).clone()
                }
            };
            // No receiver left is not an error: the next push stops the tap.
            let _ = self.stream.frames.send(LiveFrame {
                producer_ms: f.producer_ms,
                arrived: now,
                keyframe: f.keyframe,
                payload: f.payload,
                track,
            });
        }
    }

    pub fn poll(&mut self) -> Option<IngestEvent> {
        self.session.poll()
    }

    /// Stores a complete fragment durably and makes it visible to readers.
    pub async fn persist(&self, frag: CompletedFragment) -> Result<FragmentMeta, EngineError> {
        self.engine.persist(&self.stream, frag).await
    }
}

impl Drop for PutMediaSession {
    fn drop(&mut self) {
        let left = self.stream.producers.fetch_sub(1, Ordering::SeqCst) - 1;
        self.stream.live.send_modify(|_| {});
        // The last producer gone: another node may take the stream at once.
        if left == 0
            && self.engine.inner.store.cluster().is_some()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let stream = self.stream.clone();
            rt.spawn(async move {
                let mut log = stream.persist.lock().await;
                if stream.producers.load(Ordering::SeqCst) == 0 {
                    log.release().await;
                }
            });
        }
    }
}
