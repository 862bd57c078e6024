//! Property tests under a simulated clock with seeded randomness.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::*;

fn seed(n: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&n.to_le_bytes());
    s
}

/// Arrivals of a flow: (time, bytes), times non-decreasing, mixing bursts and gaps.
fn arrivals(n: u64, chunks: usize) -> Vec<(u64, usize)> {
    let mut rng = ChaCha20Rng::from_seed(seed(0xa11 ^ n));
    let mut t = 1_000 + rng.next_u64() % MS;
    (0..chunks)
        .map(|_| {
            // Mostly sub-millisecond gaps (bursts), sometimes a pause longer than the quiet period.
            t += match rng.next_u32() % 20 {
                0 => 600 * MS + rng.next_u64() % (400 * MS),
                1..=4 => rng.next_u64() % (20 * MS),
                _ => rng.next_u64() % (MS / 2),
            };
            let len = match rng.next_u32() % 4 {
                0 => 1 + rng.next_u32() as usize % 40,
                1 => 16_384,
                _ => 1 + rng.next_u32() as usize % 20_000,
            };
            (t, len)
        })
        .collect()
}

/// One departure as the simulated engine saw it.
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: u64,
    dep: Departure,
    /// Credit the engine offered for this poll.
    credit: usize,
}

/// Credit the simulated engine has: `None` is unlimited; `Some(w)` refills to `w` every ms.
struct Drive {
    credit_refill: Option<usize>,
    /// Extra lateness added to every wakeup (ns), to model a slow engine.
    late: u64,
}

const UNLIMITED: Drive = Drive {
    credit_refill: None,
    late: 0,
};

/// Runs one flow to the end: arrivals, then close, polling at every deadline.
fn drive(f: &mut FlowSched, arr: &[(u64, usize)], d: &Drive) -> Result<Vec<Sent>, Violation> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut now = 0u64;
    let mut credit = d.credit_refill.unwrap_or(usize::MAX);
    let mut next_refill = MS;
    let mut closed = false;
    for _ in 0..10_000_000 {
        while i < arr.len() && arr[i].0 <= now {
            f.on_data(now.max(arr[i].0), arr[i].1);
            i += 1;
        }
        if i == arr.len() && !closed {
            f.on_close(now);
            closed = true;
        }
        if d.credit_refill.is_some() && now >= next_refill {
            credit = d.credit_refill.unwrap_or(0);
            next_refill = now - now % MS + MS;
        }
        while let Some(dep) = f.poll(now, credit)? {
            out.push(Sent {
                at: now,
                dep,
                credit,
            });
            if let Departure::Data { bytes, .. } = dep {
                credit -= bytes;
            }
        }
        if f.is_finished() {
            return Ok(out);
        }
        let mut next = u64::MAX;
        if i < arr.len() {
            next = arr[i].0;
        }
        if let Some(t) = f.next_deadline() {
            // A deadline that is due but blocked on credit waits for the next refill.
            let t = if t <= now { next_refill } else { t + d.late };
            next = next.min(t);
        }
        if next == u64::MAX {
            break;
        }
        now = next.max(now);
    }
    assert!(
        f.is_finished(),
        "flow never finished: {} queued",
        f.queued()
    );
    Ok(out)
}

/// Arrival time of byte `offset` of the flow.
fn arrival_of(arr: &[(u64, usize)], offset: usize) -> u64 {
    let mut end = 0;
    for &(t, len) in arr {
        end += len;
        if offset < end {
            return t;
        }
    }
    panic!("byte {offset} never arrived");
}

