//! Dialling a stream's destination: the exit policy, the connect (address by address,
//! each under the connect timeout), and the exit proxy's SOCKS5 handshake.

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::Token;
use mio::net::TcpStream;

use super::deadlines::Due;
use super::names::Query;
use super::quota::{Pending, StreamHold};
use super::{Loop, Owner};
use crate::engine::pump::{Endpoint, Sock};
use crate::engine::shape::Shaper;
use crate::entropy::RingRandom;
use crate::proto::elligator::Ephemeral;
use crate::proto::{Destination, OpenError};
use crate::qlog;
use crate::relay::extend::Extend;
use crate::relay::metrics::Limit;
use crate::sched::{Direction, Profile};
use crate::socks::{ClientHandshake, ClientProgress};

/// Where a stream's dial is.
pub(super) enum UpState {
    /// Its name is with the resolver threads.
    Resolving,
    /// A TCP connect to one address is under way; `rest` are tried after it.
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
    /// Bytes flow.
    Connected,
}

/// A stream's destination side.
pub(super) struct Upstream {
    pub(super) state: UpState,
    /// The destination socket, once a connect started.
    pub(super) ep: Option<Endpoint>,
    /// The downstream scheduler, handed to the endpoint once it connects.
    shaper: Option<Box<Shaper>>,
    /// With an exit proxy: the destination to ask it for once the TCP connect is up.
    via_proxy: Option<Destination>,
    /// An extend: the preamble that goes out first, once the TCP connect is up.
    preamble: Option<[u8; crate::proto::preamble::PREAMBLE_LEN]>,
    /// The key's lookup or dial count this stream holds until it connects.
    pub(super) hold: StreamHold,
}

impl Upstream {
    /// The destination is connected (through the exit proxy, its handshake done): the
    /// stream holds no dial any more and its shaper moves to the endpoint.
    fn connected(&mut self) {
        self.state = UpState::Connected;
        self.hold.release();
        if let Some(ep) = self.ep.as_mut() {
            ep.shaper = self.shaper.take();
        }
    }
}

/// The OPEN_RESULT reason a failed connect reports.
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

