//! The `[server]` table: the relay server's settings, read by `qnet-relay`.
//!
//! The table is `[server]`, not `[relay]`: TOML cannot have both the top-level string
//! `relay` (the client's relay address) and a table of the same name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Value;

use super::value::{Origin, check_unique, rebase};
use super::{ConfigError, Upstream, parse_profile};
use crate::proto::replay::ReplayCache;
use crate::sched::Profile;

/// The relay server's settings, from the `[server]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address to listen on, `host:port`.
    pub listen: Option<String>,
    /// The relay's private key file.
    pub key: Option<PathBuf>,
    /// File of allowed client public keys.
    pub clients: Option<PathBuf>,
    /// Exit rules as written; parsed by the relay's exit policy. Empty means the default policy.
    pub exit_allow: Vec<String>,
    /// Exit through this SOCKS5 proxy instead of dialling destinations directly.
    pub upstream: Option<Upstream>,
    /// The downstream timing profile for streams whose OPEN asks for none (profile 0).
    pub profile: Option<Profile>,
    /// Profiles a client may ask for; others get `profile`. Empty: all.
    pub allow_profiles: Vec<Profile>,
    /// Let the default exit policy (and `global` rules) reach the relay host's own addresses.
    pub allow_own_addresses: bool,
    /// How far a client's msg1 timestamp may be from the relay's clock, either way.
    pub clock_skew: Duration,
    /// Most first messages remembered against replay; when full, new ones are refused.
    pub replay_cache: usize,
    /// Earliest close of a connection that has not authenticated (see `drain_max`).
    pub drain_min: Duration,
    /// A connection not authenticated is closed at a time drawn at accept, uniformly
    /// between `drain_min` and this; a failure before then reads and discards until it.
    pub drain_max: Duration,
    /// Caps on connections, handshakes and each client key's use of the relay.
    pub limits: ServerLimits,
    /// Event loops, one thread each; 0: one per core.
    pub threads: usize,
    /// Relays this relay may extend client sessions to as a middle hop, with their keys.
    pub relays: Vec<super::Hop>,
    /// Whether this relay takes part in routes: it reads an extend preamble at the start
    /// of each connection (`None`: when `relays` is not empty).
    pub routes: Option<bool>,
    /// Serve Prometheus metrics at `/metrics` on this address (its own listener).
    pub metrics: Option<std::net::SocketAddr>,
}

/// Where the relay's metrics listen: `HOST:PORT` with a literal address, `[V6]:PORT`,
/// or a bare port on 127.0.0.1 (loopback unless said otherwise: the counters describe
/// the relay's clients).
pub fn parse_metrics_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not PORT or ADDRESS:PORT (e.g. 127.0.0.1:9150)"))
}

/// The relay's caps (`[server]` keys of the same names). The defaults are far above
/// what one person's clients use and keep one flooding address or key from taking
/// the relay from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Open client connections, authenticated or not; over it a new one is closed at once.
    pub max_connections: u32,
    /// Open client connections from one source address (IPv6: one /64).
    pub max_connections_per_addr: u32,
    /// New handshakes per second (and burst); over it a connection drains silently
    /// and costs no X25519.
    pub handshakes_per_sec: u32,
    /// New handshakes per second (and burst) from one source address (IPv6: one /64).
    pub handshakes_per_sec_per_addr: u32,
    /// Live sessions of one client key; a further one is closed once it authenticates.
    pub sessions_per_key: u32,
    /// Open streams in one session; over it OPEN gets TOO_MANY_STREAMS.
    pub streams_per_session: u32,
    /// Dials (connect or exit-proxy handshake) in progress for one key; over it OPEN
    /// gets TOO_MANY_STREAMS.
    pub dials_per_key: u32,
    /// Names being resolved for one key; over it OPEN gets TOO_MANY_STREAMS.
    pub lookups_per_key: u32,
    /// Bytes queued for one client above which the relay stops reading from it until
    /// the queue drains.
    pub output_high_water: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 4096,
            max_connections_per_addr: 256,
            handshakes_per_sec: 1000,
            handshakes_per_sec_per_addr: 50,
            sessions_per_key: 32,
            streams_per_session: 1024,
            dials_per_key: 1024,
            lookups_per_key: 256,
            output_high_water: 4 << 20,
        }
    }
}

