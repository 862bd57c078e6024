//! The relay holds 10,000 concurrent streams of one session (a real relay process).

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::load::echo_server;
use common::{TEST_DRAIN, rss_kib, start_relay_with, tempdir};
use qnet::keys::PrivateKey;
use qnet::proto::{Destination, Event, OsRandom, Role, Session, SessionConfig};

const STREAMS: usize = 10_000;

#[test]
fn relay_holds_ten_thousand_concurrent_streams() {
    let dir = tempdir("scale");
    let key = PrivateKey::generate();
    // One session holds all the streams, and dials them at once: past the default
    // per-session and per-key quotas, which this test is not about.
    let relay = start_relay_with(
        &dir,
        &[key.public().0],
        &["--exit-allow", "127.0.0.0/8"],
        &format!("{TEST_DRAIN}streams_per_session = {STREAMS}\ndials_per_key = {STREAMS}\n"),
    );
    let (echo, open_at_echo) = echo_server();
    let rss_before = rss_kib(relay.child.id());

    let mut sock = TcpStream::connect(relay.addr).unwrap();
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut s = Session::new(
        Instant::now(),
        SessionConfig::default(),
        Role::Client {
            relay_public: relay.public,
        },
        key.as_bytes(),
        Box::new(OsRandom),
    );
    let mut buf = vec![0u8; 1 << 16];
    let mut opened = 0;
    let mut ok = 0;
    let mut echoed: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while echoed.values().filter(|v| v.len() == 12).count() < STREAMS {
        assert!(
            Instant::now() < deadline,
            "ok {ok}, echoed {}",
            echoed.len()
        );
        let now = Instant::now();
        if s.is_established() {
            // At most 500 dials pending: a burst of 10,000 SYNs overflows the echo server's accept
            // backlog, and the retransmitted ones would outlast the relay's connect timeout.
            while opened < STREAMS && opened - ok < 500 && s.transmit().len() < 256 * 1024 {
                let msg = format!("stream{opened:06}");
                let (id, took) = s
                    .open(now, Destination::Addr(echo), 0, msg.as_bytes())
                    .unwrap();
                assert_eq!(took, 12);
                ids.push(id);
                opened += 1;
            }
        }
        while !s.transmit().is_empty() {
            let n = sock.write(s.transmit()).unwrap();
            s.transmit_done(n);
        }
        match sock.read(&mut buf) {
            Ok(0) => panic!("relay closed the session"),
            Ok(n) => s.handle_input(Instant::now(), &buf[..n]).unwrap(),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("{e}"),
        }
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::OpenResult { result, .. } => {
                    result.unwrap();
                    ok += 1;
                }
                Event::Readable { stream } => {
                    let mut b = [0u8; 64];
                    while let Ok(Some(n)) = s.read(Instant::now(), stream, &mut b) {
                        if n == 0 {
                            break;
                        }
                        echoed.entry(stream).or_default().extend_from_slice(&b[..n]);
                    }
                }
                _ => {}
            }
        }
    }
    // Every stream is still open at both ends of the relay at this moment.
    assert_eq!(ok, STREAMS);
    assert_eq!(open_at_echo.load(Ordering::SeqCst), STREAMS);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(echoed[id], format!("stream{i:06}").as_bytes());
    }
    let rss_after = rss_kib(relay.child.id());
    eprintln!(
        "relay RSS {rss_before} KiB idle, {rss_after} KiB with {STREAMS} streams: {:.1} KiB per stream",
        (rss_after - rss_before) as f64 / STREAMS as f64
    );
}
