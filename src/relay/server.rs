//! The relay's event loop: accept clients, authenticate, resolve, dial, pump.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::RwLock;

use super::policy::ExitPolicy;
use crate::engine::pump::{Endpoint, PumpState, Sock};
use crate::engine::shape::{Shaper, is_shaping_failure, now_ns};
use crate::engine::wheel::{Lateness, Wheel};
use crate::engine::{Link, LinkRead, READ_CHUNK};
use crate::engine::{TimerFd, lower_timer_slack};
use crate::keys::{PrivateKey, PublicKey, load_allow_list};
use crate::proto::{Destination, Event, OpenError, Role, Session, SessionConfig, SessionError};
use crate::qlog;
use crate::sched::{Direction, Profile};
use crate::socks::{ClientHandshake, ClientProgress, isolation_credentials};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// The timerfd of shaped departures.
const TIMER: Token = Token(2);
const RESOLVER_THREADS: usize = 4;
/// Pump/flush rounds for one connection before other sockets get a turn.
const MAX_ROUNDS: usize = 16;

/// Everything the relay needs to run.
pub struct RelayConfig {
    /// The relay's static private key.
    pub key: PrivateKey,
    /// Admitted client keys (shared so SIGHUP can replace them).
    pub clients: Arc<RwLock<BTreeSet<PublicKey>>>,
    /// Where the allow-list is read from on reload.
    pub clients_path: Option<PathBuf>,
    /// Which destinations may be dialled.
    pub policy: ExitPolicy,
    /// Session limits and timers.
    pub session: SessionConfig,
    /// How long a destination may take to accept a connection (through the upstream
    /// proxy: the TCP connect and its SOCKS reply together).
    pub connect_timeout: Duration,
    /// Exit through this SOCKS5 proxy instead of dialling destinations directly.
    pub upstream: Option<ExitProxy>,
    /// The downstream timing profile for streams whose OPEN asks for none (0) or for one
    /// outside `allow_profiles`.
    pub profile: Profile,
    /// Profiles clients may ask for (empty: all).
    pub allow_profiles: Vec<Profile>,
}

/// A SOCKS5 proxy the relay exits through (Tor's SocksPort, a corporate proxy).
pub struct ExitProxy {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    /// RFC 1929 credentials to present, unless `isolate` makes fresh ones.
    pub credentials: Option<(Vec<u8>, Vec<u8>)>,
    /// Fresh credentials per client session: Tor's IsolateSOCKSAuth then keeps each
    /// client's streams on circuits of their own.
    pub isolate: bool,
}

enum UpState {
    Resolving,
    Connecting {
        rest: Vec<SocketAddr>,
        deadline: Instant,
    },
    /// Connected to the exit proxy; its SOCKS5 CONNECT is under way.
    Proxying {
        hs: ClientHandshake,
        out: Vec<u8>,
        deadline: Instant,
    },
    Connected,
}

struct Upstream {
    state: UpState,
    ep: Option<Endpoint>,
    /// The downstream scheduler, handed to the endpoint once it connects.
    shaper: Option<Box<Shaper>>,
    /// With an exit proxy: the destination to ask it for once the TCP connect is up.
    via_proxy: Option<Destination>,
}

struct Conn {
    link: Link,
    ups: HashMap<u32, Upstream>,
    /// Streams an event touched since the last pump: only these are pumped, so an
    /// event costs O(1) streams, not O(all).
    dirty: HashSet<u32>,
    /// Streams that stopped reading because the session's output was over the high-water mark.
    stalled: HashSet<u32>,
    /// Failed handshake: read and discard until this time, then close without a byte.
    drain_until: Option<Instant>,
    /// The credentials this session's streams present to the exit proxy.
    proxy_creds: Option<(Vec<u8>, Vec<u8>)>,
}

enum Owner {
    Conn,
    Up(Token, u32),
}

struct Resolved {
    conn: Token,
    stream: u32,
    port: u16,
    addrs: io::Result<Vec<SocketAddr>>,
}

