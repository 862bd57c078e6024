//! What `qnet check` says for each finding: pure functions from facts to one message,
//! each naming what to do. Kept apart from the probing so every failure's wording is
//! tested without a relay.

use std::io;
use std::path::Path;

use crate::config::ConfigError;
use crate::engine::client::{OpenOutcome, ProbeFault};
use crate::keys::{KeyError, PublicKey};
use crate::proto::OpenError;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// It passed.
    Ok,
    /// It failed: the message says what to do.
    Fail,
    /// It does not apply here (or could not run because an earlier check failed).
    Skip,
}

/// One finding: a status, its line, and indented lines under it for values to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// The outcome.
    pub(crate) status: Status,
    /// The one line.
    pub(crate) text: String,
    /// Further lines (the values a silent relay leaves to compare).
    pub(crate) more: Vec<String>,
}

impl Line {
    /// A finding without further lines.
    pub(crate) fn new(status: Status, text: impl Into<String>) -> Line {
        Line {
            status,
            text: text.into(),
            more: Vec::new(),
        }
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = match self.status {
            Status::Ok => "ok",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        write!(f, "{tag:<6}{}", self.text)?;
        for m in &self.more {
            write!(f, "\n      {m}")?;
        }
        Ok(())
    }
}

/// The config did not load: its own message (it names the file and field), plus where
/// the value it wants comes from when that is not obvious.
pub(crate) fn config_failed(e: &ConfigError) -> String {
    let msg = e.to_string();
    // Only relays' keys are written in a config (the client's is a file name), so a key
    // that does not parse is one of theirs, wherever it is written.
    let hint = if msg.contains("invalid key") {
        "; a relay's key is printed on the relay by `qnet pubkey < relay.key`"
    } else {
        ""
    };
    format!("{msg}{hint}")
}

/// The client key file did not load.
pub(crate) fn key_failed(path: &Path, e: &KeyError) -> String {
    let p = path.display();
    match e {
        KeyError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => format!(
            "key file {p} does not exist: make one with `(umask 077; qnet keygen > {p})`, \
             then add the output of `qnet pubkey < {p}` to the relay's clients file"
        ),
        KeyError::BadKeyFile { .. } => {
            format!("{e}: it must hold one base64 private key, as `qnet keygen` prints")
        }
        // Owner and mode messages name the command that fixes them already.
        _ => e.to_string(),
    }
}

/// No `key` in the config.
pub(crate) fn no_key() -> String {
    "no client key configured: add `key = \"client.key\"` to the config (or set QNET_KEY), \
     made by `(umask 077; qnet keygen > client.key)`"
        .to_owned()
}

/// A hop's configured key is this client's own public key.
pub(crate) fn own_key(relay: &str, own: &PublicKey) -> String {
    format!(
        "relay key of {relay} is this client's own public key ({own}): relay_key must be \
         the relay's, printed on the relay by `qnet pubkey < relay.key`"
    )
}

/// What the relay's own files, read here, say (`--relay-key-file`, `--clients-file`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct LocalFiles {
    /// The relay's public key from its key file, and that file's name.
    pub(crate) relay_key: Option<(String, Result<PublicKey, String>)>,
    /// Whether this client's key is in the clients file, and that file's name.
    pub(crate) listed: Option<(String, Result<bool, String>)>,
}

/// Everything known about a relay that stayed silent to msg1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Silence<'a> {
    /// The silent relay's address.
    pub(crate) relay: &'a str,
    /// The key configured for it.
    pub(crate) key: PublicKey,
    /// This client's public key.
    pub(crate) own: PublicKey,
    /// Other configured relays (by address) given the same key.
    pub(crate) same_key_as: Vec<String>,
    /// The relay's files, if the user pointed at them.
    pub(crate) files: LocalFiles,
}

