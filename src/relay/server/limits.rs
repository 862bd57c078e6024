//! The admission gate: caps on open connections and on new handshakes per second,
//! global and per source address, checked at accept before any X25519 work.
//!
//! Over a connection cap a new connection is closed at once (the relay holds no more
//! fds for it); over a handshake rate it becomes a sink: read and discarded until a
//! close time drawn like every unauthenticated connection's, with no session (so no
//! key work) behind it. docs/PROTOCOL.md (section 2, "Load") argues why that is enough.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use crate::config::ServerLimits;
use crate::relay::metrics::Limit;

/// What the gate decided for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Start its handshake.
    Handshake,
    /// Over a handshake rate (which one): drain it silently, without a session.
    Sink(Limit),
    /// Over a connection cap (which one): close it now.
    Close(Limit),
}

/// The address a per-address cap counts under: IPv4 as is, IPv6 by /64 (what one
/// host is usually given), v4-mapped as IPv4.
pub(super) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A token bucket of `rate` per second, holding at most `rate`.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant, rate: u32) -> Bucket {
        Bucket {
            tokens: f64::from(rate),
            at: now,
        }
    }

    /// Refill for the time since the last look.
    fn refill(&mut self, now: Instant, rate: u32) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * f64::from(rate)).min(f64::from(rate));
        self.at = now;
    }
}

/// The counts behind the caps.
pub(super) struct Gate {
    limits: ServerLimits,
    global: Bucket,
    per_addr: HashMap<IpAddr, Bucket>,
    open_per_addr: HashMap<IpAddr, u32>,
    open: u32,
    /// Connections closed or sunk by a cap, and the count last logged.
    refused: u64,
    reported: u64,
}

impl Gate {
    /// A gate with every bucket full.
    pub(super) fn new(limits: ServerLimits, now: Instant) -> Gate {
        Gate {
            limits,
            global: Bucket::full(now, limits.handshakes_per_sec),
            per_addr: HashMap::new(),
            open_per_addr: HashMap::new(),
            open: 0,
            refused: 0,
            reported: 0,
        }
    }

    /// The caps in force.
    pub(super) fn limits(&self) -> &ServerLimits {
        &self.limits
    }

    /// Judge a new connection from `src` (a [`source_key`]); unless told to close it,
    /// count it as open until [`Gate::closed`].
    pub(super) fn admit(&mut self, now: Instant, src: IpAddr) -> Admit {
        let l = self.limits;
        let open_here = self.open_per_addr.get(&src).copied().unwrap_or(0);
        if self.open >= l.max_connections {
            self.refused += 1;
            return Admit::Close(Limit::MaxConnections);
        }
        if open_here >= l.max_connections_per_addr {
            self.refused += 1;
            return Admit::Close(Limit::MaxConnectionsPerAddr);
        }
        self.open += 1;
        *self.open_per_addr.entry(src).or_insert(0) += 1;
        // Forget addresses whose buckets have refilled, so the map holds only the
        // addresses seen in the last second or so.
        if self.per_addr.len() > 2 * l.max_connections as usize {
            let rate = l.handshakes_per_sec_per_addr;
            self.per_addr.retain(|_, b| {
                b.refill(now, rate);
                b.tokens < f64::from(rate)
            });
        }
        self.global.refill(now, l.handshakes_per_sec);
        let b = self
            .per_addr
            .entry(src)
            .or_insert_with(|| Bucket::full(now, l.handshakes_per_sec_per_addr));
        b.refill(now, l.handshakes_per_sec_per_addr);
        if self.global.tokens < 1.0 {
            self.refused += 1;
            return Admit::Sink(Limit::HandshakesPerSec);
        }
        if b.tokens < 1.0 {
            self.refused += 1;
            return Admit::Sink(Limit::HandshakesPerSecPerAddr);
        }
        self.global.tokens -= 1.0;
        b.tokens -= 1.0;
        Admit::Handshake
    }

    /// A connection [`Gate::admit`] counted has closed.
    pub(super) fn closed(&mut self, src: IpAddr) {
        self.open = self.open.saturating_sub(1);
        if let Some(n) = self.open_per_addr.get_mut(&src) {
            *n -= 1;
            if *n == 0 {
                self.open_per_addr.remove(&src);
            }
        }
    }

    /// The refusals to log now, if any: at the 1st, 2nd, 4th, 8th … so a flood cannot
    /// flood the log too.
    pub(super) fn report_due(&mut self) -> Option<u64> {
        if self.refused > 0 && self.refused >= self.reported * 2 {
            self.reported = self.refused;
            return Some(self.refused);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> ServerLimits {
        ServerLimits {
            max_connections: 10,
            max_connections_per_addr: 4,
            handshakes_per_sec: 6,
            handshakes_per_sec_per_addr: 3,
            ..ServerLimits::default()
        }
    }

    #[test]
    fn caps_close_rates_sink_and_both_recover() {
        let t0 = Instant::now();
        let mut g = Gate::new(limits(), t0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let got: Vec<Admit> = (0..5).map(|_| g.admit(t0, a)).collect();
        use Admit::*;
        use Limit::*;
        let (rate_here, open_here) = (HandshakesPerSecPerAddr, MaxConnectionsPerAddr);
        assert_eq!(
            got,
            [
                Handshake,
                Handshake,
                Handshake,
                Sink(rate_here),
                Close(open_here)
            ]
        );
        // Another address has its own per-address bucket but shares the global one.
        let got: Vec<Admit> = (0..4).map(|_| g.admit(t0, b)).collect();
        let rate = Sink(HandshakesPerSec);
        // Both buckets are empty now: the global one is named.
        assert_eq!(got, [Handshake, Handshake, Handshake, rate]);
        assert_eq!(g.admit(t0, "10.0.0.3".parse().unwrap()), rate);
        assert_eq!(g.admit(t0, "10.0.0.4".parse().unwrap()), rate);
        let e: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(g.admit(t0, e), Close(MaxConnections), "global cap");
        g.closed(a);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(g.admit(later, a), Handshake);
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_v4_as_v4() {
        let k = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2:3:4:5:6"), k("2001:db8:1:2:ffff::1"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.7"), k("192.0.2.7"));
    }
}
