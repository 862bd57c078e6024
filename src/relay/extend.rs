//! Extends: an OPEN whose destination is a relay this relay was told to serve as a
//! middle hop for (`[server] relays`, `qnet-relay --extend-to`). Pure, like the exit
//! policy it stands beside: the loop asks [`ExtendPolicy::judge`] before the exit policy.
//!
//! An extend is dialled directly (never through an exit proxy), whatever the exit
//! policy says of that address, and starts with a preamble (`proto::preamble`) sealed to
//! the next relay's key that tells it its position in the route; any other OPEN is
//! judged by the exit policy alone, so a relay with `exit_allow` naming no destination
//! serves only as a middle. A relay never extends to itself (its own port on any of its
//! addresses, loopback and unspecified included), never straight back to the address a
//! session came from, and never from the third position: a route has at most three
//! hops, so it cannot loop either (a loop needs a fourth).

use std::net::{IpAddr, SocketAddr};

use crate::config::Hop;
use crate::engine::client::parse_destination;
use crate::net::{HostKind, classify_host};
use crate::proto::Destination;

/// The most hops a route has; a relay at this position never extends.
pub const MAX_HOPS: u8 = 3;

/// What [`ExtendPolicy::judge`] concluded of an OPEN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extend {
    /// Not a listed relay: the exit policy decides.
    NotARelay,
    /// A listed relay: dial it, sending a preamble sealed to `key`.
    Allowed {
        /// The next relay's static public key.
        key: [u8; 32],
    },
    /// A listed relay this session may not extend to (the reason, for the log).
    Refused(&'static str),
}

/// The relays this relay extends to, and what it knows of itself.
#[derive(Debug, Clone, Default)]
pub struct ExtendPolicy {
    /// Each relay as [`normal`] spells it, and its key.
    relays: Vec<(Destination, [u8; 32])>,
    /// This host's addresses (canonical), refreshed with the exit policy's.
    own: Vec<IpAddr>,
    /// The port this relay listens on.
    port: u16,
}

impl ExtendPolicy {
    /// The policy for `relays` (`host:port`, IPv6 as `[addr]:port`, as the config checked).
    ///
    /// # Errors
    /// An entry that is not `host:port`.
    pub fn new(relays: &[Hop]) -> Result<ExtendPolicy, String> {
        let mut listed = Vec::with_capacity(relays.len());
        for hop in relays {
            let dest = parse_destination(&hop.address).map_err(|e| format!("relay {e}"))?;
            listed.push((normal(&dest), hop.key.0));
        }
        Ok(ExtendPolicy {
            relays: listed,
            ..ExtendPolicy::default()
        })
    }

    /// No relay is listed: this relay never extends.
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// This relay listens on `port` of `own` (every address of every interface).
    pub fn set_own(&mut self, own: impl IntoIterator<Item = IpAddr>, port: u16) {
        self.own = own.into_iter().map(|a| a.to_canonical()).collect();
        self.port = port;
    }

    /// Whether an OPEN to `dest` on a session from `from`, this relay being hop
    /// `position` of the route (1: the client connected directly), is an extend, and
    /// allowed.
    pub fn judge(&self, dest: &Destination, from: IpAddr, position: u8) -> Extend {
        let want = normal(dest);
        let Some(&(_, key)) = self.relays.iter().find(|(l, _)| *l == want) else {
            return Extend::NotARelay;
        };
        if position >= MAX_HOPS {
            return Extend::Refused("the route has three hops already");
        }
        if let Destination::Addr(a) = dest {
            let ip = a.ip().to_canonical();
            if a.port() == self.port
                && (ip.is_loopback() || ip.is_unspecified() || self.own.contains(&ip))
            {
                return Extend::Refused("it is this relay");
            }
            if ip == from.to_canonical() {
                return Extend::Refused("it is where the session came from");
            }
        }
        Extend::Allowed { key }
    }
}

