//! The client against a scripted control port on a socket pair: authentication in each
//! method, refusals, and events kept apart from replies.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::JoinHandle;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::auth::{self, Method, client_hash, hex, server_hash_ok, unhex};
use super::conn::Conn;
use super::{TorError, bootstrap, circuits};
use crate::config::{TorConfig, TorControl};

const COOKIE: [u8; 32] = [1; 32];

#[test]
fn safecookie_golden_vector() {
    // Computed with Python's hmac module: HMAC-SHA256(key = the spec's constant,
    // message = cookie | client nonce | server nonce).
    let (c, s) = ([2u8; 32], [3u8; 32]);
    let server = "1830d2de6e061e60adfa2c0c2a9257b7126e51b074f39bd4519d89229df08827";
    let client = "8d81b806c8314911da68057896783b1f28f640a588c9a2cfe902d371806bbf1a";
    assert!(server_hash_ok(&COOKIE, &c, &s, &unhex(server).unwrap()));
    assert!(!server_hash_ok(&[0; 32], &c, &s, &unhex(server).unwrap()));
    assert_eq!(hex(&client_hash(&COOKIE, &c, &s)), client);
    assert_eq!(unhex("0aFf"), Some(vec![10, 255]));
    assert_eq!(unhex("0"), None);
    assert_eq!(unhex("zz"), None);
}

/// A fake Tor: answers each command line with `answer(line)`, records the lines.
fn fake(answer: impl Fn(&str) -> String + Send + 'static) -> (Conn, JoinHandle<Vec<String>>) {
    let (a, b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut w = b.try_clone().unwrap();
        for line in BufReader::new(b).lines() {
            let Ok(line) = line else { break };
            let line = line.trim_end().to_owned();
            let out = answer(&line);
            seen.push(line);
            if w.write_all(out.as_bytes()).is_err() {
                break;
            }
        }
        seen
    });
    (Conn::over(Box::new(a)), t)
}

fn protocolinfo(methods: &str, cookie: &std::path::Path) -> String {
    format!(
        "250-PROTOCOLINFO 1\r\n250-AUTH METHODS={methods} COOKIEFILE=\"{}\"\r\n250-VERSION Tor=\"0.4.9.11\"\r\n250-FUTURE THING=1\r\n250 OK\r\n",
        cookie.display()
    )
}

fn cookie_file(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("qnet-tor-{tag}-{}", std::process::id()));
    std::fs::write(&p, COOKIE).unwrap();
    p
}

fn cfg(password: Option<&str>) -> TorConfig {
    TorConfig {
        control: TorControl::Tcp("127.0.0.1:9".into()),
        password: password.map(str::to_owned),
        password_file: None,
        cookie_file: None,
        newnym_every: None,
    }
}

/// A fake Tor offering `methods` that checks AUTHENTICATE against what each method needs.
fn tor_offering(
    methods: &'static str,
    tag: &str,
    lie: bool,
) -> (Conn, JoinHandle<Vec<String>>, PathBuf) {
    let path = cookie_file(tag);
    let p = path.clone();
    let server_nonce = [9u8; 32];
    let client_nonce = std::sync::Mutex::new(Vec::new());
    let (conn, t) = fake(move |line| {
        let words: Vec<&str> = line.split(' ').collect();
        match words[..] {
            ["PROTOCOLINFO", "1"] => protocolinfo(methods, &p),
            ["AUTHCHALLENGE", "SAFECOOKIE", n] => {
                let n = unhex(n).unwrap();
                let mut m = Hmac::<Sha256>::new_from_slice(
                    b"Tor safe cookie authentication server-to-controller hash",
                )
                .unwrap();
                let cookie = if lie { [7u8; 32] } else { COOKIE };
                m.update(&cookie);
                m.update(&n);
                m.update(&server_nonce);
                *client_nonce.lock().unwrap() = n;
                let h = hex(&m.finalize().into_bytes());
                format!("250 AUTHCHALLENGE SERVERHASH={h} SERVERNONCE={}\r\n", hex(&server_nonce))
            }
            ["AUTHENTICATE"] if methods.contains("NULL") => "250 OK\r\n".into(),
            ["AUTHENTICATE", a] => {
                let cn = client_nonce.lock().unwrap().clone();
                let good = a == "\"pw\\\"x\""
                    || a == hex(&COOKIE)
                    || (!cn.is_empty() && a == hex(&client_hash(&COOKIE, &cn, &server_nonce)));
                if good {
                    "250 OK\r\n".into()
                } else {
                    "515 Authentication failed: Password did not match HashedControlPassword value from configuration\r\n".into()
                }
            }
            ["GETINFO", "status/bootstrap-phase"] => "650 CIRC 3 LAUNCHED PURPOSE=GENERAL\r\n250-status/bootstrap-phase=NOTICE BOOTSTRAP PROGRESS=75 TAG=enough_dirinfo SUMMARY=\"Loaded enough directory info to build circuits\"\r\n250 OK\r\n".into(),
            ["GETINFO", "circuit-status"] => "250+circuit-status=\r\n3 BUILT $A~a,$B~b PURPOSE=GENERAL\r\n4 EXTENDED $A~a PURPOSE=GENERAL\r\n.\r\n250 OK\r\n".into(),
            _ => "510 Unrecognized command\r\n".into(),
        }
    });
    (conn, t, path)
}

