//! The jail's door, in the `qnet run` parent outside it: one thread accepts on the
//! listener the child made inside the jail; each connection gets a thread that reads
//! one request, dials what the policy allows and sends the socket back.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{DIAL, MAX_REQUEST, VERSION, sys};
use crate::config::{Config, InterceptConfig, Route};

/// What the broker may dial: the first hops exactly as the config names them (the
/// entry of every path, or the upstream proxy, and then Tor's TCP control port), and the addresses `intercept.route`
/// sends directly. `None`: the config did not load, and the broker dials nothing (the
/// library inside fails closed with the same error).
#[derive(Debug, Clone)]
pub(super) struct Policy(Option<(Vec<String>, InterceptConfig)>);

impl Policy {
    /// The policy of `cfg`, or of no config.
    pub(super) fn new(cfg: Option<&Config>) -> Policy {
        Policy(cfg.map(|c| {
            let mut hops = match &c.upstream {
                Some(u) => vec![u.proxy.clone()],
                // Any path may be taken (another after a failure), so each entry may be dialled.
                None => c
                    .paths()
                    .into_iter()
                    .filter_map(|p| p.into_iter().next())
                    .map(|h| h.address)
                    .collect(),
            };
            // The library's Tor watcher asks for Tor's TCP control port (a unix socket
            // it opens itself: the jail shares the file system).
            if let (Some(_), Some(crate::config::TorControl::Tcp(a))) =
                (&c.upstream, c.tor.as_ref().map(|t| &t.control))
            {
                hops.push(a.clone());
            }
            (hops, c.intercept.clone())
        }))
    }

    /// Where a request for `target` may go, or the errno that refuses it.
    fn addresses(&self, target: &str) -> Result<Vec<SocketAddr>, i32> {
        let Some((hops, intercept)) = &self.0 else {
            return Err(libc::EACCES);
        };
        if hops.iter().any(|h| h == target) {
            // The relay's (or the proxy's) name is resolved out here: inside there is
            // no resolver to ask.
            return target
                .to_socket_addrs()
                .map(Vec::from_iter)
                .map_err(|_| libc::EHOSTUNREACH);
        }
        let addr: SocketAddr = target.parse().map_err(|_| libc::EACCES)?;
        match intercept.route(addr) {
            Route::Direct => Ok(vec![addr]),
            Route::RefusedDns => Err(libc::ECONNREFUSED),
            Route::Tunnel => Err(libc::EACCES),
        }
    }
}

