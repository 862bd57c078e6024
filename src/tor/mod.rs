//! Tor's control port (control-spec v1), for an `upstream` that is a Tor SocksPort:
//! `reply` (the reply and event framing, sans-IO), `events` (CIRC, STREAM and bootstrap
//! status as plain structs), `auth` (PROTOCOLINFO; NULL, password, SAFECOOKIE, COOKIE),
//! `conn` (a blocking connection: commands and their replies, events queued apart),
//! `watch` (the background watcher the client and relay ask "is Tor ready?").

use std::io;

use thiserror::Error;

use crate::config::{TorConfig, TorControl};

pub(crate) mod auth;
pub(crate) mod conn;
pub(crate) mod events;
pub(crate) mod reply;
pub mod watch;

pub use auth::Method;
pub use reply::ReplyError;
pub use watch::{TorCircuit, TorStatus, TorWatch};

/// A control-port failure, displayed as one line.
#[derive(Debug, Error)]
pub enum TorError {
    /// The connection failed or timed out.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Tor sent something that is no reply.
    #[error("{0}")]
    Reply(#[from] ReplyError),
    /// Tor closed the connection.
    #[error("Tor closed the control connection")]
    Closed,
    /// A command's reply was not 2xx.
    #[error("{verb}: {status} {message}")]
    Refused {
        /// The command's first word.
        verb: String,
        /// Tor's status code.
        status: u16,
        /// Tor's message.
        message: String,
    },
    /// Authentication could not be done or was refused.
    #[error("authentication: {0}")]
    Auth(String),
    /// A reply where only an event could be.
    #[error("unexpected reply {0:?}")]
    Unexpected(String),
}

/// `control` as a user reads it.
pub(crate) fn control_name(c: &TorControl) -> String {
    match c {
        TorControl::Tcp(a) => a.clone(),
        TorControl::Unix(p) => p.display().to_string(),
    }
}

/// An authenticated control connection to the Tor `cfg` names.
pub(crate) fn connect(cfg: &TorConfig, force: Option<Method>) -> Result<conn::Conn, TorError> {
    let mut c = conn::Conn::open(&cfg.control)?;
    auth::authenticate(&mut c, cfg, force)?;
    Ok(c)
}

/// Tor's bootstrap progress now (`GETINFO status/bootstrap-phase`).
pub(crate) fn bootstrap(c: &mut conn::Conn) -> Result<events::Bootstrap, TorError> {
    let r = c.ok("GETINFO status/bootstrap-phase")?;
    r.lines
        .iter()
        .find_map(|l| l.text.strip_prefix("status/bootstrap-phase="))
        .and_then(events::Bootstrap::parse)
        .ok_or_else(|| TorError::Unexpected(r.first().to_owned()))
}

/// `SIGNAL NEWNYM`: new streams get new circuits. Tor answers 250 even when it will
/// delay the switch (one NEWNYM per 10 s); the wait is then in its notice log only.
pub(crate) fn newnym(c: &mut conn::Conn) -> Result<(), TorError> {
    c.ok("SIGNAL NEWNYM").map(drop)
}

/// `qnet tor newnym`: one NEWNYM through the control port `cfg` names.
pub fn newnym_once(cfg: &TorConfig, force: Option<Method>) -> Result<(), TorError> {
    newnym(&mut connect(cfg, force)?)
}

/// `qnet tor status`: the authentication method used, Tor's version, its bootstrap and
/// its circuits (`GETINFO circuit-status`), as lines to print.
pub fn status_lines(cfg: &TorConfig, force: Option<Method>) -> Result<Vec<String>, TorError> {
    let mut c = conn::Conn::open(&cfg.control)?;
    let (method, info) = auth::authenticate(&mut c, cfg, force)?;
    let b = bootstrap(&mut c)?;
    let mut out = vec![
        format!(
            "control {} (Tor {}), authenticated with {}",
            control_name(&cfg.control),
            info.version.as_deref().unwrap_or("?"),
            method.name()
        ),
        format!("bootstrap {} % ({})", b.percent, b.summary),
    ];
    let mut circs = circuits(&mut c)?;
    circs.sort_by_key(|c| c.id);
    for circ in circs {
        let path = circ.path.join(",");
        out.push(format!("circuit {} {} {path}", circ.id, circ.status));
    }
    Ok(out)
}

/// Tor's circuits now (`GETINFO circuit-status`).
pub(crate) fn circuits(c: &mut conn::Conn) -> Result<Vec<events::Circ>, TorError> {
    let r = c.ok("GETINFO circuit-status")?;
    let data = r.lines.iter().find_map(|l| {
        let rest = l.text.strip_prefix("circuit-status=")?;
        Some(l.data.clone().unwrap_or_else(|| rest.to_owned()))
    });
    Ok(data
        .unwrap_or_default()
        .lines()
        .filter_map(events::Circ::parse)
        .collect())
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Method, String> {
        match s.to_ascii_uppercase().as_str() {
            "NULL" => Ok(Method::Null),
            "PASSWORD" | "HASHEDPASSWORD" => Ok(Method::Password),
            "SAFECOOKIE" => Ok(Method::SafeCookie),
            "COOKIE" => Ok(Method::Cookie),
            _ => Err(format!(
                "unknown method {s:?} (null, password, safecookie, cookie)"
            )),
        }
    }
}

/// For the `tor_reply` fuzz target: feeds `data` to the reply parser whole and again in
/// two pieces split at `split`, and splits every line into words; panics if the two
/// feedings disagree. Returns how many replies came out.
#[doc(hidden)]
pub fn fuzz_reply(data: &[u8], split: usize) -> usize {
    fn run(pieces: &[&[u8]]) -> Result<Vec<reply::Reply>, ReplyError> {
        let mut p = reply::Parser::new();
        let mut out = Vec::new();
        for piece in pieces {
            p.push(piece)?;
            out.extend(std::iter::from_fn(|| p.next()));
        }
        Ok(out)
    }
    let whole = run(&[data]);
    let at = split.min(data.len());
    let split = run(&[&data[..at], &data[at..]]);
    assert_eq!(
        whole, split,
        "the reply parser depends on how input is split"
    );
    let replies = whole.unwrap_or_default();
    for l in replies.iter().flat_map(|r| &r.lines) {
        let _ = reply::words(&l.text);
        let _ = events::parse(&l.text);
        let _ = auth::protocol_info(&replies[0]);
    }
    replies.len()
}

#[cfg(test)]
mod tests;
