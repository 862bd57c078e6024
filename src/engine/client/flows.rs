//! Local sockets carried as streams: opening them once the session is up, the relay's
//! answers, and moving their bytes (with the shaped ones' departures).

use std::io::{ErrorKind, Read as _};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use mio::Token;

use super::socks::socks_reply;
use super::tunnel::Tunnel;
use super::{AppConn, Client, Failure};
use crate::engine::pump::{Endpoint, PumpState, Sock};
use crate::engine::shape::Shaper;
use crate::engine::timers::{MAX_ROUNDS, pump_failed};
use crate::proto::{Destination, Event, OpenError, Session};
use crate::qlog;
use crate::sched::{Direction, Profile};

/// A local socket carried as a stream.
pub(super) struct Flow {
    pub(super) ep: Endpoint,
    /// The relay answered OPEN with success.
    open: bool,
    started: Instant,
    dest: Destination,
    pub(super) app: Option<AppConn>,
    /// A SOCKS client waiting for its CONNECT reply.
    socks: bool,
    /// Filler bytes still to discard before the app's own data (see [`AppConn`]).
    skip: usize,
    /// Bytes of the local socket went into the stream (in OPEN, held by its shaper, or
    /// sent before the relay answered), or its end did: the flow can no longer be opened
    /// again elsewhere.
    sent_first: bool,
    /// Bytes were read from the local socket before the relay answered (see
    /// [`Flow::optimistic`]): had they stayed unread, a refusal would have closed the
    /// socket with an RST (the kernel resets a socket closed with unread input), so it
    /// still does.
    early: bool,
}

/// A flow's key: its tunnel's serial and its stream id there.
pub(super) fn flow_key(serial: u32, stream: u32) -> u64 {
    u64::from(serial) << 32 | u64::from(stream)
}

/// The keys of tunnel `serial`'s flows.
pub(super) fn flow_range(serial: u32) -> std::ops::RangeInclusive<u64> {
    flow_key(serial, 0)..=flow_key(serial, u32::MAX)
}

/// The tunnel serial of a flow key.
pub(super) fn serial_of(key: u64) -> u32 {
    (key >> 32) as u32
}

/// A local socket waiting for the session, and what it came from.
pub(super) struct Pending {
    pub(super) sock: Sock,
    pub(super) dest: Destination,
    pub(super) app: Option<AppConn>,
    /// A SOCKS client: it gets a SOCKS reply when the relay answers.
    pub(super) socks: bool,
    /// Bytes that arrived before the stream existed (pipelined after a SOCKS request).
    pub(super) first: Vec<u8>,
}

impl Pending {
    /// A socket with nothing read from it yet.
    pub(super) fn plain(sock: Sock, dest: Destination, app: Option<AppConn>) -> Pending {
        Pending {
            sock,
            dest,
            app,
            socks: false,
            first: Vec::new(),
        }
    }
}

/// What one pump of a flow left to do.
enum Pumped {
    /// Nothing until its next event or departure.
    Idle,
    /// It may read more as soon as the session has room.
    Again,
    /// It ended (or was reset): forget it.
    Finished,
}

impl Flow {
    /// The relay never answered it and nothing of it was sent: it may be opened again
    /// through another tunnel.
    pub(super) fn may_retry(&self) -> bool {
        !self.open && !self.sent_first && !self.socks
    }

    /// Whether its local socket is read before the relay answers (Tor's optimistic data):
    /// a `qnet forward` or `qnet socks` flow cannot tell whether its bytes leave before or
    /// after the answer, so they go at once, within the stream's credit. Not a preloaded
    /// app's flow (its `connect` waits for the answer on purpose) nor a shaped one (its
    /// schedule starts when the stream opens). Only with one path (`single`): with another
    /// to fail over to, a flow that waits for the answer can still be opened elsewhere
    /// when its relay goes silent, and one that sent its bytes cannot (measured with
    /// tests/relays/run, SIGSTOP: every flow started in the 400 ms before the relay was
    /// marked down failed, recovery 3 s instead of 0.4 s).
    fn optimistic(&self, single: bool) -> bool {
        single && self.app.is_none() && self.ep.shaper.is_none()
    }

    /// Ending before the relay's answer after its first bytes were read: its socket is
    /// reset, as the kernel would have reset it with those bytes unread ([`Flow::early`]).
    fn reset_if_read_unanswered(&self) {
        if self.early && !self.open {
            self.ep.sock.reset_on_close(None);
        }
    }

