//! Active probing of a real `qnet-relay` on loopback: a censor's tries to confirm that a
//! host runs qnet. Every kind of probe must get the same silence (not a byte back, also
//! for a stranger's key that holds the relay's public key: issue 12) and the same
//! close-time distribution. The relay's drain window is shortened to 300–700 ms through
//! its config, every kind is sampled 24 times with the kinds interleaved, and each
//! kind's close times are compared with every other kind's and with all the others'
//! pooled, by two-sample Kolmogorov–Smirnov statistics; no single case is timed.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{start_relay_with, tempdir};
use qnet::keys::PrivateKey;
use qnet::proto::mask::PAD_MAX;
use qnet::proto::noise::MSG1_LEN;
use qnet::proto::{
    OsRandom, Random, Role, SeededRandom, Session, SessionConfig, SimClock, SystemClock, WallClock,
};

const DRAIN_MIN: Duration = Duration::from_millis(300);
const DRAIN_MAX: Duration = Duration::from_millis(700);
/// Samples per kind.
const PER_KIND: usize = 24;
/// Time between starting two probes: about 30 connections are open at once.
const STAGGER: Duration = Duration::from_millis(20);
/// Largest KS statistic between one kind (n = 24) and the rest pooled (m = 192). Under
/// the same distribution P(D ≥ d) ≈ 2·exp(−2d²·nm/(n+m)): 5·10⁻⁵ at 0.5, so the nine
/// comparisons raise a false alarm about once in 2000 runs.
const KS_BOUND_REST: f64 = 0.5;
/// Largest KS statistic between two kinds (24 samples each): P ≈ 2·exp(−2d²·12) is
/// 10⁻⁵ at 0.7, about 4·10⁻⁴ over the 36 pairs. A kind that closes at one fixed time
/// scores about 0.5 against the rest and 0.5–1 against each other kind; the relay
/// before this rule (short flights closed at the handshake timeout, failures at a new
/// draw from the failure) scores 1.
const KS_BOUND_PAIR: f64 = 0.7;
/// A probe that sees no close by then has failed.
const GIVE_UP: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A real client's recorded msg1, sent again on a fresh connection.
    Replay,
    /// A prefix of the recorded msg1 and pad1, one byte short or more.
    Truncated,
    /// The recorded msg1 followed by 1–4000 random bytes.
    Oversized,
    /// Random bytes, 1 to 16384 of them (log-spread lengths).
    Random,
    /// A fresh msg1 from a clock ten minutes off (either way).
    Stale,
    /// A fresh msg1 for another relay key.
    WrongRelayKey,
    /// A fresh msg1 from a key not on the list, written with the relay's public key.
    Stranger,
    /// Connect and send nothing.
    Silent,
    /// One random byte every 40 ms.
    Slowloris,
}

const KINDS: [Kind; 9] = [
    Kind::Replay,
    Kind::Truncated,
    Kind::Oversized,
    Kind::Random,
    Kind::Stale,
    Kind::WrongRelayKey,
    Kind::Stranger,
    Kind::Silent,
    Kind::Slowloris,
];

/// What one probe saw.
struct Outcome {
    kind: Kind,
    bytes_back: usize,
    /// From connect to the relay's close (EOF or reset).
    close: Duration,
    reset: bool,
}

fn client_session(relay_public: [u8; 32], key: &[u8; 32], clock: Arc<dyn WallClock>) -> Session {
    Session::new(
        Instant::now(),
        SessionConfig {
            clock,
            ..SessionConfig::default()
        },
        Role::Client { relay_public },
        key,
        Box::new(OsRandom),
    )
}

/// A msg1 written now by the client `key` whose clock is `offset_secs` off (negative:
/// behind).
fn msg1_with_clock(relay_public: [u8; 32], key: &PrivateKey, offset_secs: i64) -> Vec<u8> {
    let now = Instant::now();
    let real = SystemClock.unix(now);
    let off = Duration::from_secs(offset_secs.unsigned_abs());
    let unix = if offset_secs < 0 {
        real - off
    } else {
        real + off
    };
    let s = client_session(
        relay_public,
        key.as_bytes(),
        Arc::new(SimClock { at: now, unix }),
    );
    s.transmit().to_vec()
}

