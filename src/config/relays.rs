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
mod tests {
    use super::super::testutil::{env, err, parse};
    use super::*;

    /// A valid key, distinct for each `n`.
    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    /// [`key`] as written in a config.
    fn b64(n: u8) -> String {
        key(n).to_base64()
    }

    fn relay(address: &str, n: u8) -> RelayEntry {
        RelayEntry {
            address: address.into(),
            key: key(n),
            group: None,
            weight: 1,
        }
    }

    fn h(address: &str, n: u8) -> Hop {
        Hop {
            address: address.into(),
            key: key(n),
        }
    }

    /// The error `vars` give applied to the config `text`, checked to be one line.
    fn env_error(text: &str, vars: &[(&str, &str)]) -> String {
        let mut c = parse(text).unwrap();
        let msg = c.apply_env(env(vars)).unwrap_err().to_string();
        assert!(!msg.contains('\n'), "error is not one line: {msg}");
        msg
    }

    /// `text` with `vars` applied.
    fn with_env(text: &str, vars: &[(&str, &str)]) -> Config {
        let mut c = parse(text).unwrap();
        c.apply_env(env(vars)).unwrap();
        c
    }

    #[test]
    fn one_relay_and_key_make_one_relay_of_weight_one() {
        let c = parse(&format!(
            "relay = \"10.0.0.1:7000\"\nrelay_key = \"{}\"",
            b64(1)
        ))
        .unwrap();
        assert_eq!(c.relays, [relay("10.0.0.1:7000", 1)]);
        assert!(c.routes.is_empty());
        assert_eq!(c.paths(), [vec![h("10.0.0.1:7000", 1)]]);
        assert_eq!(c.relay_without_key(), None);
    }

    #[test]
    fn relay_and_relay_key_take_comma_separated_lists_in_order() {
        let c = parse(&format!(
            "relay = \"10.0.0.1:7000,relay-b.example:7000 ,  [::1]:7000\"\nrelay_key = \"{} , {},{}\"",
            b64(1),
            b64(2),
            b64(3)
        ))
        .unwrap();
        assert_eq!(
            c.relays,
            [
                relay("10.0.0.1:7000", 1),
                relay("relay-b.example:7000", 2),
                relay("[::1]:7000", 3)
            ]
        );
        assert_eq!(
            c.paths(),
            [
                vec![h("10.0.0.1:7000", 1)],
                vec![h("relay-b.example:7000", 2)],
                vec![h("[::1]:7000", 3)]
            ]
        );
    }

    #[test]
    fn a_relay_without_its_key_or_a_key_without_its_relay_loads_for_the_client_to_report() {
        let c = parse("relay = \"10.0.0.1:7000\"").unwrap();
        assert!(c.relays.is_empty() && c.paths().is_empty());
        assert_eq!(c.relay_without_key(), Some("10.0.0.1:7000"));
        let c = parse(&format!("relay_key = \"{}\"", b64(1))).unwrap();
        assert!(c.relays.is_empty() && c.paths().is_empty());
        assert_eq!(c.relay_without_key(), None);
    }

    #[test]
    fn relay_lists_of_different_lengths_are_refused() {
        assert_eq!(
            err(&format!(
                "relay = \"10.0.0.1:7000, 10.0.0.2:7000\"\nrelay_key = \"{}\"",
                b64(1)
            )),
            "config /etc/qnet/qnet.toml: relay_key: 1 key (relay_key) for 2 addresses (relay); give one key per relay, in the same order"
        );
        assert_eq!(
            err("relay = \"10.0.0.1:7000, 10.0.0.2:7000\""),
            "config /etc/qnet/qnet.toml: relay_key: 0 keys (relay_key) for 2 addresses (relay); give one key per relay, in the same order"
        );
        assert_eq!(
            err(&format!("relay_key = \"{}, {}\"", b64(1), b64(2))),
            "config /etc/qnet/qnet.toml: relay_key: 2 keys (relay_key) for 0 addresses (relay); give one key per relay, in the same order"
        );
    }

