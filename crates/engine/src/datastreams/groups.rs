//! Server-side consumer groups: shard leases and checkpoints, kept in the
//! stream's metadata.

use kinema_core::sync::lock;
use kinema_datastream::leases::Checkpoint;
use kinema_datastream::leases::LeaseTable;

use super::{DataStreams, valid_name};
use crate::EngineError;

impl DataStreams {
    /// Renews `consumer`'s leases in `group` and takes up to `max` shards in
    /// all; returns its shards with the group's checkpoints. Durable.
    pub async fn acquire_leases(
        &self,
        name: &str,
        group: &str,
        consumer: &str,
        max: usize,
        lease_ms: i64,
    ) -> Result<Vec<(u32, Option<Checkpoint>)>, EngineError> {
        check_member(group, consumer)?;
        let mut out = Vec::new();
        self.update_info(name, |i| {
            let table = i.groups.entry(group.to_string()).or_default();
            for shard in table.acquire(&i.shards, consumer, max, lease_ms, self.now_ms()) {
                out.push((shard, table.shards.get(&shard).and_then(|l| l.checkpoint)));
            }
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Records a checkpoint durably; only the lease owner may.
    pub async fn checkpoint(
        &self,
        name: &str,
        group: &str,
        consumer: &str,
        shard: u32,
        at: Checkpoint,
    ) -> Result<(), EngineError> {
        check_member(group, consumer)?;
        self.update_info(name, |i| {
            let table = i.groups.entry(group.to_string()).or_default();
            table
                .checkpoint(&i.shards, consumer, shard, at, self.now_ms())
                .map_err(|e| EngineError::LeaseLost(e.to_string()))
        })
        .await
    }

    pub async fn release_leases(
        &self,
        name: &str,
        group: &str,
        consumer: &str,
    ) -> Result<(), EngineError> {
        self.update_info(name, |i| {
            if let Some(t) = i.groups.get_mut(group) {
                t.release(consumer);
            }
            Ok(())
        })
        .await
    }

    pub fn group(&self, name: &str, group: &str) -> Result<LeaseTable, EngineError> {
        Ok(lock(&self.get(name)?.info)
            .groups
            .get(group)
            .cloned()
            .unwrap_or_default())
    }
}

fn check_member(group: &str, consumer: &str) -> Result<(), EngineError> {
    if valid_name(group) && !consumer.is_empty() && consumer.len() <= 256 {
        Ok(())
    } else {
        Err(EngineError::InvalidArgument(
            "group must be 1-128 characters of [a-zA-Z0-9_.-] and consumer 1-256 characters".into(),
        ))
    }
}
