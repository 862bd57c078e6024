//! The client's relays and routes: `relay` and `relay_key` (one relay, or comma-separated
//! lists of equal length) or `[[relays]]` tables, and `[[routes]]` through them; with
//! `QNET_RELAY`, `QNET_RELAY_KEY` and `QNET_HOPS`, which are read here by the same code
//! as the file, so that a list or a hop means the same written in either.

use serde::Deserialize;
use toml::Value;

use super::value::{Origin, address_key, check_host_port, check_unique, first_repeat};
use super::{Config, ConfigError};
use crate::keys::PublicKey;

/// One relay the client knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayEntry {
    /// `host:port`; IPv6 as `[::1]:7000`.
    pub address: String,
    /// The relay's static public key (pinned).
    pub key: PublicKey,
    /// A label to pick relays by (a region, say), if the config gives one.
    pub group: Option<String>,
    /// Weight against the other relays when one is picked, 1 to 1000.
    pub weight: u32,
}

impl RelayEntry {
    /// Weight of a relay the config gives none.
    pub const DEFAULT_WEIGHT: u32 = 1;
    /// Largest weight: a ratio of 1000 to 1 is past any real preference, so more is
    /// taken for a typo rather than left to starve the other relays.
    pub const MAX_WEIGHT: u32 = 1000;
}

/// One hop of a route: a relay and the key it must prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// `host:port`; IPv6 as `[::1]:7000`.
    pub address: String,
    /// The relay's static public key (pinned).
    pub key: PublicKey,
}

/// A multi-hop route: entry first, exit last, 2 or 3 hops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// A label for the route, if the config gives one.
    pub name: Option<String>,
    /// The hops, entry first.
    pub hops: Vec<Hop>,
}

impl RouteConfig {
    /// Fewest hops: a path of one hop is a relay, which `[[relays]]` already says.
    pub const MIN_HOPS: usize = 2;
    /// Most hops: each costs a round trip when the session is set up, and past a
    /// middle hop that keeps entry and exit apart more buy little.
    pub const MAX_HOPS: usize = 3;
}

/// A path with what orders it among the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedPath {
    /// The hops, entry first.
    pub hops: Vec<Hop>,
    /// Its relay's group, if any.
    pub group: Option<String>,
    /// Its relay's weight inside the group.
    pub weight: u32,
}

/// Half of a relay: an address without its key or a key without its address. Not an
/// error at load, because the other half may come from the environment; the client
/// reports what is missing when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unpaired {
    Address(String),
    Key(PublicKey),
}

impl Config {
    /// The paths a session may take, each entry hop first: the routes if any is
    /// configured, else each relay alone, in order. A configured route is never
    /// replaced by a single hop, so asking for multi-hop cannot silently give less.
    pub fn paths(&self) -> Vec<Vec<Hop>> {
        self.weighted_paths().into_iter().map(|p| p.hops).collect()
    }

    /// [`Config::paths`] with each path's group and weight (a route has none: weight 1).
    pub fn weighted_paths(&self) -> Vec<WeightedPath> {
        if !self.routes.is_empty() {
            return self
                .routes
                .iter()
                .map(|r| WeightedPath {
                    hops: r.hops.clone(),
                    group: None,
                    weight: RelayEntry::DEFAULT_WEIGHT,
                })
                .collect();
        }
        self.relays
            .iter()
            .map(|r| WeightedPath {
                hops: vec![Hop {
                    address: r.address.clone(),
                    key: r.key,
                }],
                group: r.group.clone(),
                weight: r.weight,
            })
            .collect()
    }

    /// A relay address given without its key (`relay` or `QNET_RELAY` alone): the
    /// client then reports a missing key rather than a missing relay.
    pub(crate) fn relay_without_key(&self) -> Option<&str> {
        match &self.unpaired {
            Some(Unpaired::Address(a)) => Some(a),
            _ => None,
        }
    }