/// One spelling per relay, so no other spelling of a listed relay reaches it as an
/// exit (with no preamble, as a route's first hop): IPv4-mapped addresses as IPv4, a
/// name that is an address in any form (`net::classify_host`) as that address, other
/// names in lower case without a trailing dot.
pub(crate) fn normal(dest: &Destination) -> Destination {
    let addr = |ip: IpAddr, port| Destination::Addr(SocketAddr::new(ip.to_canonical(), port));
    match dest {
        Destination::Addr(a) => addr(a.ip(), a.port()),
        Destination::Name(n, p) => match classify_host(n) {
            HostKind::Addr(ip) => addr(ip, *p),
            _ => Destination::Name(n.trim_end_matches('.').to_ascii_lowercase(), *p),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Destination {
        Destination::Addr(s.parse().unwrap())
    }

    fn policy(relays: &[&str]) -> ExtendPolicy {
        let hops: Vec<Hop> = relays
            .iter()
            .enumerate()
            .map(|(i, a)| Hop {
                address: (*a).to_owned(),
                key: crate::keys::PublicKey([i as u8 + 1; 32]),
            })
            .collect();
        ExtendPolicy::new(&hops).unwrap()
    }

    #[test]
    fn only_listed_relays_are_extends_and_each_with_its_key() {
        let p = policy(&[
            "10.0.0.2:7000",
            "Relay-B.example:7000",
            "[2001:db8::1]:7000",
        ]);
        let from: IpAddr = "192.0.2.9".parse().unwrap();
        let first = Extend::Allowed { key: [1; 32] };
        assert_eq!(p.judge(&addr("10.0.0.2:7000"), from, 1), first);
        assert_eq!(p.judge(&addr("[::ffff:10.0.0.2]:7000"), from, 1), first);
        assert_eq!(p.judge(&addr("10.0.0.2:7001"), from, 1), Extend::NotARelay);
        assert_eq!(p.judge(&addr("10.0.0.3:7000"), from, 1), Extend::NotARelay);
        assert_eq!(
            p.judge(&addr("[2001:db8::1]:7000"), from, 2),
            Extend::Allowed { key: [3; 32] }
        );
        let name = Destination::Name("relay-b.EXAMPLE".into(), 7000);
        assert_eq!(p.judge(&name, from, 1), Extend::Allowed { key: [2; 32] });
        let other = Destination::Name("relay-c.example".into(), 7000);
        assert_eq!(p.judge(&other, from, 1), Extend::NotARelay);
        // Another spelling of a listed relay is that relay, not an exit.
        for spelling in ["10.0.0.2", "0x0a.2", "167772162", "[::ffff:10.0.0.2]"] {
            let d = Destination::Name(spelling.into(), 7000);
            assert_eq!(p.judge(&d, from, 1), first, "{spelling}");
            assert_eq!(
                p.judge(&d, from, 3),
                Extend::Refused("the route has three hops already"),
                "{spelling}"
            );
        }
        let dotted = Destination::Name("relay-b.example.".into(), 7000);
        assert_eq!(p.judge(&dotted, from, 1), Extend::Allowed { key: [2; 32] });
        let bad = Hop {
            address: "nonsense".into(),
            key: crate::keys::PublicKey([0; 32]),
        };
        assert!(ExtendPolicy::new(&[bad]).is_err());
        assert!(ExtendPolicy::new(&[]).unwrap().is_empty());
    }

    #[test]
    fn never_to_itself_nor_straight_back_nor_past_three_hops() {
        let mut p = policy(&["10.0.0.1:7000", "10.0.0.2:7000", "127.0.0.1:7000"]);
        p.set_own(["10.0.0.1".parse().unwrap()], 7000);
        let client: IpAddr = "192.0.2.9".parse().unwrap();
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let me = Extend::Refused("it is this relay");
        assert_eq!(p.judge(&addr("10.0.0.1:7000"), client, 1), me);
        assert_eq!(p.judge(&addr("127.0.0.1:7000"), client, 1), me);
        assert_eq!(
            p.judge(&addr("10.0.0.2:7000"), a, 2),
            Extend::Refused("it is where the session came from")
        );
        assert_eq!(
            p.judge(&addr("10.0.0.2:7000"), client, 2),
            Extend::Allowed { key: [2; 32] }
        );
        // The third hop extends no further, whatever a client asks.
        for position in [3, 4, 200] {
            assert_eq!(
                p.judge(&addr("10.0.0.2:7000"), client, position),
                Extend::Refused("the route has three hops already")
            );
        }
        // An address that is not listed stays the exit policy's, at any position.
        assert_eq!(p.judge(&addr("10.9.9.9:80"), client, 3), Extend::NotARelay);
    }
}