/// Order, never early, conservation, credit and (with unlimited credit) the hold cap.
fn check_flow(p: &Params, arr: &[(u64, usize)], sent: &[Sent], credit_limited: bool) {
    let total: usize = arr.iter().map(|a| a.1).sum();
    let mut off = 0usize;
    let mut last = 0u64;
    for s in sent {
        assert!(s.at >= last, "departures out of order");
        last = s.at;
        match s.dep {
            Departure::Data { bytes, frame_len } => {
                assert!(bytes >= 1 && bytes <= s.credit && bytes <= p.max_payload);
                assert!(frame_len == 0 || frame_len >= FRAME_HEADER + bytes);
                // Never early: the newest byte of the frame had arrived.
                assert!(
                    arrival_of(arr, off + bytes - 1) <= s.at,
                    "byte sent before it arrived"
                );
                let hold = s.at - arrival_of(arr, off);
                if !credit_limited {
                    assert!(
                        hold <= p.hold_cap_ns,
                        "{}: hold {hold} over cap",
                        p.mode.name()
                    );
                }
                if p.mode == Mode::Off && !credit_limited {
                    assert_eq!(hold, 0, "off mode delayed a byte");
                }
                if p.mode == Mode::Constant {
                    assert_eq!(frame_len, p.cell);
                }
                off += bytes;
            }
            Departure::Padding { frame_len } => {
                assert!(matches!(p.mode, Mode::Constant | Mode::Adaptive));
                if p.mode == Mode::Constant {
                    assert_eq!(frame_len, p.cell, "padding cell differs from data cells");
                }
            }
        }
    }
    assert_eq!(off, total, "every queued byte departs exactly once");
}

fn test_params(mode: Mode) -> Params {
    Params {
        hold_cap_ns: 40 * MS,
        poisson_mean_ns: 8 * MS,
        interval_ns: 5 * MS,
        cell: 4 * SEGMENT_FRAME,
        quiet_ns: 200 * MS,
        pad_multiple: 7,
        budget_min: 10,
        budget_max: 60,
        window_min_ns: 50 * MS,
        window_max_ns: 400 * MS,
        burst_delay_max_ns: 30 * MS,
        ..Params::OFF.with_mode(mode)
    }
}

/// Adaptive with a burst delay: the first bytes after a silence wait at most the delay,
/// bytes that follow them within the gap leave with them, and the draws vary.
#[test]
fn a_burst_start_waits_at_most_its_delay_and_the_rest_follows_it() {
    let p = Params {
        burst_delay_max_ns: 100 * MS,
        burst_gap_ns: 20 * MS,
        hold_cap_ns: 100 * MS,
        budget_min: 0,
        budget_max: 0,
        ..Params::OFF.with_mode(Mode::Adaptive)
    };
    let mut waits = Vec::new();
    for n in 0..20 {
        let mut f = FlowSched::new(p, seed(n), 0);
        // Two bursts: 3 chunks 1 ms apart at 0 and at 500 ms.
        let arr = [
            (0, 100),
            (MS, 100),
            (2 * MS, 100),
            (500 * MS, 100),
            (501 * MS, 100),
        ];
        let sent = drive(&mut f, &arr, &UNLIMITED).expect("no violation");
        check_flow(&p, &arr, &sent, false);
        let data: Vec<u64> = sent
            .iter()
            .filter(|s| matches!(s.dep, Departure::Data { .. }))
            .map(|s| s.at)
            .collect();
        let first_of = |t0: u64| data.iter().copied().find(|&t| t >= t0).unwrap();
        for t0 in [0, 500 * MS] {
            let w = first_of(t0) - t0;
            assert!(w <= p.burst_delay_max_ns, "burst at {t0} waited {w}");
            waits.push(w);
        }
        // Bytes within the gap never wait longer than the burst's start did.
        assert!(
            data.iter()
                .all(|&t| t <= first_of(0).max(2 * MS) || t >= 500 * MS)
        );
    }
    waits.sort_unstable();
    assert!(waits[waits.len() - 1] - waits[0] > 20 * MS, "{waits:?}");
}

