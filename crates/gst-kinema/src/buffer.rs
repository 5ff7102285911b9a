//! The fragments `kinemasink` holds until the server acknowledges them as
//! PERSISTED: what to (re)send on a connection, what an ACK releases, and
//! what to drop when the storage budget is exhausted. No I/O, no clock.

use std::collections::VecDeque;
use std::sync::Arc;

use kinema_mkv::mux::Piece;

struct Fragment {
    /// The stream header (EBML, Segment, Info, Tracks) this fragment needs.
    header: Arc<Vec<u8>>,
    timecode_ms: u64,
    data: Vec<u8>,
    frames: u32,
    /// Bytes of `data` sent on the current connection.
    sent: usize,
}

/// Unacknowledged fragments in order, bounded in bytes.
pub struct FragmentBuffer {
    frags: VecDeque<Fragment>,
    bytes: usize,
    limit: usize,
    header: Arc<Vec<u8>>,
}

/// What a connection should send next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Bytes for the current connection.
    Send(Vec<u8>),
    /// The next fragment needs another stream header: end this upload and
    /// start a new one.
    Reconnect,
    Idle,
}

impl FragmentBuffer {
    pub fn new(limit: usize) -> Self {
        FragmentBuffer {
            frags: VecDeque::new(),
            bytes: 0,
            limit: limit.max(1),
            header: Arc::new(Vec::new()),
        }
    }

    /// The header for fragments pushed from now on.
    pub fn set_header(&mut self, header: Vec<u8>) {
        self.header = Arc::new(header);
    }

    pub fn is_empty(&self) -> bool {
        self.frags.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.frags.len()
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends muxed pieces. Returns the frames dropped (oldest fragments
    /// first, never the one being written) to stay within the limit.
    pub fn push(&mut self, pieces: Vec<Piece>) -> u32 {
        for piece in pieces {
            match piece {
                Piece::Cluster { timecode_ms, bytes } => {
                    self.bytes += bytes.len();
                    self.frags.push_back(Fragment {
                        header: self.header.clone(),
                        timecode_ms,
                        data: bytes,
                        frames: 0,
                        sent: 0,
                    });
                }
                Piece::Block { bytes } => {
                    if let Some(f) = self.frags.back_mut() {
                        self.bytes += bytes.len();
                        f.data.extend_from_slice(&bytes);
                        f.frames += 1;
                    }
                }
            }
        }
        let mut dropped = 0;
        while self.bytes > self.limit && self.frags.len() > 1 {
            if let Some(f) = self.frags.pop_front() {
                self.bytes -= f.data.len();
                dropped += f.frames;
            }
        }
        dropped
    }

    /// A PERSISTED ack for the fragment with this Cluster timecode: it and
    /// every earlier one are durable.
    pub fn persisted(&mut self, timecode_ms: u64) -> usize {
        let mut released = 0;
        while self
            .frags
            .front()
            .is_some_and(|f| f.timecode_ms <= timecode_ms)
        {
            if let Some(f) = self.frags.pop_front() {
                self.bytes -= f.data.len();
                released += 1;
            }
        }
        released
    }

    /// A new connection: nothing has been sent on it. Returns its header.
    pub fn start_connection(&mut self) -> Option<Arc<Vec<u8>>> {
        for f in &mut self.frags {
            f.sent = 0;
        }
        self.frags.front().map(|f| f.header.clone())
    }

    /// The bytes not yet sent on a connection opened with `header`.
    pub fn next(&mut self, header: &Arc<Vec<u8>>) -> Next {
        let mut out = Vec::new();
        for f in &mut self.frags {
            if !Arc::ptr_eq(&f.header, header) {
                return if out.is_empty() && f.sent == 0 {
                    Next::Reconnect
                } else {
                    Next::Send(out)
                };
            }
            if f.sent < f.data.len() {
                out.extend_from_slice(&f.data[f.sent..]);
                f.sent = f.data.len();
            }
        }
        if out.is_empty() {
            Next::Idle
        } else {
            Next::Send(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(tc: u64) -> Piece {
        Piece::Cluster {
            timecode_ms: tc,
            bytes: vec![0xC; 10],
        }
    }

    fn block(n: usize) -> Piece {
        Piece::Block {
            bytes: vec![0xB; n],
        }
    }

    #[test]
    fn everything_unacknowledged_is_resent_on_a_new_connection() {
        let mut b = FragmentBuffer::new(1 << 20);
        b.set_header(vec![1, 2, 3]);
        b.push(vec![cluster(0), block(5)]);
        b.push(vec![block(5), cluster(1000), block(5)]);
        let h = b.start_connection().unwrap();
        assert_eq!(*h, vec![1, 2, 3]);
        let Next::Send(first) = b.next(&h) else {
            panic!()
        };
        assert_eq!(first.len(), 10 + 5 + 5 + 10 + 5);
        assert_eq!(b.next(&h), Next::Idle);
        b.push(vec![block(7)]);
        assert_eq!(b.next(&h), Next::Send(vec![0xB; 7]));
        // PERSISTED for the first fragment releases it only.
        assert_eq!(b.persisted(0), 1);
        assert_eq!(b.len(), 1);
        // The connection broke: the rest goes again, whole.
        let h = b.start_connection().unwrap();
        let Next::Send(again) = b.next(&h) else {
            panic!()
        };
        assert_eq!(again.len(), 10 + 5 + 7);
        assert_eq!(b.persisted(1000), 1);
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn the_oldest_fragments_are_dropped_when_the_budget_is_spent() {
        let mut b = FragmentBuffer::new(100);
        b.push(vec![cluster(0), block(30), block(30)]);
        assert_eq!(b.push(vec![cluster(1000), block(30)]), 2);
        assert_eq!(b.len(), 1);
        // The fragment being written is kept even when alone over budget.
        assert_eq!(b.push(vec![block(200)]), 0);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_new_stream_header_ends_the_upload_before_its_fragments() {
        let mut b = FragmentBuffer::new(1 << 20);
        b.set_header(vec![1]);
        b.push(vec![cluster(0), block(5)]);
        b.set_header(vec![2]);
        b.push(vec![cluster(1000), block(5)]);
        let h = b.start_connection().unwrap();
        assert!(matches!(b.next(&h), Next::Send(v) if v.len() == 15));
        assert_eq!(b.next(&h), Next::Reconnect);
        b.persisted(0);
        let h = b.start_connection().unwrap();
        assert_eq!(*h, vec![2]);
        assert!(matches!(b.next(&h), Next::Send(v) if v.len() == 15));
    }

    /// The last fragment of an upload is acknowledged when the upload ends;
    /// an ack for a timecode not buffered releases only earlier fragments.
    #[test]
    fn acks_release_exactly_the_persisted_prefix() {
        let mut b = FragmentBuffer::new(1 << 20);
        b.push(vec![
            cluster(0),
            block(1),
            cluster(10),
            block(1),
            cluster(20),
            block(1),
        ]);
        assert_eq!(b.persisted(15), 2);
        assert_eq!(b.persisted(20), 1);
        assert!(b.is_empty());
    }
}