    #[test]
    fn a_bad_item_of_a_relay_list_is_named_by_its_position() {
        assert!(err("relay = \"10.0.0.1:7000, nope\"").starts_with(
            "config /etc/qnet/qnet.toml: relay[1]: must be host:port, e.g. 127.0.0.1:7000"
        ));
        assert!(err("relay = \"10.0.0.1:7000,\"").starts_with(
            "config /etc/qnet/qnet.toml: relay[1]: must be host:port, e.g. 127.0.0.1:7000, relay.example.com:7000 or [::1]:7000 (got \"\")"
        ));
        assert_eq!(
            err(&format!("relay_key = \"{}, xx\"", b64(1))),
            "config /etc/qnet/qnet.toml: relay_key[1]: invalid key: expected 44 base64 characters, got 2"
        );
        // One value is named as before lists existed.
        assert!(
            err("relay_key = \"xx\"")
                .starts_with("config /etc/qnet/qnet.toml: relay_key: invalid key")
        );
        assert_eq!(
            err("relay_key = 5"),
            "config /etc/qnet/qnet.toml: relay_key: expected a string, got integer"
        );
    }

    #[test]
    fn a_relay_listed_twice_is_refused_naming_both_positions() {
        let keys = format!("relay_key = \"{}, {}, {}\"", b64(1), b64(2), b64(3));
        assert_eq!(
            err(&format!(
                "relay = \"Relay.Example:7000, 10.0.0.1:7000, relay.example:7000\"\n{keys}"
            )),
            "config /etc/qnet/qnet.toml: relay: relay.example:7000 is listed twice (relay[0] and relay[2])"
        );
        // One IPv6 address however written.
        assert!(
            err(&format!(
                "relay = \"[::1]:7000, [0:0::1]:7000, 10.0.0.1:7000\"\n{keys}"
            ))
            .contains("is listed twice (relay[0] and relay[1])")
        );
        // The same host at another port is another relay.
        assert!(
            parse(&format!(
                "relay = \"10.0.0.1:7000, 10.0.0.1:7001, 10.0.0.2:7000\"\n{keys}"
            ))
            .is_ok()
        );
        assert_eq!(
            err(&format!(
                "[[relays]]\naddress = \"10.0.0.1:7000\"\nkey = \"{}\"\n[[relays]]\naddress = \"10.0.0.2:7000\"\nkey = \"{}\"\n[[relays]]\naddress = \"10.0.0.1:7000\"\nkey = \"{}\"",
                b64(1),
                b64(2),
                b64(3)
            )),
            "config /etc/qnet/qnet.toml: relays: 10.0.0.1:7000 is listed twice (relays[0] and relays[2])"
        );
    }

    #[test]
    fn relays_tables_carry_group_and_weight() {
        let c = parse(&format!(
            "[[relays]]\naddress = \"10.0.0.1:7000\"\nkey = \"{}\"\ngroup = \"eu\"\nweight = 2\n\
             [[relays]]\naddress = \"[2001:db8::1]:7000\"\nkey = \"{}\"\nweight = 1000\n\
             [[relays]]\naddress = \"relay-c.example:443\"\nkey = \"{}\"\n",
            b64(1),
            b64(2),
            b64(3)
        ))
        .unwrap();
        assert_eq!(
            c.relays,
            [
                RelayEntry {
                    group: Some("eu".into()),
                    weight: 2,
                    ..relay("10.0.0.1:7000", 1)
                },
                RelayEntry {
                    weight: 1000,
                    ..relay("[2001:db8::1]:7000", 2)
                },
                relay("relay-c.example:443", 3),
            ]
        );
        assert_eq!(c.paths().len(), 3);
        assert_eq!(c.relay_without_key(), None);
    }