impl Loop {
    /// The client opened stream `s` to `dest`: check the policy, then resolve or dial.
    pub(super) fn on_open(&mut self, now: Instant, c: Token, s: u32, dest: Destination, asked: u8) {
        self.m.stream();
        // The client's wish for the downstream, within what this relay allows.
        let profile = Profile::from_wire(asked)
            .filter(|p| self.cfg.allow_profiles.is_empty() || self.cfg.allow_profiles.contains(p))
            .unwrap_or(self.cfg.profile);
        let shaper = match Shaper::new(profile, Direction::Down, now) {
            Ok(sh) => sh.map(Box::new),
            Err(e) => {
                qlog!(Error, "cannot shape stream {s}: {e}");
                if let Some(conn) = self.conns.get_mut(&c) {
                    conn.answer(&self.m, now, s, Err(OpenError::Failure));
                }
                return;
            }
        };
        let Some(conn) = self.conns.get_mut(&c) else {
            return;
        };
        let mut proxy = self.cfg.upstream.as_ref().map(|u| u.addr);
        let (peer, position) = (conn.peer, conn.position);
        let mut preamble = None;
        let dest = match self.cfg.extend.judge(&dest, peer.ip(), position) {
            Extend::NotARelay => {
                let (dest, allowed) = self.cfg.policy.judge(dest, proxy.is_some());
                if !allowed {
                    qlog!(Info, "exit policy refuses {dest}");
                    self.m.exit_refused();
                    conn.answer(&self.m, now, s, Err(OpenError::Forbidden));
                    return;
                }
                let tor = self.cfg.upstream.as_ref().and_then(|u| u.tor.as_ref());
                if let Some(Err((why, first))) = tor.map(|t| t.gate()) {
                    if first {
                        qlog!(Warn, "{why}: streams through Tor are refused meanwhile");
                    }
                    conn.answer(&self.m, now, s, Err(OpenError::Failure));
                    return;
                }
                dest
            }
            Extend::Allowed { key } => {
                // The next hop of a route: dialled directly, as the operator listed it,
                // told its position first.
                proxy = None;
                let e = Ephemeral::generate(|b| crate::proto::Random::fill(&mut RingRandom, b));
                preamble = Some(crate::proto::preamble::seal(position, &key, &e));
                let n = self.m.extend(true);
                qlog!(
                    Info,
                    "extend #{n}: a session from {peer} (hop {position}) to relay {dest}"
                );
                // As the list spells it: an address in a name's clothing is dialled as
                // that address.
                crate::relay::extend::normal(&dest)
            }
            Extend::Refused(why) => {
                let n = self.m.extend(false);
                qlog!(
                    Info,
                    "extend refused (#{n}): a session from {peer} to relay {dest}: {why}"
                );
                conn.answer(&self.m, now, s, Err(OpenError::Forbidden));
                return;
            }
        };
        // Only a name this relay resolves itself is a lookup; with an exit proxy the
        // proxy resolves it and the stream is a dial from the start.
        let pending = match (&dest, proxy) {
            (Destination::Name(..), None) => Pending::Lookup,
            _ => Pending::Dial,
        };
        let l = &self.limits;
        // A session without a key has not authenticated and cannot open: fail closed.
        let mut hold = conn.key.as_ref().map(|k| k.stream());
        let quota = if conn.ups.len() >= l.streams_per_session as usize {
            Some(Limit::StreamsPerSession)
        } else if !hold
            .as_mut()
            .is_some_and(|h| h.take(pending, per_key(l, pending)))
        {
            Some(per_key_limit(pending))
        } else {
            None
        };
        let (Some(hold), None) = (hold, quota) else {
            if let Some(q) = quota {
                self.m.limit(q);
            }
            qlog!(
                Info,
                "stream {s} refused: over [server] {}",
                quota.map_or("?", Limit::name)
            );
            conn.answer(&self.m, now, s, Err(OpenError::TooManyStreams));
            return;
        };
        conn.ups.insert(
            s,
            Upstream {
                state: UpState::Resolving,
                ep: None,
                shaper,
                via_proxy: None,
                preamble,
                hold,
            },
        );
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
                let _ = self.resolve_tx.send(Query {
                    answers: self.answers.clone(),
                    conn: c,
                    stream: s,
                    host,
                    port,
                });
            }
        }
    }

    /// Readiness of a destination socket: a connect's outcome, or the proxy handshake.
    pub(super) fn up_event(
        &mut self,
        now: Instant,
        c: Token,
        s: u32,
        readable: bool,
        writable: bool,
    ) {
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
                        // A fresh connection's send buffer takes 49 bytes whole; if it
                        // did not, the next relay would read a client's bytes as garbage.
                        // Kept for the next address if this write fails: no dial of an
                        // extend ever goes out without it.
                        if let Some(p) = up.preamble {
                            if !matches!(ep.sock.write(&p), Ok(n) if n == p.len()) {
                                return self.connect_next(now, c, s, Some(OpenError::Failure));
                            }
                        }
                        up.connected();
                        conn.dirty.insert(s);
                        conn.answer(&self.m, now, s, Ok(()));
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
    pub(super) fn drive_proxy(&mut self, now: Instant, c: Token, s: u32) {
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
                    up.connected();
                }
                conn.dirty.insert(s);
                conn.answer(&self.m, now, s, Ok(()));
            }
            Some(e) => self.start_connect(now, c, s, Vec::new(), e),
        }
    }

    /// Try the next resolved address, or report `last` if none is left.
    pub(super) fn connect_next(&mut self, now: Instant, c: Token, s: u32, last: Option<OpenError>) {
        let rest = match self.conns.get_mut(&c).and_then(|conn| conn.ups.get_mut(&s)) {
            Some(Upstream {
                state: UpState::Connecting { rest, .. },
                ..
            }) => std::mem::take(rest),
            _ => Vec::new(),
        };
        self.start_connect(now, c, s, rest, last.unwrap_or(OpenError::Failure));
    }

    /// Connect to the first of `addrs` that takes a socket, or report `last`.
    pub(super) fn start_connect(
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
                    self.deadlines.push(deadline, Due::Connect(c.0, s));
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
            conn.answer(&self.m, now, s, Err(last));
            conn.ups.remove(&s);
        }
    }
}

/// The `[server]` cap on a key's streams holding `p`.
pub(super) fn per_key(l: &crate::config::ServerLimits, p: Pending) -> u32 {
    match p {
        Pending::Lookup => l.lookups_per_key,
        Pending::Dial => l.dials_per_key,
    }
}

/// The `[server]` limit of that cap.
pub(super) fn per_key_limit(p: Pending) -> Limit {
    match p {
        Pending::Lookup => Limit::LookupsPerKey,
        Pending::Dial => Limit::DialsPerKey,
    }
}
