//! qnet-relay: the tunnel's server end.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Parser;
use qnet::config::{Config, Upstream};
use qnet::config::{parse_keyed_hop, parse_metrics_listen};
use qnet::engine::{log, session_config};
use qnet::keys::{load_allow_list, load_private_key};
use qnet::proto::admit::Admission;
use qnet::relay::extend::ExtendPolicy;
use qnet::relay::policy::ExitPolicy;
use qnet::relay::server::{ExitProxy, Relay, RelayConfig};
use qnet::sched::Profile;
use qnet::tor::TorWatch;

/// Settings only the config file's `[server]` table sets (src/config/mod.rs lists them all).
const SERVER_ONLY: &str = "\
[server] settings without a flag (in the --config file):
  clock_skew_secs = 120   a first message stamped further than this from the relay's
                          clock is refused, silently
  replay_cache = 65536    first messages remembered against replay (one /24 or /48 may
                          hold 1/16); when full, new handshakes are refused until
                          entries expire (2 x skew at most)
  drain_min_ms = 5000     a connection that has not authenticated is closed at a time
  drain_max_ms = 15000    drawn at accept, uniformly in [min, max]; any failure before
                          then (no bytes, garbage, a replay, a slow trickle) is read and
                          discarded until that time, without a byte in reply
  max_connections = 4096  open client connections, and from one address (IPv6: a
  max_connections_per_addr = 256   /64); over either a new one is closed at once
  handshakes_per_sec = 1000         new handshakes a second, and from one address;
  handshakes_per_sec_per_addr = 50  over either a connection drains unanswered, no
                          key work done for it
  sessions_per_key = 32   per client key: live sessions (more are closed), streams per
  streams_per_session = 1024  session, connects in progress and names being resolved
  dials_per_key = 1024    (over these an OPEN gets TOO_MANY_STREAMS)
  lookups_per_key = 256
  output_high_water_kib = 4096  a client whose unsent output is above this is not read
                          until it drains";

