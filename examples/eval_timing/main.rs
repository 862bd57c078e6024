//! How well does each timing mode resist flow correlation, and at what cost?
//!
//! A seeded generator makes user sessions (web-like, bulk and interactive flows); every
//! flow goes through `qnet::sched::FlowSched` in simulation, upstream at the client and
//! downstream at the relay. An entry observer sees each user's records (sizes and
//! times only, every flow of the user multiplexed); an exit observer sees each flow's
//! real packets between relay and destination, 20–80 ms away plus jitter. Correlators
//! then try to match every exit flow to its user. Not modelled: TCP congestion
//! control, flow-control credit (unlimited here), cross traffic at the relay.
//!
//! `cargo run --release --example eval_timing -- [--users N] [--seeds N] [--secs S]
//! [--window-ms W] [--quick] [--check] [--rows a,b*,…]` (see `scripts/eval-timing`).
//!
//! For the real run through the tunnel (`scripts/eval-timing-real`): `--flows-per-user N`
//! fixes the generator's flow count, `--emit-flows FILE` writes the first seed's flows as
//! CSV (for a replay) and exits, `--traces DIR` scores recorded traces instead of a
//! simulation (the same correlators and metrics), and `--summary FILE` appends one CSV
//! line per configuration.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use qnet::sched::{
    Departure, Direction, FRAME_HEADER, FlowSched, MS, Mode, Params, Profile, RECORD_OVERHEAD,
    SEGMENT_FRAME,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

mod burst;
mod mb;
mod regulate;
mod session;
use maybenot_machines::StaticMachine;
use session::{Ev, SessionPad};

/// TCP payload per packet on the exit side.
const MSS: u32 = 1448;

struct Opts {
    users: usize,
    seeds: u64,
    secs: u64,
    window_ms: u64,
    max_lag: usize,
    check: bool,
    sweep: bool,
    rows: Option<Vec<String>>,
    /// Flows per user instead of the generator's 3–8.
    flows_per_user: Option<u32>,
    emit_flows: Option<String>,
    traces: Option<String>,
    summary: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: eval_timing [--users N] [--seeds N] [--secs S] [--window-ms W] [--max-lag L] [--quick] [--check] [--rows off,jitter,…] [--flows-per-user N] [--emit-flows FILE] [--traces DIR] [--summary FILE]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        users: 200,
        seeds: 5,
        secs: 40,
        window_ms: 50,
        max_lag: 4,
        check: false,
        sweep: false,
        rows: None,
        flows_per_user: None,
        emit_flows: None,
        traces: None,
        summary: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "--users" => o.users = num() as usize,
            "--seeds" => o.seeds = num(),
            "--secs" => o.secs = num(),
            "--window-ms" => o.window_ms = num(),
            "--max-lag" => o.max_lag = num() as usize,
            "--quick" => {
                o.users = 60;
                o.seeds = 2;
                o.secs = 20;
            }
            "--check" => o.check = true,
            "--sweep" => o.sweep = true,
            "--flows-per-user" => o.flows_per_user = Some(num().max(1) as u32),
            "--emit-flows" => o.emit_flows = Some(args.next().unwrap_or_else(|| usage())),
            "--traces" => o.traces = Some(args.next().unwrap_or_else(|| usage())),
            "--summary" => o.summary = Some(args.next().unwrap_or_else(|| usage())),
            "--rows" => {
                let v = args.next().unwrap_or_else(|| usage());
                o.rows = Some(v.split(',').map(str::to_owned).collect());
            }
            _ => usage(),
        }
    }
    if o.users < 2 || o.seeds == 0 || o.secs == 0 || o.window_ms == 0 {
        usage();
    }
    o
}

/// The flow tag of the byte that opens an early session (no flow's: never at the exit).
const OPENER: u32 = u32::MAX;

/// Rows whose name ends so run one scheduler per user session (all its flows in one
/// FIFO) instead of one per flow.
const PER_SESSION: &str = "(per session)";

/// One configuration: a name, the per-flow schedules, and optionally a session-level
/// padding defense run at both ends over each user's whole session.
struct Row {
    name: String,
    up: Params,
    down: Params,
    pad: Option<Arc<dyn SessionPad>>,
    /// A regulator in place of the flow schedulers.
    reg: Option<Regulation>,
    /// Per-session rows: the session opens a uniform 0..=this (ns) before its first flow,
    /// and its scheduler starts then (as a session opened at program start would).
    lead_ns: u64,
}

impl Row {
    fn new(name: String, up: Params, down: Params) -> Row {
        Row {
            name,
            up,
            down,
            pad: None,
            reg: None,
            lead_ns: 0,
        }
    }
    /// A row whose session `pad` pads, the flow schedulers off.
    fn padded(name: String, pad: Arc<dyn SessionPad>) -> Row {
        Row {
            pad: Some(pad),
            ..Row::new(name, Params::OFF, Params::OFF)
        }
    }
    /// A row whose data `reg` holds, the flow schedulers off.
    fn regulated(name: String, reg: Regulation) -> Row {
        Row {
            reg: Some(reg),
            ..Row::new(name, Params::OFF, Params::OFF)
        }
    }
    /// Both rows simulate the same thing, so one run serves both. A padder or regulator
    /// is never compared: rows with one always run.
    fn runs_as(&self, o: &Row) -> bool {
        let plain = |r: &Row| r.pad.is_none() && r.reg.is_none();
        plain(self)
            && plain(o)
            && (self.up, self.down, self.lead_ns) == (o.up, o.down, o.lead_ns)
            && self.per_session() == o.per_session()
    }
    fn per_session(&self) -> bool {
        self.name.ends_with(PER_SESSION)
    }
}

