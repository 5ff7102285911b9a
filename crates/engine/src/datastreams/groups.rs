//! Server-side consumer groups: shard leases and checkpoints. Each change
//! is appended to the stream's group change log (`groups.wal`) before it is
//! acknowledged; the metadata document takes the changes in every
//! `group_compact_after` of them, and opening replays the rest.

use kinema_core::sync::lock;
use kinema_datastream::ShardMap;
use kinema_datastream::leases::{Checkpoint, GroupChange, LeaseTable, encode_change};

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
        let now = self.now_ms();
        self.change_group(name, group, |shards, table| {
            Ok(table
                .acquire(shards, consumer, max, lease_ms, now)
                .into_iter()
                .map(|shard| (shard, table.shards.get(&shard).and_then(|l| l.checkpoint)))
                .collect())
        })
        .await
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
        let now = self.now_ms();
        self.change_group(name, group, |shards, table| {
            table
                .checkpoint(shards, consumer, shard, at, now)
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
        self.change_group(name, group, |_, table| {
            table.release(consumer);
            Ok(())
        })
        .await
    }

    /// Applies `f` to a copy of the group's lease table and makes the
    /// result durable as one record of the stream's group change log (one
    /// small fdatasync, not a rewrite of the metadata document) before it
    /// is installed and acknowledged: a failed write changes nothing. Every
    /// `group_compact_after` changes the metadata document takes them in
    /// and the log is emptied.
    async fn change_group<T>(
        &self,
        name: &str,
        group: &str,
        f: impl FnOnce(&ShardMap, &mut LeaseTable) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let stream = self.get(name)?;
        let mut wal = stream.groups_wal.lock().await;
        let (table, out, change) = {
            let info = lock(&stream.info);
            let before = info.groups.get(group).cloned().unwrap_or_default();
            let mut table = before.clone();
            let out = f(&info.shards, &mut table)?;
            let change = GroupChange {
                lsn: info.groups_lsn + 1,
                group: group.to_string(),
                leases: table.changed_since(&before),
            };
            (table, out, change)
        };
        if change.leases.is_empty() {
            return Ok(out);
        }
        let mut bytes = Vec::new();
        encode_change(&change, &mut bytes);
        wal.log.append(bytes).await?;
        {
            let mut info = lock(&stream.info);
            info.groups.insert(group.to_string(), table);
            info.groups_lsn = change.lsn;
        }
        wal.since_compaction += 1;
        if wal.since_compaction >= self.inner.config.group_compact_after.max(1) {
            // The document now holds every change up to groups_lsn; a crash
            // before the truncation replays none of them twice.
            self.save_meta().await?;
            wal.log.truncate().await?;
            wal.since_compaction = 0;
        }
        Ok(out)
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