/// The qnet relay: accepts authenticated sessions and exits to TCP destinations.
#[derive(Debug, Parser)]
#[command(name = "qnet-relay", version, about, after_help = SERVER_ONLY)]
struct Args {
    /// Address to listen on (port 0 picks one; the bound address is printed on stderr).
    #[arg(long)]
    listen: Option<String>,
    /// The relay's private key file (mode 600, owned by this user or root).
    #[arg(long)]
    key: Option<PathBuf>,
    /// File of admitted client public keys, one base64 key per line; SIGHUP re-reads it.
    /// It must not be writable by group or others.
    #[arg(long)]
    clients: Option<PathBuf>,
    /// Allowed destinations as CIDR[:PORTS] (repeatable); replaces the default policy
    /// (every globally routable address, nothing private or local).
    #[arg(long = "exit-allow", value_name = "CIDR[:PORTS]")]
    exit_allow: Vec<String>,
    /// Let the default policy and `global` rules reach this host's own addresses (every
    /// interface's, re-read on SIGHUP and every 5 s), which they refuse otherwise.
    #[arg(long)]
    allow_own_addresses: bool,
    /// Config file (the `[server]` table and `[session]` tunables); not writable by group
    /// or others, and mode 600 if an upstream URL holds a password.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seconds a destination may take to accept a connection.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    /// Exit through this SOCKS5 proxy (e.g. Tor's SocksPort): names go to it unresolved.
    #[arg(long, value_name = "socks5://[USER:PASS@]HOST:PORT")]
    upstream: Option<String>,
    /// Present fresh SOCKS credentials per client session (a Tor circuit each).
    #[arg(long)]
    isolate: bool,
    /// A relay this one extends client sessions to as a middle hop of a multi-hop route,
    /// with its public key (repeatable; replaces [server] relays). Extends go there
    /// directly, whatever the exit policy says; never to this relay itself, nor straight
    /// back to the address a session came from, nor past a route's third hop.
    #[arg(long = "extend-to", value_name = "HOST:PORT@KEY")]
    extend_to: Vec<String>,
    /// Take part in routes as a later hop: read the preamble an extending relay sends
    /// ahead of a client's bytes (on by default when this relay extends; [server] routes).
    #[arg(long)]
    routes: bool,
    /// Event loops, one thread each (0: one per core, the default; [server] threads).
    /// Each session stays on one loop; caps and quotas hold for the whole relay.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Serve Prometheus metrics at http://ADDR/metrics ([server] metrics): a bare PORT
    /// listens on 127.0.0.1. No series names a client key, an address or a destination.
    #[arg(long, value_name = "[HOST:]PORT")]
    metrics: Option<String>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qnet-relay: {}", e.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let cfg = match &args.config {
        Some(p) => Config::load_from(Some(p)),
        None => Config::load(),
    }
    .map_err(|e| e.to_string())?;
    log::set_level(cfg.log);
    qnet::entropy::configure(&cfg.entropy).map_err(|e| e.to_string())?;
    let listen = args
        .listen
        .or(cfg.server.listen.clone())
        .ok_or("--listen (or [server] listen) is required")?;
    let listen = std::net::ToSocketAddrs::to_socket_addrs(&listen)
        .map_err(|e| format!("--listen {listen}: {e}"))?
        .next()
        .ok_or_else(|| format!("--listen {listen}: no address"))?;
    let key_path = args
        .key
        .or(cfg.server.key.clone())
        .ok_or("--key (or [server] key) is required")?;
    let key = load_private_key(&key_path).map_err(|e| e.to_string())?;
    let clients_path = args
        .clients
        .or(cfg.server.clients.clone())
        .ok_or("--clients (or [server] clients) is required")?;
    let clients = load_allow_list(&clients_path).map_err(|e| e.to_string())?;
    let clients = Admission::shared(key.as_bytes(), clients.iter().map(|k| k.0));
    let rules = if args.exit_allow.is_empty() {
        cfg.server.exit_allow.clone()
    } else {
        args.exit_allow
    };
    let mut policy = ExitPolicy::from_exit_allow(&rules).map_err(|e| e.to_string())?;
    if args.allow_own_addresses || cfg.server.allow_own_addresses {
        policy = policy.allowing_own_addrs();
    }
    let mut upstream = match &args.upstream {
        Some(u) => Some(Upstream::parse(u).map_err(|e| format!("--upstream: {e}"))?),
        None => cfg.server.upstream.clone(),
    };
    if args.isolate {
        upstream
            .as_mut()
            .ok_or("--isolate needs an upstream (--upstream or [server] upstream)")?
            .isolate = true;
    }
    let upstream = match upstream {
        Some(u) => {
            let addr = std::net::ToSocketAddrs::to_socket_addrs(&u.proxy)
                .map_err(|e| format!("upstream {}: {e}", u.proxy))?
                .next()
                .ok_or_else(|| format!("upstream {}: no address", u.proxy))?;
            Some(ExitProxy {
                addr,
                credentials: u.credentials.map(|(a, b)| (a.into_bytes(), b.into_bytes())),
                isolate: u.isolate,
                tor: match &cfg.tor {
                    Some(t) => {
                        let w =
                            TorWatch::start(t.clone(), || {}).map_err(|e| format!("tor: {e}"))?;
                        w.first_answer();
                        Some(Arc::new(w))
                    }
                    None => None,
                },
            })
        }
        None => None,
    };
    let extend_to = if args.extend_to.is_empty() {
        cfg.server.relays.clone()
    } else {
        args.extend_to
            .iter()
            .map(|t| parse_keyed_hop(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--extend-to {e}"))?
    };
    let extend = ExtendPolicy::new(&extend_to).map_err(|e| format!("--extend-to: {e}"))?;
    // A relay that extends must know its own position, or the hop limit resets there.
    if cfg.server.routes == Some(false) && !extend.is_empty() {
        return Err("[server] routes = false cannot go with relays to extend to: a relay that extends reads its position from the preamble".into());
    }
    let routes = args.routes || cfg.server.routes.unwrap_or(false) || !extend.is_empty();
    qnet::engine::raise_fd_limit();

    let relay_cfg = RelayConfig {
        key,
        clients,
        clients_path: Some(clients_path),
        policy,
        extend,
        routes,
        session: session_config(&cfg.session),
        connect_timeout: Duration::from_secs(args.connect_timeout),
        upstream,
        profile: cfg.server.profile.unwrap_or(Profile::Performance),
        allow_profiles: cfg.server.allow_profiles.clone(),
        clock_skew: cfg.server.clock_skew,
        replay_capacity: cfg.server.replay_cache,
        drain_min: cfg.server.drain_min,
        drain_max: cfg.server.drain_max,
        threads: args.threads.unwrap_or(cfg.server.threads),
    };
    let mut relay =
        Relay::bind(listen, relay_cfg).map_err(|e| format!("listen on {listen}: {e}"))?;
    relay.set_limits(cfg.server.limits);
    let addr = relay.local_addr().map_err(|e| e.to_string())?;
    let metrics = match &args.metrics {
        Some(m) => Some(parse_metrics_listen(m).map_err(|e| format!("--metrics {e}"))?),
        None => cfg.server.metrics,
    };
    let metrics = metrics
        .map(|m| {
            qnet::relay::metrics::http::serve(m, relay.metrics())
                .map_err(|e| format!("metrics on {m}: {e}"))
        })
        .transpose()?;
    // First stderr line, parsed by scripts and tests when --listen uses port 0.
    eprintln!("qnet-relay listening on {addr}");
    if let Some(m) = metrics {
        eprintln!("qnet-relay metrics on http://{m}/metrics");
    }
    qnet::qlog!(Info, "{} event loops", relay.threads());

    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| e.to_string())?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .map_err(|e| e.to_string())?;
    relay.run(&stop, &reload).map_err(|e| e.to_string())?;
    if let Some(r) = relay.lateness.report(relay.shaping_failures) {
        eprintln!("qnet-relay: {r}");
    }
    Ok(())
}