impl ServerConfig {
    /// Largest clock-skew tolerance: a replay cache entry lives up to twice this.
    pub const MAX_CLOCK_SKEW_SECS: u64 = 3600;
    /// Largest replay cache (≤ 128 bytes an entry: 16 M entries is at most 2 GiB).
    pub const MAX_REPLAY_CACHE: u64 = 1 << 24;
    /// Default earliest close of an unauthenticated connection: an honest handshake
    /// (one round trip after the client connects) is over long before.
    pub const DEFAULT_DRAIN_MIN: Duration = Duration::from_secs(5);
    /// Default latest close of an unauthenticated connection.
    pub const DEFAULT_DRAIN_MAX: Duration = Duration::from_secs(15);
    /// Longest drain window allowed, ms.
    pub const MAX_DRAIN_MS: u64 = 600_000;
    /// Most event loops (each holds a listener, a timerfd and resolver threads).
    pub const MAX_THREADS: usize = 256;
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: None,
            key: None,
            clients: None,
            exit_allow: Vec::new(),
            upstream: None,
            profile: None,
            allow_profiles: Vec::new(),
            clock_skew: ReplayCache::DEFAULT_SKEW,
            replay_cache: ReplayCache::DEFAULT_CAPACITY,
            drain_min: Self::DEFAULT_DRAIN_MIN,
            drain_max: Self::DEFAULT_DRAIN_MAX,
            allow_own_addresses: false,
            limits: ServerLimits::default(),
            threads: 0,
            relays: Vec::new(),
            routes: None,
            metrics: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a [server] table")]
pub(super) struct RawServer {
    listen: Option<Value>,
    key: Option<Value>,
    clients: Option<Value>,
    exit_allow: Option<Value>,
    upstream: Option<Value>,
    isolate: Option<Value>,
    profile: Option<Value>,
    allow_profiles: Option<Value>,
    allow_own_addresses: Option<Value>,
    clock_skew_secs: Option<Value>,
    replay_cache: Option<Value>,
    drain_min_ms: Option<Value>,
    drain_max_ms: Option<Value>,
    max_connections: Option<Value>,
    max_connections_per_addr: Option<Value>,
    handshakes_per_sec: Option<Value>,
    handshakes_per_sec_per_addr: Option<Value>,
    sessions_per_key: Option<Value>,
    streams_per_session: Option<Value>,
    dials_per_key: Option<Value>,
    lookups_per_key: Option<Value>,
    output_high_water_kib: Option<Value>,
    threads: Option<Value>,
    relays: Option<Value>,
    routes: Option<Value>,
    metrics: Option<Value>,
}

impl ServerConfig {
    pub(super) fn from_raw(raw: RawServer, o: &Origin<'_>) -> Result<ServerConfig, ConfigError> {
        let mut s = ServerConfig::default();
        if let Some(v) = raw.listen {
            s.listen = Some(o.host_port("server.listen", v)?);
        }
        if let Some(v) = raw.metrics {
            let field = "server.metrics";
            let text = o.string(field, v)?;
            s.metrics = Some(parse_metrics_listen(&text).map_err(|e| o.err(field, e))?);
        }
        if let Some(v) = raw.key {
            s.key = Some(o.path("server.key", v)?);
        }
        if let Some(v) = raw.clients {
            s.clients = Some(o.path("server.clients", v)?);
        }
        if let Some(v) = raw.exit_allow {
            let Value::Array(items) = v else {
                return Err(o.err(
                    "server.exit_allow",
                    format!("expected an array of strings, got {}", v.type_str()),
                ));
            };
            for (i, item) in items.into_iter().enumerate() {
                let field = format!("server.exit_allow[{i}]");
                let rule = o.string(&field, item)?;
                if rule.trim().is_empty() {
                    return Err(o.err(&field, "must not be empty"));
                }
                s.exit_allow.push(rule);
            }
        }
        s.upstream = Upstream::from_raw(o, "server.", raw.upstream, raw.isolate)?;
        if let Some(v) = raw.profile {
            let p = o.string("server.profile", v)?;
            s.profile = Some(parse_profile(&p).map_err(|m| o.err("server.profile", m))?);
        }
        if let Some(v) = raw.allow_profiles {
            for (i, item) in o.array("server.allow_profiles", v)?.into_iter().enumerate() {
                let field = format!("server.allow_profiles[{i}]");
                let p = o.string(&field, item)?;
                s.allow_profiles
                    .push(parse_profile(&p).map_err(|m| o.err(&field, m))?);
            }
        }
        if let Some(v) = raw.allow_own_addresses {
            s.allow_own_addresses = o.boolean("server.allow_own_addresses", v)?;
        }
        if let Some(v) = raw.clock_skew_secs {
            let n = o.positive("server.clock_skew_secs", v)?;
            if n > Self::MAX_CLOCK_SKEW_SECS {
                return Err(o.err(
                    "server.clock_skew_secs",
                    format!("must be at most {} (got {n})", Self::MAX_CLOCK_SKEW_SECS),
                ));
            }
            s.clock_skew = Duration::from_secs(n);
        }
        if let Some(v) = raw.replay_cache {
            let n = o.positive("server.replay_cache", v)?;
            if n > Self::MAX_REPLAY_CACHE {
                return Err(o.err(
                    "server.replay_cache",
                    format!("must be at most {} (got {n})", Self::MAX_REPLAY_CACHE),
                ));
            }
            s.replay_cache = n as usize;
        }
        for (field, v, slot) in [
            ("server.drain_min_ms", raw.drain_min_ms, &mut s.drain_min),
            ("server.drain_max_ms", raw.drain_max_ms, &mut s.drain_max),
        ] {
            let Some(v) = v else { continue };
            let n = o.positive(field, v)?;
            if n > Self::MAX_DRAIN_MS {
                return Err(o.err(
                    field,
                    format!("must be at most {} (got {n})", Self::MAX_DRAIN_MS),
                ));
            }
            *slot = Duration::from_millis(n);
        }
        let l = &mut s.limits;
        for (field, v, slot) in [
            (
                "server.max_connections",
                raw.max_connections,
                &mut l.max_connections,
            ),
            (
                "server.max_connections_per_addr",
                raw.max_connections_per_addr,
                &mut l.max_connections_per_addr,
            ),
            (
                "server.handshakes_per_sec",
                raw.handshakes_per_sec,
                &mut l.handshakes_per_sec,
            ),
            (
                "server.handshakes_per_sec_per_addr",
                raw.handshakes_per_sec_per_addr,
                &mut l.handshakes_per_sec_per_addr,
            ),
            (
                "server.sessions_per_key",
                raw.sessions_per_key,
                &mut l.sessions_per_key,
            ),
            (
                "server.streams_per_session",
                raw.streams_per_session,
                &mut l.streams_per_session,
            ),
            (
                "server.dials_per_key",
                raw.dials_per_key,
                &mut l.dials_per_key,
            ),
            (
                "server.lookups_per_key",
                raw.lookups_per_key,
                &mut l.lookups_per_key,
            ),
        ] {
            let Some(v) = v else { continue };
            let n = o.positive(field, v)?;
            *slot = u32::try_from(n).map_err(|_| o.err(field, format!("too large (got {n})")))?;
        }
        if let Some(v) = raw.output_high_water_kib {
            let field = "server.output_high_water_kib";
            let n = o.positive(field, v)?;
            if n > 1 << 20 {
                return Err(o.err(field, format!("must be at most 1048576 (got {n})")));
            }
            l.output_high_water = (n as usize) << 10;
        }
        if let Some(v) = raw.threads {
            let field = "server.threads";
            let n = o.integer(field, v)?;
            if !(0..=Self::MAX_THREADS as i64).contains(&n) {
                return Err(o.err(
                    field,
                    format!(
                        "must be 0 (one per core) to {} (got {n})",
                        Self::MAX_THREADS
                    ),
                ));
            }
            s.threads = n as usize;
        }
        if let Some(v) = raw.relays {
            let field = "server.relays";
            for (i, item) in o.array(field, v)?.into_iter().enumerate() {
                let at = format!("{field}[{i}]");
                let text = o.string(&at, item)?;
                s.relays
                    .push(super::parse_keyed_hop(&text).map_err(|m| o.err(&at, m))?);
            }
            check_unique(field, s.relays.iter().map(|h| h.address.as_str()))
                .map_err(|m| o.err(field, m))?;
        }
        if let Some(v) = raw.routes {
            s.routes = Some(o.boolean("server.routes", v)?);
        }
        if s.drain_min > s.drain_max {
            return Err(o.err(
                "server.drain_min_ms",
                format!(
                    "must not exceed server.drain_max_ms ({} > {})",
                    s.drain_min.as_millis(),
                    s.drain_max.as_millis()
                ),
            ));
        }
        Ok(s)
    }