/// A relay that completed TCP but answered not one byte to msg1. On the wire a wrong
/// relay key and a client key not on its allow-list look alike (the relay cannot tell
/// them apart either: both make msg1's admission tag random bytes to it), so unless the
/// relay's own files settle it, say both with the values to compare.
pub(crate) fn silent(s: &Silence<'_>) -> Line {
    let (relay, key, own) = (s.relay, s.key, s.own);
    let add_line = |file: &str| {
        format!("add the line `{own}` to {file} on the relay, then `kill -HUP` qnet-relay")
    };
    let decided = match (&s.files.relay_key, &s.files.listed) {
        (Some((f, Err(e))), _) | (_, Some((f, Err(e)))) => Some(format!("cannot read {f}: {e}")),
        (Some((f, Ok(real))), _) if *real != key => Some(format!(
            "wrong relay key for {relay}: the config has {key}, its key file {f} gives {real}: \
             set relay_key = \"{real}\""
        )),
        (_, Some((f, Ok(false)))) => Some(format!(
            "this client is not on {relay}'s allow-list: {}",
            add_line(f)
        )),
        (Some((f, Ok(_))), None) => Some(format!(
            "relay key {key} matches {f}, so this client's key is not on {relay}'s \
             allow-list: add the line `{own}` to its clients file, then `kill -HUP` qnet-relay"
        )),
        (None, Some((f, Ok(true)))) => Some(format!(
            "this client is on {f}, so the relay key {key} configured for {relay} is likely \
             wrong: compare it with `qnet pubkey < relay.key` on the relay"
        )),
        (Some(_), Some((f, Ok(true)))) => Some(format!(
            "{relay} is silent though its key file and {f} both match: is it running with \
             these files (restart it, or `kill -HUP` after editing {f})? is this host's \
             clock within the relay's clock_skew_secs of its own?"
        )),
        (None, None) => None,
    };
    if let Some(text) = decided {
        return Line::new(Status::Fail, text);
    }
    let mut more = vec![
        format!(
            "either the relay key is wrong: the config has {key}; on the relay, \
             `qnet pubkey < relay.key` must print the same"
        ),
        format!(
            "or this client is not on its allow-list: this client's key is {own}; \
             add that line to the relay's clients file, then `kill -HUP` qnet-relay"
        ),
    ];
    if !s.same_key_as.is_empty() {
        more.push(format!(
            "note: {} has the same key configured (a copy-paste slip?)",
            s.same_key_as.join(", ")
        ));
    }
    more.push(
        "(less likely: another qnet version, or this host's clock off by minutes) — with the \
         relay's files at hand, --relay-key-file and --clients-file tell which"
            .to_owned(),
    );
    Line {
        status: Status::Fail,
        text: format!(
            "relay {relay} answered nothing to the handshake (it is silent to keys it does not admit):"
        ),
        more,
    }
}

/// A path's trial stopped before its tunnel was up.
pub(crate) fn stopped(hops: &[String], fault: &ProbeFault, upstream: Option<&str>) -> String {
    match fault {
        ProbeFault::Resolve(why) => format!("{why}: check the address in the config"),
        ProbeFault::Connect(why) => match upstream {
            Some(p) => format!("upstream proxy {p} unreachable: {why}: is it running?"),
            None => format!(
                "relay unreachable: {why}: is qnet-relay running there and listening on that \
                 port (qnet-relay --listen), and no firewall between?"
            ),
        },
        ProbeFault::Upstream(why) => {
            format!(
                "upstream proxy {} could not reach relay {}: {why}",
                upstream.unwrap_or("?"),
                hops[0]
            )
        }
        ProbeFault::Silent { hop } => format!("relay {} answered nothing", hops[*hop]),
        // The route's previous hop would not dial the next: it lists no such relay.
        ProbeFault::Failed { hop, why } if why.contains(" refused to extend to ") => format!(
            "route stops at relay {}: {why}: list the next hop on that relay \
             (qnet-relay --extend-to HOST:PORT@KEY, or [server] relays)",
            hops.get(*hop).map_or("?", String::as_str)
        ),
        ProbeFault::Failed { hop, why } => format!(
            "handshake with relay {} failed: {why}",
            hops.get(*hop).map_or("?", String::as_str)
        ),
    }
}

