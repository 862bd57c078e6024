//! The relay's exit policy: which destinations a client may ask the relay to dial.
//!
//! Without `--exit-allow` (or `exit_allow` in `[server]`), the relay uses the
//! **default policy**: it dials any *globally routable unicast* address on any port
//! from 1 to 65535, and nothing else. Concretely, before any check an IPv4-mapped
//! IPv6 address (`::ffff:a.b.c.d`) and a NAT64 well-known-prefix address
//! (`64:ff9b::a.b.c.d`) are replaced by the IPv4 address they carry. Then:
//!
//! IPv4 is allowed unless it falls in one of
//! - `0.0.0.0/8` ("this network", including the unspecified address `0.0.0.0`)
//! - `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16` (private, RFC 1918)
//! - `100.64.0.0/10` (carrier-grade NAT, RFC 6598)
//! - `127.0.0.0/8` (loopback)
//! - `169.254.0.0/16` (link-local)
//! - `192.0.0.0/24` (IETF protocol assignments), except the anycast addresses
//!   `192.0.0.9` and `192.0.0.10`
//! - `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24` (documentation, RFC 5737)
//! - `192.88.99.0/24` (deprecated 6to4 relay anycast)
//! - `198.18.0.0/15` (benchmarking)
//! - `224.0.0.0/4` (multicast)
//! - `240.0.0.0/4` (reserved, including the broadcast address `255.255.255.255`)
//!
//! IPv6 is allowed only inside `2000::/3`, the global unicast space; that alone rules
//! out the unspecified address `::`, loopback `::1`, unique-local `fc00::/7`,
//! link-local `fe80::/10`, multicast `ff00::/8`, discard-only `100::/64`, and the
//! deprecated IPv4-compatible and site-local forms. Inside `2000::/3` it is denied in
//! - `2001::/23` (IETF protocol assignments: Teredo, benchmarking, ORCHID, …), except
//!   `2001:1::1`, `2001:1::2`, `2001:3::/32` (AMT) and `2001:4:112::/48` (AS112)
//! - `2001:db8::/32` and `3fff::/20` (documentation)
//! - `2002::/16` (6to4)
//!
//! Port 0 is never allowed.
//!
//! The relay host's own addresses (every address of every interface, as `getifaddrs`
//! lists them, `lo`'s included) are refused too: a connection from the relay to its own
//! public address goes over `lo`, past a host firewall that guards that address from
//! outside. The relay reads them at start, on SIGHUP and every few seconds
//! ([`ExitPolicy::set_own_addrs`]); `allow_own_addresses = true` in `[server]` (or
//! `--allow-own-addresses`) lifts this refusal.
//!
//! Any `--exit-allow` rule **replaces** the default: the relay then dials only what
//! some rule matches, so `0.0.0.0/0:443` really does include the relay's own loopback,
//! LAN and public addresses. To keep the default's protection (the host's own addresses
//! included) while limiting ports, use the `global` target, e.g. `global:80,443`.
//!
//! Rule syntax: `TARGET[:PORTS]`. `TARGET` is `global`, an IPv4 or IPv6 address (a
//! single host), or a CIDR block such as `10.0.0.0/8` or `2001:db8::/32` (host bits
//! must be zero). When ports follow an IPv6 target without a `/len`, the address
//! needs brackets: `[::1]:22`; `[::1]/128:22` and `::1/128:22` work too. `PORTS` is a
//! comma-separated list of ports and inclusive ranges, e.g. `80,443,8000-8100`; with
//! no `PORTS` every port matches. Rule addresses in IPv4-mapped form are stored as
//! IPv4, matching how destinations are checked.
//!
//! Names: a name that is really an IP literal, in any form `inet_aton` reads
//! (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`) or IPv6 (bracketed, with a zone), is
//! judged and dialled as that address, also through an exit proxy. A name ending in a
//! number that is no such literal (`1.2.3.4.5`) is refused. `localhost` and names under
//! `.localhost` (RFC 6761) count as loopback: resolved here they are checked address by
//! address; sent to an exit proxy they are allowed only if both `127.0.0.1` and `::1`
//! are. Any other name goes to an exit proxy unresolved, checked by port only.
//!
//! This module does no I/O; the relay asks [`ExitPolicy::judge`] when a stream opens and
//! [`ExitPolicy::allows`] for each address a name resolved to, before dialing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// An exit rule that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid exit rule {rule:?}: {reason}")]
pub struct ExitRuleError {
    /// The rule as written.
    pub rule: String,
    /// What is wrong with it.
    pub reason: RuleFault,
}