/// The configurations compared: each mode with representative parameters, then the profiles.
fn rows(sweep: bool) -> Vec<Row> {
    let same = |name: &str, p: Params| Row::new(name.to_owned(), p, p);
    let mut v = vec![
        same("off", Params::OFF),
        same("jitter", Params::OFF.with_mode(Mode::Jitter)),
        same("topological", Params::OFF.with_mode(Mode::Topological)),
        same(
            "poisson",
            Params {
                poisson_mean_ns: 20 * MS,
                hold_cap_ns: 200 * MS,
                ..Params::OFF.with_mode(Mode::Poisson)
            },
        ),
        // Tamaraw's published rates: outgoing every 40 ms, incoming every 12 ms, counts
        // padded to multiples of 100; cells fill one TCP segment.
        Row::new(
            "constant".to_owned(),
            Params {
                interval_ns: 40 * MS,
                cell: SEGMENT_FRAME,
                pad_multiple: 100,
                quiet_ns: 500 * MS,
                hold_cap_ns: 2000 * MS,
                ..Params::OFF.with_mode(Mode::Constant)
            },
            Params {
                interval_ns: 12 * MS,
                cell: SEGMENT_FRAME,
                pad_multiple: 100,
                quiet_ns: 500 * MS,
                hold_cap_ns: 2000 * MS,
                ..Params::OFF.with_mode(Mode::Constant)
            },
        ),
        same("adaptive", Params::OFF.with_mode(Mode::Adaptive)),
    ];
    if sweep {
        // Candidates the profiles were chosen from (docs/TIMING.md).
        let ad = |budget: (u32, u32), win: (u64, u64)| Params {
            budget_min: budget.0,
            budget_max: budget.1,
            window_min_ns: win.0 * MS,
            window_max_ns: win.1 * MS,
            ..Params::OFF.with_mode(Mode::Adaptive)
        };
        for (bu, bd, win, burst) in [
            ((10, 60), (20, 120), (500, 3000), 1),
            ((20, 100), (40, 200), (500, 3000), 1),
            ((10, 60), (40, 200), (2000, 8000), 1),
            ((20, 100), (40, 200), (500, 3000), 20),
            ((20, 100), (40, 200), (1000, 5000), 40),
            ((10, 60), (60, 300), (1000, 5000), 60),
            ((10, 60), (40, 200), (500, 3000), 40),
        ] {
            for session in ["", PER_SESSION] {
                let a = |b| Params {
                    padding_burst: burst,
                    ..ad(b, win)
                };
                v.push(Row::new(
                    format!(
                        "adaptive up {}-{} down {}-{} w {}-{}ms burst {burst} {session}",
                        bu.0, bu.1, bd.0, bd.1, win.0, win.1
                    ),
                    a(bu),
                    a(bd),
                ));
            }
        }
        let cst = |iv: u64, cells: usize, quiet: u64, mult: u32| Params {
            interval_ns: iv * MS,
            cell: cells * SEGMENT_FRAME,
            quiet_ns: quiet * MS,
            pad_multiple: mult,
            hold_cap_ns: 2000 * MS,
            ..Params::OFF.with_mode(Mode::Constant)
        };
        for (up, down) in [
            ((20, 1, 2000, 50), (5, 4, 2000, 50)),
            ((20, 1, 5000, 100), (5, 4, 5000, 100)),
            ((20, 1, 2000, 200), (4, 8, 2000, 200)),
            ((10, 1, 3000, 100), (3, 8, 3000, 100)),
        ] {
            for session in ["", PER_SESSION] {
                v.push(Row::new(
                    format!(
                        "constant up {}ms×{} down {}ms×{} quiet {}ms ×{} {session}",
                        up.0, up.1, down.0, down.1, up.2, up.3
                    ),
                    cst(up.0, up.1, up.2, up.3),
                    cst(down.0, down.1, down.2, down.3),
                ));
            }
        }
    }
    if sweep {
        // Session-level candidates for `default` (docs/TIMING.md, "Choosing the profiles").
        let front = |up: (u32, u32), down: (u32, u32), len: usize, win: (u64, u64)| {
            let p = |b: (u32, u32)| Params {
                budget_min: b.0,
                budget_max: b.1,
                padding_len: len,
                window_min_ns: win.0 * MS,
                window_max_ns: win.1 * MS,
                ..Params::OFF.with_mode(Mode::Adaptive)
            };
            (p(up), p(down))
        };
        let floor = |p: Params, ms: u64| Params {
            floor_ns: ms * MS,
            ..p
        };
        let (u, d) = front((20, 100), (40, 200), SEGMENT_FRAME, (500, 3000));
        // FRONT with no budget: the floor alone.
        let bare = Params {
            budget_min: 0,
            budget_max: 0,
            ..Params::OFF.with_mode(Mode::Adaptive)
        };
        v.push(Row::new(
            "floor 50ms only".to_owned(),
            floor(bare, 50),
            floor(bare, 50),
        ));
        v.push(Row::new(
            "old default + floor 50ms".to_owned(),
            floor(u, 50),
            floor(d, 50),
        ));
        for (name, up, down, len, win) in [
            (
                "front ×2 budget, 700 B",
                (40, 200),
                (80, 400),
                700,
                (500, 3000),
            ),
            (
                "front ×2 budget, 700 B, 0.3-2 s",
                (40, 200),
                (80, 400),
                700,
                (300, 2000),
            ),
            (
                "front ×2.5 budget, 560 B, 0.3-2 s",
                (50, 250),
                (100, 500),
                560,
                (300, 2000),
            ),
        ] {
            let (u, d) = front(up, down, len, win);
            v.push(Row::new(name.to_owned(), u, d));
            for ms in [25, 50] {
                v.push(Row::new(
                    format!("{name} + floor {ms}ms"),
                    floor(u, ms),
                    floor(d, ms),
                ));
            }
        }
        // The default with each burst's first bytes held a random while (latency for
        // hiding when bursts start).
        for (max, gap) in [(10, 20), (20, 20), (40, 20), (80, 20), (150, 20), (300, 20)] {
            let held = |p: Params| Params {
                burst_delay_max_ns: max * MS,
                burst_gap_ns: gap * MS,
                hold_cap_ns: (max * MS).max(p.hold_cap_ns),
                ..p
            };
            v.push(Row::new(
                format!("default + burst delay 0-{max}ms gap {gap}ms"),
                held(Profile::Default.params(Direction::Up)),
                held(Profile::Default.params(Direction::Down)),
            ));
        }
        // high-security candidates: one cell stream per session that stays on, opened with
        // the first flow or up to `lead_s` before it.
        for (up_ms, down_ms, quiet_s, cap_ms, lead_s) in [
            (40, 12, 60, 2000, 0),
            (20, 6, 60, 2000, 0),
            (40, 12, 5, 2000, 0),
            (40, 12, 60, 60_000, 0),
            (40, 12, 60, 2000, 10),
            (40, 12, 60, 60_000, 10),
        ] {
            let c = |iv: u64| Params {
                interval_ns: iv * MS,
                cell: SEGMENT_FRAME,
                quiet_ns: quiet_s * 1000 * MS,
                pad_multiple: 1,
                hold_cap_ns: cap_ms * MS,
                ..Params::OFF.with_mode(Mode::Constant)
            };
            let early = if lead_s > 0 {
                format!(" opened 0-{lead_s}s early")
            } else {
                String::new()
            };
            v.push(Row {
                lead_ns: lead_s * 1000 * MS,
                ..Row::new(
                    format!("constant up {up_ms}ms down {down_ms}ms quiet {quiet_s}s cap {cap_ms}ms{early} {PER_SESSION}"),
                    c(up_ms),
                    c(down_ms),
                )
            });
        }
        // Session-level FRONT after every burst: mostly small records, or decoy bursts.
        for (name, budget, small, small_len, burst) in [
            (
                "session front per burst (90 % 120 B)",
                (40, 120),
                0.9,
                120,
                (0, 0),
            ),
            (
                "session decoy bursts (5-30 segments)",
                (1, 3),
                1.0,
                100,
                (5, 30),
            ),
        ] {
            let pad = session::BurstFront {
                gap_ns: 200 * MS,
                budget: [budget, budget],
                scale: (200 * MS, 1000 * MS),
                small,
                small_len,
                on_recv: true,
                burst,
            };
            v.push(Row::padded(name.to_owned(), Arc::new(pad)));
        }
    }
    v.push(Row::new(
        format!("constant {PER_SESSION}"),
        v[4].up,
        v[4].down,
    ));
    for p in Profile::ALL {
        v.push(Row::new(
            format!("profile:{}", p.name()),
            p.params(Direction::Up),
            p.params(Direction::Down),
        ));
    }
    for p in [Profile::Default, Profile::HighSecurity] {
        v.push(Row::new(
            format!("profile:{} {PER_SESSION}", p.name()),
            p.params(Direction::Up),
            p.params(Direction::Down),
        ));
    }
    v.extend(
        regulator_rows()
            .into_iter()
            .chain(maybenot_rows())
            .filter(|(default_set, _)| sweep || *default_set)
            .map(|(_, r)| r),
    );
    v
}

/// What holds a row's data instead of the flow schedulers (`regulate.rs`).
#[derive(Clone, Copy)]
enum Regulation {
    /// RegulaTor's surge-and-decay rate, per direction (up, down).
    Rate([regulate::Reg; 2]),
    /// Surakav-style: another session of the traffic model is the reference; the cap (ns).
    Follow(u64),
}

