//! IP address blocks (CIDR), shared by the exit policy, the `[intercept]` bypass list,
//! the fake-address nets and the `[timing]` rules: one parser, one containment test, and
//! the one rule for which blocks can hold fake addresses. Also the one answer to "is
//! this host name really an address" ([`classify_host`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use thiserror::Error;

/// A block of addresses: a network address with host bits zero, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// An address family, for rules that differ between IPv4 and IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (IPv4-mapped IPv6 blocks count as IPv4: `Cidr::new` folds them).
    V4,
    /// IPv6.
    V6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Why text or an address and prefix is not a block, or a block not a fake-address net.
///
/// Each message is one line that says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NetError {
    /// The text has no `/len`.
    #[error("expected addr/len, e.g. 10.0.0.0/8 (got {text:?})")]
    NoPrefix {
        /// The text as given.
        text: String,
    },
    /// The part before the `/` is not an IP address.
    #[error("{addr:?} is not an IP address (got {text:?})")]
    BadAddr {
        /// The part before the `/`.
        addr: String,
        /// The text as given.
        text: String,
    },
    /// The part after the `/` is not a number from 0 to the family's width.
    #[error("prefix length must be 0 to {max} (got {text:?})")]
    BadPrefixText {
        /// 32 or 128.
        max: u8,
        /// The text as given.
        text: String,
    },
    /// A prefix longer than the family's width.
    #[error("prefix /{prefix} is longer than {max}")]
    PrefixTooLong {
        /// The prefix length given.
        prefix: u8,
        /// 32 or 128.
        max: u8,
    },
    /// Bits below the prefix are set.
    #[error("host bits set in {addr}/{prefix} (did you mean {network}/{prefix}?)")]
    HostBits {
        /// The address given.
        addr: IpAddr,
        /// The prefix length given.
        prefix: u8,
        /// The address with the host bits cleared.
        network: IpAddr,
    },
    /// A fake net of the other family (an IPv4-mapped IPv6 block is an IPv4 block).
    #[error("wrong address family: {net} is not an {want} block{}", .want.mapped_hint())]
    FakeWrongFamily {
        /// The block given.
        net: Cidr,
        /// The family the fake net is for.
        want: Family,
    },
    /// A fake net of /0, which would take every address of the family.
    #[error(
        "{0}: would make every address fake; use a reserved block such as 240.0.0.0/4 or 100::/64"
    )]
    FakeEverything(Cidr),
    /// A fake net with fewer than `Cidr::FAKE_MIN_HOST_BITS` host bits.
    #[error(
        "{net}: only {host_bits} host bits; need at least {min} (/{longest} or shorter)",
        min = Cidr::FAKE_MIN_HOST_BITS
    )]
    FakeTooSmall {
        /// The block given.
        net: Cidr,
        /// Its host bits.
        host_bits: u32,
        /// The longest prefix the family allows for a fake net.
        longest: u32,
    },
    /// An IPv6 fake net overlapping `::ffff:0:0/96`, whose addresses apps read as IPv4.
    #[error("{0}: overlaps ::ffff:0:0/96 (IPv4-mapped addresses); use e.g. 100::/64")]
    FakeOverlapsMapped(Cidr),
}

