//! Correlators that do not score one statistic over the flow's whole span of 50 ms
//! windows: `burst-match` matches the exit flow's bursts (runs of packets with short
//! gaps) against the bursts in the user's records, at one latency per pair;
//! `window-cosine` lets many short windows each vote weakly.
//!
//! A padding-only defense such as FRONT adds bursts to the entry side but cannot remove
//! or move the flow's own: every exit burst still has its counterpart at the entry, one
//! path latency away. The attacker does not know which entry bursts are padding, so
//! `burst-match` discounts matches by how many entry bursts were near enough to match
//! by chance.

use qnet::sched::MS;

/// Packets less than this apart belong to one burst. Above the simulated per-packet
/// jitter (0–5 ms) plus the packet spacing of any transfer faster than ~75 KB/s, so one
/// transfer stays one burst on both sides, and above the 12 ms of a constant-rate cell
/// stream, so that stream is one burst whose start and end show; below the pauses
/// between application rounds (200 ms and more); and short enough that FRONT padding
/// records, mostly tens of ms apart, stay bursts of their own instead of merging into
/// one blob that hides the flow's burst starts (measured on 200 users: a 30 ms gap
/// matched `profile:default` at 0.84, 20 ms at 0.91; 10 ms at 0.96, but it cuts the
/// cell stream apart and loses `constant` from 0.21 to 0.04).
pub(crate) const GAP_NS: u64 = 20 * MS;
/// The largest one-way latency searched between the two observers.
pub(crate) const MAX_LAG_NS: u64 = 250 * MS;
/// Half-width of the offset window in which an entry burst start counts as the
/// counterpart of an exit burst start: jitter (≤ 5 ms) plus where the gap falls.
pub(crate) const TOL_NS: u64 = 8 * MS;

/// One burst: first and last packet time (ns) and its bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Burst {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) bytes: u64,
}

/// The bursts of one observation point (a user's records or a flow's packets), per
/// direction, sorted by start.
pub(crate) struct Bursts {
    pub(crate) dir: [Vec<Burst>; 2],
    /// Burst starts per direction, for `partition_point`.
    starts: [Vec<u64>; 2],
    /// `weight` of every burst, up then down.
    weights: Vec<f32>,
    /// ln(bytes + one packet) of every burst per direction, for `size_quality`.
    log_size: [Vec<f32>; 2],
}

impl Bursts {
    /// Segments events (time, bytes) per direction, in any order, at gaps of `GAP_NS`.
    pub(crate) fn new(events: &[Vec<(u64, u32)>; 2]) -> Bursts {
        let seg = |ev: &Vec<(u64, u32)>| -> Vec<Burst> {
            let mut ev = ev.clone();
            ev.sort_unstable();
            let mut out: Vec<Burst> = Vec::new();
            for (t, n) in ev {
                match out.last_mut() {
                    Some(b) if t - b.end < GAP_NS => {
                        b.end = t;
                        b.bytes += u64::from(n);
                    }
                    _ => out.push(Burst {
                        start: t,
                        end: t,
                        bytes: u64::from(n),
                    }),
                }
            }
            out
        };
        let dir = [seg(&events[0]), seg(&events[1])];
        let starts = [
            dir[0].iter().map(|b| b.start).collect(),
            dir[1].iter().map(|b| b.start).collect(),
        ];
        let weights = dir.iter().flatten().map(weight).collect();
        let log_size = [
            dir[0].iter().map(|b| log_size(b.bytes)).collect(),
            dir[1].iter().map(|b| log_size(b.bytes)).collect(),
        ];
        Bursts {
            dir,
            starts,
            weights,
            log_size,
        }
    }
}

/// Per-correlator scratch space, reused across pairs.
#[derive(Default)]
pub(crate) struct Scratch {
    /// (offset ns, exit burst index, size quality) of every candidate entry burst.
    cands: Vec<(u64, u32, f32)>,
    /// Best match quality per exit burst at the chosen lag.
    matched: Vec<f32>,
    /// Expected chance-match quality per exit burst.
    chance: Vec<f32>,
    /// `window-cosine`'s prefix sums: exit squares, cross products, entry squares.
    xx: Vec<f64>,
    xy: Vec<f64>,
    yy: Vec<f64>,
}