/// RegulaTor with its data held to its slots (`regulate.rs`), one regulator per session
/// and direction: `(r, d, t, n, u, c)` as in the paper, `c` in ms; `true` marks the rows
/// of the default set.
fn regulator_rows() -> Vec<(bool, Row)> {
    [
        (true, 277.0, 0.94, 3.55, 3550, 3.95, 1770),
        (true, 277.0, 0.94, 3.55, 3550, 3.95, 200),
        (false, 100.0, 0.9, 3.55, 1000, 4.0, 1770),
        (true, 100.0, 0.9, 3.55, 1000, 4.0, 200),
        (false, 100.0, 0.9, 1.0, 1000, 4.0, 50),
        (false, 50.0, 0.8, 3.55, 300, 4.0, 200),
        (false, 500.0, 0.95, 3.55, 8000, 3.95, 1770),
        // Within `default`'s latency aim: bytes wait at most 10 or 20 ms.
        (false, 100.0, 0.9, 3.55, 1000, 4.0, 10),
        (false, 100.0, 0.9, 3.55, 1000, 4.0, 20),
        (false, 200.0, 0.9, 3.55, 1000, 4.0, 10),
        (false, 50.0, 0.9, 3.55, 1000, 4.0, 10),
        (false, 277.0, 0.98, 3.55, 8000, 3.95, 200),
        (false, 277.0, 0.94, 3.55, 2000, 3.95, 500),
    ]
    .into_iter()
    .flat_map(|(default_set, r, d, t, n, u, c)| {
        // Per session as the paper's, and per flow as the engine's schedulers are.
        [PER_SESSION, "(per flow)"].map(|per| {
            let name = format!("regulator r {r} d {d} t {t} n {n} u {u} c {c}ms {per}");
            let reg = Regulation::Rate(regulate::Reg::pair(r, d, t, n, u, c * MS));
            (default_set, Row::regulated(name, reg))
        })
    })
    .chain(
        [(false, 200), (false, 1770), (false, 20)].map(|(default_set, c)| {
            let name = format!("surakav-style reference c {c}ms {PER_SESSION}");
            (
                default_set,
                Row::regulated(name, Regulation::Follow(c * MS)),
            )
        }),
    )
    .collect()
}

/// maybenot's machines run per session at both ends (`mb.rs`), with the per-flow
/// schedulers off so that the padding is maybenot's alone; `true` marks the rows of the
/// default set, the rest run with `--sweep` or by name. Units are maybenot's: windows,
/// intervals and timers in µs, Tamaraw's `p` and RegulaTor's `c` in s, budgets and
/// rates in packets. Rows of machines that rely on `BlockOutgoing` say "(padding-only)"
/// (the hook cannot hold data; see mb.rs).
fn maybenot_rows() -> Vec<(bool, Row)> {
    let row = |name: String, client: Vec<StaticMachine>, relay: Vec<StaticMachine>| {
        Row::padded(
            format!("maybenot:{name}"),
            Arc::new(mb::Mb::new(client, relay)),
        )
    };
    let front = |b: u32, win: (f64, f64)| StaticMachine::Front {
        padding_budget_max: b,
        window_min: win.0 * 1e6,
        window_max: win.1 * 1e6,
        num_states: 10,
    };
    let mut v = Vec::new();
    // FRONT: budgets up/down (packets, drawn 1..max per session and end), Rayleigh
    // windows (s). The FRONT paper's are 1–14 s; ours per flow are 0.5–3 s.
    for (bu, bd, win) in [
        (300, 600, (1.0, 14.0)),
        (600, 1200, (1.0, 14.0)),
        (1200, 2400, (1.0, 14.0)),
        (600, 1200, (0.5, 3.0)),
        (600, 1200, (5.0, 30.0)),
        (1200, 2400, (5.0, 30.0)),
        (600, 3000, (5.0, 30.0)),
        (2400, 4800, (5.0, 30.0)),
    ] {
        v.push((
            false,
            row(
                format!("front up {bu} down {bd} w {}-{}s", win.0, win.1),
                vec![front(bu, win)],
                vec![front(bd, win)],
            ),
        ));
    }
    v.push((
        false,
        row(
            "interspace".into(),
            vec![StaticMachine::InterspaceClient],
            vec![StaticMachine::InterspaceServer],
        ),
    ));
    v.push((
        false,
        row(
            "break-pad".into(),
            vec![StaticMachine::BreakPadClient],
            vec![StaticMachine::BreakPadServer],
        ),
    ));
    // Tamaraw: a packet every p s when nothing else went, tail padded to a multiple of
    // 100 packets after stop_window of quiet. Its published rates are 0.04 / 0.012 s.
    for (pu, pd, stop) in [
        (0.04, 0.012, 500_000.0),
        (0.1, 0.04, 500_000.0),
        (0.2, 0.1, 500_000.0),
        (0.5, 0.05, 500_000.0),
        (1.0, 0.05, 500_000.0),
        (0.5, 0.1, 500_000.0),
        (0.5, 0.05, 200_000.0),
        (0.5, 0.05, 2_000_000.0),
    ] {
        let t = |p| StaticMachine::Tamaraw {
            p,
            stop_window: stop,
        };
        v.push((
            false,
            row(
                format!(
                    "tamaraw up {pu}s down {pd}s stop {}ms (padding-only)",
                    stop / 1e3
                ),
                vec![t(pu)],
                vec![t(pd)],
            ),
        ));
    }
    // RegulaTor: the paper's parameters (R 277, D 0.94, T 3.55, N 3550, U 3.95, C 1.77),
    // then lower initial rates and budgets.
    let regulator = |r: f64, n: f64, u: f64| {
        let client = vec![StaticMachine::RegulatorClient { u, c: 1.77 }];
        let server = StaticMachine::RegulatorServer {
            r,
            d: 0.94,
            t: 3.55,
            n,
            b: 10,
        };
        (client, vec![server])
    };
    for (r, n, u) in [
        (277.0, 3550.0, 3.95),
        (100.0, 1000.0, 3.95),
        (50.0, 500.0, 3.95),
        (100.0, 1000.0, 8.0),
        (50.0, 500.0, 8.0),
        (30.0, 300.0, 8.0),
        (50.0, 1000.0, 16.0),
        (100.0, 2000.0, 16.0),
        (200.0, 2000.0, 8.0),
        (277.0, 3550.0, 16.0),
        (150.0, 1500.0, 12.0),
        (100.0, 1500.0, 12.0),
        (70.0, 700.0, 6.0),
    ] {
        // The best at <= 30 % total with 200 users (docs/TIMING.md) is in the default set.
        let (client, relay) = regulator(r, n, u);
        v.push((
            (r, n, u) == (100.0, 1000.0, 8.0),
            row(
                format!("regulator r {r} n {n} u {u} (padding-only)"),
                client,
                relay,
            ),
        ));
    }
    // The session-level machine on top of our per-flow default profile.
    for (r, n, u) in [(50.0, 500.0, 8.0), (30.0, 300.0, 8.0)] {
        let (client, relay) = regulator(r, n, u);
        let mut x = row(
            format!("regulator r {r} n {n} u {u} (padding-only) + profile:default"),
            client,
            relay,
        );
        x.up = Profile::Default.params(Direction::Up);
        x.down = Profile::Default.params(Direction::Down);
        v.push((false, x));
    }
    // Scrambler (video streaming): a 250 packet/s client, bursts regularised at the relay.
    v.push((
        false,
        row(
            "scrambler interval 10ms (padding-only)".into(),
            vec![StaticMachine::ScramblerClient],
            vec![StaticMachine::ScramblerServer {
                interval: 10_000.0,
                min_count: 10.0,
                min_trail: 5.0,
                max_trail: 20.0,
            }],
        ),
    ));
    v
}

// ---------------------------------------------------------------- traffic

