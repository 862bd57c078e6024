//! The per-flow timing scheduler: which queued bytes, or which padding, may leave when.
//!
//! Sans-IO like `proto`: no sockets, no clock reads, no OS randomness. Time is a `u64`
//! of nanoseconds the caller passes in; randomness is a per-flow ChaCha20 stream seeded
//! with the `[u8; 32]` the caller passes. The engine keeps the bytes; [`FlowSched`]
//! only counts them and says how many may leave, in order, as which frame. A runtime
//! verifier (`verify`) checks every decision and fails the flow closed on a violation.
//! What each mode does and what the evaluation measured: `docs/TIMING.md`.

mod modes;
mod params;
mod verify;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

pub use params::{Direction, FLOOR_FRAME, Mode, Params, Profile, SEGMENT_FRAME};
pub use verify::{Check, Violation};

use modes::{Backlog, FrontSchedule, JitterDist};
use verify::{Release, Taken, Verifier};

/// Largest DATA payload of one frame.
pub const MAX_DATA: usize = crate::proto::frame::MAX_PAYLOAD;
/// Frame header bytes (type, stream id, payload length).
pub const FRAME_HEADER: usize = crate::proto::frame::HEADER_LEN;
/// Largest frame (header + payload + padding).
pub const MAX_FRAME: usize = crate::proto::frame::MAX_FRAME;
/// Bytes a record adds to its frame on the wire (masked length + AEAD tag).
pub const RECORD_OVERHEAD: usize = 18;
/// One millisecond in the scheduler's nanoseconds.
pub const MS: u64 = 1_000_000;

/// What may leave now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// Take `bytes` (≥ 1) from the head of the flow's byte queue and send them as one DATA frame padded to at least `frame_len` bytes (0 = no padding).
    Data {
        /// Payload bytes to take from the head of the queue.
        bytes: usize,
        /// Pad the frame to this length (0 = no padding).
        frame_len: usize,
    },
    /// Send one PADDING frame of `frame_len` bytes (same record size as a data cell, so indistinguishable by size).
    Padding {
        /// Frame length of the padding frame.
        frame_len: usize,
    },
}

/// Counters of one flow's scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowSchedStats {
    /// Application bytes that departed.
    pub real_bytes: u64,
    /// Padding bytes in frames: DATA frames' padding plus whole PADDING frames.
    pub padding_bytes: u64,
    /// DATA frames that departed.
    pub data_frames: u64,
    /// PADDING frames that departed.
    pub padding_frames: u64,
    /// Sum over DATA frames of how long the frame's oldest byte waited (ns).
    pub total_hold_ns: u64,
    /// Longest wait of any DATA frame's oldest byte (ns).
    pub max_hold_ns: u64,
    /// Departures the hold cap forced off the mode's schedule (constant: every cell of a
    /// drain).
    pub cap_releases: u64,
    /// Constant mode: grid slots skipped because `poll` came later than the slack.
    pub missed_slots: u64,
    /// Verifier violations (0 or 1: the first one kills the flow).
    pub violations: u64,
}

/// Bytes that arrived together and share a release time.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    arrival: u64,
    release: u64,
    len: usize,
}

/// Constant mode's grid: slots at `t0 + n·interval`.
struct ConstState {
    t0: u64,
    /// Index of the next unused slot.
    n: u64,
    active: bool,
    /// Cells sent in this burst (for `pad_multiple`).
    cells: u64,
    /// A slot of this burst was skipped, so its count cannot honour `pad_multiple`.
    missed: bool,
    /// Last data arrival, departure or close: the quiet period counts from it.
    last_data: u64,
    /// While a drain runs: a head byte reached the cap, and every queued byte leaves off
    /// the grid until the source falls behind the cells (a backlog the cells could never
    /// carry).
    drain: Option<Backlog>,
}

enum State {
    /// Off and poisson: nothing beyond the queue.
    Plain,
    Jitter(JitterDist),
    Topo {
        phase: u32,
    },
    Constant(ConstState),
    Adaptive {
        schedule: FrontSchedule,
        /// Time of the current or next burst.
        next_pad: Option<u64>,
        /// Frames left in the current burst (0: none started).
        burst_left: u32,
        spent: u32,
        budget: u32,
    },
}