#[test]
fn every_mode_keeps_order_timing_and_bytes() {
    for mode in Mode::ALL {
        for n in 0..12 {
            let p = test_params(mode);
            let arr = arrivals(n, 150);
            let mut f = FlowSched::new(p, seed(n), 0);
            let sent = drive(&mut f, &arr, &UNLIMITED).expect("no violation");
            check_flow(&p, &arr, &sent, false);
            let st = f.stats();
            assert_eq!(
                st.real_bytes as usize,
                arr.iter().map(|a| a.1).sum::<usize>()
            );
            assert_eq!(st.violations, 0);
            if mode == Mode::Constant {
                // Polled exactly at deadlines: every cell sits on the grid unless the cap freed it.
                let on_grid = sent.iter().filter(|s| s.at % p.interval_ns == 0).count() as u64;
                assert_eq!(on_grid + st.cap_releases, sent.len() as u64);
                assert!(st.padding_frames > 0);
            }
        }
    }
}

#[test]
fn every_mode_under_scarce_credit_and_a_late_engine() {
    for mode in Mode::ALL {
        for n in 0..6 {
            let p = test_params(mode);
            let arr = arrivals(100 + n, 120);
            let mut f = FlowSched::new(p, seed(n), 0);
            let d = Drive {
                credit_refill: Some(3_000 + n as usize * 5_000),
                late: n * 700_000,
            };
            let sent = drive(&mut f, &arr, &d).expect("no violation");
            check_flow(&p, &arr, &sent, true);
        }
    }
}

#[test]
fn off_mode_draws_no_randomness_and_releases_at_once() {
    let mut f = FlowSched::new(Params::OFF, seed(1), 0);
    for i in 1..1000u64 {
        f.on_data(i * 10, 40_000);
        let mut got = 0;
        while let Some(Departure::Data { bytes, frame_len }) = f.poll(i * 10, usize::MAX).unwrap() {
            assert_eq!(frame_len, 0);
            assert!(bytes <= MAX_DATA);
            got += bytes;
        }
        assert_eq!(got, 40_000);
        assert_eq!(f.next_deadline(), None);
    }
    assert_eq!(f.rng.get_word_pos(), 0, "off mode drew random numbers");
    assert_eq!(f.stats().max_hold_ns, 0);
}

#[test]
fn constant_stops_after_quiet_period_on_a_cell_multiple_and_restarts() {
    let p = test_params(Mode::Constant);
    let mut f = FlowSched::new(p, seed(3), 0);
    let mut cells = Vec::new();
    f.on_data(MS, 100);
    let mut now = MS;
    // Burst one, then silence.
    while let Some(t) = f.next_deadline() {
        now = t.max(now);
        while let Some(d) = f.poll(now, usize::MAX).unwrap() {
            cells.push((now, d));
        }
    }
    let burst = cells.len();
    assert_eq!(burst % p.pad_multiple as usize, 0, "burst of {burst} cells");
    assert!(
        cells.last().unwrap().0 >= p.quiet_ns,
        "stopped before the quiet period"
    );
    assert!(!f.is_finished(), "open flow is idle, not finished");
    // New data restarts on the same grid.
    let t = now + 123_456;
    f.on_data(t, 10);
    let next = f.next_deadline().unwrap();
    assert!(next >= t && next % p.interval_ns == 0 && next - t < p.interval_ns);
    f.on_close(t);
    while let Some(d) = f.next_deadline() {
        now = d.max(now);
        while let Some(d) = f.poll(now, usize::MAX).unwrap() {
            cells.push((now, d));
        }
    }
    assert!(f.is_finished());
    assert_eq!((cells.len() - burst) % p.pad_multiple as usize, 0);
}

#[test]
fn constant_keeps_the_rate_with_padding_when_credit_runs_out() {
    let p = test_params(Mode::Constant);
    let mut f = FlowSched::new(p, seed(4), 0);
    f.on_data(0, 100_000);
    let cell = p.cell;
    let payload = cell - FRAME_HEADER;
    assert_eq!(
        f.poll(0, 0).unwrap(),
        Some(Departure::Padding { frame_len: cell })
    );
    assert_eq!(f.poll(0, usize::MAX).unwrap(), None, "one cell per slot");
    let t = p.interval_ns;
    let d = f.poll(t, usize::MAX).unwrap();
    assert_eq!(
        d,
        Some(Departure::Data {
            bytes: payload,
            frame_len: cell
        })
    );
    assert_eq!(f.queued(), 100_000 - payload);
}

