//! The samplers behind the modes: an alias table (jitter), the topological formula,
//! exponential delays (poisson) and FRONT's Rayleigh-placed padding times (adaptive).
//! All draw from the flow's own ChaCha20 stream. Also constant mode's drain rule
//! ([`Backlog`]), which the scheduler and the verifier each run on their own counts.

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

use super::MS;

/// A uniform f64 in [0, 1) with 53 random bits.
pub(crate) fn unit(rng: &mut ChaCha20Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniform integer in `lo..=hi` (multiply-shift; the bias is below 2^-32 for our ranges).
pub(crate) fn uniform_u64(rng: &mut ChaCha20Rng, lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        return lo;
    }
    let span = hi - lo + 1;
    lo + ((u128::from(rng.next_u64()) * u128::from(span)) >> 64) as u64
}

/// Vose's alias table over `n` bins: O(1) per sample, built once per flow.
pub(crate) struct AliasTable {
    /// Per bin: the threshold (of 2^32) below which the bin itself is chosen, and its alias.
    bins: Box<[(u32, u8)]>,
}

impl AliasTable {
    /// `weights` are positive; at most 256 bins (the alias is a u8).
    pub(crate) fn new(weights: &[f64]) -> AliasTable {
        let n = weights.len();
        assert!((1..=256).contains(&n), "alias table needs 1..=256 bins");
        let total: f64 = weights.iter().sum();
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut bins = vec![(u32::MAX, 0u8); n];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while !small.is_empty() && !large.is_empty() {
            let (s, l) = (small.pop().unwrap_or_default(), large[large.len() - 1]);
            bins[s] = (
                ((scaled[s] * 4294967296.0) as u64).min(u64::from(u32::MAX)) as u32,
                l as u8,
            );
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Leftovers are 1 up to rounding: they always keep their own bin.
        for i in small.into_iter().chain(large) {
            bins[i] = (u32::MAX, i as u8);
        }
        AliasTable {
            bins: bins.into_boxed_slice(),
        }
    }

    /// A bin index drawn with probability proportional to its weight.
    pub(crate) fn sample(&self, rng: &mut ChaCha20Rng) -> usize {
        let r = rng.next_u64();
        let i = (((r & 0xffff_ffff) * self.bins.len() as u64) >> 32) as usize;
        let (threshold, alias) = self.bins[i];
        if ((r >> 32) as u32) < threshold || threshold == u32::MAX {
            i
        } else {
            usize::from(alias)
        }
    }

    /// Number of bins.
    pub(crate) fn len(&self) -> usize {
        self.bins.len()
    }
}

/// The jitter mode's per-flow distribution: bin values evenly over [min, max], weights
/// from the flow's seed, as obfs4's iat mode does per bridge.
pub(crate) struct JitterDist {
    table: AliasTable,
    min: u64,
    step: u64,
}

impl JitterDist {
    pub(crate) fn new(rng: &mut ChaCha20Rng, bins: usize, min: u64, max: u64) -> JitterDist {
        let bins = bins.clamp(1, 100);
        // Weights in (0, 1]; a zero weight would make a bin unreachable, which is allowed
        // but makes small tables degenerate, so keep every bin possible.
        let weights: Vec<f64> = (0..bins).map(|_| 1.0 - unit(rng)).collect();
        let step = if bins > 1 {
            (max - min) / (bins as u64 - 1)
        } else {
            0
        };
        JitterDist {
            table: AliasTable::new(&weights),
            min,
            step,
        }
    }

    pub(crate) fn sample(&self, rng: &mut ChaCha20Rng) -> u64 {
        self.min + self.step * self.table.sample(rng) as u64
    }

