//! Enhanced fan-out: registered consumers and push subscriptions
//! (SubscribeToShard and Kinema's own server-sent events).

use super::reads::{read_shard, start_sequence};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use kinema_core::sync::lock;
use tokio::sync::watch;

use super::{
    ConsumerInfo, DStream, DataStreams, IteratorStart, MAX_GET_RECORDS, ReadRecord,
    SUBSCRIPTION_MS, not_found, valid_name,
};
use crate::Clock;
use crate::EngineError;

impl DataStreams {
    pub(super) fn by_arn(&self, stream_arn: &str) -> Result<Arc<DStream>, EngineError> {
        let name = self.resolve_name(None, Some(stream_arn))?;
        let s = self.get(&name)?;
        if lock(&s.info).arn != stream_arn {
            return Err(not_found(&name));
        }
        Ok(s)
    }

    pub async fn register_consumer(
        &self,
        stream_arn: &str,
        name: &str,
    ) -> Result<ConsumerInfo, EngineError> {
        if !valid_name(name) {
            return Err(EngineError::InvalidArgument(
                "ConsumerName must be 1-128 characters of [a-zA-Z0-9_.-]".into(),
            ));
        }
        let stream = self.by_arn(stream_arn)?;
        let consumer = {
            let mut info = lock(&stream.info);
            if info.consumers.iter().any(|c| c.name == name) {
                return Err(EngineError::ResourceInUse(format!(
                    "Consumer {name} already exists"
                )));
            }
            if info.consumers.len() + info.queues.len() >= super::queues::MAX_CONSUMERS_AND_QUEUES {
                return Err(EngineError::LimitExceeded(
                    "at most 20 registered consumers and queues per stream".into(),
                ));
            }
            let now = self.now_ms();
            let c = ConsumerInfo {
                name: name.to_string(),
                arn: format!("{}/consumer/{name}:{}", info.arn, now / 1000),
                created_ms: now,
            };
            info.consumers.push(c.clone());
            c
        };
        self.save_meta().await?;
        Ok(consumer)
    }

    /// Finds a consumer by ARN, or by stream ARN and name; returns it with its stream's ARN.
    pub fn describe_consumer(
        &self,
        consumer_arn: Option<&str>,
        stream_arn: Option<&str>,
        name: Option<&str>,
    ) -> Result<(ConsumerInfo, String), EngineError> {
        let missing = || EngineError::ResourceNotFound("the consumer does not exist".into());
        let (stream_arn, by_arn) = match (consumer_arn, stream_arn, name) {
            (Some(arn), _, _) => (
                arn.split("/consumer/")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                Some(arn),
            ),
            (None, Some(s), Some(_)) => (s.to_string(), None),
            _ => {
                return Err(EngineError::InvalidArgument(
                    "ConsumerARN, or StreamARN and ConsumerName, are required".into(),
                ));
            }
        };
        let stream = self.by_arn(&stream_arn).map_err(|_| missing())?;
        let info = lock(&stream.info);
        info.consumers
            .iter()
            .find(|c| match by_arn {
                Some(a) => c.arn == a,
                None => Some(c.name.as_str()) == name,
            })
            .cloned()
            .map(|c| (c, stream_arn.clone()))
            .ok_or_else(missing)
    }

    pub fn list_consumers(&self, stream_arn: &str) -> Result<Vec<ConsumerInfo>, EngineError> {
        Ok(lock(&self.by_arn(stream_arn)?.info).consumers.clone())
    }

    pub async fn deregister_consumer(
        &self,
        consumer_arn: Option<&str>,
        stream_arn: Option<&str>,
        name: Option<&str>,
    ) -> Result<(), EngineError> {
        let (consumer, stream_arn) = self.describe_consumer(consumer_arn, stream_arn, name)?;
        let stream = self.by_arn(&stream_arn)?;
        lock(&stream.info)
            .consumers
            .retain(|c| c.arn != consumer.arn);
        self.save_meta().await
    }

    /// Starts a push subscription to one shard of a stream by name (the
    /// browser-friendly push; no registered consumer needed).
    pub fn subscribe_by_name(
        &self,
        name: &str,
        shard: u32,
        start: IteratorStart,
    ) -> Result<Subscription, EngineError> {
        let stream = self.get(name)?;
        let next_from = start_sequence(&stream, name, shard, start)?;
        Ok(Subscription {
            live: stream.live.subscribe(),
            stream,
            shard,
            next_from,
            started_ms: self.now_ms(),
            clock: self.inner.config.clock,
            done: false,
        })
    }

    /// Starts a SubscribeToShard subscription for a registered consumer.
    pub fn subscribe(
        &self,
        consumer_arn: &str,
        shard: u32,
        start: IteratorStart,
    ) -> Result<Subscription, EngineError> {
        let (_, stream_arn) = self.describe_consumer(Some(consumer_arn), None, None)?;
        let name = lock(&self.by_arn(&stream_arn)?.info).name.clone();
        self.subscribe_by_name(&name, shard, start)
    }
}

/// One SubscribeToShardEvent.
pub struct SubscribeEvent {
    pub records: Vec<ReadRecord>,
    /// The sequence number to resume after (AFTER_SEQUENCE_NUMBER).
    pub continuation_sequence: u64,
    pub millis_behind_latest: i64,
    pub child_shards: Vec<kinema_datastream::Shard>,
}

/// A push subscription to one shard: yields an event as soon as records
/// arrive, a heartbeat event when none do, and ends after
/// [`SUBSCRIPTION_MS`] or once a closed shard is drained.
pub struct Subscription {
    stream: Arc<DStream>,
    live: watch::Receiver<u64>,
    shard: u32,
    next_from: u64,
    started_ms: i64,
    clock: Clock,
    done: bool,
}

impl Subscription {
    /// The next event, waiting up to `heartbeat` for new records.
    pub async fn next_event(
        &mut self,
        heartbeat: std::time::Duration,
    ) -> Option<Result<SubscribeEvent, EngineError>> {
        if self.done
            || self.stream.deleted.load(Ordering::SeqCst)
            || self.clock.now_ms() - self.started_ms >= SUBSCRIPTION_MS
        {
            return None;
        }
        let deadline = tokio::time::Instant::now() + heartbeat;
        loop {
            self.live.borrow_and_update();
            let chunk = match read_shard(
                &self.stream,
                self.shard,
                self.next_from,
                MAX_GET_RECORDS,
                self.clock.now_ms(),
            )
            .await
            {
                Ok(c) => c,
                Err(e) => return Some(Err(e)),
            };
            let timed_out = tokio::time::Instant::now() >= deadline;
            if !chunk.records.is_empty() || chunk.drained || timed_out {
                self.next_from = chunk.next_from;
                self.done = chunk.drained;
                return Some(Ok(SubscribeEvent {
                    records: chunk.records,
                    continuation_sequence: chunk.next_from.saturating_sub(1),
                    millis_behind_latest: chunk.millis_behind_latest,
                    child_shards: chunk.child_shards,
                }));
            }
            let _ = tokio::time::timeout_at(deadline, self.live.changed()).await;
        }
    }
}