/// A bound relay, ready to run.
pub struct Relay {
    poll: Poll,
    listener: TcpListener,
    cfg: RelayConfig,
    conns: HashMap<Token, Conn>,
    owners: HashMap<Token, Owner>,
    next_token: usize,
    deadlines: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    resolve_tx: crossbeam::channel::Sender<(Token, u32, String, u16)>,
    resolved_rx: crossbeam::channel::Receiver<Resolved>,
    buf: Vec<u8>,
    /// Connections with work left after their last round: poll without sleeping.
    busy: HashSet<Token>,
    /// Shaped streams' next departures, keyed `connection token << 32 | stream`.
    wheel: Wheel,
    timer: TimerFd,
    timer_at: Option<u64>,
    /// How late shaped departures were served.
    pub lateness: Lateness,
    /// Shaped streams the timing verifier (or the session) stopped.
    pub shaping_failures: u64,
}

fn open_error(e: &io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => OpenError::Refused,
        Some(libc::ETIMEDOUT) => OpenError::TimedOut,
        Some(libc::ENETUNREACH) => OpenError::NetUnreachable,
        Some(libc::EHOSTUNREACH) => OpenError::HostUnreachable,
        Some(libc::EACCES) | Some(libc::EPERM) => OpenError::Forbidden,
        _ => OpenError::Failure,
    }
}

