//! Floods against a real relay with small `[server]` caps: a handshake flood from several
//! source addresses, and one admitted key opening sessions, streams, lookups and PINGs
//! without limit. The relay's RSS and fd count stay inside the bounds its caps imply, and
//! another client's streams still open. Lean by design (it runs in CI on 2 cores): each
//! flood is bounded in count and in time.

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::load::fds;
use common::{Relay, TEST_DRAIN, rss_kib, start_relay_with, tempdir};
use qnet::keys::PrivateKey;
use qnet::proto::{Destination, Event, OpenError, OsRandom, Role, Session, SessionConfig};

/// The caps of every relay here: small, so a flood reaches them in a second or two.
const CAPS: &str = "max_connections = 64
max_connections_per_addr = 24
handshakes_per_sec = 40
handshakes_per_sec_per_addr = 10
sessions_per_key = 2
streams_per_session = 32
dials_per_key = 16
lookups_per_key = 4
output_high_water_kib = 256
";

fn relay(dir: &std::path::Path, keys: &[&PrivateKey]) -> Relay {
    let keys: Vec<[u8; 32]> = keys.iter().map(|k| k.public().0).collect();
    start_relay_with(
        dir,
        &keys,
        // Four loops on any machine: a key's sessions and a flood's connections land on
        // several, so every cap here is checked across loops, not within one.
        &["--exit-allow", "127.0.0.0/8", "--threads", "4"],
        &format!("{TEST_DRAIN}{CAPS}"),
    )
}

/// A thread-per-connection echo server.
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// The largest RSS (KiB) and fd count seen, sampled by [`Watch::sample`].
#[derive(Default, Debug)]
struct Watch {
    rss: u64,
    fds: usize,
}

impl Watch {
    fn sample(&mut self, pid: u32) {
        self.rss = self.rss.max(rss_kib(pid));
        self.fds = self.fds.max(fds(pid));
    }
}

/// A client session driven by hand over a blocking socket.
struct Raw {
    sock: TcpStream,
    s: Session,
    results: HashMap<u32, Result<(), OpenError>>,
    data: HashMap<u32, Vec<u8>>,
    closed: bool,
}

impl Raw {
    /// Connect and handshake; `None` if the relay does not answer within `limit`.
    fn connect(
        relay: &Relay,
        key: &PrivateKey,
        cfg: SessionConfig,
        limit: Duration,
    ) -> Option<Raw> {
        let sock = TcpStream::connect(relay.addr).unwrap();
        sock.set_nodelay(true).unwrap();
        let s = Session::new(
            Instant::now(),
            cfg,
            Role::Client {
                relay_public: relay.public,
            },
            key.as_bytes(),
            Box::new(OsRandom),
        );
        let mut r = Raw {
            sock,
            s,
            results: HashMap::new(),
            data: HashMap::new(),
            closed: false,
        };
        let end = Instant::now() + limit;
        while !r.s.is_established() {
            if r.closed || Instant::now() > end {
                return None;
            }
            r.step(Duration::from_millis(20));
        }
        // msg3: the relay counts the session from here on.
        r.step(Duration::from_millis(1));
        Some(r)
    }