/// Runs `p` for `ms` milliseconds the way the engine does: every ms, `source(t, held)`
/// adds bytes to a socket that holds `held`, the engine reads what a 256 KiB queue has
/// room for, then sends everything due. Returns each DATA departure's (time, bytes).
fn run_source(
    p: Params,
    ms: u64,
    mut source: impl FnMut(u64, usize) -> usize,
) -> Vec<(u64, usize)> {
    const QUEUE: usize = 256 * 1024;
    let mut f = FlowSched::new(p, seed(17), 0);
    let (mut socket, mut out) = (0, Vec::new());
    for step in 0..ms {
        let now = step * MS;
        socket += source(now, socket);
        let n = socket.min(QUEUE - f.queued());
        if n > 0 {
            f.on_data(now, n);
            socket -= n;
        }
        while let Some(d) = f.poll(now, usize::MAX).expect("no violation") {
            if let Departure::Data { bytes, frame_len } = d {
                assert_eq!(frame_len, p.cell);
                out.push((now, bytes));
            }
        }
    }
    out
}

/// When the last of `total` bytes left (ns); panics if some never did.
fn done_at(sent: &[(u64, usize)], total: usize) -> u64 {
    assert_eq!(
        sent.iter().map(|d| d.1).sum::<usize>(),
        total,
        "bytes missing"
    );
    sent.last().map_or(0, |d| d.0)
}

/// The bug: bytes beyond the engine's 256 KiB queue waited in socket buffers the cap did
/// not reach, so a high-security download moved one queue-full per 2 s cap (4.7 MB: 35 s).
#[test]
fn high_security_bulk_is_not_throttled_to_a_queue_per_cap() {
    let p = Profile::HighSecurity.params(Direction::Down);
    let total = 4_700_000;
    let sent = run_source(p, 10_000, |t, _| if t == 0 { total } else { 0 });
    let done = done_at(&sent, total);
    assert!(
        done <= p.hold_cap_ns + 50 * MS,
        "4.7 MB took {} ms",
        done / MS
    );
    // Before the cap, the bytes kept to the grid: one cell per slot, at most.
    for (i, d) in sent.iter().take_while(|d| d.0 < p.hold_cap_ns).enumerate() {
        assert_eq!(
            d.0 % p.interval_ns,
            0,
            "cell {i} off the grid at {} ns",
            d.0
        );
    }
}

/// The same bug through a path with delay: a window-limited sender (128 KiB in flight)
/// refills the socket only a round trip (50 ms, four cell intervals) after the drain
/// emptied it. A drain that ended at the first gap longer than an interval throttled
/// this to 16.8 s.
#[test]
fn high_security_bulk_refilled_a_round_trip_apart_stays_drained() {
    let p = Profile::HighSecurity.params(Direction::Down);
    let (total, window) = (4_700_000, 128 * 1024);
    let mut left = total;
    let sent = run_source(p, 20_000, |t, held| {
        let n = if t % (50 * MS) == 0 {
            left.min(window - held)
        } else {
            0
        };
        left -= n;
        n
    });
    let done = done_at(&sent, total);
    // 2 s on the grid, then 128 KiB per 50 ms: about 3.8 s.
    assert!(done <= 4500 * MS, "4.7 MB took {} ms", done / MS);
}