    /// The largest value `sample` can return.
    pub(crate) fn max(&self) -> u64 {
        self.min + self.step * (self.table.len() as u64 - 1)
    }
}

/// Lower and upper clamp of the topological delay, from the source documents.
pub(crate) const TOPO_CLAMP_LO: u64 = MS / 10;
pub(crate) const TOPO_CLAMP_HI: u64 = 10 * MS;

/// delay = 1 ms · (1 + k + Δ/2π), clamped to [0.1, 10] ms, with Δ a u32 fraction of a
/// turn; integer arithmetic so the verifier can rebuild it bit for bit.
pub(crate) fn topo_delay(k: u64, delta: u32) -> u64 {
    let frac = (MS * u64::from(delta)) >> 32;
    (MS * (1 + k) + frac).clamp(TOPO_CLAMP_LO, TOPO_CLAMP_HI)
}

/// An exponential sample with mean `mean` ns.
pub(crate) fn exponential(rng: &mut ChaCha20Rng, mean: u64) -> u64 {
    // 1 - unit is in (0, 1], so ln is finite.
    let d = -(mean as f64) * libm::log(1.0 - unit(rng));
    if d >= u64::MAX as f64 {
        u64::MAX
    } else {
        d as u64
    }
}

/// FRONT's padding schedule: `budget` times from a Rayleigh distribution of scale
/// `scale`, produced in ascending order one at a time (ascending uniform order
/// statistics mapped through the Rayleigh inverse CDF), so no per-flow array is needed.
pub(crate) struct FrontSchedule {
    remaining: u32,
    u_prev: f64,
    scale_ns: f64,
    t0: u64,
}

impl FrontSchedule {
    pub(crate) fn new(budget: u32, scale_ns: u64, t0: u64) -> FrontSchedule {
        FrontSchedule {
            remaining: budget,
            u_prev: 0.0,
            scale_ns: scale_ns as f64,
            t0,
        }
    }

    /// The next padding time, ascending; None when the budget is spent.
    pub(crate) fn next(&mut self, rng: &mut ChaCha20Rng) -> Option<u64> {
        if self.remaining == 0 {
            return None;
        }
        // The smallest of m uniforms on [a, 1) is a + (1 - a)(1 - V^(1/m)).
        let v = 1.0 - unit(rng);
        let u = self.u_prev
            + (1.0 - self.u_prev) * (1.0 - libm::pow(v, 1.0 / f64::from(self.remaining)));
        self.remaining -= 1;
        self.u_prev = u;
        // Keep 1 - u away from 0 so the tail stays finite (2^-53: beyond 8.6 scales).
        let tail = (1.0 - u).max(f64::EPSILON / 2.0);
        let t = self.scale_ns * (-2.0 * libm::log(tail)).sqrt();
        Some(self.t0.saturating_add(t as u64))
    }
}

/// How far a draining constant flow's source is ahead of its cells, in bytes.
///
/// A drain starts when a byte waited the hold cap, so the source was at least a cap's
/// worth of cells ahead: the count starts there, and never goes above it. Arrivals add
/// to it; every interval takes one cell's payload off. An arrival that finds it spent
/// ends the drain: the source has fallen behind the cells. A byte rate, not the gaps
/// between writes, so a slow source that writes often still ends it, and a bulk source
/// whose refills come a round trip apart does not.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backlog {
    excess: u64,
    at: u64,
    interval: u64,
    per_cell: u64,
    most: u64,
}

impl Backlog {
    /// A drain starting at `now` for cells of `per_cell` payload bytes every `interval`
    /// ns, under a hold cap of `cap` ns.
    pub(crate) fn start(now: u64, interval: u64, per_cell: usize, cap: u64) -> Backlog {
        let interval = interval.max(1);
        let per_cell = per_cell as u64;
        let most = (cap / interval).max(1).saturating_mul(per_cell);
        Backlog {
            excess: most,
            at: now,
            interval,
            per_cell,
            most,
        }
    }

    /// `len` bytes arrive at `now`; false when the drain is over.
    pub(crate) fn arrive(&mut self, now: u64, len: usize) -> bool {
        let cells = now.saturating_sub(self.at) / self.interval;
        self.at += cells * self.interval;
        self.excess = self
            .excess
            .saturating_sub(cells.saturating_mul(self.per_cell));
        if self.excess == 0 {
            return false;
        }
        self.excess = self.excess.saturating_add(len as u64).min(self.most);
        true
    }
}