/// At most this many requests in flight; more are refused with EAGAIN, so a jailed
/// program cannot make the parent start threads without bound.
const MAX_IN_FLIGHT: usize = 64;
/// A client that connects and says nothing for this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve `listener` on a thread of its own for the rest of the process.
pub(super) fn serve(listener: OwnedFd, policy: Policy) -> io::Result<()> {
    let policy = Arc::new(policy);
    let in_flight = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("qnet-jail-broker".into())
        .spawn(move || {
            loop {
                let conn = match sys::accept(&listener) {
                    Ok(c) => c,
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                    // EMFILE and the like: wait, rather than spin or end the door.
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                };
                if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    let _ = answer(&conn, Err(libc::EAGAIN));
                    continue;
                }
                let (policy, done) = (policy.clone(), in_flight.clone());
                let spawned = std::thread::Builder::new()
                    .name("qnet-jail-dial".into())
                    .spawn(move || {
                        handle(&conn, &policy);
                        done.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })
        .map(drop)
}

/// Read one request from `conn` and answer it.
fn handle(conn: &OwnedFd, policy: &Policy) {
    let _ = sys::set_recv_timeout(conn, REQUEST_TIMEOUT);
    let mut buf = [0u8; MAX_REQUEST];
    let result = match sys::recv_msg(conn, &mut buf) {
        Ok((n, None)) => decide(&buf[..n], policy),
        // A request with an fd attached, a truncated one, or none before the timeout.
        Ok((0, _)) | Err(_) => return,
        Ok((_, Some(_))) => Err(libc::EINVAL),
    };
    let _ = answer(
        conn,
        result.as_ref().map(AsRawFd::as_raw_fd).map_err(|e| *e),
    );
}

/// The socket a request asks for, or why not.
fn decide(req: &[u8], policy: &Policy) -> Result<OwnedFd, i32> {
    let target = match req {
        [VERSION, DIAL, rest @ ..] => std::str::from_utf8(rest).map_err(|_| libc::EINVAL)?,
        _ => return Err(libc::EINVAL),
    };
    let addrs = policy.addresses(target)?;
    let mut last = libc::EHOSTUNREACH;
    for a in addrs {
        match crate::os::connect_next(a) {
            Ok(s) => return Ok(s),
            Err(e) => last = e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
    Err(last)
}

fn answer(conn: &OwnedFd, result: Result<std::os::fd::RawFd, i32>) -> io::Result<()> {
    let (errno, fd) = match result {
        Ok(fd) => (0, Some(fd)),
        Err(e) => (e, None),
    };
    let mut msg = [0u8; 5];
    msg[0] = VERSION;
    msg[1..].copy_from_slice(&errno.to_le_bytes());
    sys::send_msg(conn, &msg, fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
    const OTHER_KEY: &str = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=";

    fn cfg(text: &str) -> Config {
        Config::from_toml_str(text, "test").unwrap()
    }

    #[test]
    fn the_broker_dials_the_first_hop_and_bypassed_addresses_only() {
        let c = cfg(&format!(
            "relay = \"127.0.0.1:7000\"\nrelay_key = \"{KEY}\"\n"
        ));
        let p = Policy::new(Some(&c));
        assert_eq!(
            p.addresses("127.0.0.1:7000"),
            Ok(vec!["127.0.0.1:7000".parse().unwrap()])
        );
        // Loopback is bypassed by default; its DNS ports are not.
        assert_eq!(
            p.addresses("127.0.0.1:8080"),
            Ok(vec!["127.0.0.1:8080".parse().unwrap()])
        );
        assert_eq!(p.addresses("127.0.0.1:53"), Err(libc::ECONNREFUSED));
        assert_eq!(p.addresses("198.51.100.7:443"), Err(libc::EACCES));
        assert_eq!(p.addresses("example.com:443"), Err(libc::EACCES));
        assert_eq!(p.addresses(""), Err(libc::EACCES));
        // No config: nothing at all.
        assert_eq!(
            Policy::new(None).addresses("127.0.0.1:8080"),
            Err(libc::EACCES)
        );
    }

    #[test]
    fn with_an_upstream_the_first_hop_is_the_proxy_not_the_relay() {
        let c = cfg(&format!(
            "relay = \"198.51.100.1:7000\"\nrelay_key = \"{KEY}\"\nupstream = \"socks5h://127.0.0.1:9050\"\n"
        ));
        let p = Policy::new(Some(&c));
        assert!(p.addresses("127.0.0.1:9050").is_ok());
        assert_eq!(p.addresses("198.51.100.1:7000"), Err(libc::EACCES));
    }

    #[test]
    fn with_tor_its_control_port_may_be_dialled_too() {
        let base = format!(
            "relay = \"198.51.100.1:7000\"\nrelay_key = \"{KEY}\"\n[tor]\ncontrol = \"192.0.2.9:9051\"\n"
        );
        // Without an upstream the library has no Tor to watch.
        let p = Policy::new(Some(&cfg(&base)));
        assert_eq!(p.addresses("192.0.2.9:9051"), Err(libc::EACCES));
        let with = format!("upstream = \"socks5h://127.0.0.1:9050\"\n{base}");
        let p = Policy::new(Some(&cfg(&with)));
        assert!(p.addresses("192.0.2.9:9051").is_ok());
        assert!(p.addresses("127.0.0.1:9050").is_ok());
    }

    #[test]
    fn every_relay_of_the_list_is_a_first_hop() {
        let c = cfg(&format!(
            "relay = \"198.51.100.1:7000, 198.51.100.2:7000\"\nrelay_key = \"{KEY}, {OTHER_KEY}\"\n"
        ));
        let p = Policy::new(Some(&c));
        for relay in ["198.51.100.1:7000", "198.51.100.2:7000"] {
            assert_eq!(p.addresses(relay), Ok(vec![relay.parse().unwrap()]));
        }
        assert_eq!(p.addresses("198.51.100.3:7000"), Err(libc::EACCES));
    }

    #[test]
    fn with_a_route_only_its_entry_is_a_first_hop() {
        let c = cfg(&format!(
            "[[relays]]\naddress = \"198.51.100.1:7000\"\nkey = \"{KEY}\"\n\
             [[routes]]\nhops = [\"198.51.100.1:7000\", \"198.51.100.2:7000@{OTHER_KEY}\"]\n"
        ));
        let p = Policy::new(Some(&c));
        assert_eq!(
            p.addresses("198.51.100.1:7000"),
            Ok(vec!["198.51.100.1:7000".parse().unwrap()])
        );
        // The exit is reached through the entry, never from here.
        assert_eq!(p.addresses("198.51.100.2:7000"), Err(libc::EACCES));
    }

    #[test]
    fn malformed_requests_are_refused() {
        let p = Policy::new(Some(&cfg("relay = \"127.0.0.1:7000\"\n")));
        assert_eq!(decide(b"", &p).unwrap_err(), libc::EINVAL);
        assert_eq!(decide(&[2, DIAL], &p).unwrap_err(), libc::EINVAL);
        assert_eq!(decide(&[VERSION, 9], &p).unwrap_err(), libc::EINVAL);
        assert_eq!(
            decide(&[VERSION, DIAL, 0xff, 0xfe], &p).unwrap_err(),
            libc::EINVAL
        );
    }

    #[test]
    fn a_dial_round_trip_hands_over_a_connecting_socket() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap().to_string();
        let p = Policy::new(Some(&cfg("relay = \"127.0.0.1:7000\"\n")));
        let (inside, outside) = sys::seqpacket_pair().unwrap();
        let t = std::thread::spawn(move || handle(&outside, &p));
        let mut req = vec![VERSION, DIAL];
        req.extend_from_slice(target.as_bytes());
        sys::send_msg(&inside, &req, None).unwrap();
        let mut reply = [0u8; 5];
        let (n, fd) = sys::recv_msg(&inside, &mut reply).unwrap();
        t.join().unwrap();
        assert_eq!((n, reply), (5, [VERSION, 0, 0, 0, 0]));
        let s = std::net::TcpStream::from(fd.expect("a socket"));
        s.set_nonblocking(false).unwrap();
        let (_accepted, peer) = server.accept().unwrap();
        assert_eq!(peer, s.local_addr().unwrap());
    }
}
