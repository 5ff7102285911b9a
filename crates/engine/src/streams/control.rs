//! The control plane of video streams: create, describe, list, update,
//! retention, delete and tags, each saved in the `video-streams` document.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Engine, Stream, StreamInfo, StreamUpdate, valid_name};
use crate::EngineError;
use kinema_archive::Catalog;
use kinema_core::sync::{lock, read, write};

const MAX_TAGS: usize = 50;

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub async fn create_stream(
        &self,
        name: &str,
        device_name: Option<String>,
        media_type: Option<String>,
        kms_key_id: Option<String>,
        retention_hours: Option<u32>,
        tags: BTreeMap<String, String>,
    ) -> Result<StreamInfo, EngineError> {
        if !valid_name(name) {
            return Err(EngineError::InvalidArgument(format!(
                "StreamName {name:?} must be 1-256 characters of [a-zA-Z0-9_.-]"
            )));
        }
        validate_tags(&tags)?;
        let retention_hours = retention_hours.unwrap_or(0);
        if retention_hours > 87_600 {
            return Err(EngineError::InvalidArgument(
                "DataRetentionInHours must be between 0 and 87600".into(),
            ));
        }
        let creation_ms = self.clock().now_ms();
        let info = StreamInfo {
            name: name.to_string(),
            id: stream_id(creation_ms, name),
            arn: format!(
                "arn:aws:kinesisvideo:{}:{}:stream/{name}/{creation_ms}",
                self.inner.config.region, self.inner.config.account_id
            ),
            device_name,
            media_type,
            kms_key_id,
            version: self.new_version(),
            status: "ACTIVE".into(),
            creation_ms,
            retention_hours,
            tags,
        };
        let refusal = |streams: &BTreeMap<String, Arc<Stream>>| {
            if streams.contains_key(name) {
                Some(EngineError::ResourceInUse(format!(
                    "the stream {name} already exists"
                )))
            } else if streams.len() >= self.inner.config.max_streams {
                Some(EngineError::ClientLimitExceeded("too many streams".into()))
            } else {
                None
            }
        };
        let refused = refusal(&read(&self.inner.streams));
        if let Some(e) = refused {
            return Err(e);
        }
        if self.inner.store.cluster().is_some() {
            // The bucket decides who has the name; this node's cache may
            // already hold the stream from the bucket's watch.
            let revision = self.create_shared_info(&info).await?;
            let log = self.inner.store.open_index_async(&info.id).await?;
            let mut streams = write(&self.inner.streams);
            let stale = streams.get(name).filter(|s| s.id() != info.id).cloned();
            if let Some(old) = stale {
                old.deleted.store(true, Ordering::SeqCst);
                old.live.send_modify(|_| {});
                streams.remove(name);
            }
            if !streams.contains_key(name) {
                let stream = Stream::new(info.clone(), revision, Catalog::new(), log);
                streams.insert(name.to_string(), Arc::new(stream));
            }
            tracing::info!(stream = name, retention_hours, "created stream");
            return Ok(info);
        }
        self.inner.store.prepare_stream(&info.id).await?;
        let log = self.inner.store.open_index_async(&info.id).await?;
        // Another create may have won the name or the last place meanwhile:
        // then no files are left behind.
        let refused = {
            let mut streams = write(&self.inner.streams);
            // A create of the same name in the same millisecond has the
            // same id: its files are the winner's and must stay.
            let refused =
                refusal(&streams).map(|e| (e, streams.values().any(|s| s.id() == info.id)));
            if refused.is_none() {
                let stream = Stream::new(info.clone(), 0, Catalog::new(), log);
                streams.insert(name.to_string(), Arc::new(stream));
            }
            refused
        };
        if let Some((e, owned)) = refused {
            if !owned && let Err(cleanup) = self.inner.store.delete_stream(&info.id).await {
                tracing::warn!(stream = name, error = %cleanup, "cannot remove a refused stream's files");
            }
            return Err(e);
        }
        self.save_meta().await?;
        tracing::info!(stream = name, retention_hours, "created stream");
        Ok(info)
    }

    pub fn describe_stream(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
    ) -> Result<StreamInfo, EngineError> {
        Ok(self.resolve(name, arn)?.info())
    }

    /// Streams in name order, after the `after` name, optionally filtered by
    /// a name prefix. Returns the page and whether more follow.
    pub fn list_streams(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> (Vec<StreamInfo>, bool) {
        let streams = read(&self.inner.streams);
        let mut matching = streams
            .iter()
            .filter(|(n, _)| after.is_none_or(|a| n.as_str() > a))
            .filter(|(n, _)| prefix.is_none_or(|p| n.starts_with(p)))
            .map(|(_, s)| s.info());
        let page: Vec<StreamInfo> = matching.by_ref().take(max).collect();
        let more = matching.next().is_some();
        (page, more)
    }

    fn check_version(info: &StreamInfo, current: Option<&str>) -> Result<(), EngineError> {
        match current {
            Some(v) if v != info.version => Err(EngineError::VersionMismatch(format!(
                "CurrentVersion {v} does not match the stream's version {}",
                info.version
            ))),
            _ => Ok(()),
        }
    }

    pub async fn update_stream(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        current_version: &str,
        update: StreamUpdate,
    ) -> Result<(), EngineError> {
        let stream = self.resolve(name, arn)?;
        self.change_info(&stream, |info| {
            Self::check_version(info, Some(current_version))?;
            if let Some(d) = &update.device_name {
                info.device_name = Some(d.clone());
            }
            if let Some(m) = &update.media_type {
                info.media_type = Some(m.clone());
            }
            info.version = self.new_version();
            Ok(())
        })
        .await
    }

    pub async fn update_data_retention(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        current_version: &str,
        increase: bool,
        change_hours: u32,
    ) -> Result<(), EngineError> {
        let stream = self.resolve(name, arn)?;
        self.change_info(&stream, |info| {
            Self::check_version(info, Some(current_version))?;
            let new = if increase {
                info.retention_hours
                    .checked_add(change_hours)
                    .filter(|h| *h <= 87_600)
            } else {
                info.retention_hours.checked_sub(change_hours)
            };
            let Some(new) = new else {
                return Err(EngineError::InvalidArgument(format!(
                    "retention of {} hours changed by {change_hours} is out of range 0-87600",
                    info.retention_hours
                )));
            };
            info.retention_hours = new;
            info.version = self.new_version();
            Ok(())
        })
        .await
    }

    pub async fn delete_stream(
        &self,
        arn: &str,
        current_version: Option<&str>,
    ) -> Result<(), EngineError> {
        let stream = self.resolve(None, Some(arn))?;
        let info = stream.info();
        Self::check_version(&info, current_version)?;
        if self.inner.store.cluster().is_some() {
            self.delete_shared_info(&stream).await?;
        }
        {
            let mut streams = write(&self.inner.streams);
            if streams.get(&info.name).is_some_and(|s| s.id() == info.id) {
                streams.remove(&info.name);
            }
        }
        stream.deleted.store(true, Ordering::SeqCst);
        stream.live.send_modify(|_| {});
        if self.inner.store.cluster().is_none() {
            self.save_meta().await?;
        }
        // Wait for any persist in flight, then remove the data.
        let _g = stream.persist.lock().await;
        self.inner.store.delete_stream(&info.id).await?;
        tracing::info!(stream = %info.name, "deleted stream");
        Ok(())
    }

    pub async fn tag_stream(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        tags: BTreeMap<String, String>,
    ) -> Result<(), EngineError> {
        let stream = self.resolve(name, arn)?;
        self.change_info(&stream, |info| {
            let mut merged = info.tags.clone();
            merged.extend(tags.clone());
            validate_tags(&merged)?;
            info.tags = merged;
            Ok(())
        })
        .await
    }

    pub async fn untag_stream(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        keys: &[String],
    ) -> Result<(), EngineError> {
        let stream = self.resolve(name, arn)?;
        self.change_info(&stream, |info| {
            for k in keys {
                info.tags.remove(k);
            }
            Ok(())
        })
        .await
    }

    /// Changes a stream's metadata and saves it: in the shared bucket in a
    /// cluster (retried on a concurrent change), else in the document.
    async fn change_info(
        &self,
        stream: &Stream,
        mut change: impl FnMut(&mut StreamInfo) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        if self.inner.store.cluster().is_some() {
            return self.change_shared_info(stream, change).await;
        }
        {
            let mut info = lock(&stream.info);
            let mut changed = info.clone();
            change(&mut changed)?;
            *info = changed;
        }
        self.save_meta().await
    }
}

fn validate_tags(tags: &BTreeMap<String, String>) -> Result<(), EngineError> {
    if tags.len() > MAX_TAGS {
        return Err(EngineError::InvalidArgument(format!(
            "at most {MAX_TAGS} tags per stream"
        )));
    }
    for (k, v) in tags {
        if k.is_empty() || k.len() > 128 || v.len() > 256 {
            return Err(EngineError::InvalidArgument(format!(
                "tag key {k:?} must be 1-128 characters and its value at most 256"
            )));
        }
    }
    Ok(())
}

/// A stream's on-disk id: its creation time and name, the name shortened
/// (with a hash of the whole, so ids stay unique) where the file names
/// built from it would pass the file system's 255-byte limit.
fn stream_id(creation_ms: i64, name: &str) -> String {
    const KEPT: usize = 100;
    if name.len() <= KEPT {
        return format!("{creation_ms}-{name}");
    }
    use sha2::{Digest, Sha256};
    let hash = hex::encode(&Sha256::digest(name.as_bytes())[..8]);
    format!("{creation_ms}-{}-{hash}", &name[..KEPT])
}
