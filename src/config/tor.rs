//! The `[tor]` table: Tor's control port, for an `upstream` (client or `[server]`) that is
//! a Tor SocksPort. With it qnet waits for Tor's bootstrap, follows its circuits and can
//! ask it for a new identity.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Value;

use super::ConfigError;
use super::value::{Origin, check_host_port, rebase};

/// Where Tor's control port listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TorControl {
    /// `HOST:PORT` of a TCP control port (`ControlPort 127.0.0.1:9051`).
    Tcp(String),
    /// A unix socket (`ControlPort unix:/run/tor/control`), written as its path.
    Unix(PathBuf),
}

/// How qnet talks to Tor's control port, from `[tor]`. The client uses it when it has an
/// `upstream`, `qnet-relay` when it exits through one (`[server] upstream`, `--upstream`);
/// `qnet tor` always.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorConfig {
    /// `control`: `"127.0.0.1:9051"` or a unix socket's path (one that contains a `/`).
    pub control: TorControl,
    /// `password`: the `HashedControlPassword` secret, for password authentication.
    pub password: Option<String>,
    /// `password_file`: a file (mode 600) whose first line is that password.
    pub password_file: Option<PathBuf>,
    /// `cookie_file`: the control auth cookie to read instead of the one PROTOCOLINFO names
    /// (Tor reports its own path, which differs when Tor runs in a container or a chroot).
    pub cookie_file: Option<PathBuf>,
    /// `newnym_every_secs`: send `SIGNAL NEWNYM` this often (Tor allows one per 10 s).
    pub newnym_every: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a [tor] table")]
pub(super) struct RawTor {
    control: Option<Value>,
    password: Option<Value>,
    password_file: Option<Value>,
    cookie_file: Option<Value>,
    newnym_every_secs: Option<Value>,
}

impl TorConfig {
    pub(super) fn from_raw(raw: RawTor, o: &Origin<'_>) -> Result<TorConfig, ConfigError> {
        let v = raw
            .control
            .ok_or_else(|| o.err("tor.control", "is required in a [tor] table"))?;
        let s = o.string("tor.control", v)?;
        let control = if s.contains('/') {
            TorControl::Unix(o.path("tor.control", Value::String(s))?)
        } else {
            check_host_port(&s).map_err(|m| o.err("tor.control", m))?;
            // A literal address: the control connection is made outside the tunnel (and
            // a password goes over it in clear), so no name lookup may choose where.
            if s.parse::<std::net::SocketAddr>().is_err() {
                return Err(o.err(
                    "tor.control",
                    format!("{s:?}: an address and port (e.g. 127.0.0.1:9051) or a unix socket path, not a host name"),
                ));
            }
            TorControl::Tcp(s)
        };
        let mut t = TorConfig {
            control,
            password: raw
                .password
                .map(|v| o.string("tor.password", v))
                .transpose()?,
            password_file: raw
                .password_file
                .map(|v| o.path("tor.password_file", v))
                .transpose()?,
            cookie_file: raw
                .cookie_file
                .map(|v| o.path("tor.cookie_file", v))
                .transpose()?,
            newnym_every: None,
        };
        if t.password.is_some() && t.password_file.is_some() {
            return Err(o.err("tor.password_file", "give tor.password or this, not both"));
        }
        if let Some(v) = raw.newnym_every_secs {
            let n = o.positive("tor.newnym_every_secs", v)?;
            if n < 10 {
                let m = format!("must be at least 10 (Tor ignores faster NEWNYMs; got {n})");
                return Err(o.err("tor.newnym_every_secs", m));
            }
            t.newnym_every = Some(Duration::from_secs(n));
        }
        Ok(t)
    }

    /// Resolves the file paths against the config file's directory.
    pub(super) fn rebase(&mut self, base: &Path) {
        if let TorControl::Unix(p) = &mut self.control {
            rebase(p, base);
        }
        for p in [&mut self.password_file, &mut self.cookie_file]
            .into_iter()
            .flatten()
        {
            rebase(p, base);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::parse;
    use super::*;

    #[test]
    fn tor_table() {
        let c = parse(
            "[tor]\ncontrol = \"127.0.0.1:9051\"\npassword = \"pw\"\nnewnym_every_secs = 60\n",
        )
        .unwrap();
        let t = c.tor.unwrap();
        assert_eq!(t.control, TorControl::Tcp("127.0.0.1:9051".into()));
        assert_eq!(t.password.as_deref(), Some("pw"));
        assert_eq!(t.newnym_every, Some(Duration::from_secs(60)));
        let c = parse("[tor]\ncontrol = \"/run/tor/control\"\ncookie_file = \"c\"").unwrap();
        let t = c.tor.unwrap();
        assert_eq!(t.control, TorControl::Unix("/run/tor/control".into()));
        assert_eq!(t.cookie_file, Some("c".into()));
        for (text, needle) in [
            ("[tor]\npassword = \"x\"", "tor.control: is required"),
            ("[tor]\ncontrol = \"nohost\"", "tor.control:"),
            ("[tor]\ncontrol = 9051", "tor.control: expected a string"),
            (
                "[tor]\ncontrol = \"127.0.0.1:1\"\npassword = \"a\"\npassword_file = \"f\"",
                "tor.password_file: give",
            ),
            (
                "[tor]\ncontrol = \"127.0.0.1:1\"\nnewnym_every_secs = 5",
                "at least 10",
            ),
            ("[tor]\ncontrol = \"127.0.0.1:1\"\nbogus = 1", "bogus"),
            ("[tor]\ncontrol = \"tor.example:9051\"", "not a host name"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