fn unit(r: &mut ChaCha20Rng) -> f64 {
    (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn between(r: &mut ChaCha20Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * unit(r)
}

fn exp_ns(r: &mut ChaCha20Rng, mean_ns: f64) -> u64 {
    (-mean_ns * (1.0 - unit(r)).ln()) as u64
}

fn lognormal(r: &mut ChaCha20Rng, median: f64, sigma: f64) -> f64 {
    let z = (-2.0 * (1.0 - unit(r)).ln()).sqrt() * (2.0 * std::f64::consts::PI * unit(r)).cos();
    median * (sigma * z).exp()
}

/// One flow as the application and the destination produce it.
struct Flow {
    user: usize,
    kind: &'static str,
    start: u64,
    /// Client writes (time at the client, bytes).
    up: Vec<(u64, u32)>,
    /// Destination packets (time at the exit, bytes).
    down: Vec<(u64, u32)>,
}

/// Server packets for `size` bytes from `t` at `rate` bytes/s.
fn transfer(out: &mut Vec<(u64, u32)>, t: u64, size: u64, rate: f64) -> u64 {
    let mut left = size;
    let mut at = t;
    let gap = (f64::from(MSS) / rate * 1e9) as u64;
    while left > 0 {
        let n = left.min(u64::from(MSS)) as u32;
        out.push((at, n));
        left -= u64::from(n);
        at += gap;
    }
    at
}

fn generate(
    seed: u64,
    users: usize,
    secs: u64,
    per_user: Option<u32>,
    lat: &mut Vec<u64>,
) -> Vec<Flow> {
    let mut r = ChaCha20Rng::seed_from_u64(seed);
    let horizon = secs * 1000 * MS;
    let mut flows = Vec::new();
    for user in 0..users {
        let l = (between(&mut r, 20.0, 80.0) * MS as f64) as u64;
        lat.push(l);
        let rtt = 2 * l;
        let drawn = 3 + r.next_u32() % 6;
        let n = per_user.unwrap_or(drawn);
        for _ in 0..n {
            let start = (unit(&mut r) * 0.8 * horizon as f64) as u64;
            let mut f = Flow {
                user,
                kind: "",
                start,
                up: Vec::new(),
                down: Vec::new(),
            };
            let kind = unit(&mut r);
            f.kind = if kind < 0.6 {
                "web"
            } else if kind < 0.75 {
                "bulk"
            } else {
                "interactive"
            };
            if kind < 0.6 {
                // Web-like: a few request/response rounds separated by reading pauses.
                let mut t = start;
                for _ in 0..1 + r.next_u32() % 4 {
                    f.up.push((t, 200 + r.next_u32() % 1300));
                    let size = lognormal(&mut r, 50_000.0, 1.5).clamp(2_000.0, 2e6) as u64;
                    let think = (between(&mut r, 20.0, 150.0) * MS as f64) as u64;
                    let rate = between(&mut r, 1e6, 8e6);
                    let end = transfer(&mut f.down, t + rtt / 2 + think, size, rate);
                    t = end + rtt / 2 + (between(&mut r, 200.0, 3000.0) * MS as f64) as u64;
                }
            } else if kind < 0.75 {
                // Bulk: one request, then a download (or an upload one time in five).
                f.up.push((start, 300 + r.next_u32() % 500));
                let size = between(&mut r, 1e6, 8e6) as u64;
                let rate = between(&mut r, 1e6, 5e6);
                if r.next_u32() % 5 == 0 {
                    let mut t = start + rtt;
                    let mut left = size;
                    let gap = (16_384.0 / rate * 1e9) as u64;
                    while left > 0 {
                        let n = left.min(16_384) as u32;
                        f.up.push((t, n));
                        left -= u64::from(n);
                        t += gap;
                    }
                } else {
                    transfer(&mut f.down, start + rtt / 2 + 30 * MS, size, rate);
                }
            } else {
                // Interactive: keystrokes echoed, now and then a burst of output.
                let end = start + (between(&mut r, 5.0, 25.0) * 1000.0 * MS as f64) as u64;
                let mut t = start;
                while t < end {
                    f.up.push((t, 1 + r.next_u32() % 50));
                    f.down.push((t + rtt / 2 + MS, 1 + r.next_u32() % 200));
                    if r.next_u32() % 10 == 0 {
                        let size = between(&mut r, 1e3, 2e4) as u64;
                        transfer(&mut f.down, t + rtt / 2 + 5 * MS, size, 2e6);
                    }
                    t += exp_ns(&mut r, 250.0 * MS as f64) + MS;
                }
            }
            f.up.sort_unstable();
            f.down.sort_unstable();
            flows.push(f);
        }
    }
    flows
}

// ---------------------------------------------------------------- simulation

/// One record as it leaves the scheduler, with the flows its payload belongs to.
struct Rec {
    t: u64,
    wire: u32,
    /// (flow, bytes) of the payload, in queue order; empty for padding.
    parts: Vec<(u32, u32)>,
}

fn flow_seed(seed: u64, flow: usize, dir: u8) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..16].copy_from_slice(&(flow as u64).to_le_bytes());
    s[16] = dir;
    s[31] = 0x5c;
    s
}

/// Runs tagged arrivals (time, bytes, flow) through one scheduler, credit unlimited:
/// one flow's direction, or every flow of a session in one FIFO.
fn schedule(
    p: Params,
    seed: [u8; 32],
    created: u64,
    arr: &[(u64, u32, u32)],
    holds: &mut Vec<u32>,
) -> Vec<Rec> {
    let mut f = FlowSched::new(p, seed, created);
    let mut out = Vec::new();
    let mut q: VecDeque<(u64, u32, u32)> = VecDeque::new();
    let mut i = 0;
    let mut now = created;
    let mut closed = false;
    loop {
        while i < arr.len() && arr[i].0 <= now {
            f.on_data(arr[i].0.max(created), arr[i].1 as usize);
            q.push_back(arr[i]);
            i += 1;
        }
        if i == arr.len() && !closed {
            f.on_close(now);
            closed = true;
        }
        while let Some(d) = f.poll(now, usize::MAX).expect("scheduler violation") {
            match d {
                Departure::Data { bytes, frame_len } => {
                    holds.push(((now - q[0].0) / 1000) as u32);
                    let mut parts = Vec::with_capacity(1);
                    let mut left = bytes as u32;
                    while left > 0 {
                        let n = left.min(q[0].1);
                        parts.push((q[0].2, n));
                        q[0].1 -= n;
                        left -= n;
                        if q[0].1 == 0 {
                            q.pop_front();
                        }
                    }
                    let frame = frame_len.max(FRAME_HEADER + bytes);
                    out.push(Rec {
                        t: now,
                        wire: (frame + RECORD_OVERHEAD) as u32,
                        parts,
                    });
                }
                Departure::Padding { frame_len } => out.push(Rec {
                    t: now,
                    wire: (frame_len + RECORD_OVERHEAD) as u32,
                    parts: Vec::new(),
                }),
            }
        }
        if f.is_finished() {
            break;
        }
        let next = [arr.get(i).map(|a| a.0), f.next_deadline()]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(t) => now = t.max(now + 1),
            None => break,
        }
    }
    out
}

/// Per-window counts of one observation point, up and down, and the events themselves
/// (for the burst correlators).
#[derive(Clone)]
struct Series {
    bytes: [Vec<f32>; 2],
    pkts: [Vec<f32>; 2],
    /// Every (time, bytes) added, per direction, in the order added.
    events: [Vec<(u64, u32)>; 2],
}

impl Series {
    fn new(n: usize) -> Series {
        Series {
            bytes: [vec![0.0; n], vec![0.0; n]],
            pkts: [vec![0.0; n], vec![0.0; n]],
            events: [Vec::new(), Vec::new()],
        }
    }
    /// `bytes` seen at `t`, as TCP segments of at most one MSS each.
    fn add(&mut self, dir: usize, t: u64, bytes: u32, w: u64) {
        let i = ((t / w) as usize).min(self.bytes[dir].len() - 1);
        self.bytes[dir][i] += bytes as f32;
        self.pkts[dir][i] += bytes.div_ceil(MSS) as f32;
        self.events[dir].push((t, bytes));
    }
}

/// A tiny deterministic jitter source per (flow, direction).
fn jitter(r: &mut ChaCha20Rng) -> u64 {
    r.next_u64() % (5 * MS)
}

struct RunOut {
    /// [correlator] → (accuracy, auc, tpr@1e-2, tpr@1e-3)
    attack: Vec<[f64; 4]>,
    wire: [u64; 2],
    real: [u64; 2],
    holds: Vec<u32>,
    fct: Vec<u64>,
}

const CORRELATORS: [&str; 6] = [
    "pearson-bytes",
    "pearson-pkts",
    "spearman-bytes",
    "ipd-cosine",
    "burst-match",
    "window-cosine",
];

