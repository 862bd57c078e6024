//! The relay's event loops (one thread each) and what they share.
//!
//! Each loop has a listening socket of its own bound to the same address with
//! `SO_REUSEPORT`: the kernel spreads new connections over them by a hash of the
//! connection's addresses, and a session lives on the loop that accepted it, so a
//! session's bytes never cross threads and its loop needs no locks to serve it. What
//! must hold across loops is shared: the admission gate (connection and handshake caps
//! are for the whole relay), the replay cache (a replayed first message may land on
//! another loop), each key's session, dial and lookup counts, and allow-list reloads.
//! `SO_REUSEPORT` lets only sockets of the same effective user join the group, so no
//! other account can take a share of the connections; with one loop it is not set.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use mio::net::TcpListener;
use mio::{Poll, Waker};
use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};

use super::limits::Gate;
use super::quota::Quotas;
use super::{Loop, RelayConfig, WAKER};
use crate::config::ServerLimits;
use crate::engine::wheel::Lateness;
use crate::keys::{PrivateKey, load_allow_list};
use crate::proto::admit::{Admission, SharedAdmission};
use crate::proto::replay::{ReplayCache, SharedReplay};
use crate::qlog;
use crate::relay::metrics::Metrics;

/// Pending connections each listener holds before the kernel refuses more.
const BACKLOG: i32 = 1024;

/// A bound relay, ready to run: its event loops, not yet started.
pub struct Relay {
    pub(super) loops: Vec<Loop>,
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// How late shaped departures were served (every loop's, once `run` returns).
    pub lateness: Lateness,
    /// Shaped streams the timing verifier (or the session) stopped, every loop's.
    pub shaping_failures: u64,
}

/// What every loop of one relay shares.
pub(super) struct Shared {
    /// The caps on connections and handshakes, for the whole relay.
    pub(super) gate: Mutex<Gate>,
    /// First messages accepted lately, whichever loop took them.
    pub(super) replay: SharedReplay,
    /// Each authenticated key's sessions, dials and lookups.
    pub(super) quotas: Arc<Quotas>,
    /// Bumped at each allow-list reload; each loop then ends removed keys' sessions.
    generation: AtomicU64,
    /// A loop failed: the others stop too.
    halt: AtomicBool,
    /// Every loop's waker, to make them see a reload or a halt at once.
    wakers: Vec<Arc<Waker>>,
    /// What the loops count, for `/metrics`.
    pub(super) metrics: Arc<Metrics>,
}

impl Shared {
    /// The caps in force.
    pub(super) fn limits(&self) -> ServerLimits {
        *self.gate.lock().limits()
    }

    /// The allow-list generation: it changes when a reload replaced the list.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether a loop failed and all should stop.
    pub(super) fn halted(&self) -> bool {
        self.halt.load(Ordering::Relaxed)
    }

    fn halt(&self) {
        self.halt.store(true, Ordering::Relaxed);
        self.wake_all();
    }

    fn wake_all(&self) {
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    /// SIGHUP: re-read the allow-list at `path` into `clients` (admission keys under
    /// the relay's `key`) and have every loop end the sessions of keys no longer on it;
    /// a bad list keeps the old (and every session).
    pub(super) fn reload(&self, path: &Path, clients: &SharedAdmission, key: &PrivateKey) {
        match load_allow_list(path) {
            Ok(set) => {
                qlog!(
                    Info,
                    "reloaded {} client keys from {}",
                    set.len(),
                    path.display()
                );
                // One X25519 per key, computed before the lock is taken.
                let admission = Admission::new(key.as_bytes(), set.iter().map(|k| k.0));
                *clients.write() = admission;
                self.metrics.set_clients_allowed(set.len());
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.wake_all();
            }
            Err(e) => qlog!(Error, "allow-list not reloaded, keeping the old one: {e}"),
        }
    }
}

/// Stops every loop when dropped: when the loop that holds it returns, fails or
/// panics (the scope would otherwise wait for the others for ever).
struct HaltOnExit<'a>(&'a Shared);

impl Drop for HaltOnExit<'_> {
    fn drop(&mut self) {
        self.0.halt();
    }
}

/// A non-blocking listener on `addr`; `reuse_port` lets the other loops' listeners
/// bind the same address.
fn listener(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std's TcpListener does: a restarted relay can bind while old connections linger.
    sock.set_reuse_address(true)?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(TcpListener::from_std(sock.into()))
}

/// The loops `configured` asks for: 0 means one per core.
fn loop_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