    #[test]
    fn relays_tables_are_checked_field_by_field() {
        let k = b64(1);
        let one = |extra: &str| err(&format!("[[relays]]\n{extra}"));
        for (extra, expect) in [
            (
                format!("key = \"{k}\""),
                "config /etc/qnet/qnet.toml: relays[0]: missing address".to_owned(),
            ),
            (
                "address = \"10.0.0.1:7000\"".to_owned(),
                "config /etc/qnet/qnet.toml: relays[0]: missing key".to_owned(),
            ),
            (
                "address = \"10.0.0.1:7000\"\nkey = \"xx\"".to_owned(),
                "config /etc/qnet/qnet.toml: relays[0].key: invalid key: expected 44 base64 characters, got 2".to_owned(),
            ),
            (
                format!("address = \"10.0.0.1\"\nkey = \"{k}\""),
                "config /etc/qnet/qnet.toml: relays[0].address: must be host:port, e.g. 127.0.0.1:7000, relay.example.com:7000 or [::1]:7000 (got \"10.0.0.1\")".to_owned(),
            ),
            (
                format!("address = \"10.0.0.1:7000\"\nkey = \"{k}\"\nweight = 0"),
                "config /etc/qnet/qnet.toml: relays[0].weight: must be 1 to 1000 (got 0)".to_owned(),
            ),
            (
                format!("address = \"10.0.0.1:7000\"\nkey = \"{k}\"\nweight = 1001"),
                "config /etc/qnet/qnet.toml: relays[0].weight: must be 1 to 1000 (got 1001)".to_owned(),
            ),
            (
                format!("address = \"10.0.0.1:7000\"\nkey = \"{k}\"\nweight = -1"),
                "config /etc/qnet/qnet.toml: relays[0].weight: must be 1 to 1000 (got -1)".to_owned(),
            ),
            (
                format!("address = \"10.0.0.1:7000\"\nkey = \"{k}\"\nweight = \"2\""),
                "config /etc/qnet/qnet.toml: relays[0].weight: expected an integer, got string".to_owned(),
            ),
            (
                format!("address = \"10.0.0.1:7000\"\nkey = \"{k}\"\ngroup = \" \""),
                "config /etc/qnet/qnet.toml: relays[0].group: must not be empty".to_owned(),
            ),
            (
                format!("address = \"10.0.0.1:7000\"\nkey = \"{k}\"\ngroup = 1"),
                "config /etc/qnet/qnet.toml: relays[0].group: expected a string, got integer".to_owned(),
            ),
        ] {
            assert_eq!(one(&extra), expect, "{extra}");
        }
        let msg = one(&format!(
            "address = \"10.0.0.1:7000\"\nkey = \"{k}\"\nport = 7000"
        ));
        assert!(
            msg.starts_with("config /etc/qnet/qnet.toml: line 4: "),
            "{msg}"
        );
        assert!(msg.contains("unknown field `port`"), "{msg}");
        let msg = err("relays = \"10.0.0.1:7000\"");
        assert!(
            msg.starts_with("config /etc/qnet/qnet.toml: line 1: "),
            "{msg}"
        );
    }

    #[test]
    fn relay_or_relay_key_together_with_relays_tables_is_refused() {
        let table = format!(
            "[[relays]]\naddress = \"10.0.0.1:7000\"\nkey = \"{}\"\n",
            b64(1)
        );
        let expect = "config /etc/qnet/qnet.toml: relays: not together with relay or relay_key: list every relay as a [[relays]] table";
        assert_eq!(err(&format!("relay = \"10.0.0.2:7000\"\n{table}")), expect);
        assert_eq!(err(&format!("relay_key = \"{}\"\n{table}", b64(2))), expect);
    }

    #[test]
    fn routes_take_keys_from_the_relay_list_or_inline() {
        let c = parse(&format!(
            "[[relays]]\naddress = \"10.0.0.1:7000\"\nkey = \"{}\"\n\
             [[relays]]\naddress = \"Relay-B.example:7000\"\nkey = \"{}\"\n\
             [[routes]]\nname = \"two-hop\"\nhops = [\"10.0.0.1:7000\", \"10.0.0.9:7000@{}\"]\n\
             [[routes]]\nhops = [\"relay-b.example:7000\", \" 10.0.0.1:7000 \", \"exit.example:7000@ {} \"]\n",
            b64(1),
            b64(2),
            b64(9),
            b64(8)
        ))
        .unwrap();
        assert_eq!(
            c.routes,
            [
                RouteConfig {
                    name: Some("two-hop".into()),
                    hops: vec![h("10.0.0.1:7000", 1), h("10.0.0.9:7000", 9)],
                },
                RouteConfig {
                    name: None,
                    hops: vec![
                        h("relay-b.example:7000", 2),
                        h("10.0.0.1:7000", 1),
                        h("exit.example:7000", 8)
                    ],
                },
            ]
        );
        // The routes are the paths; the relays alone are not.
        assert_eq!(
            c.paths(),
            [c.routes[0].hops.clone(), c.routes[1].hops.clone()]
        );
    }

    #[test]
    fn routes_name_relays_of_a_relay_list_too() {
        let c = parse(&format!(
            "relay = \"10.0.0.1:7000, 10.0.0.2:7000\"\nrelay_key = \"{}, {}\"\n[[routes]]\nhops = [\"10.0.0.2:7000\", \"10.0.0.1:7000\"]\n",
            b64(1),
            b64(2)
        ))
        .unwrap();
        assert_eq!(
            c.paths(),
            [vec![h("10.0.0.2:7000", 2), h("10.0.0.1:7000", 1)]]
        );
    }

