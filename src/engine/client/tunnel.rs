//! A tunnel: the session to a path's exit relay. For one relay that is the session over
//! TCP; for a route it is built by telescoping: the session to each later hop runs
//! inside a stream of the session before it, so the entry relay sees the client and
//! the next relay's address but only ciphertext, and the exit sees the destination but
//! only the previous relay's address. Every hop is authenticated by its pinned key.

use std::time::Instant;

use mio::Token;

use super::config::{Hop, parse_destination};
use crate::engine::{HIGH_WATER, Link};
use crate::proto::{Event, Role, Session, SessionConfig};

/// What a tunnel is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Built for new flows (racing others, Happy Eyeballs); the first up becomes current.
    Attempt,
    /// New flows go here.
    Current,
    /// Keeps the flows it has, takes no new ones; closed when they are gone.
    Draining,
    /// A health check of a path that is down: closed once up.
    Probe,
}

/// A session inside a stream of the session before it.
struct Nested {
    session: Session,
    /// The stream of the previous hop's session that carries this one.
    carrier: u32,
}

/// A chain of sessions to one path's hops over one TCP connection.
pub(super) struct Tunnel {
    /// Unique in this client: the high half of its flows' keys.
    pub(super) serial: u32,
    /// Which configured path.
    pub(super) path: usize,
    /// The connection to the entry relay and its session.
    pub(super) link: Link,
    /// The connection's poll token.
    pub(super) token: Token,
    /// Later hops' sessions, each inside a stream of the one before.
    inner: Vec<Nested>,
    /// Every hop of the path, entry first.
    hops: Vec<Hop>,
    /// The stream being opened on the last session to reach the next hop.
    extending: Option<u32>,
    /// Handed to each nested session.
    session_cfg: SessionConfig,
    /// When the TCP connect started.
    pub(super) started: Instant,
    pub(super) purpose: Purpose,
    /// When it became the current tunnel (its session's age in `qnet status`).
    pub(super) up_since: Option<Instant>,
    /// Since when liveness is watched (it has flows and there is somewhere else to go).
    pub(super) watch_since: Option<Instant>,
    /// It went silent while watched: its path is down and it takes no new flows.
    pub(super) suspect: bool,
}

impl Tunnel {
    /// A tunnel whose first session (to `hops[0]`) is `link`'s, for `purpose`.
    pub(super) fn new(
        (serial, path, purpose): (u32, usize, Purpose),
        link: Link,
        token: Token,
        hops: Vec<Hop>,
        session_cfg: SessionConfig,
        now: Instant,
    ) -> Tunnel {
        Tunnel {
            serial,
            path,
            link,
            token,
            inner: Vec::new(),
            hops,
            extending: None,
            session_cfg,
            started: now,
            purpose,
            up_since: None,
            watch_since: None,
            suspect: false,
        }
    }

    /// Sessions built so far (1 to hops).
    pub(super) fn depth(&self) -> usize {
        1 + self.inner.len()
    }

    fn session(&self, level: usize) -> &Session {
        match level {
            0 => &self.link.session,
            n => &self.inner[n - 1].session,
        }
    }

    fn session_mut(&mut self, level: usize) -> &mut Session {
        match level {
            0 => &mut self.link.session,
            n => &mut self.inner[n - 1].session,
        }
    }

    /// The session to the exit, once every hop has one.
    pub(super) fn exit(&self) -> Option<&Session> {
        (self.depth() == self.hops.len()).then(|| self.session(self.depth() - 1))
    }

    /// See [`Tunnel::exit`].
    pub(super) fn exit_mut(&mut self) -> Option<&mut Session> {
        let d = self.depth();
        (d == self.hops.len()).then(|| self.session_mut(d - 1))
    }

    /// The session to the exit is up: flows can open.
    pub(super) fn is_established(&self) -> bool {
        self.exit().is_some_and(Session::is_established)
    }

    /// Flows may write: the exit's unsent output is under [`HIGH_WATER`].
    pub(super) fn has_room(&self) -> bool {
        self.exit()
            .is_some_and(|s| s.transmit().len() < HIGH_WATER && self.link.has_room())
    }

    /// The last thing heard from the exit relay (through every hop).
    pub(super) fn last_received(&self) -> Instant {
        self.session(self.depth() - 1).last_received()
    }

    /// Any session's error, or the first hop still silent after msg1.
    pub(super) fn error(&self) -> Option<String> {
        (0..self.depth()).find_map(|l| {
            self.session(l)
                .error()
                .map(|e| format!("{}: {e}", self.hops[l].address))
        })
    }

    /// No byte came back from the hop now in its handshake (it stays silent to a msg1 it
    /// refuses).
    pub(super) fn is_unanswered(&self) -> bool {
        self.session(self.depth() - 1).is_unanswered()
    }

    /// The address of the hop whose session is being built (the exit once all are up).
    pub(super) fn frontier(&self) -> &str {
        &self.hops[self.depth() - 1].address
    }

