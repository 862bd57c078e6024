//! The tunnels to the relays: connecting one (directly, through the jail's broker or an
//! upstream SOCKS5 proxy), reading it, its timers, and what its end means for its flows.
//! Which path a tunnel goes to, and when, is `paths.rs`.

use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::Interest;
use mio::net::TcpStream;

use super::flows::{Pending, flow_range};
use super::tunnel::{Purpose, Tunnel};
use super::{Client, Failure, parse_destination, relay_address};
use crate::engine::{Link, LinkRead};
use crate::proto::{Role, Session};
use crate::qlog;

/// Make `link` (connected to the upstream proxy `u`) ask the proxy for `entry` first.
pub(super) fn through_upstream(
    link: &mut Link,
    u: &crate::config::Upstream,
    entry: &str,
) -> Result<(), super::DestinationError> {
    let target = parse_destination(entry)?;
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
    Ok(())
}

impl Client {
    /// Start a tunnel to path `p` (its handshake runs as the socket becomes writable).
    /// False when no connection could even start; the path is then down.
    pub(super) fn start_tunnel(&mut self, now: Instant, p: usize, purpose: Purpose) -> bool {
        if let Some(why) = self.tor.as_ref().and_then(|t| t.ready().err()) {
            // Tor would hold the SOCKS request until it can build circuits, or fail it:
            // nothing is dialled until it says it has bootstrapped. One line per outage,
            // in place of the "relay unusable" line that would blame the relay.
            if !self.told_down && crate::engine::log::enabled(crate::config::LogLevel::Error) {
                crate::engine::log::write_line(format_args!(
                    "qnet: {why}; tunneled connections fail, nothing is sent"
                ));
            }
            self.told_down = true;
            // Not the relay's fault: no backoff grows and nothing goes to the shared
            // health file, so the path is tried again as soon as Tor is ready.
            self.health.hold(p, now);
            self.last_failure = Some(why);
            return false;
        }
        let path = &self.cfg.paths[p];
        let entry = path.hops[0].clone();
        // With an upstream proxy the TCP connection goes to it, and it connects to the relay.
        let first_hop = self
            .cfg
            .upstream
            .as_ref()
            .map_or(entry.address.clone(), |u| u.proxy.clone());
        let sock = if crate::jail::active() {
            // In `qnet run`'s jail there is no route out: the parent outside dials (and
            // resolves) the first hop and hands the socket in.
            crate::jail::dial(&first_hop)
                .map(|fd| std::net::TcpStream::from(crate::engine::sys::to_engine_range(fd)))
                .map_err(|e| format!("the jail's broker cannot connect to {first_hop}: {e}"))
        } else {
            match relay_address(&first_hop) {
                // Through the next connect() in load order, never a preloaded app's hooks
                // first: chaining with proxychains-ng depends on it (docs/ARCHITECTURE.md).
                Ok(addr) => crate::engine::sys::connect_next(addr)
                    .map_err(|e| format!("cannot connect to {first_hop} ({addr}): {e}")),
                Err(e) => {
                    qlog!(Error, "cannot resolve {first_hop}: {e}");
                    Err(format!("{first_hop} does not resolve: {e}"))
                }
            }
        };
        let mut sock = match sock {
            Ok(s) => TcpStream::from_std(s),
            Err(why) => {
                self.path_failed(now, p, &why);
                return false;
            }
        };
        let _ = sock.set_nodelay(true);
        self.observer.internal_fd(sock.as_raw_fd());
        let token = self.token();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
        {
            self.path_failed(now, p, &format!("register: {e}"));
            return false;
        }
        let session = Session::new(
            now,
            self.cfg.session.clone(),
            Role::Client {
                relay_public: entry.key,
            },
            self.cfg.key.as_bytes(),
            Box::new(crate::entropy::RingRandom),
        );
        let mut link = Link::new(sock, session);
        if let Some(u) = &self.cfg.upstream {
            if let Err(e) = through_upstream(&mut link, u, &entry.address) {
                let _ = self.poll.registry().deregister(&mut link.sock);
                self.path_failed(now, p, &e.to_string());
                return false;
            }
        }
        self.next_serial += 1;
        let hops = self.cfg.paths[p].hops.clone();
        let t = Tunnel::new(
            (self.next_serial, p, purpose),
            link,
            token,
            hops,
            self.cfg.session.clone(),
            now,
        );
        qlog!(
            Debug,
            "connecting to {} ({purpose:?})",
            self.cfg.paths[p].name()
        );
        self.tunnels.push(t);
        true
    }