    #[test]
    fn ipv6_hops_split_at_the_last_at_sign() {
        let c = parse(&format!(
            "[[relays]]\naddress = \"[2001:db8::1]:7000\"\nkey = \"{}\"\n\
             [[routes]]\nhops = [\"[2001:DB8:0::1]:7000\", \"[::1]:7000@{}\"]\n",
            b64(1),
            b64(2)
        ))
        .unwrap();
        assert_eq!(
            c.paths(),
            [vec![h("[2001:DB8:0::1]:7000", 1), h("[::1]:7000", 2)]]
        );
    }

    #[test]
    fn a_route_has_two_or_three_hops() {
        let (k1, k2, k3, k4) = (b64(1), b64(2), b64(3), b64(4));
        for (hops, n) in [
            ("[]".to_owned(), 0),
            (format!("[\"10.0.0.1:7000@{k1}\"]"), 1),
            (
                format!(
                    "[\"10.0.0.1:7000@{k1}\", \"10.0.0.2:7000@{k2}\", \"10.0.0.3:7000@{k3}\", \"10.0.0.4:7000@{k4}\"]"
                ),
                4,
            ),
        ] {
            assert_eq!(
                err(&format!("[[routes]]\nhops = {hops}")),
                format!(
                    "config /etc/qnet/qnet.toml: routes[0].hops: a route has 2 or 3 hops (entry first, exit last); got {n}"
                )
            );
        }
        let three = format!(
            "[[routes]]\nhops = [\"10.0.0.1:7000@{k1}\", \"10.0.0.2:7000@{k2}\", \"10.0.0.3:7000@{k3}\"]"
        );
        assert_eq!(parse(&three).unwrap().paths()[0].len(), 3);
    }

    #[test]
    fn a_route_through_one_relay_twice_is_a_loop() {
        let (k1, k2, k3) = (b64(1), b64(2), b64(3));
        assert_eq!(
            err(&format!(
                "[[routes]]\nhops = [\"a.example:7000@{k1}\", \"10.0.0.2:7000@{k2}\", \"A.example:7000@{k3}\"]"
            )),
            "config /etc/qnet/qnet.toml: routes[0].hops: routes[0].hops[0] and routes[0].hops[2] are the same relay (A.example:7000); a route must not pass a relay twice"
        );
        assert_eq!(
            err(&format!(
                "[[routes]]\nhops = [\"10.0.0.1:7000@{k1}\", \"10.0.0.2:7000@{k1}\"]"
            )),
            "config /etc/qnet/qnet.toml: routes[0].hops: routes[0].hops[0] and routes[0].hops[1] have the same key; a route must not pass a relay twice"
        );
    }

    #[test]
    fn a_hop_needs_a_key_inline_or_from_the_relay_list() {
        let k1 = b64(1);
        assert_eq!(
            err(&format!(
                "relay = \"10.0.0.1:7000\"\nrelay_key = \"{k1}\"\n[[routes]]\nhops = [\"10.0.0.1:7000\", \"10.0.0.2:7000\"]"
            )),
            "config /etc/qnet/qnet.toml: routes[0].hops[1]: unknown key for hop 10.0.0.2:7000: write HOST:PORT@KEY or list it in [[relays]]"
        );
        // A relay without its key gives none to a hop either.
        assert!(
            err("relay = \"10.0.0.1:7000\"\n[[routes]]\nhops = [\"10.0.0.1:7000\", \"10.0.0.2:7000\"]")
                .contains("routes[0].hops[0]: unknown key for hop 10.0.0.1:7000")
        );
        assert_eq!(
            err(&format!(
                "[[routes]]\nhops = [\"10.0.0.1:7000@{k1}\", \"10.0.0.2:7000@xx\"]"
            )),
            "config /etc/qnet/qnet.toml: routes[0].hops[1]: invalid key: expected 44 base64 characters, got 2"
        );
        assert_eq!(
            err(&format!(
                "[[routes]]\nhops = [\"10.0.0.1:7000@{k1}\", \"10.0.0.2:7000@\"]"
            )),
            "config /etc/qnet/qnet.toml: routes[0].hops[1]: invalid key: empty"
        );
        assert!(
            err(&format!(
                "[[routes]]\nhops = [\"10.0.0.1@{k1}\", \"10.0.0.2:7000@{k1}\"]"
            ))
            .starts_with("config /etc/qnet/qnet.toml: routes[0].hops[0]: must be host:port")
        );
    }

