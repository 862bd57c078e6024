//! The client engine: one session to the relay, local sockets carried as streams.
//!
//! Local sockets come from listeners (`qnet forward`, like `ssh -L`; `qnet socks`); the
//! preload library adds app sockets to the same loop. The session is re-established when
//! it drops; streams that were open on it fail, and nothing is ever sent directly.
//!
//! [`Client::run`] polls and dispatches; each wakeup ends in `service`'s steps.
//! The files: `config` (what the loop is told), `link` (the session to the relay),
//! `forward` and `socks` (local listeners), `attach` (app sockets from the preload
//! library), `flows` (streams: open, answers, pump, shaped departures).

mod attach;
mod config;
mod flows;
mod forward;
mod link;
mod socks;

pub use attach::Failure;
pub(crate) use attach::{AppConn, Attach, Command};
pub use config::{ClientConfig, DestinationError, parse_destination};

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, ErrorKind};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Poll, Token};

use super::timers::ShapedTimers;
use super::{Link, READ_CHUNK};
use crate::proto::{Session, SessionStats};
use attach::Commands;
use config::relay_address;
use flows::{Flow, Pending};
use forward::Forward;
use socks::Handshaking;

/// What a client loop tells the process around it. The preload runtime publishes it for
/// `qnet_stats` and keeps the engine's fds from the app; `qnet forward` and `qnet socks`
/// use `()`, which ignores everything. A parameter, so this loop writes no global.
pub(crate) trait Observer: Send {
    /// `fd` belongs to the engine: the app must not close or reuse it.
    fn internal_fd(&self, _fd: RawFd) {}
    /// The session to the relay is up, from this local address.
    fn relay_local(&self, _ip: IpAddr) {}
    /// Counters after a service round (before received bytes reach the app).
    fn stats(
        &self,
        _session: &Session,
        _client: &ClientStats,
        _closed: &SessionStats,
        _flows: usize,
    ) {
    }
    /// The session is down; counters of the sessions that ended stay.
    fn down(&self, _client: &ClientStats, _closed: &SessionStats) {}
}

impl Observer for () {}

/// Statistics the client keeps about itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientStats {
    /// Sessions established.
    pub sessions: u64,
    /// Streams that opened successfully.
    pub streams_ok: u64,
    /// Streams the relay refused or that failed with the session.
    pub streams_failed: u64,
    /// Shaped streams the timing verifier (or the session) stopped.
    pub shaping_failures: u64,
    /// How late shaped departures were served.
    pub lateness: super::wheel::Lateness,
    /// Delay the scheduler added to shaped flows that ended (their frames' holds), ns.
    pub added_delay_ns: u64,
}

const WAKE: Token = Token(1);
/// The timerfd of shaped departures.
const TIMER: Token = Token(2);

const FIRST_LOCAL: usize = 1 << 20;

/// Panics [`Client::run`] recovers from before it gives up.
const MAX_PANICS: u32 = 8;