impl Relay {
    /// Bind one listener per loop (`cfg.threads`; port 0 picks one port for all), read
    /// the host's own addresses (if the exit policy refuses them or the relay extends:
    /// it never extends to itself) and start the resolver
    /// threads the loops share.
    pub fn bind(addr: SocketAddr, mut cfg: RelayConfig) -> io::Result<Relay> {
        // Before the loops' threads: memory they free must go back (see `trim`).
        crate::os::steady_malloc_thresholds();
        let n = loop_count(cfg.threads);
        let first = listener(addr, n > 1)?;
        let addr = first.local_addr()?;
        if cfg.policy.refuses_own_addrs() || !cfg.extend.is_empty() {
            let own = crate::os::interface_addrs().map_err(|e| {
                io::Error::new(e.kind(), format!("reading this host's addresses: {e}"))
            })?;
            cfg.extend.set_own(own.iter().copied(), addr.port());
            cfg.policy.set_own_addrs(own);
        }
        let mut listeners = vec![first];
        for _ in 1..n {
            listeners.push(listener(addr, true)?);
        }
        let mut polls = Vec::with_capacity(n);
        for _ in 0..n {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            polls.push((poll, waker));
        }
        let started = cfg.session.clock.unix(Instant::now());
        let shared = Arc::new(Shared {
            gate: Mutex::new(Gate::new(ServerLimits::default(), Instant::now())),
            replay: ReplayCache::shared(cfg.replay_capacity, cfg.clock_skew, started),
            quotas: Arc::default(),
            generation: AtomicU64::new(0),
            halt: AtomicBool::new(false),
            wakers: polls.iter().map(|(_, w)| w.clone()).collect(),
            metrics: Metrics::new(n),
        });
        shared.metrics.set_clients_allowed(cfg.clients.read().len());
        let resolve_tx = super::names::spawn_resolvers(shared.metrics.clone())?;
        let loops = polls
            .into_iter()
            .zip(listeners)
            .enumerate()
            .map(|(i, ((poll, waker), l))| {
                Loop::new(
                    poll,
                    l,
                    waker,
                    resolve_tx.clone(),
                    cfg.clone(),
                    shared.clone(),
                    shared.metrics.of_loop(i),
                )
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Relay {
            loops,
            shared,
            addr,
            lateness: Lateness::default(),
            shaping_failures: 0,
        })
    }

    /// Replace the default caps (`[server]` limits) with `limits`.
    pub fn set_limits(&mut self, limits: ServerLimits) {
        *self.shared.gate.lock() = Gate::new(limits, Instant::now());
        for l in &mut self.loops {
            l.limits = limits;
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    /// What the loops count, for `/metrics` (`relay::metrics::http::serve`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// The number of event loops.
    pub fn threads(&self) -> usize {
        self.loops.len()
    }

    /// Serve until `stop` is set; `reload` set by SIGHUP re-reads the allow-list. The
    /// first loop runs on this thread, the others on threads of their own; if one
    /// fails, all stop and its error is returned.
    pub fn run(&mut self, stop: &AtomicBool, reload: &AtomicBool) -> io::Result<()> {
        let mut loops = std::mem::take(&mut self.loops).into_iter();
        let Some(mut first) = loops.next() else {
            return Ok(());
        };
        let shared = self.shared.clone();
        let results = std::thread::scope(|scope| {
            let mut handles = Vec::new();
            let mut spawn_error = None;
            for (i, mut l) in loops.enumerate() {
                let spawned = std::thread::Builder::new()
                    .name(format!("qnet-relay-{}", i + 1))
                    .spawn_scoped(scope, move || {
                        let shared = l.shared.clone();
                        let _halt = HaltOnExit(&shared);
                        let r = l.run(stop, None);
                        (l.lateness, l.shaping_failures, r)
                    });
                match spawned {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        spawn_error = Some(e);
                        shared.halt();
                        break;
                    }
                }
            }
            let r = {
                let _halt = HaltOnExit(&shared);
                match spawn_error {
                    Some(e) => Err(e),
                    None => first.run(stop, Some(reload)),
                }
            };
            let mut results = vec![(first.lateness, first.shaping_failures, r)];
            for h in handles {
                results.push(h.join().unwrap_or_else(|_| {
                    shared.halt();
                    let e = io::Error::other("an event loop panicked");
                    (Lateness::default(), 0, Err(e))
                }));
            }
            results
        });
        let mut outcome = Ok(());
        for (lateness, failures, r) in results {
            self.lateness.merge(&lateness);
            self.shaping_failures += failures;
            if outcome.is_ok() {
                outcome = r;
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use std::time::Duration;

    fn cfg(threads: usize) -> RelayConfig {
        let server = ServerConfig::default();
        super::super::tests::config(server.drain_min, server.drain_max, threads)
    }

    #[test]
    fn every_loop_listens_on_the_one_port_and_gets_connections() {
        let mut r = Relay::bind("127.0.0.1:0".parse().unwrap(), cfg(3)).unwrap();
        assert_eq!(r.threads(), 3);
        let addr = r.local_addr().unwrap();
        for l in &r.loops {
            assert_eq!(l.listener.local_addr().unwrap(), addr);
        }
        // The kernel hashes each connection's addresses to one listener: with 60
        // connections a loop that gets none has odds of 3 * (2/3)^60, about 1e-10.
        let _clients: Vec<_> = (0..60)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = [0usize; 3];
        while got.iter().sum::<usize>() < 60 && Instant::now() < deadline {
            for (i, l) in r.loops.iter_mut().enumerate() {
                while l.listener.accept().is_ok() {
                    got[i] += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got.iter().sum::<usize>(), 60, "{got:?}");
        assert!(
            got.iter().all(|&n| n > 0),
            "a loop got no connection: {got:?}"
        );
    }

    #[test]
    fn one_loop_does_not_open_the_port_to_reuse() {
        let r = Relay::bind("127.0.0.1:0".parse().unwrap(), cfg(1)).unwrap();
        let addr = r.local_addr().unwrap();
        // Without SO_REUSEPORT on the relay's socket, a second binder is refused even
        // with the option set on its own.
        assert!(listener(addr, true).is_err());
    }

    #[test]
    fn a_stop_ends_every_loop() {
        let mut r = Relay::bind("127.0.0.1:0".parse().unwrap(), cfg(4)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            let out = r.run(&s, &AtomicBool::new(false));
            (out, r.threads())
        });
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        let (out, left) = t.join().unwrap();
        out.unwrap();
        assert_eq!(left, 0, "the loops were consumed by run");
    }
}
