//! A client's connection: accept, read, and the end of it. Until it authenticates, a
//! connection has one close deadline, drawn at accept from `[drain_min, drain_max]`;
//! whatever fails before then (garbage, a replay, a stranger's key, no bytes, a trickle)
//! is read and discarded until that deadline, so neither bytes nor close time tell a
//! prober which failure it caused (docs/PROTOCOL.md, section 2, "Failure").

use std::collections::{HashMap, HashSet};
use std::io::{self, ErrorKind, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::{Interest, Token};

use super::deadlines::Due;
use super::dial::Upstream;
use super::limits::{Admit, source_key};
use super::quota::SessionHold;
use super::{Loop, Owner};
use crate::engine::shape::Shaper;
use crate::engine::{Link, LinkRead};
use crate::proto::preamble::{self, PREAMBLE_LEN};
use crate::proto::replay::source_network;
use crate::proto::{Role, Session, SessionError};
use crate::qlog;
use crate::relay::metrics::{Handshake, Limit, LoopMetrics};
use crate::socks::isolation_credentials;

/// One client's session and the streams it opened.
pub(super) struct Conn {
    pub(super) link: Link,
    pub(super) ups: HashMap<u32, Upstream>,
    /// Streams an event touched since the last pump: only these are pumped, so an
    /// event costs O(1) streams, not O(all).
    pub(super) dirty: HashSet<u32>,
    /// Streams that stopped reading because the session's output was over the high-water mark.
    pub(super) stalled: HashSet<u32>,
    /// Not authenticated yet: the connection is closed at this time (drawn at accept)
    /// unless its handshake finishes first; `None` once it has.
    pub(super) close_at: Option<Instant>,
    /// Failed before authenticating: read and discard until `close_at`, answer nothing.
    pub(super) draining: bool,
    /// The credentials this session's streams present to the exit proxy.
    pub(super) proxy_creds: Option<(Vec<u8>, Vec<u8>)>,
    /// Not read while its output is over `[server] output_high_water_kib`: a peer that
    /// does not read what it asks for (PONGs, stream bytes) is not read either.
    pub(super) read_paused: bool,
    /// The address the per-address caps count it under.
    pub(super) source: IpAddr,
    /// Where the connection comes from (logs; extends never go straight back there).
    pub(super) peer: SocketAddr,
    /// A relay that takes part in routes: the first bytes, until there are enough to
    /// tell an extend preamble from a client's msg1 (`None` once told, or never).
    pub(super) pre: Option<Vec<u8>>,
    /// This relay's hop in the session's route: 1 when the client connected directly,
    /// else the preamble's position plus one.
    pub(super) position: u8,
    /// The deadline this connection's live entry in the relay's timer heap is for.
    pub(super) armed: Option<Instant>,
    /// The client's key and its session count once it authenticated: SIGHUP ends the
    /// sessions of keys that left the allow-list.
    pub(super) key: Option<SessionHold>,
    /// The session's stream payload counts (sent, received) already added to the
    /// loop's metrics.
    pub(super) counted: (u64, u64),
}

/// A connection over a handshake rate: no session, read and discarded until `close_at`.
pub(super) struct Sink {
    sock: mio::net::TcpStream,
    source: IpAddr,
    pub(super) close_at: Instant,
}

impl Conn {
    /// When this connection's timers next need the loop: its close deadline until it
    /// authenticates (the session's own handshake timeout is not used by the relay),
    /// then the session's timers.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.close_at.or_else(|| self.link.session.next_timeout())
    }

    /// Answer stream `s`'s OPEN, and count the answer.
    pub(super) fn answer(
        &mut self,
        m: &LoopMetrics,
        now: Instant,
        s: u32,
        r: Result<(), crate::proto::OpenError>,
    ) {
        m.open(r);
        let _ = self.link.session.open_result(now, s, r);
    }

    /// Add the stream payload moved since the last call to `m`.
    pub(super) fn count_payload(&mut self, m: &LoopMetrics) {
        let st = self.link.session.stats();
        let (sent, received) = self.counted;
        // Received is up (client to destination), sent is down.
        m.payload(
            st.bytes_received.saturating_sub(received),
            st.bytes_sent.saturating_sub(sent),
        );
        self.counted = (st.bytes_sent, st.bytes_received);
    }

    /// The shaper of stream `s`, if it is open and shaped.
    pub(super) fn shaper_mut(&mut self, s: u32) -> Option<&mut Shaper> {
        self.ups
            .get_mut(&s)
            .and_then(|u| u.ep.as_mut())
            .and_then(|ep| ep.shaper.as_deref_mut())
    }
}

