//! One blocking trial of a path for `qnet check`: connect (through the upstream proxy if
//! any), build the tunnel with the loop's own `Tunnel` (so a route is telescoped exactly
//! as in use), open one stream per destination and read the relay's answers. Nothing is
//! shared with other processes: the health file is not touched.

use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::ClientConfig;
use super::link::through_upstream;
use super::tunnel::{Purpose, Tunnel};
use crate::engine::{Link, LinkRead, READ_CHUNK};
use crate::proto::{Destination, Event, OpenError, Role, Session};

/// How far a path's trial got before it stopped, when it did not get through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFault {
    /// The entry relay's (or the upstream proxy's) name does not resolve.
    Resolve(String),
    /// The TCP connection did not come up (refused, timed out, unreachable).
    Connect(String),
    /// The upstream SOCKS5 proxy would not connect us to the entry relay.
    Upstream(String),
    /// Hop `hop` (0: the entry) got msg1 and answered not one byte before the deadline or
    /// closing: what a relay does to a msg1 it does not admit.
    Silent {
        /// Index of the silent hop in the path.
        hop: usize,
    },
    /// The handshake with hop `hop`, or the extension to it, failed another way.
    Failed {
        /// Index of the hop in the path.
        hop: usize,
        /// What happened, as the client loop would log it.
        why: String,
    },
}

/// What one stream's OPEN got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenOutcome {
    /// The relay connected to the destination.
    Opened,
    /// The relay refused or could not connect.
    Failed(OpenError),
    /// No answer before the deadline.
    NoAnswer,
}

/// The result of [`probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// How long the TCP connect to the entry (or the proxy) took, once it did.
    pub connect: Option<Duration>,
    /// From connect to the exit's session being up, once it was.
    pub handshake: Option<Duration>,
    /// Why it stopped short, if it did.
    pub fault: Option<ProbeFault>,
    /// One per destination asked for, in order; empty unless the tunnel came up.
    pub opens: Vec<OpenOutcome>,
}

/// Try path `p` of `cfg`: each step (connect, each hop's handshake, the OPENs) gets
/// `timeout`.
pub fn probe(cfg: &ClientConfig, p: usize, dests: &[Destination], timeout: Duration) -> Probe {
    let mut out = Probe {
        connect: None,
        handshake: None,
        fault: None,
        opens: Vec::new(),
    };
    if let Err(f) = drive(cfg, p, dests, timeout, &mut out) {
        out.fault = Some(f);
    }
    out
}