    #[test]
    fn routes_tables_are_checked_field_by_field() {
        let k1 = b64(1);
        let k2 = b64(2);
        let hops = format!("hops = [\"10.0.0.1:7000@{k1}\", \"10.0.0.2:7000@{k2}\"]");
        assert_eq!(
            err("[[routes]]\nname = \"x\""),
            "config /etc/qnet/qnet.toml: routes[0]: missing hops"
        );
        assert_eq!(
            err(&format!("[[routes]]\nname = \"\"\n{hops}")),
            "config /etc/qnet/qnet.toml: routes[0].name: must not be empty"
        );
        assert_eq!(
            err("[[routes]]\nhops = \"10.0.0.1:7000\""),
            "config /etc/qnet/qnet.toml: routes[0].hops: expected an array, got string"
        );
        assert_eq!(
            err(&format!(
                "[[routes]]\n{hops}\n[[routes]]\nhops = [\"10.0.0.1:7000@{k1}\", 7]"
            )),
            "config /etc/qnet/qnet.toml: routes[1].hops[1]: expected a string, got integer"
        );
        let msg = err(&format!("[[routes]]\n{hops}\nexit = \"x\""));
        assert!(
            msg.starts_with("config /etc/qnet/qnet.toml: line 3: "),
            "{msg}"
        );
        assert!(msg.contains("unknown field `exit`"), "{msg}");
    }

    #[test]
    fn env_lists_replace_the_files_relays() {
        let file = format!(
            "[[relays]]\naddress = \"10.0.0.1:7000\"\nkey = \"{}\"\ngroup = \"eu\"\nweight = 5\n",
            b64(1)
        );
        let keys = format!("{} ,{}", b64(2), b64(3));
        let c = with_env(
            &file,
            &[
                ("QNET_RELAY", "10.0.0.2:7000 , [::1]:7000"),
                ("QNET_RELAY_KEY", &keys),
            ],
        );
        assert_eq!(
            c.relays,
            [relay("10.0.0.2:7000", 2), relay("[::1]:7000", 3)]
        );
    }

    #[test]
    fn env_keys_alone_pair_with_the_files_addresses() {
        let file = format!(
            "relay = \"10.0.0.1:7000, 10.0.0.2:7000\"\nrelay_key = \"{}, {}\"",
            b64(1),
            b64(2)
        );
        let keys = format!("{},{}", b64(3), b64(4));
        let c = with_env(&file, &[("QNET_RELAY_KEY", &keys)]);
        assert_eq!(
            c.relays,
            [relay("10.0.0.1:7000", 3), relay("10.0.0.2:7000", 4)]
        );
        // A file's relay without its key takes its key from the environment.
        let k = b64(5);
        let c = with_env("relay = \"10.0.0.1:7000\"", &[("QNET_RELAY_KEY", &k)]);
        assert_eq!(c.relays, [relay("10.0.0.1:7000", 5)]);
        assert_eq!(c.relay_without_key(), None);
        // Rebuilt from the environment, an entry has no group and weight 1.
        let file = format!(
            "[[relays]]\naddress = \"10.0.0.1:7000\"\nkey = \"{}\"\ngroup = \"eu\"\nweight = 5\n",
            b64(1)
        );
        let c = with_env(&file, &[("QNET_RELAY_KEY", &k)]);
        assert_eq!(c.relays, [relay("10.0.0.1:7000", 5)]);
    }

    #[test]
    fn env_addresses_alone_pair_with_the_files_keys() {
        let c = with_env(
            &format!("relay_key = \"{}\"", b64(1)),
            &[("QNET_RELAY", "10.0.0.9:7000")],
        );
        assert_eq!(c.relays, [relay("10.0.0.9:7000", 1)]);
        // No key anywhere: the client reports it, as before.
        let c = with_env("", &[("QNET_RELAY", "10.0.0.9:7000")]);
        assert!(c.relays.is_empty());
        assert_eq!(c.relay_without_key(), Some("10.0.0.9:7000"));
    }

    #[test]
    fn env_lists_of_different_lengths_name_both_variables_and_counts() {
        let keys = format!("{},{}", b64(1), b64(2));
        assert_eq!(
            env_error(
                "",
                &[
                    ("QNET_RELAY", "10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000"),
                    ("QNET_RELAY_KEY", &keys)
                ]
            ),
            "environment variable QNET_RELAY_KEY: 2 keys (QNET_RELAY_KEY) for 3 addresses (QNET_RELAY); give one key per relay, in the same order"
        );
        let file = format!("relay = \"10.0.0.1:7000\"\nrelay_key = \"{}\"", b64(1));
        assert_eq!(
            env_error(&file, &[("QNET_RELAY_KEY", &keys)]),
            "environment variable QNET_RELAY_KEY: 2 keys (QNET_RELAY_KEY) for 1 address (the config file's; QNET_RELAY is unset); give one key per relay, in the same order"
        );
        assert_eq!(
            env_error(&file, &[("QNET_RELAY", "10.0.0.1:7000, 10.0.0.2:7000")]),
            "environment variable QNET_RELAY: 1 key (the config file's; QNET_RELAY_KEY is unset) for 2 addresses (QNET_RELAY); give one key per relay, in the same order"
        );
    }