impl Loop {
    /// Accept every client waiting on the listener and start its session. A failure
    /// concerns one connection (or, for `accept` itself, this round): it is logged and
    /// the relay serves on.
    pub(super) fn accept(&mut self, now: Instant) {
        loop {
            let (sock, peer) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and keep serving the connections we have.
                    qlog!(Error, "accept failed: {e}");
                    return;
                }
            };
            let source = source_key(peer.ip());
            // The guard must not live into the arms (report_refusals locks the gate).
            let verdict = self.shared.gate.lock().admit(now, source);
            match verdict {
                Admit::Handshake => {}
                Admit::Close(limit) => {
                    self.m.limit(limit);
                    self.report_refusals();
                    continue;
                }
                Admit::Sink(limit) => {
                    self.m.limit(limit);
                    self.report_refusals();
                    self.sink(now, sock, source);
                    continue;
                }
            }
            if let Err(e) = self.admit(now, sock, peer) {
                self.shared.gate.lock().closed(source);
                // ENOMEM or ENOSPC (fs.epoll.max_user_watches) from epoll_ctl: the socket
                // is dropped (closed) here; the other connections are not concerned.
                qlog!(
                    Error,
                    "connection from {peer} dropped: cannot register it: {e}"
                );
            }
        }
    }

    /// Say so when caps closed or sank connections (at doubling counts).
    fn report_refusals(&mut self) {
        let due = self.shared.gate.lock().report_due();
        if let Some(refused) = due {
            qlog!(
                Warn,
                "{refused} connections closed or drained unanswered by [server] max_connections*, handshakes_per_sec*"
            );
        }
    }

    /// Keep a connection the gate refused a handshake: read and discard until a close
    /// time from the same distribution as every unauthenticated connection's.
    fn sink(&mut self, now: Instant, mut sock: mio::net::TcpStream, source: IpAddr) {
        let t = self.token();
        if self
            .poll
            .registry()
            .register(&mut sock, t, Interest::READABLE)
            .is_err()
        {
            self.shared.gate.lock().closed(source);
            return;
        }
        let close_at = self.close_deadline(now);
        self.owners.insert(t, Owner::Sink);
        self.sinks.insert(
            t,
            Sink {
                sock,
                source,
                close_at,
            },
        );
        self.deadlines.push(close_at, Due::Sink(t.0));
    }

    /// Input on a sink: discard it; close on the peer's close.
    pub(super) fn sink_event(&mut self, t: Token) {
        let Some(sink) = self.sinks.get_mut(&t) else {
            return;
        };
        if discard(&mut sink.sock, &mut self.buf) {
            self.close_sink(t);
        }
    }

    /// Close a sink (read what is pending first, so the close is a FIN).
    pub(super) fn close_sink(&mut self, t: Token) {
        if let Some(mut sink) = self.sinks.remove(&t) {
            discard(&mut sink.sock, &mut self.buf);
            let _ = self.poll.registry().deregister(&mut sink.sock);
            self.owners.remove(&t);
            self.shared.gate.lock().closed(sink.source);
        }
    }

    /// Register an accepted connection and start its session.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        mut sock: mio::net::TcpStream,
        peer: SocketAddr,
    ) -> io::Result<()> {
        let _ = sock.set_nodelay(true);
        let t = self.token();
        self.poll
            .registry()
            .register(&mut sock, t, Interest::READABLE | Interest::WRITABLE)?;
        let session = Session::new(
            now,
            self.cfg.session.clone(),
            Role::Server {
                admission: self.cfg.clients.clone(),
                replay: self.shared.replay.clone(),
                source: source_network(peer.ip()),
            },
            self.cfg.key.as_bytes(),
            Box::new(crate::entropy::RingRandom),
        );
        let close_at = self.close_deadline(now);
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
                link: Link::new(sock, session),
                ups: HashMap::new(),
                dirty: HashSet::new(),
                stalled: HashSet::new(),
                close_at: Some(close_at),
                draining: false,
                proxy_creds,
                key: None,
                armed: None,
                read_paused: false,
                source: source_key(peer.ip()),
                peer,
                pre: self.cfg.routes.then(Vec::new),
                position: 1,
                counted: (0, 0),
            },
        );
        self.rearm(t);
        Ok(())
    }

    /// Readiness of a client connection: read (or drain) it, then serve it.
    pub(super) fn conn_event(&mut self, now: Instant, t: Token, readable: bool) {
        let Some(conn) = self.conns.get_mut(&t) else {
            return;
        };
        if readable {
            if conn.draining {
                // Discard everything a failed peer sends (nothing is kept); answer nothing.
                if discard_input(conn, &mut self.buf) {
                    self.drop_conn(t);
                }
                return;
            }
            let high_water = self.limits.output_high_water;
            let key = self.cfg.key.as_bytes();
            match read_below(conn, now, &mut self.buf, high_water, key, &self.m) {
                Ok(LinkRead::Drained) => {}
                // The relay's own socket never goes through a proxy, so ProxyFailed cannot occur.
                Ok(LinkRead::Eof) | Ok(LinkRead::ProxyFailed(_)) | Err(_) => {
                    if conn.close_at.is_some() {
                        self.m.handshake(Handshake::Closed);
                    }
                    // Deliver what was decoded before the close, then let the streams finish.
                    self.service(now, t);
                    return self.drop_conn(t);
                }
                Ok(LinkRead::Failed(e)) => return self.session_failed(t, e),
            }
        }
        self.service(now, t);
    }

    /// A new connection's close deadline: `now` plus a uniform draw from
    /// `[drain_min, drain_max]` (µs steps), the one distribution every unauthenticated
    /// connection's close follows.
    fn close_deadline(&self, now: Instant) -> Instant {
        let (min, max) = (self.cfg.drain_min, self.cfg.drain_max);
        let span = max.saturating_sub(min).as_micros() as u64;
        let mut r = [0u8; 8];
        crate::proto::Random::fill(&mut crate::entropy::RingRandom, &mut r);
        // The modulo's bias is below span / 2^64: nothing a prober can measure.
        now + min + Duration::from_micros(u64::from_le_bytes(r) % (span + 1))
    }

    /// The session failed: before authentication, drain silently until the deadline
    /// drawn at accept; after it, close.
    pub(super) fn session_failed(&mut self, t: Token, e: SessionError) {
        let Some(conn) = self.conns.get_mut(&t) else {
            return;
        };
        if conn.close_at.is_some() {
            if !conn.draining {
                conn.draining = true;
                let fault = conn.link.session.handshake_fault();
                let result = fault.map_or(Handshake::Garbage, Handshake::of);
                self.m.handshake(result);
                if result == Handshake::ReplayCacheFull {
                    self.m.limit(Limit::ReplayCache);
                }
                qlog!(
                    Info,
                    "handshake failed; draining until the connection's close time"
                );
                self.report_full_replay_cache();
            }
            return;
        }
        qlog!(Info, "session ended: {e}");
        self.drop_conn(t);
    }

    /// The close deadline of an unauthenticated connection passed: read what is pending
    /// (so the close is a FIN, not the RST that unread bytes would cause), then close.
    pub(super) fn close_unauthenticated(&mut self, t: Token) {
        if let Some(conn) = self.conns.get_mut(&t) {
            if !conn.draining {
                // No handshake result of any kind before the close time.
                self.m.handshake(Handshake::Timeout);
            }
            discard_input(conn, &mut self.buf);
        }
        self.drop_conn(t);
    }

    /// Say so when the replay cache refused handshakes for want of room (all of it, or a
    /// network's share): at the 1st, 2nd, 4th, 8th … refusal, so a flood cannot flood
    /// the log too.
    fn report_full_replay_cache(&mut self) {
        let st = self.shared.replay.lock().stats();
        let refused = st.full + st.source_full;
        if refused > 0 && refused >= self.full_reported * 2 {
            self.full_reported = refused;
            qlog!(
                Warn,
                "replay cache: {refused} handshakes refused for want of room, {} of them from a network holding its sixteenth (entries leave within twice [server] clock_skew_secs; [server] replay_cache sets the room)",
                st.source_full
            );
        }
    }

    /// Close a client connection and every destination socket of its streams.
    pub(super) fn drop_conn(&mut self, t: Token) {
        if let Some(mut conn) = self.conns.remove(&t) {
            conn.count_payload(&self.m);
            let _ = self.poll.registry().deregister(&mut conn.link.sock);
            self.owners.remove(&t);
            self.shared.gate.lock().closed(conn.source);
            for (_, up) in conn.ups.drain() {
                if let Some(mut ep) = up.ep {
                    let _ = ep.sock.deregister(self.poll.registry());
                    self.owners.remove(&ep.token);
                }
            }
        }
    }
}

