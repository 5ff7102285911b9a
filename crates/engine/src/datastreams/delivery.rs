//! Channels: a data stream delivered to object storage in batches (the
//! `kinesis` channel operations of botocore 1.44), over
//! `kinema_datastream::delivery`.
//!
//! Each channel has one task. It waits until the oldest record it has not
//! delivered is `DataFreshnessInSeconds` old (or enough bytes wait), reads
//! the records from every shard's cursor, records the delivery as pending
//! in the channel's position (`data/<stream>/channels/<id>/position.json`),
//! writes the object (and the dead letters' object) to the store, and only
//! then moves the cursors. After a crash the pending delivery is written
//! again: the same records under the same key, so the destination holds
//! each record once. A channel starts at the stream's tip when it is
//! created (no backfill, as in the original).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use kinema_core::sync::{lock, read, write};
use kinema_datastream::delivery::{
    self as d, Compression, KeyContext, KeyTemplate, Position, RecordFormat,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::reads::read_shard;
use super::{DStream, DataStreams, Inner, ReadRecord, valid_name};
use crate::EngineError;

/// Channels a stream may have.
pub const MAX_CHANNELS_PER_STREAM: usize = 5;

/// Where and how a channel writes; set at create (only the freshness
/// and the logging settings change later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelSettings {
    pub role_arn: String,
    pub format: RecordFormat,
    pub bucket: String,
    pub bucket_owner: String,
    /// `None`: the default template.
    pub template: Option<String>,
    pub storage_class: Option<String>,
    pub compression: Compression,
    pub freshness_s: u32,
    /// The dead letters' bucket and owner (`None`: the destination's)
    /// and prefix (`None`: the default).
    pub error_bucket: Option<(String, String)>,
    pub error_prefix: Option<String>,
    pub logging: Logging,
}

/// `LoggingConfiguration.CloudWatchLogs`, kept as given: Kinema writes
/// delivery failures to its own log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Logging {
    pub enabled: bool,
    pub group: Option<String>,
    pub stream: Option<String>,
}

/// A channel as the control plane knows it; kept in its stream's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelInfo {
    pub name: String,
    /// The resource id in the ARN (16 hex digits, random).
    pub id: String,
    pub arn: String,
    pub created_ms: i64,
    pub settings: ChannelSettings,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// A channel with its stream and what it delivered so far.
#[derive(Debug, Clone)]
pub struct ChannelView {
    pub info: ChannelInfo,
    pub stream_name: String,
    pub stream_arn: String,
    pub stream_created_ms: i64,
    /// Objects written, records in them, records set aside.
    pub deliveries: u64,
    pub records: u64,
    pub failed: u64,
    /// The last delivery error, cleared by the next success.
    pub error: Option<String>,
}

/// The in-memory side of one channel.
pub(super) struct Channel {
    info: std::sync::Mutex<ChannelInfo>,
    stream: Arc<DStream>,
    stream_id: String,
    position: std::sync::Mutex<Position>,
    error: std::sync::Mutex<Option<String>>,
    /// Settings changed or the channel was deleted: wakes the task.
    changed: Notify,
    deleted: AtomicBool,
    /// Held through a delivery: the task and a flush never overlap.
    delivering: tokio::sync::Mutex<()>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn missing_channel(arn: &str) -> EngineError {
    EngineError::ResourceNotFound(format!("Channel {arn} not found."))
}

impl DataStreams {
    fn channel_prefix(&self) -> String {
        format!(
            "arn:aws:kinesis:{}:{}:channel/",
            self.inner.config.region, self.inner.config.account_id
        )
    }

    fn channel(&self, arn: &str) -> Result<Arc<Channel>, EngineError> {
        let id = arn
            .strip_prefix(&self.channel_prefix())
            .ok_or_else(|| missing_channel(arn))?;
        read(&self.inner.channels)
            .get(id)
            .filter(|c| !c.deleted.load(Ordering::SeqCst))
            .cloned()
            .ok_or_else(|| missing_channel(arn))
    }