    /// Reads the file's `relay`, `relay_key`, `[[relays]]` and `[[routes]]`; routes
    /// name relays of the list read here.
    pub(super) fn read_relays(
        &mut self,
        o: &Origin<'_>,
        relay: Option<Value>,
        relay_key: Option<Value>,
        relays: Option<Vec<RawRelay>>,
        routes: Option<Vec<RawRoute>>,
    ) -> Result<(), ConfigError> {
        let src = Source::File(o);
        if let Some(tables) = relays {
            // Two lists of one thing would need an order between them, and a reader of
            // the file would have to know it.
            if relay.is_some() || relay_key.is_some() {
                return Err(o.err(
                    "relays",
                    "not together with relay or relay_key: list every relay as a [[relays]] table",
                ));
            }
            self.relays = tables
                .into_iter()
                .enumerate()
                .map(|(i, t)| t.read(o, i))
                .collect::<Result<_, _>>()?;
            check_unique("relays", self.relays.iter().map(|r| r.address.as_str()))
                .map_err(|m| o.err("relays", m))?;
        } else {
            let addresses = match relay {
                Some(v) if v.is_table() => {
                    return Err(o.err(
                        "relay",
                        "expected a string \"host:port\"; the relay server's own settings go in [server]",
                    ));
                }
                Some(v) => address_list(&src, "relay", &o.string("relay", v)?)?,
                None => Vec::new(),
            };
            let keys = match relay_key {
                Some(v) => key_list(&src, "relay_key", &o.string("relay_key", v)?)?,
                None => Vec::new(),
            };
            (self.relays, self.unpaired) =
                pair(&src, "relay_key", (addresses, "relay"), (keys, "relay_key"))?;
        }
        if let Some(routes) = routes {
            self.routes = routes
                .into_iter()
                .enumerate()
                .map(|(i, r)| r.read(o, i, &self.relays))
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }

    /// Applies `QNET_RELAY`, `QNET_RELAY_KEY` and `QNET_HOPS` (each `None` when unset
    /// or empty). Either relay variable rebuilds the relay list, taking what the other
    /// does not give from the file; `QNET_HOPS` replaces the file's routes.
    pub(super) fn apply_relay_env(
        &mut self,
        relay: Option<String>,
        relay_key: Option<String>,
        hops: Option<String>,
    ) -> Result<(), ConfigError> {
        let src = Source::Env;
        if relay.is_some() || relay_key.is_some() {
            let (mut file_addresses, mut file_keys): (Vec<String>, Vec<PublicKey>) = self
                .relays
                .iter()
                .map(|r| (r.address.clone(), r.key))
                .unzip();
            match &self.unpaired {
                Some(Unpaired::Address(a)) => file_addresses.push(a.clone()),
                Some(Unpaired::Key(k)) => file_keys.push(*k),
                None => {}
            }
            let addresses = match &relay {
                Some(v) => (address_list(&src, "QNET_RELAY", v)?, "QNET_RELAY"),
                None => (file_addresses, "the config file's; QNET_RELAY is unset"),
            };
            let keys = match &relay_key {
                Some(v) => (key_list(&src, "QNET_RELAY_KEY", v)?, "QNET_RELAY_KEY"),
                None => (file_keys, "the config file's; QNET_RELAY_KEY is unset"),
            };
            let blame = match relay_key {
                Some(_) => "QNET_RELAY_KEY",
                None => "QNET_RELAY",
            };
            (self.relays, self.unpaired) = pair(&src, blame, addresses, keys)?;
        }
        if let Some(v) = hops {
            let hops = route(&src, "QNET_HOPS", &list(&v), &self.relays)?;
            self.routes = vec![RouteConfig { name: None, hops }];
        }
        Ok(())
    }
}

/// One `[[relays]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[relays]] table")]
pub(super) struct RawRelay {
    address: Option<Value>,
    key: Option<Value>,
    group: Option<Value>,
    weight: Option<Value>,
}

impl RawRelay {
    fn read(self, o: &Origin<'_>, i: usize) -> Result<RelayEntry, ConfigError> {
        let at = format!("relays[{i}]");
        let address = self.address.ok_or_else(|| o.err(&at, "missing address"))?;
        let address = o.host_port(&format!("{at}.address"), address)?;
        let field = format!("{at}.key");
        let key = o.string(&field, self.key.ok_or_else(|| o.err(&at, "missing key"))?)?;
        let key = PublicKey::parse_base64(&key).map_err(|e| o.err(&field, e.to_string()))?;
        let group = match self.group {
            Some(v) => Some(label(o, &format!("{at}.group"), v)?),
            None => None,
        };
        let weight = match self.weight {
            Some(v) => {
                let field = format!("{at}.weight");
                let n = o.integer(&field, v)?;
                let max = RelayEntry::MAX_WEIGHT;
                u32::try_from(n)
                    .ok()
                    .filter(|w| (1..=max).contains(w))
                    .ok_or_else(|| o.err(&field, format!("must be 1 to {max} (got {n})")))?
            }
            None => RelayEntry::DEFAULT_WEIGHT,
        };
        Ok(RelayEntry {
            address,
            key,
            group,
            weight,
        })
    }
}

/// One `[[routes]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[routes]] table")]
pub(super) struct RawRoute {
    name: Option<Value>,
    hops: Option<Value>,
}

impl RawRoute {
    fn read(
        self,
        o: &Origin<'_>,
        i: usize,
        relays: &[RelayEntry],
    ) -> Result<RouteConfig, ConfigError> {
        let at = format!("routes[{i}]");
        let name = match self.name {
            Some(v) => Some(label(o, &format!("{at}.name"), v)?),
            None => None,
        };
        let field = format!("{at}.hops");
        let hops = self.hops.ok_or_else(|| o.err(&at, "missing hops"))?;
        let texts = o
            .array(&field, hops)?
            .into_iter()
            .enumerate()
            .map(|(j, v)| o.string(&format!("{field}[{j}]"), v))
            .collect::<Result<Vec<_>, _>>()?;
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let hops = route(&Source::File(o), &field, &texts, relays)?;
        Ok(RouteConfig { name, hops })
    }
}

/// A name or group: any string but a blank one, stored without surrounding spaces.
fn label(o: &Origin<'_>, field: &str, v: Value) -> Result<String, ConfigError> {
    let s = o.string(field, v)?;
    match s.trim() {
        "" => Err(o.err(field, "must not be empty")),
        t => Ok(t.to_owned()),
    }
}

/// Where relay settings are read from, to name a bad one: a field of a file, or an
/// environment variable.
enum Source<'a> {
    File(&'a Origin<'a>),
    Env,
}