impl Family {
    fn mapped_hint(self) -> &'static str {
        match self {
            Family::V4 => "",
            Family::V6 => " (an IPv4-mapped ::ffff:a.b.c.d block is an IPv4 block)",
        }
    }

    fn width(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

fn v4_mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn v6_mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl Cidr {
    /// Fewest host bits a fake-address net may have (a /24 for IPv4: 254 names).
    pub(crate) const FAKE_MIN_HOST_BITS: u32 = 8;

    /// Builds a block; fails if `prefix` is too long for the family or host bits are set.
    ///
    /// An IPv4-mapped IPv6 block of /96 or longer becomes the equivalent IPv4 block.
    pub(crate) fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, NetError> {
        let (addr, prefix) = match addr.to_canonical() {
            v4 @ IpAddr::V4(_) if addr.is_ipv6() && prefix >= 96 => (v4, prefix - 96),
            _ => (addr, prefix),
        };
        let ok = match addr {
            IpAddr::V4(a) => {
                if prefix > 32 {
                    return Err(NetError::PrefixTooLong { prefix, max: 32 });
                }
                u32::from(a) & !v4_mask(prefix) == 0
            }
            IpAddr::V6(a) => {
                if prefix > 128 {
                    return Err(NetError::PrefixTooLong { prefix, max: 128 });
                }
                u128::from(a) & !v6_mask(prefix) == 0
            }
        };
        if !ok {
            let network = match addr {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & v4_mask(prefix))),
                IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & v6_mask(prefix))),
            };
            return Err(NetError::HostBits {
                addr,
                prefix,
                network,
            });
        }
        Ok(Cidr { addr, prefix })
    }

    /// The network address.
    pub(crate) fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub(crate) fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The block's address family.
    pub(crate) fn family(&self) -> Family {
        if self.addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// Host bits: 32 or 128 minus the prefix.
    pub(crate) fn host_bits(&self) -> u32 {
        self.family().width() - u32::from(self.prefix)
    }

    /// Whether `ip` lies in the block. An IPv4-mapped IPv6 address counts as its IPv4
    /// address; otherwise addresses of the other family never do.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => in_v4(a, net, self.prefix),
            (IpAddr::V6(net), IpAddr::V6(a)) => in_v6(a, net, self.prefix),
            _ => false,
        }
    }

    /// Checks that the block can hold the fake addresses of family `want` (remote DNS).
    ///
    /// The one rule, applied at config load and by the fake-address map: the right
    /// family, not /0, at least [`Cidr::FAKE_MIN_HOST_BITS`] host bits, and for IPv6 no
    /// overlap with `::ffff:0:0/96` (apps read those addresses as IPv4, so a fake one
    /// there would never map back to its name).
    pub(crate) fn check_fake_net(&self, want: Family) -> Result<(), NetError> {
        if self.family() != want {
            return Err(NetError::FakeWrongFamily { net: *self, want });
        }
        if self.prefix == 0 {
            return Err(NetError::FakeEverything(*self));
        }
        let host_bits = self.host_bits();
        if host_bits < Cidr::FAKE_MIN_HOST_BITS {
            return Err(NetError::FakeTooSmall {
                net: *self,
                host_bits,
                longest: want.width() - Cidr::FAKE_MIN_HOST_BITS,
            });
        }
        // Two blocks overlap when they agree on the shorter prefix's bits.
        let mapped = Ipv4Addr::UNSPECIFIED.to_ipv6_mapped();
        if let IpAddr::V6(net) = self.addr {
            if in_v6(mapped, net, self.prefix.min(96)) {
                return Err(NetError::FakeOverlapsMapped(*self));
            }
        }
        Ok(())
    }
}

/// Whether `a` is in `net/prefix` (for constant tables that are not [`Cidr`]s).
pub(crate) fn in_v4(a: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = v4_mask(prefix);
    u32::from(a) & mask == u32::from(net) & mask
}

/// Whether `a` is in `net/prefix` (for constant tables that are not [`Cidr`]s).
pub(crate) fn in_v6(a: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    let mask = v6_mask(prefix);
    u128::from(a) & mask == u128::from(net) & mask
}

/// What a destination host name really is, judged as the most permissive resolver would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostKind {
    /// An IP literal in any form a resolver takes as an address (see [`classify_host`]).
    Addr(IpAddr),
    /// `localhost` or a name under `.localhost`, which resolve to loopback (RFC 6761 §6.3).
    Localhost,
    /// Ends in a number (`1.2.3.4.5`, `999.1.1.1`, `1.0x1g`) without being an address: no
    /// DNS name has a numeric top-level label, so only a resolver's own parse can give it
    /// meaning, and which one it gives is not ours to guess.
    Numeric,
    /// A name, to be resolved by whoever dials it.
    Name,
}

