//! IP address blocks (CIDR), shared by the exit policy, the `[intercept]` bypass list,
//! the fake-address nets and the `[timing]` rules: one parser, one containment test.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A block of addresses: a network address with host bits zero, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

fn v4_mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn v6_mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl Cidr {
    /// Builds a block; fails if `prefix` is too long for the family or host bits are set.
    ///
    /// An IPv4-mapped IPv6 block of /96 or longer becomes the equivalent IPv4 block.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, String> {
        let (addr, prefix) = match addr {
            IpAddr::V6(a) if prefix >= 96 && a.to_ipv4_mapped().is_some() => (
                IpAddr::V4(a.to_ipv4_mapped().expect("checked above")),
                prefix - 96,
            ),
            other => (other, prefix),
        };
        let ok = match addr {
            IpAddr::V4(a) => {
                if prefix > 32 {
                    return Err(format!("prefix /{prefix} is longer than 32"));
                }
                u32::from(a) & !v4_mask(prefix) == 0
            }
            IpAddr::V6(a) => {
                if prefix > 128 {
                    return Err(format!("prefix /{prefix} is longer than 128"));
                }
                u128::from(a) & !v6_mask(prefix) == 0
            }
        };
        if !ok {
            let network = match addr {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & v4_mask(prefix))),
                IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & v6_mask(prefix))),
            };
            return Err(format!(
                "host bits set in {addr}/{prefix} (did you mean {network}/{prefix}?)"
            ));
        }
        Ok(Cidr { addr, prefix })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Host bits: 32 or 128 minus the prefix.
    pub fn host_bits(&self) -> u32 {
        (if self.addr.is_ipv4() { 32 } else { 128 }) - u32::from(self.prefix)
    }

    /// Whether `ip` lies in the block. An IPv4-mapped IPv6 address counts as its IPv4
    /// address; otherwise addresses of the other family never do.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => in_v4(a, net, self.prefix),
            (IpAddr::V6(net), IpAddr::V6(a)) => in_v6(a, net, self.prefix),
            _ => false,
        }
    }
}

/// Whether `a` is in `net/prefix` (for constant tables that are not [`Cidr`]s).
pub fn in_v4(a: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = v4_mask(prefix);
    u32::from(a) & mask == u32::from(net) & mask
}

/// Whether `a` is in `net/prefix` (for constant tables that are not [`Cidr`]s).
pub fn in_v6(a: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    let mask = v6_mask(prefix);
    u128::from(a) & mask == u128::from(net) & mask
}

impl FromStr for Cidr {
    type Err = String;

    /// `addr/len`, IPv6 optionally in brackets (`[::1]/128`).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("expected addr/len, e.g. 10.0.0.0/8 (got {s:?})"))?;
        let addr: IpAddr = a
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address (got {s:?})"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = l
            .parse()
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("prefix length must be 0 to {max} (got {s:?})"))?;
        Cidr::new(addr, len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_contains_and_explain() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.1.2.3")) && !c.contains(ip("11.0.0.1")));
        // v4-mapped addresses are their IPv4 address, and v4-mapped blocks an IPv4 block.
        assert!(c.contains(ip("::ffff:10.9.9.9")));
        let m: Cidr = "[::ffff:10.0.0.0]/104".parse().unwrap();
        assert_eq!(m, c);
        assert_eq!(c.host_bits(), 24);
        assert_eq!("100::/64".parse::<Cidr>().unwrap().host_bits(), 64);
        assert!(!"::/0".parse::<Cidr>().unwrap().contains(ip("1.2.3.4")));
        for (bad, why) in [
            ("10.0.0.0", "expected addr/len"),
            ("10.0.0/8", "not an IP address"),
            ("10.0.0.0/33", "prefix length must be 0 to 32"),
            ("::/129", "prefix length must be 0 to 128"),
            ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(c.to_string(), "10.0.0.0/8");
    }
}
