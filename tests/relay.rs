//! A real `qnet-relay` process on loopback, driven by the client engine's port forward.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Relay, start_relay, tempdir};
use qnet::config::TimingConfig;
use qnet::engine::client::{Client, ClientConfig, parse_destination};
use qnet::keys::PrivateKey;
use qnet::proto::SessionConfig;
use qnet::sched::Profile;

/// An echo server that counts the connections it accepted.
fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    (addr, count)
}

struct Forward {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Client>>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn forward(relay: &Relay, key: PrivateKey, to: &str) -> Forward {
    forward_shaped(relay, key, to, TimingConfig::default())
}

fn forward_shaped(relay: &Relay, key: PrivateKey, to: &str, timing: TimingConfig) -> Forward {
    let cfg = ClientConfig {
        relay: relay.addr.to_string(),
        relay_key: relay.public,
        key,
        session: SessionConfig::default(),
        upstream: None,
        timing,
    };
    let mut client = Client::new(cfg).unwrap();
    let addr = client
        .forward(
            "127.0.0.1:0".parse().unwrap(),
            parse_destination(to).unwrap(),
        )
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let handle = thread::spawn(move || {
        client.run(|_| s.load(Ordering::SeqCst)).unwrap();
        client
    });
    Forward {
        addr,
        stop,
        handle: Some(handle),
    }
}

fn read_to_end_timeout(s: &mut TcpStream, limit: Duration) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(limit))?;
    let mut out = vec![];
    s.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn bytes_cross_the_relay_both_ways_with_half_close() {
    let dir = tempdir("cross");
    let client_key = PrivateKey::generate();
    let relay = start_relay(&dir, &[client_key.public().0], &["127.0.0.0/8"]);
    let (echo, accepted) = echo_server();
    let fwd = forward(&relay, client_key, &echo.to_string());

    let data: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut s = TcpStream::connect(fwd.addr).unwrap();
    let mut w = s.try_clone().unwrap();
    let d = data.clone();
    let writer = thread::spawn(move || {
        w.write_all(&d).unwrap();
        // Half-close: the echo server sees EOF, echoes everything, then closes.
        w.shutdown(Shutdown::Write).unwrap();
    });
    let got = read_to_end_timeout(&mut s, Duration::from_secs(30)).unwrap();
    writer.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echoed bytes differ");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn shaped_profiles_carry_bytes_intact_both_ways() {
    // Each shaping profile, asked by the client for both directions: every byte arrives in
    // order and the verifier stops nothing; high-security's cells are timed.
    for profile in [Profile::Default, Profile::HighSecurity] {
        let dir = tempdir("shaped");
        let client_key = PrivateKey::generate();
        let relay = start_relay(&dir, &[client_key.public().0], &["127.0.0.0/8"]);
        let (echo, _) = echo_server();
        let timing = TimingConfig {
            profile,
            rules: vec![],
        };
        let mut fwd = forward_shaped(&relay, client_key, &echo.to_string(), timing);
        let data: Vec<u8> = (0..64 * 1024).map(|i| (i % 253) as u8).collect();
        let mut s = TcpStream::connect(fwd.addr).unwrap();
        let mut w = s.try_clone().unwrap();
        let d = data.clone();
        let writer = thread::spawn(move || {
            // About 1.3 s of interactive-like traffic: long enough for padding to start.
            for chunk in d.chunks(1024) {
                w.write_all(chunk).unwrap();
                thread::sleep(Duration::from_millis(20));
            }
            w.shutdown(Shutdown::Write).unwrap();
        });
        let got = read_to_end_timeout(&mut s, Duration::from_secs(60)).unwrap();
        writer.join().unwrap();
        assert!(
            got == data,
            "{profile:?}: echoed bytes differ ({} of {})",
            got.len(),
            data.len()
        );
        fwd.stop.store(true, Ordering::SeqCst);
        let client = fwd.handle.take().unwrap().join().unwrap();
        assert_eq!(client.stats.shaping_failures, 0, "{profile:?}");
        // Constant cells are timed by construction. FRONT's padding times are random
        // (Rayleigh, scale 0.5-3 s): none may fall inside this short flow, so for
        // `default` only the bytes and the verifier are checked here (src/sched's tests
        // check its padding schedule).
        if profile == Profile::HighSecurity {
            let fired: u64 = client.stats.lateness.buckets.iter().sum();
            assert!(fired > 0, "{profile:?}: no shaped departure was ever timed");
        }
    }
}