/// What is wrong with an exit rule (or a port range).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RuleFault {
    /// Nothing but whitespace.
    #[error("empty rule")]
    Empty,
    /// Port 0 in a port list.
    #[error("port 0 is not a destination port")]
    PortZero,
    /// A range whose first port is above its last.
    #[error("port range {0}-{1} is backwards")]
    Backwards(u16, u16),
    /// Not plain digits where a port belongs.
    #[error("{0:?} is not a port number")]
    NotAPort(String),
    /// Digits above 65535.
    #[error("port {0} is larger than 65535")]
    PortTooLarge(String),
    /// Two commas in a row, or one at an end.
    #[error("empty entry in port list")]
    EmptyPortEntry,
    /// Not plain digits after `/`.
    #[error("{0:?} is not a prefix length")]
    NotAPrefix(String),
    /// A prefix length that does not fit a byte.
    #[error("prefix /{0} is too long")]
    PrefixTooLong(String),
    /// `[` without `]`.
    #[error("missing `]` after IPv6 address")]
    MissingBracket,
    /// Something other than `/` or `:` after `]`.
    #[error("unexpected {0:?} after `]`")]
    AfterBracket(String),
    /// `ADDR:PORTS` where ADDR has colons of its own.
    #[error("an IPv6 address followed by ports needs brackets, e.g. [::1]:22")]
    NeedsBrackets,
    /// Inside brackets, not an IPv6 address.
    #[error("{0:?} is not an IPv6 address")]
    NotIpv6(String),
    /// Neither an address, a CIDR block nor `global`.
    #[error("{0:?} is not an IP address, CIDR block or `global`")]
    NotATarget(String),
    /// The address and prefix length do not make a block (host bits set, prefix too long).
    #[error("{0}")]
    Block(crate::net::NetError),
}

pub use crate::net::Cidr;
use crate::net::{HostKind, classify_host, in_v4, in_v6};
use crate::proto::Destination;

/// An inclusive range of ports, never including 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// Builds `first..=last`; fails for port 0 or `first > last`.
    pub fn new(first: u16, last: u16) -> Result<PortRange, RuleFault> {
        if first == 0 {
            return Err(RuleFault::PortZero);
        }
        if first > last {
            return Err(RuleFault::Backwards(first, last));
        }
        Ok(PortRange { first, last })
    }

    /// Lowest port in the range.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// Highest port in the range.
    pub fn last(&self) -> u16 {
        self.last
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// What addresses a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitTarget {
    /// Every address the default policy allows (see the module docs).
    Global,
    /// One block of addresses.
    Net(Cidr),
}

/// One allow rule: a target and the ports it opens (empty list: all ports).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExitRule {
    target: ExitTarget,
    ports: Vec<PortRange>,
}

fn parse_port(s: &str) -> Result<u16, RuleFault> {
    // u16's parser would accept "+80"; only plain digits are a port.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RuleFault::NotAPort(s.to_owned()));
    }
    s.parse::<u16>()
        .map_err(|_| RuleFault::PortTooLarge(s.to_owned()))
}

fn parse_ports(s: &str) -> Result<Vec<PortRange>, RuleFault> {
    let mut ports = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(RuleFault::EmptyPortEntry);
        }
        let range = match item.split_once('-') {
            Some((a, b)) => PortRange::new(parse_port(a.trim())?, parse_port(b.trim())?)?,
            None => {
                let p = parse_port(item)?;
                PortRange::new(p, p)?
            }
        };
        ports.push(range);
    }
    Ok(ports)
}

fn parse_prefix(s: &str) -> Result<u8, RuleFault> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RuleFault::NotAPrefix(s.to_owned()));
    }
    s.parse::<u8>()
        .map_err(|_| RuleFault::PrefixTooLong(s.to_owned()))
}

/// A rule's text cut into its pieces, before any of them is parsed.
struct RuleParts<'a> {
    addr: &'a str,
    prefix: Option<&'a str>,
    ports: Option<&'a str>,
    bracketed: bool,
}