    #[test]
    fn env_list_items_are_checked_like_the_files() {
        assert!(
            env_error("", &[("QNET_RELAY", "10.0.0.1:7000, nope")])
                .starts_with("environment variable QNET_RELAY[1]: must be host:port")
        );
        assert_eq!(
            env_error("", &[("QNET_RELAY", "10.0.0.1:7000, 10.0.0.1:7000")]),
            "environment variable QNET_RELAY: 10.0.0.1:7000 is listed twice (QNET_RELAY[0] and QNET_RELAY[1])"
        );
        let keys = format!("{}, xx", b64(1));
        assert!(
            env_error("", &[("QNET_RELAY_KEY", &keys)])
                .starts_with("environment variable QNET_RELAY_KEY[1]: invalid key")
        );
    }

    #[test]
    fn qnet_hops_replaces_the_files_routes_with_one_route() {
        let file = format!(
            "relay = \"10.0.0.1:7000\"\nrelay_key = \"{}\"\n[[routes]]\nhops = [\"10.0.0.1:7000\", \"10.0.0.2:7000@{}\"]\n",
            b64(1),
            b64(2)
        );
        let hops = format!(
            "[::1]:7000@{} , 10.0.0.1:7000,10.0.0.3:7000@{}",
            b64(7),
            b64(3)
        );
        let c = with_env(&file, &[("QNET_HOPS", &hops)]);
        assert_eq!(
            c.routes,
            [RouteConfig {
                name: None,
                hops: vec![
                    h("[::1]:7000", 7),
                    h("10.0.0.1:7000", 1),
                    h("10.0.0.3:7000", 3)
                ],
            }]
        );
        assert_eq!(c.paths(), [c.routes[0].hops.clone()]);
    }

    #[test]
    fn qnet_hops_names_relays_of_the_final_relay_list() {
        let keys = format!("{},{}", b64(1), b64(2));
        let c = with_env(
            "",
            &[
                ("QNET_RELAY", "10.0.0.1:7000,10.0.0.2:7000"),
                ("QNET_RELAY_KEY", &keys),
                ("QNET_HOPS", "10.0.0.2:7000, 10.0.0.1:7000"),
            ],
        );
        assert_eq!(
            c.paths(),
            [vec![h("10.0.0.2:7000", 2), h("10.0.0.1:7000", 1)]]
        );
    }

    #[test]
    fn qnet_hops_errors_name_the_variable() {
        let k = b64(1);
        assert_eq!(
            env_error("", &[("QNET_HOPS", &format!("10.0.0.1:7000@{k}"))]),
            "environment variable QNET_HOPS: a route has 2 or 3 hops (entry first, exit last); got 1"
        );
        assert_eq!(
            env_error(
                "",
                &[("QNET_HOPS", &format!("10.0.0.1:7000@{k}, 10.0.0.2:7000"))]
            ),
            "environment variable QNET_HOPS[1]: unknown key for hop 10.0.0.2:7000: write HOST:PORT@KEY or list it in [[relays]]"
        );
        assert!(
            env_error(
                "",
                &[(
                    "QNET_HOPS",
                    &format!("10.0.0.1:7000@{k}, 10.0.0.2:7000@{k}")
                )]
            )
            .contains("QNET_HOPS: QNET_HOPS[0] and QNET_HOPS[1] have the same key")
        );
    }

    #[test]
    fn paths_are_the_relays_alone_when_no_route_is_configured() {
        let c = with_env(
            "",
            &[
                ("QNET_RELAY", "10.0.0.1:7000, 10.0.0.2:7000"),
                ("QNET_RELAY_KEY", &format!("{}, {}", b64(1), b64(2))),
            ],
        );
        assert_eq!(
            c.paths(),
            [vec![h("10.0.0.1:7000", 1)], vec![h("10.0.0.2:7000", 2)]]
        );
        assert!(Config::default().paths().is_empty());
    }
}
