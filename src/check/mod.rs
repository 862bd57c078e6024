//! `qnet check`: what is wrong before a program runs. One line per check, each `ok`,
//! `FAIL` with what to do, or `skip`: the config loads; the client key file (its mode
//! and owner through `fileperm`, as every load does); the jail and the seccomp filter
//! can be made here; then for each configured path: the entry relay is reachable, every
//! hop's handshake completes (its key matches and this client is admitted), the exit's
//! policy allows a test destination, and its resolver finds a name.
//!
//! A relay is silent to a msg1 it does not admit, and a wrong relay key looks to it just
//! like a client key not on its list: both leave the admission tag random bytes. So the
//! wire cannot tell the two apart and the relay is not made to; what can be told apart
//! here is (own key as relay key, the same key for two relays, a key file's mode), and
//! the relay's own files (`--relay-key-file`, `--clients-file`) settle the rest when the
//! user has them at hand. `advice` holds the wording, `engine::client::probe` the trial.

mod advice;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use advice::{Line, LocalFiles, Silence, Status};

use crate::config::{Config, JailMode};
use crate::engine::client::{ClientConfig, OpenOutcome, ProbeFault, parse_destination};
use crate::keys::PublicKey;
use crate::proto::Destination;

/// The test destination when `--to` is not given.
pub const DEFAULT_TO: &str = "example.com:443";

/// What to check, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// The destination the exit policy is asked about (`host:port`).
    pub to: String,
    /// The name the exit relay is asked to resolve (default: `to`'s host, if a name).
    pub name: Option<String>,
    /// Each step's time limit (connect, each handshake, the OPENs).
    pub timeout: Duration,
    /// The relay's private key file, when it is at hand: tells a wrong relay key apart.
    pub relay_key_file: Option<PathBuf>,
    /// The relay's clients file, when it is at hand: tells a missing entry apart.
    pub clients_file: Option<PathBuf>,
}

/// The lines written so far and whether any failed.
struct Report<'a> {
    out: &'a mut dyn Write,
    failed: bool,
}

impl Report<'_> {
    fn say(&mut self, line: Line) -> io::Result<()> {
        self.failed |= line.status == Status::Fail;
        writeln!(self.out, "{line}")?;
        self.out.flush()
    }
}

/// Run every check, one line each to `out`. `Ok(true)` when none failed; `Err` only for
/// a bad option or an output that cannot be written.
pub fn run(o: &Options, out: &mut dyn Write) -> Result<bool, Box<dyn std::error::Error>> {
    let to = parse_destination(&o.to).map_err(|e| format!("--to {e}"))?;
    let name = match (&o.name, &to) {
        (Some(n), d) => Some(
            parse_destination(&format!("{n}:{}", port(d)))
                .map_err(|_| format!("--name {n}: invalid hostname"))?,
        ),
        (None, Destination::Name(..)) => Some(to.clone()),
        (None, Destination::Addr(_)) => None,
    };
    let mut r = Report { out, failed: false };
    let source = Config::source(o.config.as_deref());
    let cfg = match Config::load_from(o.config.as_deref()) {
        Ok(c) => {
            let what = source.as_ref().map_or_else(
                || "(no file: defaults and QNET_* variables)".to_owned(),
                |p| p.display().to_string(),
            );
            let n = |k: usize, one: &str, many: &str| {
                format!("{k} {}", if k == 1 { one } else { many })
            };
            let count = format!(
                "{}, {}",
                n(c.relays.len(), "relay", "relays"),
                n(c.routes.len(), "route", "routes")
            );
            r.say(Line::new(
                Status::Ok,
                format!("config {what} parses ({count})"),
            ))?;
            Some(c)
        }
        Err(e) => {
            r.say(Line::new(Status::Fail, advice::config_failed(&e)))?;
            None
        }
    };
    let defaults = Config::default();
    local_checks(&mut r, cfg.as_ref().unwrap_or(&defaults))?;
    let Some(cfg) = cfg else {
        r.say(Line::new(
            Status::Skip,
            "relays: not checked, the config did not load",
        ))?;
        return Ok(!r.failed);
    };
    let Some(own) = key_check(&mut r, &cfg)? else {
        r.say(Line::new(
            Status::Skip,
            "relays: not checked without a client key",
        ))?;
        return Ok(!r.failed);
    };
    if let Err(e) = crate::entropy::configure(&cfg.entropy) {
        r.say(Line::new(Status::Fail, format!("entropy: {e}")))?;
        return Ok(false);
    }
    match ClientConfig::from_config(&cfg) {
        Ok(client) => {
            let mut dests = vec![to];
            dests.extend(name);
            paths_check(&mut r, o, &client, own, &dests)?;
        }
        Err(e) => r.say(Line::new(
            Status::Fail,
            format!("{e}: add relay = \"HOST:PORT\" and relay_key = \"KEY\" to the config"),
        ))?,
    }
    Ok(!r.failed)
}

fn port(d: &Destination) -> u16 {
    match d {
        Destination::Addr(a) => a.port(),
        Destination::Name(_, p) => *p,
    }
}

fn show(d: &Destination) -> String {
    match d {
        Destination::Addr(a) => a.to_string(),
        Destination::Name(h, p) => format!("{h}:{p}"),
    }
}