fn parts<'a>(
    addr: &'a str,
    prefix: Option<&'a str>,
    ports: Option<&'a str>,
    bracketed: bool,
) -> RuleParts<'a> {
    RuleParts {
        addr,
        prefix,
        ports,
        bracketed,
    }
}

fn split_rule(s: &str) -> Result<RuleParts<'_>, RuleFault> {
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or(RuleFault::MissingBracket)?;
        let (prefix, after) = match after.strip_prefix('/') {
            Some(p) => match p.split_once(':') {
                Some((len, ports)) => (Some(len), Some(ports)),
                None => (Some(p), None),
            },
            None => match after.strip_prefix(':') {
                Some(ports) => (None, Some(ports)),
                None if after.is_empty() => (None, None),
                None => return Err(RuleFault::AfterBracket(after.to_owned())),
            },
        };
        return Ok(parts(addr, prefix, after, true));
    }
    if let Some((addr, rest)) = s.split_once('/') {
        let (prefix, ports) = match rest.split_once(':') {
            Some((len, ports)) => (len, Some(ports)),
            None => (rest, None),
        };
        return Ok(parts(addr, Some(prefix), ports, false));
    }
    if s.parse::<IpAddr>().is_ok() {
        return Ok(parts(s, None, None, false));
    }
    match s.rsplit_once(':') {
        Some((addr, ports)) if !addr.contains(':') => Ok(parts(addr, None, Some(ports), false)),
        Some(_) => Err(RuleFault::NeedsBrackets),
        None => Ok(parts(s, None, None, false)),
    }
}

impl ExitRule {
    /// Parses `TARGET[:PORTS]`, e.g. `10.0.0.0/8:80,443,8000-8100` (see the module docs).
    pub fn parse(text: &str) -> Result<ExitRule, ExitRuleError> {
        ExitRule::parse_inner(text.trim()).map_err(|reason| ExitRuleError {
            rule: text.to_owned(),
            reason,
        })
    }

    fn parse_inner(s: &str) -> Result<ExitRule, RuleFault> {
        if s.is_empty() {
            return Err(RuleFault::Empty);
        }
        let RuleParts {
            addr,
            prefix,
            ports,
            bracketed,
        } = split_rule(s)?;
        let ports = match ports {
            Some(p) => parse_ports(p)?,
            None => Vec::new(),
        };
        if !bracketed && prefix.is_none() && addr.eq_ignore_ascii_case("global") {
            return Ok(ExitRule {
                target: ExitTarget::Global,
                ports,
            });
        }
        let ip: IpAddr = if bracketed {
            IpAddr::V6(
                addr.parse::<Ipv6Addr>()
                    .map_err(|_| RuleFault::NotIpv6(addr.to_owned()))?,
            )
        } else {
            addr.parse()
                .map_err(|_| RuleFault::NotATarget(addr.to_owned()))?
        };
        let prefix = match prefix {
            Some(p) => parse_prefix(p)?,
            None if ip.is_ipv4() => 32,
            None => 128,
        };
        Ok(ExitRule {
            target: ExitTarget::Net(Cidr::new(ip, prefix).map_err(RuleFault::Block)?),
            ports,
        })
    }

    /// Builds a rule from parts; an empty `ports` means every port.
    pub fn new(target: ExitTarget, ports: Vec<PortRange>) -> ExitRule {
        ExitRule { target, ports }
    }

    /// The addresses the rule covers.
    pub fn target(&self) -> ExitTarget {
        self.target
    }

    /// The ports the rule opens; empty means every port.
    pub fn ports(&self) -> &[PortRange] {
        &self.ports
    }

    /// Whether the rule allows `port` on `ip`; `ip` is expected in canonical form, and
    /// `global` says whether the default policy allows it.
    fn matches(&self, ip: IpAddr, port: u16, global: bool) -> bool {
        let port_ok = self.ports.is_empty() || self.ports.iter().any(|r| r.contains(port));
        let addr_ok = match self.target {
            ExitTarget::Global => global,
            ExitTarget::Net(net) => net.contains(ip),
        };
        port != 0 && port_ok && addr_ok
    }
}

impl std::str::FromStr for ExitRule {
    type Err = ExitRuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExitRule::parse(s)
    }
}

