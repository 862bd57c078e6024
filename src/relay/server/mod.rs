//! The relay's event loop: accept clients, authenticate, resolve, dial, pump.
//!
//! [`Relay`] (in `pool`) runs one event loop per thread, each with a listener of its
//! own on the same port; [`Loop::run`] polls and dispatches; `service` does everything
//! after input on one connection. The files: `pool` (the loops and what they share),
//! `conn` (a client's connection), `dial` (a stream's destination, the exit policy and
//! the exit proxy), `names` (the resolver threads), `limits` (the admission gate),
//! `quota` (each key's use across the loops), `deadlines` (the timer heap).

mod conn;
mod deadlines;
mod dial;
mod limits;
mod names;
mod pool;
mod quota;
mod trim;

pub use pool::Relay;

use std::collections::{HashMap, HashSet};
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use super::extend::ExtendPolicy;
use super::policy::ExitPolicy;
use crate::config::ServerLimits;
use crate::engine::pump::PumpState;
use crate::engine::timers::{MAX_ROUNDS, ShapedTimers, pump_failed};
use crate::engine::wheel::Lateness;
use crate::engine::{READ_CHUNK, lower_timer_slack};
use crate::keys::{PrivateKey, PublicKey};
use crate::proto::admit::SharedAdmission;
use crate::proto::{Event, OpenError, SessionConfig};
use crate::qlog;
use crate::relay::metrics::{Handshake, Limit, LoopGauges, LoopMetrics};
use crate::sched::Profile;
use conn::{Conn, Sink};
use crossbeam::utils::CachePadded;
use deadlines::{Deadlines, Due};
use dial::UpState;
use names::{Answers, Query, Resolved};
use pool::Shared;

const LISTENER: Token = Token(0);
pub(super) const WAKER: Token = Token(1);
/// The timerfd of shaped departures.
const TIMER: Token = Token(2);
/// How often the host's own addresses are re-read for the exit policy (SIGHUP also
/// re-reads them): one `getifaddrs` netlink dump, so a new address is refused within
/// seconds at no measurable cost.
const OWN_ADDRS_EVERY: Duration = Duration::from_secs(5);
/// How often a loop copies its gauges and shaping histogram for `/metrics`.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Everything the relay needs to run.
#[derive(Clone)]
pub struct RelayConfig {
    /// The relay's static private key.
    pub key: PrivateKey,
    /// Admitted client keys with their admission keys (shared so SIGHUP can replace them).
    pub clients: SharedAdmission,
    /// Where the allow-list is read from on reload.
    pub clients_path: Option<PathBuf>,
    /// Which destinations may be dialled.
    pub policy: ExitPolicy,
    /// The relays client sessions may be extended to (multi-hop routes).
    pub extend: ExtendPolicy,
    /// Whether this relay takes part in routes: each connection may start with an
    /// extend preamble (one X25519 more per connection to find out).
    pub routes: bool,
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
    /// How far a client's msg1 timestamp may be from the relay's clock.
    pub clock_skew: Duration,
    /// Most first messages remembered against replay (when full, new ones are refused).
    pub replay_capacity: usize,
    /// Earliest close of a connection that has not authenticated.
    pub drain_min: Duration,
    /// Latest close of a connection that has not authenticated (drawn uniformly at accept).
    pub drain_max: Duration,
    /// Event loops, one thread each (0: one per core).
    pub threads: usize,
}

/// A SOCKS5 proxy the relay exits through (Tor's SocksPort, a corporate proxy).
#[derive(Clone)]
pub struct ExitProxy {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    /// RFC 1929 credentials to present, unless `isolate` makes fresh ones.
    pub credentials: Option<(Vec<u8>, Vec<u8>)>,
    /// Fresh credentials per client session: Tor's IsolateSOCKSAuth then keeps each
    /// client's streams on circuits of their own.
    pub isolate: bool,
    /// The proxy is Tor and this watches its control port (`[tor]`): nothing is dialled
    /// through it before Tor has bootstrapped.
    pub tor: Option<Arc<crate::tor::TorWatch>>,
}

