//! Ingest: a PutMedia upload bound to its stream, and persisting its
//! fragments (object, then index record, then visible and acknowledged).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kinema_archive::FragmentMeta;
use kinema_archive::index::Record;
use kinema_archive::ingest::{CompletedFragment, IngestEvent, IngestSession, TimecodeType};
use kinema_core::sync::{lock, read, write};

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
        Ok(PutMediaSession {
            engine: self.clone(),
            session: IngestSession::new(timecode_type, start_ns, self.inner.config.ingest),
            stream,
            track: None,
        })
    }

    async fn persist(
        &self,
        stream: &Stream,
        frag: CompletedFragment,
    ) -> Result<FragmentMeta, EngineError> {
        let log = stream.persist.lock().await;
        if stream.deleted.load(Ordering::SeqCst) {
            return Err(EngineError::ResourceNotFound(
                "the stream was deleted".into(),
            ));
        }
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
        self.inner
            .store
            .put_fragment(&id, number, object.clone())
            .await?;
        log.append(Record::Fragment(meta)).await?;
        write(&stream.catalog)
            .append(meta)
            .expect("numbers are assigned under the persist lock, so they always increase");
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
        self.stream.producers.fetch_sub(1, Ordering::SeqCst);
        self.stream.live.send_modify(|_| {});
    }
}
