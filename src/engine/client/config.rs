//! What the client loop is told: the relay, the keys, the tunables, and destinations
//! written as `host:port`.

use std::io;
use std::net::SocketAddr;

use crate::keys::PrivateKey;
use crate::proto::{Destination, SessionConfig};

/// One hop of a path: a relay's `host:port` and its pinned static public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// `host:port` (IPv6 as `[addr]:port`).
    pub address: String,
    /// The relay's static public key.
    pub key: [u8; 32],
}

/// A way to the destinations: one relay, or a route of two or three (entry first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathConfig {
    /// The relays, entry first, exit last.
    pub hops: Vec<Hop>,
    /// Paths of one group are tried before the next group's.
    pub group: Option<String>,
    /// Inside a group, how often this path is preferred (RFC 2782 weights).
    pub weight: u32,
}

impl PathConfig {
    /// A path through one relay.
    pub fn relay(address: impl Into<String>, key: [u8; 32]) -> PathConfig {
        PathConfig {
            hops: vec![Hop {
                address: address.into(),
                key,
            }],
            group: None,
            weight: 1,
        }
    }

    /// How logs name it: the entry, and the exit for a route.
    pub(super) fn name(&self) -> String {
        match self.hops.as_slice() {
            [one] => one.address.clone(),
            hops => hops
                .iter()
                .map(|h| h.address.as_str())
                .collect::<Vec<_>>()
                .join(" -> "),
        }
    }
}

/// What the client engine needs.
pub struct ClientConfig {
    /// The paths, in order of preference (at least one).
    pub paths: Vec<PathConfig>,
    /// This client's static private key.
    pub key: PrivateKey,
    /// Session limits and timers.
    pub session: SessionConfig,
    /// Reach each path's entry relay through this SOCKS5 proxy.
    pub upstream: Option<crate::config::Upstream>,
    /// Which timing profile each flow gets.
    pub timing: crate::config::TimingConfig,
    /// Where this user's processes share what they learned of paths' health
    /// (`$XDG_RUNTIME_DIR/qnet/health`); `None`: not shared.
    pub health_file: Option<std::path::PathBuf>,
    /// Tor's control port, when the upstream is Tor: no tunnel starts before Tor has
    /// bootstrapped (`[tor]` with an `upstream`).
    pub tor: Option<crate::config::TorConfig>,
}

impl ClientConfig {
    /// A config for one relay with default session, timing and no sharing (tests, tools).
    pub fn one_relay(
        relay: impl Into<String>,
        relay_key: [u8; 32],
        key: PrivateKey,
    ) -> ClientConfig {
        ClientConfig {
            paths: vec![PathConfig::relay(relay, relay_key)],
            key,
            session: SessionConfig::default(),
            upstream: None,
            timing: crate::config::TimingConfig::default(),
            health_file: None,
            tor: None,
        }
    }

    /// Take the paths, client key and session tunables from a loaded config.
    // A `String` error still: the preload runtime's and the C API's config checks take one.
    pub fn from_config(cfg: &crate::config::Config) -> Result<ClientConfig, String> {
        let paths = paths_of(cfg)?;
        let key_path = cfg
            .key
            .as_ref()
            .ok_or("no client key configured (config `key` or QNET_KEY)")?;
        let key = crate::keys::load_private_key(key_path).map_err(|e| e.to_string())?;
        Ok(ClientConfig {
            paths,
            key,
            session: crate::engine::session_config(&cfg.session),
            upstream: cfg.upstream.clone(),
            timing: cfg.timing.clone(),
            health_file: crate::engine::rundir::qnet_dir().map(|d| d.join(super::shared::NAME)),
            tor: cfg.tor.clone().filter(|_| cfg.upstream.is_some()),
        })
    }
}

/// The configured paths ([`crate::config::Config::weighted_paths`]), or why there are none.
fn paths_of(cfg: &crate::config::Config) -> Result<Vec<PathConfig>, String> {
    let paths: Vec<PathConfig> = cfg
        .weighted_paths()
        .into_iter()
        .map(|p| PathConfig {
            hops: p
                .hops
                .into_iter()
                .map(|h| Hop {
                    address: h.address,
                    key: h.key.0,
                })
                .collect(),
            group: p.group,
            weight: p.weight,
        })
        .collect();
    if paths.is_empty() {
        return Err(match cfg.relay_without_key() {
            Some(_) => "no relay key configured (config `relay_key` or QNET_RELAY_KEY)",
            None => "no relay configured (config `relay` or QNET_RELAY)",
        }
        .into());
    }
    Ok(paths)
}

/// Why a `host:port` is not a destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// No `:port` at the end.
    #[error("{0}: expected host:port")]
    NoPort(String),
    /// The port is not a number from 0 to 65535.
    #[error("{0}: bad port")]
    BadPort(String),
    /// The host is neither an address nor a valid hostname.
    #[error("{0}: invalid hostname")]
    BadHost(String),
}

/// Parse `host:port` (IPv6 as `[addr]:port`) into a destination, validating the hostname.
pub fn parse_destination(s: &str) -> Result<Destination, DestinationError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(Destination::Addr(a));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| DestinationError::NoPort(s.to_owned()))?;
    let port: u16 = port
        .parse()
        .map_err(|_| DestinationError::BadPort(s.to_owned()))?;
    if !crate::proto::frame::valid_hostname(host) {
        return Err(DestinationError::BadHost(s.to_owned()));
    }
    Ok(Destination::Name(host.to_owned(), port))
}

/// The relay's `host:port` as an address: numeric at once, a name through the next
/// resolver in load order (see `sys::resolve_next`).
pub(super) fn relay_address(relay: &str) -> io::Result<SocketAddr> {
    if let Ok(a) = relay.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (host, port) = relay
        .rsplit_once(':')
        .ok_or_else(|| io::Error::other("expected host:port"))?;
    let port: u16 = port.parse().map_err(|_| io::Error::other("bad port"))?;
    crate::engine::sys::resolve_next(host.trim_start_matches('[').trim_end_matches(']'), port)?
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::other("no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_or_say_why_not() {
        assert_eq!(
            parse_destination("[::1]:22"),
            Ok(Destination::Addr("[::1]:22".parse().unwrap()))
        );
        assert_eq!(
            parse_destination("example.com:443"),
            Ok(Destination::Name("example.com".into(), 443))
        );
        let e = parse_destination("example.com").unwrap_err();
        assert_eq!(e, DestinationError::NoPort("example.com".into()));
        assert_eq!(e.to_string(), "example.com: expected host:port");
        assert_eq!(
            parse_destination("example.com:http")
                .unwrap_err()
                .to_string(),
            "example.com:http: bad port"
        );
        assert!(matches!(
            parse_destination("bad host:80"),
            Err(DestinationError::BadHost(_))
        ));
    }
}