/// The OPEN of the test destination: the exit policy's verdict.
pub(crate) fn policy(exit: &str, dest: &str, o: OpenOutcome) -> Line {
    match o {
        OpenOutcome::Opened => Line::new(
            Status::Ok,
            format!("exit policy of {exit} allows {dest} (connected)"),
        ),
        OpenOutcome::Failed(OpenError::Forbidden) => Line::new(
            Status::Fail,
            format!(
                "exit policy of {exit} refuses {dest}: on the relay, allow it (qnet-relay \
                 --exit-allow CIDR:PORTS, or [server] exit_allow), or check another \
                 destination with --to HOST:PORT"
            ),
        ),
        OpenOutcome::Failed(OpenError::NameNotFound) => Line::new(
            Status::Fail,
            format!("{exit} could not resolve the host of {dest}; try --to with an address"),
        ),
        OpenOutcome::Failed(e @ (OpenError::TooManyStreams | OpenError::Failure)) => {
            Line::new(Status::Fail, format!("{exit} could not open {dest}: {e}"))
        }
        // The policy let it through; the destination itself did not take it.
        OpenOutcome::Failed(e) => Line::new(
            Status::Ok,
            format!("exit policy of {exit} allows {dest} (the destination: {e})"),
        ),
        OpenOutcome::NoAnswer => Line::new(
            Status::Fail,
            format!("{exit} did not answer the OPEN of {dest} in time (try a larger --timeout)"),
        ),
    }
}

/// The OPEN of a name: did the relay's resolver find it.
pub(crate) fn name(exit: &str, name: &str, o: OpenOutcome) -> Line {
    match o {
        OpenOutcome::Failed(OpenError::NameNotFound) => Line::new(
            Status::Fail,
            format!(
                "{exit} cannot resolve {name}: check the relay host's resolver (/etc/resolv.conf, \
                 `getent hosts {name}` there), or pass --name with a name it should know"
            ),
        ),
        OpenOutcome::NoAnswer => Line::new(
            Status::Fail,
            format!("{exit} did not answer a lookup of {name} in time (its resolver is slow?)"),
        ),
        OpenOutcome::Failed(e @ (OpenError::TooManyStreams | OpenError::Failure)) => Line::new(
            Status::Fail,
            format!("{exit} could not look up {name}: {e}"),
        ),
        // Any other answer came after the name resolved.
        OpenOutcome::Opened | OpenOutcome::Failed(_) => {
            Line::new(Status::Ok, format!("{exit} resolves {name}"))
        }
    }
}

/// The kernel settings that decide whether an unprivileged user may make a user namespace,
/// as read from /proc/sys (`None`: not there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UsernsSysctls {
    /// `kernel.unprivileged_userns_clone` (Debian's patch).
    pub(crate) unprivileged_userns_clone: Option<String>,
    /// `kernel.apparmor_restrict_unprivileged_userns` (Ubuntu 23.10 and later).
    pub(crate) apparmor_restrict: Option<String>,
    /// `user.max_user_namespaces`.
    pub(crate) max_user_namespaces: Option<String>,
}

/// No jail here: which setting is in the way, and how to go on without.
pub(crate) fn no_jail(e: &io::Error, s: &UsernsSysctls) -> String {
    let is = |v: &Option<String>, want: &str| v.as_deref().map(str::trim) == Some(want);
    let fix = if is(&s.unprivileged_userns_clone, "0") {
        "sysctl kernel.unprivileged_userns_clone=1"
    } else if is(&s.apparmor_restrict, "1") {
        "sysctl kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile \
         allowing userns for qnet)"
    } else if is(&s.max_user_namespaces, "0") {
        "sysctl user.max_user_namespaces=10000"
    } else {
        "allow unprivileged user namespaces (in a container: its seccomp profile or \
         --privileged)"
    };
    format!(
        "no network jail for `qnet run` ({e}): {fix}; or run with `qnet run --jail off` \
         (or intercept.jail = \"off\"), the hooks and seccomp filter alone"
    )
}

/// No seccomp filter here.
pub(crate) fn no_seccomp(e: &io::Error) -> String {
    format!(
        "no seccomp filter ({e}): libqnet.so runs with the hooks alone; a kernel with \
         CONFIG_SECCOMP_FILTER (or a container allowing seccomp) fixes it, \
         intercept.seccomp = false silences it"
    )
}

#[cfg(test)]
mod tests;