impl fmt::Display for ExitRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.target {
            ExitTarget::Global => f.write_str("global")?,
            // Brackets keep the port list from reading as more IPv6 groups.
            ExitTarget::Net(net) if net.addr().is_ipv6() && !self.ports.is_empty() => {
                write!(f, "[{}]/{}", net.addr(), net.prefix())?;
            }
            ExitTarget::Net(net) => write!(f, "{net}")?,
        }
        for (i, range) in self.ports.iter().enumerate() {
            f.write_str(if i == 0 { ":" } else { "," })?;
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(a, b, c, d), prefix)
}

/// IPv4 blocks the default policy refuses (the module docs list them for readers).
const V4_DENY: &[(Ipv4Addr, u8)] = &[
    v4(0, 0, 0, 0, 8),
    v4(10, 0, 0, 0, 8),
    v4(100, 64, 0, 0, 10),
    v4(127, 0, 0, 0, 8),
    v4(169, 254, 0, 0, 16),
    v4(172, 16, 0, 0, 12),
    v4(192, 0, 0, 0, 24),
    v4(192, 0, 2, 0, 24),
    v4(192, 88, 99, 0, 24),
    v4(192, 168, 0, 0, 16),
    v4(198, 18, 0, 0, 15),
    v4(198, 51, 100, 0, 24),
    v4(203, 0, 113, 0, 24),
    v4(224, 0, 0, 0, 4),
    v4(240, 0, 0, 0, 4),
];

/// Globally reachable anycast addresses inside [`V4_DENY`] blocks.
const V4_GLOBAL_EXCEPTIONS: &[(Ipv4Addr, u8)] = &[v4(192, 0, 0, 9, 32), v4(192, 0, 0, 10, 32)];

const fn v6(segments: [u16; 8], prefix: u8) -> (Ipv6Addr, u8) {
    let [a, b, c, d, e, f, g, h] = segments;
    (Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix)
}

const V6_GLOBAL_UNICAST: (Ipv6Addr, u8) = v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);

const V6_NAT64: (Ipv6Addr, u8) = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);

/// IPv6 blocks inside `2000::/3` that the default policy refuses.
const V6_DENY: &[(Ipv6Addr, u8)] = &[
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
];

/// Globally reachable blocks inside [`V6_DENY`] blocks.
const V6_GLOBAL_EXCEPTIONS: &[(Ipv6Addr, u8)] = &[
    v6([0x2001, 1, 0, 0, 0, 0, 0, 1], 128),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128),
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32),
    v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48),
];

fn v4_is_global(a: Ipv4Addr) -> bool {
    V4_GLOBAL_EXCEPTIONS
        .iter()
        .any(|&(net, p)| in_v4(a, net, p))
        || !V4_DENY.iter().any(|&(net, p)| in_v4(a, net, p))
}

fn v6_is_global(a: Ipv6Addr) -> bool {
    let (nat64, nat64_len) = V6_NAT64;
    if in_v6(a, nat64, nat64_len) {
        // The NAT64 gateway would forward to the embedded IPv4 address, so that is
        // the destination to judge.
        return v4_is_global(Ipv4Addr::from(u128::from(a) as u32));
    }
    let (unicast, unicast_len) = V6_GLOBAL_UNICAST;
    in_v6(a, unicast, unicast_len)
        && (V6_GLOBAL_EXCEPTIONS
            .iter()
            .any(|&(net, p)| in_v6(a, net, p))
            || !V6_DENY.iter().any(|&(net, p)| in_v6(a, net, p)))
}

/// Whether the default policy allows `ip`: a globally routable unicast address.
pub fn is_global_unicast(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(a) => v4_is_global(a),
        IpAddr::V6(a) => v6_is_global(a),
    }
}

/// The set of destinations the relay will dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitPolicy {
    /// `None` is the default policy; `Some` allows exactly what the rules match.
    rules: Option<Vec<ExitRule>>,
    /// The host's own addresses, canonical and sorted, refused where the default's
    /// protection applies; `None` once they are allowed.
    own: Option<Vec<IpAddr>>,
}

impl Default for ExitPolicy {
    fn default() -> ExitPolicy {
        ExitPolicy {
            rules: None,
            own: Some(Vec::new()),
        }
    }
}

impl ExitPolicy {
    /// A policy allowing only what some rule matches; no rules allow nothing.
    pub fn from_rules(rules: Vec<ExitRule>) -> ExitPolicy {
        ExitPolicy {
            rules: Some(rules),
            ..ExitPolicy::default()
        }
    }