/// Broken-on-purpose behaviour, so tests can show each verifier check firing.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Ignore the hold cap when scheduling.
    IgnoreCap,
    /// Schedule a release before the arrival.
    EarlyRelease,
    /// Report a delay sample beyond the mode's bound.
    SampleOutOfRange,
    /// Take bytes whose release time has not come.
    IgnoreRelease,
    /// Take one byte more than the credit allows.
    OverspendCredit,
    /// Constant: a cell one byte short.
    WrongCellSize,
    /// Constant: a cell half an interval off the grid.
    OffGrid,
    /// Adaptive: hand out padding times without spending the budget.
    OverBudget,
    /// Constant: drain a backlog off the grid without a byte having waited its cap.
    DrainWithoutCap,
    /// Constant: never end a drain, however slow the source becomes.
    StickyDrain,
    /// Topological: k = 2.
    TopoK,
    /// Topological: a delay one nanosecond off the formula.
    TopoRebuild,
    /// Topological: force Δ into the upper half turn (k = 1 every time).
    TopoBias,
}

/// The timing scheduler of one flow in one direction.
pub struct FlowSched {
    params: Params,
    rng: ChaCha20Rng,
    chunks: VecDeque<Chunk>,
    queued: usize,
    closed: bool,
    /// Release time of the newest chunk: later chunks never leave before it.
    last_release: u64,
    /// When bytes last arrived (adaptive: a burst ends after `burst_gap_ns` without).
    last_arrival: Option<u64>,
    state: State,
    verifier: Verifier,
    /// A violation found in `on_data`, reported by the next `poll`.
    pending: Option<Violation>,
    dead: Option<Violation>,
    stats: FlowSchedStats,
    fault: Option<Fault>,
}

impl FlowSched {
    /// A flow created at `now`, its randomness from `seed` (never reuse a seed across flows).
    pub fn new(params: Params, seed: [u8; 32], now: u64) -> FlowSched {
        let params = params.sanitized();
        let mut rng = ChaCha20Rng::from_seed(seed);
        let (state, lo, hi) = match params.mode {
            Mode::Off | Mode::Constant => (State::Plain, 0, 0),
            Mode::Adaptive => (State::Plain, 0, params.burst_delay_max_ns),
            Mode::Jitter => {
                let d = JitterDist::new(
                    &mut rng,
                    params.jitter_bins,
                    params.jitter_min_ns,
                    params.jitter_max_ns,
                );
                let hi = d.max();
                (State::Jitter(d), params.jitter_min_ns, hi)
            }
            // The two bands [1, 1.5) and [2.5, 3) ms lie inside these bounds.
            Mode::Topological => (
                State::Topo {
                    phase: rng.next_u32(),
                },
                MS,
                3 * MS,
            ),
            Mode::Poisson => (State::Plain, 0, u64::MAX),
        };
        let mut verifier = Verifier::new(&params, now, lo, hi);
        let state = match params.mode {
            Mode::Constant => State::Constant(ConstState {
                t0: now,
                n: 0,
                active: false,
                cells: 0,
                missed: false,
                last_data: now,
                drain: None,
            }),
            Mode::Adaptive => {
                let budget = modes::uniform_u64(
                    &mut rng,
                    u64::from(params.budget_min),
                    u64::from(params.budget_max),
                ) as u32;
                let scale =
                    modes::uniform_u64(&mut rng, params.window_min_ns, params.window_max_ns);
                verifier.set_budget(budget);
                // As many burst times as bursts of mean size (1 + max) / 2 fill the budget.
                let burst = u64::from(params.padding_burst);
                let times = (2 * u64::from(budget)).div_ceil(burst + 1) as u32;
                let mut schedule = FrontSchedule::new(times, scale, now);
                let next_pad = schedule.next(&mut rng);
                State::Adaptive {
                    schedule,
                    next_pad,
                    burst_left: 0,
                    spent: 0,
                    budget,
                }
            }
            _ => state,
        };
        FlowSched {
            params,
            rng,
            chunks: VecDeque::new(),
            queued: 0,
            closed: false,
            last_release: now,
            last_arrival: None,
            state,
            verifier,
            pending: None,
            dead: None,
            stats: FlowSchedStats::default(),
            fault: None,
        }
    }

