//! The two queues between ingest and inference: each stream's fragment
//! backlog (drops its oldest when full) and the shared work queue of
//! decoded frames (small per stream; its decoder waits when full).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kinema_core::sync::lock;
use kinema_media::decode::DecodedFrame;

use super::Running;
use super::status::Stats;
use crate::LiveFragment;

/// Fragments waiting for one stream's decoder before the oldest is dropped.
const DECODE_BACKLOG: usize = 4;

/// A decoded frame waiting for inference.
pub(super) struct Job {
    pub(super) det: Arc<Running>,
    pub(super) frame: DecodedFrame,
    pub(super) decoded_at: Instant,
    pub(super) decoded_at_ms: i64,
}

/// Persisted fragments waiting for one stream's decoder. When it is full
/// the oldest fragment is dropped (its frames count as dropped): this is
/// where a detector that cannot keep up sheds load.
#[derive(Default)]
pub(super) struct Backlog {
    fragments: Mutex<VecDeque<LiveFragment>>,
    ready: Condvar,
}

impl Backlog {
    pub(super) fn push(&self, frag: LiveFragment, stats: &Stats) {
        let mut q = lock(&self.fragments);
        while q.len() >= DECODE_BACKLOG {
            if let Some(old) = q.pop_front() {
                stats.fragments_dropped.fetch_add(1, Ordering::Relaxed);
                stats
                    .dropped
                    .fetch_add(u64::from(old.meta.frames), Ordering::Relaxed);
            }
        }
        q.push_back(frag);
        drop(q);
        self.ready.notify_one();
    }

    pub(super) fn pop(&self, timeout: Duration) -> Option<LiveFragment> {
        let mut q = lock(&self.fragments);
        if q.is_empty() {
            q = self
                .ready
                .wait_timeout(q, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        q.pop_front()
    }
}

/// Decoded frames waiting for inference, per stream (a small queue its
/// decoder waits on when full); a stream is handed to one worker at a time
/// so its frames stay in order.
pub(super) struct WorkQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
    space: Condvar,
    capacity: usize,
}

#[derive(Default)]
struct QueueState {
    queues: BTreeMap<String, VecDeque<Job>>,
    busy: HashSet<String>,
    /// The stream served last (round robin).
    last: Option<String>,
    stop: bool,
}

impl WorkQueue {
    /// A queue holding up to `capacity` frames per stream (at least one).
    pub(super) fn new(capacity: usize) -> WorkQueue {
        WorkQueue {
            state: Mutex::default(),
            ready: Condvar::new(),
            space: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues a decoded frame, waiting while its stream's queue is full:
    /// the wait reaches back to that stream's decoder thread (never to
    /// ingest), whose fragment backlog then drops its oldest fragments.
    pub(super) fn push(&self, job: Job) {
        let mut s = lock(&self.state);
        loop {
            if s.stop || job.det.stop.load(Ordering::SeqCst) {
                return;
            }
            let len = s.queues.get(&job.det.stream).map_or(0, VecDeque::len);
            if len < self.capacity {
                break;
            }
            s = self
                .space
                .wait_timeout(s, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s.queues
            .entry(job.det.stream.clone())
            .or_default()
            .push_back(job);
        drop(s);
        self.ready.notify_all();
    }

    /// The next job of a stream no other worker holds; `None` at shutdown.
    pub(super) fn pop(&self) -> Option<Job> {
        let mut s = lock(&self.state);
        loop {
            if s.stop {
                return None;
            }
            let after = s.last.clone().unwrap_or_default();
            let pick = {
                let free = |(k, q): (&String, &VecDeque<Job>)| {
                    (!q.is_empty() && !s.busy.contains(k)).then(|| k.clone())
                };
                s.queues
                    .range::<String, _>((
                        std::ops::Bound::Excluded(&after),
                        std::ops::Bound::Unbounded,
                    ))
                    .find_map(free)
                    .or_else(|| s.queues.iter().find_map(free))
            };
            if let Some(k) = pick {
                let job = s.queues.get_mut(&k).and_then(|q| q.pop_front());
                if let Some(job) = job {
                    s.busy.insert(k.clone());
                    s.last = Some(k);
                    return Some(job);
                }
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub(super) fn done(&self, stream: &str) {
        let mut s = lock(&self.state);
        s.busy.remove(stream);
        drop(s);
        self.ready.notify_all();
        self.space.notify_all();
    }

    pub(super) fn forget(&self, stream: &str) {
        let mut s = lock(&self.state);
        s.queues.remove(stream);
    }

    pub(super) fn stop(&self) {
        lock(&self.state).stop = true;
        self.ready.notify_all();
        self.space.notify_all();
    }
}