/// ln(bytes + one packet): one packet's worth is added so tiny bursts (keystrokes, whose
/// records are mostly overhead) compare as equal.
fn log_size(bytes: u64) -> f32 {
    (bytes as f64 + 1448.0).ln() as f32
}

/// How plausibly an entry burst carries an exit burst (0..=1), from their `log_size`s.
/// An entry burst may be larger (record overhead, other flows of the user, padding next
/// to the data), so growth is forgiven slowly (e-fold per 1.5 of log ratio); one clearly
/// smaller cannot have carried the exit bytes (e-fold per 0.3).
fn size_quality(exit: f32, entry: f32) -> f32 {
    let r = entry - exit;
    let q = if r >= 0.0 { -r / 1.5 } else { r / 0.3 };
    q.exp()
}

/// Weight of an exit burst: a large burst is less likely to be matched by chance (its
/// size must match too), so it counts more, but only logarithmically so one bulk
/// transfer does not outvote a flow's many small bursts.
fn weight(b: &Burst) -> f32 {
    (1.0 + (1.0 + b.bytes as f64 / 1448.0).ln()) as f32
}

/// `burst-match`: how well the exit flow's bursts find counterparts among the user's.
///
/// Every exit burst looks for entry bursts of the same direction whose start is the
/// burst's start plus 0..=`MAX_LAG_NS` (downstream: the entry sees it later) or minus
/// (upstream: the entry saw it first), and records the offset and the size quality. The
/// pair's latency is the offset window of ±`TOL_NS` that collects the most weighted
/// quality, shared by both directions (the path is the same). At that latency each exit
/// burst scores its best match quality minus the quality it would collect by chance at
/// a random latency (the candidates' quality times the window's share of the searched
/// range), so a user whose records are dense with bursts — heavy traffic, padding — is
/// not rewarded for it. The score is the weighted mean over exit bursts.
pub(crate) fn burst_match(exit: &Bursts, entry: &Bursts, s: &mut Scratch) -> f64 {
    s.cands.clear();
    s.matched.clear();
    s.chance.clear();
    let share = (2 * TOL_NS + 1) as f32 / MAX_LAG_NS as f32;
    let mut idx = 0u32;
    for d in 0..2 {
        let starts = &entry.starts[d];
        // Exit bursts are in start order, so the first candidate only moves forward.
        let mut first = match exit.dir[d].first() {
            Some(b) => starts.partition_point(|&t| t < b.start.saturating_sub(MAX_LAG_NS)),
            None => continue,
        };
        for (bi, b) in exit.dir[d].iter().enumerate() {
            let (lo, hi) = if d == 1 {
                (b.start, b.start + MAX_LAG_NS)
            } else {
                (b.start.saturating_sub(MAX_LAG_NS), b.start)
            };
            while first < starts.len() && starts[first] < lo {
                first += 1;
            }
            let mut chance = 0.0f32;
            let mut k = first;
            let lx = exit.log_size[d][bi];
            while k < starts.len() && starts[k] <= hi {
                let e = &entry.dir[d][k];
                let q = size_quality(lx, entry.log_size[d][k]);
                if q > 0.05 {
                    let off = if d == 1 {
                        e.start - b.start
                    } else {
                        b.start - e.start
                    };
                    s.cands.push((off, idx, q));
                    chance += q;
                }
                k += 1;
            }
            s.matched.push(0.0);
            s.chance.push((chance * share).min(1.0));
            idx += 1;
        }
    }
    let total_w: f32 = exit.weights.iter().sum();
    if total_w == 0.0 {
        return 0.0;
    }
    // The latency: the offset window of width 2·TOL_NS with the most weighted quality.
    s.cands.sort_unstable_by_key(|c| c.0);
    let w_of = |i: u32| exit.weights[i as usize];
    let (mut best, mut best_at) = (0.0f32, (0, 0));
    let mut sum = 0.0f32;
    let mut j = 0;
    for i in 0..s.cands.len() {
        sum += w_of(s.cands[i].1) * s.cands[i].2;
        while s.cands[i].0 - s.cands[j].0 > 2 * TOL_NS {
            sum -= w_of(s.cands[j].1) * s.cands[j].2;
            j += 1;
        }
        if sum > best {
            best = sum;
            best_at = (j, i);
        }
    }
    if best > 0.0 {
        for c in &s.cands[best_at.0..=best_at.1] {
            let m = &mut s.matched[c.1 as usize];
            *m = m.max(c.2);
        }
    }
    let mut score = 0.0f32;
    for (i, (&m, &p)) in s.matched.iter().zip(&s.chance).enumerate() {
        score += w_of(i as u32) * (m - p);
    }
    f64::from(score / total_w)
}