/// What a registered socket belongs to.
enum Owner {
    /// A client's connection.
    Conn,
    /// A connection over a handshake rate, drained without a session.
    Sink,
    /// Stream `.1`'s destination on connection `.0`.
    Up(Token, u32),
}

/// A shaped stream's key on the timing wheel: connection token and stream id.
fn shaped_key(c: Token, s: u32) -> u64 {
    (c.0 as u64) << 32 | u64::from(s)
}

/// The connection and stream a [`shaped_key`] names.
fn shaped_flow(key: u64) -> (Token, u32) {
    (Token((key >> 32) as usize), key as u32)
}

/// One event loop: its listener, its connections and their timers. Sessions stay on
/// the loop that accepted them.
pub(super) struct Loop {
    poll: Poll,
    listener: TcpListener,
    cfg: RelayConfig,
    /// The `[server]` caps (a copy of the shared gate's).
    limits: ServerLimits,
    /// What every loop shares: the gate, the replay cache, each key's counts, reloads.
    shared: Arc<Shared>,
    /// The allow-list generation this loop last applied (see [`Shared::reloaded`]).
    reload_seen: u64,
    conns: HashMap<Token, Conn>,
    owners: HashMap<Token, Owner>,
    next_token: usize,
    /// Every timer of the loop but shaped departures: connections' and dials'.
    deadlines: Deadlines,
    /// The resolver threads (shared by the loops) and this loop's answers from them.
    resolve_tx: crossbeam::channel::Sender<Query>,
    answers: Arc<Answers>,
    resolved_rx: crossbeam::channel::Receiver<Resolved>,
    buf: Vec<u8>,
    /// Connections with work left after their last round: poll without sleeping.
    busy: HashSet<Token>,
    /// Shaped streams' next departures, keyed by [`shaped_key`].
    timers: ShapedTimers,
    /// How late shaped departures were served.
    lateness: Lateness,
    /// Shaped streams the timing verifier (or the session) stopped.
    shaping_failures: u64,
    /// When the host's own addresses were last read into the exit policy.
    own_addrs_read: Instant,
    /// Refusals for a full replay cache already reported (reports double each time).
    full_reported: u64,
    /// Connections the gate sank: read and discarded until their close time.
    sinks: HashMap<Token, Sink>,
    /// Connections that stopped being read at the output high-water mark and have
    /// drained below it since: read them again this round.
    resume: HashSet<Token>,
    /// This loop's counters for `/metrics`.
    m: Arc<CachePadded<LoopMetrics>>,
    /// When the gauges were last copied into `m`.
    published: Instant,
}

