//! Client and relay configuration: a TOML file, then `QNET_*` environment overrides.
//!
//! ```toml
//! relay = "127.0.0.1:7000"      # host:port of the relay (client side); IPv6 as [::1]:7000;
//!                               # several in order of preference: "10.0.0.1:7000, 10.0.0.2:7000"
//! relay_key = "<base64 public key of the relay>"  # several: one per relay, in the same order
//! key = "/path/to/client.key"    # client's private key file
//! log = "warn"                   # off|error|warn|info|debug|trace
//! upstream = "socks5://127.0.0.1:9050"  # reach the relay through a SOCKS5 proxy (user:pass@ optional)
//! isolate = false                # fresh SOCKS credentials per session (a circuit each with Tor)
//! [[relays]]                     # instead of relay and relay_key: one table per relay
//! address = "10.0.0.1:7000"
//! key = "<base64 public key of the relay>"
//! group = "eu"                   # optional label
//! weight = 2                     # optional, 1 to 1000 (default 1)
//! [[routes]]                     # multi-hop: 2 or 3 hops, entry first, exit last
//! name = "two-hop"               # optional
//! hops = ["10.0.0.1:7000", "10.0.0.2:7000@<base64 key>"]  # a listed relay, or HOST:PORT@KEY
//! [session]
//! keepalive_secs = 25            # PING after this much idle time
//! idle_timeout_secs = 90         # session dead if nothing received for this long
//! rekey_bytes = 1073741824       # KEY_UPDATE after this many bytes sent under one key
//! rekey_records = 4294967296     # ... or this many records
//! rekey_secs = 600               # ... or this much time
//! stream_window = 262144         # per-stream flow-control credit, bytes
//! session_window = 16777216      # per-session credit, bytes
//! [server]                       # read by qnet-relay --config
//! listen = "127.0.0.1:7000"
//! key = "/etc/qnet/relay.key"
//! clients = "/etc/qnet/clients"
//! exit_allow = ["global:80,443"]
//! allow_own_addresses = false    # the default policy refuses this host's own addresses
//! upstream = "socks5://127.0.0.1:9050"  # exit through a SOCKS5 proxy; names go to it unresolved
//! isolate = false                # fresh SOCKS credentials per client session
//! profile = "performance"        # downstream timing profile for OPENs that ask for none
//! allow_profiles = []            # timing profiles clients may ask for (empty: all)
//! clock_skew_secs = 120          # a first message stamped further from the relay's clock is refused
//! replay_cache = 65536           # first messages remembered against replay (full: new ones refused)
//! drain_min_ms = 5000            # a connection not authenticated is closed at a time drawn at accept,
//! drain_max_ms = 15000           # uniformly in [min, max]; any failure before it reads and discards until then
//! max_connections = 4096         # open client connections; over it a new one is closed at once
//! max_connections_per_addr = 256 # ... from one address (IPv6: one /64)
//! handshakes_per_sec = 1000      # new handshakes a second; over it a connection drains unanswered
//! handshakes_per_sec_per_addr = 50  # ... from one address (IPv6: one /64)
//! sessions_per_key = 32          # live sessions of one client key
//! streams_per_session = 1024     # streams of one session; more: OPEN_RESULT TOO_MANY_STREAMS
//! dials_per_key = 1024           # connects in progress for one key; more: TOO_MANY_STREAMS
//! lookups_per_key = 256          # names being resolved for one key; more: TOO_MANY_STREAMS
//! output_high_water_kib = 4096   # a client's unsent output above which it is not read
//! threads = 0                    # event loops, one thread each; 0: one per core (--threads)
//! relays = ["10.0.0.2:7000@<base64 key>"]  # relays this relay extends routes to (--extend-to)
//! routes = false                 # a later hop of routes: read the preamble (default: relays set)
//! [intercept]                    # read by libqnet.so inside the app
//! bypass = ["127.0.0.0/8", "::1/128"]  # connected directly (CIDR); unix sockets always are
//! remote_dns = true              # names resolve at the relay; the app sees fake addresses
//! fake_net_v4 = "240.0.0.0/4"    # where the fake addresses come from (reserved, unroutable)
//! fake_net_v6 = "100::/64"       # RFC 6666 discard-only block
//! allow_udp = false              # sending UDP and raw/packet sockets on inet families are refused
//! allow_setuid_exec = false      # exec of setuid/setcap programs (which drop LD_PRELOAD) is refused
//! allow_inbound = false          # listen() on a non-loopback address is refused
//! bypass_dns = false             # ports 53 and 853 of bypass addresses (a local resolver) are refused
//! connect_timeout_secs = 30      # a blocking connect through the tunnel gives up after this
//! seccomp = true                 # NO_NEW_PRIVS + a seccomp filter at load (QNET_SECCOMP=0|1 overrides)
//! jail = "prefer"                # qnet run: prefer | require | off a network jail (--jail overrides)
//! [entropy]                      # extra inputs of the entropy ring (the OS is always used)
//! min_entropy = 4.0              # claimed min-entropy per byte of sources without their own
//! sources = ["/dev/hwrng", { path = "/dev/qrandom0", min_entropy = 6.0 }]
//! [timing]                       # client side: the timing profile per destination
//! profile = "performance"        # performance | default | high-security (QNET_PROFILE overrides)
//! rules = ["10.0.0.0/8 high-security", "port:22 performance", "example.org default"]
//! [tor]                          # when an upstream is Tor: its control port
//! control = "127.0.0.1:9051"     # or a unix socket path; cookie/SAFECOOKIE/password from PROTOCOLINFO
//! password_file = "tor-pass"     # or password = "..." (HashedControlPassword); cookie_file = "..."
//! newnym_every_secs = 600        # ask Tor for a new identity this often (at least 10)
//! ```
//!
//! The file must be owned by the user reading it (or root) and writable by no one else;
//! with credentials in an `upstream` URL, readable by no one else either (`chmod 600`).
//!
//! Every key is optional. Unknown keys are errors, so a typo is reported rather than
//! silently ignored. Each table is one file here, which holds its type, its raw TOML
//! shape and its checks; `sources` finds and reads the file and applies the environment.
//!
//! [`Config::load`] reads the first of: the file named by `QNET_CONFIG` (which must
//! exist), `$HOME/.config/qnet/qnet.toml`, `/etc/qnet/qnet.toml`; with none of them it
//! starts from the defaults. Then `QNET_RELAY`, `QNET_RELAY_KEY`, `QNET_KEY`, `QNET_LOG`,
//! `QNET_PROFILE` and `QNET_SECCOMP` override the matching keys; a variable set to the empty string
//! counts as unset. `QNET_RELAY` and `QNET_RELAY_KEY` take comma-separated lists like the
//! file's; either rebuilds the relay list, the other half coming from the file.
//! `QNET_HOPS` (`HOST:PORT@KEY, ...`, entry first; a listed relay's key may be left out)
//! replaces the file's routes with one route.

