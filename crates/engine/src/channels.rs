//! Signaling channels: the control plane (`kinesisvideo` CreateSignalingChannel,
//! Describe, List, Update, Delete), kept in the `signaling-channels`
//! metadata document; in a cluster, a shared document every node follows
//! and changes with the revision it read. The live signaling state of a
//! channel (connections, waiting messages) is in [`crate::signaling`]; this
//! registry knows names, ARNs, versions and settings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kinema_store::{Conflict, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{Clock, EngineError};
use kinema_core::sync::{read, write};

const META_DOC: &str = "signaling-channels";
pub const DEFAULT_MESSAGE_TTL_SECONDS: u32 = 60;
const MAX_TAGS: usize = 50;

/// A channel as the control plane describes it; persisted as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelInfo {
    pub name: String,
    pub arn: String,
    /// Always `SINGLE_MASTER` (the only type the service has).
    pub channel_type: String,
    pub status: String,
    pub creation_ms: i64,
    pub message_ttl_seconds: u32,
    pub version: String,
    pub tags: BTreeMap<String, String>,
}

/// The signaling channels of one server. Cheap to clone.
#[derive(Clone)]
pub struct Channels {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    region: String,
    account_id: String,
    max_channels: usize,
    clock: Clock,
    channels: std::sync::RwLock<BTreeMap<String, ChannelInfo>>,
    /// Serialises changes and their saves; holds the revision of the shared
    /// document the channels came from (in a cluster).
    changes: Mutex<u64>,
    versions: AtomicU64,
}

type All = BTreeMap<String, ChannelInfo>;

fn valid_name(name: &str) -> bool {
    kinema_core::names::valid(name, kinema_core::names::MAX_VIDEO_NAME)
}

fn ttl_ok(ttl: u32) -> Result<(), EngineError> {
    if (5..=120).contains(&ttl) {
        Ok(())
    } else {
        Err(EngineError::InvalidArgument(
            "MessageTtlSeconds must be between 5 and 120".into(),
        ))
    }
}

impl Channels {
    pub async fn open(
        store: Store,
        region: &str,
        account_id: &str,
        max_channels: usize,
        clock: Clock,
    ) -> Result<Channels, EngineError> {
        let changes = match store.cluster() {
            Some(c) => Some(
                c.doc_changes(META_DOC, crate::streams::SHARED_DOC_POLL)
                    .await,
            ),
            None => None,
        };
        let (saved, revision) = load(&store).await?;
        let channels = Channels {
            inner: Arc::new(Inner {
                store,
                region: region.to_string(),
                account_id: account_id.to_string(),
                max_channels,
                clock,
                channels: std::sync::RwLock::new(saved),
                changes: Mutex::new(revision),
                versions: AtomicU64::new(0),
            }),
        };
        if let Some(mut changes) = changes {
            // Channels changed on other nodes.
            let weak = Arc::downgrade(&channels.inner);
            tokio::spawn(async move {
                while changes.recv().await.is_some() {
                    let Some(inner) = weak.upgrade() else { return };
                    if let Err(e) = (Channels { inner }).reload().await {
                        tracing::warn!(error = %e, "reloading signaling channels");
                    }
                }
            });
        }
        Ok(channels)
    }

    async fn reload(&self) -> Result<(), EngineError> {
        let mut revision = self.inner.changes.lock().await;
        let (all, rev) = load(&self.inner.store).await?;
        *self.write() = all;
        *revision = rev;
        Ok(())
    }

