//! CPU cost of the tunnel core: raw AEAD, record layer, handshake (and each side's share, as handshakes per core-second), stream open, session throughput.
//!
//! `cargo bench --bench core` (add `--features aead-ring` for the ring backend). No harness:
//! each figure is the median (and the best) of several timed runs after a calibration run
//! that doubles as warm-up. Everything runs in memory on one thread; nothing touches a
//! socket or sleeps. The session pump's "paired" ratio divides each run's rate by a raw
//! 16 KiB seal+open pass timed just before it, which is steadier on a busy machine.
//!
//! The session pump runs twice per stream count: "read per flight" drains the relay's
//! streams once the client's whole flight (up to `HIGH_WATER`) has been handed in, as the
//! engine does today; "read per 64 KiB" drains them after every transport read, which
//! shows what the larger working set of the first costs.
//!
//! Arguments select sections by substring (`aead`, `record`, `handshake`, `open`, `pump`),
//! e.g. `cargo bench --bench core -- aead pump`; without `aead` the ratios to the raw AEAD
//! rate print as n/a, except the pump's paired one, which has its own reference.
//!
//! Environment: `QNET_BENCH_BYTES` (default 1 GiB) is the amount pumped per session
//! throughput run; `QNET_BENCH_RUNS` (default 5) how many timed runs each session
//! throughput figure is the median of.

use std::hint::black_box;
use std::time::{Duration, Instant};

use qnet::engine::{HIGH_WATER, READ_CHUNK};
use qnet::proto::admit::Admission;
use qnet::proto::aead::{AeadKey, Cipher, TAG_LEN};
use qnet::proto::elligator::{self, Ephemeral};
use qnet::proto::frame::{FrameRepr, MAX_PAYLOAD};
use qnet::proto::kem;
use qnet::proto::mask::PAD_MAX;
use qnet::proto::noise::{Handshake, MSG1_LEN, MSG3_LEN, REPLY_LEN, TransportParams, public_key};
use qnet::proto::record::{MAX_RECORD, Opener, Sealer};
use qnet::proto::sim::Pair;
use qnet::proto::{Destination, Event, Random, SeededRandom, Session, SessionConfig};

/// Small message size (a typical MTU-sized packet's worth of data).
const SMALL: usize = 1400;
/// Large message size (the largest DATA payload).
const LARGE: usize = MAX_PAYLOAD;
/// Timed runs per micro-benchmark figure.
const MICRO_RUNS: usize = 7;
/// Wall time one micro-benchmark run aims for.
const MICRO_TARGET: Duration = Duration::from_millis(150);
/// Streams opened per fresh session pair in the stream-open benchmark.
const OPEN_BATCH: u64 = 10_000;
/// Size of one application write in the throughput benchmark.
const WRITE_CHUNK: usize = 16 * 1024;

/// A figure over several runs: the median, and the best run (the least disturbed by
/// anything else running on the machine).
#[derive(Clone, Copy)]
struct Stat {
    median: f64,
    best: f64,
}

impl Stat {
    /// From per-run values where higher is better (rates).
    fn higher_better(mut v: Vec<f64>) -> Stat {
        v.sort_by(f64::total_cmp);
        Stat {
            median: v[v.len() / 2],
            best: v[v.len() - 1],
        }
    }

    /// From per-run values where lower is better (times).
    fn lower_better(mut v: Vec<f64>) -> Stat {
        v.sort_by(f64::total_cmp);
        Stat {
            median: v[v.len() / 2],
            best: v[0],
        }
    }

    /// Seconds per message of `bytes` → GB/s.
    fn to_gbps(self, bytes: usize) -> Stat {
        Stat {
            median: gbps(bytes, self.median),
            best: gbps(bytes, self.best),
        }
    }

    /// Seconds → microseconds.
    fn to_us(self) -> Stat {
        Stat {
            median: self.median * 1e6,
            best: self.best * 1e6,
        }
    }
}

