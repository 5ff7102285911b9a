//! Retention: trimming fragments older than a stream's retention period
//! (index record first, then the objects), and compacting the index log.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kinema_archive::index::Record;
use kinema_core::sync::{read, write};
use kinema_store::{IndexLog, StoreError};

use super::{Engine, Stream};
use crate::EngineError;

/// After this many trimmed index records the index log is rewritten.
const COMPACT_AFTER_TRIMS: usize = 256;

impl Engine {
    /// Deletes expired fragments of every stream once.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, EngineError> {
        let streams: Vec<Arc<Stream>> = read(&self.inner.streams).values().cloned().collect();
        let mut deleted = 0;
        let mut failed = None;
        for stream in streams {
            // One stream's failure does not keep the others from expiring.
            match self.enforce_retention_on(&stream, now_ms).await {
                Ok(n) => deleted += n,
                Err(e) => {
                    tracing::warn!(stream = %stream.info().name, error = %e, "retention");
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) if deleted == 0 => Err(e),
            _ => Ok(deleted),
        }
    }

    async fn enforce_retention_on(
        &self,
        stream: &Stream,
        now_ms: i64,
    ) -> Result<usize, EngineError> {
        let info = stream.info();
        let keep_ms = if info.retention_hours == 0 {
            self.inner.config.live_buffer_ms
        } else {
            info.retention_hours as i64 * 3_600_000
        };
        let cutoff = now_ms - keep_ms;
        let mut log = stream.persist.lock().await;
        let through = {
            let c = read(&stream.catalog);
            c.iter()
                .take_while(|f| f.server_ms + f.duration_ms as i64 <= cutoff)
                .last()
                .map(|f| f.number)
        };
        let Some(through) = through else {
            return Ok(0);
        };
        // In a cluster one node trims a stream: its writer, or a node
        // that takes the lease while no producer is connected.
        match self.become_writer(stream, &mut log).await {
            Err(EngineError::Storage(StoreError::LeaseHeld(_))) => return Ok(0),
            Err(e) => {
                if stream.producers.load(Ordering::SeqCst) == 0 {
                    log.release().await;
                }
                return Err(e);
            }
            Ok(()) => {}
        }
        let result = self.trim(stream, &mut log, through).await;
        if stream.producers.load(Ordering::SeqCst) == 0 {
            log.release().await;
        }
        result
    }

    async fn trim(
        &self,
        stream: &Stream,
        log: &mut IndexLog,
        through: u64,
    ) -> Result<usize, EngineError> {
        let info = stream.info();
        log.append(Record::Trim { through }).await?;
        let removed = write(&stream.catalog).trim_through(through);
        for f in &removed {
            self.inner.store.delete_fragment(&info.id, f.number).await?;
        }
        if stream.trims.fetch_add(1, Ordering::Relaxed) + 1 >= COMPACT_AFTER_TRIMS {
            let records: Vec<Record> = std::iter::once(Record::Trim { through })
                .chain(read(&stream.catalog).iter().map(|f| Record::Fragment(*f)))
                .collect();
            self.inner
                .store
                .compact_index(log, &info.id, records)
                .await?;
            stream.trims.store(1, Ordering::Relaxed);
        }
        tracing::debug!(stream = %info.name, removed = removed.len(), "retention");
        Ok(removed.len())
    }

    /// Runs retention every `interval` until `shutdown` resolves.
    pub async fn run_retention(
        &self,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    if let Err(e) = self.enforce_retention(self.clock().now_ms()).await {
                        tracing::error!(error = %e, "retention pass failed");
                    }
                }
            }
        }
    }
}