    /// Write what is queued, read for up to `wait`, and take the events.
    fn step(&mut self, wait: Duration) {
        while !self.s.transmit().is_empty() {
            match self.sock.write(self.s.transmit()) {
                Ok(n) => self.s.transmit_done(n),
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        match self.sock.read(&mut buf) {
            Ok(0) => self.closed = true,
            Ok(n) => {
                if self.s.handle_input(Instant::now(), &buf[..n]).is_err() {
                    self.closed = true;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => self.closed = true,
        }
        while let Some(ev) = self.s.poll_event() {
            match ev {
                Event::OpenResult { stream, result } => {
                    self.results.insert(stream, result);
                }
                Event::Readable { stream } => {
                    let mut b = [0u8; 256];
                    while let Ok(Some(n)) = self.s.read(Instant::now(), stream, &mut b) {
                        if n == 0 {
                            break;
                        }
                        self.data
                            .entry(stream)
                            .or_default()
                            .extend_from_slice(&b[..n]);
                    }
                }
                _ => {}
            }
        }
    }

    fn open(&mut self, dest: Destination, msg: &[u8]) -> u32 {
        let (id, took) = self.s.open(Instant::now(), dest, 0, msg).unwrap();
        assert_eq!(took, msg.len());
        id
    }

    /// Open a stream to `echo` and wait (up to `limit`) for `msg` to come back.
    fn echoes(&mut self, echo: SocketAddr, msg: &[u8], limit: Duration) -> bool {
        let id = self.open(Destination::Addr(echo), msg);
        let end = Instant::now() + limit;
        while Instant::now() < end && !self.closed {
            self.step(Duration::from_millis(10));
            if self.data.get(&id).is_some_and(|d| d == msg) {
                let _ = self.s.reset(Instant::now(), id, 0);
                return true;
            }
        }
        false
    }
}

/// Connect from `src` (any port) to `dst`.
fn connect_from(src: std::net::IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(&dst.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

#[test]
fn handshake_flood_from_four_addresses_leaves_an_admitted_client_working() {
    let dir = tempdir("flood-hs");
    let good = PrivateKey::generate();
    let relay = relay(&dir, &[&good]);
    let pid = relay.child.id();
    let echo = echo_server();
    let (rss0, fds0) = (rss_kib(pid), fds(pid));
    let mut client = Raw::connect(
        &relay,
        &good,
        SessionConfig::default(),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(client.echoes(echo, b"before", Duration::from_secs(5)));

    // Four addresses, each connecting as fast as it can for 3 s (at most 1,500 tries
    // each) and sending a 48-byte first flight of junk, holding its last 40 connections.
    let stop = Arc::new(AtomicBool::new(false));
    let tries = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<_> = (2..6)
        .map(|i| {
            let (stop, tries) = (stop.clone(), tries.clone());
            let src = format!("127.0.0.{i}").parse().unwrap();
            let dst = relay.addr;
            thread::spawn(move || {
                let mut held = std::collections::VecDeque::new();
                for _ in 0..1500 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tries.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut s) = connect_from(src, dst) {
                        let junk: [u8; 48] = rand::random();
                        let _ = s.write_all(&junk);
                        held.push_back(s);
                        if held.len() > 40 {
                            held.pop_front();
                        }
                    }
                    thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    let mut watch = Watch::default();
    let mut echoed = 0;
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        watch.sample(pid);
        assert!(
            client.echoes(
                echo,
                format!("during {echoed}").as_bytes(),
                Duration::from_secs(5)
            ),
            "the admitted client's stream {echoed} did not open during the flood"
        );
        echoed += 1;
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    watch.sample(pid);
    eprintln!(
        "handshake flood: {} connection attempts from 4 addresses; relay {rss0} KiB / {fds0} fds before, at most {} KiB / {} fds during; {echoed} streams echoed meanwhile",
        tries.load(Ordering::Relaxed),
        watch.rss,
        watch.fds
    );
    // max_connections (64) client connections, the admitted one among them, plus one
    // destination socket of a stream at a time and a little slack.
    assert!(
        watch.fds <= fds0 + 64 + 8,
        "fds {} (from {fds0})",
        watch.fds
    );
    assert!(
        watch.rss <= rss0 + 32 * 1024,
        "rss {} KiB (from {rss0})",
        watch.rss
    );
    assert!(echoed >= 5);
    // The buckets refill: a new session (the key's second) handshakes again.
    thread::sleep(Duration::from_millis(1500));
    let mut again = Raw::connect(
        &relay,
        &good,
        SessionConfig::default(),
        Duration::from_secs(10),
    )
    .expect("no handshake after the flood");
    assert!(again.echoes(echo, b"after", Duration::from_secs(5)));
}

#[test]
fn one_key_without_limits_is_held_to_its_quotas_while_another_opens_streams() {
    let dir = tempdir("flood-key");
    let (bad, good) = (PrivateKey::generate(), PrivateKey::generate());
    let relay = relay(&dir, &[&bad, &good]);
    let pid = relay.child.id();
    let echo = echo_server();
    let (rss0, fds0) = (rss_kib(pid), fds(pid));
    let mut watch = Watch::default();
    let limit = Duration::from_secs(10);
    let mut other = Raw::connect(&relay, &good, SessionConfig::default(), limit).unwrap();

    // Sessions: the key's third is closed once it authenticates.
    let mut a = Raw::connect(&relay, &bad, SessionConfig::default(), limit).unwrap();
    let pinger_cfg = SessionConfig {
        // A PING on every timer call: the flood below.
        keepalive: Duration::ZERO,
        ..SessionConfig::default()
    };
    let mut b = Raw::connect(&relay, &bad, pinger_cfg, limit).unwrap();
    // More sessions, each likely on another loop than a's or b's (four loops): every
    // one is closed, so the count is the key's across the loops.
    let mut more: Vec<Raw> = (0..4)
        .map(|_| Raw::connect(&relay, &bad, SessionConfig::default(), limit).unwrap())
        .collect();
    let end = Instant::now() + Duration::from_secs(5);
    while more.iter().any(|c| !c.closed) && Instant::now() < end {
        for c in &mut more {
            c.step(Duration::from_millis(10));
        }
    }
    let kept = more.iter().filter(|c| !c.closed).count();
    assert_eq!(kept, 0, "{kept} sessions past the key's two were kept");
    drop(more);

    // Streams and dials: 200 OPENs at once; at most 32 open, the rest refused.
    let ids: Vec<u32> = (0..200)
        .map(|i| a.open(Destination::Addr(echo), format!("s{i}").as_bytes()))
        .collect();
    // Lookups: 40 names at once, on the same session.
    let names: Vec<u32> = (0..40)
        .map(|_| a.open(Destination::Name("localhost".into(), echo.port()), b"n"))
        .collect();
    let end = Instant::now() + Duration::from_secs(20);
    while a.results.len() < ids.len() + names.len() && Instant::now() < end && !a.closed {
        a.step(Duration::from_millis(10));
        watch.sample(pid);
    }
    assert_eq!(a.results.len(), 240, "not every OPEN was answered");
    let ok = ids.iter().filter(|i| a.results[*i].is_ok()).count();
    let refused = ids
        .iter()
        .filter(|i| a.results[*i] == Err(OpenError::TooManyStreams))
        .count();
    assert!(
        ok <= 32 && ok + refused == 200,
        "{ok} opened, {refused} refused"
    );
    assert!(
        names
            .iter()
            .all(|i| matches!(a.results[i], Ok(()) | Err(OpenError::TooManyStreams)))
    );
    assert!(other.echoes(echo, b"while quotas bite", Duration::from_secs(5)));

    // PINGs without reading the PONGs: the relay must stop reading this connection, so
    // the writes block long before the flood's 256 MiB budget.
    b.sock
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut sent = 0usize;
    let blocked = 'flood: loop {
        for _ in 0..2000 {
            b.s.handle_timeout(Instant::now()).unwrap();
        }
        while !b.s.transmit().is_empty() {
            match b.sock.write(b.s.transmit()) {
                Ok(n) => {
                    b.s.transmit_done(n);
                    sent += n;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break 'flood true;
                }
                Err(e) => panic!("{e}"),
            }
        }
        watch.sample(pid);
        if sent > 256 << 20 {
            break false;
        }
    };
    watch.sample(pid);
    assert!(
        blocked,
        "the relay read {sent} bytes of PINGs without a pause"
    );
    assert!(other.echoes(echo, b"during the ping flood", Duration::from_secs(5)));
    watch.sample(pid);
    eprintln!(
        "one key: {ok} of 200 streams opened, {refused} refused; PING flood blocked after {} KiB; relay {rss0} KiB / {fds0} fds before, at most {} KiB / {} fds",
        sent >> 10,
        watch.rss,
        watch.fds
    );
    // Three sessions of the two keys, 32 streams' destination sockets, slack.
    assert!(
        watch.fds <= fds0 + 3 + 32 + 8,
        "fds {} (from {fds0})",
        watch.fds
    );
    assert!(
        watch.rss <= rss0 + 48 * 1024,
        "rss {} KiB (from {rss0})",
        watch.rss
    );
}