    /// The same policy with the host's own addresses no longer refused.
    pub fn allowing_own_addrs(self) -> ExitPolicy {
        ExitPolicy { own: None, ..self }
    }

    /// Whether the host's own addresses are refused (so the relay must keep them fresh).
    pub fn refuses_own_addrs(&self) -> bool {
        self.own.is_some()
    }

    /// Replaces the host's own addresses (from `os::interface_addrs`); ignored once they
    /// are allowed.
    pub fn set_own_addrs(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        if let Some(own) = &mut self.own {
            own.clear();
            own.extend(addrs.into_iter().map(|a| a.to_canonical()));
            own.sort_unstable();
            own.dedup();
        }
    }

    /// What the default policy allows: a globally routable unicast address that is not
    /// one of this host's own (canonical `ip`).
    fn default_allows(&self, ip: IpAddr) -> bool {
        let own = self
            .own
            .as_ref()
            .is_some_and(|own| own.binary_search(&ip).is_ok());
        is_global_unicast(ip) && !own
    }

    /// Parses `--exit-allow` / `exit_allow` values; an empty list gives the default policy.
    pub fn from_exit_allow<S: AsRef<str>>(rules: &[S]) -> Result<ExitPolicy, ExitRuleError> {
        if rules.is_empty() {
            return Ok(ExitPolicy::default());
        }
        let parsed = rules
            .iter()
            .map(|r| ExitRule::parse(r.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ExitPolicy::from_rules(parsed))
    }

    /// The explicit rules, or `None` for the default policy.
    pub fn rules(&self) -> Option<&[ExitRule]> {
        self.rules.as_deref()
    }

    /// Whether the relay may dial `ip` port `port`.
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        if port == 0 {
            return false;
        }
        let ip = ip.to_canonical();
        let global = self.default_allows(ip);
        match &self.rules {
            None => global,
            Some(rules) => rules.iter().any(|r| r.matches(ip, port, global)),
        }
    }

    /// The destination to dial and whether the exit policy allows it.
    ///
    /// A name that is really an address (`2130706433`, `0x7f.1`, `[::1]`: see
    /// `net::classify_host`) becomes that address, checked here and dialled or sent to the
    /// exit proxy as such, so what is checked is what is reached. Other names are checked
    /// after they resolve; one sent to an exit proxy unresolved (no DNS query leaves
    /// here: Tor resolves at its exit) can be checked only by port, and the proxy's own
    /// policy decides the rest. `localhost` names go to the proxy only where the policy
    /// allows both loopback addresses, since the proxy picks which one it reaches.
    pub fn judge(&self, dest: Destination, via_proxy: bool) -> (Destination, bool) {
        let (host, port) = match dest {
            Destination::Addr(a) => return (Destination::Addr(a), self.allows(a.ip(), a.port())),
            Destination::Name(host, port) => (host, port),
        };
        match classify_host(&host) {
            HostKind::Addr(ip) => {
                let a = SocketAddr::new(ip, port);
                (Destination::Addr(a), self.allows(ip, port))
            }
            HostKind::Numeric => (Destination::Name(host, port), false),
            HostKind::Localhost if via_proxy => {
                let ok = self.allows(Ipv4Addr::LOCALHOST.into(), port)
                    && self.allows(Ipv6Addr::LOCALHOST.into(), port);
                (Destination::Name("localhost".to_owned(), port), ok)
            }
            HostKind::Localhost | HostKind::Name => {
                let ok = !via_proxy || self.allows_port(port);
                (Destination::Name(host, port), ok)
            }
        }
    }

    /// Whether some rule allows `port` at any address: all that can be checked of a name
    /// handed unresolved to an exit proxy.
    pub fn allows_port(&self, port: u16) -> bool {
        if port == 0 {
            return false;
        }
        match &self.rules {
            None => true,
            Some(rules) => rules
                .iter()
                .any(|r| r.ports.is_empty() || r.ports.iter().any(|p| p.contains(port))),
        }
    }
}

impl fmt::Display for ExitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rules {
            None => {
                f.write_str("default (globally routable unicast addresses")?;
                if self.own.is_some() {
                    f.write_str(" but this host's own")?;
                }
                f.write_str(", all ports)")
            }
            Some(rules) if rules.is_empty() => f.write_str("nothing allowed"),
            Some(rules) => {
                f.write_str("allow ")?;
                for (i, rule) in rules.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{rule}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