/// Seconds per iteration of `f(iters)` (which returns the time `iters` iterations took)
/// over [`MICRO_RUNS`] runs. The first calls calibrate `iters` so that one run takes
/// about [`MICRO_TARGET`].
fn per_iter(mut f: impl FnMut(u64) -> Duration) -> Stat {
    let mut iters = 1u64;
    loop {
        let t = f(iters);
        if t >= MICRO_TARGET / 8 {
            let scale = MICRO_TARGET.as_secs_f64() / t.as_secs_f64();
            iters = ((iters as f64 * scale).ceil() as u64).max(1);
            break;
        }
        iters *= 4;
    }
    Stat::lower_better(
        (0..MICRO_RUNS)
            .map(|_| f(iters).as_secs_f64() / iters as f64)
            .collect(),
    )
}

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be an integer, got {v:?}")),
        Err(_) => default,
    }
}

/// Nanoseconds this thread has spent on a CPU (Linux `schedstat`), to tell a quiet
/// machine from a busy one: on a busy one the wall-clock figures are too low.
fn on_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn size_label(n: usize) -> String {
    if n % 1024 == 0 {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

/// `part / whole` in percent; "n/a" when the reference was not measured (filtered out).
fn percent(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{:.1} %", 100.0 * part / whole)
    } else {
        "n/a".to_owned()
    }
}

fn row(case: &str, size: &str, v: Stat, unit: &str, note: &str) {
    println!(
        "{case:<44} {size:>8} {:>9.3} {:>9.3} {unit:<5} {note}",
        v.median, v.best
    );
}

// ---- 1. raw AEAD --------------------------------------------------------------------

fn aead_seal(size: usize) -> Stat {
    let key = AeadKey::new(&[7u8; 32]);
    let mut buf = vec![0x5au8; size];
    let mut ctr = 0u64;
    let s = per_iter(|iters| {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(key.seal(ctr, black_box(&mut buf[..])));
            ctr += 1;
        }
        t.elapsed()
    });
    s.to_gbps(size)
}

fn aead_seal_open(size: usize) -> Stat {
    let key = AeadKey::new(&[7u8; 32]);
    let mut buf = vec![0x5au8; size + TAG_LEN];
    let mut ctr = 0u64;
    let s = per_iter(|iters| {
        let t = Instant::now();
        for _ in 0..iters {
            let tag = key.seal(ctr, black_box(&mut buf[..size]));
            buf[size..].copy_from_slice(&tag);
            key.open(ctr, black_box(&mut buf[..]))
                .expect("own record opens");
            ctr += 1;
        }
        t.elapsed()
    });
    s.to_gbps(size)
}

// ---- 2. record layer ----------------------------------------------------------------

fn record_seal_open(cipher: Cipher, size: usize) -> Stat {
    let mut sealer = Sealer::new(cipher, [3u8; 32]);
    let mut opener = Opener::new(cipher, [3u8; 32]);
    let payload = vec![0xa5u8; size];
    let mut wire = Vec::with_capacity(MAX_RECORD);
    let s = per_iter(|iters| {
        let t = Instant::now();
        for _ in 0..iters {
            wire.clear();
            let frame = FrameRepr::Data {
                stream: 1,
                data: black_box(&payload[..]),
            };
            sealer.seal(&mut wire, &frame, 0);
            let r = opener
                .open(&mut wire)
                .expect("own record opens")
                .expect("whole record");
            black_box(&wire[r.frame]);
        }
        t.elapsed()
    });
    s.to_gbps(size)
}

// ---- 3. handshake -------------------------------------------------------------------

const PARAMS: TransportParams = TransportParams {
    stream_window: 256 * 1024,
    session_window: 16 * 1024 * 1024,
    ciphers: 0,
};

