//! Extends: an OPEN whose destination is a relay this relay was told to serve as a
//! middle hop for (`[server] relays`, `qnet-relay --extend-to`). Pure, like the exit
//! policy it stands beside: the loop asks [`ExtendPolicy::judge`] before the exit policy.
//!
//! An extend is dialled directly (never through an exit proxy), whatever the exit
//! policy says of that address; any other OPEN is judged by the exit policy alone, so a
//! relay with `exit_allow` naming no destination serves only as a middle. A relay never
//! extends to itself (its own port on any of its addresses, loopback and unspecified
//! included) and never straight back to the relay a session came from.

use std::net::{IpAddr, SocketAddr};

use crate::proto::Destination;

/// A relay of the list, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Listed {
    Addr(SocketAddr),
    /// A name (lower case) and port: matched by name; only the client's name reaches it.
    Name(String, u16),
}

/// What [`ExtendPolicy::judge`] concluded of an OPEN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extend {
    /// Not a listed relay: the exit policy decides.
    NotARelay,
    /// A listed relay: dial it.
    Allowed,
    /// A listed relay this session may not extend to (the reason, for the log).
    Refused(&'static str),
}

/// The relays this relay extends to, and what it knows of itself.
#[derive(Debug, Clone, Default)]
pub struct ExtendPolicy {
    relays: Vec<Listed>,
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
    pub fn new<S: AsRef<str>>(relays: &[S]) -> Result<ExtendPolicy, String> {
        let mut listed = Vec::with_capacity(relays.len());
        for r in relays {
            let r = r.as_ref();
            let entry = match r.parse::<SocketAddr>() {
                Ok(a) => Listed::Addr(canonical(a)),
                Err(_) => {
                    let (host, port) = r
                        .rsplit_once(':')
                        .ok_or_else(|| format!("relay {r:?}: expected host:port"))?;
                    let port = port.parse().map_err(|_| format!("relay {r:?}: bad port"))?;
                    Listed::Name(host.to_ascii_lowercase(), port)
                }
            };
            listed.push(entry);
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

    /// Whether an OPEN to `dest` on a session from `from` is an extend, and allowed.
    pub fn judge(&self, dest: &Destination, from: IpAddr) -> Extend {
        let listed = match dest {
            Destination::Addr(a) => self.relays.contains(&Listed::Addr(canonical(*a))),
            Destination::Name(n, p) => self
                .relays
                .contains(&Listed::Name(n.to_ascii_lowercase(), *p)),
        };
        if !listed {
            return Extend::NotARelay;
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
        Extend::Allowed
    }
}

/// IPv4-mapped addresses as IPv4, so each relay has one spelling.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Destination {
        Destination::Addr(s.parse().unwrap())
    }

    #[test]
    fn only_listed_relays_are_extends() {
        let p = ExtendPolicy::new(&[
            "10.0.0.2:7000",
            "Relay-B.example:7000",
            "[2001:db8::1]:7000",
        ])
        .unwrap();
        let from: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(p.judge(&addr("10.0.0.2:7000"), from), Extend::Allowed);
        assert_eq!(
            p.judge(&addr("[::ffff:10.0.0.2]:7000"), from),
            Extend::Allowed
        );
        assert_eq!(p.judge(&addr("10.0.0.2:7001"), from), Extend::NotARelay);
        assert_eq!(p.judge(&addr("10.0.0.3:7000"), from), Extend::NotARelay);
        assert_eq!(p.judge(&addr("[2001:db8::1]:7000"), from), Extend::Allowed);
        let name = Destination::Name("relay-b.EXAMPLE".into(), 7000);
        assert_eq!(p.judge(&name, from), Extend::Allowed);
        let other = Destination::Name("relay-c.example".into(), 7000);
        assert_eq!(p.judge(&other, from), Extend::NotARelay);
        assert!(ExtendPolicy::new(&["nonsense"]).is_err());
        assert!(ExtendPolicy::new::<&str>(&[]).unwrap().is_empty());
    }

    #[test]
    fn never_to_itself_nor_straight_back() {
        let mut p =
            ExtendPolicy::new(&["10.0.0.1:7000", "10.0.0.2:7000", "127.0.0.1:7000"]).unwrap();
        p.set_own(["10.0.0.1".parse().unwrap()], 7000);
        let client: IpAddr = "192.0.2.9".parse().unwrap();
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            p.judge(&addr("10.0.0.1:7000"), client),
            Extend::Refused("it is this relay")
        );
        assert_eq!(
            p.judge(&addr("127.0.0.1:7000"), client),
            Extend::Refused("it is this relay")
        );
        assert_eq!(
            p.judge(&addr("10.0.0.2:7000"), a),
            Extend::Refused("it is where the session came from")
        );
        assert_eq!(p.judge(&addr("10.0.0.2:7000"), client), Extend::Allowed);
    }
}
