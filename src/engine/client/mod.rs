//! The client engine: tunnels to the relays, local sockets carried as streams.
//!
//! Local sockets come from listeners (`qnet forward`, like `ssh -L`; `qnet socks`); the
//! preload library adds app sockets to the same loop. New flows go to the current
//! tunnel, on the most preferred healthy path (a relay, or a route through two or three);
//! a tunnel that dies fails the streams open on it, and nothing is ever sent directly.
//!
//! [`Client::run`] polls and dispatches; each wakeup ends in `service`'s steps.
//! The files: `config` (what the loop is told), `health` (each path's state, pure),
//! `shared` (that state shared with this user's other processes), `tunnel` (the
//! sessions to one path's hops, telescoped), `link` (a tunnel's connection, events and
//! end), `paths` (which tunnels should exist: current, races, probes, the silence
//! check), `probe` (one blocking trial of a path, for `qnet check`), `forward` and
//! `socks` (local listeners), `attach` (app sockets from the preload library), `flows`
//! (streams: open, answers, pump, shaped departures), `report` (this process's status
//! file for `qnet status`).

mod attach;
mod config;
mod flows;
mod forward;
mod health;
mod link;
mod paths;
mod probe;
mod report;
mod shared;
mod socks;
mod tunnel;

pub use attach::Failure;
pub(crate) use attach::{AppConn, Attach, Command};
pub use config::{ClientConfig, DestinationError, Hop, PathConfig, parse_destination};
pub use probe::{OpenOutcome, Probe, ProbeFault, probe};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{self, ErrorKind};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Poll, Token};

