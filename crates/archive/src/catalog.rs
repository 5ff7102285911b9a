//! The in-memory fragment catalog of one stream: fragments in number order,
//! lookups by number, server time and producer time, range scans, trimming.
//!
//! Server timestamps are kept non-decreasing in number order (the catalog
//! clamps them on append), so server-time lookups are binary searches over
//! the main sequence. Producer timestamps may go backwards between uploads,
//! so they have an ordered set of their own.

use std::collections::{BTreeSet, VecDeque};

/// What the index keeps about one stored fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentMeta {
    pub number: u64,
    /// Producer timestamp of the fragment start, Unix milliseconds.
    pub producer_ms: i64,
    /// Arrival time of the fragment's first byte, Unix milliseconds.
    pub server_ms: i64,
    pub duration_ms: u32,
    /// Size of the stored object in bytes.
    pub size: u32,
    /// Byte offset of the Cluster inside the stored object.
    pub cluster_offset: u32,
    pub frames: u32,
}

impl FragmentMeta {
    pub fn time(&self, kind: TimeKind) -> i64 {
        match kind {
            TimeKind::Producer => self.producer_ms,
            TimeKind::Server => self.server_ms,
        }
    }
}

/// Which of a fragment's two clocks a lookup uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeKind {
    Producer,
    Server,
}

#[derive(Debug, Default, Clone)]
pub struct Catalog {
    frags: VecDeque<FragmentMeta>,
    by_producer: BTreeSet<(i64, u64)>,
    next_number: u64,
}

impl Catalog {
    pub fn new() -> Self {
        Catalog {
            next_number: 1,
            ..Default::default()
        }
    }

    /// The number the next appended fragment will get.
    pub fn next_number(&self) -> u64 {
        self.next_number.max(1)
    }

    pub fn len(&self) -> usize {
        self.frags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frags.is_empty()
    }

    /// Appends a fragment. Its number must be above every number seen; its
    /// server time is raised to the previous fragment's if it is earlier.
    /// Returns the fragment as stored.
    pub fn append(&mut self, mut meta: FragmentMeta) -> Result<FragmentMeta, CatalogError> {
        if meta.number < self.next_number() {
            return Err(CatalogError::NumberNotIncreasing {
                number: meta.number,
                next: self.next_number(),
            });
        }
        if let Some(last) = self.frags.back() {
            meta.server_ms = meta.server_ms.max(last.server_ms);
        }
        self.next_number = meta.number + 1;
        self.by_producer.insert((meta.producer_ms, meta.number));
        self.frags.push_back(meta);
        Ok(meta)
    }

    /// Forgets fragments up to and including `number` (retention). Later
    /// appends still get numbers above every number ever seen.
    pub fn trim_through(&mut self, number: u64) -> Vec<FragmentMeta> {
        let mut removed = Vec::new();
        while let Some(first) = self.frags.front() {
            if first.number > number {
                break;
            }
            let f = self.frags.pop_front().expect("front exists: checked above");
            self.by_producer.remove(&(f.producer_ms, f.number));
            removed.push(f);
        }
        self.next_number = self.next_number.max(number + 1);
        removed
    }

    pub fn first(&self) -> Option<&FragmentMeta> {
        self.frags.front()
    }