    /// Starts the channels a stream's metadata names (at service start).
    pub(super) fn open_channels(&self, stream: &Arc<DStream>) -> Result<(), EngineError> {
        let (infos, stream_id, next) = {
            let info = lock(&stream.info);
            (
                info.channels.clone(),
                info.id.clone(),
                info.shards.next_sequence(),
            )
        };
        for c in infos {
            let position = self
                .inner
                .store
                .load_channel_position::<Position>(&stream_id, &c.id)?
                .unwrap_or_else(|| Position::new(next));
            tracing::info!(channel = %c.name, deliveries = position.deliveries, pending = position.pending.is_some(), "recovered channel");
            self.install_channel(stream, &stream_id, c, position);
        }
        Ok(())
    }

    fn install_channel(
        &self,
        stream: &Arc<DStream>,
        stream_id: &str,
        info: ChannelInfo,
        position: Position,
    ) {
        let c = Arc::new(Channel {
            stream: stream.clone(),
            stream_id: stream_id.to_string(),
            position: std::sync::Mutex::new(position),
            error: std::sync::Mutex::new(None),
            changed: Notify::new(),
            deleted: AtomicBool::new(false),
            delivering: tokio::sync::Mutex::new(()),
            task: std::sync::Mutex::new(None),
            info: std::sync::Mutex::new(info.clone()),
        });
        let task = tokio::spawn(run(Arc::downgrade(&self.inner), c.clone()));
        *lock(&c.task) = Some(task);
        write(&self.inner.channels).insert(info.id, c);
    }

    pub async fn create_channel(
        &self,
        name: &str,
        stream_arn: &str,
        settings: ChannelSettings,
        tags: BTreeMap<String, String>,
    ) -> Result<ChannelView, EngineError> {
        if !valid_name(name) {
            return Err(EngineError::Validation(
                "ChannelName must be 1-128 characters of [a-zA-Z0-9_.-]".into(),
            ));
        }
        check_settings(&settings)?;
        let stream = self.by_arn(stream_arn)?;
        check_keys(&settings, name, &lock(&stream.info).name)?;
        let _g = self.inner.meta_lock_queues.lock().await;
        if stream.deleted.load(Ordering::SeqCst) {
            return Err(EngineError::ResourceNotFound(format!(
                "Stream {stream_arn} not found."
            )));
        }
        if read(&self.inner.channels)
            .values()
            .any(|c| !c.deleted.load(Ordering::SeqCst) && lock(&c.info).name == name)
        {
            return Err(EngineError::ResourceInUse(format!(
                "Channel {name} already exists."
            )));
        }
        let (stream_id, next) = {
            let info = lock(&stream.info);
            if info.channels.len() >= MAX_CHANNELS_PER_STREAM {
                return Err(EngineError::LimitExceeded(format!(
                    "at most {MAX_CHANNELS_PER_STREAM} channels per stream"
                )));
            }
            (info.id.clone(), info.shards.next_sequence())
        };
        let mut raw = [0u8; 8];
        getrandom::getrandom(&mut raw).map_err(|e| EngineError::Internal(e.to_string()))?;
        let id = format!("{:016x}", u64::from_le_bytes(raw) | 1);
        let info = ChannelInfo {
            name: name.to_string(),
            arn: format!("{}{id}", self.channel_prefix()),
            id,
            created_ms: self.now_ms(),
            settings,
            tags,
        };
        // The position first: a channel in the metadata always has one.
        let position = Position::new(next);
        self.inner
            .store
            .save_channel_position(&stream_id, &info.id, &position)
            .await?;
        lock(&stream.info).channels.push(info.clone());
        if let Err(e) = self.save_meta().await {
            lock(&stream.info).channels.retain(|c| c.id != info.id);
            if let Err(e) = self.inner.store.delete_channel_state(&stream_id, &info.id) {
                tracing::warn!(error = %e, "cannot remove a refused channel's position");
            }
            return Err(e);
        }
        self.install_channel(&stream, &stream_id, info.clone(), position);
        self.describe_channel(&info.arn)
    }

    pub fn describe_channel(&self, arn: &str) -> Result<ChannelView, EngineError> {
        let c = self.channel(arn)?;
        Ok(view(&c))
    }

    /// Every channel, or those on one stream, by name.
    pub fn list_channels(&self, stream_arn: Option<&str>) -> Result<Vec<ChannelView>, EngineError> {
        if let Some(arn) = stream_arn {
            self.by_arn(arn)?;
        }
        let mut out: Vec<ChannelView> = read(&self.inner.channels)
            .values()
            .filter(|c| !c.deleted.load(Ordering::SeqCst))
            .filter(|c| stream_arn.is_none_or(|a| lock(&c.stream.info).arn == a))
            .map(|c| view(c))
            .collect();
        out.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        Ok(out)
    }

