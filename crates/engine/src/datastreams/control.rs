//! The data-stream control plane: create, delete, describe, list,
//! retention, tags and resharding (split, merge, UpdateShardCount).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

use kinema_core::sync::lock;
use kinema_core::sync::read;
use kinema_core::sync::write;
use kinema_datastream::{ShardError, ShardMap};
use tokio::sync::oneshot;

use super::writer::{Command, Reshard};
use super::{
    DEFAULT_RETENTION_HOURS, DataStreamInfo, DataStreams, MAX_RETENTION_HOURS, not_found,
    valid_name,
};
use crate::EngineError;

impl DataStreams {
    pub async fn create(&self, name: &str, shard_count: u32) -> Result<(), EngineError> {
        if !valid_name(name) {
            return Err(EngineError::InvalidArgument(format!(
                "StreamName {name:?} must be 1-128 characters of [a-zA-Z0-9_.-]"
            )));
        }
        if shard_count == 0 || shard_count > self.inner.config.max_shards_per_stream {
            return Err(EngineError::InvalidArgument(format!(
                "ShardCount must be between 1 and {}",
                self.inner.config.max_shards_per_stream
            )));
        }
        if self.get(name).is_ok() {
            return Err(EngineError::ResourceInUse(format!(
                "Stream {name} already exists."
            )));
        }
        if read(&self.inner.streams).len() >= self.inner.config.max_streams {
            return Err(EngineError::LimitExceeded(format!(
                "at most {} data streams exist on this server",
                self.inner.config.max_streams
            )));
        }
        let now = self.now_ms();
        let cfg = &self.inner.config;
        let info = DataStreamInfo {
            name: name.to_string(),
            id: format!("{now}-{name}"),
            arn: format!(
                "arn:aws:kinesis:{}:{}:stream/{name}",
                cfg.region, cfg.account_id
            ),
            created_ms: now,
            retention_hours: DEFAULT_RETENTION_HOURS,
            tags: BTreeMap::new(),
            shards: ShardMap::new(shard_count, now),
            consumers: Vec::new(),
            groups: BTreeMap::new(),
            groups_lsn: 0,
            queues: Vec::new(),
            channels: Vec::new(),
        };
        let store = self.inner.store.clone();
        let id = info.id.clone();
        let segment_bytes = self.inner.config.segment_bytes;
        let (log, group_log) = tokio::task::spawn_blocking(move || {
            let (log, _) = store.open_data_log(&id, segment_bytes)?;
            let (group_log, _) = store.open_group_log(&id)?;
            Ok::<_, kinema_store::StoreError>((log, group_log))
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))??;
        self.install(info, log, HashMap::new(), (group_log, 0));
        self.save_meta().await
    }

    pub async fn delete(&self, name: &str) -> Result<(), EngineError> {
        let stream = self.get(name)?;
        // Queues and channels are made under this lock, after checking
        // that their stream is not deleted.
        let _g = self.inner.meta_lock_queues.lock().await;
        if Self::has_queues(&stream) {
            return Err(EngineError::ResourceInUse(format!(
                "Stream {name} has queues; delete them before the stream."
            )));
        }
        if Self::has_channels(&stream) {
            return Err(EngineError::ResourceInUse(format!(
                "Stream {name} has channels; delete them before the stream."
            )));
        }
        write(&self.inner.streams).remove(name);
        stream.deleted.store(true, Ordering::SeqCst);
        self.save_meta().await?;
        let id = lock(&stream.info).id.clone();
        self.inner.store.delete_data_log(&id)?;
        Ok(())
    }

    pub fn describe(&self, name: &str) -> Result<DataStreamInfo, EngineError> {
        Ok(lock(&self.get(name)?.info).clone())
    }

    pub fn list(&self) -> Vec<String> {
        read(&self.inner.streams).keys().cloned().collect()
    }

    pub async fn set_retention(
        &self,
        name: &str,
        hours: u32,
        increase: bool,
    ) -> Result<(), EngineError> {
        self.update_info(name, |i| {
            let ok = if increase {
                hours >= i.retention_hours
            } else {
                hours <= i.retention_hours
            };
            if !(DEFAULT_RETENTION_HOURS..=MAX_RETENTION_HOURS).contains(&hours) || !ok {
                return Err(EngineError::InvalidArgument(format!(
                    "retention {hours} h must be {} the current {} h and within 24-8760",
                    if increase { "at least" } else { "at most" },
                    i.retention_hours
                )));
            }
            i.retention_hours = hours;
            Ok(())
        })
        .await
    }

    pub async fn add_tags(
        &self,
        name: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<(), EngineError> {
        self.update_info(name, |i| {
            i.tags.extend(tags);
            if i.tags.len() > 50 {
                return Err(EngineError::InvalidArgument(
                    "at most 50 tags per stream".into(),
                ));
            }
            Ok(())
        })
        .await
    }

    pub async fn split(&self, name: &str, shard: u32, at: u128) -> Result<(), EngineError> {
        self.reshard(name, move |m, now| m.split(shard, at, now).map(|_| ()))
            .await
    }

    pub async fn merge(&self, name: &str, shard: u32, adjacent: u32) -> Result<(), EngineError> {
        self.reshard(name, move |m, now| {
            m.merge(shard, adjacent, now).map(|_| ())
        })
        .await
    }

    /// Returns the number of open shards before the change.
    pub async fn update_shard_count(&self, name: &str, target: u32) -> Result<u32, EngineError> {
        self.reshard(name, move |m, now| {
            let before = m.open().len() as u32;
            m.update_shard_count(target, now).map(|_| before)
        })
        .await
    }

    /// Changes the shard map on the stream's writer task, between batches:
    /// a shard closes only after every record admitted to it is indexed,
    /// and no record goes to a new shard before the new map is saved.
    async fn reshard<T: Send + 'static>(
        &self,
        name: &str,
        change: impl FnOnce(&mut ShardMap, i64) -> Result<T, ShardError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let stream = self.get(name)?;
        let (value_tx, value_rx) = oneshot::channel();
        let apply: Reshard = Box::new(move |map, now| {
            let v = change(map, now).map_err(reshard_error)?;
            let _ = value_tx.send(v);
            Ok(())
        });
        let (reply, saved) = oneshot::channel();
        stream
            .commands
            .send(Command::Reshard(apply, reply))
            .await
            .map_err(|_| not_found(name))?;
        saved.await.map_err(|_| not_found(name))??;
        value_rx
            .await
            .map_err(|_| EngineError::Internal("resharding ended without a result".into()))
    }
}

fn reshard_error(e: ShardError) -> EngineError {
    match e {
        ShardError::UnknownShard(m) => EngineError::ResourceNotFound(m),
        other => EngineError::InvalidArgument(other.to_string()),
    }
}