/// Run a real client's handshake against the relay and return its first flight (msg1
/// and pad1).
fn record_first_flight(addr: SocketAddr, relay_public: [u8; 32], key: &PrivateKey) -> Vec<u8> {
    let mut s = client_session(relay_public, key.as_bytes(), Arc::new(SystemClock));
    let msg1 = s.transmit().to_vec();
    assert!((MSG1_LEN..=MSG1_LEN + PAD_MAX).contains(&msg1.len()));
    s.transmit_done(msg1.len());
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(&msg1).unwrap();
    let mut buf = [0u8; 4096];
    while !s.is_established() {
        let n = sock.read(&mut buf).expect("the relay answers a fresh msg1");
        assert!(n > 0, "the relay closed instead of answering");
        s.handle_input(Instant::now(), &buf[..n]).unwrap();
    }
    sock.write_all(s.transmit()).unwrap();
    msg1
}

fn random_bytes(rng: &mut SeededRandom, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v);
    v
}

fn below(rng: &mut SeededRandom, n: u64) -> u64 {
    let mut b = [0u8; 8];
    rng.fill(&mut b);
    u64::from_le_bytes(b) % n
}

/// Read until the relay closes; count what it sent. `trickle`: send a random byte
/// every 40 ms meanwhile (a slowloris).
fn await_close(mut sock: TcpStream, start: Instant, trickle: bool) -> (usize, Duration, bool) {
    let mut got = 0;
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(Duration::from_millis(40)))
        .unwrap();
    loop {
        assert!(start.elapsed() < GIVE_UP, "the relay never closed");
        match sock.read(&mut buf) {
            Ok(0) => return (got, start.elapsed(), false),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if trickle {
                    // A write after the relay's close may fail; the read then sees it.
                    let _ = sock.write_all(&[start.elapsed().as_nanos() as u8]);
                }
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return (got, start.elapsed(), true);
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// One probe of `kind`; `seed` varies lengths and bytes. `client` is on the list: its
/// stale and misaddressed messages fail for their staleness and address alone.
fn probe(
    kind: Kind,
    seed: u64,
    addr: SocketAddr,
    (relay_public, client): ([u8; 32], &PrivateKey),
    recorded: &[u8],
) -> Outcome {
    let mut rng = SeededRandom::new(seed);
    // Build what needs crypto before connecting, so the clock starts at the connect.
    let flight: Vec<u8> = match kind {
        Kind::Replay => recorded.to_vec(),
        Kind::Truncated => {
            recorded[..1 + below(&mut rng, recorded.len() as u64 - 1) as usize].to_vec()
        }
        Kind::Oversized => {
            let extra = 1 + below(&mut rng, 4000) as usize;
            [recorded, &random_bytes(&mut rng, extra)].concat()
        }
        Kind::Random => {
            let bits = below(&mut rng, 15) as u32;
            let n = 1 + below(&mut rng, 1 << bits) as usize;
            random_bytes(&mut rng, n)
        }
        Kind::Stale => {
            msg1_with_clock(relay_public, client, if seed % 2 == 0 { -600 } else { 600 })
        }
        Kind::WrongRelayKey => msg1_with_clock(PrivateKey::generate().public().0, client, 0),
        Kind::Stranger => msg1_with_clock(relay_public, &PrivateKey::generate(), 0),
        Kind::Silent | Kind::Slowloris => vec![],
    };
    let start = Instant::now();
    let mut sock = TcpStream::connect(addr).unwrap();
    if !flight.is_empty() {
        sock.write_all(&flight).unwrap();
    }
    let (got, close, reset) = await_close(sock, start, kind == Kind::Slowloris);
    Outcome {
        kind,
        bytes_back: got,
        close,
        reset,
    }
}

/// Two-sample Kolmogorov–Smirnov statistic: the largest gap between the empirical CDFs.
fn ks(a: &[f64], b: &[f64]) -> f64 {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

#[test]
fn ks_statistic_is_right_on_known_cases() {
    let a: Vec<f64> = (0..10).map(f64::from).collect();
    assert_eq!(ks(&a, &a), 0.0);
    let b: Vec<f64> = (10..20).map(f64::from).collect();
    assert_eq!(ks(&a, &b), 1.0);
    let c: Vec<f64> = (5..15).map(f64::from).collect();
    assert!((ks(&a, &c) - 0.5).abs() < 1e-12);
}

#[test]
fn every_probe_gets_the_same_silence_and_close_time_distribution() {
    let t = Instant::now();
    let dir = tempdir("probe-suite");
    let client = PrivateKey::generate();
    let relay = start_relay_with(
        &dir,
        &[client.public().0],
        // Four loops: replays land on other loops than the original did.
        &["--exit-allow", "127.0.0.0/8", "--threads", "4"],
        &format!(
            "drain_min_ms = {}\ndrain_max_ms = {}\n",
            DRAIN_MIN.as_millis(),
            DRAIN_MAX.as_millis()
        ),
    );
    let (addr, public) = (relay.addr, relay.public);
    let recorded = record_first_flight(addr, public, &client);

    // Every kind PER_KIND times, in a shuffled order, one start every STAGGER.
    let mut order: Vec<Kind> = KINDS
        .iter()
        .flat_map(|&k| std::iter::repeat_n(k, PER_KIND))
        .collect();
    let mut rng = SeededRandom::new(12);
    for i in (1..order.len()).rev() {
        order.swap(i, below(&mut rng, i as u64 + 1) as usize);
    }
    let outcomes: Vec<Outcome> = thread::scope(|scope| {
        let handles: Vec<_> = order
            .iter()
            .enumerate()
            .map(|(i, &kind)| {
                let (recorded, client) = (&recorded, &client);
                let h =
                    scope.spawn(move || probe(kind, i as u64, addr, (public, client), recorded));
                thread::sleep(STAGGER);
                h
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let times = |k: Kind| -> Vec<f64> {
        outcomes
            .iter()
            .filter(|o| o.kind == k)
            .map(|o| o.close.as_secs_f64() * 1000.0)
            .collect()
    };
    let mut worst = 0.0f64;
    for &k in &KINDS {
        let mine = times(k);
        let rest: Vec<f64> = outcomes
            .iter()
            .filter(|o| o.kind != k)
            .map(|o| o.close.as_secs_f64() * 1000.0)
            .collect();
        let d = ks(&mine, &rest);
        worst = worst.max(d);
        let mut sorted = mine.clone();
        sorted.sort_by(f64::total_cmp);
        let mean = mine.iter().sum::<f64>() / mine.len() as f64;
        let resets = outcomes.iter().filter(|o| o.kind == k && o.reset).count();
        eprintln!(
            "{k:?}: n {}, close ms min {:.0} median {:.0} mean {:.0} max {:.0}, KS vs rest {d:.3}, resets {resets}",
            mine.len(),
            sorted[0],
            sorted[sorted.len() / 2],
            mean,
            sorted[sorted.len() - 1]
        );
        assert!(d <= KS_BOUND_REST, "{k:?}: KS {d:.3} > {KS_BOUND_REST}");
    }
    let mut worst_pair = (0.0f64, KINDS[0], KINDS[0]);
    for (i, &a) in KINDS.iter().enumerate() {
        for &b in &KINDS[i + 1..] {
            let d = ks(&times(a), &times(b));
            if d > worst_pair.0 {
                worst_pair = (d, a, b);
            }
        }
    }
    let (d, a, b) = worst_pair;
    eprintln!("largest KS between two kinds: {d:.3} ({a:?}, {b:?}; bound {KS_BOUND_PAIR})");
    assert!(
        d <= KS_BOUND_PAIR,
        "{a:?} vs {b:?}: KS {d:.3} > {KS_BOUND_PAIR}"
    );
    for o in &outcomes {
        assert_eq!(o.bytes_back, 0, "{:?} drew bytes", o.kind);
        // The deadline is drawn at accept, which follows the connect: never earlier.
        assert!(
            o.close >= DRAIN_MIN,
            "{:?} closed after {:?}",
            o.kind,
            o.close
        );
        assert!(
            o.close <= DRAIN_MAX + Duration::from_millis(1500),
            "{:?} closed after {:?}",
            o.kind,
            o.close
        );
    }
    // Only the slowloris, still writing at the close, may see a reset.
    assert!(
        outcomes
            .iter()
            .all(|o| !o.reset || o.kind == Kind::Slowloris)
    );

    // The relay still answers an honest client at once.
    let fresh = Instant::now();
    record_first_flight(addr, public, &client);
    assert!(fresh.elapsed() < DRAIN_MIN, "honest handshake slowed");
    eprintln!(
        "{} probes, largest KS against the rest {worst:.3} (bound {KS_BOUND_REST}), {:.1} s",
        outcomes.len(),
        t.elapsed().as_secs_f64()
    );
}