    /// Changes the freshness and the logging settings.
    pub async fn update_channel(
        &self,
        arn: &str,
        freshness_s: Option<u32>,
        logging: Option<Logging>,
    ) -> Result<ChannelView, EngineError> {
        let c = self.channel(arn)?;
        let _g = self.inner.meta_lock_queues.lock().await;
        let mut info = lock(&c.info).clone();
        if let Some(f) = freshness_s {
            info.settings.freshness_s = f;
        }
        if let Some(l) = logging {
            info.settings.logging = l;
        }
        check_settings(&info.settings)?;
        let before = {
            let mut s = lock(&c.stream.info);
            let slot = s
                .channels
                .iter_mut()
                .find(|x| x.id == info.id)
                .ok_or_else(|| missing_channel(arn))?;
            std::mem::replace(slot, info.clone())
        };
        if let Err(e) = self.save_meta().await {
            if let Some(slot) = lock(&c.stream.info)
                .channels
                .iter_mut()
                .find(|x| x.id == info.id)
            {
                *slot = before;
            }
            return Err(e);
        }
        *lock(&c.info) = info;
        c.changed.notify_one();
        Ok(view(&c))
    }

    /// Stops a channel and forgets its position; delivered objects stay.
    pub async fn delete_channel(&self, arn: &str) -> Result<(), EngineError> {
        let c = self.channel(arn)?;
        let info = lock(&c.info).clone();
        {
            let _g = self.inner.meta_lock_queues.lock().await;
            if c.deleted.load(Ordering::SeqCst) {
                return Err(missing_channel(arn));
            }
            let before = {
                let mut s = lock(&c.stream.info);
                let before = s.channels.clone();
                s.channels.retain(|x| x.id != info.id);
                before
            };
            if let Err(e) = self.save_meta().await {
                lock(&c.stream.info).channels = before;
                return Err(e);
            }
            c.deleted.store(true, Ordering::SeqCst);
            write(&self.inner.channels).remove(&info.id);
        }
        c.changed.notify_one();
        let task = lock(&c.task).take();
        if let Some(mut task) = task
            && tokio::time::timeout(Duration::from_secs(30), &mut task)
                .await
                .is_err()
        {
            tracing::warn!(channel = %info.name, "channel task did not stop in time; aborted");
            task.abort();
        }
        // A flush may still be delivering: its object is written, then
        // the position goes.
        let _delivering = c.delivering.lock().await;
        self.inner
            .store
            .delete_channel_state(&c.stream_id, &info.id)?;
        Ok(())
    }

    /// Whether a stream has channels (which must be deleted first).
    pub(super) fn has_channels(stream: &DStream) -> bool {
        !lock(&stream.info).channels.is_empty()
    }