impl Source<'_> {
    /// The error for `name` (a field, or a variable, with `[i]` for a list's item).
    fn err(&self, name: &str, message: impl Into<String>) -> ConfigError {
        match self {
            Source::File(o) => o.err(name, message),
            Source::Env => ConfigError::Env {
                var: name.to_owned(),
                message: message.into(),
            },
        }
    }
}

/// The items of a comma-separated list, without the spaces around them.
fn list(text: &str) -> Vec<&str> {
    text.split(',').map(str::trim).collect()
}

/// The name of item `i` of the `n` in list `name`: a single value keeps the plain name,
/// so that one relay is reported exactly as before lists existed.
fn item(name: &str, i: usize, n: usize) -> String {
    if n == 1 {
        name.to_owned()
    } else {
        format!("{name}[{i}]")
    }
}

/// Reads a comma-separated list of distinct `host:port` (`relay`, `QNET_RELAY`).
fn address_list(src: &Source<'_>, name: &str, text: &str) -> Result<Vec<String>, ConfigError> {
    let items = list(text);
    let n = items.len();
    for (i, a) in items.iter().enumerate() {
        check_host_port(a).map_err(|m| src.err(&item(name, i, n), m))?;
    }
    check_unique(name, items.iter().copied()).map_err(|m| src.err(name, m))?;
    Ok(items.into_iter().map(str::to_owned).collect())
}

/// Reads a comma-separated list of base64 public keys (`relay_key`, `QNET_RELAY_KEY`).
fn key_list(src: &Source<'_>, name: &str, text: &str) -> Result<Vec<PublicKey>, ConfigError> {
    let items = list(text);
    let n = items.len();
    items
        .iter()
        .enumerate()
        .map(|(i, k)| {
            PublicKey::parse_base64(k).map_err(|e| src.err(&item(name, i, n), e.to_string()))
        })
        .collect()
}