impl Relay {
    /// Bind the listening socket and start the resolver threads.
    pub fn bind(addr: SocketAddr, cfg: RelayConfig) -> io::Result<Relay> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(addr)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let timer = TimerFd::new()?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&timer)),
            TIMER,
            Interest::READABLE,
        )?;
        let (resolve_tx, resolve_rx) = crossbeam::channel::unbounded::<(Token, u32, String, u16)>();
        let (resolved_tx, resolved_rx) = crossbeam::channel::unbounded();
        // getaddrinfo blocks; a few threads keep slow names from stalling the event loop.
        for i in 0..RESOLVER_THREADS {
            let rx = resolve_rx.clone();
            let tx = resolved_tx.clone();
            let waker = waker.clone();
            std::thread::Builder::new()
                .name(format!("qnet-resolve-{i}"))
                .spawn(move || {
                    for (conn, stream, host, port) in rx {
                        let addrs = (host.as_str(), port).to_socket_addrs().map(|a| a.collect());
                        if tx
                            .send(Resolved {
                                conn,
                                stream,
                                port,
                                addrs,
                            })
                            .is_err()
                        {
                            break;
                        }
                        let _ = waker.wake();
                    }
                })?;
        }
        Ok(Relay {
            poll,
            listener,
            cfg,
            conns: HashMap::new(),
            owners: HashMap::new(),
            next_token: 3,
            deadlines: BinaryHeap::new(),
            resolve_tx,
            resolved_rx,
            buf: vec![0u8; READ_CHUNK],
            busy: HashSet::new(),
            wheel: Wheel::new(),
            timer,
            timer_at: None,
            lateness: Lateness::default(),
            shaping_failures: 0,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    /// Serve until `stop` is set; `reload` set by SIGHUP re-reads the allow-list.
    pub fn run(&mut self, stop: &AtomicBool, reload: &AtomicBool) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        lower_timer_slack();
        while !stop.load(Ordering::Relaxed) {
            self.purge_stale_deadlines();
            self.arm_timer();
            let timeout = self
                .next_deadline()
                .map(|t| t.saturating_duration_since(Instant::now()));
            // Wake at least once a second so stop/reload flags are seen even without EINTR.
            let timeout = Some(
                timeout
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(1)),
            );
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if reload.swap(false, Ordering::Relaxed) {
                self.reload_clients();
            }
            let now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(now)?,
                    WAKER => {}
                    TIMER => {
                        self.timer.clear();
                        self.timer_at = None;
                    }
                    t => self.socket_event(
                        now,
                        t,
                        ev.is_readable() || ev.is_read_closed(),
                        ev.is_writable() || ev.is_error(),
                    ),
                }
            }
            for c in std::mem::take(&mut self.busy) {
                if let Some(conn) = self.conns.get_mut(&c) {
                    let stalled = std::mem::take(&mut conn.stalled);
                    conn.dirty.extend(stalled);
                    self.service(now, c);
                }
            }
            while let Ok(r) = self.resolved_rx.try_recv() {
                self.on_resolved(now, r);
            }
            self.run_timers(Instant::now());
            self.expire_shaped(Instant::now());
        }
        Ok(())
    }

    /// Point the timerfd at the wheel's earliest deadline.
    fn arm_timer(&mut self) {
        let next = self.wheel.next_deadline();
        if next == self.timer_at {
            return;
        }
        self.timer_at = next;
        if let Some(d) = next {
            let after = Duration::from_nanos(d.saturating_sub(now_ns(Instant::now())));
            // Should arming fail, the 1 s poll cap still serves the departures, late.
            let _ = self.timer.arm(after);
        }
    }

    /// Serve the shaped streams whose departures are due.
    fn expire_shaped(&mut self, now: Instant) {
        if self.wheel.is_empty() {
            return;
        }
        let t = now_ns(now);
        let mut due = Vec::new();
        self.wheel.expire(t, &mut due);
        let mut touched = HashSet::new();
        for (key, deadline) in due {
            let (c, s) = (Token((key >> 32) as usize), key as u32);
            let Some(conn) = self.conns.get_mut(&c) else {
                continue;
            };
            let Some(sh) = conn
                .ups
                .get_mut(&s)
                .and_then(|u| u.ep.as_mut())
                .and_then(|ep| ep.shaper.as_mut())
            else {
                continue;
            };
            if sh.armed == Some(deadline) {
                sh.armed = None;
                self.lateness.record(t - deadline);
                conn.dirty.insert(s);
                touched.insert(c);
            }
        }
        for c in touched {
            self.service(now, c);
        }
    }

    fn reload_clients(&mut self) {
        let Some(path) = &self.cfg.clients_path else {
            return;
        };
        match load_allow_list(path) {
            Ok(set) => {
                qlog!(
                    Info,
                    "reloaded {} client keys from {}",
                    set.len(),
                    path.display()
                );
                *self.cfg.clients.write() = set;
            }
            Err(e) => qlog!(Error, "allow-list not reloaded, keeping the old one: {e}"),
        }
    }

    fn accept(&mut self, now: Instant) -> io::Result<()> {
        loop {
            let (mut sock, peer) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and keep serving the connections we have.
                    qlog!(Error, "accept failed: {e}");
                    return Ok(());
                }
            };
            let _ = sock.set_nodelay(true);
            let t = self.token();
            self.poll
                .registry()
                .register(&mut sock, t, Interest::READABLE | Interest::WRITABLE)?;
            let clients = self.cfg.clients.clone();
            let authorize: crate::proto::session::Authorizer =
                Arc::new(move |k: &[u8; 32]| clients.read().contains(&PublicKey(*k)));
            let session = Session::new(
                now,
                self.cfg.session.clone(),
                Role::Server { authorize },
                self.cfg.key.as_bytes(),
                Box::new(crate::entropy::RingRandom),
            );
            qlog!(Debug, "connection from {peer}");
            let proxy_creds = self.cfg.upstream.as_ref().and_then(|u| {
                if u.isolate {
                    Some(isolation_credentials())
                } else {
                    u.credentials.clone()
                }
            });
            self.owners.insert(t, Owner::Conn);
            self.conns.insert(
                t,
                Conn {
                    link: Link::new(sock, t, session),
                    ups: HashMap::new(),
                    dirty: HashSet::new(),
                    stalled: HashSet::new(),
                    drain_until: None,
                    proxy_creds,
                },
            );
        }
    }

    fn socket_event(&mut self, now: Instant, t: Token, readable: bool, writable: bool) {
        match self.owners.get(&t) {
            Some(Owner::Conn) => self.conn_event(now, t, readable),
            Some(Owner::Up(c, s)) => {
                let (c, s) = (*c, *s);
                self.up_event(now, c, s, readable, writable);
                self.service(now, c);
            }
            None => {}
        }
    }

    fn conn_event(&mut self, now: Instant, t: Token, readable: bool) {
        let Some(conn) = self.conns.get_mut(&t) else {
            return;
        };
        if readable {
            if conn.drain_until.is_some() {
                // Discard everything a failed peer sends; answer nothing.
                loop {
                    match conn.link.sock.read(&mut self.buf) {
                        Ok(0) => return self.drop_conn(t),
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => return self.drop_conn(t),
                    }
                }
            }
            match conn.link.read_in(now, &mut self.buf) {
                Ok(LinkRead::Drained) => {}
                // The relay's own socket never goes through a proxy, so ProxyFailed cannot occur.
                Ok(LinkRead::Eof) | Ok(LinkRead::ProxyFailed(_)) | Err(_) => {
                    // Deliver what was decoded before the close, then let the streams finish.
                    self.service(now, t);
                    return self.drop_conn(t);
                }
                Ok(LinkRead::Failed(e)) => return self.session_failed(now, t, e),
            }
        }
        self.service(now, t);
    }

    fn session_failed(&mut self, now: Instant, t: Token, e: SessionError) {
        let Some(conn) = self.conns.get_mut(&t) else {
            return;
        };
        if e == SessionError::Handshake && !conn.link.session.is_established() {
            // A prober learns nothing from timing either: close after a random 2-10 s.
            let mut r = [0u8; 2];
            conn.link.session.random(&mut r);
            let ms = 2000 + (u16::from_le_bytes(r) as u64 % 8000);
            conn.drain_until = Some(now + Duration::from_millis(ms));
            qlog!(Info, "handshake failed; draining connection");
            return;
        }
        qlog!(Info, "session ended: {e}");
        self.drop_conn(t);
    }

    fn drop_conn(&mut self, t: Token) {
        if let Some(mut conn) = self.conns.remove(&t) {
            let _ = self.poll.registry().deregister(&mut conn.link.sock);
            self.owners.remove(&t);
            for (_, up) in conn.ups.drain() {
                if let Some(mut ep) = up.ep {
                    let _ = ep.sock.deregister(self.poll.registry());
                    self.owners.remove(&ep.token);
                }
            }
        }
    }

    fn drop_up(&mut self, c: Token, s: u32) {
        if let Some(conn) = self.conns.get_mut(&c) {
            if let Some(up) = conn.ups.remove(&s) {
                if let Some(mut ep) = up.ep {
                    let _ = ep.sock.deregister(self.poll.registry());
                    self.owners.remove(&ep.token);
                }
            }
        }
    }

    fn up_event(&mut self, now: Instant, c: Token, s: u32, readable: bool, writable: bool) {
        let Some(conn) = self.conns.get_mut(&c) else {
            return;
        };
        let Some(up) = conn.ups.get_mut(&s) else {
            return;
        };
        let Some(ep) = up.ep.as_mut() else {
            return;
        };
        ep.readable |= readable;
        ep.writable |= writable;
        conn.dirty.insert(s);
        if let UpState::Connecting { .. } = up.state {
            if !writable {
                return;
            }
            let outcome = match ep.sock.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => match &ep.sock {
                    Sock::Tcp(t) => t.peer_addr().map(|_| ()),
                    Sock::Unix(_) => Ok(()),
                },
            };
            match outcome {
                Ok(()) => match up.via_proxy.take() {
                    Some(target) => {
                        let UpState::Connecting { deadline, .. } = up.state else {
                            unreachable!("checked above")
                        };
                        let (hs, out) = ClientHandshake::start(target, conn.proxy_creds.clone());
                        up.state = UpState::Proxying { hs, out, deadline };
                    }
                    None => {
                        up.state = UpState::Connected;
                        ep.shaper = up.shaper.take();
                        conn.dirty.insert(s);
                        let _ = conn.link.session.open_result(now, s, Ok(()));
                        return;
                    }
                },
                Err(e) if e.kind() == ErrorKind::NotConnected => {
                    ep.writable = false;
                    return;
                }
                Err(e) => return self.connect_next(now, c, s, Some(open_error(&e))),
            }
        }
        if let UpState::Proxying { .. } = up.state {
            self.drive_proxy(now, c, s);
        }
    }

    /// Move the exit proxy's SOCKS5 handshake along. Reads take no more than the
    /// handshake wants, so the destination's first bytes stay in the socket for the pump.
    fn drive_proxy(&mut self, now: Instant, c: Token, s: u32) {
        let Some(conn) = self.conns.get_mut(&c) else {
            return;
        };
        let Some(Upstream {
            state: UpState::Proxying { hs, out, .. },
            ep: Some(ep),
            ..
        }) = conn.ups.get_mut(&s)
        else {
            return;
        };
        let failure = 'io: loop {
            while !out.is_empty() && ep.writable {
                match ep.sock.write(out) {
                    Ok(n) => {
                        out.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => ep.writable = false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => break 'io Some(open_error(&e)),
                }
            }
            if !ep.readable {
                return;
            }
            let want = hs.wanted();
            match ep.sock.read(&mut self.buf[..want]) {
                Ok(0) => break Some(OpenError::Failure),
                Ok(n) => match hs.feed(&self.buf[..n]) {
                    Ok(ClientProgress::More(more)) => out.extend(more),
                    Ok(ClientProgress::Done { .. }) => break None,
                    Err(e) => {
                        qlog!(Info, "exit proxy: {e}");
                        break Some(e.open_error());
                    }
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => ep.readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Some(open_error(&e)),
            }
        };
        match failure {
            None => {
                if let Some(up) = conn.ups.get_mut(&s) {
                    up.state = UpState::Connected;
                    if let Some(ep) = up.ep.as_mut() {
                        ep.shaper = up.shaper.take();
                    }
                }
                conn.dirty.insert(s);
                let _ = conn.link.session.open_result(now, s, Ok(()));
            }
            Some(e) => self.start_connect(now, c, s, Vec::new(), e),
        }
    }

    /// Try the next resolved address, or report `last` if none is left.
    fn connect_next(&mut self, now: Instant, c: Token, s: u32, last: Option<OpenError>) {
        let rest = match self.conns.get_mut(&c).and_then(|conn| conn.ups.get_mut(&s)) {
            Some(Upstream {
                state: UpState::Connecting { rest, .. },
                ..
            }) => std::mem::take(rest),
            _ => Vec::new(),
        };
        self.start_connect(now, c, s, rest, last.unwrap_or(OpenError::Failure));
    }

    fn start_connect(
        &mut self,
        now: Instant,
        c: Token,
        s: u32,
        mut addrs: Vec<SocketAddr>,
        mut last: OpenError,
    ) {
        // Drop any previous attempt's socket first.
        if let Some(ep) = self
            .conns
            .get_mut(&c)
            .and_then(|conn| conn.ups.get_mut(&s))
            .and_then(|u| u.ep.take())
        {
            let mut ep = ep;
            let _ = ep.sock.deregister(self.poll.registry());
            self.owners.remove(&ep.token);
        }
        while !addrs.is_empty() {
            let addr = addrs.remove(0);
            match TcpStream::connect(addr) {
                Ok(sock) => {
                    let _ = sock.set_nodelay(true);
                    let t = self.token();
                    let mut ep = Endpoint::new(Sock::Tcp(sock), t, s);
                    if ep.sock.register(self.poll.registry(), t).is_err() {
                        continue;
                    }
                    let deadline = now + self.cfg.connect_timeout;
                    self.owners.insert(t, Owner::Up(c, s));
                    self.deadlines.push(Reverse((deadline, c.0, s)));
                    if let Some(up) = self.conns.get_mut(&c).and_then(|conn| conn.ups.get_mut(&s)) {
                        up.ep = Some(ep);
                        up.state = UpState::Connecting {
                            rest: addrs,
                            deadline,
                        };
                    }
                    return;
                }
                Err(e) => last = open_error(&e),
            }
        }
        if let Some(conn) = self.conns.get_mut(&c) {
            let _ = conn.link.session.open_result(now, s, Err(last));
            conn.ups.remove(&s);
        }
    }

    fn on_open(&mut self, now: Instant, c: Token, s: u32, dest: Destination, asked: u8) {
        // The client's wish for the downstream, within what this relay allows.
        let profile = Profile::from_wire(asked)
            .filter(|p| self.cfg.allow_profiles.is_empty() || self.cfg.allow_profiles.contains(p))
            .unwrap_or(self.cfg.profile);
        let shaper = match Shaper::new(profile, Direction::Down, now) {
            Ok(sh) => sh.map(Box::new),
            Err(e) => {
                qlog!(Error, "cannot shape stream {s}: {e}");
                if let Some(conn) = self.conns.get_mut(&c) {
                    let _ = conn
                        .link
                        .session
                        .open_result(now, s, Err(OpenError::Failure));
                }
                return;
            }
        };
        let Some(conn) = self.conns.get_mut(&c) else {
            return;
        };
        conn.ups.insert(
            s,
            Upstream {
                state: UpState::Resolving,
                ep: None,
                shaper,
                via_proxy: None,
            },
        );
        let proxy = self.cfg.upstream.as_ref().map(|u| u.addr);
        // Literal addresses are checked against the exit policy here. A name is checked
        // after it resolves; a name sent to an exit proxy unresolved (no DNS query leaves
        // here: Tor resolves at its exit) can be checked only by port, and the proxy's
        // own policy decides the rest.
        let allowed = match (&dest, proxy) {
            (Destination::Addr(a), _) => self.cfg.policy.allows(a.ip(), a.port()),
            (Destination::Name(_, port), Some(_)) => self.cfg.policy.allows_port(*port),
            (Destination::Name(..), None) => true,
        };
        if !allowed {
            qlog!(Info, "exit policy refuses {dest}");
            let _ = conn
                .link
                .session
                .open_result(now, s, Err(OpenError::Forbidden));
            conn.ups.remove(&s);
            return;
        }
        match (dest, proxy) {
            (dest, Some(proxy)) => {
                if let Some(up) = conn.ups.get_mut(&s) {
                    up.via_proxy = Some(dest);
                }
                self.start_connect(now, c, s, vec![proxy], OpenError::Failure);
            }
            (Destination::Addr(a), None) => {
                self.start_connect(now, c, s, vec![a], OpenError::Failure);
            }
            (Destination::Name(host, port), None) => {
                let _ = self.resolve_tx.send((c, s, host, port));
            }
        }
    }

    fn on_resolved(&mut self, now: Instant, r: Resolved) {
        let Some(conn) = self.conns.get_mut(&r.conn) else {
            return;
        };
        if !conn.ups.contains_key(&r.stream) {
            return;
        }
        let (allowed, failure) = match r.addrs {
            Ok(addrs) if addrs.is_empty() => (vec![], OpenError::NameNotFound),
            Ok(addrs) => {
                let allowed: Vec<_> = addrs
                    .into_iter()
                    .filter(|a| self.cfg.policy.allows(a.ip(), r.port))
                    .collect();
                (allowed, OpenError::Forbidden)
            }
            Err(_) => (vec![], OpenError::NameNotFound),
        };
        if allowed.is_empty() {
            let _ = conn.link.session.open_result(now, r.stream, Err(failure));
            conn.ups.remove(&r.stream);
        } else {
            self.start_connect(now, r.conn, r.stream, allowed, OpenError::Failure);
        }
        self.service(now, r.conn);
    }

    /// Handle session events, move stream bytes, flush: everything after input on `c`.
    fn service(&mut self, now: Instant, c: Token) {
        loop {
            let Some(conn) = self.conns.get_mut(&c) else {
                return;
            };
            let Some(ev) = conn.link.session.poll_event() else {
                break;
            };
            match ev {
                Event::Connected { peer } => {
                    qlog!(Info, "client {} authenticated", PublicKey(peer).to_base64());
                }
                Event::Opened {
                    stream,
                    dest,
                    profile,
                } => {
                    qlog!(Debug, "stream {stream} to {dest}");
                    self.on_open(now, c, stream, dest, profile);
                }
                Event::Reset { stream, .. } => self.drop_up(c, stream),
                Event::Readable { stream } | Event::Writable { stream } => {
                    conn.dirty.insert(stream);
                }
                Event::OpenResult { .. } => {}
            }
        }
        // Pump and flush until no stream waits for room: a stream that stopped at the
        // high-water mark gets no new readiness edge once the flush drains.
        for round in 0..MAX_ROUNDS {
            self.pump_dirty(now, c);
            let Some(conn) = self.conns.get_mut(&c) else {
                return;
            };
            if conn.drain_until.is_some() {
                return;
            }
            let flushed = match conn.link.flush() {
                Ok(f) => f,
                Err(_) => return self.drop_conn(c),
            };
            if !flushed || conn.stalled.is_empty() || !conn.link.has_room() {
                break;
            }
            let stalled = std::mem::take(&mut conn.stalled);
            conn.dirty.extend(stalled);
            if round + 1 == MAX_ROUNDS {
                self.busy.insert(c);
            }
        }
        let Some(conn) = self.conns.get_mut(&c) else {
            return;
        };
        if let Some(e) = conn.link.session.error() {
            return self.session_failed(now, c, e);
        }
        if conn.link.eof && conn.link.session.transmit().is_empty() {
            self.drop_conn(c);
        }
    }

    fn pump_dirty(&mut self, now: Instant, c: Token) {
        let Some(conn) = self.conns.get_mut(&c) else {
            return;
        };
        if !conn.link.session.is_established() {
            return;
        }
        let mut dead = vec![];
        let mut done = vec![];
        for s in std::mem::take(&mut conn.dirty) {
            let Some(up) = conn.ups.get_mut(&s) else {
                continue;
            };
            let (UpState::Connected, Some(ep)) = (&up.state, up.ep.as_mut()) else {
                continue;
            };
            let room = conn.link.has_room();
            let r = ep
                .pump_down(now, &mut conn.link.session)
                .and_then(|_| ep.pump_up(now, &mut conn.link.session, room, &mut self.buf));
            if let Some(sh) = ep.shaper.as_mut() {
                if let Some(d) = sh.next_timer(now, &conn.link.session, s) {
                    if sh.armed.is_none_or(|a| d < a) {
                        self.wheel.insert(d, (c.0 as u64) << 32 | u64::from(s));
                        sh.armed = Some(d);
                    }
                }
                if let Some(e) = r.as_ref().err().filter(|e| is_shaping_failure(e)) {
                    self.shaping_failures += 1;
                    qlog!(Warn, "shaped stream {s} failed closed: {e}");
                }
            }
            if r.is_err() {
                dead.push(s);
            } else if ep.state() == PumpState::Done {
                done.push(s);
            } else if ep.readable && !ep.read_eof && !conn.link.has_room() {
                conn.stalled.insert(s);
            }
        }
        for s in dead {
            if let Some(conn) = self.conns.get_mut(&c) {
                let _ = conn.link.session.reset(now, s, 1);
            }
            self.drop_up(c, s);
        }
        for s in done {
            self.drop_up(c, s);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let sessions = self
            .conns
            .values()
            .filter_map(|c| c.drain_until.or_else(|| c.link.session.next_timeout()));
        let connects = self.deadlines.peek().map(|Reverse((t, _, _))| *t);
        sessions.chain(connects).min()
    }

    /// Whether a connect deadline still guards a dial (or its proxy handshake) in progress.
    fn deadline_live(&self, t: Instant, c: Token, s: u32) -> bool {
        matches!(
            self.conns.get(&c).and_then(|conn| conn.ups.get(&s)),
            Some(Upstream {
                state: UpState::Connecting { deadline, .. } | UpState::Proxying { deadline, .. },
                ..
            }) if *deadline == t
        )
    }

    /// Drop deadlines of dials that finished: otherwise every stream would wake the loop
    /// once more, `connect_timeout` after it opened.
    fn purge_stale_deadlines(&mut self) {
        while let Some(Reverse((t, c, s))) = self.deadlines.peek().copied() {
            if self.deadline_live(t, Token(c), s) {
                break;
            }
            self.deadlines.pop();
        }
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, c, s))) = self.deadlines.peek().copied() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            let c = Token(c);
            if self.deadline_live(t, c, s) {
                self.connect_next(now, c, s, Some(OpenError::TimedOut));
                self.service(now, c);
            }
        }
        let due: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.drain_until
                    .or_else(|| c.link.session.next_timeout())
                    .is_some_and(|t| t <= now)
            })
            .map(|(t, _)| *t)
            .collect();
        for t in due {
            let Some(conn) = self.conns.get_mut(&t) else {
                continue;
            };
            if conn.drain_until.is_some() {
                self.drop_conn(t);
                continue;
            }
            match conn.link.session.handle_timeout(now) {
                Ok(()) => self.service(now, t),
                Err(e) => self.session_failed(now, t, e),
            }
        }
    }
}