fn run(
    methods: &'static str,
    password: Option<&str>,
    force: Option<Method>,
    lie: bool,
) -> Result<Method, String> {
    let tag = format!("{methods}-{force:?}-{lie}-{}", password.is_some()).replace(',', "_");
    let (mut c, t, path) = tor_offering(methods, &tag, lie);
    let r = auth::authenticate(&mut c, &cfg(password), force).map(|(m, _)| m);
    drop(c);
    t.join().unwrap();
    std::fs::remove_file(path).unwrap();
    r.map_err(|e| e.to_string())
}

#[test]
fn each_method_authenticates() {
    assert_eq!(run("NULL", None, None, false), Ok(Method::Null));
    assert_eq!(
        run("COOKIE,SAFECOOKIE", None, None, false),
        Ok(Method::SafeCookie)
    );
    let cookie = run("COOKIE,SAFECOOKIE", None, Some(Method::Cookie), false);
    assert_eq!(cookie, Ok(Method::Cookie));
    let pw = run(
        "HASHEDPASSWORD,SAFECOOKIE,COOKIE",
        Some("pw\"x"),
        None,
        false,
    );
    assert_eq!(pw, Ok(Method::Password));
}

#[test]
fn refusals_say_why() {
    let e = run("HASHEDPASSWORD", Some("wrong"), None, false).unwrap_err();
    assert!(
        e.contains("HASHEDPASSWORD refused") && e.contains("515"),
        "{e}"
    );
    let e = run("HASHEDPASSWORD", None, None, false).unwrap_err();
    assert!(
        e.contains("Tor offers HASHEDPASSWORD: set tor.password"),
        "{e}"
    );
    let e = run("SAFECOOKIE", None, None, true).unwrap_err();
    assert!(e.contains("server hash does not match the cookie"), "{e}");
    let e = run("HASHEDPASSWORD", Some("pw"), Some(Method::Cookie), false).unwrap_err();
    assert!(e.contains("Tor does not offer COOKIE"), "{e}");
    // Plain COOKIE sends the cookie to whatever answers: only with a configured file.
    let e = run("COOKIE", None, None, false).unwrap_err();
    assert!(e.contains("no usable authentication method"), "{e}");
}

#[test]
fn a_plain_cookie_is_sent_only_with_a_configured_cookie_file() {
    let (mut c, t, path) = tor_offering("COOKIE", "configured", false);
    let mut with_file = cfg(None);
    with_file.cookie_file = Some(path.clone());
    let r = auth::authenticate(&mut c, &with_file, None).map(|(m, _)| m);
    drop(c);
    t.join().unwrap();
    std::fs::remove_file(path).unwrap();
    assert_eq!(r.map_err(|e| e.to_string()), Ok(Method::Cookie));
}

#[test]
fn a_cookie_path_named_by_the_control_port_is_read_bounded() {
    // A fake Tor may name /dev/zero (endless) or a FIFO (blocks): neither is read.
    for bad in ["/dev/zero", "/proc/self/status"] {
        let (mut c, t) = fake(move |line| {
            if line == "PROTOCOLINFO 1" {
                protocolinfo("SAFECOOKIE", std::path::Path::new(bad))
            } else {
                "510 Unrecognized command\r\n".into()
            }
        });
        let e = auth::authenticate(&mut c, &cfg(None), None)
            .unwrap_err()
            .to_string();
        drop(c);
        t.join().unwrap();
        assert!(
            e.contains("not a regular file") || e.contains("not 32"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn events_wait_apart_from_replies() {
    let (mut c, t, path) = tor_offering("NULL", "events", false);
    let b = bootstrap(&mut c).unwrap();
    assert_eq!(b.percent, 75);
    assert!(b.summary.starts_with("Loaded enough"));
    let circs = circuits(&mut c).unwrap();
    assert_eq!(circs.len(), 2);
    assert_eq!(circs[0].path, vec!["$A~a", "$B~b"]);
    // The CIRC event that came before the GETINFO reply waits for event().
    let e = c
        .event(std::time::Duration::from_millis(10))
        .unwrap()
        .unwrap();
    assert_eq!(e.first(), "CIRC 3 LAUNCHED PURPOSE=GENERAL");
    assert!(
        c.event(std::time::Duration::from_millis(10))
            .unwrap()
            .is_none()
    );
    let e = c.ok("BOGUS").unwrap_err();
    assert!(matches!(e, TorError::Refused { status: 510, .. }), "{e}");
    drop(c);
    let seen = t.join().unwrap();
    assert_eq!(seen.len(), 3);
    std::fs::remove_file(path).unwrap();
}