fn run(o: &Opts, seed: u64, row: &Row) -> RunOut {
    let (up, down, session) = (row.up, row.down, row.per_session());
    let mut lat = Vec::new();
    let flows = generate(seed, o.users, o.secs, o.flows_per_user, &mut lat);
    let w = o.window_ms * MS;
    let horizon = flows
        .iter()
        .flat_map(|f| f.up.iter().chain(&f.down))
        .map(|a| a.0)
        .max()
        .unwrap_or(0)
        + 5000 * MS;
    let nw = (horizon / w) as usize + 1;
    let mut entry = vec![Series::new(nw); o.users];
    let mut entry_times: Vec<Vec<u64>> = vec![Vec::new(); o.users];
    let mut span = Vec::with_capacity(flows.len());
    let mut out = RunOut {
        attack: Vec::new(),
        wire: [0; 2],
        real: [0; 2],
        holds: Vec::new(),
        fct: Vec::new(),
    };
    let mut jr = ChaCha20Rng::seed_from_u64(seed ^ 0x6a17);
    let nf = flows.len();
    let mut exit = vec![Series::new(nw); nf];
    let mut exit_times: Vec<Vec<u64>> = vec![Vec::new(); nf];
    let mut last_delivery: Vec<u64> = flows.iter().map(|f| f.start).collect();
    let mut prev_exit = vec![0u64; nf];
    // Which flows share one scheduler: each flow alone, or every flow of a user.
    let groups: Vec<Vec<usize>> = if session {
        let mut g = vec![Vec::new(); o.users];
        for (fi, f) in flows.iter().enumerate() {
            g[f.user].push(fi);
        }
        g.retain(|v| !v.is_empty());
        g
    } else {
        (0..nf).map(|fi| vec![fi]).collect()
    };
    // Surakav-style rows: another draw of the traffic model, one reference session per user.
    let refs = match row.reg {
        Some(Regulation::Follow(_)) => generate(
            seed ^ 0x5eed,
            o.users,
            o.secs,
            o.flows_per_user,
            &mut Vec::new(),
        ),
        _ => Vec::new(),
    };
    // What each user's two ends see of the session, for a session-level defense.
    let mut ends: Vec<[Vec<Ev>; 2]> = vec![[Vec::new(), Vec::new()]; o.users];
    for g in &groups {
        let user = flows[g[0]].user;
        let l = lat[user];
        let first = g.iter().map(|&fi| flows[fi].start).min().unwrap_or(0);
        let lead = match row.lead_ns {
            0 => 0,
            l => {
                ChaCha20Rng::seed_from_u64(seed ^ ((user as u64) << 8) ^ 0x1ead).next_u64()
                    % (l + 1)
            }
        };
        let created = first.saturating_sub(lead);
        let tagged = |dir: usize| -> Vec<(u64, u32, u32)> {
            // An early session starts its scheduler with one byte of no flow's (OPENER).
            let opener = (created < first).then_some((created, 1, OPENER));
            let mut v: Vec<(u64, u32, u32)> = opener
                .into_iter()
                .chain(g.iter().flat_map(|&fi| {
                    let a = if dir == 0 {
                        &flows[fi].up
                    } else {
                        &flows[fi].down
                    };
                    a.iter().map(move |&(t, n)| (t, n, fi as u32))
                }))
                .collect();
            v.sort_unstable();
            v
        };
        // The session closes 3 s after its last byte either way (a regulator pads until then).
        let end = g
            .iter()
            .flat_map(|&fi| flows[fi].up.iter().chain(&flows[fi].down))
            .map(|a| a.0)
            .max()
            .unwrap_or(created)
            + 3000 * MS;
        let sched_dir = |dir: usize, p: Params, holds: &mut Vec<u32>| match &row.reg {
            Some(Regulation::Rate(reg)) => regulate::schedule(&reg[dir], &tagged(dir), end, holds),
            Some(Regulation::Follow(c)) => {
                let reference = reference_for(&refs, user, dir, created, end);
                regulate::follow(&reference, *c, &tagged(dir), end, holds)
            }
            None => schedule(
                p,
                flow_seed(seed, g[0], dir as u8),
                created,
                &tagged(dir),
                holds,
            ),
        };
        // Upstream: records leave the client (entry sees them at once); the relay writes
        // their bytes to the destination after the path latency.
        let recs = sched_dir(0, up, &mut out.holds);
        for r in &recs {
            out.wire[0] += u64::from(r.wire);
            entry[user].add(0, r.t, r.wire, w);
            entry_times[user].push(r.t);
            ends[user][0].push(Ev::new(r.t, true, r.wire, r.parts.is_empty()));
            ends[user][1].push(Ev::new(r.t + l, false, r.wire, r.parts.is_empty()));
            for &(fi, n) in r.parts.iter().filter(|p| p.0 != OPENER) {
                let fi = fi as usize;
                out.real[0] += u64::from(n);
                let t = (r.t + l + jitter(&mut jr)).max(prev_exit[fi]);
                prev_exit[fi] = t;
                exit[fi].add(0, t, n, w);
                for _ in 0..n.div_ceil(MSS) {
                    exit_times[fi].push(t);
                }
                last_delivery[fi] = last_delivery[fi].max(t);
            }
        }
        // Downstream: the exit sees the destination's packets; records leave the relay
        // on the scheduler's time and reach the entry after the latency.
        for &fi in g {
            for &(t, n) in &flows[fi].down {
                exit[fi].add(1, t, n, w);
                exit_times[fi].push(t);
            }
        }
        let recs = sched_dir(1, down, &mut out.holds);
        let mut prev = 0;
        for r in &recs {
            out.wire[1] += u64::from(r.wire);
            let t = (r.t + l + jitter(&mut jr)).max(prev);
            prev = t;
            entry[user].add(1, t, r.wire, w);
            entry_times[user].push(t);
            ends[user][1].push(Ev::new(r.t, true, r.wire, r.parts.is_empty()));
            ends[user][0].push(Ev::new(t, false, r.wire, r.parts.is_empty()));
            for &(fi, n) in r.parts.iter().filter(|p| p.0 != OPENER) {
                out.real[1] += u64::from(n);
                let fi = fi as usize;
                last_delivery[fi] = last_delivery[fi].max(t);
            }
        }
    }
    let floor = session::floor_of(&row.up, &row.down);
    if row.pad.is_some() || floor.is_some() {
        for (user, [client, relay]) in ends.iter_mut().enumerate() {
            client.sort_unstable_by_key(|e| e.t);
            relay.sort_unstable_by_key(|e| e.t);
            let mut added = match &row.pad {
                Some(pad) => pad.pad(seed ^ ((user as u64) << 20), client, relay),
                None => [Vec::new(), Vec::new()],
            };
            if let Some(fl) = &floor {
                let [a, b] = session::apply_floor(fl, client, relay, &added);
                added[0].extend(a);
                added[1].extend(b);
            }
            let [up, down] = added;
            let l = lat[user];
            for (t, n) in up {
                out.wire[0] += u64::from(n);
                entry[user].add(0, t, n, w);
                entry_times[user].push(t);
            }
            for (t, n) in down {
                let t = t + l + jitter(&mut jr);
                out.wire[1] += u64::from(n);
                entry[user].add(1, t, n, w);
                entry_times[user].push(t);
            }
        }
    }
    for (fi, f) in flows.iter().enumerate() {
        out.fct.push(last_delivery[fi] - f.start);
        let ex_times = &mut exit_times[fi];
        ex_times.sort_unstable();
        span.push(span_of(ex_times, w, nw));
        ex_times.truncate(301);
    }
    let exit_first = exit_times;
    for t in &mut entry_times {
        t.sort_unstable();
    }
    let owners: Vec<usize> = flows.iter().map(|f| f.user).collect();
    out.attack = correlate(o, &entry, &entry_times, &exit, &exit_first, &span, &owners);
    out
}

/// The windows compared for an exit flow with these sorted packet times: its active span
/// ± 2 windows of `w` ns, within the `nw` windows. Bytes held past the horizon land in
/// its last window, so a span is never empty.
fn span_of(times: &[u64], w: u64, nw: usize) -> (usize, usize) {
    let first = (times[0] / w) as usize;
    let last = (times[times.len() - 1] / w) as usize;
    let end = (last + 2).min(nw - 1);
    (first.saturating_sub(2).min(end), end)
}