    /// Delivers what waits on every channel of `stream_arn` now, whatever
    /// its age; returns once each has nothing left (tests).
    pub async fn flush_channels(&self, stream_arn: &str) -> Result<(), EngineError> {
        let stream = self.by_arn(stream_arn)?;
        let channels: Vec<Arc<Channel>> = read(&self.inner.channels)
            .values()
            .filter(|c| Arc::ptr_eq(&c.stream, &stream))
            .cloned()
            .collect();
        for c in channels {
            loop {
                let pending = lock(&c.position).pending.is_some();
                if !pending && waiting(&c.stream, &lock(&c.position)).0.is_none() {
                    break;
                }
                if deliver_once(self, &c, true).await?.is_some() {
                    break;
                }
            }
        }
        Ok(())
    }
}

fn view(c: &Channel) -> ChannelView {
    let info = lock(&c.info).clone();
    let s = lock(&c.stream.info);
    let p = lock(&c.position);
    ChannelView {
        info,
        stream_name: s.name.clone(),
        stream_arn: s.arn.clone(),
        stream_created_ms: s.created_ms,
        deliveries: p.deliveries,
        records: p.records,
        failed: p.failed,
        error: lock(&c.error).clone(),
    }
}

fn check_settings(s: &ChannelSettings) -> Result<(), EngineError> {
    for b in std::iter::once(&s.bucket).chain(s.error_bucket.as_ref().map(|(b, _)| b)) {
        if !kinema_core::names::valid_bucket(b) {
            return Err(EngineError::Validation(format!(
                "bucket name {b:?} must be 3-63 characters of [a-z0-9._-]"
            )));
        }
    }
    if !(1..=d::MAX_FRESHNESS_S).contains(&s.freshness_s) {
        return Err(EngineError::Validation(format!(
            "DataFreshnessInSeconds must be between 1 and {}",
            d::MAX_FRESHNESS_S
        )));
    }
    if let Some(t) = &s.template {
        let t = KeyTemplate::parse(t).map_err(|e| EngineError::Validation(e.to_string()))?;
        if s.compression != Compression::None && !t.has_extension() {
            return Err(EngineError::Validation(
                d::TemplateError::NeedsExtension.to_string(),
            ));
        }
    }
    Ok(())
}

/// Whether the keys this channel would write can be stored.
fn check_keys(s: &ChannelSettings, name: &str, stream_name: &str) -> Result<(), EngineError> {
    let template = KeyTemplate::parse(s.template.as_deref().unwrap_or(d::DEFAULT_TEMPLATE))
        .map_err(|e| EngineError::Validation(e.to_string()))?;
    let extension = d::extension(s.format, s.compression);
    let ctx = KeyContext {
        channel_name: name,
        channel_id: "0000000000000000",
        stream_name,
        time_ms: 0,
        extension: &extension,
        delivery: 0,
    };
    d::check_keys(
        &template,
        s.error_prefix.as_deref().unwrap_or(d::DEFAULT_ERROR_PREFIX),
        &ctx,
    )
    .map_err(EngineError::Validation)
}

/// The channel's task: deliver when due, until the channel is deleted or
/// the service stops.
async fn run(inner: Weak<Inner>, c: Arc<Channel>) {
    let mut live = c.stream.live.subscribe();
    let mut failures: u32 = 0;
    loop {
        if c.deleted.load(Ordering::SeqCst) {
            return;
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let ds = DataStreams { inner };
        live.borrow_and_update();
        let changed = c.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        // What wakes the task next: only new records when nothing waits;
        // the due time (looking again each second, in case enough bytes
        // arrive) when records wait; the back-off alone after a failure.
        // Settings changes and deletion wake it always.
        let (wait, on_records) = match deliver_once(&ds, &c, false).await {
            Ok(None) => {
                failures = 0;
                continue;
            }
            Ok(Some(None)) => {
                failures = 0;
                (None, true)
            }
            Ok(Some(Some(due))) => {
                failures = 0;
                (Some(due.min(Duration::from_secs(1))), false)
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let name = lock(&c.info).name.clone();
                tracing::warn!(channel = %name, error = %e, "channel delivery failed; retrying");
                // 1 s, 2 s, ... up to a minute between attempts.
                (
                    Some(Duration::from_secs(u64::from(failures.min(60)))),
                    false,
                )
            }
        };
        drop(ds);
        tokio::select! {
            r = live.changed(), if on_records => if r.is_err() { return },
            _ = &mut changed => {}
            _ = async {
                match wait {
                    Some(w) => tokio::time::sleep(w).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// The oldest arrival among records not yet delivered, and how many bytes
/// of them wait (counted up to the object size).
fn waiting(stream: &DStream, position: &Position) -> (Option<i64>, usize) {
    let index = read(&stream.index);
    let mut oldest: Option<i64> = None;
    let mut bytes = 0usize;
    for (&shard, entries) in index.iter() {
        let from = position.cursor(shard);
        let i = entries.partition_point(|e| e.sequence < from);
        if let Some(e) = entries.get(i) {
            oldest = Some(oldest.map_or(e.arrival_ms, |o| o.min(e.arrival_ms)));
        }
        for e in &entries[i..] {
            if bytes >= d::MAX_OBJECT_BYTES {
                break;
            }
            bytes += e.len as usize;
        }
    }
    (oldest, bytes)
}

/// One step: writes a pending delivery, or plans and writes one if due
/// (or `now`). `Ok(None)`: something was written, look again at once;
/// `Ok(Some(wait))`: nothing due, look again after `wait` (`None`: when a
/// record arrives).
async fn deliver_once(
    ds: &DataStreams,
    c: &Arc<Channel>,
    now: bool,
) -> Result<Option<Option<Duration>>, EngineError> {
    let out = deliver_step(ds, c, now).await;
    if let Err(e) = &out {
        *lock(&c.error) = Some(public_reason(e));
    }
    out
}

/// What DescribeChannel may say of a failed delivery: the kind of
/// failure, never this machine's paths (the log has the whole error).
fn public_reason(e: &EngineError) -> String {
    match e {
        EngineError::Storage(kinema_store::StoreError::Io { source, .. }) => {
            format!("writing to the object store failed: {}", source.kind())
        }
        EngineError::Storage(_) => "writing to the object store failed".into(),
        EngineError::Internal(_) => "an internal error".into(),
        other => other.to_string(),
    }
}

async fn deliver_step(
    ds: &DataStreams,
    c: &Arc<Channel>,
    now: bool,
) -> Result<Option<Option<Duration>>, EngineError> {
    let _delivering = c.delivering.lock().await;
    if c.deleted.load(Ordering::SeqCst) {
        return Ok(Some(None));
    }
    let pending = lock(&c.position).pending.clone();
    if let Some(p) = pending {
        let records = collect(c, Some(&p.until), ds.now_ms()).await?.0;
        // Retention trimmed some of the planned records: objects already
        // written hold more than a rewrite would, so they stay.
        let keep = p.count > 0 && (records.len() as u64) < p.count;
        write_delivery(ds, c, records, p.delivery, p.time_ms, keep).await?;
        return Ok(None);
    }
    let at = ds.now_ms();
    let (oldest, bytes) = waiting(&c.stream, &lock(&c.position));
    let freshness = lock(&c.info).settings.freshness_s;
    match d::due(oldest, bytes, freshness, at) {
        Err(_) if now && oldest.is_some() => {}
        Err(None) => return Ok(Some(None)),
        Err(Some(due)) => {
            return Ok(Some(Some(Duration::from_millis((due - at).max(1) as u64))));
        }
        Ok(()) => {}
    }
    let (records, until) = collect(c, None, at).await?;
    let time_ms = records
        .iter()
        .map(|(_, r)| r.arrival_ms)
        .min()
        .unwrap_or(at);
    let (delivery, snapshot) = {
        let mut p = lock(&c.position);
        let n = p.plan(until, time_ms, records.len() as u64);
        (n, p.clone())
    };
    if let Err(e) = ds
        .inner
        .store
        .save_channel_position(&c.stream_id, &c.info_id(), &snapshot)
        .await
    {
        lock(&c.position).pending = None;
        return Err(e.into());
    }
    write_delivery(ds, c, records, delivery, time_ms, false).await?;
    Ok(None)
}

impl Channel {
    fn info_id(&self) -> String {
        lock(&self.info).id.clone()
    }
}

/// The records from every shard's cursor: up to the object size (and the
/// cursors after them), or exactly those before `until` (a pending
/// delivery written again).
async fn collect(
    c: &Channel,
    until: Option<&BTreeMap<u32, u64>>,
    now: i64,
) -> Result<(Vec<(u32, ReadRecord)>, BTreeMap<u32, u64>), EngineError> {
    let position = lock(&c.position).clone();
    // In shard id order: a parent before the children a reshard made.
    let shards: Vec<u32> = match until {
        Some(u) => u.keys().copied().collect(),
        None => {
            let mut ids: Vec<u32> = read(&c.stream.index).keys().copied().collect();
            ids.sort_unstable();
            ids
        }
    };
    let mut out = Vec::new();
    let mut next = BTreeMap::new();
    let mut bytes = 0usize;
    for shard in shards {
        let mut from = position.cursor(shard);
        let end = until.map(|u| u.get(&shard).copied().unwrap_or(from));
        let mut done = false;
        while !done {
            if end.is_some_and(|e| from >= e) || (end.is_none() && bytes >= d::MAX_OBJECT_BYTES) {
                break;
            }
            let chunk = read_shard(
                &c.stream,
                shard,
                from,
                kinema_datastream::log::MAX_GET_RECORDS,
                now,
            )
            .await?;
            let got = chunk.records.len();
            for r in chunk.records {
                if end.is_some_and(|e| r.sequence >= e) {
                    done = true;
                    break;
                }
                bytes += r.data.len() + r.partition_key.len();
                from = r.sequence + 1;
                out.push((shard, r));
            }
            if got == 0 {
                // Nothing more (or records past retention were skipped).
                from = from.max(chunk.next_from);
                break;
            }
        }
        if from > position.cursor(shard) {
            next.insert(shard, from);
        }
    }
    Ok((out, next))
}

/// Writes a planned delivery's objects and completes it.
async fn write_delivery(
    ds: &DataStreams,
    c: &Arc<Channel>,
    records: Vec<(u32, ReadRecord)>,
    delivery: u64,
    time_ms: i64,
    keep_existing: bool,
) -> Result<(), EngineError> {
    let info = lock(&c.info).clone();
    let stream_name = lock(&c.stream.info).name.clone();
    let s = &info.settings;
    let (format, compression) = (s.format, s.compression);
    let encoded = tokio::task::spawn_blocking(move || {
        let e = d::encode(
            format,
            records.iter().map(|(shard, r)| d::Record {
                shard: *shard,
                sequence: r.sequence,
                arrival_ms: r.arrival_ms,
                partition_key: &r.partition_key,
                data: &r.data,
            }),
        );
        let body = (e.delivered > 0).then(|| compress(compression, e.body));
        let errors = (e.failed > 0).then(|| compress(compression, e.errors));
        (body, e.delivered, errors, e.failed)
    })
    .await
    .map_err(|e| EngineError::Internal(e.to_string()))?;
    let (body, delivered, errors, failed) = encoded;
    let extension = d::extension(format, compression);
    let mut ctx = KeyContext {
        channel_name: &info.name,
        channel_id: &info.id,
        stream_name: &stream_name,
        time_ms,
        extension: &extension,
        delivery,
    };
    if let Some(body) = body {
        let template = KeyTemplate::parse(s.template.as_deref().unwrap_or(d::DEFAULT_TEMPLATE))
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let key = template.render(&ctx);
        if !(keep_existing && ds.inner.store.has_delivered(&s.bucket, &key).await?) {
            ds.inner
                .store
                .put_delivered(&s.bucket, &key, Bytes::from(body))
                .await?;
        }
    }
    if let Some(errors) = errors {
        let error_extension = d::extension(RecordFormat::Json, compression);
        ctx.extension = &error_extension;
        let key = d::error_key(
            s.error_prefix.as_deref().unwrap_or(d::DEFAULT_ERROR_PREFIX),
            &ctx,
        );
        let bucket = s.error_bucket.as_ref().map_or(&s.bucket, |(b, _)| b);
        if !(keep_existing && ds.inner.store.has_delivered(bucket, &key).await?) {
            ds.inner
                .store
                .put_delivered(bucket, &key, Bytes::from(errors))
                .await?;
        }
        tracing::warn!(channel = %info.name, failed, key, "records set aside as dead letters");
    }
    let snapshot = {
        let mut p = lock(&c.position);
        p.complete(delivered, failed);
        p.clone()
    };
    ds.inner
        .store
        .save_channel_position(&c.stream_id, &info.id, &snapshot)
        .await?;
    *lock(&c.error) = None;
    Ok(())
}

/// Channels by the id in their ARN.
pub(super) type Registry = std::sync::RwLock<HashMap<String, Arc<Channel>>>;

/// Compresses a whole object.
fn compress(compression: Compression, body: Vec<u8>) -> Vec<u8> {
    use std::io::Write;
    match compression {
        Compression::None => body,
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            // Writing into a Vec cannot fail.
            let _ = e.write_all(&body);
            e.finish().unwrap_or_default()
        }
        Compression::Zstd => zstd::bulk::compress(&body, 3).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_round_trips() {
        let body = b"{\"a\":1}\n".repeat(1000);
        let gz = compress(Compression::Gzip, body.clone());
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut back).unwrap();
        assert_eq!(back, body);
        let z = compress(Compression::Zstd, body.clone());
        assert_eq!(zstd::bulk::decompress(&z, body.len()).unwrap(), body);
        assert!(z.len() < body.len() / 10 && gz.len() < body.len() / 10);
    }
}