    pub fn last(&self) -> Option<&FragmentMeta> {
        self.frags.back()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &FragmentMeta> {
        self.frags.iter()
    }

    fn index_of(&self, number: u64) -> Result<usize, usize> {
        self.frags.binary_search_by_key(&number, |f| f.number)
    }

    pub fn get(&self, number: u64) -> Option<&FragmentMeta> {
        self.index_of(number).ok().map(|i| &self.frags[i])
    }

    /// The first fragment with a number above `number`.
    pub fn after(&self, number: u64) -> Option<&FragmentMeta> {
        let i = match self.index_of(number) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        self.frags.get(i)
    }

    /// A stored fragment that `candidate` repeats: one starting at the same
    /// producer millisecond with the same frame count and duration. A
    /// producer that lost its connection resends fragments it had no
    /// PERSISTED ack for; some of them were stored before the loss.
    pub fn duplicate_of(&self, candidate: &FragmentMeta) -> Option<&FragmentMeta> {
        let p = candidate.producer_ms;
        self.by_producer
            .range((p, 0)..=(p, u64::MAX))
            .filter_map(|&(_, n)| self.get(n))
            .find(|f| f.frames == candidate.frames && f.duration_ms == candidate.duration_ms)
    }

    /// The fragment holding time `t`: the last one starting at or before `t`
    /// if `t` falls inside it, otherwise the first one starting after `t`.
    pub fn locate(&self, kind: TimeKind, t: i64) -> Option<&FragmentMeta> {
        match kind {
            TimeKind::Server => {
                let i = self.frags.partition_point(|f| f.server_ms <= t);
                if i > 0 {
                    let f = &self.frags[i - 1];
                    if t < f.server_ms + f.duration_ms.max(1) as i64 {
                        return Some(f);
                    }
                }
                self.frags.get(i)
            }
            TimeKind::Producer => {
                if let Some(&(_, n)) = self.by_producer.range(..=(t, u64::MAX)).next_back() {
                    let f = self.get(n)?;
                    if t < f.producer_ms + f.duration_ms.max(1) as i64 {
                        return Some(f);
                    }
                }
                let &(_, n) = self.by_producer.range((t.saturating_add(1), 0)..).next()?;
                self.get(n)
            }
        }
    }

    /// Fragments whose start time lies in `[start, end]`, in time order,
    /// beginning strictly after the `(time, number)` position `after`.
    pub fn range(
        &self,
        kind: TimeKind,
        start: i64,
        end: i64,
        after: Option<(i64, u64)>,
    ) -> Box<dyn Iterator<Item = &FragmentMeta> + '_> {
        let lower = match after {
            Some(pos) if pos >= (start, 0) => pos,
            _ => (start, 0),
        };
        let skip_lower = after.is_some_and(|pos| pos == lower);
        match kind {
            TimeKind::Server => {
                let i = self
                    .frags
                    .partition_point(|f| (f.server_ms, f.number) < lower);
                Box::new(
                    self.frags
                        .range(i..)
                        .skip_while(move |f| skip_lower && (f.server_ms, f.number) == lower)
                        .take_while(move |f| f.server_ms <= end),
                )
            }
            TimeKind::Producer => Box::new(
                self.by_producer
                    .range(lower..=(end, u64::MAX))
                    .filter(move |k| !(skip_lower && **k == lower))
                    .filter_map(|&(_, n)| self.get(n)),
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("fragment number {number} is not above the next expected number {next}")]
    NumberNotIncreasing { number: u64, next: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(number: u64, producer_ms: i64, server_ms: i64) -> FragmentMeta {
        FragmentMeta {
            number,
            producer_ms,
            server_ms,
            duration_ms: 1000,
            size: 100,
            cluster_offset: 10,
            frames: 30,
        }
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::new();
        for i in 0..10 {
            c.append(frag(
                i + 1,
                10_000 + i as i64 * 1000,
                50_000 + i as i64 * 1000,
            ))
            .unwrap();
        }
        c
    }

    #[test]
    fn a_resent_fragment_is_recognised_by_producer_time_frames_and_duration() {
        let c = catalog();
        let resent = frag(99, 12_000, 70_000);
        assert_eq!(c.duplicate_of(&resent).map(|f| f.number), Some(3));
        let other_frames = FragmentMeta {
            frames: 29,
            ..resent
        };
        assert_eq!(c.duplicate_of(&other_frames), None);
        assert_eq!(c.duplicate_of(&frag(99, 12_001, 70_000)), None);
    }

    #[test]
    fn locate_finds_the_fragment_holding_the_time() {
        let c = catalog();
        assert_eq!(c.locate(TimeKind::Producer, 10_500).unwrap().number, 1);
        assert_eq!(c.locate(TimeKind::Producer, 12_000).unwrap().number, 3);
        assert_eq!(c.locate(TimeKind::Producer, 0).unwrap().number, 1);
        assert!(c.locate(TimeKind::Producer, 20_000).is_none());
        assert_eq!(c.locate(TimeKind::Server, 59_999).unwrap().number, 10);
        assert_eq!(c.locate(TimeKind::Server, 49_000).unwrap().number, 1);
    }

    #[test]
    fn range_is_inclusive_and_pages() {
        let c = catalog();
        let all: Vec<u64> = c
            .range(TimeKind::Server, 51_000, 53_000, None)
            .map(|f| f.number)
            .collect();
        assert_eq!(all, [2, 3, 4]);
        let page: Vec<u64> = c
            .range(TimeKind::Server, 51_000, 53_000, Some((52_000, 3)))
            .map(|f| f.number)
            .collect();
        assert_eq!(page, [4]);
        let prod: Vec<u64> = c
            .range(TimeKind::Producer, 10_000, 11_000, Some((10_000, 1)))
            .map(|f| f.number)
            .collect();
        assert_eq!(prod, [2]);
    }

    #[test]
    fn server_time_never_goes_backwards_and_numbers_must_rise() {
        let mut c = catalog();
        let stored = c.append(frag(11, 0, 1)).unwrap();
        assert_eq!(stored.server_ms, 59_000);
        assert!(c.append(frag(11, 0, 1)).is_err());
        // Producer time going backwards is found through its own index.
        assert_eq!(c.locate(TimeKind::Producer, 500).unwrap().number, 11);
    }

    #[test]
    fn trimming_keeps_numbers_rising() {
        let mut c = catalog();
        let removed = c.trim_through(4);
        assert_eq!(removed.len(), 4);
        assert_eq!(c.first().unwrap().number, 5);
        assert_eq!(c.after(2).unwrap().number, 5);
        assert!(c.locate(TimeKind::Producer, 10_500).unwrap().number >= 5);
        let mut empty = Catalog::new();
        empty.trim_through(7);
        assert_eq!(empty.next_number(), 8);
    }
}