/// User `user`'s reference session from `refs` in direction `dir` (0 up, 1 down), moved to
/// start at `created` and repeated, a second apart, until `end`.
fn reference_for(
    refs: &[Flow],
    user: usize,
    dir: usize,
    created: u64,
    end: u64,
) -> Vec<(u64, u32)> {
    let mine = || refs.iter().filter(|f| f.user == user);
    let mut one: Vec<(u64, u32)> = mine()
        .flat_map(|f| if dir == 0 { &f.up } else { &f.down })
        .copied()
        .collect();
    one.sort_unstable();
    let (Some(start), Some(last)) = (mine().map(|f| f.start).min(), one.last().map(|a| a.0)) else {
        return Vec::new();
    };
    let period = last.saturating_sub(start) + 1000 * MS;
    let mut out = Vec::new();
    for k in 0.. {
        let shift = created + k * period;
        if shift >= end {
            break;
        }
        out.extend(
            one.iter()
                .map(|&(t, n)| (t - start.min(t) + shift, n))
                .take_while(|a| a.0 < end),
        );
    }
    out
}

/// Every correlator on every (exit flow, user) pair, then top-1 accuracy, AUC and TPRs
/// per correlator. `exit_first` holds each flow's first 301 exit packet times (sorted),
/// `entry_times` each user's record (or packet) times, sorted; `span` the windows
/// compared per flow.
fn correlate(
    o: &Opts,
    entry: &[Series],
    entry_times: &[Vec<u64>],
    exit: &[Series],
    exit_first: &[Vec<u64>],
    span: &[(usize, usize)],
    owners: &[usize],
) -> Vec<[f64; 4]> {
    // Scores: [correlator][flow][user].
    let nu = entry.len();
    let nf = exit.len();
    let mut scores = vec![vec![0f32; nf * nu]; CORRELATORS.len()];
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    // Bursts once per flow and per user, not per pair.
    let exit_b: Vec<burst::Bursts> = exit.iter().map(|s| burst::Bursts::new(&s.events)).collect();
    let entry_b: Vec<burst::Bursts> = entry
        .iter()
        .map(|s| burst::Bursts::new(&s.events))
        .collect();
    let mut scratch = burst::Scratch::default();
    let exit_l: Vec<burst::LogPkts> = exit.iter().map(burst::LogPkts::new).collect();
    let entry_l: Vec<burst::LogPkts> = entry.iter().map(burst::LogPkts::new).collect();
    for fi in 0..nf {
        let (a, b) = span[fi];
        let ipd_x = ipds(&exit_first[fi]);
        for u in 0..nu {
            let (pb, lag) = best_lag(&exit[fi].bytes, &entry[u].bytes, a, b, o.max_lag);
            let (pp, _) = best_lag(&exit[fi].pkts, &entry[u].pkts, a, b, o.max_lag);
            // Spearman at the lag Pearson found, per direction, averaged.
            let mut sp = 0.0;
            let mut nd = 0.0;
            for d in 0..2 {
                if lagged(
                    &exit[fi].bytes[d],
                    &entry[u].bytes[d],
                    a,
                    b,
                    d,
                    lag,
                    &mut xs,
                    &mut ys,
                ) {
                    sp += spearman(&xs, &ys);
                    nd += 1.0;
                }
            }
            let sp = if nd > 0.0 { sp / nd } else { 0.0 };
            let t0 = exit_first[fi][0].saturating_sub(80 * MS);
            let et = &entry_times[u];
            let k = et.partition_point(|&t| t < t0);
            let ipd_y = ipds(&et[k..(k + 301).min(et.len())]);
            let cos = cosine(&ipd_x, &ipd_y);
            let at = fi * nu + u;
            scores[0][at] = pb as f32;
            scores[1][at] = pp as f32;
            scores[2][at] = sp as f32;
            scores[3][at] = cos as f32;
            scores[4][at] = burst::burst_match(&exit_b[fi], &entry_b[u], &mut scratch) as f32;
            scores[5][at] = burst::window_cosine(
                &exit_l[fi],
                &entry_l[u],
                a,
                b,
                o.window_ms * MS,
                o.max_lag,
                &mut scratch,
            ) as f32;
        }
    }
    scores.iter().map(|s| evaluate(s, owners, nu)).collect()
}

fn ipds(t: &[u64]) -> Vec<f64> {
    t.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e6).collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().max(b.len());
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0.0);
        let y = b.get(i).copied().unwrap_or(0.0);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa * bb).sqrt()
    }
}

/// Fills xs/ys with exit windows a..=b and the entry windows `lag` later (down) or
/// earlier (up); false when the exit side has no variance there.
#[allow(clippy::too_many_arguments)]
fn lagged(
    x: &[f32],
    y: &[f32],
    a: usize,
    b: usize,
    dir: usize,
    lag: usize,
    xs: &mut Vec<f32>,
    ys: &mut Vec<f32>,
) -> bool {
    xs.clear();
    ys.clear();
    for (i, &xv) in x.iter().enumerate().take(b + 1).skip(a) {
        let j = if dir == 0 {
            i.checked_sub(lag)
        } else {
            Some(i + lag)
        };
        xs.push(xv);
        ys.push(j.and_then(|j| y.get(j)).copied().unwrap_or(0.0));
    }
    let first = xs[0];
    xs.iter().any(|&v| v != first)
}

fn pearson(x: &[f32], y: &[f32]) -> f64 {
    let n = x.len() as f64;
    let (mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        let (a, b) = (f64::from(a), f64::from(b));
        sx += a;
        sy += b;
        sxx += a * a;
        syy += b * b;
        sxy += a * b;
    }
    let vx = sxx - sx * sx / n;
    let vy = syy - sy * sy / n;
    if vx <= 1e-9 || vy <= 1e-9 {
        return 0.0;
    }
    (sxy - sx * sy / n) / (vx * vy).sqrt()
}

fn ranks(v: &[f32]) -> Vec<f32> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_unstable_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0f32; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f32 / 2.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