    /// The parameters in force (after clamping).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// `len` new application bytes were queued at `now` (the engine holds the bytes, in order).
    pub fn on_data(&mut self, now: u64, len: usize) {
        if len == 0 || self.dead.is_some() || self.pending.is_some() {
            return;
        }
        if self.closed {
            self.pending = Some(Violation {
                check: Check::DataAfterClose,
                at_ns: now,
                value: len as u64,
                bound: 0,
            });
            return;
        }
        let (bias, bad_k, bad_delay) = (
            self.fault(Fault::TopoBias),
            self.fault(Fault::TopoK),
            self.fault(Fault::TopoRebuild),
        );
        let interval = self.params.interval_ns;
        let sticky = self.fault(Fault::StickyDrain);
        let sample = match &mut self.state {
            State::Plain if self.params.mode == Mode::Poisson => Some(modes::exponential(
                &mut self.rng,
                self.params.poisson_mean_ns,
            )),
            State::Jitter(dist) => Some(dist.sample(&mut self.rng)),
            State::Topo { phase } => {
                let mut phi = self.rng.next_u32();
                if bias {
                    phi = phase.wrapping_add(phi | 1 << 31);
                }
                // Δ = (φ − φ_prev) mod 2π: wrapping subtraction of fractions of a turn.
                let delta = phi.wrapping_sub(*phase);
                *phase = phi;
                // k = round(Δ / 2π), Δ / 2π in [0, 1): 1 exactly from half a turn on.
                let k = if bad_k { 2 } else { u64::from(delta >> 31) };
                let delay = modes::topo_delay(k, delta) + u64::from(bad_delay);
                if let Err(v) = self.verifier.topo(now, k, delta, delay) {
                    self.pending = Some(v);
                }
                Some(delay)
            }
            State::Adaptive { .. } if self.params.burst_delay_max_ns > 0 => {
                // A burst's first bytes wait a random while, so its start on the wire is
                // not the destination's; the rest of it follows them without delay.
                let idle = self
                    .last_arrival
                    .is_none_or(|t| now.saturating_sub(t) >= self.params.burst_gap_ns);
                Some(if idle && self.queued == 0 {
                    modes::uniform_u64(&mut self.rng, 0, self.params.burst_delay_max_ns)
                } else {
                    0
                })
            }
            State::Constant(st) => {
                if let Some(b) = &mut st.drain {
                    if !b.arrive(now, len) && !sticky {
                        // The source fell behind the cells: its bytes go back on the grid.
                        st.drain = None;
                    }
                }
                if !st.active {
                    // Restart on the flow's own grid, at the first slot not before now.
                    let ceil = now.saturating_sub(st.t0).div_ceil(interval);
                    st.n = st.n.max(ceil);
                    st.active = true;
                    st.cells = 0;
                    st.missed = false;
                }
                st.last_data = now;
                None
            }
            _ => None,
        };
        let release = match sample {
            Some(d) => self.schedule(now, d),
            None => now,
        };
        self.verifier.arrival(now, len);
        self.queued += len;
        self.last_arrival = Some(now);
        self.chunks.push_back(Chunk {
            arrival: now,
            release,
            len,
        });
    }

    /// The release time of bytes arriving at `now` whose mode drew `sample` ns of delay.
    fn schedule(&mut self, now: u64, sample: u64) -> u64 {
        let want = now.saturating_add(sample).max(self.last_release);
        let cap_at = now.saturating_add(self.params.hold_cap_ns);
        let mut release = if want > cap_at && !self.fault(Fault::IgnoreCap) {
            self.stats.cap_releases += 1;
            cap_at
        } else {
            want
        };
        let mut reported = sample;
        if self.fault(Fault::EarlyRelease) {
            release = now.saturating_sub(1);
        }
        if self.fault(Fault::SampleOutOfRange) {
            reported = self.verifier_hi().saturating_add(1);
        }
        let r = Release {
            arrival: now,
            sample: reported,
            prev_release: self.last_release,
            release,
        };
        if let Err(v) = self.verifier.release(&r) {
            self.pending.get_or_insert(v);
        }
        self.last_release = release;
        release
    }

    fn verifier_hi(&self) -> u64 {
        match &self.state {
            State::Jitter(d) => d.max(),
            State::Topo { .. } => 3 * MS,
            _ => u64::MAX - 1,
        }
    }

    /// The application closed its sending side at `now` (constant mode stops after its quiet period / padding target).
    pub fn on_close(&mut self, now: u64) {
        self.closed = true;
        if let State::Constant(st) = &mut self.state {
            // The quiet period runs from the close too, so the last cell does not mark it.
            st.last_data = st.last_data.max(now);
        }
    }

    /// The next departure due at or before `now`, given `credit` bytes of flow-control credit the engine can spend now; None when nothing is due. Call repeatedly until None.
    ///
    /// # Errors
    /// A [`Violation`] of a scheduler invariant; the flow is dead from then on and every
    /// later call returns the same violation (reset the stream).
    pub fn poll(&mut self, now: u64, credit: usize) -> Result<Option<Departure>, Violation> {
        if let Some(v) = self.dead {
            return Err(v);
        }
        let r = match self.pending.take() {
            Some(v) => Err(v),
            None => match self.params.mode {
                Mode::Constant => self.poll_constant(now, credit),
                Mode::Adaptive => self.poll_adaptive(now, credit),
                _ => self.poll_data(now, credit, 0),
            },
        };
        r.inspect_err(|&v| {
            self.stats.violations += 1;
            self.dead = Some(v);
        })
    }