/// A drain lasts while the source outpaces the cells, by bytes and not by the gaps
/// between writes: a source slower than the cells that writes often goes back on the
/// grid within a cap's worth of cells, and stays there.
#[test]
fn a_drain_ends_when_the_source_falls_behind_the_cells() {
    // Upstream: one 1430-byte cell every 40 ms, about 35.6 KB/s.
    let p = Profile::HighSecurity.params(Direction::Up);
    // 200 KB at once, then 200 bytes every 20 ms (10 KB/s) for 18 s.
    let sent = run_source(p, 20_000, |t, _| match t {
        0 => 200_000,
        t if t % (20 * MS) == 0 && t <= 18_000 * MS => 200,
        _ => 0,
    });
    let off_grid: Vec<u64> = sent
        .iter()
        .map(|d| d.0)
        .filter(|t| t % p.interval_ns != 0)
        .collect();
    assert!(
        off_grid.iter().any(|&t| t >= p.hold_cap_ns),
        "the cap never started a drain"
    );
    // At most a cap's worth of cells (50 × 1423 bytes) ahead, falling 25.6 KB/s behind:
    // the drain is over 2.8 s after it began.
    let over = p.hold_cap_ns + 2900 * MS;
    let late = off_grid.iter().filter(|&&t| t > over).count();
    assert_eq!(late, 0, "{late} cells off the grid after {} ms", over / MS);
    // And a fast source stays drained: 20 KB every 5 ms after the backlog.
    let fast = run_source(p, 4_000, |t, _| match t {
        0 => 200_000,
        t if t % (5 * MS) == 0 => 20_000,
        _ => 0,
    });
    let tail = fast.iter().filter(|d| d.0 > 3000 * MS);
    assert!(tail.clone().count() > 0);
    assert!(
        tail.clone().all(|d| d.0 % (5 * MS) == 0),
        "a fast source's bytes waited for the grid during a drain"
    );
}

#[test]
fn constant_skips_missed_slots_instead_of_bursting() {
    let p = Params {
        hold_cap_ns: 10_000 * MS,
        ..test_params(Mode::Constant)
    };
    let mut f = FlowSched::new(p, seed(4), 0);
    f.on_data(0, 1_000_000);
    assert!(f.poll(0, usize::MAX).unwrap().is_some());
    // The engine wakes 10.5 intervals late: at most one cell, and the slots between are gone.
    let late = 10 * p.interval_ns + p.interval_ns / 2;
    let mut n = 0;
    while f.poll(late, usize::MAX).unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 0, "late slot beyond the slack must be skipped");
    assert_eq!(f.stats().missed_slots, 10);
    assert_eq!(f.next_deadline(), Some(11 * p.interval_ns));
}

#[test]
fn topological_is_two_band_jitter_with_mean_two_ms() {
    let p = Params {
        hold_cap_ns: 50 * MS,
        ..Params::OFF.with_mode(Mode::Topological)
    };
    let mut f = FlowSched::new(p, seed(5), 0);
    let n = 200_000u64;
    let (mut sum, mut upper, mut lower_sum) = (0u64, 0u64, 0u64);
    for i in 0..n {
        // 10 ms apart, so no chunk waits behind its predecessor: release - arrival = delay.
        let t = i * 10 * MS;
        f.on_data(t, 1);
        let d = f.next_deadline().unwrap() - t;
        assert!(
            (MS..MS * 3 / 2).contains(&d) || (MS * 5 / 2..3 * MS).contains(&d),
            "{d}"
        );
        sum += d;
        if d >= 2 * MS {
            upper += 1;
        } else {
            lower_sum += d;
        }
        assert!(f.poll(t + d, 1).unwrap().is_some());
    }
    let mean = sum as f64 / n as f64 / MS as f64;
    assert!((mean - 2.0).abs() < 0.01, "mean {mean} ms");
    let frac = upper as f64 / n as f64;
    assert!((frac - 0.5).abs() < 0.01, "upper band {frac}");
    let lower_mean = lower_sum as f64 / (n - upper) as f64 / MS as f64;
    assert!(
        (lower_mean - 1.25).abs() < 0.01,
        "lower band mean {lower_mean}"
    );
}

#[test]
fn jitter_draws_its_bins_by_seeded_weights() {
    let p = Params::OFF.with_mode(Mode::Jitter);
    let draws = |s: u64| {
        let mut f = FlowSched::new(p, seed(s), 0);
        let mut hist = [0u32; 100];
        for i in 0..50_000u64 {
            let t = i * 20 * MS;
            f.on_data(t, 1);
            let d = f.next_deadline().unwrap() - t;
            assert!(d >= p.jitter_min_ns && d <= p.jitter_max_ns);
            let step = (p.jitter_max_ns - p.jitter_min_ns) / 99;
            assert_eq!((d - p.jitter_min_ns) % step, 0, "delay off the bins");
            hist[((d - p.jitter_min_ns) / step) as usize] += 1;
            f.poll(t + d, 1).unwrap();
        }
        hist
    };
    let (a, b) = (draws(1), draws(2));
    assert!(a.iter().all(|&c| c > 0), "every bin reachable");
    let diff: u32 = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).sum();
    assert!(diff > 5_000, "two flows share a distribution (L1 {diff})");
}