    /// Applies `change` to the channels and saves them; in a cluster, with
    /// the revision they were read at, rereading and trying again when
    /// another node saved first.
    async fn change<R>(
        &self,
        mut change: impl FnMut(&mut All) -> Result<R, EngineError>,
    ) -> Result<R, EngineError> {
        let mut revision = self.inner.changes.lock().await;
        for _ in 0..8 {
            let mut all = self.read().clone();
            let result = change(&mut all)?;
            let list: Vec<&ChannelInfo> = all.values().collect();
            match self
                .inner
                .store
                .save_shared(META_DOC, &list, *revision)
                .await?
            {
                Ok(rev) => {
                    *self.write() = all;
                    *revision = rev;
                    return Ok(result);
                }
                Err(Conflict::Changed) => {
                    let (fresh, rev) = load(&self.inner.store).await?;
                    *self.write() = fresh;
                    *revision = rev;
                }
            }
        }
        Err(EngineError::ResourceInUse(
            "the signaling channels are being changed by others; try again".into(),
        ))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ChannelInfo>> {
        read(&self.inner.channels)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ChannelInfo>> {
        write(&self.inner.channels)
    }

    fn new_version(&self) -> String {
        // Unique across restarts: the clock, then a counter within a process.
        format!(
            "{}{:04}",
            self.inner.clock.now_ms(),
            self.inner.versions.fetch_add(1, Ordering::Relaxed) % 10_000
        )
    }

    pub async fn create(
        &self,
        name: &str,
        channel_type: Option<&str>,
        message_ttl_seconds: Option<u32>,
        tags: BTreeMap<String, String>,
    ) -> Result<ChannelInfo, EngineError> {
        if !valid_name(name) {
            return Err(EngineError::InvalidArgument(format!(
                "ChannelName {name:?} must be 1-256 characters of [a-zA-Z0-9_.-]"
            )));
        }
        if channel_type.is_some_and(|t| t != "SINGLE_MASTER") {
            return Err(EngineError::InvalidArgument(
                "ChannelType must be SINGLE_MASTER".into(),
            ));
        }
        if tags.len() > MAX_TAGS {
            return Err(EngineError::InvalidArgument(format!(
                "at most {MAX_TAGS} tags"
            )));
        }
        let ttl = message_ttl_seconds.unwrap_or(DEFAULT_MESSAGE_TTL_SECONDS);
        ttl_ok(ttl)?;
        let creation_ms = self.inner.clock.now_ms();
        let info = ChannelInfo {
            name: name.to_string(),
            arn: format!(
                "arn:aws:kinesisvideo:{}:{}:channel/{name}/{creation_ms}",
                self.inner.region, self.inner.account_id
            ),
            channel_type: "SINGLE_MASTER".into(),
            status: "ACTIVE".into(),
            creation_ms,
            message_ttl_seconds: ttl,
            version: self.new_version(),
            tags,
        };
        let max = self.inner.max_channels;
        self.change(|all| {
            if all.contains_key(name) {
                return Err(EngineError::ResourceInUse(format!(
                    "the signaling channel {name} already exists"
                )));
            }
            if all.len() >= max {
                return Err(EngineError::ClientLimitExceeded(
                    "too many signaling channels".into(),
                ));
            }
            all.insert(name.to_string(), info.clone());
            Ok(())
        })
        .await?;
        Ok(info)
    }

    /// By name or ARN (both given: they must agree).
    pub fn describe(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
    ) -> Result<ChannelInfo, EngineError> {
        let all = self.read();
        let found = match (name, arn) {
            (Some(n), _) => all.get(n).filter(|c| arn.is_none_or(|a| c.arn == a)),
            (None, Some(a)) => all.values().find(|c| c.arn == a),
            (None, None) => {
                return Err(EngineError::InvalidArgument(
                    "either ChannelName or ChannelARN is required".into(),
                ));
            }
        };
        found.cloned().ok_or_else(|| {
            EngineError::ResourceNotFound(format!(
                "the signaling channel {} does not exist",
                name.or(arn).unwrap_or_default()
            ))
        })
    }

    /// Channels in name order after `after`, at most `max`; whether more follow.
    pub fn list(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> (Vec<ChannelInfo>, bool) {
        let all = self.read();
        let mut matching = all
            .iter()
            .filter(|(n, _)| after.is_none_or(|a| n.as_str() > a))
            .filter(|(n, _)| prefix.is_none_or(|p| n.starts_with(p)))
            .map(|(_, c)| c.clone());
        let page: Vec<ChannelInfo> = matching.by_ref().take(max).collect();
        let more = matching.next().is_some();
        (page, more)
    }

    pub async fn update(
        &self,
        arn: &str,
        current_version: &str,
        message_ttl_seconds: Option<u32>,
    ) -> Result<ChannelInfo, EngineError> {
        if let Some(t) = message_ttl_seconds {
            ttl_ok(t)?;
        }
        self.change(|all| {
            let c = all.values_mut().find(|c| c.arn == arn).ok_or_else(|| {
                EngineError::ResourceNotFound(format!("no signaling channel {arn}"))
            })?;
            if c.version != current_version {
                return Err(EngineError::VersionMismatch(format!(
                    "CurrentVersion {current_version} does not match the channel's version {}",
                    c.version
                )));
            }
            if let Some(t) = message_ttl_seconds {
                c.message_ttl_seconds = t;
            }
            c.version = self.new_version();
            Ok(c.clone())
        })
        .await
    }

    pub async fn delete(
        &self,
        arn: &str,
        current_version: Option<&str>,
    ) -> Result<ChannelInfo, EngineError> {
        self.change(|all| {
            let name = all
                .values()
                .find(|c| c.arn == arn)
                .map(|c| c.name.clone())
                .ok_or_else(|| {
                    EngineError::ResourceNotFound(format!("no signaling channel {arn}"))
                })?;
            if let Some(v) = current_version
                && all.get(&name).is_some_and(|c| c.version != v)
            {
                return Err(EngineError::VersionMismatch(format!(
                    "CurrentVersion {v} does not match the channel's version"
                )));
            }
            all.remove(&name)
                .ok_or_else(|| EngineError::ResourceNotFound(format!("no signaling channel {arn}")))
        })
        .await
    }
}

/// The saved channels and their revision (0 on one machine or before the
/// first save).
async fn load(store: &Store) -> Result<(All, u64), EngineError> {
    let (saved, revision) = store.load_shared::<Vec<ChannelInfo>>(META_DOC).await?;
    let all = saved.unwrap_or_default().into_iter();
    Ok((all.map(|c| (c.name.clone(), c)).collect(), revision))
}