use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use toml::Value;

mod entropy;
mod intercept;
mod log;
mod relays;
mod server;
mod session;
mod sources;
#[cfg(test)]
mod testutil;
mod timing;
mod tor;
mod upstream;
mod value;

pub use crate::net::Cidr;
pub use entropy::{EntropyConfig, EntropySource};
pub use intercept::{DNS_PORTS, InterceptConfig, JailMode, Route};
pub use log::{LogLevel, ParseLogLevelError};
pub use relays::{Hop, RelayEntry, RouteConfig, WeightedPath, parse_keyed_hop};
pub use server::{ServerConfig, ServerLimits, parse_metrics_listen};
pub use session::SessionParams;
pub(crate) use sources::SYSTEM_CONFIG_PATH;
pub(crate) use timing::parse_profile;
pub use timing::{TimingConfig, TimingMatch, TimingRule};
pub use tor::{TorConfig, TorControl};
pub use upstream::Upstream;

use value::{Origin, toml_error};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// The relays the client knows, in order of preference.
    pub relays: Vec<RelayEntry>,
    /// Multi-hop routes through relays; when any is given, sessions take only these.
    pub routes: Vec<RouteConfig>,
    /// A `relay` or `relay_key` given without the other, for the client to report.
    unpaired: Option<relays::Unpaired>,
    /// The client's private key file.
    pub key: Option<PathBuf>,
    /// Log verbosity.
    pub log: LogLevel,
    /// Reach the relay through this SOCKS5 proxy.
    pub upstream: Option<Upstream>,
    /// Session tunables, from the `[session]` table.
    pub session: SessionParams,
    /// Relay server settings, from the `[server]` table.
    pub server: ServerConfig,
    /// What the preloaded library intercepts, from the `[intercept]` table.
    pub intercept: InterceptConfig,
    /// Extra entropy sources, from the `[entropy]` table.
    pub entropy: EntropyConfig,
    /// Timing profiles per destination, from the `[timing]` table.
    pub timing: TimingConfig,
    /// Tor's control port, from the `[tor]` table.
    pub tor: Option<TorConfig>,
}