/// Which part of a handshake [`handshake_us`] times.
#[derive(Clone, Copy)]
enum Side {
    Both,
    /// msg1 written, msg2 read and msg3 written: one handshake per core-second of these
    /// is the client's ceiling.
    Client,
    /// msg1 read, msg2 written and msg3 read: the relay's work per admitted client.
    Relay,
}

fn handshake_us(side: Side) -> Stat {
    let client_key = [0x11u8; 32];
    let relay_key = [0x22u8; 32];
    let relay_pub = public_key(&relay_key);
    // Built once, as the relay does when it loads its allow-list.
    let admission = Admission::new(&relay_key, [public_key(&client_key)]);
    let mut rng = SeededRandom::new(9);
    let s = per_iter(|iters| {
        let (mut client, mut relay) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..iters {
            let t = Instant::now();
            let mut c = Handshake::initiator(&client_key, &relay_pub, PARAMS, &mut rng);
            let m1 = c.write_msg1(1_700_000_000_000, &mut rng);
            let t1 = Instant::now();
            let mut r = Handshake::responder(&relay_key, PARAMS, &mut rng);
            let f = r.read_msg1(black_box(&m1[..MSG1_LEN])).expect("msg1");
            let a = admission
                .check_msg1(&f.ephemeral, f.stamp_ms, &f.hint, &f.tag)
                .expect("admitted");
            r.read_pad1(a.mask, &m1[MSG1_LEN..]).expect("pad1");
            let reply = r.write_reply(&mut rng).expect("msg1");
            let t2 = Instant::now();
            c.read_reply(black_box(&reply[..REPLY_LEN])).expect("msg2");
            let (m3, co) = c
                .finish_client(&reply[REPLY_LEN..], &mut rng)
                .expect("pad2");
            let t3 = Instant::now();
            r.read_msg3(black_box(&m3[..MSG3_LEN])).expect("msg3");
            let ro = r.finish_relay(&m3[MSG3_LEN..]).expect("pad3");
            let t4 = Instant::now();
            black_box((co.send, ro.recv));
            client += (t1 - t) + (t3 - t2);
            relay += (t2 - t1) + (t4 - t3);
        }
        match side {
            Side::Both => client + relay,
            Side::Client => client,
            Side::Relay => relay,
        }
    });
    s.to_us()
}

/// Each end's ephemeral key with its Elligator2 representative, and the decoding of the
/// peer's.
fn elligator_us() -> [(&'static str, Stat, &'static str); 2] {
    let mut rng = SeededRandom::new(11);
    let e = Ephemeral::generate(|b| rng.fill(b));
    let generate = per_iter(|iters| {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(Ephemeral::generate(|b| rng.fill(b)));
        }
        t.elapsed()
    });
    let decode = per_iter(|iters| {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(elligator::decode(black_box(e.representative())));
        }
        t.elapsed()
    });
    [
        (
            "  ephemeral key + Elligator2 representative",
            generate.to_us(),
            "each end, per handshake",
        ),
        (
            "  Elligator2 decode",
            decode.to_us(),
            "each end, the peer's key",
        ),
    ]
}

/// The ML-KEM-768 operations inside the handshake, each alone.
fn kem_us() -> [(&'static str, Stat, &'static str); 3] {
    let mut rng = SeededRandom::new(10);
    let pair = kem::KeyPair::generate(&mut rng);
    let ek = *pair.public();
    let (ct, _) = kem::encapsulate(&ek, &mut rng).expect("valid key");
    let keygen = per_iter(|iters| {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(kem::KeyPair::generate(&mut rng));
        }
        t.elapsed()
    });
    let encaps = per_iter(|iters| {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(kem::encapsulate(black_box(&ek), &mut rng));
        }
        t.elapsed()
    });
    let decaps = per_iter(|iters| {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(pair.psk(black_box(&ct)));
        }
        t.elapsed()
    });
    [
        (
            "  ML-KEM-768 key pair",
            keygen.to_us(),
            "client, per handshake",
        ),
        (
            "  ML-KEM-768 key check + encapsulate",
            encaps.to_us(),
            "relay",
        ),
        ("  ML-KEM-768 decapsulate + psk", decaps.to_us(), "client"),
    ]
}