    /// Tunnel `i`'s connection is readable: feed its sessions, or end it.
    pub(super) fn tunnel_event(&mut self, now: Instant, i: usize, readable: bool) {
        let t = &mut self.tunnels[i];
        let serial = t.serial;
        if readable {
            let why = match t.link.read_in(now, &mut self.buf) {
                Ok(LinkRead::Drained) => None,
                // A relay stays silent to a msg1 it refuses, then closes: say why that may be.
                Ok(LinkRead::Eof) if t.is_unanswered() => Some(format!(
                    "{}: {}",
                    t.frontier(),
                    crate::proto::SessionError::Unanswered
                )),
                Ok(LinkRead::Eof) => Some("relay closed the connection".to_owned()),
                Ok(LinkRead::Failed(e)) => Some(e.to_string()),
                Ok(LinkRead::ProxyFailed(e)) => Some(format!("upstream proxy: {e}")),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = why {
                return self.tunnel_down(now, serial, &why);
            }
        }
        if let Err(why) = t.advance(now, self.cfg.key.as_bytes()) {
            self.tunnel_down(now, serial, &why);
        }
    }

    /// Serve every tunnel's session timers (keepalive, idle timeout, rekey, handshake).
    pub(super) fn tunnel_timeouts(&mut self, now: Instant) {
        let mut failed = Vec::new();
        for t in &mut self.tunnels {
            if t.next_timeout().is_some_and(|d| d <= now) {
                if let Err(e) = t.handle_timeout(now) {
                    failed.push((t.serial, e));
                }
            }
        }
        for (serial, why) in failed {
            self.tunnel_down(now, serial, &why);
        }
    }

    /// Which Tor circuit and exit carry tunnel `i`: logged at info by the watcher, which
    /// matches the tunnel's local address with Tor's STREAM events (`SOURCE_ADDR`).
    fn tell_tor_circuit(&self, i: usize) {
        if let (Some(tor), Ok(local)) = (&self.tor, self.tunnels[i].link.sock.local_addr()) {
            tor.tell_circuit(local);
        }
    }

    /// The tunnel's exit session is up: what that means depends on what it was for.
    pub(super) fn tunnel_up(&mut self, now: Instant, serial: u32) {
        let Some(i) = self.tunnel_index(serial) else {
            return;
        };
        let p = self.tunnels[i].path;
        let name = self.cfg.paths[p].name();
        match self.tunnels[i].purpose {
            Purpose::Probe => {
                let back = self.health.probe_ok(p, now);
                if back {
                    qlog!(Info, "relay {name} is back");
                    self.share_up(p, now);
                }
                self.drop_tunnel(serial);
            }
            Purpose::Attempt => {
                if self.health.mark_up(p) {
                    qlog!(Info, "relay {name} is back");
                    self.share_up(p, now);
                }
                qlog!(Info, "session to {name} established");
                self.tell_tor_circuit(i);
                // The race is won: the others go (they carry no flows), the old current
                // drains. Those that started first lost to a later start: too slow, down.
                let started = self.tunnels[i].started;
                let losers: Vec<(u32, bool)> = self
                    .tunnels
                    .iter()
                    .filter(|t| t.purpose == Purpose::Attempt && t.serial != serial)
                    .map(|t| (t.serial, t.started < started))
                    .collect();
                for (l, slow) in losers {
                    if slow {
                        self.tunnel_down(now, l, "its handshake lost a race to a later start");
                    } else {
                        self.drop_tunnel(l);
                    }
                }
                for t in &mut self.tunnels {
                    if t.purpose == Purpose::Current {
                        t.purpose = Purpose::Draining;
                    }
                }
                let i = self.tunnel_index(serial).expect("still there");
                self.tunnels[i].purpose = Purpose::Current;
                self.tunnels[i].up_since = Some(now);
                self.tried.clear();
                if let Ok(a) = self.tunnels[i].link.sock.local_addr() {
                    self.observer.relay_local(a.ip());
                }
                self.stats.sessions += 1;
            }
            Purpose::Current | Purpose::Draining => {}
        }
    }

    /// A tunnel failed: its path is down, its flows fail (those the relay never answered
    /// go back to wait for another tunnel) and, if it was new flows' way out, another
    /// is found.
    pub(super) fn tunnel_down(&mut self, now: Instant, serial: u32, why: &str) {
        let Some(i) = self.tunnel_index(serial) else {
            return;
        };
        let p = self.tunnels[i].path;
        let purpose = self.tunnels[i].purpose;
        let name = self.cfg.paths[p].name();
        self.close_tunnel(i);
        let flows = self.flows_of(serial);
        let requeued = self.take_back(&flows);
        self.fail_flows_of(&flows, libc::ECONNRESET);
        // Never send a second copy of a stream's first bytes: only flows that had none go back.
        for (_, p) in requeued.into_iter().rev() {
            self.waiting.push_front(p);
        }
        self.path_failed(now, p, why);
        if purpose == Purpose::Probe {
            qlog!(Debug, "probe of {name} failed: {why}");
        }
    }

    /// Path `p` failed for `purpose`: mark it down (shared with this user's other
    /// processes) and, when flows are left without a way out, say so once.
    pub(super) fn path_failed(&mut self, now: Instant, p: usize, why: &str) {
        let name = self.cfg.paths[p].name();
        if self.health.mark_down(p, now) {
            qlog!(Info, "relay {name} marked down: {why}");
        } else {
            qlog!(Debug, "relay {name} still down: {why}");
        }
        let until = match self.health.state(p) {
            super::health::State::Down { retry_at, .. } => Some(retry_at),
            super::health::State::Up => None,
        };
        if let Some(u) = until {
            self.share_until(p, u, now);
        }
        self.last_failure = Some(format!("{name}: {why}"));
    }

    /// The waiting flows have no way out: every path was tried in this round and failed.
    pub(super) fn give_up_waiting(&mut self) {
        let failing = self.waiting.iter().any(|w| w.app.is_some());
        let why = self
            .last_failure
            .clone()
            .unwrap_or_else(|| "no relay".into());
        if failing && !self.told_down {
            if crate::engine::log::enabled(crate::config::LogLevel::Error) {
                // XK lets a relay stay silent to a key it refuses: the client cannot tell
                // a refusal from a dead relay for sure, so it names the likely causes.
                let hint = if self.stats.streams_ok == 0 {
                    " (check the relay address and key, and that this client's key is on its list)"
                } else {
                    ""
                };
                let which = if self.cfg.paths.len() == 1 {
                    format!("relay {}", self.cfg.paths[0].name())
                } else {
                    format!("all {} relay paths", self.cfg.paths.len())
                };
                crate::engine::log::write_line(format_args!(
                    "qnet: {which} unusable: {why}{hint}; tunneled connections fail, nothing is sent directly"
                ));
            }
            self.told_down = true;
        }
        self.stats.streams_failed += self.waiting.len() as u64;
        for mut p in self.waiting.drain(..) {
            if p.socks {
                super::socks::socks_reply(&mut p.sock, Err(crate::proto::OpenError::Failure));
            }
            match p.app {
                Some(app) => app.finish(Err(Failure::Errno(libc::ECONNREFUSED))),
                None => p.sock.reset_on_close(None),
            }
        }
    }

    /// A tunnel went silent: its flows that the relay never answered (and that sent
    /// nothing) are opened elsewhere; their streams there are reset.
    pub(super) fn requeue(&mut self, serial: u32, now: Instant) {
        let keys = self.flows_of(serial);
        let back = self.take_back(&keys);
        if let Some(s) = self
            .tunnel_index(serial)
            .and_then(|i| self.tunnels[i].exit_mut())
        {
            for (k, _) in &back {
                let _ = s.reset(now, *k as u32, 1);
            }
        }
        for (_, p) in back.into_iter().rev() {
            self.waiting.push_front(p);
        }
    }

    /// Flows of a failed tunnel that the relay never answered and that sent nothing: they
    /// go back to the queue (their sockets deregistered), to be opened elsewhere.
    fn take_back(&mut self, keys: &[u64]) -> Vec<(u64, Pending)> {
        let mut back = Vec::new();
        for &k in keys {
            if !self.flows.get(&k).is_some_and(|f| f.may_retry()) {
                continue;
            }
            let Some(mut f) = self.flows.remove(&k) else {
                continue;
            };
            let _ = f.ep.sock.deregister(self.poll.registry());
            self.by_token.remove(&f.ep.token);
            self.dirty.remove(&k);
            self.stalled.remove(&k);
            back.push((k, f.into_pending()));
        }
        back
    }

    /// Fail flows `keys`: app connects not yet answered fail with `errno`; every other
    /// local socket is closed as a reset (the program reads ECONNRESET, as from a TCP
    /// peer that died, never a clean EOF that would pass a cut-off stream for a whole
    /// one) and open flows are counted lost.
    pub(super) fn fail_flows_of(&mut self, keys: &[u64], errno: i32) {
        for k in keys {
            let Some(mut f) = self.flows.remove(k) else {
                continue;
            };
            let _ = f.ep.sock.deregister(self.poll.registry());
            self.by_token.remove(&f.ep.token);
            self.dirty.remove(k);
            self.stalled.remove(k);
            if let Some(c) = &f.ep.counters {
                c.mark_lost();
            }
            match f.app.take() {
                Some(app) => app.finish(Err(Failure::Errno(errno))),
                None => f.ep.sock.reset_on_close(f.ep.counters.as_ref()),
            }
            self.stats.streams_failed += 1;
        }
    }

    /// Every flow and every waiting socket fails (a panic, the loop ending).
    pub(super) fn fail_all(&mut self, errno: i32) {
        let keys: Vec<u64> = self.flows.keys().copied().collect();
        self.fail_flows_of(&keys, errno);
        self.stats.streams_failed += self.waiting.len() as u64;
        for p in self.waiting.drain(..) {
            match p.app {
                Some(app) => app.finish(Err(Failure::Errno(errno))),
                None => p.sock.reset_on_close(None),
            }
        }
    }

    /// Close and forget tunnel `serial` (a probe done, a race lost, a drained one).
    pub(super) fn drop_tunnel(&mut self, serial: u32) {
        if let Some(i) = self.tunnel_index(serial) {
            self.close_tunnel(i);
        }
    }

    /// Take tunnel `i` out of the loop (keeping its counters) and tell the observer
    /// when no tunnel is left.
    fn close_tunnel(&mut self, i: usize) {
        let mut t = self.tunnels.remove(i);
        t.close();
        let _ = self.poll.registry().deregister(&mut t.link.sock);
        if let Some(s) = t.exit() {
            let st = s.stats();
            let c = &mut self.closed;
            c.bytes_sent += st.bytes_sent;
            c.bytes_received += st.bytes_received;
            c.records_sent += st.records_sent;
            c.records_received += st.records_received;
            c.padding_sent += st.padding_sent;
        }
        if !self.tunnels.iter().any(|t| t.purpose == Purpose::Current) {
            self.observer.down(&self.stats, &self.closed);
        }
    }

    /// Close every tunnel (the loop ends or recovers from a panic).
    pub(super) fn close_all(&mut self) {
        while !self.tunnels.is_empty() {
            self.close_tunnel(0);
        }
    }

    /// The keys of tunnel `serial`'s flows.
    pub(super) fn flows_of(&self, serial: u32) -> Vec<u64> {
        self.flows
            .range(flow_range(serial))
            .map(|(&k, _)| k)
            .collect()
    }

    /// Where tunnel `serial` is in the list.
    pub(super) fn tunnel_index(&self, serial: u32) -> Option<usize> {
        self.tunnels.iter().position(|t| t.serial == serial)
    }

    /// Tell this user's other processes that path `p` is up again.
    fn share_up(&self, p: usize, now: Instant) {
        if let Some(f) = &self.cfg.health_file {
            let id = super::shared::path_id(&self.cfg.paths[p].hops);
            super::shared::record(f, &id, None, self.unix_ms(now));
        }
    }

    /// Tell this user's other processes that path `p` is down until `until`.
    fn share_until(&self, p: usize, until: Instant, now: Instant) {
        if let Some(f) = &self.cfg.health_file {
            let id = super::shared::path_id(&self.cfg.paths[p].hops);
            let ms = self.unix_ms(now);
            let ahead = until.saturating_duration_since(now).as_millis() as u64;
            super::shared::record(f, &id, Some(ms + ahead), ms);
        }
    }

    /// `now` as unix milliseconds, by the sessions' wall clock: the shared file's clock,
    /// since processes share no `Instant`.
    pub(super) fn unix_ms(&self, now: Instant) -> u64 {
        self.cfg.session.clock.unix(now).as_millis() as u64
    }

    /// Learn from this user's other processes which paths are down.
    pub(super) fn learn_shared(&mut self, now: Instant) {
        let ms = self.unix_ms(now);
        let Some(f) = &self.cfg.health_file else {
            return;
        };
        let down = super::shared::read(f, ms);
        for (p, path) in self.cfg.paths.iter().enumerate() {
            let id = super::shared::path_id(&path.hops);
            if let Some((_, until)) = down.iter().find(|(d, _)| *d == id) {
                let ahead = std::time::Duration::from_millis(until - ms);
                qlog!(
                    Debug,
                    "relay {} is down, as another process found",
                    path.name()
                );
                self.health.learned_down(p, now + ahead);
            }
        }
    }
}
