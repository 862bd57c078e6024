//! A hashed timing wheel (Varghese & Lauck) for the timing scheduler's per-flow deadlines.
//!
//! Only each shaped flow's next departure needs a timer, so there is one entry per flow at
//! most (stale entries are skipped by the caller). Inserting is O(1); expiring walks the
//! slots whose ticks passed, so everything due in one wakeup comes out in one call. Pure:
//! time is nanoseconds passed in.

/// Slots in the wheel: 1024 ticks of 100 µs cover 102.4 ms per turn; later deadlines wait
/// their turn in the slot (checked by their own deadline, not the slot).
const SLOTS: usize = 1024;

/// The wheel's tick: the scheduler's delays start at 0.1 ms.
pub(crate) const TICK_NS: u64 = 100_000;

/// Timers keyed by a caller's `u64`, each with an absolute deadline in nanoseconds.
#[derive(Debug)]
pub(crate) struct Wheel {
    slots: Vec<Vec<(u64, u64)>>,
    /// The first tick not yet expired.
    next_tick: u64,
    len: usize,
}

impl Default for Wheel {
    fn default() -> Self {
        Wheel::new()
    }
}

impl Wheel {
    /// An empty wheel.
    pub(crate) fn new() -> Wheel {
        Wheel {
            slots: vec![Vec::new(); SLOTS],
            next_tick: 0,
            len: 0,
        }
    }

    /// No timer is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add a timer. A deadline already past fires at the next `expire`.
    pub(crate) fn insert(&mut self, deadline_ns: u64, key: u64) {
        let tick = (deadline_ns / TICK_NS).max(self.next_tick);
        self.slots[tick as usize % SLOTS].push((deadline_ns, key));
        self.len += 1;
    }

    /// Move every timer due at `now_ns` into `out` as `(key, deadline)`.
    pub(crate) fn expire(&mut self, now_ns: u64, out: &mut Vec<(u64, u64)>) {
        let now_tick = now_ns / TICK_NS;
        if now_tick < self.next_tick {
            // Within the tick already expired: only deadlines inside it that are now due.
            self.take_due(self.next_tick as usize % SLOTS, now_ns, out);
            return;
        }
        // Past one whole turn, each slot is visited once.
        let span = (now_tick - self.next_tick + 1).min(SLOTS as u64);
        for i in 0..span {
            let slot = (self.next_tick + i) as usize % SLOTS;
            self.take_due(slot, now_ns, out);
        }
        self.next_tick = now_tick + 1;
        // The current tick's slot may hold deadlines later within this tick: keep them in
        // the slot the next expire visits first.
        let cur = now_tick as usize % SLOTS;
        let next = self.next_tick as usize % SLOTS;
        if cur != next {
            let mut keep = std::mem::take(&mut self.slots[cur]);
            let (later_now, other): (Vec<_>, Vec<_>) =
                keep.drain(..).partition(|&(d, _)| d / TICK_NS == now_tick);
            self.slots[cur] = other;
            self.slots[next].extend(later_now);
        }
    }

    /// Move every timer held into `out` as `(key, deadline)`, due or not.
    pub(crate) fn take_all(&mut self, out: &mut Vec<(u64, u64)>) {
        for slot in &mut self.slots {
            out.extend(slot.drain(..).map(|(d, k)| (k, d)));
        }
        self.len = 0;
    }

    fn take_due(&mut self, slot: usize, now_ns: u64, out: &mut Vec<(u64, u64)>) {
        let s = &mut self.slots[slot];
        let before = s.len();
        s.retain(|&(d, k)| {
            if d <= now_ns {
                out.push((k, d));
                false
            } else {
                true
            }
        });
        self.len -= before - s.len();
    }

    /// The earliest deadline held, or `None`. Walks at most one turn of slots; a wheel
    /// holding only deadlines beyond one turn answers with their minimum.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let mut best: Option<u64> = None;
        for i in 0..SLOTS as u64 {
            let tick = self.next_tick + i;
            if best.is_some_and(|b| b / TICK_NS < tick) {
                break;
            }
            for &(d, _) in &self.slots[tick as usize % SLOTS] {
                best = Some(best.map_or(d, |b| b.min(d)));
            }
        }
        best
    }
}

/// How late timers fired: a histogram with bucket bounds in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lateness {
    /// Counts per bucket: ≤ 50 µs, ≤ 100, ≤ 200, ≤ 500, ≤ 1 ms, ≤ 2 ms, ≤ 5 ms, more.
    pub buckets: [u64; 8],
    /// The worst lateness seen, in nanoseconds.
    pub max_ns: u64,
    /// All lateness seen, in nanoseconds (a histogram's sum, for the relay's metrics).
    pub sum_ns: u64,
}

/// Upper bounds of [`Lateness::buckets`] in microseconds (the last bucket is open).
pub(crate) const LATENESS_BOUNDS_US: [u64; 7] = [50, 100, 200, 500, 1000, 2000, 5000];

