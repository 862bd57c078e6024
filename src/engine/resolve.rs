//! Name resolution inside a preloaded app: no DNS packet ever leaves it.
//!
//! Names in `/etc/hosts` and numeric hosts are answered locally; every other name gets
//! a fake address from the reserved nets in the config, and a connect to that address
//! sends the name to the relay, which resolves it. The fake map lives in memory shared
//! with forked children, so a parent and its children agree on every address.

use std::net::IpAddr;
use std::sync::OnceLock;

use super::bypass::BypassGuard;
use super::log::tell_once;
use crate::config::Config;
use crate::dns::{DnsError, FakeDns};

/// How many names one process tree can resolve (slots of the shared fake map).
const CAPACITY: u32 = 1 << 16;

static FAKE: OnceLock<Option<FakeDns>> = OnceLock::new();

fn fake(cfg: &Config) -> Option<&'static FakeDns> {
    FAKE.get_or_init(|| {
        let _g = BypassGuard::enter();
        let i = &cfg.intercept;
        let (IpAddr::V4(v4), IpAddr::V6(v6)) = (i.fake_net_v4.addr(), i.fake_net_v6.addr()) else {
            return None;
        };
        let table = super::sys::shared_fake_table(CAPACITY as usize);
        match table.map(|(h, s)| {
            FakeDns::new(
                h,
                s,
                (v4, i.fake_net_v4.prefix()),
                (v6, i.fake_net_v6.prefix()),
            )
        }) {
            Ok(Ok(map)) => Some(map),
            Ok(Err(e)) => {
                tell_once(&format!("fake-address nets unusable: {e}"));
                None
            }
            Err(e) => {
                tell_once(&format!("cannot map the fake-address table: {e}"));
                None
            }
        }
    })
    .as_ref()
}

/// Make the fake-address map now (a fork's prepare handler): a `fork` while another
/// thread is inside its one-time initialisation would leave the child's copy of that
/// initialisation forever in progress, and a map made before the fork is the one parent
/// and children share.
pub(crate) fn settle_fake_map(cfg: &Config) {
    fake(cfg);
}

/// Whether `ip` is in one of the fake nets (allocated or not).
pub(crate) fn is_fake(cfg: &Config, ip: IpAddr) -> bool {
    let i = &cfg.intercept;
    i.remote_dns && (i.fake_net_v4.contains(ip) || i.fake_net_v6.contains(ip))
}

/// The name behind a fake address.
pub(crate) fn name_of(cfg: &Config, ip: IpAddr) -> Option<String> {
    fake(cfg)?.name_of(ip)
}

/// What a forward lookup answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Let the real resolver answer (a numeric host, or remote DNS is off): no query leaves.
    Real,
    /// These addresses, under this canonical name.
    Addrs(Vec<IpAddr>, String),
    /// No such name (invalid, or the fake map is full).
    NotFound,
}

/// Look up `name` for address family `family` (`AF_INET`, `AF_INET6` or `AF_UNSPEC`).
pub(crate) fn lookup(cfg: &Config, name: &str, family: i32) -> Lookup {
    if !cfg.intercept.remote_dns || name.parse::<IpAddr>().is_ok() {
        return Lookup::Real;
    }
    let want = |ip: &IpAddr| match family {
        libc::AF_INET => ip.is_ipv4(),
        libc::AF_INET6 => ip.is_ipv6(),
        _ => true,
    };
    let hosts = hosts_file();
    let local = hosts_lookup(&hosts, name);
    if !local.is_empty() {
        let mut addrs: Vec<IpAddr> = local.into_iter().filter(want).collect();
        // v4 first, as most apps try the first answer only.
        addrs.sort_by_key(IpAddr::is_ipv6);
        return if addrs.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::Addrs(addrs, name.to_owned())
        };
    }
    let Some(map) = fake(cfg) else {
        return Lookup::NotFound;
    };
    match map.lookup_or_insert(name) {
        Ok(index) => {
            // AF_UNSPEC gets both, IPv4 first: programs asked to use IPv6 only (curl -6)
            // ask for AF_UNSPEC and filter themselves.
            let ips = match family {
                libc::AF_INET => vec![IpAddr::V4(map.v4(index))],
                libc::AF_INET6 => vec![IpAddr::V6(map.v6(index))],
                _ => vec![IpAddr::V4(map.v4(index)), IpAddr::V6(map.v6(index))],
            };
            let canon = name.trim_end_matches('.').to_ascii_lowercase();
            Lookup::Addrs(ips, canon)
        }
        Err(DnsError::Full) => {
            tell_once("fake-address table full; further names do not resolve");
            Lookup::NotFound
        }
        Err(_) => Lookup::NotFound,
    }
}