use super::READ_CHUNK;
use super::timers::ShapedTimers;
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
    /// A session to a relay is up, from this local address.
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
    /// No session is up; counters of the sessions that ended stay.
    fn down(&self, _client: &ClientStats, _closed: &SessionStats) {}
    /// Calls the process refused because they would bypass the tunnel, by kind, for its
    /// status file (the preload runtime's counts; none elsewhere).
    fn refusals(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
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
    /// Tunnels to the paths: at most one current, races, probes, draining ones.
    tunnels: Vec<tunnel::Tunnel>,
    /// The last tunnel's serial (the high half of its flows' keys).
    next_serial: u32,
    /// Every path's health and the order of preference.
    health: health::Health,
    /// Paths tried in this round of attempts (cleared when one is up or all failed).
    tried: Vec<usize>,
    /// Why the last path failed, for the line an app user sees.
    last_failure: Option<String>,
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
    /// Keyed by tunnel serial (high half) and stream id: ordered, so a tunnel's flows
    /// are one range (`flows_of`), with no count to keep beside them.
    flows: BTreeMap<u64, Flow>,
    by_token: HashMap<Token, u64>,
    next_token: usize,
    buf: Vec<u8>,
    /// Work was left after the last service round: poll without sleeping.
    busy: bool,
    /// Flows an event touched since the last pump: only these are pumped, so a wakeup
    /// costs O(flows touched), not O(flows).
    dirty: HashSet<u64>,
    /// Flows that stopped for room in the session's output: pumped again after a flush.
    stalled: HashSet<u64>,
    /// Longest sleep between checks of `run`'s stop condition.
    max_wait: Duration,
    /// When the tunnels must be looked at again (a race, a probe, a silence check).
    wake_at: Option<Instant>,
    /// Counters of sessions that ended, so totals survive reconnects.
    closed: SessionStats,
    /// Shaped flows' next departures (keys are flow keys).
    timers: ShapedTimers,
    /// Counters.
    pub stats: ClientStats,
    /// Where progress is reported.
    observer: Box<dyn Observer>,
    /// This process's status file, if it publishes one (`publish_status`).
    reporter: Option<report::Reporter>,
    /// Tor's state, when the upstream is Tor (`ClientConfig::tor`).
    tor: Option<crate::tor::TorWatch>,
    /// Set by a test: the next step panics (fault injection, absent outside tests).
    #[cfg(test)]
    fault: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Client {
    /// Create the loop (nothing is connected until [`Client::run`]).
    pub fn new(cfg: ClientConfig) -> io::Result<Client> {
        if cfg.paths.is_empty() || cfg.paths.iter().any(|p| p.hops.is_empty()) {
            return Err(io::Error::other("no relay configured"));
        }
        let poll = Poll::new()?;
        let timers = ShapedTimers::new(poll.registry(), TIMER)?;
        let weights: Vec<(Option<&str>, u32)> = cfg
            .paths
            .iter()
            .map(|p| (p.group.as_deref(), p.weight))
            .collect();
        // Without randomness the configured order stands (weights only spread load).
        let health = health::Health::new(&weights, || crate::entropy::next_u64().unwrap_or(0));
        drop(weights);
        let tor = match &cfg.tor {
            // Its thread is qnet's own: its connect to the control port is not tunneled.
            Some(t) => Some(crate::tor::TorWatch::start(
                t.clone(),
                crate::engine::bypass::bypass_thread,
            )?),
            None => None,
        };
        Ok(Client {
            tor,
            poll,
            cfg,
            tunnels: Vec::new(),
            next_serial: 0,
            health,
            tried: Vec::new(),
            last_failure: None,
            forwards: HashMap::new(),
            waiting: VecDeque::new(),
            socks_listeners: HashMap::new(),
            handshakes: HashMap::new(),
            commands: None,
            told_down: false,
            flows: BTreeMap::new(),
            by_token: HashMap::new(),
            next_token: FIRST_LOCAL,
            buf: vec![0u8; READ_CHUNK],
            busy: false,
            dirty: HashSet::new(),
            stalled: HashSet::new(),
            max_wait: Duration::from_millis(100),
            wake_at: None,
            closed: SessionStats::default(),
            timers,
            stats: ClientStats::default(),
            observer: Box::new(()),
            reporter: None,
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

    /// Whether a session new flows can use is up.
    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// The local addresses of this client's tunnels towards the upstream (Tor's
    /// SocksPort), which Tor reports as its streams' `SOURCE_ADDR`.
    pub fn tunnel_local_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.tunnels
            .iter()
            .filter_map(|t| t.link.sock.local_addr().ok())
            .collect()
    }

    /// For `qnet status`: Tor's bootstrap and this client's sessions' circuits (only
    /// streams from its tunnels' local addresses); `None` without `[tor]`.
    pub fn tor_status(&self) -> Option<crate::tor::TorStatus> {
        let mut st = self.tor.as_ref()?.status();
        let mine = self.tunnel_local_addrs();
        st.circuits.retain(|c| mine.contains(&c.local));
        Some(st)
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
        if let Some(t) = &self.tor {
            // Here, on the loop's own thread: the first connect is judged on Tor's answer.
            t.first_answer();
        }
        let now = Instant::now();
        self.learn_shared(now);
        self.wake_at = self.manage_tunnels(now);
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
                        self.close_all();
                        self.fail_all(libc::ECONNRESET);
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
        let departure_due = self.arm_timer(Instant::now());
        let timeout = if departure_due {
            Duration::ZERO
        } else {
            self.timeout(Instant::now())
        };
        match self.poll.poll(events, Some(timeout)) {
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
        self.tunnel_timeouts(now);
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
        self.close_all();
        self.fail_all(libc::ECONNRESET);
        self.handshakes.clear();
        self.dirty.clear();
        self.stalled.clear();
        self.timers.clear();
        self.busy = false;
        self.told_down = false;
        self.tried.clear();
        self.wake_at = self.manage_tunnels(now);
    }

    /// How long the next poll may sleep: until a tunnel's check or a session's next
    /// timer, at most `max_wait`; not at all when the last round left work.
    fn timeout(&self, now: Instant) -> Duration {
        if self.busy {
            return Duration::ZERO;
        }
        let deadline = self
            .tunnels
            .iter()
            .filter_map(|t| t.next_timeout())
            .chain(self.wake_at)
            .chain(self.reporter.as_ref().and_then(|r| r.due))
            .min();
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
        } else if let Some(i) = self.tunnels.iter().position(|l| l.token == t) {
            // The session's output may have drained: retry flows that waited for room.
            let stalled = std::mem::take(&mut self.stalled);
            self.dirty.extend(stalled);
            self.tunnel_event(now, i, readable);
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
        self.session_events(now);
        self.wake_at = self.manage_tunnels(now);
        self.open_waiting(now);
        // Before the pump hands received bytes to the app: an app that read them must
        // find them counted.
        self.publish();
        self.pump_dirty(now);
        self.publish();
        self.report(now);
    }

    /// Tell the observer the counters (the current tunnel's session's).
    fn publish(&self) {
        if let Some(s) = self.current().and_then(|i| self.tunnels[i].exit()) {
            self.observer
                .stats(s, &self.stats, &self.closed, self.flows.len());
        }
    }
}

#[cfg(test)]
mod tests;