/// The jail and the seccomp filter, as the config asks for them.
fn local_checks(r: &mut Report<'_>, cfg: &Config) -> io::Result<()> {
    r.say(if cfg.intercept.jail == JailMode::Off {
        Line::new(Status::Skip, "jail: off (intercept.jail)")
    } else {
        match crate::jail::run::probe() {
            Ok(()) => Line::new(
                Status::Ok,
                "jail: `qnet run` can make a network namespace here",
            ),
            Err(e) => Line::new(Status::Fail, advice::no_jail(&e, &userns_sysctls())),
        }
    })?;
    r.say(if !cfg.intercept.seccomp {
        Line::new(Status::Skip, "seccomp: off (intercept.seccomp)")
    } else {
        match crate::os::seccomp_probe() {
            Ok(()) => Line::new(Status::Ok, "seccomp: the kernel takes libqnet.so's filter"),
            Err(e) => Line::new(Status::Fail, advice::no_seccomp(&e)),
        }
    })
}

fn userns_sysctls() -> advice::UsernsSysctls {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    advice::UsernsSysctls {
        unprivileged_userns_clone: read("/proc/sys/kernel/unprivileged_userns_clone"),
        apparmor_restrict: read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
        max_user_namespaces: read("/proc/sys/user/max_user_namespaces"),
    }
}

/// The client key file: this client's public key when it loads.
fn key_check(r: &mut Report<'_>, cfg: &Config) -> io::Result<Option<PublicKey>> {
    let Some(path) = &cfg.key else {
        r.say(Line::new(Status::Fail, advice::no_key()))?;
        return Ok(None);
    };
    match crate::keys::load_private_key(path) {
        Ok(k) => {
            let public = k.public();
            let text = format!("key {} (public key {public})", path.display());
            r.say(Line::new(Status::Ok, text))?;
            Ok(Some(public))
        }
        Err(e) => {
            r.say(Line::new(Status::Fail, advice::key_failed(path, &e)))?;
            Ok(None)
        }
    }
}

/// Every configured path, tried in turn.
fn paths_check(
    r: &mut Report<'_>,
    o: &Options,
    client: &ClientConfig,
    own: PublicKey,
    dests: &[Destination],
) -> io::Result<()> {
    let every_hop: Vec<(String, [u8; 32])> = client
        .paths
        .iter()
        .flat_map(|p| p.hops.iter().map(|h| (h.address.clone(), h.key)))
        .collect();
    for (p, path) in client.paths.iter().enumerate() {
        let hops: Vec<String> = path.hops.iter().map(|h| h.address.clone()).collect();
        let label = hops.join(" -> ");
        if let Some(h) = path.hops.iter().find(|h| h.key == own.0) {
            r.say(Line::new(Status::Fail, advice::own_key(&h.address, &own)))?;
            continue;
        }
        let probe = crate::engine::client::probe(client, p, dests, o.timeout);
        let upstream = client.upstream.as_ref().map(|u| u.proxy.as_str());
        let Some(connect) = probe.connect else {
            let fault = probe
                .fault
                .as_ref()
                .expect("a probe without a connect has a fault");
            r.say(Line::new(
                Status::Fail,
                advice::stopped(&hops, fault, upstream),
            ))?;
            continue;
        };
        let via = upstream.map_or(String::new(), |u| format!(" through {u}"));
        r.say(Line::new(
            Status::Ok,
            format!(
                "relay {} reachable{via} (TCP connect {})",
                hops[0],
                ms(connect)
            ),
        ))?;
        match &probe.fault {
            Some(ProbeFault::Silent { hop }) => {
                let key = PublicKey(path.hops[*hop].key);
                let same_key_as = every_hop
                    .iter()
                    .filter(|(a, k)| *k == key.0 && *a != hops[*hop])
                    .map(|(a, _)| a.clone())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let files = relay_files(o, own);
                let s = Silence {
                    relay: &hops[*hop],
                    key,
                    own,
                    same_key_as,
                    files,
                };
                r.say(advice::silent(&s))?;
                continue;
            }
            Some(f) => {
                r.say(Line::new(Status::Fail, advice::stopped(&hops, f, upstream)))?;
                continue;
            }
            None => {}
        }
        let took = probe
            .handshake
            .map_or_else(String::new, |d| format!(" ({})", ms(d)));
        let what = if hops.len() == 1 {
            format!("relay {label}")
        } else {
            format!("route {label}: every hop")
        };
        r.say(Line::new(
            Status::Ok,
            format!("{what}: handshake complete, key matches, this client is admitted{took}"),
        ))?;
        let exit = hops.last().expect("a path has a hop");
        let policy = probe
            .opens
            .first()
            .copied()
            .unwrap_or(OpenOutcome::NoAnswer);
        r.say(advice::policy(exit, &show(&dests[0]), policy))?;
        match (dests.get(1), probe.opens.get(1)) {
            (Some(Destination::Name(n, _)), Some(&outcome)) => {
                r.say(advice::name(exit, n, outcome))?;
            }
            _ => r.say(Line::new(
                Status::Skip,
                "name resolution: --to is an address; --name HOST asks the relay's resolver",
            ))?,
        }
    }
    Ok(())
}

/// What the relay's own files, if given, say about this client and the relay's key.
fn relay_files(o: &Options, own: PublicKey) -> LocalFiles {
    let name = |p: &Path| p.display().to_string();
    LocalFiles {
        relay_key: o.relay_key_file.as_deref().map(|p| {
            let k = crate::keys::load_private_key(p).map(|k| k.public());
            (name(p), k.map_err(|e| e.to_string()))
        }),
        listed: o.clients_file.as_deref().map(|p| {
            let l = crate::keys::load_allow_list(p).map(|l| l.contains(&own));
            (name(p), l.map_err(|e| e.to_string()))
        }),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