/// The client event loop.
pub struct Client {
    poll: Poll,
    cfg: ClientConfig,
    link: Option<Link>,
    link_token: Token,
    forwards: HashMap<Token, Forward>,
    /// Accepted local sockets waiting for the session.
    waiting: VecDeque<Pending>,
    /// `qnet socks` listeners.
    socks_listeners: HashMap<Token, (TcpListener, crate::socks::SocksAuth)>,
    /// SOCKS clients still in their handshake.
    handshakes: HashMap<Token, Handshaking>,
    commands: Option<Commands>,
    /// The relay failure was already reported on stderr (once per outage).
    told_down: bool,
    flows: HashMap<u32, Flow>,
    by_token: HashMap<Token, u32>,
    next_token: usize,
    retry_at: Option<Instant>,
    backoff: Duration,
    buf: Vec<u8>,
    /// Work was left after the last service round: poll without sleeping.
    busy: bool,
    /// Flows an event touched since the last pump: only these are pumped, so a wakeup
    /// costs O(flows touched), not O(flows).
    dirty: HashSet<u32>,
    /// Flows that stopped for room in the session's output: pumped again after a flush.
    stalled: HashSet<u32>,
    /// Longest sleep between checks of `run`'s stop condition.
    max_wait: Duration,
    /// Counters of sessions that ended, so totals survive reconnects.
    closed: SessionStats,
    /// Shaped flows' next departures (keys are stream ids).
    timers: ShapedTimers,
    /// Counters.
    pub stats: ClientStats,
    /// Where progress is reported.
    observer: Box<dyn Observer>,
    /// Set by a test: the next step panics (fault injection, absent outside tests).
    #[cfg(test)]
    fault: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Client {
    /// Create the loop (nothing is connected until [`Client::run`]).
    pub fn new(cfg: ClientConfig) -> io::Result<Client> {
        let poll = Poll::new()?;
        let timers = ShapedTimers::new(poll.registry(), TIMER)?;
        Ok(Client {
            poll,
            cfg,
            link: None,
            link_token: Token(0),
            forwards: HashMap::new(),
            waiting: VecDeque::new(),
            socks_listeners: HashMap::new(),
            handshakes: HashMap::new(),
            commands: None,
            told_down: false,
            flows: HashMap::new(),
            by_token: HashMap::new(),
            next_token: FIRST_LOCAL,
            retry_at: None,
            backoff: link::FIRST_BACKOFF,
            buf: vec![0u8; READ_CHUNK],
            busy: false,
            dirty: HashSet::new(),
            stalled: HashSet::new(),
            max_wait: Duration::from_millis(100),
            closed: SessionStats::default(),
            timers,
            stats: ClientStats::default(),
            observer: Box::new(()),
            #[cfg(test)]
            fault: Default::default(),
        })
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    /// Report progress to `observer` from now on; its `internal_fd` hears of the loop's
    /// own fds at once (the poller, the timer, the command wake pipe), so call this after
    /// [`Client::accept_commands`].
    pub(crate) fn observe(&mut self, observer: Box<dyn Observer>) {
        observer.internal_fd(self.poll.as_raw_fd());
        observer.internal_fd(self.timers.as_raw_fd());
        if let Some(c) = &self.commands {
            observer.internal_fd(c.wake.as_raw_fd());
        }
        self.observer = observer;
    }

    /// Whether the session is up.
    pub fn is_connected(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.session.is_established())
    }

    /// Sleep at most this long between checks of `run`'s stop condition (default 100 ms).
    /// The preload library's engine never stops, so it sleeps until something is due:
    /// an idle program must not be woken ten times a second.
    pub(crate) fn set_max_wait(&mut self, d: Duration) {
        self.max_wait = d;
    }

    /// Run until `stop` returns true (checked at least every `max_wait`).
    ///
    /// Each step runs inside a panic boundary: a bug that panics must not take the loop
    /// (in a preloaded app, the one thread carrying every tunneled connection) down with
    /// it. The step's state cannot be trusted after a panic, so [`Client::recover`] fails
    /// every flow and starts a fresh session; after [`MAX_PANICS`] the loop gives up with
    /// an error (and its flows fail closed) rather than panic forever.
    pub fn run(&mut self, mut stop: impl FnMut(&Client) -> bool) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        self.connect_relay(Instant::now());
        super::lower_timer_slack();
        let mut panics = 0;
        while !stop(self) {
            let step =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step(&mut events)));
            match step {
                Ok(r) => r?,
                Err(_) => {
                    panics += 1;
                    if panics > MAX_PANICS {
                        self.close_link();
                        self.fail_flows(libc::ECONNRESET);
                        return Err(io::Error::other("repeated internal errors"));
                    }
                    self.recover(Instant::now());
                }
            }
        }
        Ok(())
    }

    /// One round: sleep until something is due, then serve it.
    fn step(&mut self, events: &mut Events) -> io::Result<()> {
        self.arm_timer(Instant::now());
        match self.poll.poll(events, Some(self.timeout(Instant::now()))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        #[cfg(test)]
        if self.fault.swap(false, std::sync::atomic::Ordering::Relaxed) {
            panic!("fault injected by a test");
        }
        let now = Instant::now();
        for ev in events.iter() {
            let readable = ev.is_readable() || ev.is_read_closed();
            let writable = ev.is_writable() || ev.is_error();
            self.dispatch(now, ev.token(), readable, writable);
        }
        if self.link.is_none() && self.retry_at.is_some_and(|t| t <= now) {
            self.connect_relay(now);
        }
        self.link_timeout(now);
        self.expire_timers(now);
        self.service(now);
        Ok(())
    }

    /// A step panicked: the session, the flows and their timers may be half updated. Fail
    /// every flow as a lost session does (connects in flight get ECONNRESET; open flows
    /// are reset, see `fail_flows`), drop SOCKS handshakes and the session, and connect afresh;
    /// listeners and the command channel stay, so later connections work.
    fn recover(&mut self, now: Instant) {
        // A line per panic (at most MAX_PANICS), not `tell_once`: the runtime's own
        // once-only line must stay free for the engine stopping for good.
        crate::qlog!(
            Error,
            "internal error in the engine; its connections were reset, new ones are served"
        );
        self.close_link();
        self.fail_flows(libc::ECONNRESET);
        self.handshakes.clear();
        self.dirty.clear();
        self.stalled.clear();
        self.timers.clear();
        self.busy = false;
        self.told_down = false;
        self.backoff = link::FIRST_BACKOFF;
        self.connect_relay(now);
    }

    /// How long the next poll may sleep: until the retry or the session's next timer,
    /// at most `max_wait`; not at all when the last round left work.
    fn timeout(&self, now: Instant) -> Duration {
        if self.busy {
            return Duration::ZERO;
        }
        let session = self.link.as_ref().and_then(|l| l.session.next_timeout());
        let deadline = match (self.retry_at, session) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        deadline
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(self.max_wait)
            .min(self.max_wait)
    }

    /// One readiness event, to whatever owns token `t`.
    fn dispatch(&mut self, now: Instant, t: Token, readable: bool, writable: bool) {
        if t == WAKE {
            self.take_commands();
        } else if t == TIMER {
            self.timers.fired();
        } else if self.socks_listeners.contains_key(&t) {
            self.socks_accept(t);
        } else if self.handshakes.contains_key(&t) {
            self.socks_read(t);
        } else if t == self.link_token && self.link.is_some() {
            // The session's output may have drained: retry flows that waited for room.
            let stalled = std::mem::take(&mut self.stalled);
            self.dirty.extend(stalled);
            self.link_event(now, readable);
        } else if self.forwards.contains_key(&t) {
            self.accept(t);
        } else if let Some(&s) = self.by_token.get(&t) {
            if let Some(f) = self.flows.get_mut(&s) {
                f.ep.readable |= readable;
                f.ep.writable |= writable;
                self.dirty.insert(s);
            }
        }
    }

    /// Everything after a wakeup's input: session events, new streams, then the pump of
    /// the flows an event touched, with the counters published around it.
    fn service(&mut self, now: Instant) {
        self.expire_handshakes(now);
        if self.link.is_none() {
            return;
        }
        self.session_events(now);
        self.open_waiting(now);
        // Before the pump hands received bytes to the app: an app that read them must
        // find them counted.
        self.publish();
        if self.pump_dirty(now) {
            self.publish();
        }
    }

    /// Tell the observer the counters.
    fn publish(&self) {
        if let Some(l) = &self.link {
            self.observer
                .stats(&l.session, &self.stats, &self.closed, self.flows.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::keys::PrivateKey;
    use crate::relay::policy::ExitPolicy;
    use crate::relay::server::{Relay, RelayConfig};

    /// An echo server on loopback.
    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = io::copy(&mut r, &mut s);
                });
            }
        });
        addr
    }

    /// A relay on loopback admitting `client`, exiting only to 127.0.0.1; runs until
    /// `stop` is set. Returns its address and public key.
    fn relay(client: &PrivateKey, stop: Arc<AtomicBool>) -> (SocketAddr, [u8; 32]) {
        let key = PrivateKey::generate();
        let public = key.public().0;
        let server = crate::config::ServerConfig::default();
        let clients = crate::proto::admit::Admission::shared(key.as_bytes(), [client.public().0]);
        let cfg = RelayConfig {
            key,
            clients,
            clients_path: None,
            policy: ExitPolicy::from_exit_allow(&["127.0.0.1/32"]).unwrap(),
            session: crate::proto::SessionConfig::default(),
            connect_timeout: Duration::from_secs(5),
            upstream: None,
            profile: crate::sched::Profile::Performance,
            allow_profiles: Vec::new(),
            clock_skew: server.clock_skew,
            replay_capacity: server.replay_cache,
            drain_min: server.drain_min,
            drain_max: server.drain_max,
            threads: 0,
        };
        let mut r = Relay::bind("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
        let addr = r.local_addr().unwrap();
        std::thread::spawn(move || r.run(&stop, &AtomicBool::new(false)));
        (addr, public)
    }

    /// A client of the relay at `relay_addr` forwarding a local port (returned) to `echo`.
    fn forwarding_client(
        key: PrivateKey,
        relay_addr: SocketAddr,
        relay_key: [u8; 32],
        echo: SocketAddr,
    ) -> (Client, SocketAddr) {
        let mut client = Client::new(ClientConfig {
            relay: relay_addr.to_string(),
            relay_key,
            key,
            session: crate::proto::SessionConfig::default(),
            upstream: None,
            timing: crate::config::TimingConfig::default(),
        })
        .unwrap();
        let local = client
            .forward(
                "127.0.0.1:0".parse().unwrap(),
                crate::proto::Destination::Addr(echo),
            )
            .unwrap();
        (client, local)
    }

    fn echo_round(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn engine_survives_its_own_panic_and_serves_later_connects() {
        let stop = Arc::new(AtomicBool::new(false));
        let key = PrivateKey::generate();
        let (relay_addr, relay_key) = relay(&key, stop.clone());
        let echo = echo_server();
        let (mut client, local) = forwarding_client(key, relay_addr, relay_key, echo);
        let fault = client.fault.clone();
        let s = stop.clone();
        let engine = std::thread::spawn(move || {
            let r = client.run(|_| s.load(Ordering::SeqCst));
            (r, client.stats.sessions)
        });
        let timeout = Some(Duration::from_secs(10));

        let mut before = TcpStream::connect(local).unwrap();
        before.set_read_timeout(timeout).unwrap();
        echo_round(&mut before, b"before the fault");

        // The next step panics (the loop wakes at least every 100 ms): the flow in
        // flight is reset, not left hanging or ended as if the peer closed.
        fault.store(true, Ordering::SeqCst);
        let mut buf = [0u8; 16];
        let r = before.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "the open flow: {r:?}"
        );

        // The loop goes on, with a fresh session: later connections work.
        let mut after = TcpStream::connect(local).unwrap();
        after.set_read_timeout(timeout).unwrap();
        echo_round(&mut after, b"after the fault");

        stop.store(true, Ordering::SeqCst);
        let (r, sessions) = engine.join().expect("the engine thread did not die");
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(sessions, 2, "a new session after the fault");
    }

    #[test]
    fn relay_death_resets_forwarded_connections_instead_of_eof() {
        let relay_stop = Arc::new(AtomicBool::new(false));
        let key = PrivateKey::generate();
        let (relay_addr, relay_key) = relay(&key, relay_stop.clone());
        let echo = echo_server();
        let (mut client, local) = forwarding_client(key, relay_addr, relay_key, echo);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let engine = std::thread::spawn(move || client.run(|_| s.load(Ordering::SeqCst)));
        let mut s = TcpStream::connect(local).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        echo_round(&mut s, b"before the relay dies");
        // The relay's loop ends and drops every session: the flow in flight is cut off,
        // which the program must not take for the stream's clean end.
        relay_stop.store(true, Ordering::SeqCst);
        let mut buf = [0u8; 16];
        let r = s.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "the open flow: {r:?}"
        );
        stop.store(true, Ordering::SeqCst);
        assert!(engine.join().unwrap().is_ok());
    }
}