    /// A DATA frame of the due bytes, padded to `frame_len`, if any are due and credited.
    fn poll_data(
        &mut self,
        now: u64,
        credit: usize,
        frame_len: usize,
    ) -> Result<Option<Departure>, Violation> {
        let payload = if self.params.mode == Mode::Constant {
            self.params.cell_payload()
        } else {
            self.params.max_payload
        };
        let limit = self.queued.min(credit).min(payload);
        if limit == 0 {
            return Ok(None);
        }
        let take = if self.fault(Fault::OverspendCredit) {
            (limit + 1).min(self.queued)
        } else {
            limit
        };
        let ignore_release = self.fault(Fault::IgnoreRelease);
        let mut t = Taken {
            bytes: 0,
            last_arrival: 0,
            last_release: 0,
        };
        let mut oldest = None;
        while t.bytes < take {
            let Some(c) = self.chunks.front_mut() else {
                break;
            };
            if c.release > now && !ignore_release {
                break;
            }
            let n = c.len.min(take - t.bytes);
            oldest.get_or_insert(c.arrival);
            t.bytes += n;
            t.last_arrival = c.arrival;
            t.last_release = c.release;
            c.len -= n;
            if c.len == 0 {
                self.chunks.pop_front();
            }
        }
        let Some(oldest) = oldest else {
            return Ok(None);
        };
        self.queued -= t.bytes;
        self.verifier.data(now, &t, limit, frame_len)?;
        let hold = now.saturating_sub(oldest);
        let s = &mut self.stats;
        s.real_bytes += t.bytes as u64;
        s.data_frames += 1;
        s.padding_bytes += frame_len.saturating_sub(FRAME_HEADER + t.bytes) as u64;
        s.total_hold_ns += hold;
        s.max_hold_ns = s.max_hold_ns.max(hold);
        Ok(Some(Departure::Data {
            bytes: t.bytes,
            frame_len,
        }))
    }

    fn padding(&mut self, now: u64, frame_len: usize) -> Result<Option<Departure>, Violation> {
        self.verifier.padding(now, frame_len)?;
        self.stats.padding_frames += 1;
        self.stats.padding_bytes += frame_len as u64;
        Ok(Some(Departure::Padding { frame_len }))
    }

    fn poll_constant(&mut self, now: u64, credit: usize) -> Result<Option<Departure>, Violation> {
        let p = self.params;
        let mut cell = p.cell;
        if self.fault(Fault::WrongCellSize) {
            cell -= 1;
        }
        let off_grid = self.fault(Fault::OffGrid);
        let State::Constant(st) = &mut self.state else {
            unreachable!("constant mode has constant state");
        };
        if st.active && st.t0 + st.n * p.interval_ns <= now {
            let mut slot = st.t0 + st.n * p.interval_ns;
            if now - slot > p.grid_slack_ns {
                // The engine came late: skip to the latest slot, and past it if it too is
                // beyond the slack, rather than sending a burst that breaks the rate.
                let behind = (now - slot) / p.interval_ns;
                st.missed = true;
                st.n += behind;
                slot += behind * p.interval_ns;
                self.stats.missed_slots += behind;
                if now - slot > p.grid_slack_ns {
                    st.n += 1;
                    self.stats.missed_slots += 1;
                    slot = u64::MAX;
                }
            }
            let quiet = now.saturating_sub(st.last_data) >= p.quiet_ns;
            let rounded = st.missed || st.cells % u64::from(p.pad_multiple) == 0;
            if self.queued == 0 && quiet && rounded {
                // A burst with skipped slots stops without rounding: it never could.
                st.active = false;
            } else if slot <= now {
                st.n += 1;
                st.cells += 1;
                let reported = if off_grid {
                    slot + p.interval_ns / 2
                } else {
                    slot
                };
                self.verifier.slot(now, reported)?;
                if self.queued > 0 && credit > 0 {
                    st.last_data = now;
                    return self.poll_data(now, credit, cell);
                }
                // No bytes, or no credit for them: padding keeps the rate.
                return self.padding(now, cell);
            }
        }
        // Off the grid: a head byte that waited its cap starts a drain, and a drain sends
        // every queued byte, so a backlog leaves at the path's speed rather than one
        // queue-full per cap (the engine reads no more than its queue holds).
        let Some(head) = self.chunks.front().map(|c| c.arrival) else {
            return Ok(None);
        };
        if credit == 0 {
            return Ok(None);
        }
        let early_drain = self.fault(Fault::DrainWithoutCap);
        let State::Constant(st) = &mut self.state else {
            unreachable!("constant mode has constant state");
        };
        if st.drain.is_some() || early_drain {
            self.verifier.drain(now)?;
        } else if now >= head.saturating_add(p.hold_cap_ns) {
            self.verifier.cap_release(now, head)?;
            st.drain = Some(Backlog::start(
                now,
                p.interval_ns,
                p.cell_payload(),
                p.hold_cap_ns,
            ));
        } else {
            return Ok(None);
        }
        st.last_data = now;
        self.stats.cap_releases += 1;
        self.poll_data(now, credit, cell)
    }

