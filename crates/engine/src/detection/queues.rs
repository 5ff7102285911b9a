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

/// What the work queue holds: an item of one stream, which may have been
/// stopped since it was queued.
pub(super) trait Queued {
    fn stream(&self) -> &str;
    fn stopped(&self) -> bool;
}

impl Queued for Job {
    fn stream(&self) -> &str {
        &self.det.stream
    }
    fn stopped(&self) -> bool {
        self.det.stop.load(Ordering::SeqCst)
    }
}

/// Decoded frames waiting for inference, per stream (a small queue its
/// decoder waits on when full); a stream is handed to one worker at a time
/// so its frames stay in order.
pub(super) struct WorkQueue<J = Job> {
    state: Mutex<QueueState<J>>,
    ready: Condvar,
    space: Condvar,
    capacity: usize,
}

struct QueueState<J> {
    queues: BTreeMap<String, VecDeque<J>>,
    busy: HashSet<String>,
    /// The stream served last (round robin).
    last: Option<String>,
    stop: bool,
}

impl<J: Queued> WorkQueue<J> {
    /// A queue holding up to `capacity` frames per stream (at least one).
    pub(super) fn new(capacity: usize) -> WorkQueue<J> {
        WorkQueue {
            state: Mutex::new(QueueState {
                queues: BTreeMap::new(),
                busy: HashSet::new(),
                last: None,
                stop: false,
            }),
            ready: Condvar::new(),
            space: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues a decoded frame, waiting while its stream's queue is full:
    /// the wait reaches back to that stream's decoder thread (never to
    /// ingest), whose fragment backlog then drops its oldest fragments.
    pub(super) fn push(&self, job: J) {
        let mut s = lock(&self.state);
        loop {
            if s.stop || job.stopped() {
                return;
            }
            let len = s.queues.get(job.stream()).map_or(0, VecDeque::len);
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
            .entry(job.stream().to_string())
            .or_default()
            .push_back(job);
        drop(s);
        self.ready.notify_all();
    }

    /// The next job of a stream no other worker holds; `None` at shutdown.
    pub(super) fn pop(&self) -> Option<J> {
        let mut s = lock(&self.state);
        loop {
            if s.stop {
                return None;
            }
            let after = s.last.clone().unwrap_or_default();
            let pick = {
                let free = |(k, q): (&String, &VecDeque<J>)| {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;

    use bytes::Bytes;
    use kinema_archive::FragmentMeta;

    use super::*;

    /// A frame of a stream, as the queue sees it.
    #[derive(Debug, PartialEq)]
    struct Item(&'static str, u32);

    impl Queued for Item {
        fn stream(&self) -> &str {
            self.0
        }
        fn stopped(&self) -> bool {
            false
        }
    }

    fn fragment(number: u64, frames: u32) -> LiveFragment {
        LiveFragment {
            stream: "cam".into(),
            meta: FragmentMeta {
                number,
                producer_ms: 0,
                server_ms: 0,
                duration_ms: 1000,
                size: 0,
                cluster_offset: 0,
                frames,
            },
            object: Bytes::new(),
        }
    }

    #[test]
    fn a_full_backlog_drops_its_oldest_fragments_and_counts_their_frames() {
        let backlog = Backlog::default();
        let stats = Stats::default();
        for n in 1..=7 {
            backlog.push(fragment(n, 30), &stats);
        }
        assert_eq!(stats.fragments_dropped.load(Ordering::Relaxed), 3);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 90);
        let left: Vec<u64> = std::iter::from_fn(|| backlog.pop(Duration::ZERO))
            .map(|f| f.meta.number)
            .collect();
        assert_eq!(left, [4, 5, 6, 7], "the newest are kept, in order");
    }

    #[test]
    fn streams_are_served_round_robin_and_one_worker_at_a_time() {
        let q = WorkQueue::new(4);
        q.push(Item("a", 1));
        q.push(Item("a", 2));
        q.push(Item("b", 1));
        assert_eq!(q.pop(), Some(Item("a", 1)));
        // a is held by a worker: b goes next, whatever a has waiting.
        assert_eq!(q.pop(), Some(Item("b", 1)));
        q.done("b");
        q.done("a");
        assert_eq!(q.pop(), Some(Item("a", 2)), "a's frames stay in order");
    }

    #[test]
    fn a_full_stream_queue_holds_its_decoder_until_a_worker_is_done() {
        let q = Arc::new(WorkQueue::new(2));
        q.push(Item("a", 1));
        q.push(Item("a", 2));
        // Another stream is not held back by a's full queue.
        q.push(Item("b", 1));
        let pushed = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let decoder = std::thread::spawn({
            let (q, pushed) = (q.clone(), pushed.clone());
            move || {
                q.push(Item("a", 3));
                pushed.store(true, Ordering::SeqCst);
                tx.send(()).unwrap();
            }
        });
        // The third frame of a waits: nothing returns within 300 ms.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        assert!(!pushed.load(Ordering::SeqCst), "the decoder is held");
        assert_eq!(q.pop(), Some(Item("a", 1)));
        q.done("a");
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a worker's done frees the decoder");
        decoder.join().unwrap();
        // Round robin after a: b, then a's frames in order.
        let mut rest = Vec::new();
        for _ in 0..3 {
            let i = q.pop().unwrap();
            q.done(i.0);
            rest.push(i);
        }
        assert_eq!(rest, [Item("b", 1), Item("a", 2), Item("a", 3)]);
    }

    #[test]
    fn stopping_frees_waiting_decoders_and_workers() {
        let q = Arc::new(WorkQueue::<Item>::new(1));
        q.push(Item("a", 1));
        // A worker holds a; a second worker finds nothing it may take.
        assert_eq!(q.pop(), Some(Item("a", 1)));
        let worker = std::thread::spawn({
            let q = q.clone();
            move || q.pop()
        });
        q.push(Item("a", 2));
        // a's queue is full again: this decoder waits.
        let decoder = std::thread::spawn({
            let q = q.clone();
            move || q.push(Item("a", 3))
        });
        q.stop();
        decoder.join().unwrap();
        assert_eq!(
            worker.join().unwrap(),
            None,
            "a stopped queue hands out nothing"
        );
        assert_eq!(q.pop(), None);
    }
}