#[test]
fn alias_table_matches_its_weights() {
    let w = [1.0, 2.0, 3.0, 4.0, 0.5, 9.5];
    let t = modes::AliasTable::new(&w);
    let mut rng = ChaCha20Rng::from_seed(seed(9));
    let mut c = [0u32; 6];
    let n = 400_000;
    for _ in 0..n {
        c[t.sample(&mut rng)] += 1;
    }
    for (i, &wi) in w.iter().enumerate() {
        let expect = wi / 20.0;
        let got = f64::from(c[i]) / f64::from(n);
        assert!((got - expect).abs() < 0.004, "bin {i}: {got} vs {expect}");
    }
}

#[test]
fn poisson_delays_have_the_configured_mean() {
    let p = Params {
        hold_cap_ns: 1000 * MS,
        poisson_mean_ns: 8 * MS,
        ..Params::OFF.with_mode(Mode::Poisson)
    };
    let mut f = FlowSched::new(p, seed(6), 0);
    let mut sum = 0u64;
    let n = 50_000u64;
    for i in 0..n {
        let t = i * 2000 * MS;
        f.on_data(t, 1);
        let d = f.next_deadline().unwrap() - t;
        sum += d;
        f.poll(t + d, 1).unwrap();
    }
    let mean = sum as f64 / n as f64 / MS as f64;
    assert!((mean - 8.0).abs() < 0.2, "mean {mean} ms");
}

#[test]
fn adaptive_spends_its_budget_in_a_rayleigh_front_without_delaying_data() {
    let scale = 200 * MS;
    let p = Params {
        window_min_ns: scale,
        window_max_ns: scale,
        burst_delay_max_ns: 0,
        ..test_params(Mode::Adaptive)
    };
    let mut spent = Vec::new();
    let mut all = Vec::new();
    for n in 0..300 {
        let mut f = FlowSched::new(p, seed(n), 0);
        f.on_data(0, 5_000);
        f.on_close(0);
        assert!(matches!(
            f.poll(0, usize::MAX).unwrap(),
            Some(Departure::Data { .. })
        ));
        let mut pads = Vec::new();
        while let Some(t) = f.next_deadline() {
            while let Some(d) = f.poll(t, usize::MAX).unwrap() {
                assert_eq!(
                    d,
                    Departure::Padding {
                        frame_len: p.padding_len
                    }
                );
                pads.push(t);
            }
        }
        assert!(f.is_finished());
        assert!(
            pads.windows(2).all(|w| w[0] <= w[1]),
            "padding times ascend"
        );
        assert!((p.budget_min as usize..=p.budget_max as usize).contains(&pads.len()));
        assert_eq!(f.stats().padding_frames as usize, pads.len());
        spent.push(pads.len());
        all.extend(pads);
    }
    let mean = spent.iter().sum::<usize>() as f64 / spent.len() as f64;
    assert!((mean - 35.0).abs() < 3.0, "mean budget {mean}");
    // Rayleigh(σ): P(t <= σ) = 1 - e^(-1/2) ≈ 0.393; median σ·sqrt(2 ln 2) ≈ 1.177 σ.
    let below = all.iter().filter(|&&t| t <= scale).count() as f64 / all.len() as f64;
    assert!((below - 0.3935).abs() < 0.01, "P(t <= scale) = {below}");
    all.sort_unstable();
    let median = all[all.len() / 2] as f64 / scale as f64;
    assert!((median - 1.1774).abs() < 0.02, "median {median} scales");
}

