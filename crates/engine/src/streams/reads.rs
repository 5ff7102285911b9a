//! Reads: GetMedia from a start selector (following the live edge),
//! fragments by number and by time, ListFragments paging.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use kinema_archive::{FragmentMeta, TimeKind};
use kinema_core::sync::read;
use kinema_store::StoreError;
use tokio::sync::watch;

use super::{Engine, Stream};
use crate::EngineError;

/// Where a GetMedia read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartSelector {
    Now,
    Earliest,
    FragmentNumber(u64),
    ServerTimestamp(i64),
    ProducerTimestamp(i64),
    ContinuationToken(u64),
}

/// Which fragments [`Engine::playback_fragments`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaybackSpan {
    Newest(usize),
    Range { from_ms: i64, to_ms: i64 },
}

pub struct ListFragmentsPage {
    pub fragments: Vec<FragmentMeta>,
    pub next_token: Option<String>,
}

impl Engine {
    /// A reader of fragments from `selector` on, waiting for new ones live.
    pub fn get_media(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        selector: StartSelector,
    ) -> Result<FragmentReader, EngineError> {
        let stream = self.resolve(name, arn)?;
        let next = {
            let c = read(&stream.catalog);
            match selector {
                StartSelector::Now => c.next_number(),
                StartSelector::Earliest => c.first().map(|f| f.number).unwrap_or(c.next_number()),
                StartSelector::FragmentNumber(n) => {
                    c.get(n)
                        .ok_or_else(|| {
                            EngineError::ResourceNotFound(format!(
                                "fragment {n} does not exist in this stream"
                            ))
                        })?
                        .number
                }
                StartSelector::ContinuationToken(n) => n.saturating_add(1),
                StartSelector::ServerTimestamp(t) => c
                    .locate(TimeKind::Server, t)
                    .map(|f| f.number)
                    .unwrap_or(c.next_number()),
                StartSelector::ProducerTimestamp(t) => c
                    .locate(TimeKind::Producer, t)
                    .map(|f| f.number)
                    .unwrap_or(c.next_number()),
            }
        };
        FragmentReader::new(self, stream, next, true)
    }