/// Pairs addresses and keys given apart, the n-th key for the n-th address; each comes
/// with a label saying where it was given. One address or one key alone is left
/// unpaired; any other difference in number is an error of `blame`.
fn pair(
    src: &Source<'_>,
    blame: &str,
    (mut addresses, a_label): (Vec<String>, &str),
    (mut keys, k_label): (Vec<PublicKey>, &str),
) -> Result<(Vec<RelayEntry>, Option<Unpaired>), ConfigError> {
    let count =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    match (addresses.len(), keys.len()) {
        (1, 0) => Ok((Vec::new(), addresses.pop().map(Unpaired::Address))),
        (0, 1) => Ok((Vec::new(), keys.pop().map(Unpaired::Key))),
        (na, nk) if na != nk => Err(src.err(
            blame,
            format!(
                "{} ({k_label}) for {} ({a_label}); give one key per relay, in the same order",
                count(nk, "key", "keys"),
                count(na, "address", "addresses"),
            ),
        )),
        _ => Ok((
            addresses
                .into_iter()
                .zip(keys)
                .map(|(address, key)| RelayEntry {
                    address,
                    key,
                    group: None,
                    weight: RelayEntry::DEFAULT_WEIGHT,
                })
                .collect(),
            None,
        )),
    }
}

/// Reads `HOST:PORT@KEY`, the key required (a relay's `[server] relays`, `--extend-to`).
pub fn parse_keyed_hop(text: &str) -> Result<Hop, String> {
    if !text.contains('@') {
        return Err(format!("{}: expected HOST:PORT@KEY", text.trim()));
    }
    hop(text, &[])
}

/// Reads one hop: `HOST:PORT@KEY`, or a `HOST:PORT` of `relays`, whose key it takes.
fn hop(text: &str, relays: &[RelayEntry]) -> Result<Hop, String> {
    // Base64 has no '@', so whatever follows the last one is the key.
    let (address, key) = match text.rsplit_once('@') {
        Some((a, k)) => (a.trim(), Some(k)),
        None => (text.trim(), None),
    };
    check_host_port(address)?;
    let key = match key {
        Some(k) => PublicKey::parse_base64(k).map_err(|e| e.to_string())?,
        None => relays
            .iter()
            .find(|r| address_key(&r.address) == address_key(address))
            .map(|r| r.key)
            .ok_or_else(|| {
                format!(
                    "unknown key for hop {address}: write HOST:PORT@KEY or list it in [[relays]]"
                )
            })?,
    };
    Ok(Hop {
        address: address.to_owned(),
        key,
    })
}

/// Reads one route, entry hop first, named `name` in errors and its hops `name[j]`:
/// 2 or 3 hops, no relay twice.
fn route(
    src: &Source<'_>,
    name: &str,
    hops: &[&str],
    relays: &[RelayEntry],
) -> Result<Vec<Hop>, ConfigError> {
    let n = hops.len();
    if !(RouteConfig::MIN_HOPS..=RouteConfig::MAX_HOPS).contains(&n) {
        return Err(src.err(
            name,
            format!("a route has 2 or 3 hops (entry first, exit last); got {n}"),
        ));
    }
    let hops = hops
        .iter()
        .enumerate()
        .map(|(j, h)| hop(h, relays).map_err(|m| src.err(&format!("{name}[{j}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    // A relay met twice is a loop: it sees the session on both sides of the hops
    // between, which the route was meant to keep apart. One key at two addresses is
    // one relay too.
    if let Some((i, j)) = first_repeat(hops.iter().map(|h| address_key(&h.address))) {
        return Err(src.err(
            name,
            format!(
                "{name}[{i}] and {name}[{j}] are the same relay ({}); a route must not pass a relay twice",
                hops[j].address
            ),
        ));
    }
    if let Some((i, j)) = first_repeat(hops.iter().map(|h| h.key)) {
        return Err(src.err(
            name,
            format!(
                "{name}[{i}] and {name}[{j}] have the same key; a route must not pass a relay twice"
            ),
        ));
    }
    Ok(hops)
}

#[cfg(test)]
mod tests;
