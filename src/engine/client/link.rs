//! The session to the relay: connect (directly or through an upstream SOCKS5 proxy),
//! read it, and when it drops fail its flows and retry with backoff.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::Interest;
use mio::net::TcpStream;

use super::{Client, Failure, parse_destination, relay_address};
use crate::engine::{Link, LinkRead};
use crate::proto::{Role, Session};
use crate::qlog;

/// The first retry after a session drops; each failure doubles it up to [`MAX_BACKOFF`].
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Client {
    /// Start a session to the relay (the handshake runs as the socket becomes writable).
    pub(super) fn connect_relay(&mut self, now: Instant) {
        self.retry_at = None;
        // With an upstream proxy the TCP connection goes to it, and it connects to the relay.
        let first_hop = self
            .cfg
            .upstream
            .as_ref()
            .map_or(self.cfg.relay.as_str(), |u| u.proxy.as_str());
        let sock = if crate::jail::active() {
            // In `qnet run`'s jail there is no route out: the parent outside dials (and
            // resolves) the first hop and hands the socket in.
            crate::jail::dial(first_hop)
                .map(|fd| std::net::TcpStream::from(crate::engine::sys::to_engine_range(fd)))
                .map_err(|e| format!("the jail's broker cannot connect to {first_hop}: {e}"))
        } else {
            match relay_address(first_hop) {
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
            Err(why) => return self.link_down(now, &why),
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
        let mut link = Link::new(sock, session);
        if let Some(u) = &self.cfg.upstream {
            let target = match parse_destination(&self.cfg.relay) {
                Ok(d) => d,
                Err(e) => return self.link_down(now, &e.to_string()),
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

    /// The transport is readable: feed the session, or take the link down.
    pub(super) fn link_event(&mut self, now: Instant, readable: bool) {
        let Some(l) = self.link.as_mut() else {
            return;
        };
        if readable {
            match l.read_in(now, &mut self.buf) {
                Ok(LinkRead::Drained) => {}
                // A relay stays silent to a msg1 it refuses, then closes: say why that may be.
                Ok(LinkRead::Eof) if l.session.is_unanswered() => {
                    self.link_down(now, &crate::proto::SessionError::Unanswered.to_string())
                }
                Ok(LinkRead::Eof) => self.link_down(now, "relay closed the connection"),
                Ok(LinkRead::Failed(e)) => self.link_down(now, &e.to_string()),
                Ok(LinkRead::ProxyFailed(e)) => {
                    self.link_down(now, &format!("upstream proxy: {e}"))
                }
                Err(e) => self.link_down(now, &e.to_string()),
            }
        }
    }

    /// Serve the session's timers (keepalive, idle timeout, rekey).
    pub(super) fn link_timeout(&mut self, now: Instant) {
        let Some(l) = self.link.as_mut() else {
            return;
        };
        if l.session.next_timeout().is_some_and(|t| t <= now) {
            if let Err(e) = l.session.handle_timeout(now) {
                self.link_down(now, &e.to_string());
            }
        }
    }

    /// The session is up: the next outage is reported again and retries start over.
    pub(super) fn link_up(&mut self) {
        qlog!(Info, "session to {} established", self.cfg.relay);
        if let Some(a) = self.link.as_ref().and_then(|l| l.sock.local_addr().ok()) {
            self.observer.relay_local(a.ip());
        }
        self.stats.sessions += 1;
        self.backoff = FIRST_BACKOFF;
    }

    /// Between a failed session and its retry a new local socket fails at once (no relay,
    /// no connection: nothing is sent directly); counts it and says so.
    pub(super) fn refuse_while_down(&mut self) -> bool {
        let down = self.link.is_none() && self.retry_at.is_some();
        if down {
            self.stats.streams_failed += 1;
        }
        down
    }

    /// The session is gone: fail its flows and the waiting sockets, retry later.
    pub(super) fn link_down(&mut self, now: Instant, why: &str) {
        qlog!(Info, "relay session down: {why}");
        // The one line an app user sees when tunneled connects fail for want of a relay
        // (once per outage). A session that never opened a stream may have had its key
        // refused: XK lets the relay stay silent, so the client cannot tell for sure.
        let failing = self.flows.values().any(|f| f.app.is_some())
            || self.waiting.iter().any(|w| w.app.is_some());
        if failing && !self.told_down {
            if crate::engine::log::enabled(crate::config::LogLevel::Error) {
                let hint = if self.stats.streams_ok == 0 {
                    " (check the relay address and key, and that this client's key is on its list)"
                } else {
                    ""
                };
                crate::engine::log::write_line(format_args!(
                    "qnet: relay {} unusable: {why}{hint}; tunneled connections fail, nothing is sent directly",
                    self.cfg.relay
                ));
            }
            self.told_down = true;
        }
        self.close_link();
        self.fail_flows(libc::ECONNREFUSED);
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Drop the session (keeping its counters) and tell the observer it is down.
    pub(super) fn close_link(&mut self) {
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
    }

    /// Fail every flow and every socket waiting for the session: app connects not yet
    /// answered fail with `errno`; every other local socket is closed as a reset (the
    /// program reads ECONNRESET, as from a TCP peer that died, never a clean EOF that
    /// would pass a cut-off stream for a whole one) and open flows are counted lost.
    pub(super) fn fail_flows(&mut self, errno: i32) {
        for (_, mut f) in self.flows.drain() {
            let _ = f.ep.sock.deregister(self.poll.registry());
            if let Some(c) = &f.ep.counters {
                c.mark_lost();
            }
            match f.app.take() {
                Some(app) => app.finish(Err(Failure::Errno(errno))),
                None => f.ep.sock.reset_on_close(f.ep.counters.as_ref()),
            }
            self.stats.streams_failed += 1;
        }
        self.by_token.clear();
        self.stats.streams_failed += self.waiting.len() as u64;
        for p in self.waiting.drain(..) {
            match p.app {
                Some(app) => app.finish(Err(Failure::Errno(errno))),
                None => p.sock.reset_on_close(None),
            }
        }
    }
}