impl Loop {
    /// A loop over `listener`, polled by `poll` (whose waker is `waker`), asking names
    /// of the resolver threads behind `resolve_tx`.
    fn new(
        poll: Poll,
        mut listener: TcpListener,
        waker: Arc<Waker>,
        resolve_tx: crossbeam::channel::Sender<Query>,
        cfg: RelayConfig,
        shared: Arc<Shared>,
        m: Arc<CachePadded<LoopMetrics>>,
    ) -> io::Result<Loop> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let timers = ShapedTimers::new(poll.registry(), TIMER)?;
        let (answers, resolved_rx) = Answers::new(waker);
        Ok(Loop {
            poll,
            listener,
            cfg,
            limits: shared.limits(),
            reload_seen: shared.generation(),
            shared,
            conns: HashMap::new(),
            owners: HashMap::new(),
            next_token: 3,
            deadlines: Deadlines::default(),
            resolve_tx,
            answers,
            resolved_rx,
            buf: vec![0u8; READ_CHUNK],
            busy: HashSet::new(),
            timers,
            lateness: Lateness::default(),
            shaping_failures: 0,
            own_addrs_read: Instant::now(),
            full_reported: 0,
            sinks: HashMap::new(),
            resume: HashSet::new(),
            m,
            published: Instant::now(),
        })
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    /// Serve until `stop` is set. `reload`, set by SIGHUP, is given to one loop: it
    /// re-reads the allow-list for all of them (see [`Shared::reload`]).
    fn run(&mut self, stop: &AtomicBool, reload: Option<&AtomicBool>) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        lower_timer_slack();
        while !stop.load(Ordering::Relaxed) && !self.shared.halted() {
            self.purge_stale_deadlines();
            let departure_due = self.arm_timer(Instant::now());
            let timeout = if departure_due {
                Some(Duration::ZERO)
            } else {
                self.next_deadline()
                    .map(|t| t.saturating_duration_since(Instant::now()))
            };
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
            let now = Instant::now();
            if reload.is_some_and(|r| r.swap(false, Ordering::Relaxed)) {
                if let Some(path) = &self.cfg.clients_path {
                    self.shared.reload(path, &self.cfg.clients, &self.cfg.key);
                }
            }
            if self.shared.generation() != self.reload_seen {
                self.reload_seen = self.shared.generation();
                self.end_removed_keys();
                self.refresh_own_addrs(now);
            } else if now >= self.own_addrs_read + OWN_ADDRS_EVERY {
                self.refresh_own_addrs(now);
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(now),
                    WAKER => {}
                    TIMER => self.timers.fired(),
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
            for c in std::mem::take(&mut self.resume) {
                self.conn_event(now, c, true);
            }
            while let Ok(r) = self.resolved_rx.try_recv() {
                self.on_resolved(now, r);
            }
            self.run_timers(Instant::now());
            self.expire_shaped(Instant::now());
            self.give_back_memory();
            if now >= self.published + PUBLISH_EVERY {
                self.publish(now);
            }
        }
        Ok(())
    }

    /// Copy the gauges `/metrics` shows into this loop's metrics: one pass over the
    /// connections and their streams, once a second.
    fn publish(&mut self, now: Instant) {
        self.published = now;
        let mut g = LoopGauges {
            connections: (self.conns.len() + self.sinks.len()) as u64,
            ..LoopGauges::default()
        };
        for conn in self.conns.values() {
            g.sessions += u64::from(conn.key.is_some());
            g.streams += conn.ups.len() as u64;
            g.output_bytes += conn.link.session.transmit().len() as u64;
            g.reads_paused += u64::from(conn.read_paused);
            for up in conn.ups.values() {
                match up.state {
                    UpState::Resolving => g.lookups += 1,
                    UpState::Connecting { .. } | UpState::Proxying { .. } => g.dials += 1,
                    UpState::Connected => {}
                }
            }
        }
        self.m.publish(g, &self.lateness, self.shaping_failures);
        self.shared
            .metrics
            .set_lookups_queued(self.resolve_tx.len());
    }

    /// Point the shaped-departure timer at the earliest one; true when one is due
    /// already (poll without sleeping). If it cannot be armed, the streams waiting on it
    /// fail closed (see `engine::timers`).
    fn arm_timer(&mut self, now: Instant) -> bool {
        let stranded = match self.timers.arm(now) {
            Ok(due) => return due,
            Err(stranded) => stranded,
        };
        let mut touched = HashSet::new();
        for &(key, deadline) in stranded.entries() {
            let (c, s) = shaped_flow(key);
            let Some(conn) = self.conns.get_mut(&c) else {
                continue;
            };
            let Some(sh) = conn.shaper_mut(s) else {
                continue;
            };
            if stranded.claim(sh, deadline, &mut self.lateness) {
                self.shaping_failures += 1;
                let _ = conn.link.session.reset(now, s, 1);
                self.drop_up(c, s);
                touched.insert(c);
            }
        }
        // Flush the resets.
        for c in touched {
            self.service(now, c);
        }
        false
    }