    /// Back to a socket waiting for a tunnel (its socket already deregistered).
    pub(super) fn into_pending(self) -> Pending {
        Pending::plain(self.ep.sock, self.dest, self.app)
    }

    /// Publish the app's per-flow counters (`qnet_flow_stats`).
    fn publish(&self, session: &Session) {
        let Some(c) = &self.ep.counters else {
            return;
        };
        if let Some((o, i)) = session.stream_records(self.ep.stream) {
            c.frames_sent.store(o, Relaxed);
            c.frames_received.store(i, Relaxed);
        }
        if let Some(sh) = &self.ep.shaper {
            let st = sh.stats();
            c.padding_bytes.store(st.padding_bytes, Relaxed);
            c.added_delay_ns.store(st.total_hold_ns, Relaxed);
        }
    }
}

impl Client {
    /// Everything the tunnels' exit sessions reported since the last round.
    pub(super) fn session_events(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.tunnels.len() {
            let serial = self.tunnels[i].serial;
            let ev = self.tunnels[i].exit_mut().and_then(|s| s.poll_event());
            let Some(ev) = ev else {
                i += 1;
                continue;
            };
            match ev {
                Event::Connected { .. } => self.tunnel_up(now, serial),
                Event::OpenResult { stream, result } => match result {
                    Ok(()) => self.stream_open(now, flow_key(serial, stream)),
                    Err(e) => self.stream_refused(flow_key(serial, stream), e),
                },
                Event::Reset { stream, .. } => {
                    // Only a misbehaving relay resets a stream before its OPEN_RESULT.
                    if let Some(f) = self.forget(flow_key(serial, stream)) {
                        f.reset_if_read_unanswered();
                    }
                }
                Event::Readable { stream } | Event::Writable { stream } => {
                    self.dirty.insert(flow_key(serial, stream));
                }
                Event::Opened { .. } => {}
            }
        }
    }