/// What a reverse lookup answers: a name, or `None` (never a PTR query).
pub(crate) fn reverse(cfg: &Config, ip: IpAddr) -> Option<String> {
    if is_fake(cfg, ip) {
        return name_of(cfg, ip);
    }
    hosts_reverse(&hosts_file(), ip)
}

fn hosts_file() -> String {
    let _g = BypassGuard::enter();
    std::fs::read_to_string("/etc/hosts").unwrap_or_default()
}

fn hosts_entries(text: &str) -> impl Iterator<Item = (IpAddr, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let ip: IpAddr = words.next()?.split('%').next()?.parse().ok()?;
        Some((ip, words.collect()))
    })
}

/// Addresses `/etc/hosts` gives `name` (case-insensitive, one trailing dot ignored).
pub(crate) fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let name = name.strip_suffix('.').unwrap_or(name);
    hosts_entries(text)
        .filter(|(_, names)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
        .map(|(ip, _)| ip)
        .collect()
}

/// The first name `/etc/hosts` gives `ip`.
pub(crate) fn hosts_reverse(text: &str, ip: IpAddr) -> Option<String> {
    hosts_entries(text)
        .find(|(a, names)| *a == ip && !names.is_empty())
        .map(|(_, names)| names[0].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTS: &str = "127.0.0.1\tlocalhost\n::1 localhost ip6-localhost # comment\n\
                         # 10.0.0.1 commented\n192.0.2.5 web.test Web2.test\nfe80::1%eth0 ll\n";

    #[test]
    fn hosts_file_parsing() {
        assert_eq!(
            hosts_lookup(HOSTS, "localhost"),
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(
            hosts_lookup(HOSTS, "WEB2.test."),
            vec!["192.0.2.5".parse::<IpAddr>().unwrap()]
        );
        assert!(hosts_lookup(HOSTS, "commented").is_empty());
        assert_eq!(
            hosts_lookup(HOSTS, "ll"),
            vec!["fe80::1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            hosts_reverse(HOSTS, "192.0.2.5".parse().unwrap()).as_deref(),
            Some("web.test")
        );
        assert_eq!(hosts_reverse(HOSTS, "192.0.2.6".parse().unwrap()), None);
    }

    #[test]
    fn lookups() {
        let cfg = Config::default();
        assert_eq!(lookup(&cfg, "192.0.2.1", libc::AF_UNSPEC), Lookup::Real);
        assert_eq!(lookup(&cfg, "::1", libc::AF_INET6), Lookup::Real);
        assert_eq!(
            lookup(&cfg, "no spaces allowed", libc::AF_UNSPEC),
            Lookup::NotFound
        );
        let Lookup::Addrs(a, canon) = lookup(&cfg, "Example.ORG.", libc::AF_UNSPEC) else {
            panic!("fake answer expected");
        };
        assert_eq!(canon, "example.org");
        assert!(is_fake(&cfg, a[0]) && a[0].is_ipv4());
        assert_eq!(name_of(&cfg, a[0]).as_deref(), Some("example.org"));
        assert_eq!(reverse(&cfg, a[0]).as_deref(), Some("example.org"));
        let Lookup::Addrs(b, _) = lookup(&cfg, "example.org", libc::AF_INET6) else {
            panic!("fake answer expected");
        };
        assert!(b[0].is_ipv6() && is_fake(&cfg, b[0]));
        assert_eq!(name_of(&cfg, b[0]).as_deref(), Some("example.org"));
        let mut off = Config::default();
        off.intercept.remote_dns = false;
        assert_eq!(lookup(&off, "example.org", libc::AF_UNSPEC), Lookup::Real);
        assert!(!is_fake(&off, a[0]));
    }
}