/// Classifies a destination host: an address in disguise, loopback by name, or a name.
///
/// IPv4 literals are read in every form glibc's `inet_aton` accepts (what `getaddrinfo`,
/// and so most SOCKS proxies, take as numeric): one to four dot-separated parts, each
/// decimal, octal with a leading `0` or hex with `0x`/`0X`, the last part filling the
/// bytes left (`127.1` is 127.0.0.1, `2130706433` and `0x7f000001` are too, `0177.0.0.1`
/// is octal), each part starting with a decimal digit. Looser than glibc on purpose, as
/// treating a name as an address only refuses or pins more: one trailing dot is allowed
/// (`127.0.0.1.`, which some resolvers pass on to DNS) and `0x` alone counts as 0 (old
/// BSD and glibc). IPv6 literals may be bracketed and carry a `%zone`. Case-insensitive.
pub(crate) fn classify_host(host: &str) -> HostKind {
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let unbracketed = bracketed.unwrap_or(host);
    // Colons or brackets are never part of a name: IPv6, or nothing we should pass on.
    if unbracketed.contains(':') || bracketed.is_some() {
        let addr = unbracketed.split_once('%').map_or(unbracketed, |(a, _)| a);
        return match addr.parse::<Ipv6Addr>() {
            Ok(a) => HostKind::Addr(IpAddr::V6(a)),
            Err(_) => HostKind::Numeric,
        };
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if let Some(a) = inet_aton(name) {
        return HostKind::Addr(IpAddr::V4(a));
    }
    let last = name.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    if last.eq_ignore_ascii_case("localhost") {
        return HostKind::Localhost;
    }
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    let digits = !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit());
    if hex || digits {
        HostKind::Numeric
    } else {
        HostKind::Name
    }
}

/// glibc's `inet_aton` (as `getaddrinfo` uses it: nothing may follow), plus `0x` alone as 0.
fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        values.push(aton_part(part)?);
    }
    let (last, leading) = values.split_last()?;
    // Leading parts are one byte each; the last fills the bytes left.
    if leading.iter().any(|&v| v > 0xff) || *last >= 1u64 << (8 * (4 - leading.len())) {
        return None;
    }
    let mut addr = *last;
    for (i, &v) in leading.iter().enumerate() {
        addr |= v << (24 - 8 * i);
    }
    Some(Ipv4Addr::from(u32::try_from(addr).ok()?))
}