impl Lateness {
    /// Count one timer that fired `late_ns` after its deadline.
    pub fn record(&mut self, late_ns: u64) {
        let us = late_ns / 1000;
        let i = LATENESS_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENESS_BOUNDS_US.len());
        self.buckets[i] += 1;
        self.max_ns = self.max_ns.max(late_ns);
        self.sum_ns = self.sum_ns.saturating_add(late_ns);
    }

    /// Add `other`'s counts to these (another loop's).
    pub fn merge(&mut self, other: &Lateness) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.max_ns = self.max_ns.max(other.max_ns);
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    /// Timers served more than 1 ms late.
    pub fn later_than_1ms(&self) -> u64 {
        let i = LATENESS_BOUNDS_US
            .iter()
            .position(|&b| b == 1000)
            .map_or(0, |i| i + 1);
        self.buckets[i..].iter().sum()
    }

    /// The exit report of an engine that shaped anything: lateness and streams stopped.
    pub fn report(&self, failed_closed: u64) -> Option<String> {
        if self.buckets.iter().all(|&n| n == 0) && failed_closed == 0 {
            return None;
        }
        Some(format!(
            "shaped departures late by {}; {failed_closed} shaped streams failed closed",
            self.summary()
        ))
    }

    /// One line for logs: `≤50us:N ≤100us:N … >5ms:N max=Xus`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.buckets.iter().enumerate() {
            match LATENESS_BOUNDS_US.get(i) {
                Some(b) => s.push_str(&format!("<={b}us:{n} ")),
                None => s.push_str(&format!(">5000us:{n} ")),
            }
        }
        s.push_str(&format!("max={}us", self.max_ns / 1000));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    fn drain(w: &mut Wheel, now: u64) -> Vec<(u64, u64)> {
        let mut out = vec![];
        w.expire(now, &mut out);
        out.sort();
        out
    }

    #[test]
    fn fires_exactly_when_due() {
        let mut w = Wheel::new();
        w.insert(250_000, 1);
        w.insert(260_000, 2);
        w.insert(5_000_000_000, 3); // many turns later
        assert_eq!(w.next_deadline(), Some(250_000));
        assert!(drain(&mut w, 249_999).is_empty());
        assert_eq!(drain(&mut w, 255_000), vec![(1, 250_000)]);
        assert_eq!(w.next_deadline(), Some(260_000));
        assert_eq!(drain(&mut w, 300_000), vec![(2, 260_000)]);
        assert_eq!(w.next_deadline(), Some(5_000_000_000));
        assert!(drain(&mut w, 4_999_999_999).is_empty());
        assert_eq!(drain(&mut w, 5_000_000_000), vec![(3, 5_000_000_000)]);
        assert!(w.is_empty());
        // A deadline in the past fires at once.
        w.insert(1, 9);
        assert_eq!(drain(&mut w, 5_000_000_001), vec![(9, 1)]);
    }

    #[test]
    fn matches_a_sorted_list_under_random_use() {
        // 10,000 flows re-arming random deadlines: the wheel must hand out exactly the
        // timers a plain sorted list says are due, never early, never lost.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut w = Wheel::new();
        let mut reference: Vec<(u64, u64)> = vec![];
        let mut now = 0u64;
        for k in 0..10_000u64 {
            let d = now + rng.next_u64() % 300_000_000;
            w.insert(d, k);
            reference.push((k, d));
        }
        let mut fired = 0;
        while !reference.is_empty() {
            now += rng.next_u64() % 2_000_000;
            let got = drain(&mut w, now);
            let mut want: Vec<_> = reference
                .iter()
                .copied()
                .filter(|&(_, d)| d <= now)
                .collect();
            want.sort();
            reference.retain(|&(_, d)| d > now);
            assert_eq!(got, want, "at {now}");
            fired += got.len();
            for (k, _) in got {
                if k % 3 == 0 {
                    // Re-arm a third of them, as flows with more to send do.
                    let d = now + 1 + rng.next_u64() % 20_000_000;
                    w.insert(d, k + 1_000_000);
                    reference.push((k + 1_000_000, d));
                }
            }
            let earliest = reference.iter().map(|&(_, d)| d).min();
            assert_eq!(w.next_deadline(), earliest);
        }
        assert!(fired > 10_000);
        assert!(w.is_empty());
    }

    #[test]
    fn take_all_empties_the_wheel_and_keeps_it_usable() {
        let mut w = Wheel::new();
        w.insert(250_000, 1);
        w.insert(5_000_000_000, 2);
        let mut out = vec![];
        w.take_all(&mut out);
        out.sort();
        assert_eq!(out, vec![(1, 250_000), (2, 5_000_000_000)]);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
        w.insert(300_000, 3);
        assert_eq!(drain(&mut w, 300_000), vec![(3, 300_000)]);
    }

    #[test]
    fn lateness_buckets() {
        let mut l = Lateness::default();
        for ns in [10_000, 100_000, 150_000, 3_000_000, 9_000_000] {
            l.record(ns);
        }
        assert_eq!(l.buckets, [1, 1, 1, 0, 0, 0, 1, 1]);
        assert_eq!(l.max_ns, 9_000_000);
        assert!(l.summary().ends_with("max=9000us"));
        assert_eq!(l.later_than_1ms(), 2);
        assert!(l.report(0).is_some());
        assert_eq!(Lateness::default().report(0), None);
    }
}