    /// The stored fragments named, in the order given; every one must exist.
    pub fn fragments_by_number(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        numbers: &[u64],
    ) -> Result<(Vec<FragmentMeta>, FragmentReader), EngineError> {
        let stream = self.resolve(name, arn)?;
        let metas = {
            let c = read(&stream.catalog);
            numbers
                .iter()
                .map(|n| {
                    c.get(*n).copied().ok_or_else(|| {
                        EngineError::ResourceNotFound(format!(
                            "fragment {n} does not exist in this stream"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let reader = FragmentReader::new(self, stream, 0, false)?;
        Ok((metas, reader))
    }

    /// Fragments for a playback session, sorted by `kind` time: the newest
    /// `newest` by number, or those that may overlap `[from_ms, to_ms]`
    /// (starting at most one maximum fragment length before `from_ms`).
    pub fn playback_fragments(
        &self,
        name: &str,
        kind: TimeKind,
        span: PlaybackSpan,
    ) -> Result<Vec<FragmentMeta>, EngineError> {
        let stream = self.resolve(Some(name), None)?;
        let c = read(&stream.catalog);
        let mut out: Vec<FragmentMeta> = match span {
            PlaybackSpan::Newest(n) => c.iter().rev().take(n).copied().collect(),
            PlaybackSpan::Range { from_ms, to_ms } => {
                let lead = self.inner.config.ingest.max_fragment_duration_ms as i64;
                c.range(kind, from_ms.saturating_sub(lead), to_ms, None)
                    .copied()
                    .collect()
            }
        };
        drop(c);
        out.sort_by_key(|f| (f.time(kind), f.number));
        Ok(out)
    }

    /// One stored fragment and its object, by number.
    pub async fn fragment(
        &self,
        name: &str,
        number: u64,
    ) -> Result<(FragmentMeta, Bytes), EngineError> {
        let stream = self.resolve(Some(name), None)?;
        let missing = || EngineError::ResourceNotFound(format!("fragment {number} is not stored"));
        let meta = read(&stream.catalog)
            .get(number)
            .copied()
            .ok_or_else(missing)?;
        match self.inner.store.get_fragment(&stream.id(), number).await {
            Ok(obj) => Ok((meta, obj)),
            Err(StoreError::NotFound(_)) => Err(missing()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn list_fragments(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        range: Option<(TimeKind, i64, i64)>,
        max: usize,
        token: Option<&str>,
    ) -> Result<ListFragmentsPage, EngineError> {
        let stream = self.resolve(name, arn)?;
        let c = read(&stream.catalog);
        let bad_token =
            || EngineError::InvalidArgument("NextToken is not valid for this request".into());
        let page: Vec<FragmentMeta>;
        let more;
        match range {
            None => {
                let after = match token {
                    Some(t) => t
                        .strip_prefix("n:")
                        .and_then(|n| n.parse::<u64>().ok())
                        .ok_or_else(bad_token)?,
                    None => 0,
                };
                let mut it = c.iter().filter(|f| f.number > after);
                page = it.by_ref().take(max).copied().collect();
                more = it.next().is_some();
                let next_token =
                    more.then(|| format!("n:{}", page.last().map(|f| f.number).unwrap_or(after)));
                Ok(ListFragmentsPage {
                    fragments: page,
                    next_token,
                })
            }
            Some((kind, start, end)) => {
                if start > end {
                    return Err(EngineError::InvalidArgument(
                        "StartTimestamp must not be after EndTimestamp".into(),
                    ));
                }
                let after = match token {
                    Some(t) => {
                        let mut parts = t.strip_prefix("t:").ok_or_else(bad_token)?.splitn(2, ':');
                        let time = parts
                            .next()
                            .and_then(|p| p.parse::<i64>().ok())
                            .ok_or_else(bad_token)?;
                        let num = parts
                            .next()
                            .and_then(|p| p.parse::<u64>().ok())
                            .ok_or_else(bad_token)?;
                        Some((time, num))
                    }
                    None => None,
                };
                let mut it = c.range(kind, start, end, after);
                page = it.by_ref().take(max).copied().collect();
                more = it.next().is_some();
                let next_token = match (more, page.last()) {
                    (true, Some(f)) => Some(format!("t:{}:{}", f.time(kind), f.number)),
                    _ => None,
                };
                Ok(ListFragmentsPage {
                    fragments: page,
                    next_token,
                })
            }
        }
    }
}

/// Reads fragments in number order, optionally following the live edge.
pub struct FragmentReader {
    engine: Engine,
    stream: Arc<Stream>,
    rx: watch::Receiver<u64>,
    next: u64,
    follow: bool,
}

impl FragmentReader {
    fn new(
        engine: &Engine,
        stream: Arc<Stream>,
        next: u64,
        follow: bool,
    ) -> Result<FragmentReader, EngineError> {
        super::take_place(
            &stream.readers,
            engine.inner.config.max_readers_per_stream,
            "readers",
        )?;
        Ok(FragmentReader {
            engine: engine.clone(),
            rx: stream.live.subscribe(),
            stream,
            next,
            follow,
        })
    }

    /// Loads one stored fragment object.
    pub async fn load(&self, meta: &FragmentMeta) -> Result<Bytes, EngineError> {
        Ok(self
            .engine
            .inner
            .store
            .get_fragment(&self.stream.id(), meta.number)
            .await?)
    }

    /// The next fragment, waiting for it at the live edge. `None` ends the
    /// read: the stream was deleted, or no fragment came within the idle time.
    pub async fn next(&mut self) -> Option<Result<(FragmentMeta, Bytes), EngineError>> {
        loop {
            self.rx.borrow_and_update();
            if self.stream.deleted.load(Ordering::SeqCst) {
                return None;
            }
            let meta = read(&self.stream.catalog)
                .after(self.next.saturating_sub(1))
                .copied();
            if let Some(meta) = meta.filter(|m| m.number >= self.next) {
                self.next = meta.number + 1;
                match self.load(&meta).await {
                    Ok(obj) => return Some(Ok((meta, obj))),
                    // Trimmed by retention between the lookup and the read.
                    Err(EngineError::Storage(StoreError::NotFound(_))) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
            if !self.follow {
                return None;
            }
            let cfg = &self.engine.inner.config;
            let idle = if self.stream.producers.load(Ordering::SeqCst) > 0 {
                cfg.get_media_live_idle_ms
            } else {
                cfg.get_media_idle_ms
            };
            match tokio::time::timeout(Duration::from_millis(idle), self.rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }
}

impl Drop for FragmentReader {
    fn drop(&mut self) {
        self.stream.readers.fetch_sub(1, Ordering::SeqCst);
    }
}