/// One `inet_aton` part: `strtoul(part, _, 0)` after a leading decimal digit, whole.
fn aton_part(part: &str) -> Option<u64> {
    if !part.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let (digits, radix) =
        if let Some(h) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            if h.is_empty() {
                return Some(0);
            }
            (h, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    // from_str_radix would take a sign; strtoul's has none after the leading digit.
    if !digits.bytes().all(|b| (b as char).is_digit(radix)) {
        return None;
    }
    // Above 32 bits is refused as glibc's ERANGE / > 0xffffffff checks do (u64 parse
    // fails only past 2^64, so map any overflow to None too).
    u64::from_str_radix(digits, radix)
        .ok()
        .filter(|&v| v <= u64::from(u32::MAX))
}

impl FromStr for Cidr {
    type Err = NetError;

    /// `addr/len`, IPv6 optionally in brackets (`[::1]/128`).
    fn from_str(s: &str) -> Result<Cidr, NetError> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| NetError::NoPrefix { text: s.to_owned() })?;
        let addr: IpAddr = a
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| NetError::BadAddr {
                addr: a.to_owned(),
                text: s.to_owned(),
            })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 =
            l.parse()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| NetError::BadPrefixText {
                    max,
                    text: s.to_owned(),
                })?;
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
            let e = bad.parse::<Cidr>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(
            Cidr::new(ip("1.2.3.4"), 33),
            Err(NetError::PrefixTooLong {
                prefix: 33,
                max: 32
            })
        );
    }

    /// Every form a resolver may read as an address, with the address it means.
    #[test]
    fn classify_host_reads_every_inet_aton_form() {
        use HostKind::*;
        let v4 = |s: &str| Addr(IpAddr::V4(s.parse().unwrap()));
        let v6 = |s: &str| Addr(IpAddr::V6(s.parse().unwrap()));
        for (host, want) in [
            // Dotted quad, and the shorter forms whose last part fills the rest.
            ("127.0.0.1", v4("127.0.0.1")),
            ("127.1", v4("127.0.0.1")),
            ("127.0.1", v4("127.0.0.1")),
            ("10.65535", v4("10.0.255.255")),
            ("10.1.65535", v4("10.1.255.255")),
            ("2130706433", v4("127.0.0.1")),
            ("0", v4("0.0.0.0")),
            ("4294967295", v4("255.255.255.255")),
            // Octal and hex parts, mixed, either case.
            ("0177.0.0.1", v4("127.0.0.1")),
            ("0177.1", v4("127.0.0.1")),
            ("017700000001", v4("127.0.0.1")),
            ("0x7f.1", v4("127.0.0.1")),
            ("0X7F.0x0.0.01", v4("127.0.0.1")),
            ("0x7f000001", v4("127.0.0.1")),
            ("0xA9.0376.43518", v4("169.254.169.254")),
            ("0x00000000007f.1", v4("127.0.0.1")),
            ("00", v4("0.0.0.0")),
            ("0x", v4("0.0.0.0")),
            ("0x.0x.0x.0x", v4("0.0.0.0")),
            // One trailing dot: still the address (some resolvers send it to DNS).
            ("127.0.0.1.", v4("127.0.0.1")),
            ("2130706433.", v4("127.0.0.1")),
            // IPv6, bare or bracketed, with a zone, v4-mapped.
            ("::1", v6("::1")),
            ("[::1]", v6("::1")),
            ("fe80::1%eth0", v6("fe80::1")),
            ("[fe80::1%25eth0]", v6("fe80::1")),
            ("::ffff:127.0.0.1", v6("::ffff:127.0.0.1")),
            ("2001:DB8::A", v6("2001:db8::a")),
            // Loopback by name (RFC 6761), any case, trailing dot.
            ("localhost", Localhost),
            ("LocalHost.", Localhost),
            ("a.b.localhost", Localhost),
            // Ends in a number but is no address glibc takes: refused, not guessed.
            ("256.0.0.1", Numeric),
            ("1.2.3.4.5", Numeric),
            ("1.16777216", Numeric),
            ("1.2.65536", Numeric),
            ("4294967296", Numeric),
            ("99999999999999999999999", Numeric),
            ("08.1", Numeric),
            ("0x1g.1", Numeric),
            ("example.123", Numeric),
            ("example.0x1f", Numeric),
            ("1..2", Numeric),
            ("[127.0.0.1]", Numeric),
            ("[example.com]", Numeric),
            ("::1::2", Numeric),
            // Names stay names.
            ("example.com", Name),
            ("1e100.net", Name),
            ("0x7f.example", Name),
            ("127.0.0.1.nip.io", Name),
            ("localhost.example", Name),
            ("mylocalhost", Name),
            ("0xdead.beef", Name),
            ("a-1.b_2", Name),
        ] {
            assert_eq!(classify_host(host), want, "{host}");
        }
    }

    #[test]
    fn fake_net_rule_accepts_and_explains() {
        let check = |s: &str, want| s.parse::<Cidr>().unwrap().check_fake_net(want);
        for (net, want) in [
            ("240.0.0.0/4", Family::V4),
            ("10.1.2.0/24", Family::V4),
            ("100::/64", Family::V6),
            ("2001:db8::/96", Family::V6),
            ("::/90", Family::V6), // ends just before ::ffff:0:0/96
        ] {
            assert_eq!(check(net, want), Ok(()), "{net}");
        }
        for (net, want, why) in [
            (
                "100::/64",
                Family::V4,
                "wrong address family: 100::/64 is not an IPv4 block",
            ),
            ("10.0.0.0/8", Family::V6, "is not an IPv6 block"),
            ("0.0.0.0/0", Family::V4, "every address"),
            ("::/0", Family::V6, "every address"),
            (
                "10.0.0.0/25",
                Family::V4,
                "only 7 host bits; need at least 8 (/24 or shorter)",
            ),
            ("100::/121", Family::V6, "need at least 8 (/120 or shorter)"),
            ("::/64", Family::V6, "overlaps ::ffff:0:0/96"),
            ("::/80", Family::V6, "IPv4-mapped"),
            // Folded to IPv4 blocks by the parser, so the family check names them.
            ("::ffff:0:0/96", Family::V6, "IPv4-mapped"),
            ("::ffff:10.0.0.0/120", Family::V6, "IPv4-mapped"),
        ] {
            let e = check(net, want).unwrap_err().to_string();
            assert!(e.contains(why), "{net}: {e}");
            assert!(!e.contains('\n'), "{net}: multi-line error");
        }
    }
}
