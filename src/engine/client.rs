//! The client engine: one session to the relay, local sockets carried as streams.
//!
//! Local sockets come from listeners (`qnet forward`, like `ssh -L`); the preload
//! library adds app sockets to the same loop. The session is re-established when it
//! drops; streams that were open on it fail, and nothing is ever sent directly.

use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::fdtab::{self, ConnState};
use super::pump::{Endpoint, PumpState, Sock};
use super::shape::Shaper;
use super::{Link, LinkRead, READ_CHUNK};
use crate::keys::PrivateKey;
use crate::proto::{Destination, Event, Role, Session, SessionConfig, SessionStats};
use crate::qlog;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// What the client engine needs.
pub struct ClientConfig {
    /// Relay address, `host:port`.
    pub relay: String,
    /// The relay's static public key (pinned).
    pub relay_key: [u8; 32],
    /// This client's static private key.
    pub key: PrivateKey,
    /// Session limits and timers.
    pub session: SessionConfig,
    /// Reach the relay through this SOCKS5 proxy.
    pub upstream: Option<crate::config::Upstream>,
    /// Which timing profile each flow gets.
    pub timing: crate::config::TimingConfig,
}

impl ClientConfig {
    /// Take relay, relay key, client key and session tunables from a loaded config.
    pub fn from_config(cfg: &crate::config::Config) -> Result<ClientConfig, String> {
        let relay = cfg
            .relay
            .clone()
            .ok_or("no relay configured (config `relay` or QNET_RELAY)")?;
        let relay_key = cfg
            .relay_key
            .ok_or("no relay key configured (config `relay_key` or QNET_RELAY_KEY)")?;
        let key_path = cfg
            .key
            .as_ref()
            .ok_or("no client key configured (config `key` or QNET_KEY)")?;
        let key = crate::keys::load_private_key(key_path).map_err(|e| e.to_string())?;
        Ok(ClientConfig {
            relay,
            relay_key: relay_key.0,
            key,
            session: super::session_config(&cfg.session),
            upstream: cfg.upstream.clone(),
            timing: cfg.timing.clone(),
        })
    }
}

/// Parse `host:port` (IPv6 as `[addr]:port`) into a destination, validating the hostname.
pub fn parse_destination(s: &str) -> Result<Destination, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(Destination::Addr(a));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s}: expected host:port"))?;
    let port: u16 = port.parse().map_err(|_| format!("{s}: bad port"))?;
    if !crate::proto::frame::valid_hostname(host) {
        return Err(format!("{s}: invalid hostname"));
    }
    Ok(Destination::Name(host.to_owned(), port))
}