/// Handshakes per second on one core at `us` microseconds each.
fn per_core_second(us: Stat) -> String {
    format!("{:.0} per core-second", 1e6 / us.median)
}

/// Two `Session`s (client and relay) through the whole handshake in memory.
fn session_handshake_us() -> Stat {
    let mut seed = 0u64;
    let s = per_iter(|iters| {
        let t = Instant::now();
        for _ in 0..iters {
            seed += 1;
            let mut p = Pair::new(seed);
            p.connect();
            black_box(&p);
        }
        t.elapsed()
    });
    s.to_us()
}

// ---- 4. stream open -----------------------------------------------------------------

/// An established pair with every event drained; the sim wires stay empty from here on
/// because the benchmarks move bytes between `client` and `server` themselves.
fn connected_pair(seed: u64, cfg: SessionConfig) -> Pair {
    let mut p = Pair::with_config(seed, cfg.clone(), cfg);
    p.connect();
    assert!(p.client.transmit().is_empty() && p.server.transmit().is_empty());
    p.client_events.clear();
    p.server_events.clear();
    while p.client.poll_event().is_some() {}
    while p.server.poll_event().is_some() {}
    p
}

/// Hand everything `from` has queued to `to`, in transport reads of at most `READ_CHUNK`.
fn move_bytes(now: Instant, from: &mut Session, to: &mut Session) {
    loop {
        let out = from.transmit();
        if out.is_empty() {
            return;
        }
        let n = out.len().min(READ_CHUNK);
        to.handle_input(now, &out[..n]).expect("peer accepts input");
        from.transmit_done(n);
    }
}

fn dest() -> Destination {
    Destination::Addr("192.0.2.1:443".parse().expect("literal address"))
}

/// Client `open`, relay handles OPEN and answers `open_result(Ok)`, client handles
/// OPEN_RESULT: one lockstep round trip per stream. Adds the client `open` + relay part to `split`.
fn open_one(c: &mut Session, s: &mut Session, now: Instant, split: &mut Duration) {
    let t0 = Instant::now();
    let (id, _) = c.open(now, dest(), 0, &[]).expect("open");
    move_bytes(now, c, s);
    let mut answered = false;
    while let Some(e) = s.poll_event() {
        if let Event::Opened { stream, .. } = e {
            s.open_result(now, stream, Ok(())).expect("answer");
            answered = stream == id;
        }
    }
    *split += t0.elapsed();
    assert!(answered, "relay saw the OPEN");
    move_bytes(now, s, c);
    while let Some(e) = c.poll_event() {
        black_box(e);
    }
}

fn stream_open_us() -> (Stat, Stat) {
    let mut seed = 100u64;
    let mut split_runs = vec![];
    let total = per_iter(|iters| {
        let mut elapsed = Duration::ZERO;
        let mut split = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let batch = left.min(OPEN_BATCH);
            left -= batch;
            seed += 1;
            let mut p = connected_pair(seed, SessionConfig::default());
            let now = p.now;
            let t = Instant::now();
            for _ in 0..batch {
                open_one(&mut p.client, &mut p.server, now, &mut split);
            }
            elapsed += t.elapsed();
            assert_eq!(p.server.stream_count() as u64, batch);
        }
        split_runs.push(split.as_secs_f64() / iters as f64);
        elapsed
    });
    // Drop the calibration runs' figures: only the timed runs count.
    let timed = split_runs.split_off(split_runs.len() - MICRO_RUNS);
    (total.to_us(), Stat::lower_better(timed).to_us())
}

// ---- 5. session throughput ----------------------------------------------------------