/// Runs `arr` through a faulty flow and returns the first violation.
fn violation_of(p: Params, fault: Fault, arr: &[(u64, usize)], credit: usize) -> Violation {
    let mut f = FlowSched::new(p, seed(7), 0);
    f.inject(fault);
    let d = Drive {
        credit_refill: Some(credit),
        late: 0,
    };
    let v = drive(&mut f, arr, &d).expect_err("fault went unnoticed");
    // Dead from then on: the same error, no deadline.
    assert_eq!(f.poll(u64::MAX, usize::MAX), Err(v));
    assert_eq!(f.next_deadline(), None);
    assert!(!f.is_finished());
    v
}

#[test]
fn each_verifier_check_catches_its_fault() {
    let arr = arrivals(1, 80);
    let big_poisson = Params {
        poisson_mean_ns: 500 * MS,
        ..test_params(Mode::Poisson)
    };
    let cases = [
        (big_poisson, Fault::IgnoreCap, Check::HoldCap),
        (test_params(Mode::Jitter), Fault::EarlyRelease, Check::Early),
        (
            test_params(Mode::Jitter),
            Fault::SampleOutOfRange,
            Check::DelayBounds,
        ),
        (
            test_params(Mode::Topological),
            Fault::SampleOutOfRange,
            Check::DelayBounds,
        ),
        (
            test_params(Mode::Poisson),
            Fault::IgnoreRelease,
            Check::Early,
        ),
        (test_params(Mode::Off), Fault::OverspendCredit, Check::Size),
        (
            test_params(Mode::Constant),
            Fault::OverspendCredit,
            Check::Size,
        ),
        (
            test_params(Mode::Constant),
            Fault::WrongCellSize,
            Check::Size,
        ),
        (test_params(Mode::Constant), Fault::OffGrid, Check::Grid),
        (
            test_params(Mode::Constant),
            Fault::DrainWithoutCap,
            Check::Grid,
        ),
        (test_params(Mode::Constant), Fault::StickyDrain, Check::Grid),
        (
            test_params(Mode::Adaptive),
            Fault::OverBudget,
            Check::PaddingBudget,
        ),
        (test_params(Mode::Topological), Fault::TopoK, Check::TopoK),
        (
            test_params(Mode::Topological),
            Fault::TopoRebuild,
            Check::TopoRebuild,
        ),
    ];
    for (p, fault, check) in cases {
        let v = violation_of(p, fault, &arr, 2_000);
        assert_eq!(v.check, check, "{fault:?} in {}: {v}", p.mode.name());
        assert!(!v.to_string().is_empty());
    }
}

#[test]
fn topological_window_check_catches_a_biased_phase() {
    let p = test_params(Mode::Topological);
    let mut f = FlowSched::new(p, seed(8), 0);
    f.inject(Fault::TopoBias);
    let mut first_err = None;
    for i in 0..2048u64 {
        let t = i * 5 * MS;
        f.on_data(t, 1);
        if let Err(v) = f.poll(t + 3 * MS, 10) {
            first_err = Some((i, v));
            break;
        }
    }
    let (i, v) = first_err.expect("biased k went unnoticed");
    assert_eq!(v.check, Check::TopoWindow);
    assert_eq!(i, 1023, "caught at the end of the first window");
    // Unbiased flows pass many windows.
    let mut f = FlowSched::new(p, seed(8), 0);
    for i in 0..20_480u64 {
        let t = i * 5 * MS;
        f.on_data(t, 1);
        f.poll(t + 3 * MS, 10)
            .expect("honest draws pass the window check");
    }
}

#[test]
fn backwards_time_and_data_after_close_are_violations() {
    let mut f = FlowSched::new(Params::OFF, seed(1), 0);
    f.on_data(10 * MS, 5);
    f.poll(10 * MS, 100).unwrap();
    // An engine clock that goes backwards: bytes "arrive" and leave before the last departure.
    f.on_data(4 * MS, 5);
    let v = f.poll(5 * MS, 100).unwrap_err();
    assert_eq!(v.check, Check::NonMonotonic);

    let mut f = FlowSched::new(Params::OFF, seed(1), 0);
    f.on_close(0);
    assert!(f.is_finished());
    f.on_data(1, 5);
    assert_eq!(f.next_deadline(), Some(0));
    assert_eq!(f.poll(1, 100).unwrap_err().check, Check::DataAfterClose);
}