/// Read what the peer sent into the session while its output is under `high_water`
/// bytes. `Link::read_in` reads until the kernel has nothing left, which a peer writing
/// as fast as the relay reads never allows: a PING flood would queue PONGs without end.
/// Past the mark the rest stays in the kernel (TCP pushes back on the peer) and the
/// connection is marked `read_paused`; `service` reads it again once the output drains.
fn read_below(
    conn: &mut Conn,
    now: Instant,
    buf: &mut [u8],
    high_water: usize,
    key: &[u8; 32],
    m: &LoopMetrics,
) -> io::Result<LinkRead> {
    loop {
        if conn.link.session.transmit().len() >= high_water {
            if !conn.read_paused {
                m.limit(Limit::OutputHighWater);
            }
            conn.read_paused = true;
            return Ok(LinkRead::Drained);
        }
        match conn.link.sock.read(buf) {
            Ok(0) => {
                conn.link.eof = true;
                return Ok(LinkRead::Eof);
            }
            Ok(n) => {
                m.wire_in(n);
                let data = match take_preamble(conn, &buf[..n], key) {
                    Some((told, rest)) => {
                        if let Err(e) = conn.link.session.handle_input(now, &told) {
                            return Ok(LinkRead::Failed(e));
                        }
                        rest
                    }
                    None => &buf[..n],
                };
                if let Err(e) = conn.link.session.handle_input(now, data) {
                    return Ok(LinkRead::Failed(e));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(LinkRead::Drained),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// While a relay in routes waits for the first [`PREAMBLE_LEN`] bytes: hold `data`'s
/// share of them, and once they are all in, take them for a preamble (the position it
/// gives is kept; nothing goes to the session) or give them back as the start of a
/// client's msg1. Returns what the session must read first and the rest of `data`;
/// `None` when no preamble is awaited.
fn take_preamble<'a>(
    conn: &mut Conn,
    data: &'a [u8],
    key: &[u8; 32],
) -> Option<(Vec<u8>, &'a [u8])> {
    let pre = conn.pre.as_mut()?;
    let n = (PREAMBLE_LEN - pre.len()).min(data.len());
    pre.extend_from_slice(&data[..n]);
    if pre.len() < PREAMBLE_LEN {
        return Some((Vec::new(), &data[n..]));
    }
    let head = conn.pre.take().unwrap_or_default();
    let mut bytes = [0u8; PREAMBLE_LEN];
    bytes.copy_from_slice(&head);
    match preamble::open(&bytes, key) {
        Some(p) => {
            conn.position = p.saturating_add(1);
            Some((Vec::new(), &data[n..]))
        }
        None => Some((head, &data[n..])),
    }
}

/// Read and drop everything the peer has sent so far; `true` when it closed or failed.
fn discard_input(conn: &mut Conn, buf: &mut [u8]) -> bool {
    discard(&mut conn.link.sock, buf)
}

/// Read and drop everything on `sock`; `true` when the peer closed or it failed.
fn discard(sock: &mut mio::net::TcpStream, buf: &mut [u8]) -> bool {
    loop {
        match sock.read(buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}