    /// Resolves the key and clients paths against `base`, the config file's directory.
    pub(super) fn rebase(&mut self, base: &Path) {
        for p in [&mut self.key, &mut self.clients].into_iter().flatten() {
            rebase(p, base);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{err, parse};

    #[test]
    fn metrics_listen_on_loopback_unless_an_address_is_given() {
        let p = super::parse_metrics_listen;
        assert_eq!(p("9150").unwrap(), "127.0.0.1:9150".parse().unwrap());
        assert_eq!(p("[::1]:9150").unwrap(), "[::1]:9150".parse().unwrap());
        assert_eq!(p("0.0.0.0:9150").unwrap(), "0.0.0.0:9150".parse().unwrap());
        assert!(
            p("localhost:9150")
                .unwrap_err()
                .contains("PORT or ADDRESS:PORT")
        );
        assert!(p("99999").is_err());
    }

    #[test]
    fn server_relays_are_keyed_addresses_without_repeats() {
        let k = super::super::testutil::KEY_B64;
        let s = parse(&format!(
            "[server]\nrelays = [\"10.0.0.2:7000@{k}\", \"relay-b.example:7000@{k}\", \"[::1]:7000@{k}\"]\nroutes = true"
        ))
        .unwrap()
        .server;
        let addrs: Vec<&str> = s.relays.iter().map(|h| h.address.as_str()).collect();
        assert_eq!(
            addrs,
            ["10.0.0.2:7000", "relay-b.example:7000", "[::1]:7000"]
        );
        assert_eq!(s.relays[0].key, k.parse().unwrap());
        assert_eq!(s.routes, Some(true));
        let d = parse("").unwrap().server;
        assert!(d.relays.is_empty() && d.routes.is_none());
        assert_eq!(
            err("[server]\nrelays = [\"10.0.0.2:7000\"]"),
            "config /etc/qnet/qnet.toml: server.relays[0]: 10.0.0.2:7000: expected HOST:PORT@KEY"
        );
        assert!(
            err(&format!("[server]\nrelays = [\"nope@{k}\"]"))
                .contains("server.relays[0]: must be host:port")
        );
        assert!(err("[server]\nrelays = [\"10.0.0.2:7000@short\"]").contains("invalid key"));
        assert!(
            err(&format!(
                "[server]\nrelays = [\"Relay-B.example:7000@{k}\", \"relay-b.example:7000@{k}\"]"
            ))
            .contains("is listed twice")
        );
        assert_eq!(
            err("[server]\nrelays = \"10.0.0.2:7000\""),
            "config /etc/qnet/qnet.toml: server.relays: expected an array, got string"
        );
        assert!(err("[server]\nroutes = 1").contains("server.routes"));
    }
}