#[test]
fn profiles_round_trip_and_validate() {
    for p in Profile::ALL {
        assert_eq!(Profile::parse(p.name()), Some(p));
        assert_eq!(Profile::from_wire(p.wire()), Some(p));
        assert_ne!(p.wire(), 0, "0 on the wire means the relay's default");
        for dir in [Direction::Up, Direction::Down] {
            p.params(dir)
                .validate()
                .expect("profile parameters are valid");
        }
    }
    assert_eq!(Profile::from_wire(0), None);
    assert_eq!(Profile::parse("paranoid"), None);
    assert_eq!(Profile::Performance.params(Direction::Up).mode, Mode::Off);
    for m in Mode::ALL {
        assert_eq!(Mode::parse(m.name()), Some(m));
    }
}

#[test]
fn ten_thousand_flows_in_one_simulated_loop() {
    let mut flows = Vec::new();
    let mut heap = BinaryHeap::new();
    let mut rng = ChaCha20Rng::from_seed(seed(10));
    let mut remaining = Vec::new();
    let mut expect = Vec::new();
    for i in 0..10_000usize {
        let mode = Mode::ALL[i % Mode::ALL.len()];
        let start = rng.next_u64() % (1000 * MS);
        let mut f = FlowSched::new(test_params(mode), seed(i as u64), start);
        // Three writes each, the last followed by close.
        let arr: Vec<(u64, usize)> = (0..3)
            .map(|k| (start + k * 7 * MS, 1 + rng.next_u32() as usize % 30_000))
            .collect();
        expect.push(arr.iter().map(|a| a.1).sum::<usize>());
        f.on_data(arr[0].0, arr[0].1);
        heap.push(Reverse((arr[0].0, i)));
        if let Some(d) = f.next_deadline() {
            heap.push(Reverse((d, i)));
        }
        flows.push(f);
        remaining.push(arr[1..].to_vec());
    }
    let mut got = vec![0usize; flows.len()];
    let mut wakeups = 0u64;
    while let Some(Reverse((now, i))) = heap.pop() {
        wakeups += 1;
        let f = &mut flows[i];
        while remaining[i].first().is_some_and(|a| a.0 <= now) {
            let (t, len) = remaining[i].remove(0);
            f.on_data(t, len);
            if remaining[i].is_empty() {
                f.on_close(t);
            }
        }
        while let Some(d) = f.poll(now, 64 * 1024).expect("no violation") {
            if let Departure::Data { bytes, .. } = d {
                got[i] += bytes;
            }
        }
        let next = [f.next_deadline(), remaining[i].first().map(|a| a.0)];
        if let Some(t) = next.into_iter().flatten().min() {
            heap.push(Reverse((t.max(now + 1), i)));
        }
    }
    assert!(flows.iter().all(FlowSched::is_finished));
    assert_eq!(got, expect);
    assert!(wakeups > 10_000);
}

#[test]
fn adaptive_bursts_stay_within_the_budget() {
    let p = Params {
        padding_burst: 8,
        ..test_params(Mode::Adaptive)
    };
    let mut grouped = 0;
    for n in 0..100 {
        let mut f = FlowSched::new(p, seed(n), 0);
        f.on_close(0);
        let mut times = Vec::new();
        while let Some(t) = f.next_deadline() {
            while let Some(d) = f.poll(t, 0).unwrap() {
                assert_eq!(
                    d,
                    Departure::Padding {
                        frame_len: p.padding_len
                    }
                );
                times.push(t);
            }
        }
        assert!(f.is_finished());
        assert!(times.len() <= p.budget_max as usize);
        grouped += times.windows(2).filter(|w| w[0] == w[1]).count();
    }
    assert!(
        grouped > 1000,
        "padding frames did not come in bursts ({grouped})"
    );
}