    fn poll_adaptive(&mut self, now: u64, credit: usize) -> Result<Option<Departure>, Violation> {
        if let Some(d) = self.poll_data(now, credit, 0)? {
            return Ok(Some(d));
        }
        let overrun = self.fault(Fault::OverBudget);
        let max_burst = u64::from(self.params.padding_burst);
        let State::Adaptive {
            schedule,
            next_pad,
            burst_left,
            spent,
            budget,
        } = &mut self.state
        else {
            unreachable!("adaptive mode has adaptive state");
        };
        match *next_pad {
            Some(t) if t <= now => {
                if *burst_left == 0 {
                    let b = modes::uniform_u64(&mut self.rng, 1, max_burst) as u32;
                    *burst_left = b.min(budget.saturating_sub(*spent));
                    if *burst_left == 0 {
                        *next_pad = None;
                        return Ok(None);
                    }
                }
                *burst_left -= 1;
                *spent += 1;
                if overrun {
                    // Pad again at once, forever: only the verifier's budget stops it.
                    *burst_left = 1;
                } else if *burst_left == 0 {
                    *next_pad = if *spent < *budget {
                        schedule.next(&mut self.rng)
                    } else {
                        None
                    };
                }
                let len = self.params.padding_len;
                self.padding(now, len)
            }
            _ => Ok(None),
        }
    }

    /// The earliest time poll could return Some (None: idle, nothing queued or scheduled).
    ///
    /// Credit is not considered: with bytes due and no credit, wait for credit instead.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.pending.is_some() {
            // Due at once, so the engine's next poll reports the violation.
            return Some(0);
        }
        if self.dead.is_some() {
            return None;
        }
        let head = self.chunks.front();
        match &self.state {
            State::Constant(st) => {
                let wait = if st.drain.is_some() {
                    0
                } else {
                    self.params.hold_cap_ns
                };
                let cap = head.map(|c| c.arrival.saturating_add(wait));
                let slot = st.active.then(|| st.t0 + st.n * self.params.interval_ns);
                match (slot, cap) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            State::Adaptive { next_pad, .. } => match (head, *next_pad) {
                (Some(c), Some(p)) => Some(c.release.min(p)),
                (Some(c), None) => Some(c.release),
                (None, p) => p,
            },
            _ => head.map(|c| c.release),
        }
    }

    /// A constant flow's drain runs: its bytes leave as fast as they come, off the grid.
    pub fn is_draining(&self) -> bool {
        matches!(&self.state, State::Constant(st) if st.drain.is_some())
    }

    /// Bytes queued and not yet departed.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The application closed its sending side ([`FlowSched::on_close`] was called).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// True when the flow has nothing queued and will never emit again (closed and done).
    pub fn is_finished(&self) -> bool {
        if !self.closed || self.queued > 0 || self.dead.is_some() || self.pending.is_some() {
            return false;
        }
        match &self.state {
            State::Constant(st) => !st.active,
            State::Adaptive { next_pad, .. } => next_pad.is_none(),
            _ => true,
        }
    }

    /// The first violation, once the flow is dead.
    pub fn violation(&self) -> Option<Violation> {
        self.dead
    }

    /// Counters so far.
    pub fn stats(&self) -> FlowSchedStats {
        self.stats
    }

    /// Make this flow misbehave, to prove the verifier catches it.
    #[cfg(test)]
    pub(crate) fn inject(&mut self, fault: Fault) {
        self.fault = Some(fault);
    }

    /// Constant false outside tests, so release builds drop every fault branch.
    #[inline(always)]
    fn fault(&self, f: Fault) -> bool {
        cfg!(test) && self.fault == Some(f)
    }
}