/// When the relay drains its streams.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadAt {
    /// After the whole flight from the client has been handed in (as the engine's
    /// `Link::read_in` does: read the socket until `WouldBlock`, then pump the streams).
    Flight,
    /// After every `READ_CHUNK` transport read: keeps the buffered bytes in cache.
    EachRead,
}

/// The relay reads every stream that reported `Readable` (`peek` + `consume`, zero copy as
/// the engine's `pump_down` does); returns the bytes taken.
fn relay_drain(s: &mut Session, now: Instant, ready: &mut Vec<u32>) -> usize {
    while let Some(e) = s.poll_event() {
        if let Event::Readable { stream } = e {
            ready.push(stream);
        }
    }
    let mut got = 0;
    for id in ready.drain(..) {
        let n = match s.peek(id) {
            Some((a, b)) => {
                black_box((a, b));
                a.len() + b.len()
            }
            None => 0,
        };
        s.consume(now, id, n).expect("consume");
        got += n;
    }
    got
}

/// Pump `total` bytes client → relay over `streams` streams; returns seconds for the pump.
///
/// Mirrors the engine: the client takes 16 KiB application writes round-robin while a
/// stream has credit and queued output is under `HIGH_WATER`; its output reaches the relay
/// in `READ_CHUNK` transport reads; the relay drains the readable streams (when: `read_at`)
/// and its WINDOW_UPDATEs go back before the client writes again.
fn pump(seed: u64, streams: usize, total: usize, read_at: ReadAt) -> f64 {
    let mut p = connected_pair(seed, SessionConfig::default());
    let now = p.now;
    let (c, s) = (&mut p.client, &mut p.server);
    let ids: Vec<u32> = (0..streams)
        .map(|_| {
            let (id, _) = c.open(now, dest(), 0, &[]).expect("open");
            id
        })
        .collect();
    move_bytes(now, c, s);
    while let Some(e) = s.poll_event() {
        if let Event::Opened { stream, .. } = e {
            s.open_result(now, stream, Ok(())).expect("answer");
        }
    }
    move_bytes(now, s, c);
    while c.poll_event().is_some() {}

    let src: Vec<u8> = (0..WRITE_CHUNK).map(|i| (i * 31 + 7) as u8).collect();
    let mut ready = Vec::with_capacity(streams);
    let (mut sent, mut got, mut rr) = (0usize, 0usize, 0usize);
    let t = Instant::now();
    while got < total {
        // Client: application writes, round-robin, as far as credit and HIGH_WATER allow.
        let mut starved = 0;
        while sent < total && starved < streams && c.transmit().len() < HIGH_WATER {
            let id = ids[rr];
            rr = (rr + 1) % streams;
            let cap = c
                .stream_send_capacity(id)
                .min(WRITE_CHUNK)
                .min(total - sent);
            if cap == 0 {
                starved += 1;
                continue;
            }
            starved = 0;
            sent += c.write(now, id, &src[..cap]).expect("write");
        }
        assert!(
            !c.transmit().is_empty() || got < sent,
            "no progress: sent {sent} got {got}"
        );
        // Transport client → relay, in transport-sized reads.
        loop {
            let out = c.transmit();
            if out.is_empty() {
                break;
            }
            let n = out.len().min(READ_CHUNK);
            s.handle_input(now, &out[..n]).expect("relay accepts input");
            c.transmit_done(n);
            if read_at == ReadAt::EachRead {
                got += relay_drain(s, now, &mut ready);
            }
        }
        got += relay_drain(s, now, &mut ready);
        // Transport relay → client (WINDOW_UPDATEs), then the client's events.
        move_bytes(now, s, c);
        while c.poll_event().is_some() {}
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(got, total);
    assert_eq!(s.stats().bytes_received, total as u64);
    assert!(c.error().is_none() && s.error().is_none());
    secs
}

/// Raw AEAD seal+open of `bytes` in 16 KiB messages: GB/s, timed once (no calibration).
fn raw_seal_open_pass(bytes: usize) -> f64 {
    let key = AeadKey::new(&[7u8; 32]);
    let mut buf = vec![0x5au8; LARGE + TAG_LEN];
    let iters = bytes.div_ceil(LARGE);
    let t = Instant::now();
    for ctr in 0..iters as u64 {
        let tag = key.seal(ctr, black_box(&mut buf[..LARGE]));
        buf[LARGE..].copy_from_slice(&tag);
        key.open(ctr, black_box(&mut buf[..]))
            .expect("own record opens");
    }
    gbps(iters * LARGE, t.elapsed().as_secs_f64())
}

/// GB/s of `runs` pumps, and each run's rate over a raw 16 KiB seal+open pass timed
/// right before it (so a load change on the machine between the
/// reference and the pump skews the ratio less).
fn session_throughput(streams: usize, read_at: ReadAt, total: usize, runs: usize) -> (Stat, Stat) {
    // Warm-up: a short pump so the first timed run does not pay for page faults alone.
    pump(500, streams, total.min(64 << 20), read_at);
    let mut rates = vec![];
    let mut ratios = vec![];
    for i in 0..runs {
        let reference = raw_seal_open_pass(total.min(256 << 20));
        let rate = gbps(total, pump(1000 + i as u64, streams, total, read_at));
        rates.push(rate);
        ratios.push(rate / reference);
    }
    (Stat::higher_better(rates), Stat::higher_better(ratios))
}

fn main() {
    let started = Instant::now();
    let cpu_start = on_cpu_ns();
    let load_start = load_average();
    // `cargo bench` passes `--bench`; anything else that is not a flag filters sections.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run =
        |section: &str| filter.is_empty() || filter.iter().any(|f| section.contains(f.as_str()));
    let total = env_usize("QNET_BENCH_BYTES", 1 << 30);
    let runs = env_usize("QNET_BENCH_RUNS", 5).max(1);
    let backend = if cfg!(feature = "aead-ring") {
        "ring (feature aead-ring)"
    } else {
        "chacha20poly1305 crate (default)"
    };
    println!("qnet core benchmark");
    println!("AEAD backend: {backend}");
    println!(
        "GB/s = 10^9 payload bytes per second, one thread; median and best of {MICRO_RUNS} runs \
         (session throughput: {runs} runs of {total} bytes, QNET_BENCH_BYTES / QNET_BENCH_RUNS)"
    );
    println!();
    println!(
        "{:<44} {:>8} {:>9} {:>9} {:<5} note",
        "case", "size", "median", "best", "unit"
    );
    println!("{}", "-".repeat(110));

    let mut raw_seal_open = [Stat {
        median: 0.0,
        best: 0.0,
    }; 2];
    if run("aead") {
        for (i, size) in [SMALL, LARGE].into_iter().enumerate() {
            let seal = aead_seal(size);
            row("aead seal", &size_label(size), seal, "GB/s", "");
            raw_seal_open[i] = aead_seal_open(size);
            row(
                "aead seal+open",
                &size_label(size),
                raw_seal_open[i],
                "GB/s",
                "reference rate",
            );
        }
        // Fixed per-record cost: what every small control record (OPEN, OPEN_RESULT,
        // WINDOW_UPDATE) pays; it dominates the stream-open figure.
        let tiny = 32;
        let r = aead_seal_open(tiny);
        row(
            "aead seal+open, fixed cost",
            &size_label(tiny),
            // The best rate is the shortest time per pair.
            Stat {
                median: tiny as f64 / r.median / 1e3,
                best: tiny as f64 / r.best / 1e3,
            },
            "µs",
            "per seal+open pair",
        );
    }
    for (i, size) in [SMALL, LARGE].into_iter().enumerate() {
        if !run("record") {
            break;
        }
        let rate = record_seal_open(Cipher::ChaCha20Poly1305, size);
        row(
            "record Sealer::seal + Opener::open (DATA)",
            &size_label(size),
            rate,
            "GB/s",
            &format!(
                "{} of raw seal+open (medians), {} (best)",
                percent(rate.median, raw_seal_open[i].median),
                percent(rate.best, raw_seal_open[i].best)
            ),
        );
    }
    // Where this build offers AES-256-GCM (aead-ring, and hardware AES).
    if run("record") && Cipher::offer(true) != 0 {
        for size in [SMALL, LARGE] {
            let aes = record_seal_open(Cipher::Aes256Gcm, size);
            let chacha = record_seal_open(Cipher::ChaCha20Poly1305, size);
            row(
                "record seal + open, AES-256-GCM (hardware)",
                &size_label(size),
                aes,
                "GB/s",
                &format!(
                    "{:.2}x ChaCha20-Poly1305 (medians)",
                    aes.median / chacha.median
                ),
            );
        }
    }
    if run("handshake") {
        row(
            "hybrid handshake, XKpsk2 + ML-KEM (both sides)",
            "",
            handshake_us(Side::Both),
            "µs",
            "per handshake",
        );
        for (case, side) in [
            ("  the client's share", Side::Client),
            ("  the relay's share", Side::Relay),
        ] {
            let us = handshake_us(side);
            row(case, "", us, "µs", &per_core_second(us));
        }
        for (case, us, note) in elligator_us().into_iter().chain(kem_us()) {
            row(case, "", us, "µs", note);
        }
        println!(
            "{:<44} msg1 {} + pad 0-{p}, relay's flight {} + pad 0-{p}, msg3 {} + pad 0-{p}",
            "handshake bytes on the wire",
            MSG1_LEN,
            REPLY_LEN,
            MSG3_LEN,
            p = PAD_MAX
        );
        row(
            "session handshake (2 Session::new + connect)",
            "",
            session_handshake_us(),
            "µs",
            "sim::Pair, incl. 2 public_key() derivations",
        );
    }
    if run("open") {
        let (open_total, open_split) = stream_open_us();
        row(
            "stream open, full round trip",
            "",
            open_total,
            "µs",
            "per stream; target < 5 µs",
        );
        row(
            "  of which client open + relay OPEN/answer",
            "",
            open_split,
            "µs",
            "per stream",
        );
    }
    for (streams, read_at) in [
        (1usize, ReadAt::Flight),
        (100, ReadAt::Flight),
        (1, ReadAt::EachRead),
        (100, ReadAt::EachRead),
    ] {
        if !run("pump") {
            break;
        }
        let t = Instant::now();
        let (rate, paired) = session_throughput(streams, read_at, total, runs);
        let when = match read_at {
            ReadAt::Flight => "flight",
            ReadAt::EachRead => "64 KiB",
        };
        let plural = if streams == 1 { "" } else { "s" };
        row(
            &format!("session pump, {streams} stream{plural}, read per {when}"),
            &size_label(WRITE_CHUNK),
            rate,
            "GB/s",
            &format!(
                "{} of raw seal+open 16 KiB (medians), {} (best), {} (paired); \
                 target ≥ 80 %; {:.0} s",
                percent(rate.median, raw_seal_open[1].median),
                percent(rate.best, raw_seal_open[1].best),
                percent(paired.median, 1.0),
                t.elapsed().as_secs_f64(),
            ),
        );
    }
    println!();
    let wall = started.elapsed();
    let on_cpu = match (cpu_start, on_cpu_ns()) {
        (Some(a), Some(b)) => format!(
            "{:.1} %",
            100.0 * (b - a) as f64 / wall.as_nanos().max(1) as f64
        ),
        _ => "unknown".to_owned(),
    };
    println!(
        "total bench time {:.1} s; bench thread on CPU {on_cpu} of it; 1-min load average \
         {load_start} at start, {} at end (other work on the machine lowers the figures)",
        wall.as_secs_f64(),
        load_average()
    );
}