/// A configuration problem, displayed as one line naming where it is.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A key has a bad value.
    #[error("config {origin}: {field}: {message}")]
    Field {
        /// File (or other label) the config came from.
        origin: String,
        /// Dotted key, e.g. `session.stream_window`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The TOML is malformed or has an unknown key.
    #[error("config {origin}: line {line}: {message}")]
    Syntax {
        /// File (or other label) the config came from.
        origin: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The TOML was rejected without a position to report.
    #[error("config {origin}: {message}")]
    Toml {
        /// File (or other label) the config came from.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A config file could not be read.
    #[error("config {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A config file that others may change, or read credentials from.
    #[error(transparent)]
    Permissions(#[from] crate::fileperm::PermError),
    /// An environment variable has a bad value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable, e.g. `QNET_RELAY`.
        var: String,
        /// What is wrong with it.
        message: String,
    },
}

// Raw shape of the file. Values stay untyped so that a wrong type is reported with the
// field's dotted name, which serde's own type errors do not carry.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    relay: Option<Value>,
    relay_key: Option<Value>,
    relays: Option<Vec<relays::RawRelay>>,
    routes: Option<Vec<relays::RawRoute>>,
    upstream: Option<Value>,
    isolate: Option<Value>,
    key: Option<Value>,
    log: Option<Value>,
    session: Option<session::RawSession>,
    server: Option<server::RawServer>,
    intercept: Option<intercept::RawIntercept>,
    entropy: Option<entropy::RawEntropy>,
    timing: Option<timing::RawTiming>,
    tor: Option<tor::RawTor>,
}

impl Config {
    /// Loads from the standard places, then applies environment overrides.
    pub fn load() -> Result<Config, ConfigError> {
        Config::load_with(None, sources::process_env, Path::new(SYSTEM_CONFIG_PATH))
    }

    /// Loads `path` (from `--config`) if given, else searches as [`Config::load`] does.
    pub fn load_from(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with(path, sources::process_env, Path::new(SYSTEM_CONFIG_PATH))
    }

    /// Parses and validates TOML text; `origin` labels errors (usually the file name).
    pub(crate) fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(origin, text, &e))?;
        Config::from_raw(raw, &Origin(origin))
    }

    /// Whether an `upstream` URL (client or `[server]`) carries a user and password, or
    /// `[tor]` a control-port password.
    fn has_credentials(&self) -> bool {
        [&self.upstream, &self.server.upstream]
            .into_iter()
            .any(|u| u.as_ref().is_some_and(|u| u.credentials.is_some()))
            || self.tor.as_ref().is_some_and(|t| t.password.is_some())
    }

    fn from_raw(raw: RawConfig, o: &Origin<'_>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        config.read_relays(o, raw.relay, raw.relay_key, raw.relays, raw.routes)?;
        config.upstream = Upstream::from_raw(o, "", raw.upstream, raw.isolate)?;
        if let Some(v) = raw.key {
            config.key = Some(o.path("key", v)?);
        }
        if let Some(v) = raw.log {
            let s = o.string("log", v)?;
            config.log = s
                .parse()
                .map_err(|e: ParseLogLevelError| o.err("log", e.to_string()))?;
        }
        if let Some(s) = raw.session {
            config.session = SessionParams::from_raw(s, o)?;
        }
        if let Some(s) = raw.server {
            config.server = ServerConfig::from_raw(s, o)?;
        }
        if let Some(s) = raw.intercept {
            config.intercept = InterceptConfig::from_raw(s, o)?;
        }
        if let Some(s) = raw.entropy {
            config.entropy = EntropyConfig::from_raw(s, o)?;
        }
        if let Some(t) = raw.timing {
            config.timing = TimingConfig::from_raw(t, o)?;
        }
        if let Some(t) = raw.tor {
            config.tor = Some(TorConfig::from_raw(t, o)?);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::testutil::{KEY_B64, err, parse};
    use super::*;

    #[test]
    fn empty_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.log, LogLevel::Warn);
        assert_eq!(c.session.keepalive, Duration::from_secs(25));
        assert_eq!(c.session.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.session.rekey_bytes, 1_073_741_824);
        assert_eq!(c.session.rekey_records, 4_294_967_296);
        assert_eq!(c.session.rekey_interval, Duration::from_secs(600));
        assert_eq!(c.session.stream_window, 262_144);
        assert_eq!(c.session.session_window, 16_777_216);
        assert!(c.server.exit_allow.is_empty());
        assert!(c.relays.is_empty() && c.routes.is_empty() && c.key.is_none());
        assert!(c.paths().is_empty() && c.relay_without_key().is_none());
    }

    #[test]
    fn readme_configuration_example_parses() {
        // The README's full example must stay a valid config, every key spelled right.
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("## Configuration").expect("section")..];
        let start = section.find("```toml\n").expect("a toml block") + 8;
        let block = &section[start..start + section[start..].find("```").unwrap()];
        let block = block.replace("<base64 public key of the relay>", KEY_B64);
        let c = parse(&block).unwrap_or_else(|e| panic!("README example: {e}"));
        assert_eq!(c.timing.rules.len(), 3);
        assert!(c.server.upstream.is_some() && !c.server.allow_profiles.is_empty());
    }

    #[test]
    fn full_file_parses() {
        let text = format!(
            r#"
relay = "relay.example.com:7000"
relay_key = "{KEY_B64}"
key = "/path/to/client.key"
log = "debug"
[session]
keepalive_secs = 10
idle_timeout_secs = 30
rekey_bytes = 1000
rekey_records = 2000
rekey_secs = 60
stream_window = 16384
session_window = 1073741824
[server]
listen = "[::]:7000"
key = "/etc/qnet/relay.key"
clients = "/etc/qnet/clients"
exit_allow = ["0.0.0.0/0:80,443", "[::1]/128:22"]
allow_own_addresses = true
clock_skew_secs = 30
replay_cache = 1000
drain_min_ms = 200
drain_max_ms = 400
"#
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.relays,
            [RelayEntry {
                address: "relay.example.com:7000".into(),
                key: KEY_B64.parse().unwrap(),
                group: None,
                weight: 1,
            }]
        );
        assert_eq!(c.key, Some(PathBuf::from("/path/to/client.key")));
        assert_eq!(c.log, LogLevel::Debug);
        assert_eq!(
            c.session,
            SessionParams {
                keepalive: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(30),
                rekey_bytes: 1000,
                rekey_records: 2000,
                rekey_interval: Duration::from_secs(60),
                stream_window: 16384,
                session_window: 1 << 30,
                offer_aes: true,
            }
        );
        assert_eq!(c.server.listen.as_deref(), Some("[::]:7000"));
        assert_eq!(c.server.key, Some(PathBuf::from("/etc/qnet/relay.key")));
        assert_eq!(c.server.clients, Some(PathBuf::from("/etc/qnet/clients")));
        assert_eq!(c.server.exit_allow, ["0.0.0.0/0:80,443", "[::1]/128:22"]);
        assert!(c.server.allow_own_addresses);
        assert!(!parse("").unwrap().server.allow_own_addresses);
        assert!(err("[server]\nallow_own_addresses = 1").contains("server.allow_own_addresses"));
        assert_eq!(c.server.clock_skew, Duration::from_secs(30));
        assert_eq!(c.server.replay_cache, 1000);
        assert_eq!(c.server.drain_min, Duration::from_millis(200));
        assert_eq!(c.server.drain_max, Duration::from_millis(400));
    }

    #[test]
    fn replay_settings_are_bounded() {
        assert!(err("[server]\nclock_skew_secs = 0").contains("server.clock_skew_secs"));
        assert!(err("[server]\nclock_skew_secs = 3601").contains("at most 3600"));
        assert!(err("[server]\nreplay_cache = -1").contains("server.replay_cache"));
        let d = parse("").unwrap().server;
        assert_eq!(d.clock_skew, Duration::from_secs(120));
        assert_eq!(d.replay_cache, 65536);
    }

    #[test]
    fn server_limits_are_read_and_checked() {
        let l = parse(
            "[server]\nmax_connections = 10\nmax_connections_per_addr = 2\nhandshakes_per_sec = 5\nhandshakes_per_sec_per_addr = 1\nsessions_per_key = 3\nstreams_per_session = 4\ndials_per_key = 5\nlookups_per_key = 6\noutput_high_water_kib = 64",
        )
        .unwrap()
        .server
        .limits;
        assert_eq!(
            l,
            ServerLimits {
                max_connections: 10,
                max_connections_per_addr: 2,
                handshakes_per_sec: 5,
                handshakes_per_sec_per_addr: 1,
                sessions_per_key: 3,
                streams_per_session: 4,
                dials_per_key: 5,
                lookups_per_key: 6,
                output_high_water: 64 << 10,
            }
        );
        assert_eq!(parse("").unwrap().server.limits, ServerLimits::default());
        assert!(err("[server]\nmax_connections = 0").contains("server.max_connections"));
        assert!(err("[server]\nsessions_per_key = 4294967296").contains("too large"));
        assert!(err("[server]\noutput_high_water_kib = 1048577").contains("at most"));
    }

    #[test]
    fn drain_window_is_checked() {
        assert!(err("[server]\ndrain_min_ms = 0").contains("server.drain_min_ms"));
        assert!(err("[server]\ndrain_max_ms = 600001").contains("at most 600000"));
        let msg = err("[server]\ndrain_min_ms = 500\ndrain_max_ms = 400");
        assert!(msg.contains("must not exceed server.drain_max_ms"), "{msg}");
        // A window of one point is allowed; a min alone above the default max is not.
        assert!(parse("[server]\ndrain_min_ms = 300\ndrain_max_ms = 300").is_ok());
        assert!(err("[server]\ndrain_min_ms = 20000").contains("must not exceed"));
        let d = parse("").unwrap().server;
        assert_eq!(
            (d.drain_min, d.drain_max),
            (Duration::from_secs(5), Duration::from_secs(15))
        );
    }

    #[test]
    fn server_threads_are_zero_for_one_per_core_or_a_bounded_count() {
        assert_eq!(parse("").unwrap().server.threads, 0);
        assert_eq!(parse("[server]\nthreads = 3").unwrap().server.threads, 3);
        assert!(err("[server]\nthreads = -1").contains("server.threads"));
        assert!(err("[server]\nthreads = 100000").contains("must be 0 (one per core) to 256"));
        assert!(err("[server]\nthreads = \"4\"").contains("server.threads"));
    }

    #[test]
    fn unknown_fields_are_errors() {
        let msg = err("relay = \"a.b:1\"\nfoo = 1\n");
        assert!(
            msg.starts_with("config /etc/qnet/qnet.toml: line 2: "),
            "{msg}"
        );
        assert!(msg.contains("unknown field `foo`"), "{msg}");
        let msg = err("[session]\nkeepalive_secs = 5\nkeepalive = 5\n");
        assert!(msg.contains("line 3: "), "{msg}");
        assert!(msg.contains("unknown field `keepalive`"), "{msg}");
        let msg = err("[server]\nlisten_addr = \"x:1\"\n");
        assert!(msg.contains("unknown field `listen_addr`"), "{msg}");
        let msg = err("[bogus]\n");
        assert!(msg.contains("unknown field `bogus`"), "{msg}");
    }

    #[test]
    fn relay_key_and_log_validation() {
        let msg = err("relay_key = \"short\"");
        assert!(
            msg.starts_with("config /etc/qnet/qnet.toml: relay_key: invalid key"),
            "{msg}"
        );
        let msg = err("log = \"loud\"");
        assert!(
            msg.starts_with("config /etc/qnet/qnet.toml: log: unknown log level"),
            "{msg}"
        );
        assert!(err("key = \"\"").contains("key: must not be empty"));
        assert!(
            err("[server]\nexit_allow = [\"  \"]")
                .contains("server.exit_allow[0]: must not be empty")
        );
    }
}
