//! Session-level defenses in the simulation: a padding machine at each end of a user's
//! session that sees every record its end sends and receives (all of the user's flows
//! multiplexed) and adds padding records of its own.
//!
//! The hook is padding-only: a defense here never delays data (that is the per-flow
//! schedulers' job), so the exit observer and the latency figures are unchanged by it,
//! and its cost is bandwidth alone. Padding one end sends is not among the other end's
//! events: a defense whose ends react to each other's padding simulates the crossing
//! itself (mb.rs does).

/// One record as an end sees it: sent by this end or received from the other.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ev {
    /// When this end sent or received it (ns).
    pub(crate) t: u64,
    /// Sent by this end.
    pub(crate) sent: bool,
    /// Record bytes on the wire.
    pub(crate) wire: u32,
    /// A padding record of the per-flow schedulers (not data).
    #[allow(dead_code)] // mb.rs deliberately maps these as normal packets (see there)
    pub(crate) padding: bool,
}

impl Ev {
    /// An event at `t`.
    pub(crate) fn new(t: u64, sent: bool, wire: u32, padding: bool) -> Ev {
        Ev {
            t,
            sent,
            wire,
            padding,
        }
    }
}

/// A session-level padding defense.
pub(crate) trait SessionPad: Send + Sync {
    /// The padding records (send time, wire bytes) of the client end (upstream) and of
    /// the relay end (downstream), given each end's events in time order. `seed` is the
    /// session's.
    fn pad(&self, seed: u64, client: &[Ev], relay: &[Ev]) -> [Vec<(u64, u32)>; 2];
}

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::unit;

/// FRONT triggered by every burst a session's end takes part in, not only a flow's start:
/// after data that follows `gap_ns` of silence at this end, `budget_min..=budget_max`
/// padding records at Rayleigh-distributed delays of scale `scale_min..=scale_max` ns;
/// a fraction `small` of them are `small_len` bytes instead of a full segment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BurstFront {
    pub(crate) gap_ns: u64,
    pub(crate) budget: [(u32, u32); 2],
    pub(crate) scale: (u64, u64),
    pub(crate) small: f64,
    pub(crate) small_len: u32,
    /// Trigger on received data as well as sent.
    pub(crate) on_recv: bool,
    /// Full-size records per padding event after the first (a decoy burst).
    pub(crate) burst: (u32, u32),
}

impl BurstFront {
    fn end(&self, seed: u64, ev: &[Ev], e: usize) -> Vec<(u64, u32)> {
        let mut r = ChaCha20Rng::seed_from_u64(seed ^ ((e as u64 + 1) * 0x9e37_79b9));
        let mut out = Vec::new();
        let mut last: Option<u64> = None;
        for v in ev.iter().filter(|v| !v.padding && (v.sent || self.on_recv)) {
            let new_burst = last.is_none_or(|l| v.t.saturating_sub(l) >= self.gap_ns);
            last = Some(v.t);
            if !new_burst {
                continue;
            }
            let (lo, hi) = self.budget[e];
            let n = lo + (unit(&mut r) * f64::from(hi - lo + 1)) as u32;
            let scale = self.scale.0 as f64 + unit(&mut r) * (self.scale.1 - self.scale.0) as f64;
            for _ in 0..n {
                // Rayleigh: scale * sqrt(-2 ln U).
                let d = scale * (-2.0 * (1.0 - unit(&mut r)).ln()).sqrt();
                let len = if unit(&mut r) < self.small {
                    self.small_len
                } else {
                    1448
                };
                out.push((v.t + d as u64, len));
                let (blo, bhi) = self.burst;
                let extra = blo + (unit(&mut r) * f64::from(bhi.saturating_sub(blo) + 1)) as u32;
                for k in 0..extra {
                    out.push((v.t + d as u64 + u64::from(k) * 10_000, 1448));
                }
            }
        }
        out.sort_unstable();
        out
    }
}

impl SessionPad for BurstFront {
    fn pad(&self, seed: u64, client: &[Ev], relay: &[Ev]) -> [Vec<(u64, u32)>; 2] {
        [self.end(seed, client, 0), self.end(seed, relay, 1)]
    }
}

/// The session's padding floor as the engine runs it (`src/proto/session/floor.rs`): an
/// end sends one `len`-byte padding record after `slot_ns` of silence, for `tail_ns` after
/// its last record of a shaped flow (data or per-flow padding), so sparse traffic
/// (keystrokes, requests) and silence give the same packet counts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Floor {
    pub(crate) slot_ns: [u64; 2],
    pub(crate) len: u32,
    pub(crate) tail_ns: u64,
}

impl Floor {
    /// End `e`'s floor records, given what it sent (`ev`, and `extra` padding added).
    fn end(&self, ev: &[Ev], extra: &[(u64, u32)], e: usize) -> Vec<(u64, u32)> {
        let mut sent: Vec<u64> = ev.iter().filter(|v| v.sent).map(|v| v.t).collect();
        sent.extend(extra.iter().map(|x| x.0));
        sent.sort_unstable();
        let slot = self.slot_ns[e];
        let mut out = Vec::new();
        // As the engine does it: a record after `slot` of silence, for `tail_ns` after
        // this end's last record of a shaped flow (data or per-flow padding).
        let own: Vec<u64> = ev.iter().filter(|v| v.sent).map(|v| v.t).collect();
        let mut last_tx = 0u64;
        let mut i = 0; // into sent (every record this end sends)
        let mut j = 0; // into own (records that extend the floor)
        let mut until = 0u64;
        loop {
            let due = last_tx + slot;
            let next_sent = sent.get(i).copied();
            match next_sent {
                Some(t) if t <= due || due > until => {
                    if due <= until && due < t {
                        out.push((due, self.len));
                        last_tx = due;
                        continue;
                    }
                    last_tx = t;
                    i += 1;
                    while j < own.len() && own[j] <= t {
                        until = until.max(own[j] + self.tail_ns);
                        j += 1;
                    }
                }
                _ => {
                    if due <= until {
                        out.push((due, self.len));
                        last_tx = due;
                    } else {
                        break;
                    }
                }
            }
        }
        out
    }
}

/// The floor a profile's parameters ask for (`Params::floor_ns`), as the engine runs it.
pub(crate) fn floor_of(up: &qnet::sched::Params, down: &qnet::sched::Params) -> Option<Floor> {
    (up.floor_ns > 0 || down.floor_ns > 0).then(|| Floor {
        // An end without a floor: a slot longer than any session.
        slot_ns: [up, down].map(|p| {
            if p.floor_ns > 0 {
                p.floor_ns
            } else {
                u64::MAX / 4
            }
        }),
        len: (up.floor_len.max(down.floor_len) + qnet::sched::RECORD_OVERHEAD) as u32,
        tail_ns: up.floor_tail_ns.max(down.floor_tail_ns).max(1),
    })
}

/// The floor's records at each end, given each end's events and the padding already added.
pub(crate) fn apply_floor(
    fl: &Floor,
    client: &[Ev],
    relay: &[Ev],
    added: &[Vec<(u64, u32)>; 2],
) -> [Vec<(u64, u32)>; 2] {
    [fl.end(client, &added[0], 0), fl.end(relay, &added[1], 1)]
}
