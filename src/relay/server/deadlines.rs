//! The relay loop's one timer mechanism: a min-heap of deadlines with lazy deletion.
//!
//! An entry is never removed when its deadline moves or its owner goes; the loop asks
//! whether it is still live when it reaches the top (`Relay::deadline_live`). A
//! connection keeps one armed entry and pushes another only when its next timer moves
//! earlier, so a busy session does not push one per packet; the heap is rebuilt from
//! its live entries when stale ones outnumber them, which bounds its size by the live
//! timers. Each loop costs O(log n) per due or stale entry, not a scan of every connection.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Due {
    /// Connection `.0`'s timers: its unauthenticated close or its session's timers.
    Conn(usize),
    /// A sunk connection's close (see `limits`).
    Sink(usize),
    /// The dial of stream `.1` on connection `.0` (connect or exit-proxy handshake).
    Connect(usize, u32),
}

/// The heap of deadlines, earliest first.
#[derive(Default)]
pub(super) struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, Due)>>,
}

impl Deadlines {
    /// Wake the loop for `due` at `t`.
    pub(super) fn push(&mut self, t: Instant, due: Due) {
        self.heap.push(Reverse((t, due)));
    }

    /// The earliest entry, live or not.
    pub(super) fn peek(&self) -> Option<(Instant, Due)> {
        self.heap.peek().map(|Reverse(e)| *e)
    }

    /// Take the earliest entry.
    pub(super) fn pop(&mut self) -> Option<(Instant, Due)> {
        self.heap.pop().map(|Reverse(e)| e)
    }

    /// Entries held, stale ones included.
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keep only the entries `live` accepts.
    pub(super) fn retain(&mut self, mut live: impl FnMut(Instant, Due) -> bool) {
        self.heap.retain(|Reverse((t, d))| live(*t, *d));
    }
}
