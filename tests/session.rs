//! The session core driven by a simulated pair and clock: no sockets, no real time.

use std::time::Duration;

use qnet::proto::admit::Admission;
use qnet::proto::noise::public_key;
use qnet::proto::sim::{Pair, PairKeys};
use qnet::proto::{Destination, Event, OpenError, SessionConfig, SessionError, StreamError};

fn dest() -> Destination {
    Destination::Addr("192.0.2.1:80".parse().unwrap())
}

/// Open a stream from the client and accept it at the relay; returns its id.
fn open_accepted(p: &mut Pair, first: &[u8]) -> u32 {
    let (id, took) = p.client.open(p.now, dest(), 0, first).unwrap();
    assert_eq!(took, first.len());
    p.drive();
    assert!(p.server_events.contains(&Event::Opened {
        stream: id,
        dest: dest(),
        profile: 0
    }));
    p.server.open_result(p.now, id, Ok(())).unwrap();
    p.drive();
    assert!(p.client_events.contains(&Event::OpenResult {
        stream: id,
        result: Ok(())
    }));
    id
}

fn read_all(s: &mut qnet::proto::Session, now: std::time::Instant, id: u32) -> (Vec<u8>, bool) {
    let mut out = vec![];
    let mut buf = [0u8; 4096];
    loop {
        match s.read(now, id, &mut buf) {
            Ok(Some(0)) => return (out, true),
            Ok(Some(n)) => out.extend_from_slice(&buf[..n]),
            Ok(None) | Err(StreamError::UnknownStream) => return (out, false),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Pump `data` from the client over `id`, letting the relay read as it arrives.
fn pump_up(p: &mut Pair, id: u32, data: &[u8]) -> Vec<u8> {
    let mut sent = 0;
    let mut got = vec![];
    while sent < data.len() || got.len() < data.len() {
        if sent < data.len() {
            sent += p.client.write(p.now, id, &data[sent..]).unwrap();
        }
        p.step();
        got.extend(read_all(&mut p.server, p.now, id).0);
        assert!(p.client_error.is_none() && p.server_error.is_none());
    }
    got
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn handshake_then_both_directions_and_half_close() {
    let mut p = Pair::new(1);
    p.connect();
    assert!(matches!(p.client_events[0], Event::Connected { .. }));
    let id = open_accepted(&mut p, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(
        read_all(&mut p.server, p.now, id).0,
        b"GET / HTTP/1.0\r\n\r\n"
    );

    // Client half-closes; the relay still answers.
    p.client.finish(p.now, id).unwrap();
    p.server
        .write(p.now, id, b"HTTP/1.0 200 OK\r\n\r\nhello")
        .unwrap();
    p.drive();
    let (up, fin) = read_all(&mut p.server, p.now, id);
    assert!(up.is_empty() && fin, "relay sees the client's FIN");
    p.server.finish(p.now, id).unwrap();
    p.drive();
    let (down, fin) = read_all(&mut p.client, p.now, id);
    assert_eq!(down, b"HTTP/1.0 200 OK\r\n\r\nhello");
    assert!(fin);
    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(p.server.stream_count(), 0);
}

#[test]
fn any_split_of_the_byte_stream_works() {
    for chunk in [1, 2, 3, 7, 17, 100, 1400] {
        let mut p = Pair::new(2);
        p.chunk = chunk;
        p.connect();
        let id = open_accepted(&mut p, b"x");
        let data = pattern(40_000);
        let got = pump_up(&mut p, id, &data);
        assert_eq!(got[0], b'x');
        assert_eq!(&got[1..], &data[..], "chunk {chunk}");
    }
}

#[test]
fn opening_a_stream_is_one_record() {
    let mut p = Pair::new(3);
    p.connect();
    let before = p.client.stats().records_sent;
    let (_, took) = p
        .client
        .open(
            p.now,
            Destination::Name("example.com".into(), 443),
            0,
            b"hello",
        )
        .unwrap();
    assert_eq!(took, 5);
    assert_eq!(p.client.stats().records_sent, before + 1);
}

/// Bytes the client of `Pair::new(seed)` sends in its handshake: msg1, msg3 and their
/// pads, whose lengths the seed draws.
fn handshake_len(seed: u64) -> usize {
    let mut p = Pair::new(seed);
    p.connect();
    p.upstream_log.len()
}

#[test]
fn tampering_with_any_byte_kills_the_session() {
    // Capture the client's post-handshake bytes, then replay them with one bit flipped.
    let mut p = Pair::new(4);
    p.connect();
    let id = open_accepted(&mut p, b"secret");
    p.client.write(p.now, id, b"more").unwrap();
    p.drive();
    let wire = p.upstream_log.clone();
    let hs_len = handshake_len(4);
    // Same seed, same keys: a fresh relay accepts the recorded bytes as they were.
    let mut r = Pair::new(4);
    r.server.handle_input(r.now, &wire[..hs_len]).unwrap();
    let reply_len = r.server.transmit().len();
    r.server.handle_input(r.now, &wire[hs_len..]).unwrap();
    let total = r.server.stats().records_received;
    assert!(total >= 2);
    for i in hs_len..wire.len() {
        let mut w = wire.clone();
        w[i] ^= 0x40;
        let mut r = Pair::new(4);
        let res = r.server.handle_input(r.now, &w);
        // Either the record is rejected, or (a flipped length) the relay waits for bytes
        // that never come; it never accepts the damaged record or anything after it.
        assert!(
            matches!(
                res,
                Err(SessionError::Record(_)) | Err(SessionError::Protocol(_))
            ) || (res.is_ok() && r.server.stats().records_received < total),
            "flip at {i}: {res:?}"
        );
        assert!(
            r.server.transmit().len() <= reply_len,
            "flip at {i} drew more than the handshake's reply"
        );
        let _ = id;
    }
}

#[test]
fn replayed_and_reordered_records_kill_the_session() {
    let mut p = Pair::new(5);
    p.connect();
    let hs_len = handshake_len(5);
    let start = p.upstream_log.len();
    assert_eq!(start, hs_len);
    let id = open_accepted(&mut p, b"a");
    let open_rec = p.upstream_log[start..].to_vec();
    p.client.write(p.now, id, b"b").unwrap();
    p.drive();
    let data_rec = p.upstream_log[start + open_rec.len()..].to_vec();

    let handshake = p.upstream_log[..hs_len].to_vec();
    // A record out of place is never taken: either its masked length unmasks out of
    // range or its tag fails (an error), or the length falls in range and the relay
    // waits for bytes that never come. Which depends on the keys.
    let refused = |wire: &[u8], taken: u64| {
        let mut r = Pair::new(5);
        let e = r.server.handle_input(r.now, wire);
        assert!(
            matches!(e, Err(SessionError::Record(_))) || e.is_ok(),
            "{e:?}"
        );
        assert_eq!(r.server.stats().records_received, taken, "{e:?}");
    };
    // Replay: the OPEN record twice.
    refused(&[&handshake[..], &open_rec, &open_rec].concat(), 1);
    // Reorder: DATA before OPEN.
    refused(&[&handshake[..], &data_rec, &open_rec].concat(), 0);
    // In order it is fine (same deterministic keys).
    let mut r = Pair::new(5);
    r.server
        .handle_input(r.now, &[&handshake[..], &open_rec, &data_rec].concat())
        .unwrap();
}

#[test]
fn slow_reader_does_not_stall_other_streams() {
    let cfg = SessionConfig {
        stream_window: 64 * 1024,
        session_window: 1024 * 1024,
        ..SessionConfig::default()
    };
    let mut p = Pair::with_config(6, cfg.clone(), cfg);
    p.connect();
    let slow = open_accepted(&mut p, b"");
    let fast = open_accepted(&mut p, b"");
    // The slow stream's reader never reads: the writer stops at exactly one window.
    let big = pattern(200 * 1024);
    let took = p.client.write(p.now, slow, &big).unwrap();
    assert_eq!(took, 64 * 1024);
    assert_eq!(p.client.write(p.now, slow, &big).unwrap(), 0);
    p.drive();
    // The fast stream moves a lot more than a window meanwhile.
    let data = pattern(1024 * 1024);
    let got = pump_up(&mut p, fast, &data);
    assert_eq!(got, data);
    // When the slow reader finally reads, its writer gets credit back and is told so.
    let (first, _) = read_all(&mut p.server, p.now, slow);
    assert_eq!(first, big[..64 * 1024]);
    p.drive();
    assert!(p.client_events.contains(&Event::Writable { stream: slow }));
    assert!(p.client.write(p.now, slow, &big[took..]).unwrap() > 0);
}

#[test]
fn key_update_mid_stream_loses_nothing() {
    let cfg = SessionConfig {
        rekey_records: 7,
        ..SessionConfig::default()
    };
    let mut p = Pair::with_config(7, cfg.clone(), cfg);
    p.chunk = 999;
    p.connect();
    let id = open_accepted(&mut p, b"");
    let data = pattern(3 * 1024 * 1024);
    let got = pump_up(&mut p, id, &data);
    assert_eq!(got, data);
    let up = p.client.stats().key_updates_sent;
    assert!(up >= 20, "expected many key updates, got {up}");
    assert_eq!(p.server.stats().key_updates_received, up);
    // Time-based rekeying too.
    let before = p.client.stats().key_updates_sent;
    p.advance(Duration::from_secs(601));
    assert!(p.client.stats().key_updates_sent > before);
    assert!(p.client_error.is_none() && p.server_error.is_none());
}

/// Issue 12: a key not on the list, though it holds the relay's public key, gets what
/// random bytes get: not one byte (msg1 must prove the key is on the list, so XK's msg2
/// no longer answers a stranger), and it takes no room in the replay cache.
#[test]
fn client_not_on_the_list_gets_no_answer_at_all() {
    let keys = PairKeys {
        client: [0x31; 32],
        relay: [0x32; 32],
    };
    let mut p = Pair::build(
        8,
        &keys,
        public_key(&keys.relay),
        &[public_key(&[0x33; 32])],
        SessionConfig::default(),
        SessionConfig::default(),
    );
    p.drive();
    assert_eq!(p.server_error, Some(SessionError::Handshake));
    assert!(!p.server.is_established() && !p.client.is_established());
    assert!(p.server.transmit().is_empty());
    assert!(p.client_events.is_empty() && p.server_events.is_empty());
    assert_eq!(
        p.replay.lock().len(),
        0,
        "a stranger took a replay-cache entry"
    );
    // The client sees the relay's silence and says what it may mean.
    p.advance(Duration::from_secs(11));
    assert_eq!(p.client_error, Some(SessionError::Unanswered));
    assert!(
        SessionError::Unanswered
            .to_string()
            .contains("not on the relay's allow-list")
    );
}

/// Reloading the list (a new `Admission`) refuses a removed key's next handshake at
/// msg1, and one in flight (msg2 sent, msg3 not yet read) at msg3; an added key gets in.
#[test]
fn a_reloaded_list_refuses_a_removed_key_and_admits_an_added_one() {
    let keys = PairKeys {
        client: [0x51; 32],
        relay: [0x52; 32],
    };
    let other = public_key(&[0x53; 32]);
    let client = public_key(&keys.client);
    let mut p = Pair::build(
        21,
        &keys,
        public_key(&keys.relay),
        &[client, other],
        SessionConfig::default(),
        SessionConfig::default(),
    );
    p.connect();
    *p.admission.write() = Admission::new(&keys.relay, [other]);
    p.reconnect(22);
    p.drive();
    assert_eq!(p.server_error, Some(SessionError::Handshake));
    assert!(p.client_events.is_empty(), "a removed key drew msg2");

    *p.admission.write() = Admission::new(&keys.relay, [other, client]);
    p.reconnect(23);
    p.connect();

    // Removed between msg1 and msg3: msg2 went out under the old list, msg3 fails.
    p.reconnect(24);
    assert!(p.step(), "msg1 delivered");
    assert!(p.server_error.is_none());
    *p.admission.write() = Admission::new(&keys.relay, [other]);
    p.drive();
    assert!(
        p.client.is_established(),
        "msg2 went out under the old list"
    );
    assert_eq!(p.server_error, Some(SessionError::Handshake));
    assert!(!p.server.is_established());
    assert!(p.server_events.is_empty());
}

#[test]
fn wrong_relay_key_and_random_bytes_get_no_reply_at_all() {
    let keys = PairKeys {
        client: [0x41; 32],
        relay: [0x42; 32],
    };
    let mut p = Pair::build(
        9,
        &keys,
        public_key(&[0x43; 32]),
        &[public_key(&keys.client)],
        SessionConfig::default(),
        SessionConfig::default(),
    );
    p.drive();
    assert_eq!(p.server_error, Some(SessionError::Handshake));
    assert!(p.client_events.is_empty());

    let mut rng = qnet::proto::SeededRandom::new(9);
    let m1 = qnet::proto::noise::MSG1_LEN;
    for len in [1, m1 - 1, m1, m1 + 1, 200, 5000] {
        let mut junk = vec![0u8; len];
        qnet::proto::Random::fill(&mut rng, &mut junk);
        let mut r = Pair::new(10);
        let res = r.server.handle_input(r.now, &junk);
        assert!(
            r.server.transmit().is_empty(),
            "{len} random bytes drew a reply"
        );
        assert_eq!(res.is_err(), len >= m1, "{len}");
    }
}

#[test]
fn keepalive_measures_rtt_and_idle_timeout_fires() {
    let mut p = Pair::new(11);
    p.latency = Duration::from_millis(30);
    p.connect();
    // Before any PING: the handshake's own round trip, msg1 out to the reply in.
    assert_eq!(p.client.rtt(), Some(Duration::from_millis(60)));
    p.latency = Duration::from_millis(20);
    p.advance(Duration::from_secs(26));
    let rtt = p.client.rtt().expect("ping answered");
    assert_eq!(
        rtt,
        Duration::from_millis(40),
        "the PONG's measure replaces it"
    );
    p.latency = Duration::from_millis(30);
    p.advance(Duration::from_secs(26));
    let rtt = p.client.rtt().expect("ping answered");
    assert_eq!(rtt, Duration::from_millis(60));
    assert!(p.client_error.is_none());
    // Cut the link: the relay stops hearing anything and times out.
    let mut p = Pair::new(12);
    p.connect();
    p.latency = Duration::from_secs(1000);
    p.advance(Duration::from_secs(95));
    assert_eq!(p.server_error, Some(SessionError::Timeout));
    assert_eq!(p.client_error, Some(SessionError::Timeout));
}

#[test]
fn handshake_timeout() {
    let mut p = Pair::new(13);
    p.latency = Duration::from_secs(100);
    p.advance(Duration::from_secs(11));
    // Not one byte came back: the client says what a silent relay may mean.
    assert_eq!(p.client_error, Some(SessionError::Unanswered));
    assert_eq!(p.server_error, Some(SessionError::Timeout));
}

/// A recorded first message, replayed to the same relay on a fresh connection, gets what
/// random bytes get: no answer at all. Sent to a relay that never saw it, the same bytes
/// are answered, so the refusal is the replay cache's doing.
#[test]
fn a_replayed_first_message_gets_no_answer() {
    let mut p = Pair::new(17);
    // msg1 and pad1: the client's first flight.
    let m1_len = p.client.transmit().len();
    p.connect();
    let msg1 = p.upstream_log[..m1_len].to_vec();
    assert_eq!(p.replay.lock().len(), 1);
    for (i, extra) in [&[][..], &[0u8; 100][..]].into_iter().enumerate() {
        p.advance(Duration::from_secs(30));
        let mut replayed = p.new_server(100 + i as u64);
        let res = replayed.handle_input(p.now, &[&msg1[..], extra].concat());
        assert_eq!(res, Err(SessionError::Handshake));
        assert!(replayed.transmit().is_empty(), "a replay drew a reply");
        assert!(replayed.poll_event().is_none());
    }
    // The representative's top bits are the sender's coin: flipping one does not make a new
    // message (the decoded key is the same).
    let mut flipped = msg1.clone();
    flipped[31] ^= 0x80;
    let mut replayed = p.new_server(200);
    assert_eq!(
        replayed.handle_input(p.now, &flipped),
        Err(SessionError::Handshake)
    );
    assert!(replayed.transmit().is_empty());
    assert_eq!(p.replay.lock().stats().replayed, 3);

    // Once stale (120 s after its stamp) it is refused as stale, and forgotten.
    p.advance(Duration::from_secs(60));
    let mut late = p.new_server(201);
    assert_eq!(
        late.handle_input(p.now, &msg1),
        Err(SessionError::Handshake)
    );
    assert!(late.transmit().is_empty());
    assert_eq!(p.replay.lock().stats().stale, 1);

    // A relay with an empty cache answers the same bytes (when fresh): they are valid.
    let mut q = Pair::new(17);
    q.server.handle_input(q.now, &msg1).unwrap();
    let reply = q.server.transmit().len() - qnet::proto::noise::REPLY_LEN;
    assert!(
        reply <= qnet::proto::mask::PAD_MAX,
        "the relay's flight and pad2"
    );
}

/// Clocks up to the tolerance (120 s) apart either way connect; further apart the relay
/// is silent and the client reports the unanswered handshake.
#[test]
fn clock_skew_within_the_tolerance_connects_and_beyond_it_is_silent() {
    for (secs, behind) in [(0, false), (1, true), (119, false), (119, true)] {
        let mut p = Pair::with_client_clock(18, Duration::from_secs(secs), behind);
        p.connect();
    }
    for (secs, behind) in [(121, false), (121, true), (3600, false), (86_400, true)] {
        let mut p = Pair::with_client_clock(19, Duration::from_secs(secs), behind);
        p.drive();
        assert_eq!(
            p.server_error,
            Some(SessionError::Handshake),
            "{secs} {behind}"
        );
        assert!(p.client_events.is_empty());
        assert!(p.client.is_unanswered());
        p.advance(Duration::from_secs(11));
        assert_eq!(p.client_error, Some(SessionError::Unanswered));
        assert_eq!(p.replay.lock().stats().stale, 1);
        assert!(p.replay.lock().is_empty(), "a stale message took a slot");
    }
}

#[test]
fn open_failures_and_resets() {
    let mut p = Pair::new(14);
    p.connect();
    let (id, _) = p.client.open(p.now, dest(), 0, b"lost").unwrap();
    p.drive();
    p.server
        .open_result(p.now, id, Err(OpenError::Refused))
        .unwrap();
    p.drive();
    assert!(p.client_events.contains(&Event::OpenResult {
        stream: id,
        result: Err(OpenError::Refused)
    }));
    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(p.server.stream_count(), 0);
    assert_eq!(OpenError::Refused.errno(), libc::ECONNREFUSED);
    assert_eq!(OpenError::Forbidden.errno(), libc::EACCES);

    let id = open_accepted(&mut p, b"");
    p.server.write(p.now, id, b"in flight").unwrap();
    p.client.reset(p.now, id, 3).unwrap();
    p.drive();
    assert!(p.server_events.contains(&Event::Reset {
        stream: id,
        code: 3
    }));
    assert_eq!(
        p.client.write(p.now, id, b"x"),
        Err(StreamError::UnknownStream)
    );
    // The session survives and its credit was returned.
    let id2 = open_accepted(&mut p, b"");
    assert_eq!(pump_up(&mut p, id2, b"still works"), b"still works");
    assert!(p.client_error.is_none() && p.server_error.is_none());
}

#[test]
fn many_streams_share_one_session() {
    let mut p = Pair::new(15);
    p.connect();
    let ids: Vec<u32> = (0..1000)
        .map(|i| {
            p.client
                .open(p.now, dest(), 0, format!("hello {i}").as_bytes())
                .unwrap()
                .0
        })
        .collect();
    p.drive();
    for &id in &ids {
        p.server.open_result(p.now, id, Ok(())).unwrap();
        let (got, _) = read_all(&mut p.server, p.now, id);
        p.server.write(p.now, id, &got).unwrap();
    }
    p.drive();
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(
            read_all(&mut p.client, p.now, id).0,
            format!("hello {i}").as_bytes()
        );
    }
    assert_eq!(p.server.stream_count(), 1000);
}

#[test]
fn padding_records_are_invisible_to_streams() {
    let mut p = Pair::new(16);
    p.connect();
    let id = open_accepted(&mut p, b"");
    p.client.send_padding(p.now, 1000).unwrap();
    p.client.write_padded(p.now, id, b"tiny", 1400).unwrap();
    p.drive();
    assert_eq!(read_all(&mut p.server, p.now, id).0, b"tiny");
    assert_eq!(p.client.stats().padding_sent, 993 + (1400 - 11));
}