#[test]
fn many_parallel_connections_share_one_session() {
    let dir = tempdir("parallel");
    let client_key = PrivateKey::generate();
    let relay = start_relay(&dir, &[client_key.public().0], &["127.0.0.0/8"]);
    let (echo, accepted) = echo_server();
    let fwd = forward(&relay, client_key, &echo.to_string());
    let addr = fwd.addr;
    let handles: Vec<_> = (0..50)
        .map(|i| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let msg = format!("connection {i} says hello").repeat(100);
                s.write_all(msg.as_bytes()).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                let got = read_to_end_timeout(&mut s, Duration::from_secs(30)).unwrap();
                assert_eq!(got, msg.as_bytes());
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 50);
    drop(fwd);
}

#[test]
fn hostname_is_resolved_by_the_relay() {
    let dir = tempdir("hostname");
    let client_key = PrivateKey::generate();
    let relay = start_relay(&dir, &[client_key.public().0], &["127.0.0.0/8"]);
    let (echo, _) = echo_server();
    let fwd = forward(&relay, client_key, &format!("localhost:{}", echo.port()));
    let mut s = TcpStream::connect(fwd.addr).unwrap();
    s.write_all(b"by name").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        read_to_end_timeout(&mut s, Duration::from_secs(10)).unwrap(),
        b"by name"
    );
}

/// The local side of a refused stream is closed without data, promptly (an unlisted
/// client learns only when the relay closes it, 1-2 s after accept with `TEST_DRAIN`).
fn assert_closed_without_data(fwd: &Forward) {
    let mut s = TcpStream::connect(fwd.addr).unwrap();
    let _ = s.write_all(b"hello?");
    let t = Instant::now();
    let got = read_to_end_timeout(&mut s, Duration::from_secs(15)).unwrap_or_default();
    assert!(got.is_empty(), "got {got:?}");
    assert!(t.elapsed() < Duration::from_secs(14), "not closed promptly");
}

#[test]
fn refused_destination_and_default_exit_policy() {
    let dir = tempdir("refused");
    let client_key = PrivateKey::generate();
    let relay = start_relay(&dir, &[client_key.public().0], &["127.0.0.0/8"]);
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let fwd = forward(&relay, client_key.clone(), &closed.to_string());
    assert_closed_without_data(&fwd);
    drop(fwd);

    // Without --exit-allow the relay refuses loopback destinations.
    let dir = tempdir("policy");
    let relay = start_relay(&dir, &[client_key.public().0], &[]);
    let (echo, accepted) = echo_server();
    let fwd = forward(&relay, client_key, &echo.to_string());
    assert_closed_without_data(&fwd);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the relay dialled a forbidden address"
    );
}