    /// Serve the shaped streams whose departures are due.
    fn expire_shaped(&mut self, now: Instant) {
        let due = self.timers.expire(now);
        let mut touched = HashSet::new();
        for &(key, deadline) in due.entries() {
            let (c, s) = shaped_flow(key);
            let Some(conn) = self.conns.get_mut(&c) else {
                continue;
            };
            let Some(sh) = conn.shaper_mut(s) else {
                continue;
            };
            if due.claim(sh, deadline, &mut self.lateness) {
                conn.dirty.insert(s);
                touched.insert(c);
            }
        }
        for c in touched {
            self.service(now, c);
        }
    }

    /// The allow-list changed: end the sessions of keys no longer on it.
    fn end_removed_keys(&mut self) {
        let gone: Vec<Token> = {
            let set = self.cfg.clients.read();
            self.conns
                .iter()
                .filter(|(_, c)| c.key.as_ref().is_some_and(|k| !set.contains(&k.key().0)))
                .map(|(t, _)| *t)
                .collect()
        };
        for t in gone {
            if let Some(k) = self.conns.get(&t).and_then(|c| c.key.as_ref()) {
                qlog!(
                    Info,
                    "client {} left the allow-list: session ended",
                    k.key().to_base64()
                );
            }
            self.drop_conn(t);
        }
    }

    /// Re-read the host's own addresses for the exit policy; a failed read keeps the
    /// last list.
    fn refresh_own_addrs(&mut self, now: Instant) {
        self.own_addrs_read = now;
        if !self.cfg.policy.refuses_own_addrs() && self.cfg.extend.is_empty() {
            return;
        }
        match crate::os::interface_addrs() {
            Ok(own) => {
                let port = self.listener.local_addr().map_or(0, |a| a.port());
                self.cfg.extend.set_own(own.iter().copied(), port);
                self.cfg.policy.set_own_addrs(own);
            }
            Err(e) => qlog!(
                Error,
                "cannot re-read this host's addresses, keeping the last: {e}"
            ),
        }
    }

    /// A readiness event on a client connection or a destination socket.
    fn socket_event(&mut self, now: Instant, t: Token, readable: bool, writable: bool) {
        match self.owners.get(&t) {
            Some(Owner::Conn) => self.conn_event(now, t, readable),
            Some(Owner::Sink) => self.sink_event(t),
            Some(Owner::Up(c, s)) => {
                let (c, s) = (*c, *s);
                self.up_event(now, c, s, readable, writable);
                self.service(now, c);
            }
            None => {}
        }
    }

    /// Forget stream `s` of connection `c` and its destination socket.
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

    /// Handle session events, move stream bytes, flush: everything after input on `c`;
    /// then point the timer heap at its next timer.
    fn service(&mut self, now: Instant, c: Token) {
        self.service_io(now, c);
        self.rearm(c);
        if let Some(conn) = self.conns.get_mut(&c) {
            conn.count_payload(&self.m);
            if conn.read_paused
                && conn.link.session.transmit().len() < self.limits.output_high_water
            {
                conn.read_paused = false;
                self.resume.insert(c);
            }
        }
    }

    /// Push a heap entry for connection `c` if its next timer is earlier than the one
    /// armed (a later one is found when the armed entry fires).
    fn rearm(&mut self, c: Token) {
        let Some(conn) = self.conns.get_mut(&c) else {
            return;
        };
        let Some(t) = conn.next_timer() else {
            return;
        };
        if conn.armed.is_none_or(|a| t < a) {
            conn.armed = Some(t);
            self.deadlines.push(t, Due::Conn(c.0));
            self.compact_deadlines();
        }
    }

    /// Rebuild the heap from its live entries once stale ones outnumber them, so it
    /// stays in proportion to the live timers.
    fn compact_deadlines(&mut self) {
        let live_bound = 2 * (self.conns.len() + self.owners.len()) + 64;
        if self.deadlines.len() <= live_bound {
            return;
        }
        let (conns, sinks) = (&self.conns, &self.sinks);
        self.deadlines
            .retain(|t, d| deadline_live(conns, sinks, t, d));
    }