    /// Earliest timer of any of its sessions.
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        (0..self.depth())
            .filter_map(|l| self.session(l).next_timeout())
            .min()
    }

    /// Run every session's timers.
    pub(super) fn handle_timeout(&mut self, now: Instant) -> Result<(), String> {
        for l in 0..self.depth() {
            let s = self.session_mut(l);
            if s.next_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now)
                    .map_err(|e| format!("{}: {e}", self.hops[l].address))?;
            }
        }
        Ok(())
    }

    /// Move bytes between the hops until nothing moves: carriers' data into the nested
    /// sessions, their output into the carriers, and the next hop opened when the last
    /// session is up. Returns true when anything moved. An error ends the tunnel.
    pub(super) fn advance(&mut self, now: Instant, local_key: &[u8; 32]) -> Result<bool, String> {
        let mut any = false;
        // Bounded: each round either moves bytes or stops; a carrier's credit bounds how
        // much one round can move.
        for _ in 0..64 {
            let mut moved = self.extend(now, local_key)?;
            for i in 0..self.inner.len() {
                moved |= self.carry_in(now, i)?;
            }
            for i in (0..self.inner.len()).rev() {
                moved |= self.carry_out(now, i)?;
            }
            if let Some(e) = self.error() {
                return Err(e);
            }
            if !moved {
                break;
            }
            any = true;
        }
        Ok(any)
    }

    /// Serve the events of every session but the exit's (the exit's belong to the
    /// client's flows): open the next hop when the last session is up.
    fn extend(&mut self, now: Instant, local_key: &[u8; 32]) -> Result<bool, String> {
        let mut moved = false;
        let carriers = if self.exit().is_some() {
            self.depth() - 1
        } else {
            self.depth()
        };
        for level in 0..carriers {
            while let Some(ev) = self.session_mut(level).poll_event() {
                moved = true;
                let carrier = if level + 1 < self.depth() {
                    Some(self.inner[level].carrier)
                } else {
                    self.extending
                };
                let next = self.hops[level + 1].address.clone();
                match ev {
                    Event::Connected { .. } if level + 1 == self.depth() => {
                        let dest = parse_destination(&next).map_err(|e| e.to_string())?;
                        let (stream, _) = self
                            .session_mut(level)
                            .open(now, dest, crate::sched::Profile::Performance.wire(), &[])
                            .map_err(|e| format!("cannot extend to {next}: {e}"))?;
                        self.extending = Some(stream);
                    }
                    Event::OpenResult { stream, result } if Some(stream) == carrier => {
                        if let Err(e) = result {
                            return Err(format!(
                                "{} refused to extend to {next}: {e}",
                                self.hops[level].address
                            ));
                        }
                        if self.extending == Some(stream) {
                            self.extending = None;
                            let session = Session::new(
                                now,
                                self.session_cfg.clone(),
                                Role::Client {
                                    relay_public: self.hops[level + 1].key,
                                },
                                local_key,
                                Box::new(crate::entropy::RingRandom),
                            );
                            self.inner.push(Nested {
                                session,
                                carrier: stream,
                            });
                        }
                    }
                    Event::Reset { stream, .. } if Some(stream) == carrier => {
                        return Err(format!(
                            "{} dropped the stream to {next}",
                            self.hops[level].address
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(moved)
    }

    /// Carrier data into nested session `i`.
    fn carry_in(&mut self, now: Instant, i: usize) -> Result<bool, String> {
        let (before, rest) = self.inner.split_at_mut(i);
        let outer = match before.last_mut() {
            Some(n) => &mut n.session,
            None => &mut self.link.session,
        };
        let nested = &mut rest[0];
        let Some((a, b)) = outer.peek(nested.carrier) else {
            return Err(format!(
                "{}: its carrier stream is gone",
                self.hops[i + 1].address
            ));
        };
        let n = a.len() + b.len();
        if n == 0 {
            if outer.is_read_finished(nested.carrier) {
                return Err(format!(
                    "{} closed the stream to {}",
                    self.hops[i].address,
                    self.hops[i + 1].address
                ));
            }
            return Ok(false);
        }
        let fed = nested
            .session
            .handle_input(now, a)
            .and_then(|()| nested.session.handle_input(now, b));
        outer
            .consume(now, nested.carrier, n)
            .map_err(|e| e.to_string())?;
        fed.map_err(|e| format!("{}: {e}", self.hops[i + 1].address))?;
        Ok(true)
    }

    /// Nested session `i`'s output into its carrier, as far as credit and room allow.
    fn carry_out(&mut self, now: Instant, i: usize) -> Result<bool, String> {
        let room = i > 0 || self.link.has_room();
        let (before, rest) = self.inner.split_at_mut(i);
        let outer = match before.last_mut() {
            Some(n) => &mut n.session,
            None => &mut self.link.session,
        };
        let nested = &mut rest[0];
        let out = nested.session.transmit();
        if out.is_empty() || !room || (i > 0 && outer.transmit().len() >= HIGH_WATER) {
            return Ok(false);
        }
        let n = outer
            .write(now, nested.carrier, out)
            .map_err(|e| format!("{}: {e}", self.hops[i].address))?;
        if n < out.len() {
            outer.want_writable(nested.carrier);
        }
        nested.session.transmit_done(n);
        Ok(n > 0)
    }

    /// A later hop's session has output its carrier has not taken yet.
    pub(super) fn inner_waiting(&self) -> bool {
        self.inner.iter().any(|n| !n.session.transmit().is_empty())
    }

    /// End every session; nothing more is sent.
    pub(super) fn close(&mut self) {
        for l in 0..self.depth() {
            self.session_mut(l).close();
        }
    }
}