fn spearman(x: &[f32], y: &[f32]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Mean over the directions the exit flow has traffic in of Pearson at one shared lag,
/// maximised over lags 0..=max_lag windows; returns (score, lag).
fn best_lag(
    x: &[Vec<f32>; 2],
    y: &[Vec<f32>; 2],
    a: usize,
    b: usize,
    max_lag: usize,
) -> (f64, usize) {
    let mut best = (f64::NEG_INFINITY, 0);
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for lag in 0..=max_lag {
        let mut s = 0.0;
        let mut n = 0.0;
        for d in 0..2 {
            if lagged(&x[d], &y[d], a, b, d, lag, &mut xs, &mut ys) {
                s += pearson(&xs, &ys);
                n += 1.0;
            }
        }
        let s = if n > 0.0 { s / n } else { 0.0 };
        if s > best.0 {
            best = (s, lag);
        }
    }
    best
}

/// Top-1 accuracy (ties share credit), ROC AUC (ties count half), TPR at FPR 1e-2, 1e-3.
fn evaluate(s: &[f32], owners: &[usize], nu: usize) -> [f64; 4] {
    let mut acc = 0.0;
    let mut pos = Vec::new();
    let mut neg = Vec::new();
    for (fi, &owner) in owners.iter().enumerate() {
        let row = &s[fi * nu..(fi + 1) * nu];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if row[owner] == max {
            acc += 1.0 / row.iter().filter(|&&v| v == max).count() as f64;
        }
        for (u, &v) in row.iter().enumerate() {
            if u == owner {
                pos.push(v);
            } else {
                neg.push(v);
            }
        }
    }
    neg.sort_unstable_by(|a, b| b.total_cmp(a));
    // AUC = P(pos > neg) + P(pos = neg) / 2, by binary search in the sorted negatives.
    let mut auc = 0.0;
    for &p in &pos {
        let greater = neg.partition_point(|&n| n > p);
        let ge = neg.partition_point(|&n| n >= p);
        let below = neg.len() - ge;
        auc += below as f64 + (ge - greater) as f64 / 2.0;
    }
    auc /= (pos.len() * neg.len()) as f64;
    let tpr = |fpr: f64| {
        let k = (fpr * neg.len() as f64).floor() as usize;
        let thr = neg[k.min(neg.len() - 1)];
        pos.iter().filter(|&&p| p > thr).count() as f64 / pos.len() as f64
    };
    [acc / owners.len() as f64, auc, tpr(1e-2), tpr(1e-3)]
}

// ---------------------------------------------------------------- report

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

fn ms(v: &[f64], scale: f64, prec: usize) -> String {
    let (m, s) = mean_sd(v);
    format!("{:.p$} ± {:.p$}", m * scale, s * scale, p = prec)
}

fn percentile(v: &mut [u32], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let k = ((v.len() - 1) as f64 * q).round() as usize;
    let (_, x, _) = v.select_nth_unstable(k);
    f64::from(*x)
}

fn append_line(path: &str, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    writeln!(f, "{line}").unwrap_or_else(|e| panic!("{path}: {e}"));
}

/// `--emit-flows`: the first seed's flows as `flow,user,kind,dir,time_ns,bytes` (dir `up`
/// = client writes at the client, `down` = destination packets at the exit).
fn emit_flows(o: &Opts, path: &str) -> ExitCode {
    let mut lat = Vec::new();
    let flows = generate(1000, o.users, o.secs, o.flows_per_user, &mut lat);
    let mut s = String::from("flow,user,kind,dir,time_ns,bytes\n");
    for (fi, f) in flows.iter().enumerate() {
        for (dir, ev) in [("up", &f.up), ("down", &f.down)] {
            for &(t, n) in ev {
                s.push_str(&format!("{fi},{},{},{dir},{t},{n}\n", f.user, f.kind));
            }
        }
    }
    if let Err(e) = std::fs::write(path, s) {
        eprintln!("eval_timing: {path}: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!(
        "eval_timing: wrote {} flows of {} users (seed 1000) to {path}",
        flows.len(),
        o.users
    );
    ExitCode::SUCCESS
}

/// Rows of a trace CSV: (id, time_ns, bytes, dir); a header or `#` line is skipped.
fn read_trace(path: &str) -> Result<Vec<(usize, u64, u32, usize)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut v = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || !line.starts_with(|c: char| c.is_ascii_digit())
        {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = || format!("{path}:{}: want id,time_ns,bytes,direction", ln + 1);
        if f.len() < 4 {
            return Err(bad());
        }
        let dir = match f[3] {
            "up" | "0" => 0,
            "down" | "1" => 1,
            _ => return Err(bad()),
        };
        v.push((
            f[0].parse().map_err(|_| bad())?,
            f[1].parse().map_err(|_| bad())?,
            f[2].parse().map_err(|_| bad())?,
            dir,
        ));
    }
    Ok(v)
}

/// `--traces DIR`: the simulation's correlators and metrics on recorded traces:
/// `entry.csv` (user,time_ns,bytes,direction: each payload-carrying packet of the user's
/// connection to the relay), `exit.csv` (flow,time_ns,bytes,direction: each packet between
/// relay and destination) and `flows.csv` (flow,user). Times share one clock.
fn traces(o: &Opts, dir: &str) -> ExitCode {
    let load = || -> Result<_, String> {
        let entry = read_trace(&format!("{dir}/entry.csv"))?;
        let exit = read_trace(&format!("{dir}/exit.csv"))?;
        let path = format!("{dir}/flows.csv");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        let mut owners = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() < 2 || !f[0].starts_with(|c: char| c.is_ascii_digit()) {
                continue;
            }
            let (Ok(fl), Ok(u)) = (f[0].parse::<usize>(), f[1].parse::<usize>()) else {
                return Err(format!("{path}: want flow,user"));
            };
            owners.push((fl, u));
        }
        Ok((entry, exit, owners))
    };
    let (entry_rows, exit_rows, owner_rows) = match load() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("eval_timing: {e}");
            return ExitCode::FAILURE;
        }
    };
    let nu = owner_rows
        .iter()
        .map(|r| r.1 + 1)
        .chain(entry_rows.iter().map(|r| r.0 + 1))
        .max()
        .unwrap_or(0);
    let w = o.window_ms * MS;
    let t0 = entry_rows
        .iter()
        .chain(&exit_rows)
        .map(|r| r.1)
        .min()
        .unwrap_or(0);
    let tmax = entry_rows
        .iter()
        .chain(&exit_rows)
        .map(|r| r.1)
        .max()
        .unwrap_or(0);
    let nw = ((tmax - t0) / w) as usize + 1 + (5000 * MS / w) as usize;
    let mut entry = vec![Series::new(nw); nu];
    let mut entry_times: Vec<Vec<u64>> = vec![Vec::new(); nu];
    let mut bytes = [[0u64; 2]; 2]; // [entry/exit][dir]
    for &(u, t, n, d) in &entry_rows {
        if n == 0 {
            continue;
        }
        entry[u].add(d, t - t0, n, w);
        entry_times[u].push(t - t0);
        bytes[0][d] += u64::from(n);
    }
    // Flows as listed in flows.csv; one without exit packets cannot be scored.
    let idx: std::collections::HashMap<usize, usize> = owner_rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.0, i))
        .collect();
    let mut exit = vec![Series::new(nw); owner_rows.len()];
    let mut exit_times: Vec<Vec<u64>> = vec![Vec::new(); owner_rows.len()];
    for &(fl, t, n, d) in &exit_rows {
        let Some(&i) = idx.get(&fl) else { continue };
        if n == 0 {
            continue;
        }
        exit[i].add(d, t - t0, n, w);
        for _ in 0..n.div_ceil(MSS) {
            exit_times[i].push(t - t0);
        }
        bytes[1][d] += u64::from(n);
    }
    let keep: Vec<usize> = (0..owner_rows.len())
        .filter(|&i| !exit_times[i].is_empty())
        .collect();
    if keep.len() < owner_rows.len() {
        eprintln!(
            "eval_timing: {} of {} flows have no exit packets and are not scored",
            owner_rows.len() - keep.len(),
            owner_rows.len()
        );
    }
    let exit: Vec<Series> = keep.iter().map(|&i| exit[i].clone()).collect();
    let owners: Vec<usize> = keep.iter().map(|&i| owner_rows[i].1).collect();
    let mut span = Vec::new();
    let mut exit_first = Vec::new();
    for &i in &keep {
        let mut t = std::mem::take(&mut exit_times[i]);
        t.sort_unstable();
        span.push(span_of(&t, w, nw));
        t.truncate(301);
        exit_first.push(t);
    }
    for t in &mut entry_times {
        t.sort_unstable();
    }
    if owners.is_empty() || nu < 2 {
        eprintln!(
            "eval_timing: traces in {dir}: need at least 2 users and one flow with exit packets"
        );
        return ExitCode::FAILURE;
    }
    let attack = correlate(o, &entry, &entry_times, &exit, &exit_first, &span, &owners);
    let chance = 1.0 / nu as f64;
    let best = (0..CORRELATORS.len())
        .max_by(|&a, &b| attack[a][0].total_cmp(&attack[b][0]))
        .unwrap_or(0);
    let over = |d: usize| bytes[0][d] as f64 / bytes[1][d].max(1) as f64 - 1.0;
    let total =
        (bytes[0][0] + bytes[0][1]) as f64 / (bytes[1][0] + bytes[1][1]).max(1) as f64 - 1.0;
    println!(
        "traces {dir}: {nu} users, {} flows scored, chance {chance:.3}",
        owners.len()
    );
    println!("| correlator | top-1 acc | × chance | ROC AUC | TPR@FPR 1e-2 | TPR@FPR 1e-3 |");
    println!("|---|---|---|---|---|---|");
    for (c, a) in attack.iter().enumerate() {
        println!(
            "| {}{} | {:.3} | {:.1} | {:.3} | {:.3} | {:.3} |",
            CORRELATORS[c],
            if c == best { " (best)" } else { "" },
            a[0],
            a[0] / chance,
            a[1],
            a[2],
            a[3]
        );
    }
    println!(
        "entry bytes over exit payload: up {:+.1} %, down {:+.1} %, total {:+.1} %",
        over(0) * 100.0,
        over(1) * 100.0,
        total * 100.0
    );
    if let Some(path) = &o.summary {
        let label = std::path::Path::new(dir)
            .file_name()
            .map_or(dir.to_owned(), |n| n.to_string_lossy().into_owned());
        let a = attack[best];
        append_line(
            path,
            &format!(
                "real,{label},{nu},1,{},{chance},{:.4},0,{:.4},0,{total:.4},,",
                CORRELATORS[best], a[0], a[1]
            ),
        );
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let o = parse_opts();
    if let Some(path) = &o.emit_flows {
        return emit_flows(&o, path);
    }
    if let Some(dir) = &o.traces {
        return traces(&o, dir);
    }
    // Rows named with --rows may be sweep rows.
    let mut table = rows(o.sweep || o.rows.is_some());
    if let Some(want) = &o.rows {
        // A name ending in `*` picks every row it starts.
        let named = |w: &String, name: &str| {
            w == name || w.strip_suffix('*').is_some_and(|p| name.starts_with(p))
        };
        table.retain(|r| want.iter().any(|w| named(w, &r.name)));
        if !table.iter().any(|r| r.name == "off") {
            table.insert(0, rows(false).remove(0));
        }
    }
    eprintln!(
        "eval_timing: {} users, {} seeds, {} s, {} ms windows, lags 0..={}, {} configurations",
        o.users,
        o.seeds,
        o.secs,
        o.window_ms,
        o.max_lag,
        table.len()
    );
    // Rows with the same parameters (a profile equal to a mode row) are simulated once.
    let canon: Vec<usize> = (0..table.len())
        .map(|r| (0..r).find(|&k| table[k].runs_as(&table[r])).unwrap_or(r))
        .collect();
    let jobs: Vec<(usize, u64)> = (0..table.len())
        .filter(|&r| canon[r] == r)
        .flat_map(|r| (0..o.seeds).map(move |s| (r, s)))
        .collect();
    let results: Mutex<Vec<Option<RunOut>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(2));
    let started = std::time::Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(r, s)) = jobs.get(j) else { break };
                    let out = run(&o, 1000 + s, &table[r]);
                    results.lock().unwrap_or_else(|e| e.into_inner())[j] = Some(out);
                }
            });
        }
    });
    let results: Vec<RunOut> = results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect();
    eprintln!(
        "eval_timing: simulated in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let of = |r: usize| -> Vec<&RunOut> {
        let r = canon[r];
        jobs.iter()
            .zip(&results)
            .filter(|((jr, _), _)| *jr == r)
            .map(|(_, out)| out)
            .collect()
    };
    let off_row = table.iter().position(|r| r.name == "off").expect("off row");
    let chance = 1.0 / o.users as f64;

    println!(
        "Top-1 matching accuracy per correlator (chance {:.3}), mean ± sd over {} seeds:\n",
        chance, o.seeds
    );
    println!("| configuration | {} |", CORRELATORS.join(" | "));
    println!("|---|{}", "---|".repeat(CORRELATORS.len()));
    let mut best_of = Vec::new();
    for (ri, row) in table.iter().enumerate() {
        let runs = of(ri);
        let accs: Vec<Vec<f64>> = (0..CORRELATORS.len())
            .map(|c| runs.iter().map(|r| r.attack[c][0]).collect())
            .collect();
        let best = (0..CORRELATORS.len())
            .max_by(|&a, &b| mean_sd(&accs[a]).0.total_cmp(&mean_sd(&accs[b]).0))
            .unwrap_or(0);
        best_of.push(best);
        let cells: Vec<String> = accs.iter().map(|a| ms(a, 1.0, 3)).collect();
        println!("| {} | {} |", row.name, cells.join(" | "));
    }

    println!("\nThe strongest correlator per configuration, and the cost:\n");
    println!(
        "| configuration | correlator | top-1 acc | × chance | ROC AUC | TPR@FPR 1e-2 | TPR@FPR 1e-3 | overhead up | overhead down | overhead total | added latency p50 (ms) | p99 (ms) | FCT change (median) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut off_acc = 0.0;
    let mut default_acc = None;
    for (ri, row) in table.iter().enumerate() {
        let runs = of(ri);
        let c = best_of[ri];
        let get = |k: usize| -> Vec<f64> { runs.iter().map(|r| r.attack[c][k]).collect() };
        let acc = get(0);
        if ri == off_row {
            off_acc = mean_sd(&acc).0;
        }
        if row.name == "profile:default" {
            default_acc = Some(mean_sd(&acc).0);
        }
        let offs = of(off_row);
        let over = |d: Option<usize>| -> Vec<f64> {
            runs.iter()
                .zip(&offs)
                .map(|(r, b)| {
                    let (w, bw) = match d {
                        Some(d) => (r.wire[d], b.wire[d]),
                        None => (r.wire[0] + r.wire[1], b.wire[0] + b.wire[1]),
                    };
                    w as f64 / bw as f64 - 1.0
                })
                .collect()
        };
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        let mut fct = Vec::new();
        for (r, b) in runs.iter().zip(&offs) {
            let mut h = r.holds.clone();
            p50.push(percentile(&mut h, 0.5) / 1000.0);
            p99.push(percentile(&mut h, 0.99) / 1000.0);
            let mut ch: Vec<f64> = r
                .fct
                .iter()
                .zip(&b.fct)
                .map(|(&m, &base)| m as f64 / base.max(1) as f64 - 1.0)
                .collect();
            ch.sort_unstable_by(f64::total_cmp);
            fct.push(ch[ch.len() / 2]);
        }
        let (am, _) = mean_sd(&acc);
        println!(
            "| {} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            CORRELATORS[c],
            ms(&acc, 1.0, 3),
            am / chance,
            ms(&get(1), 1.0, 3),
            ms(&get(2), 1.0, 3),
            ms(&get(3), 1.0, 3),
            pct(&over(Some(0))),
            pct(&over(Some(1))),
            pct(&over(None)),
            ms(&p50, 1.0, 2),
            ms(&p99, 1.0, 2),
            pct(&fct),
        );
        if let Some(path) = &o.summary {
            // Overhead against the payload (what a real capture can measure), not against off.
            let over_payload: Vec<f64> = runs
                .iter()
                .map(|r| {
                    (r.wire[0] + r.wire[1]) as f64 / (r.real[0] + r.real[1]).max(1) as f64 - 1.0
                })
                .collect();
            let (a, asd) = mean_sd(&acc);
            let (u, usd) = mean_sd(&get(1));
            let line = format!(
                "sim,{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.2},{:.2}",
                row.name,
                o.users,
                runs.len(),
                CORRELATORS[c],
                chance,
                a,
                asd,
                u,
                usd,
                mean_sd(&over_payload).0,
                mean_sd(&p50).0,
                mean_sd(&p99).0,
            );
            append_line(path, &line);
        }
    }
    println!(
        "\noverhead = wire bytes (records incl. padding) / wire bytes with off - 1; added latency = wait of each DATA frame's oldest byte in the scheduler; FCT = last byte delivered - flow start, per flow against off."
    );
    if o.check {
        // The correlator must work: unshaped traffic has to be matched far above chance.
        let need = (20.0 * chance).max(0.5);
        if off_acc < need {
            eprintln!(
                "eval_timing: FAIL: off accuracy {off_acc:.3} < {need:.3}: the correlator does not work"
            );
            return ExitCode::FAILURE;
        }
        eprintln!("eval_timing: check ok: off accuracy {off_acc:.3} >= {need:.3}");
        // And `default` must still hide flows: well below `off` against every correlator.
        if let Some(d) = default_acc {
            let most = 0.85 * off_acc;
            if d > most {
                eprintln!(
                    "eval_timing: FAIL: default accuracy {d:.3} > {most:.3} (0.85 x off): default no longer hides flows"
                );
                return ExitCode::FAILURE;
            }
            eprintln!("eval_timing: check ok: default accuracy {d:.3} <= {most:.3} (0.85 x off)");
        }
    }
    ExitCode::SUCCESS
}

fn pct(v: &[f64]) -> String {
    let (m, s) = mean_sd(v);
    format!("{:+.1} ± {:.1} %", m * 100.0, s * 100.0)
}