/// What a client loop tells the process around it. The preload runtime publishes it for
/// `qnet_stats` and keeps the engine's fds from the app; `qnet forward` and `qnet socks`
/// use `()`, which ignores everything. A parameter, so this loop writes no global.
pub trait Observer: Send {
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

struct Forward {
    listener: TcpListener,
    dest: Destination,
}

struct Flow {
    ep: Endpoint,
    open: bool,
    started: Instant,
    dest: Destination,
    app: Option<AppConn>,
    /// A SOCKS client waiting for its CONNECT reply.
    socks: bool,
    /// Filler bytes still to discard before the app's own data (see [`AppConn`]).
    skip: usize,
}

/// An app socket handed over by the preload library's `connect` hook.
pub struct Attach {
    /// The engine's end of the socketpair whose other end is now the app's fd.
    pub sock: mio::net::UnixStream,
    /// Where the stream goes.
    pub dest: Destination,
    /// How to report the outcome.
    pub app: AppConn,
}

/// How the outcome of an app's connect gets back to it.
///
/// A non-blocking connect must not look writable before the relay has answered, so the
/// hook fills the app end's (shrunk) send buffer with `filler` bytes. On success the
/// engine discards them, which makes the app's fd writable (an epoll edge, as for a TCP
/// connect), and puts the buffer size back through `restore`.
pub struct AppConn {
    /// Bytes of filler queued ahead of the app's data.
    pub filler: usize,
    /// A duplicate of the app's end and its original `SO_SNDBUF` (as `setsockopt` takes it).
    pub restore: Option<(OwnedFd, i32)>,
    /// The outcome, read by the app's `getsockopt(SO_ERROR)` and `connect` hooks.
    pub state: Arc<ConnState>,
    /// A blocking connect waits here.
    pub reply: Option<crossbeam::channel::Sender<Result<(), Failure>>>,
    /// The flow's counters, shared with the app's fd record.
    pub counters: Arc<fdtab::FlowCounters>,
}

impl AppConn {
    fn finish(mut self, result: Result<(), Failure>) {
        // The outcome first: growing the send buffer back already wakes the app, which
        // then asks SO_ERROR and getpeername at once.
        self.state.set(result.err().map_or(0, Failure::errno));
        if result.is_ok() {
            if let Some((fd, size)) = self.restore.take() {
                let _ = super::sys::setsockopt_int(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    size,
                );
            }
        }
        if let Some(r) = self.reply.take() {
            let _ = r.send(result);
        }
    }
}

/// A local socket waiting for the session, and what it came from.
struct Pending {
    sock: Sock,
    dest: Destination,
    app: Option<AppConn>,
    /// A SOCKS client: it gets a SOCKS reply when the relay answers.
    socks: bool,
    /// Bytes that arrived before the stream existed (pipelined after a SOCKS request).
    first: Vec<u8>,
}

impl Pending {
    fn plain(sock: Sock, dest: Destination, app: Option<AppConn>) -> Pending {
        Pending {
            sock,
            dest,
            app,
            socks: false,
            first: Vec::new(),
        }
    }
}

/// A SOCKS client in its handshake.
struct Handshaking {
    sock: TcpStream,
    hs: crate::socks::Handshake,
    started: Instant,
}

/// How long a SOCKS client may take to send its request.
const SOCKS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an app's connect failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Locally, or the session failed: this errno.
    Errno(i32),
    /// The relay answered OPEN with this reason.
    Open(crate::proto::OpenError),
}

impl Failure {
    /// The errno a local `connect` reports for it.
    pub fn errno(self) -> i32 {
        match self {
            Failure::Errno(e) => e,
            Failure::Open(e) => e.errno(),
        }
    }
}

/// Where commands from app threads come in.
struct Commands {
    rx: crossbeam::channel::Receiver<Attach>,
    wake: mio::unix::pipe::Receiver,
}

const WAKE: Token = Token(1);
/// The timerfd of shaped departures.
const TIMER: Token = Token(2);

const FIRST_LOCAL: usize = 1 << 20;
/// Pump/flush rounds per wakeup before other sockets get a turn.
const MAX_ROUNDS: usize = 16;

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
    dirty: std::collections::HashSet<u32>,
    /// Flows that stopped for room in the session's output: pumped again after a flush.
    stalled: std::collections::HashSet<u32>,
    /// Longest sleep between checks of `run`'s stop condition.
    max_wait: Duration,
    /// Counters of sessions that ended, so totals survive reconnects.
    closed: SessionStats,
    /// Shaped flows' next departures (keys are stream ids).
    wheel: super::wheel::Wheel,
    /// Wakes the loop for the wheel's next deadline with nanosecond precision.
    timer: super::TimerFd,
    /// The deadline the timerfd is armed for.
    timer_at: Option<u64>,
    /// Counters.
    pub stats: ClientStats,
    /// Where progress is reported.
    observer: Box<dyn Observer>,
}

