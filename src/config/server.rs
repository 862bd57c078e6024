//! The `[server]` table: the relay server's settings, read by `qnet-relay`.
//!
//! The table is `[server]`, not `[relay]`: TOML cannot have both the top-level string
//! `relay` (the client's relay address) and a table of the same name.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Value;

use super::value::{Origin, rebase};
use super::{ConfigError, Upstream, parse_profile};
use crate::sched::Profile;

/// The relay server's settings, from the `[server]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
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
}

impl ServerConfig {
    pub(super) fn from_raw(raw: RawServer, o: &Origin<'_>) -> Result<ServerConfig, ConfigError> {
        let mut s = ServerConfig::default();
        if let Some(v) = raw.listen {
            s.listen = Some(o.host_port("server.listen", v)?);
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
        Ok(s)
    }

    /// Resolves the key and clients paths against `base`, the config file's directory.
    pub(super) fn rebase(&mut self, base: &Path) {
        for p in [&mut self.key, &mut self.clients].into_iter().flatten() {
            rebase(p, base);
        }
    }
}
