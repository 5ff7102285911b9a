//! The control plane of video streams: create, describe, list, update,
//! retention, delete and tags, each saved in the `video-streams` document.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use kinema_archive::Catalog;
use kinema_core::sync::{lock, read, write};
use tokio::sync::{Mutex, broadcast, watch};

use super::{Engine, LIVE_FRAMES_QUEUE, Stream, StreamInfo, StreamUpdate, valid_name};
use crate::EngineError;

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
                streams.insert(
                    name.to_string(),
                    Arc::new(Stream {
                        info: std::sync::Mutex::new(info.clone()),
                        catalog: RwLock::new(Catalog::new()),
                        persist: Mutex::new(log),
                        live: watch::channel(0).0,
                        frames: broadcast::channel(LIVE_FRAMES_QUEUE).0,
                        producers: AtomicUsize::new(0),
                        readers: AtomicUsize::new(0),
                        deleted: AtomicBool::new(false),
                        trims: AtomicUsize::new(0),
                    }),
                );
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
        {
            let mut info = lock(&stream.info);
            Self::check_version(&info, Some(current_version))?;
            if let Some(d) = update.device_name {
                info.device_name = Some(d);
            }
            if let Some(m) = update.media_type {
                info.media_type = Some(m);
            }
            info.version = self.new_version();
        }
        self.save_meta().await
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
        {
            let mut info = lock(&stream.info);
            Self::check_version(&info, Some(current_version))?;
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
        }
        self.save_meta().await
    }

    pub async fn delete_stream(
        &self,
        arn: &str,
        current_version: Option<&str>,
    ) -> Result<(), EngineError> {
        let stream = self.resolve(None, Some(arn))?;
        let info = stream.info();
        Self::check_version(&info, current_version)?;
        write(&self.inner.streams).remove(&info.name);
        stream.deleted.store(true, Ordering::SeqCst);
        stream.live.send_modify(|_| {});
        self.save_meta().await?;
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
        {
            let mut info = lock(&stream.info);
            let mut merged = info.tags.clone();
            merged.extend(tags);
            validate_tags(&merged)?;
            info.tags = merged;
        }
        self.save_meta().await
    }

    pub async fn untag_stream(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        keys: &[String],
    ) -> Result<(), EngineError> {
        let stream = self.resolve(name, arn)?;
        {
            let mut info = lock(&stream.info);
            for k in keys {
                info.tags.remove(k);
            }
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
