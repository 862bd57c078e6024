//! The runtime verifier: invariants every departure must keep, checked inside `poll`.
//!
//! Each check is a few compares and adds, so it stays on in release builds. The
//! scheduler reports what it decided (a release time, a slot, a sample); the verifier
//! keeps its own copy of what it needs (last departure, grid origin, budgets, the
//! topological window) so a bug in the mode code cannot also hide itself here.

use std::fmt;

use super::modes::Backlog;
use super::{FRAME_HEADER, MAX_FRAME, Mode};

/// Which invariant a departure broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A departure earlier than the previous one (`now` went backwards).
    NonMonotonic,
    /// A byte scheduled or sent before it arrived or before its release time.
    Early,
    /// A byte scheduled to wait longer than `hold_cap_ns`.
    HoldCap,
    /// A delay sample outside the mode's bounds.
    DelayBounds,
    /// A frame of a size the mode does not allow, or more bytes than queued or credited.
    Size,
    /// A constant-mode cell off its grid, late beyond the slack, or a slot used twice.
    Grid,
    /// More padding frames than the flow's budget.
    PaddingBudget,
    /// Topological: k outside {0, 1} or not round(Δ / 2π).
    TopoK,
    /// Topological: the delay does not rebuild exactly from (k, Δ).
    TopoRebuild,
    /// Topological: the count of k = 1 in a window of 1024 draws is outside 434..=590.
    TopoWindow,
    /// Data queued after `on_close`.
    DataAfterClose,
}

impl Check {
    /// A short name for logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            Check::NonMonotonic => "non-monotonic departure",
            Check::Early => "early departure",
            Check::HoldCap => "hold cap exceeded",
            Check::DelayBounds => "delay out of bounds",
            Check::Size => "frame size",
            Check::Grid => "off the constant-rate grid",
            Check::PaddingBudget => "padding budget exceeded",
            Check::TopoK => "topological k",
            Check::TopoRebuild => "topological delay rebuild",
            Check::TopoWindow => "topological window count",
            Check::DataAfterClose => "data after close",
        }
    }
}

/// A broken scheduler invariant; the flow is dead once one is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant.
    pub check: Check,
    /// Simulated or engine time of the offending decision (ns).
    pub at_ns: u64,
    /// The offending value (a time, size or count, depending on the check).
    pub value: u64,
    /// The bound it broke.
    pub bound: u64,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timing scheduler: {} (value {}, bound {}, at {} ns)",
            self.check.name(),
            self.value,
            self.bound,
            self.at_ns
        )
    }
}

impl std::error::Error for Violation {}

/// Draws per topological window and the accepted count of k = 1 in it: a binomial
/// (1024, 1/2) leaves 434..=590 with probability about 2^-20.
pub(crate) const TOPO_WINDOW: u32 = 1024;
pub(crate) const TOPO_WINDOW_MIN: u32 = 434;
pub(crate) const TOPO_WINDOW_MAX: u32 = 590;

fn fail(check: Check, at_ns: u64, value: u64, bound: u64) -> Result<(), Violation> {
    Err(Violation {
        check,
        at_ns,
        value,
        bound,
    })
}

/// Bounds of one scheduled release, as the mode code reports them.
pub(crate) struct Release {
    pub(crate) arrival: u64,
    pub(crate) sample: u64,
    pub(crate) prev_release: u64,
    pub(crate) release: u64,
}

/// One DATA departure, as taken from the queue.
pub(crate) struct Taken {
    pub(crate) bytes: usize,
    /// Arrival of the newest byte in the frame.
    pub(crate) last_arrival: u64,
    /// Release time of the newest byte in the frame.
    pub(crate) last_release: u64,
}

/// The verifier's own state for one flow.
pub(crate) struct Verifier {
    mode: Mode,
    cap: u64,
    delay_lo: u64,
    delay_hi: u64,
    last_departure: u64,
    // constant
    grid_t0: u64,
    interval: u64,
    slack: u64,
    cell: usize,
    next_free_slot: u64,
    /// The payload of one constant cell.
    per_cell: usize,
    /// A drain that a verified cap release started, by the verifier's own count of the
    /// arrivals since; None once that count says the source fell behind.
    drain: Option<Backlog>,
    /// When the verifier's count last ended a drain (for the violation's report).
    drain_ended: u64,
    // adaptive
    budget: u32,
    padding_sent: u32,
    // topological
    topo_draws: u32,
    topo_ones: u32,
}

impl Verifier {
    /// `delay_lo..=delay_hi` bounds each delay sample of the delaying modes.
    pub(crate) fn new(p: &super::Params, now: u64, delay_lo: u64, delay_hi: u64) -> Verifier {
        Verifier {
            mode: p.mode,
            cap: p.hold_cap_ns,
            delay_lo,
            delay_hi,
            last_departure: 0,
            grid_t0: now,
            interval: p.interval_ns,
            slack: p.grid_slack_ns,
            cell: p.cell,
            next_free_slot: now,
            per_cell: p.cell_payload(),
            drain: None,
            drain_ended: 0,
            budget: 0,
            padding_sent: 0,
            topo_draws: 0,
            topo_ones: 0,
        }
    }

    /// The padding budget the adaptive mode drew for this flow.
    pub(crate) fn set_budget(&mut self, budget: u32) {
        self.budget = budget;
    }

    /// `len` bytes arrived at `now`; they may end a drain (the source fell behind).
    pub(crate) fn arrival(&mut self, now: u64, len: usize) {
        if let Some(b) = &mut self.drain {
            if !b.arrive(now, len) {
                self.drain = None;
                self.drain_ended = now;
            }
        }
    }