    /// The relay connected a flow: tell the app (or SOCKS client), start pumping.
    fn stream_open(&mut self, now: Instant, key: u64) {
        let Some(f) = self.flows.get_mut(&key) else {
            return;
        };
        let stream = key as u32;
        f.open = true;
        self.dirty.insert(key);
        self.told_down = false;
        if f.socks {
            f.socks = false;
            socks_reply(&mut f.ep.sock, Ok(()));
        }
        if let Some(c) = &f.ep.counters {
            c.stream.store(stream, Relaxed);
        }
        if let Some(app) = f.app.take() {
            // Publish the outcome first: dropping the filler makes the app's fd writable,
            // and the app then asks SO_ERROR and getpeername at once.
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

    /// The relay refused a flow: pass the reason on and forget it.
    fn stream_refused(&mut self, key: u64, e: OpenError) {
        let Some(mut f) = self.forget(key) else {
            return;
        };
        qlog!(Info, "relay refused stream to {}: {e}", f.dest);
        if f.socks {
            socks_reply(&mut f.ep.sock, Err(e));
        }
        f.reset_if_read_unanswered();
        if let Some(app) = f.app.take() {
            app.finish(Err(Failure::Open(e)));
        }
        self.stats.streams_failed += 1;
    }

    /// Open a stream on the current tunnel for every socket that waited for one.
    pub(super) fn open_waiting(&mut self, now: Instant) {
        if self.current().is_none() {
            return;
        }
        while let Some(p) = self.waiting.pop_front() {
            self.open_stream(now, p);
        }
    }

    fn open_stream(&mut self, now: Instant, p: Pending) {
        let Pending {
            sock,
            dest,
            app,
            socks,
            first,
        } = p;
        let Some(ti) = self.current() else {
            return;
        };
        let serial = self.tunnels[ti].serial;
        let Some(l) = self.tunnels[ti].exit_mut() else {
            return;
        };
        let profile = match &dest {
            Destination::Addr(a) => self.cfg.timing.profile_for(Some(a.ip()), None, a.port()),
            Destination::Name(n, port) => self.cfg.timing.profile_for(None, Some(n), *port),
        };
        let shaper = match Shaper::new(profile, Direction::Up, now) {
            Ok(s) => s.map(Box::new),
            Err(e) => {
                // No randomness for the schedule: fail closed rather than send unshaped.
                qlog!(Error, "cannot shape a stream to {dest}: {e}");
                self.stats.streams_failed += 1;
                if let Some(app) = app {
                    app.finish(Err(Failure::Errno(libc::EIO)));
                }
                return;
            }
        };
        // The first bytes ride in OPEN unshaped only when the flow is not shaped.
        let (eager, held) = if shaper.is_some() {
            (&[][..], &first[..])
        } else {
            (&first[..], &[][..])
        };
        let (id, taken) = match l.open(now, dest.clone(), profile.wire(), eager) {
            Ok(opened) => opened,
            Err(e) => {
                qlog!(Warn, "cannot open stream: {e}");
                self.stats.streams_failed += 1;
                if let Some(app) = app {
                    app.finish(Err(Failure::Errno(libc::EAGAIN)));
                }
                return;
            }
        };
        if taken < eager.len() {
            // Allowed before OPEN_RESULT; small pipelined data always fits.
            let _ = l.write(now, id, &eager[taken..]);
        }
        let key = flow_key(serial, id);
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
        if ep.sock.register(self.poll.registry(), t).is_err() {
            let _ = l.reset(now, id, 1);
            if let Some(app) = app {
                app.finish(Err(Failure::Errno(libc::ENOBUFS)));
            }
            return;
        }
        self.by_token.insert(t, key);
        let flow = Flow {
            ep,
            open: false,
            started: now,
            dest,
            app,
            socks,
            skip: 0,
            sent_first: !first.is_empty(),
            early: false,
        };
        self.flows.insert(key, flow);
    }

    /// Pump the flows an event touched and flush every tunnel, until no stream waits for
    /// room: a stream that stopped at the high-water mark gets no new readiness edge once
    /// the flush drains, so it must be retried here.
    pub(super) fn pump_dirty(&mut self, now: Instant) {
        if self.busy {
            // The last service stopped after MAX_ROUNDS with flows still waiting.
            let stalled = std::mem::take(&mut self.stalled);
            self.dirty.extend(stalled);
        }
        self.busy = false;
        let mut ids: Vec<u64> = self.dirty.drain().collect();
        for round in 0..MAX_ROUNDS {
            let mut again = vec![];
            for &id in &ids {
                match self.pump_flow(now, id) {
                    Pumped::Idle => {}
                    Pumped::Again => again.push(id),
                    Pumped::Finished => self.finished(id),
                }
            }
            let flushed = self.flush_tunnels(now);
            let stalled = !again.is_empty();
            ids = again;
            // Not all out: the transport's writable edge will call us again.
            if !flushed || !stalled {
                break;
            }
            self.busy = round + 1 == MAX_ROUNDS;
        }
        // Whatever still waits for room is retried after the next flush (or at once, busy).
        self.stalled.extend(ids);
    }

    /// Move every tunnel's bytes between its hops and write them out; a tunnel that
    /// fails goes down. True when every tunnel's output is out.
    fn flush_tunnels(&mut self, now: Instant) -> bool {
        let mut all = true;
        let mut failed = Vec::new();
        let key = self.cfg.key.as_bytes();
        for t in &mut self.tunnels {
            let r = flush_tunnel(t, now, key);
            match r {
                Ok(done) => all &= done,
                Err(e) => failed.push((t.serial, e)),
            }
        }
        for (serial, why) in failed {
            self.tunnel_down(now, serial, &why);
        }
        all
    }

    /// Move one flow's bytes both ways (before the relay's answer, upstream only and only
    /// for an optimistic flow) and schedule its next shaped departure.
    fn pump_flow(&mut self, now: Instant, key: u64) -> Pumped {
        let serial = serial_of(key);
        let id = key as u32;
        let Some(t) = self.tunnels.iter_mut().find(|t| t.serial == serial) else {
            return Pumped::Idle;
        };
        let room = t.has_room();
        let single = self.cfg.paths.len() == 1;
        let (Some(l), Some(f)) = (t.exit_mut(), self.flows.get_mut(&key)) else {
            return Pumped::Idle;
        };
        if !f.open && !f.optimistic(single) {
            return Pumped::Idle;
        }
        if f.skip > 0 {
            f.skip = discard(&mut f.ep.sock, f.skip, &mut self.buf);
            if f.skip > 0 {
                return Pumped::Idle;
            }
        }
        if let Some(want) =
            f.ep.counters
                .as_ref()
                .map(|c| c.profile.swap(0, Relaxed))
                .and_then(Profile::from_wire)
        {
            // qnet_set_profile: the upstream schedule changes from here on.
            let old = f.ep.shaper.take();
            match Shaper::switch(old, want, Direction::Up, now) {
                Ok(sh) => f.ep.shaper = sh,
                Err(e) => {
                    qlog!(Error, "cannot reshape the stream to {}: {e}", f.dest);
                    let _ = l.reset(now, id, 1);
                    return Pumped::Finished;
                }
            }
        }
        let r = if f.open {
            f.ep.pump_down(now, l)
                .and_then(|_| f.ep.pump_up(now, l, room, &mut self.buf))
        } else {
            // Optimistic data: upstream only. Nothing comes down before the answer, and a
            // SOCKS client gets its reply first (written on OPEN_RESULT).
            let r = f.ep.pump_up(now, l, room, &mut self.buf);
            f.early |= l.stream_records(id).is_some_and(|(out, _)| out > 0);
            f.sent_first |= f.early || f.ep.read_eof;
            r
        };
        f.publish(l);
        self.timers.schedule(key, &mut f.ep, now, l);
        let failures = &mut self.stats.shaping_failures;
        if pump_failed(&r, failures, format_args!("to {}", f.dest)) {
            let _ = l.reset(now, id, 1);
            Pumped::Finished
        } else if f.ep.state() == PumpState::Done {
            Pumped::Finished
        } else if f.ep.readable
            && !f.ep.read_eof
            && l.stream_send_capacity(id) > 0
            // A full shaper waits for its schedule, not for another round.
            && f.ep.shaper.as_ref().is_none_or(|sh| sh.room() > 0)
        {
            Pumped::Again
        } else {
            Pumped::Idle
        }
    }

    /// A flow ended: count the delay its schedule added, then forget it.
    fn finished(&mut self, key: u64) {
        if let Some(f) = self.forget(key) {
            if let Some(sh) = &f.ep.shaper {
                self.stats.added_delay_ns += sh.stats().total_hold_ns;
            }
        }
    }

    /// Take a flow out of the loop (its socket closes when the returned flow drops).
    fn forget(&mut self, key: u64) -> Option<Flow> {
        let mut f = self.flows.remove(&key)?;
        let _ = f.ep.sock.deregister(self.poll.registry());
        self.by_token.remove(&f.ep.token);
        Some(f)
    }

    /// Point the shaped-departure timer at the earliest one; true when one is due
    /// already (poll without sleeping). If it cannot be armed, the flows waiting on it
    /// fail closed (see `engine::timers`).
    pub(super) fn arm_timer(&mut self, now: Instant) -> bool {
        let stranded = match self.timers.arm(now) {
            Ok(due) => return due,
            Err(stranded) => stranded,
        };
        for &(key, deadline) in stranded.entries() {
            let Some(sh) = self.flows.get_mut(&key).and_then(|f| f.ep.shaper.as_mut()) else {
                continue;
            };
            if !stranded.claim(sh, deadline, &mut self.stats.lateness) {
                continue;
            }
            self.stats.shaping_failures += 1;
            let serial = serial_of(key);
            if let Some(l) = self
                .tunnels
                .iter_mut()
                .find(|t| t.serial == serial)
                .and_then(|t| t.exit_mut())
            {
                let _ = l.reset(now, key as u32, 1);
            }
            self.finished(key);
            // The next round flushes the resets.
            self.busy = true;
        }
        false
    }

    /// Mark the flows whose departures are due, counting how late they are served; the
    /// pump that follows sends them.
    pub(super) fn expire_timers(&mut self, now: Instant) {
        let due = self.timers.expire(now);
        for &(key, deadline) in due.entries() {
            let Some(sh) = self.flows.get_mut(&key).and_then(|f| f.ep.shaper.as_mut()) else {
                continue;
            };
            if due.claim(sh, deadline, &mut self.stats.lateness) {
                self.dirty.insert(key);
            }
        }
    }
}

/// Move a tunnel's bytes between its hops and write them out; true when all is out. A
/// flush that empties the connection makes room for a route's inner output, which no
/// event brings back: it is moved and flushed again while that progresses (bounded).
fn flush_tunnel(t: &mut Tunnel, now: Instant, key: &[u8; 32]) -> Result<bool, String> {
    for _ in 0..8 {
        let moved = t.advance(now, key)?;
        let done = t.link.flush().map_err(|e| e.to_string())?;
        if let Some(e) = t.error() {
            return Err(e);
        }
        if !done || !moved || !t.inner_waiting() {
            return Ok(done);
        }
    }
    Ok(true)
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