fn drive(
    cfg: &ClientConfig,
    p: usize,
    dests: &[Destination],
    timeout: Duration,
    out: &mut Probe,
) -> Result<(), ProbeFault> {
    let hops = cfg.paths[p].hops.clone();
    let entry = hops[0].address.clone();
    let first = cfg
        .upstream
        .as_ref()
        .map_or(entry.clone(), |u| u.proxy.clone());
    let addr = super::relay_address(&first)
        .map_err(|e| ProbeFault::Resolve(format!("{first} does not resolve: {e}")))?;
    let started = Instant::now();
    // The address beside the name only when it says more.
    let shown = if addr.to_string() == first {
        first.clone()
    } else {
        format!("{first} ({addr})")
    };
    let std_sock = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| ProbeFault::Connect(format!("{shown}: {e}")))?;
    out.connect = Some(started.elapsed());
    let failed = |hop: usize, why: String| ProbeFault::Failed { hop, why };
    std_sock
        .set_nonblocking(true)
        .map_err(|e| failed(0, e.to_string()))?;
    let _ = std_sock.set_nodelay(true);
    let mut sock = TcpStream::from_std(std_sock);
    let mut poll = Poll::new().map_err(|e| failed(0, e.to_string()))?;
    poll.registry()
        .register(&mut sock, Token(0), Interest::READABLE | Interest::WRITABLE)
        .map_err(|e| failed(0, e.to_string()))?;
    let now = Instant::now();
    let session = Session::new(
        now,
        cfg.session.clone(),
        Role::Client {
            relay_public: hops[0].key,
        },
        cfg.key.as_bytes(),
        Box::new(crate::entropy::RingRandom),
    );
    let mut link = Link::new(sock, session);
    if let Some(u) = &cfg.upstream {
        through_upstream(&mut link, u, &entry).map_err(|e| ProbeFault::Upstream(e.to_string()))?;
    }
    let n_hops = hops.len();
    let mut t = Tunnel::new(
        (1, p, Purpose::Probe),
        link,
        Token(0),
        hops,
        cfg.session.clone(),
        now,
    );
    // The hop whose handshake runs, and when its time is up.
    let (mut hop, mut deadline) = (0, now + timeout);
    // Streams opened on the exit's session, by destination index.
    let mut streams: Vec<u32> = Vec::new();
    let mut events = Events::with_capacity(8);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let now = Instant::now();
        if let Err(why) = t.advance(now, cfg.key.as_bytes()) {
            // A later hop that refuses msg1 shows as its carrier stream ending.
            let hop = t.depth() - 1;
            return Err(if t.is_unanswered() {
                ProbeFault::Silent { hop }
            } else {
                failed(hop, why)
            });
        }
        if t.depth() - 1 > hop {
            hop = t.depth() - 1;
            deadline = now + timeout;
        }
        if t.is_established() && out.handshake.is_none() {
            out.handshake = Some(started.elapsed());
            deadline = now + timeout;
            let exit = t.exit_mut().expect("established");
            for d in dests {
                let profile = crate::sched::Profile::Performance.wire();
                let (s, _) = exit
                    .open(now, d.clone(), profile, &[])
                    .map_err(|e| failed(n_hops - 1, format!("cannot open a stream: {e}")))?;
                streams.push(s);
            }
            out.opens = vec![OpenOutcome::NoAnswer; dests.len()];
            // The OPENs are in the exit's session: carry them down the route first.
            continue;
        }
        if let Some(exit) = t.exit_mut().filter(|_| out.handshake.is_some()) {
            while let Some(ev) = exit.poll_event() {
                if let Event::OpenResult { stream, result } = ev {
                    if let Some(i) = streams.iter().position(|&s| s == stream) {
                        out.opens[i] = match result {
                            Ok(()) => OpenOutcome::Opened,
                            Err(e) => OpenOutcome::Failed(e),
                        };
                        let _ = exit.reset(now, stream, 0);
                    }
                }
            }
            if !out.opens.contains(&OpenOutcome::NoAnswer) {
                return Ok(());
            }
        }
        t.link
            .flush()
            .map_err(|e| failed(hop, format!("{}: {e}", t.frontier())))?;
        if now >= deadline {
            return if out.handshake.is_some() {
                Ok(())
            } else if t.is_unanswered() {
                Err(ProbeFault::Silent { hop })
            } else {
                Err(failed(hop, format!("no handshake within {timeout:?}")))
            };
        }
        let wake = t.next_timeout().map_or(deadline, |d| d.min(deadline));
        poll.poll(&mut events, Some(wake.saturating_duration_since(now)))
            .map_err(|e| failed(hop, e.to_string()))?;
        let now = Instant::now();
        if !events.is_empty() {
            match t.link.read_in(now, &mut buf) {
                Ok(LinkRead::Drained) => {}
                Ok(LinkRead::Eof) if t.is_unanswered() => return Err(ProbeFault::Silent { hop }),
                Ok(LinkRead::Eof) => return Err(failed(hop, "relay closed the connection".into())),
                Ok(LinkRead::Failed(e)) => return Err(failed(hop, e.to_string())),
                Ok(LinkRead::ProxyFailed(e)) => return Err(ProbeFault::Upstream(e)),
                Err(e) => return Err(failed(hop, e.to_string())),
            }
        }
        if t.next_timeout().is_some_and(|d| d <= now) {
            t.handle_timeout(now).map_err(|why| failed(hop, why))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::super::tests::{echo_server, relay};
    use super::*;
    use crate::keys::PrivateKey;

    const SHORT: Duration = Duration::from_millis(400);

    /// A relay admitting a fresh client key, stopped on drop.
    struct Setup {
        cfg: ClientConfig,
        stop: Arc<AtomicBool>,
    }

    impl Setup {
        fn new() -> Setup {
            let key = PrivateKey::generate();
            let stop = Arc::new(AtomicBool::new(false));
            let (addr, public) = relay(&key, stop.clone());
            Setup {
                cfg: ClientConfig::one_relay(addr.to_string(), public, key),
                stop,
            }
        }
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_good_relay_answers_each_open_as_its_policy_says() {
        let s = Setup::new();
        let echo = echo_server();
        let outside = Destination::Addr(format!("127.0.0.2:{}", echo.port()).parse().unwrap());
        let dests = [
            Destination::Addr(echo),
            outside,
            Destination::Name("localhost".into(), echo.port()),
        ];
        let p = probe(&s.cfg, 0, &dests, Duration::from_secs(3));
        assert_eq!(p.fault, None);
        assert!(p.connect.is_some() && p.handshake.is_some());
        assert_eq!(p.opens[0], OpenOutcome::Opened);
        // The relay exits only to 127.0.0.1.
        assert_eq!(p.opens[1], OpenOutcome::Failed(OpenError::Forbidden));
        assert_ne!(p.opens[2], OpenOutcome::Failed(OpenError::NameNotFound));
    }

    #[test]
    fn a_wrong_relay_key_and_a_stranger_are_both_silence() {
        let mut s = Setup::new();
        s.cfg.paths[0].hops[0].key = PrivateKey::generate().public().0;
        let p = probe(&s.cfg, 0, &[], SHORT);
        assert!(p.connect.is_some());
        assert_eq!(p.fault, Some(ProbeFault::Silent { hop: 0 }));
        let mut s = Setup::new();
        s.cfg.key = PrivateKey::generate();
        let p = probe(&s.cfg, 0, &[], SHORT);
        assert_eq!(p.fault, Some(ProbeFault::Silent { hop: 0 }));
        assert!(p.opens.is_empty());
    }

    #[test]
    fn a_relay_that_is_not_there_is_a_failed_connect() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let cfg = ClientConfig::one_relay(addr.to_string(), [7; 32], PrivateKey::generate());
        let p = probe(&cfg, 0, &[], SHORT);
        assert_eq!(p.connect, None);
        assert!(matches!(p.fault, Some(ProbeFault::Connect(_))), "{p:?}");
    }
}