    /// Drop stale entries from the top, so the loop does not wake for them.
    fn purge_stale_deadlines(&mut self) {
        while let Some((t, d)) = self.deadlines.peek() {
            if deadline_live(&self.conns, &self.sinks, t, d) {
                break;
            }
            self.deadlines.pop();
        }
    }

    /// The body of [`Relay::service`].
    fn service_io(&mut self, now: Instant, c: Token) {
        loop {
            let Some(conn) = self.conns.get_mut(&c) else {
                return;
            };
            let Some(ev) = conn.link.session.poll_event() else {
                break;
            };
            match ev {
                Event::Connected { peer } => {
                    let key = PublicKey(peer);
                    conn.close_at = None;
                    self.m.handshake(Handshake::Ok);
                    qlog!(Info, "client {} authenticated", key.to_base64());
                    let max = self.limits.sessions_per_key;
                    let Some(hold) = self.shared.quotas.session(key, max) else {
                        self.m.limit(Limit::SessionsPerKey);
                        qlog!(
                            Warn,
                            "client {} is at [server] sessions_per_key: new session closed",
                            key.to_base64()
                        );
                        return self.drop_conn(c);
                    };
                    conn.key = Some(hold);
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
            if conn.draining {
                return;
            }
            let unsent = conn.link.session.transmit().len();
            let flushed = conn.link.flush();
            self.m
                .wire_out(unsent.saturating_sub(conn.link.session.transmit().len()));
            let flushed = match flushed {
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
            return self.session_failed(c, e);
        }
        if conn.link.eof && conn.link.session.transmit().is_empty() {
            self.drop_conn(c);
        }
    }

    /// Move the bytes of the streams an event touched; reset the failed, drop the done.
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
            self.timers
                .schedule(shaped_key(c, s), ep, now, &conn.link.session);
            if pump_failed(&r, &mut self.shaping_failures, s) {
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

    /// The earliest live deadline (stale ones were purged from the top).
    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|(t, _)| t)
    }

    /// Serve the connect deadlines and the connections' timers that are due. Entries a
    /// service pushes for `now` or earlier wait for the next round, so one round ends.
    fn run_timers(&mut self, now: Instant) {
        let mut due = vec![];
        while let Some((t, d)) = self.deadlines.peek() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            if deadline_live(&self.conns, &self.sinks, t, d) {
                if let Due::Conn(c) = d {
                    if let Some(conn) = self.conns.get_mut(&Token(c)) {
                        conn.armed = None;
                    }
                }
                due.push(d);
            }
        }
        for d in due {
            match d {
                Due::Connect(c, s) => {
                    let c = Token(c);
                    self.connect_next(now, c, s, Some(OpenError::TimedOut));
                    self.service(now, c);
                }
                Due::Conn(c) => self.conn_timer(now, Token(c)),
                Due::Sink(c) => self.close_sink(Token(c)),
            }
        }
    }

    /// Connection `t`'s armed entry fired: close it if unauthenticated and due, run its
    /// session's timers if due, and arm its next one.
    fn conn_timer(&mut self, now: Instant, t: Token) {
        let Some(conn) = self.conns.get_mut(&t) else {
            return;
        };
        if conn.next_timer().is_none_or(|d| d > now) {
            // The entry was armed for an earlier timer that has since moved later.
            return self.rearm(t);
        }
        if conn.close_at.is_some() {
            return self.close_unauthenticated(t);
        }
        match conn.link.session.handle_timeout(now) {
            Ok(()) => self.service(now, t),
            Err(e) => self.session_failed(t, e),
        }
    }
}

/// Whether a heap entry still stands for a timer: the connection's armed one, or the
/// deadline of a dial (or its proxy handshake) in progress.
fn deadline_live(
    conns: &HashMap<Token, Conn>,
    sinks: &HashMap<Token, Sink>,
    t: Instant,
    d: Due,
) -> bool {
    match d {
        Due::Sink(c) => sinks.get(&Token(c)).is_some_and(|s| s.close_at == t),
        Due::Conn(c) => conns.get(&Token(c)).is_some_and(|c| c.armed == Some(t)),
        Due::Connect(c, s) => matches!(
            conns.get(&Token(c)).and_then(|conn| conn.ups.get(&s)),
            Some(dial::Upstream {
                state: UpState::Connecting { deadline, .. } | UpState::Proxying { deadline, .. },
                ..
            }) if *deadline == t
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use std::io::Read;

    fn relay() -> Loop {
        let server = ServerConfig::default();
        relay_draining(server.drain_min, server.drain_max)
    }

    /// A relay's config on loopback with `threads` loops, whose unauthenticated
    /// connections close between `min` and `max`.
    pub(super) fn config(min: Duration, max: Duration, threads: usize) -> RelayConfig {
        let server = ServerConfig::default();
        RelayConfig {
            key: PrivateKey::generate(),
            clients: SharedAdmission::default(),
            clients_path: None,
            policy: ExitPolicy::from_exit_allow(&["127.0.0.1/32"]).unwrap(),
            extend: ExtendPolicy::default(),
            routes: false,
            session: SessionConfig::default(),
            connect_timeout: Duration::from_secs(5),
            upstream: None,
            profile: Profile::Performance,
            allow_profiles: Vec::new(),
            clock_skew: server.clock_skew,
            replay_capacity: server.replay_cache,
            drain_min: min,
            drain_max: max,
            threads,
        }
    }

    /// A one-loop relay whose unauthenticated connections close between `min` and `max`.
    fn relay_draining(min: Duration, max: Duration) -> Loop {
        let cfg = config(min, max, 1);
        let mut r = Relay::bind("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
        r.loops.remove(0)
    }

    /// The next connection waiting on the relay's listener.
    fn accepted(r: &Loop) -> (mio::net::TcpStream, SocketAddr) {
        for _ in 0..500 {
            match r.listener.accept() {
                Ok(x) => return x,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        panic!("no connection arrived");
    }

    /// Regression: an epoll registration failure on accept returned the error out of
    /// `run`, ending the relay and every session on it.
    #[test]
    fn failed_registration_on_accept_drops_that_connection_not_the_relay() {
        let mut r = relay();
        let addr = r.listener.local_addr().unwrap();
        let mut first = std::net::TcpStream::connect(addr).unwrap();
        let (mut sock, peer) = accepted(&r);
        // Registered once already: the relay's own registration fails (EEXIST), as
        // ENOSPC or ENOMEM would.
        r.poll
            .registry()
            .register(&mut sock, Token(usize::MAX), Interest::READABLE)
            .unwrap();
        assert!(r.admit(Instant::now(), sock, peer).is_err());
        assert!(r.conns.is_empty() && r.owners.is_empty());
        // That connection is closed...
        first
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert!(matches!(first.read(&mut [0u8; 8]), Ok(0) | Err(_)));
        // ...and the next one is served.
        let _second = std::net::TcpStream::connect(addr).unwrap();
        for _ in 0..500 {
            r.accept(Instant::now());
            if !r.conns.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(r.conns.len(), 1);
    }

    /// Regression: every loop scanned every connection for its next timer. Now each
    /// connection has one live heap entry, and a due one is served from the heap.
    #[test]
    fn connection_timers_live_in_one_heap_entry_each() {
        let mut r = relay_draining(Duration::from_millis(100), Duration::from_millis(200));
        let addr = r.listener.local_addr().unwrap();
        let _clients: Vec<_> = (0..40)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        for _ in 0..500 {
            r.accept(Instant::now());
            if r.conns.len() == 40 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(r.conns.len(), 40);
        assert_eq!(r.deadlines.len(), 40);
        let first = r.next_deadline().unwrap();
        assert!(r.conns.values().all(|c| c.armed.unwrap() >= first));
        std::thread::sleep(Duration::from_millis(250));
        r.run_timers(Instant::now());
        assert!(r.conns.is_empty(), "{} not closed", r.conns.len());
        r.purge_stale_deadlines();
        assert_eq!(r.deadlines.len(), 0);
    }
}