    /// A release time chosen for newly arrived bytes (delaying modes).
    pub(crate) fn release(&self, r: &Release) -> Result<(), Violation> {
        if r.release < r.arrival {
            return fail(Check::Early, r.arrival, r.release, r.arrival);
        }
        if r.release - r.arrival > self.cap {
            return fail(Check::HoldCap, r.arrival, r.release - r.arrival, self.cap);
        }
        if r.sample < self.delay_lo || r.sample > self.delay_hi {
            let bound = if r.sample < self.delay_lo {
                self.delay_lo
            } else {
                self.delay_hi
            };
            return fail(Check::DelayBounds, r.arrival, r.sample, bound);
        }
        // The schedule may hold a chunk behind its predecessor, never longer than that.
        let latest = r.arrival.saturating_add(r.sample).max(r.prev_release);
        if r.release > latest {
            return fail(Check::DelayBounds, r.arrival, r.release, latest);
        }
        Ok(())
    }

    /// One topological draw: k, the phase difference Δ (a u32 fraction of a turn), the delay.
    pub(crate) fn topo(
        &mut self,
        at: u64,
        k: u64,
        delta: u32,
        delay: u64,
    ) -> Result<(), Violation> {
        let round = u64::from(delta >> 31);
        if k > 1 || k != round {
            return fail(Check::TopoK, at, k, round);
        }
        let rebuilt = super::modes::topo_delay(k, delta);
        if delay != rebuilt {
            return fail(Check::TopoRebuild, at, delay, rebuilt);
        }
        self.topo_draws += 1;
        self.topo_ones += k as u32;
        if self.topo_draws == TOPO_WINDOW {
            let ones = self.topo_ones;
            self.topo_draws = 0;
            self.topo_ones = 0;
            if !(TOPO_WINDOW_MIN..=TOPO_WINDOW_MAX).contains(&ones) {
                let bound = if ones < TOPO_WINDOW_MIN {
                    TOPO_WINDOW_MIN
                } else {
                    TOPO_WINDOW_MAX
                };
                return fail(Check::TopoWindow, at, u64::from(ones), u64::from(bound));
            }
        }
        Ok(())
    }

    fn monotonic(&mut self, now: u64) -> Result<(), Violation> {
        if now < self.last_departure {
            return fail(Check::NonMonotonic, now, now, self.last_departure);
        }
        self.last_departure = now;
        Ok(())
    }

    fn frame_len(&self, now: u64, frame_len: usize, bytes: usize) -> Result<(), Violation> {
        if self.mode == Mode::Constant {
            if frame_len != self.cell {
                return fail(Check::Size, now, frame_len as u64, self.cell as u64);
            }
        } else if frame_len != 0 && (frame_len < FRAME_HEADER + bytes || frame_len > MAX_FRAME) {
            return fail(Check::Size, now, frame_len as u64, MAX_FRAME as u64);
        }
        Ok(())
    }

    /// A DATA frame leaving at `now`; `limit` is min(queued, credit, payload limit) before it.
    pub(crate) fn data(
        &mut self,
        now: u64,
        t: &Taken,
        limit: usize,
        frame_len: usize,
    ) -> Result<(), Violation> {
        self.monotonic(now)?;
        if t.last_arrival > now {
            return fail(Check::Early, now, t.last_arrival, now);
        }
        if t.last_release > now {
            return fail(Check::Early, now, t.last_release, now);
        }
        if t.bytes == 0 || t.bytes > limit {
            return fail(Check::Size, now, t.bytes as u64, limit as u64);
        }
        self.frame_len(now, frame_len, t.bytes)
    }

    /// A PADDING frame leaving at `now`.
    pub(crate) fn padding(&mut self, now: u64, frame_len: usize) -> Result<(), Violation> {
        self.monotonic(now)?;
        if !(FRAME_HEADER..=MAX_FRAME).contains(&frame_len) {
            return fail(Check::Size, now, frame_len as u64, MAX_FRAME as u64);
        }
        self.frame_len(now, frame_len, 0)?;
        if self.mode == Mode::Adaptive {
            self.padding_sent += 1;
            if self.padding_sent > self.budget {
                return fail(
                    Check::PaddingBudget,
                    now,
                    u64::from(self.padding_sent),
                    u64::from(self.budget),
                );
            }
        }
        Ok(())
    }

    /// A constant-mode cell for grid slot `slot` leaving at `now`.
    pub(crate) fn slot(&mut self, now: u64, slot: u64) -> Result<(), Violation> {
        let off_grid = slot < self.grid_t0 || (slot - self.grid_t0) % self.interval != 0;
        if off_grid || slot < self.next_free_slot || now < slot || now - slot > self.slack {
            return fail(Check::Grid, now, slot, self.next_free_slot);
        }
        self.next_free_slot = slot + self.interval;
        Ok(())
    }

    /// A constant-mode cell released off the grid because its head byte reached the cap;
    /// it starts a drain.
    pub(crate) fn cap_release(&mut self, now: u64, head_arrival: u64) -> Result<(), Violation> {
        // Only a byte that really waited its cap may break the grid.
        if now.saturating_sub(head_arrival) < self.cap {
            return fail(Check::Grid, now, now - head_arrival.min(now), self.cap);
        }
        if self.drain.is_none() {
            self.drain = Some(Backlog::start(now, self.interval, self.per_cell, self.cap));
        }
        Ok(())
    }

    /// A constant-mode cell of a drain, off the grid: value is now, bound the moment
    /// the verifier's count ended the drain (0: none began).
    pub(crate) fn drain(&self, now: u64) -> Result<(), Violation> {
        if self.drain.is_none() {
            return fail(Check::Grid, now, now, self.drain_ended);
        }
        Ok(())
    }
}
