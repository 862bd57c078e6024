//! RegulaTor's rate regulation with the data held to its slots (Holland and Hopper,
//! "RegulaTor: A Straightforward Website Fingerprinting Defense", PETS 2022), one
//! regulator per session and direction.
//!
//! `mb.rs` runs maybenot's RegulaTor machines, but its hook cannot hold data, so there
//! they only add padding. Here the regulator owns the session's sending: a burst of data
//! starts a *surge*, records then leave at the rate `r · d^s` packets per second (`s`
//! seconds since the surge, never below 1 per second), each slot carrying queued data or,
//! while the padding budget lasts, a padding record; a queue longer than `t` seconds of
//! the current rate starts a new surge; a byte that has waited `c` leaves at once. Every
//! record is one TCP segment, as in `constant`. The paper's upload rule (one upload
//! packet per `u` downloads) is replaced by the same regulator upstream with the rate and
//! budget divided by `u`: under that rule a request after a pause, with no download
//! running, would wait for the cap.

use std::collections::VecDeque;

use super::{FRAME_HEADER, RECORD_OVERHEAD, Rec, SEGMENT_FRAME};

/// One direction's regulator parameters, in the paper's units.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reg {
    /// Packets per second at a surge.
    pub(crate) r: f64,
    /// The rate's decay per second since the surge.
    pub(crate) d: f64,
    /// Surge threshold: more than `t` × the current rate packets queued.
    pub(crate) t: f64,
    /// Padding records per session and direction.
    pub(crate) n: u32,
    /// Longest a byte waits for a slot (ns).
    pub(crate) c_ns: u64,
}

impl Reg {
    /// The paper's download regulator `(r, d, t, n, c)` and its upstream counterpart,
    /// rate and budget divided by `u`.
    pub(crate) fn pair(r: f64, d: f64, t: f64, n: u32, u: f64, c_ns: u64) -> [Reg; 2] {
        let down = Reg { r, d, t, n, c_ns };
        let up = Reg {
            r: r / u,
            n: (f64::from(n) / u) as u32,
            ..down
        };
        [up, down]
    }

    fn rate(&self, now: u64, surge: u64) -> f64 {
        let s = now.saturating_sub(surge) as f64 / 1e9;
        (self.r * self.d.powf(s)).max(1.0)
    }
}

const PAYLOAD: u32 = (SEGMENT_FRAME - FRAME_HEADER) as u32;
const WIRE: u32 = (SEGMENT_FRAME + RECORD_OVERHEAD) as u32;

/// A session direction's held bytes: tagged arrivals `(time, bytes, flow)` come in, and
/// leave as segment-sized records on the regulator's slots or when they waited the cap.
struct Held<'a> {
    arr: &'a [(u64, u32, u32)],
    next: usize,
    q: VecDeque<(u64, u32, u32)>,
    queued: u64,
    c_ns: u64,
    out: Vec<Rec>,
    /// Each data record's oldest byte's wait (µs).
    holds: &'a mut Vec<u32>,
}

