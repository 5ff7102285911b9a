//! The publisher: detection events onto the events data stream in batches,
//! creating the stream if missing and retrying throttled entries. With an
//! events queue or channel configured it makes the stream, the queue and
//! the channel before the first event, so they see every event.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{DetectionConfig, EventsChannel};
use crate::EngineError;
use crate::datastreams::{ChannelSettings, DataStreams, Logging, PutEntry, QueueStart};

/// Events waiting for the publisher before workers wait.
pub(super) const EVENT_BACKLOG: usize = 4096;
/// How long shutdown waits for queued events to be written.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// Records per PutRecords-style batch (the Kinesis limit).
const EVENT_BATCH: usize = kinema_core::aws::MAX_PUT_RECORDS;

/// One event record and its partition key (the camera).
pub(super) struct Event {
    pub(super) partition_key: String,
    pub(super) data: Bytes,
}

/// What events need besides the observation.
pub(super) struct EventSink {
    pub(super) events: mpsc::Sender<Event>,
    pub(super) public_url: String,
    /// For the events' `decoded_at_ms`.
    pub(super) clock: crate::Clock,
}

/// Makes the events stream if it is missing.
async fn ensure_stream(ds: &DataStreams, name: &str, shards: u32) -> Result<(), EngineError> {
    match ds.create(name, shards.max(1)).await {
        Ok(()) => {
            tracing::info!(stream = name, "created the detection events data stream");
            Ok(())
        }
        Err(EngineError::ResourceInUse(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes the events stream, its queue and its channel where missing.
async fn prepare(ds: &DataStreams, cfg: &DetectionConfig) -> Result<(), EngineError> {
    let name = &cfg.events_stream;
    ensure_stream(ds, name, cfg.events_shards).await?;
    let arn = ds.describe(name)?.arn;
    if let Some(queue) = &cfg.events_queue
        && !ds
            .list_queues(Some(&arn))?
            .iter()
            .any(|q| q.info.name == *queue)
    {
        ds.create_queue(
            queue,
            &arn,
            QueueStart::TrimHorizon,
            Default::default(),
            Default::default(),
        )
        .await?;
        tracing::info!(stream = name, queue, "created the detection events queue");
    }
    if let Some(EventsChannel {
        name: channel,
        bucket,
        freshness_s,
    }) = &cfg.events_channel
        && !ds
            .list_channels(Some(&arn))?
            .iter()
            .any(|c| c.info.name == *channel)
    {
        let account = ds.config().account_id.clone();
        let settings = ChannelSettings {
            role_arn: format!("arn:aws:iam::{account}:role/kinema-detection"),
            format: kinema_datastream::delivery::RecordFormat::Json,
            bucket: bucket.clone(),
            bucket_owner: account,
            template: None,
            storage_class: None,
            compression: kinema_datastream::delivery::Compression::Gzip,
            freshness_s: *freshness_s,
            error_bucket: None,
            error_prefix: None,
            logging: Logging::default(),
        };
        ds.create_channel(channel, &arn, settings, Default::default())
            .await?;
        tracing::info!(
            stream = name,
            channel,
            bucket,
            "created the detection events channel"
        );
    }
    Ok(())
}

/// Writes events onto the data stream in batches, creating the stream if
/// missing and retrying throttled entries, until told to stop (then it
/// drains what is queued first).
pub(super) async fn publish(
    ds: DataStreams,
    cfg: DetectionConfig,
    mut rx: mpsc::Receiver<Event>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (name, shards) = (cfg.events_stream.clone(), cfg.events_shards);
    if cfg.events_queue.is_some() || cfg.events_channel.is_some() {
        // Events wait in `rx` meanwhile.
        let mut wait = Duration::from_secs(1);
        while let Err(e) = prepare(&ds, &cfg).await {
            // A refusal that waiting cannot change: publish without them.
            if matches!(
                e,
                EngineError::Validation(_)
                    | EngineError::InvalidArgument(_)
                    | EngineError::ResourceInUse(_)
                    | EngineError::LimitExceeded(_)
            ) {
                tracing::error!(stream = name, error = %e, "the events queue or channel was refused; publishing without it");
                break;
            }
            tracing::error!(stream = name, error = %e, "cannot make the events queue or channel; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    }
    let mut batch: Vec<Event> = Vec::new();
    loop {
        if *stop.borrow() {
            break;
        }
        if batch.is_empty() {
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => batch.push(e),
                    None => return,
                },
                _ = stop.changed() => break,
            }
        }
        while batch.len() < EVENT_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        if !put_batch(&ds, &name, shards, &mut batch).await {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => {}
            }
        }
    }
    // Shutting down: write what is queued, for a bounded time.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
    rx.close();
    while let Ok(e) = rx.try_recv() {
        batch.push(e);
    }
    while !batch.is_empty() && tokio::time::Instant::now() < deadline {
        if !put_batch(&ds, &name, shards, &mut batch).await {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if !batch.is_empty() {
        tracing::error!(
            events = batch.len(),
            "detection events not published at shutdown"
        );
    }
}

/// One attempt at writing `batch`; what was written leaves it. Returns
/// false when nothing could be written (back off before retrying).
async fn put_batch(ds: &DataStreams, name: &str, shards: u32, batch: &mut Vec<Event>) -> bool {
    let take = batch.len().min(EVENT_BATCH);
    let entries: Vec<PutEntry> = batch[..take]
        .iter()
        .map(|e| PutEntry {
            partition_key: e.partition_key.clone(),
            explicit_hash_key: None,
            data: e.data.clone(),
        })
        .collect();
    match ds.put(name, entries).await {
        Ok(outcomes) => {
            // Keep the throttled entries, in order, for the next attempt.
            let mut i = 0;
            let mut written = 0;
            batch.retain(|_| {
                let keep = i >= take || outcomes.get(i).is_none_or(|o| o.is_none());
                if !keep {
                    written += 1;
                }
                i += 1;
                keep
            });
            if written == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            true
        }
        Err(EngineError::ResourceNotFound(_)) => match ensure_stream(ds, name, shards).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(stream = name, error = %e, "cannot create the events data stream");
                false
            }
        },
        Err(e) => {
            tracing::error!(stream = name, error = %e, "publishing detection events failed");
            false
        }
    }
}