impl Client {
    /// Create the loop (nothing is connected until [`Client::run`]).
    pub fn new(cfg: ClientConfig) -> io::Result<Client> {
        let poll = Poll::new()?;
        let timer = super::TimerFd::new()?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&timer.as_raw_fd()),
            TIMER,
            Interest::READABLE,
        )?;
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
            backoff: Duration::from_millis(100),
            buf: vec![0u8; READ_CHUNK],
            busy: false,
            dirty: Default::default(),
            stalled: Default::default(),
            max_wait: Duration::from_millis(100),
            closed: SessionStats::default(),
            wheel: super::wheel::Wheel::new(),
            timer,
            timer_at: None,
            stats: ClientStats::default(),
            observer: Box::new(()),
        })
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    /// Carry every connection accepted on `listen` to `dest`; returns the bound address.
    pub fn forward(&mut self, listen: SocketAddr, dest: Destination) -> io::Result<SocketAddr> {
        let (listener, addr, t) = self.listen(listen)?;
        self.forwards.insert(t, Forward { listener, dest });
        Ok(addr)
    }

    /// Bind and register a listener; returns it, its address and its token.
    fn listen(&mut self, listen: SocketAddr) -> io::Result<(TcpListener, SocketAddr, Token)> {
        let mut listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let t = self.token();
        self.poll
            .registry()
            .register(&mut listener, t, Interest::READABLE)?;
        Ok((listener, addr, t))
    }

    /// Serve SOCKS5 on `listen` (`qnet socks`): each CONNECT becomes a stream to its
    /// destination, resolved by the relay; returns the bound address.
    pub fn socks(
        &mut self,
        listen: SocketAddr,
        auth: crate::socks::SocksAuth,
    ) -> io::Result<SocketAddr> {
        let (listener, addr, t) = self.listen(listen)?;
        self.socks_listeners.insert(t, (listener, auth));
        Ok(addr)
    }

    fn socks_accept(&mut self, t: Token) {
        loop {
            let Some((l, auth)) = self.socks_listeners.get(&t) else {
                return;
            };
            match l.accept() {
                Ok((mut sock, _)) => {
                    // As the relay does: the tunnel already batches into records, and Nagle
                    // against the app's delayed ACKs stalled small writes by ~40 ms.
                    let _ = sock.set_nodelay(true);
                    let hs = crate::socks::Handshake::new(auth.clone());
                    let ht = self.token();
                    if self
                        .poll
                        .registry()
                        .register(&mut sock, ht, Interest::READABLE)
                        .is_ok()
                    {
                        self.handshakes.insert(
                            ht,
                            Handshaking {
                                sock,
                                hs,
                                started: Instant::now(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    qlog!(Error, "accept: {e}");
                    return;
                }
            }
        }
    }

    fn socks_read(&mut self, t: Token) {
        use crate::socks::Progress;
        let Some(h) = self.handshakes.get_mut(&t) else {
            return;
        };
        loop {
            let n = match h.sock.read(&mut self.buf) {
                Ok(0) => {
                    self.handshakes.remove(&t);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.handshakes.remove(&t);
                    return;
                }
            };
            match h.hs.feed(&self.buf[..n]) {
                Progress::More { reply } => {
                    // Handshake replies are a few bytes on a fresh socket: they fit.
                    if h.sock.write_all(&reply).is_err() {
                        self.handshakes.remove(&t);
                        return;
                    }
                }
                Progress::Refuse(r) => {
                    qlog!(Info, "SOCKS client refused: {}", r.reason);
                    let _ = h.sock.write_all(&r.reply);
                    self.handshakes.remove(&t);
                    return;
                }
                Progress::Connect { reply, dest, rest } => {
                    let mut h = self.handshakes.remove(&t).expect("present");
                    let _ = self.poll.registry().deregister(&mut h.sock);
                    if h.sock.write_all(&reply).is_err() {
                        return;
                    }
                    if self.link.is_none() && self.retry_at.is_some() {
                        // Fail closed at once: no relay, no connection.
                        self.stats.streams_failed += 1;
                        let _ = h.sock.write_all(&crate::socks::connect_reply(Err(
                            crate::proto::OpenError::Failure,
                        )));
                        return;
                    }
                    self.waiting.push_back(Pending {
                        sock: Sock::Tcp(h.sock),
                        dest,
                        app: None,
                        socks: true,
                        first: rest,
                    });
                    return;
                }
            }
        }
    }

    /// Take app sockets from a channel (the preload library); the pipe wakes the loop.
    pub fn accept_commands(
        &mut self,
        rx: crossbeam::channel::Receiver<Attach>,
        mut wake: mio::unix::pipe::Receiver,
    ) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut wake, WAKE, Interest::READABLE)?;
        self.commands = Some(Commands { rx, wake });
        Ok(())
    }

    fn take_commands(&mut self) {
        let Some(c) = self.commands.as_mut() else {
            return;
        };
        let mut sink = [0u8; 64];
        while matches!(c.wake.read(&mut sink), Ok(n) if n > 0) {}
        let cmds: Vec<Attach> = c.rx.try_iter().collect();
        for a in cmds {
            if self.link.is_none() && self.retry_at.is_some() {
                // Fail closed at once: no relay, no connection.
                self.stats.streams_failed += 1;
                a.app.finish(Err(Failure::Errno(libc::ECONNREFUSED)));
                continue;
            }
            self.waiting
                .push_back(Pending::plain(Sock::Unix(a.sock), a.dest, Some(a.app)));
        }
    }

    fn connect_relay(&mut self, now: Instant) {
        self.retry_at = None;
        // With an upstream proxy the TCP connection goes to it, and it connects to the relay.
        let first_hop = self
            .cfg
            .upstream
            .as_ref()
            .map_or(self.cfg.relay.as_str(), |u| u.proxy.as_str());
        let addr = match relay_address(first_hop) {
            Ok(a) => a,
            Err(e) => {
                qlog!(Error, "cannot resolve {first_hop}: {e}");
                return self.link_down(now, &format!("{first_hop} does not resolve: {e}"));
            }
        };
        // Through the next connect() in load order, never a preloaded app's hooks first:
        // chaining with proxychains-ng depends on it (docs/ARCHITECTURE.md).
        let mut sock = match super::sys::connect_next(addr) {
            Ok(s) => TcpStream::from_std(s),
            Err(e) => {
                return self
                    .link_down(now, &format!("cannot connect to {first_hop} ({addr}): {e}"));
            }
        };
        let _ = sock.set_nodelay(true);
        self.observer.internal_fd(sock.as_raw_fd());
        self.link_token = self.token();
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            self.link_token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.link_down(now, &format!("register: {e}"));
        }
        let session = Session::new(
            now,
            self.cfg.session.clone(),
            Role::Client {
                relay_public: self.cfg.relay_key,
            },
            self.cfg.key.as_bytes(),
            Box::new(crate::entropy::RingRandom),
        );
        let mut link = Link::new(sock, self.link_token, session);
        if let Some(u) = &self.cfg.upstream {
            let target = match parse_destination(&self.cfg.relay) {
                Ok(d) => d,
                Err(e) => return self.link_down(now, &e),
            };
            let creds = if u.isolate {
                Some(crate::socks::isolation_credentials())
            } else {
                u.credentials
                    .as_ref()
                    .map(|(a, b)| (a.clone().into_bytes(), b.clone().into_bytes()))
            };
            let (h, greeting) = crate::socks::ClientHandshake::start(target, creds);
            link.proxy = Some(h);
            link.proxy_out = greeting;
        }
        self.link = Some(link);
    }

    /// The session is gone: fail its flows and the waiting sockets, retry later.
    fn link_down(&mut self, now: Instant, why: &str) {
        qlog!(Info, "relay session down: {why}");
        // The one line an app user sees when tunneled connects fail for want of a relay
        // (once per outage). A session that never opened a stream may have had its key
        // refused: XK lets the relay stay silent, so the client cannot tell for sure.
        let failing = self.flows.values().any(|f| f.app.is_some())
            || self.waiting.iter().any(|w| w.app.is_some());
        if failing && !self.told_down {
            if super::log::enabled(crate::config::LogLevel::Error) {
                let hint = if self.stats.streams_ok == 0 {
                    " (check the relay address and key, and that this client's key is on its list)"
                } else {
                    ""
                };
                eprintln!(
                    "qnet: relay {} unusable: {why}{hint}; tunneled connections fail, nothing is sent directly",
                    self.cfg.relay
                );
            }
            self.told_down = true;
        }
        if let Some(mut l) = self.link.take() {
            let _ = self.poll.registry().deregister(&mut l.sock);
            let st = l.session.stats();
            let c = &mut self.closed;
            c.bytes_sent += st.bytes_sent;
            c.bytes_received += st.bytes_received;
            c.records_sent += st.records_sent;
            c.records_received += st.records_received;
            c.padding_sent += st.padding_sent;
        }
        self.observer.down(&self.stats, &self.closed);
        for (_, mut f) in self.flows.drain() {
            let _ = f.ep.sock.deregister(self.poll.registry());
            if let Some(app) = f.app.take() {
                app.finish(Err(Failure::Errno(libc::ECONNREFUSED)));
            }
            self.stats.streams_failed += 1;
        }
        self.by_token.clear();
        self.stats.streams_failed += self.waiting.len() as u64;
        for p in self.waiting.drain(..) {
            if let Some(app) = p.app {
                app.finish(Err(Failure::Errno(libc::ECONNREFUSED)));
            }
        }
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
    }

    /// Sleep at most this long between checks of `run`'s stop condition (default 100 ms).
    /// The preload library's engine never stops, so it sleeps until something is due:
    /// an idle program must not be woken ten times a second.
    pub fn set_max_wait(&mut self, d: Duration) {
        self.max_wait = d;
    }

    /// Run until `stop` returns true (checked at least every `max_wait`).
    pub fn run(&mut self, mut stop: impl FnMut(&Client) -> bool) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        self.connect_relay(Instant::now());
        super::lower_timer_slack();
        while !stop(self) {
            let now = Instant::now();
            self.arm_timer(now);
            let mut deadline = self.retry_at;
            if let Some(l) = &self.link {
                deadline = match (deadline, l.session.next_timeout()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let timeout = if self.busy {
                Duration::ZERO
            } else {
                deadline
                    .map(|t| t.saturating_duration_since(now))
                    .unwrap_or(self.max_wait)
                    .min(self.max_wait)
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for ev in events.iter() {
                let t = ev.token();
                let readable = ev.is_readable() || ev.is_read_closed();
                let writable = ev.is_writable() || ev.is_error();
                if t == WAKE {
                    self.take_commands();
                } else if t == TIMER {
                    self.timer.clear();
                    self.timer_at = None;
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
            if self.link.is_none() && self.retry_at.is_some_and(|t| t <= now) {
                self.connect_relay(now);
            }
            if let Some(l) = self.link.as_mut() {
                if l.session.next_timeout().is_some_and(|t| t <= now) {
                    if let Err(e) = l.session.handle_timeout(now) {
                        self.link_down(now, &e.to_string());
                    }
                }
            }
            let due = self.expire_timers(now);
            self.dirty.extend(due);
            self.service(now);
        }
        Ok(())
    }

    /// Point the timerfd at the wheel's earliest deadline.
    fn arm_timer(&mut self, now: Instant) {
        let next = self.wheel.next_deadline();
        if next == self.timer_at {
            return;
        }
        self.timer_at = next;
        if let Some(d) = next {
            let after = Duration::from_nanos(d.saturating_sub(super::shape::now_ns(now)));
            if self.timer.arm(after).is_err() {
                // Without the timer, poll every tick rather than miss departures.
                self.busy = true;
            }
        }
    }

    /// The flows whose departures are due, counting how late they are served; the pump
    /// that follows sends them.
    fn expire_timers(&mut self, now: Instant) -> Vec<u32> {
        let mut flows = Vec::new();
        if self.wheel.is_empty() {
            return flows;
        }
        let t = super::shape::now_ns(now);
        let mut due = Vec::new();
        self.wheel.expire(t, &mut due);
        for (stream, deadline) in due {
            let Some(sh) = self
                .flows
                .get_mut(&(stream as u32))
                .and_then(|f| f.ep.shaper.as_mut())
            else {
                continue;
            };
            if sh.armed == Some(deadline) {
                sh.armed = None;
                self.stats.lateness.record(t - deadline);
                flows.push(stream as u32);
            }
        }
        flows
    }

    fn accept(&mut self, t: Token) {
        loop {
            let Some(f) = self.forwards.get(&t) else {
                return;
            };
            match f.listener.accept() {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    let dest = f.dest.clone();
                    if self.link.is_none() && self.retry_at.is_some() {
                        // Fail closed at once: no relay, no connection.
                        self.stats.streams_failed += 1;
                        drop(sock);
                        continue;
                    }
                    self.waiting
                        .push_back(Pending::plain(Sock::Tcp(sock), dest, None));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    qlog!(Error, "accept: {e}");
                    return;
                }
            }
        }
    }

    fn link_event(&mut self, now: Instant, readable: bool) {
        let Some(l) = self.link.as_mut() else {
            return;
        };
        if readable {
            match l.read_in(now, &mut self.buf) {
                Ok(LinkRead::Drained) => {}
                Ok(LinkRead::Eof) => self.link_down(now, "relay closed the connection"),
                Ok(LinkRead::Failed(e)) => self.link_down(now, &e.to_string()),
                Ok(LinkRead::ProxyFailed(e)) => {
                    self.link_down(now, &format!("upstream proxy: {e}"))
                }
                Err(e) => self.link_down(now, &e.to_string()),
            }
        }
    }

    /// Session events, new streams, then the pump of the flows an event touched.
    fn service(&mut self, now: Instant) {
        if !self.handshakes.is_empty() {
            self.handshakes
                .retain(|_, h| now.duration_since(h.started) < SOCKS_HANDSHAKE_TIMEOUT);
        }
        let Some(l) = self.link.as_mut() else {
            return;
        };
        while let Some(ev) = l.session.poll_event() {
            match ev {
                Event::Connected { .. } => {
                    qlog!(Info, "session to {} established", self.cfg.relay);
                    if let Ok(a) = l.sock.local_addr() {
                        self.observer.relay_local(a.ip());
                    }
                    self.stats.sessions += 1;
                    self.backoff = Duration::from_millis(100);
                }
                Event::OpenResult { stream, result } => match result {
                    Ok(()) => {
                        if let Some(f) = self.flows.get_mut(&stream) {
                            f.open = true;
                            self.dirty.insert(stream);
                            self.told_down = false;
                            if f.socks {
                                f.socks = false;
                                socks_reply(&mut f.ep.sock, Ok(()));
                            }
                            if let Some(c) = &f.ep.counters {
                                c.stream.store(stream, std::sync::atomic::Ordering::Relaxed);
                            }
                            if let Some(app) = f.app.take() {
                                // Publish the outcome first: dropping the filler makes the
                                // app's fd writable, and the app then asks SO_ERROR and
                                // getpeername at once.
                                let filler = app.filler;
                                app.finish(Ok(()));
                                f.skip = discard(&mut f.ep.sock, filler, &mut self.buf);
                            }
                            self.stats.streams_ok += 1;
                            qlog!(
                                Debug,
                                "stream {stream} to {} open after {:?}",
                                f.dest,
                                now - f.started
                            );
                        }
                    }
                    Err(e) => {
                        if let Some(mut f) = self.flows.remove(&stream) {
                            qlog!(Info, "relay refused stream to {}: {e}", f.dest);
                            if f.socks {
                                socks_reply(&mut f.ep.sock, Err(e));
                            }
                            if let Some(app) = f.app.take() {
                                app.finish(Err(Failure::Open(e)));
                            }
                            let _ = f.ep.sock.deregister(self.poll.registry());
                            self.by_token.remove(&f.ep.token);
                            self.stats.streams_failed += 1;
                        }
                    }
                },
                Event::Reset { stream, .. } => {
                    if let Some(mut f) = self.flows.remove(&stream) {
                        let _ = f.ep.sock.deregister(self.poll.registry());
                        self.by_token.remove(&f.ep.token);
                    }
                }
                Event::Readable { stream } | Event::Writable { stream } => {
                    self.dirty.insert(stream);
                }
                Event::Opened { .. } => {}
            }
        }
        if l.session.is_established() {
            while let Some(Pending {
                sock,
                dest,
                app,
                socks,
                first,
            }) = self.waiting.pop_front()
            {
                let profile = match &dest {
                    Destination::Addr(a) => {
                        self.cfg.timing.profile_for(Some(a.ip()), None, a.port())
                    }
                    Destination::Name(n, port) => self.cfg.timing.profile_for(None, Some(n), *port),
                };
                let shaper = match Shaper::new(profile, crate::sched::Direction::Up, now) {
                    Ok(s) => s.map(Box::new),
                    Err(e) => {
                        // No randomness for the schedule: fail closed rather than send unshaped.
                        qlog!(Error, "cannot shape a stream to {dest}: {e}");
                        self.stats.streams_failed += 1;
                        if let Some(app) = app {
                            app.finish(Err(Failure::Errno(libc::EIO)));
                        }
                        continue;
                    }
                };
                // The first bytes ride in OPEN unshaped only when the flow is not shaped.
                let (eager, held) = if shaper.is_some() {
                    (&[][..], &first[..])
                } else {
                    (&first[..], &[][..])
                };
                match l.session.open(now, dest.clone(), profile.wire(), eager) {
                    Ok((id, taken)) => {
                        if taken < eager.len() {
                            // Allowed before OPEN_RESULT; small pipelined data always fits.
                            let _ = l.session.write(now, id, &eager[taken..]);
                        }
                        self.next_token += 1;
                        let t = Token(self.next_token);
                        let mut ep = Endpoint::new(sock, t, id);
                        ep.counters = app.as_ref().map(|a| a.counters.clone());
                        ep.shaper = shaper;
                        if let Some(sh) = ep.shaper.as_mut() {
                            if !held.is_empty() {
                                sh.push(now, held);
                            }
                        }
                        if ep.sock.register(self.poll.registry(), t).is_ok() {
                            self.by_token.insert(t, id);
                            self.flows.insert(
                                id,
                                Flow {
                                    ep,
                                    open: false,
                                    started: now,
                                    dest,
                                    app,
                                    socks,
                                    skip: 0,
                                },
                            );
                        } else {
                            let _ = l.session.reset(now, id, 1);
                            if let Some(app) = app {
                                app.finish(Err(Failure::Errno(libc::ENOBUFS)));
                            }
                        }
                    }
                    Err(e) => {
                        qlog!(Warn, "cannot open stream: {e}");
                        self.stats.streams_failed += 1;
                        if let Some(app) = app {
                            app.finish(Err(Failure::Errno(libc::EAGAIN)));
                        }
                    }
                }
            }
        }
        // Before the pump hands received bytes to the app: an app that read them must find
        // them counted.
        self.observer
            .stats(&l.session, &self.stats, &self.closed, self.flows.len());
        // Pump until no stream waits for room; a stream that stopped at the high-water
        // mark gets no new readiness edge once the flush drains, so it must be retried here.
        if self.busy {
            // The last service stopped after MAX_ROUNDS with flows still waiting.
            let stalled = std::mem::take(&mut self.stalled);
            self.dirty.extend(stalled);
        }
        self.busy = false;
        let mut ids: Vec<u32> = self.dirty.drain().collect();
        for round in 0..MAX_ROUNDS {
            let mut finished = vec![];
            let mut again = vec![];
            for &id in &ids {
                let Some(f) = self.flows.get_mut(&id) else {
                    continue;
                };
                if !f.open {
                    continue;
                }
                if f.skip > 0 {
                    f.skip = discard(&mut f.ep.sock, f.skip, &mut self.buf);
                    if f.skip > 0 {
                        continue;
                    }
                }
                if let Some(want) =
                    f.ep.counters
                        .as_ref()
                        .map(|c| c.profile.swap(0, std::sync::atomic::Ordering::Relaxed))
                        .and_then(crate::sched::Profile::from_wire)
                {
                    // qnet_set_profile: the upstream schedule changes from here on.
                    let old = f.ep.shaper.take();
                    match Shaper::switch(old, want, crate::sched::Direction::Up, now) {
                        Ok(sh) => f.ep.shaper = sh,
                        Err(e) => {
                            qlog!(Error, "cannot reshape the stream to {}: {e}", f.dest);
                            let _ = l.session.reset(now, id, 1);
                            finished.push(id);
                            continue;
                        }
                    }
                }
                let room = l.has_room();
                let r =
                    f.ep.pump_down(now, &mut l.session)
                        .and_then(|_| f.ep.pump_up(now, &mut l.session, room, &mut self.buf));
                if let Some(c) = &f.ep.counters {
                    use std::sync::atomic::Ordering::Relaxed;
                    if let Some((o, i)) = l.session.stream_records(id) {
                        c.frames_sent.store(o, Relaxed);
                        c.frames_received.store(i, Relaxed);
                    }
                    if let Some(sh) = &f.ep.shaper {
                        let st = sh.stats();
                        c.padding_bytes.store(st.padding_bytes, Relaxed);
                        c.added_delay_ns.store(st.total_hold_ns, Relaxed);
                    }
                }
                if let Some(sh) = f.ep.shaper.as_mut() {
                    if let Some(d) = sh.next_timer(now, &l.session, id) {
                        if sh.armed.is_none_or(|a| d < a) {
                            self.wheel.insert(d, u64::from(id));
                            sh.armed = Some(d);
                        }
                    }
                }
                if let Err(e) = &r {
                    if super::shape::is_shaping_failure(e) {
                        self.stats.shaping_failures += 1;
                        qlog!(Warn, "shaped stream to {} failed closed: {e}", f.dest);
                    }
                    let _ = l.session.reset(now, id, 1);
                    finished.push(id);
                } else if f.ep.state() == PumpState::Done {
                    finished.push(id);
                } else if f.ep.readable
                    && !f.ep.read_eof
                    && l.session.stream_send_capacity(id) > 0
                    // A full shaper waits for its schedule, not for another round.
                    && f.ep.shaper.as_ref().is_none_or(|sh| sh.room() > 0)
                {
                    again.push(id);
                }
            }
            for id in finished {
                if let Some(mut f) = self.flows.remove(&id) {
                    if let Some(sh) = &f.ep.shaper {
                        self.stats.added_delay_ns += sh.stats().total_hold_ns;
                    }
                    let _ = f.ep.sock.deregister(self.poll.registry());
                    self.by_token.remove(&f.ep.token);
                }
            }
            let flushed = l.flush();
            if let Some(e) = l.session.error() {
                return self.link_down(now, &e.to_string());
            }
            let stalled = !again.is_empty();
            ids = again;
            match flushed {
                Err(e) => return self.link_down(now, &e.to_string()),
                // WouldBlock: the transport's writable edge will call us again.
                Ok(false) => break,
                Ok(true) if !stalled => break,
                Ok(true) => self.busy = round + 1 == MAX_ROUNDS,
            }
        }
        // Whatever still waits for room is retried after the next flush (or at once, busy).
        self.stalled.extend(ids);
        self.observer
            .stats(&l.session, &self.stats, &self.closed, self.flows.len());
    }

    /// Report progress to `observer` from now on; its `internal_fd` hears of the loop's
    /// own fds at once (the poller, the timer, the command wake pipe), so call this after
    /// [`Client::accept_commands`].
    pub fn observe(&mut self, observer: Box<dyn Observer>) {
        observer.internal_fd(self.poll.as_raw_fd());
        observer.internal_fd(self.timer.as_raw_fd());
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
}

/// Read and drop up to `n` bytes that are already queued; returns how many are still due.
fn discard(sock: &mut Sock, mut n: usize, buf: &mut [u8]) -> usize {
    while n > 0 {
        let want = n.min(buf.len());
        match sock.read(&mut buf[..want]) {
            Ok(0) => return 0,
            Ok(k) => n -= k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return n,
        }
    }
    0
}

/// The relay's `host:port` as an address: numeric at once, a name through the next
/// resolver in load order (see `sys::resolve_next`).
fn relay_address(relay: &str) -> io::Result<SocketAddr> {
    if let Ok(a) = relay.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (host, port) = relay
        .rsplit_once(':')
        .ok_or_else(|| io::Error::other("expected host:port"))?;
    let port: u16 = port.parse().map_err(|_| io::Error::other("bad port"))?;
    super::sys::resolve_next(host.trim_start_matches('[').trim_end_matches(']'), port)?
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::other("no address"))
}

/// Answer a SOCKS client's CONNECT (a few bytes on an idle socket: they fit).
fn socks_reply(sock: &mut Sock, result: Result<(), crate::proto::OpenError>) {
    let _ = sock.write_all(&crate::socks::connect_reply(result));
}