impl<'a> Held<'a> {
    fn new(arr: &'a [(u64, u32, u32)], c_ns: u64, holds: &'a mut Vec<u32>) -> Held<'a> {
        Held {
            arr,
            next: 0,
            q: VecDeque::new(),
            queued: 0,
            c_ns,
            out: Vec::new(),
            holds,
        }
    }

    /// The next event: an arrival, the regulator's `slot`, or the head byte's cap; None
    /// when nothing is left to happen. Arrivals due by then are queued.
    fn advance(&mut self, slot: Option<u64>) -> Option<u64> {
        let cap = self.q.front().map(|h| h.0.saturating_add(self.c_ns));
        let now = [self.arr.get(self.next).map(|a| a.0), slot, cap]
            .into_iter()
            .flatten()
            .min()?;
        while let Some(&a) = self.arr.get(self.next).filter(|a| a.0 <= now) {
            self.q.push_back(a);
            self.queued += u64::from(a.1);
            self.next += 1;
        }
        Some(now)
    }

    /// Bytes that waited the cap leave at `now`, off the slots.
    fn release_capped(&mut self, now: u64) {
        while self
            .q
            .front()
            .is_some_and(|h| now >= h.0.saturating_add(self.c_ns))
        {
            self.data(now);
        }
    }

    /// One segment-sized data record from the head of the queue, at `now`.
    fn data(&mut self, now: u64) {
        self.holds.push(((now - self.q[0].0) / 1000) as u32);
        let mut parts = Vec::with_capacity(1);
        let mut left = PAYLOAD;
        while let Some(h) = self.q.front_mut().filter(|_| left > 0) {
            let n = left.min(h.1);
            parts.push((h.2, n));
            h.1 -= n;
            left -= n;
            self.queued -= u64::from(n);
            if h.1 == 0 {
                self.q.pop_front();
            }
        }
        self.out.push(Rec {
            t: now,
            wire: WIRE,
            parts,
        });
    }

    /// One slot at `now`: data if any is queued, else padding when `pad` allows; true when
    /// a record left.
    fn slot(&mut self, now: u64, pad: bool) -> bool {
        if self.queued > 0 {
            self.data(now);
        } else if pad {
            self.out.push(Rec {
                t: now,
                wire: WIRE,
                parts: Vec::new(),
            });
        } else {
            return false;
        }
        true
    }
}

/// The records one direction of a session sends for tagged arrivals `(time, bytes, flow)`
/// until the session closes at `end` (no padding after it); each data record's oldest
/// byte's wait goes to `holds` (µs).
pub(crate) fn schedule(
    reg: &Reg,
    arr: &[(u64, u32, u32)],
    end: u64,
    holds: &mut Vec<u32>,
) -> Vec<Rec> {
    let mut h = Held::new(arr, reg.c_ns, holds);
    // When the current rate started, while the regulator runs.
    let mut surge: Option<u64> = None;
    let mut next_slot = u64::MAX;
    let mut pad_left = reg.n;
    while let Some(now) = h.advance(surge.map(|_| next_slot)) {
        if h.queued > 0 {
            let packets = h.queued.div_ceil(u64::from(PAYLOAD)) as f64;
            match surge {
                None => {
                    surge = Some(now);
                    next_slot = now;
                }
                Some(s) if packets > reg.t * reg.rate(now, s) => {
                    surge = Some(now);
                    next_slot = next_slot.min(now + (1e9 / reg.r) as u64);
                }
                Some(_) => {}
            }
        }
        h.release_capped(now);
        let Some(s) = surge.filter(|_| next_slot <= now) else {
            continue;
        };
        let data = h.queued > 0;
        if h.slot(now, pad_left > 0 && now < end) && !data {
            pad_left -= 1;
        }
        if h.queued == 0 && (pad_left == 0 || now >= end) {
            // Nothing to send and nothing to pad with: the next data starts a surge.
            surge = None;
        } else {
            next_slot = now + (1e9 / reg.rate(now, s)) as u64;
        }
    }
    h.out
}

/// Surakav-style regulation: records leave only where a reference trace has packets, one
/// segment per reference segment, carrying queued data or else padding; no byte waits
/// longer than `c_ns`. Surakav draws its reference from a trained generator; the harness
/// passes another session of its own traffic model (`reference`: (time, bytes), sorted,
/// already placed on this session's clock), so this measures the mechanism, not the GAN.
pub(crate) fn follow(
    reference: &[(u64, u32)],
    c_ns: u64,
    arr: &[(u64, u32, u32)],
    end: u64,
    holds: &mut Vec<u32>,
) -> Vec<Rec> {
    let reference: Vec<(u64, u32)> = reference.iter().copied().filter(|r| r.0 < end).collect();
    let mut h = Held::new(arr, c_ns, holds);
    let mut j = 0;
    while let Some(now) = h.advance(reference.get(j).map(|r| r.0)) {
        h.release_capped(now);
        while let Some(&(_, bytes)) = reference.get(j).filter(|r| r.0 <= now) {
            for _ in 0..bytes.div_ceil(PAYLOAD) {
                h.slot(now, true);
            }
            j += 1;
        }
    }
    h.out
}