/// Length of a `window-cosine` window; windows overlap by half. Long enough for a
/// request and the start of its response (ten 50 ms bins a side), short enough that the
/// flow has many windows to vote (measured on 200 users, one seed, `profile:default`: 2 s windows
/// 0.64, 1 s 0.67, 500 ms 0.70, 250 ms 0.73; 500 ms keeps a window a shape, not a bin).
pub(crate) const WINDOW_NS: u64 = 500 * MS;

/// log1p of the per-bin packet counts of one observation point, computed once.
pub(crate) struct LogPkts([Vec<f32>; 2]);

impl LogPkts {
    /// From a series' per-bin packet counts.
    pub(crate) fn new(s: &super::Series) -> LogPkts {
        LogPkts(
            s.pkts
                .clone()
                .map(|v| v.into_iter().map(f32::ln_1p).collect()),
        )
    }
}

/// `window-cosine`: the exit flow's span (bins `a..=b`) cut into windows of `WINDOW_NS`
/// overlapping by half; each window in which the flow has packets votes the cosine
/// similarity of its log1p packet-count profile (both directions, bin by bin) with the
/// user's at the same lag; the score is the mean vote, maximised over lags 0..=max_lag
/// bins. Unlike one Pearson over the whole span, a window flooded by padding spends one
/// vote, not the whole score. The cosine is not centred: a bin where only one side has
/// packets lowers the vote, bins where neither has do not count.
#[allow(clippy::too_many_arguments)]
pub(crate) fn window_cosine(
    x: &LogPkts,
    y: &LogPkts,
    a: usize,
    b: usize,
    bin_ns: u64,
    max_lag: usize,
    s: &mut Scratch,
) -> f64 {
    let win = (WINDOW_NS / bin_ns).max(2) as usize;
    let step = win / 2;
    let n = b + 1 - a;
    // Prefix sums over the span, so each window costs O(1) per lag: the exit side's
    // squares once, the cross products and the entry side's squares once per lag.
    let (xx, xy, yy) = (&mut s.xx, &mut s.xy, &mut s.yy);
    xx.clear();
    xx.push(0.0);
    let mut acc = 0.0f64;
    for i in a..=b {
        let (u, d) = (f64::from(x.0[0][i]), f64::from(x.0[1][i]));
        acc += u * u + d * d;
        xx.push(acc);
    }
    let mut best = f64::NEG_INFINITY;
    for lag in 0..=max_lag {
        xy.clear();
        yy.clear();
        xy.push(0.0);
        yy.push(0.0);
        let (mut axy, mut ayy) = (0.0f64, 0.0f64);
        for i in a..=b {
            // Upstream the entry saw the bytes `lag` bins earlier, downstream later.
            let up = f64::from(i.checked_sub(lag).map_or(0.0, |j| y.0[0][j]));
            let down = f64::from(y.0[1].get(i + lag).copied().unwrap_or(0.0));
            axy += f64::from(x.0[0][i]) * up + f64::from(x.0[1][i]) * down;
            ayy += up * up + down * down;
            xy.push(axy);
            yy.push(ayy);
        }
        let (mut sum, mut votes) = (0.0f64, 0u32);
        let mut k = 0;
        loop {
            let end = (k + win).min(n);
            let wx = xx[end] - xx[k];
            if wx > 0.0 {
                votes += 1;
                let wy = yy[end] - yy[k];
                if wy > 0.0 {
                    sum += (xy[end] - xy[k]) / (wx * wy).sqrt();
                }
            }
            if end == n {
                break;
            }
            k += step;
        }
        let score = if votes > 0 {
            sum / f64::from(votes)
        } else {
            0.0
        };
        best = best.max(score);
    }
    best
}