#[test]
fn client_not_on_the_list_opens_nothing_until_sighup_adds_it() {
    let dir = tempdir("allowlist");
    let client_key = PrivateKey::generate();
    let other = PrivateKey::generate();
    let relay = start_relay(&dir, &[other.public().0], &["127.0.0.0/8"]);
    let (echo, accepted) = echo_server();
    let fwd = forward(&relay, client_key.clone(), &echo.to_string());
    for _ in 0..2 {
        assert_closed_without_data(&fwd);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0);

    // Add the key and reload: the same client gets through on its next session.
    std::fs::write(
        &relay.clients,
        format!(
            "{}\n{}\n",
            other.public().to_base64(),
            client_key.public().to_base64()
        ),
    )
    .unwrap();
    let st = Command::new("kill")
        .args(["-HUP", &relay.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut s = TcpStream::connect(fwd.addr).unwrap();
        let _ = s.write_all(b"let me in");
        let _ = s.shutdown(Shutdown::Write);
        if read_to_end_timeout(&mut s, Duration::from_secs(5)).unwrap_or_default() == b"let me in" {
            break;
        }
        assert!(Instant::now() < deadline, "reloaded key never admitted");
        thread::sleep(Duration::from_millis(200));
    }
    assert!(accepted.load(Ordering::SeqCst) >= 1);
}

#[test]
fn probes_get_no_reply_bytes() {
    let dir = tempdir("probe");
    let relay = start_relay(&dir, &[], &["127.0.0.0/8"]);
    let mut rng = qnet::proto::SeededRandom::new(7);
    for len in [1usize, 47, 48, 55, 56, 57, 73, 500] {
        let mut junk = vec![0u8; len];
        qnet::proto::Random::fill(&mut rng, &mut junk);
        let mut s = TcpStream::connect(relay.addr).unwrap();
        s.write_all(&junk).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("{len} random bytes drew {n} reply bytes"),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::ConnectionReset
                ),
                "{e}"
            ),
        }
    }
}

#[test]
fn relay_rejects_bad_arguments_with_one_line() {
    let dir = tempdir("badargs");
    let key_path = dir.join("k");
    std::fs::write(&key_path, PrivateKey::generate().to_base64()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(dir.join("clients"), "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qnet-relay"))
        .args(["--listen", "127.0.0.1:0", "--key"])
        .arg(&key_path)
        .arg("--clients")
        .arg(dir.join("clients"))
        .env("QNET_CONFIG", "/nonexistent/qnet.toml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // QNET_CONFIG pointing nowhere is itself an error, named as such.
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("QNET_CONFIG") || err.contains("nonexistent"),
        "{err}"
    );

    std::fs::write(dir.join("empty.toml"), "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qnet-relay"))
        .args(["--listen", "127.0.0.1:0", "--key"])
        .arg(&key_path)
        .arg("--clients")
        .arg(dir.join("clients"))
        .env("QNET_CONFIG", dir.join("empty.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("chmod 600"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_qnet-relay"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--key",
            "/nonexistent",
            "--clients",
            "/nonexistent",
            "--exit-allow",
            "10.0.0.0/33",
        ])
        .env("QNET_CONFIG", dir.join("empty.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

/// A relay that answers the handshake with silence (here: the client pins another relay
/// key) is reported with the likely causes: another protocol version, the wrong key, a
/// clock off by minutes. (`qnet forward` logs it at info; a preloaded program's failing
/// connect prints the same reason in its one "relay unusable" line.)
#[test]
fn silent_relay_is_reported_as_version_key_or_clock() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempdir("unanswered");
    let client_key = PrivateKey::generate();
    let relay = start_relay(&dir, &[client_key.public().0], &["127.0.0.0/8"]);
    let key_path = dir.join("client.key");
    qnet::keys::write_private_key(&key_path, &client_key).unwrap();
    let cfg = dir.join("client.toml");
    std::fs::write(
        &cfg,
        format!(
            "relay = \"{}\"\nrelay_key = \"{}\"\nkey = \"{}\"\nlog = \"info\"\n",
            relay.addr,
            PrivateKey::generate().public().to_base64(),
            key_path.display()
        ),
    )
    .unwrap();
    let mut fwd = Command::new(env!("CARGO_BIN_EXE_qnet"))
        .args(["forward", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9"])
        .arg("--config")
        .arg(&cfg)
        .env_remove("QNET_RELAY")
        .env_remove("QNET_RELAY_KEY")
        .env_remove("QNET_KEY")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(fwd.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .rsplit_once(" on ")
        .and_then(|(_, rest)| rest.split(',').next())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.write_all(b"hello?");
    let got = read_to_end_timeout(&mut s, Duration::from_secs(15)).unwrap_or_default();
    assert!(got.is_empty());
    let _ = fwd.kill();
    let _ = fwd.wait();
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    assert!(
        rest.contains("no answer to the handshake: the relay may run another version of qnet, or the relay key is wrong, or this host's clock is off by minutes"),
        "{rest}"
    );
}
