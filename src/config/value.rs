//! Reading one raw TOML value as a typed one, with errors that name the field and the
//! source; and the checks of values that more than one table has (paths, `host:port`).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use toml::Value;

use super::{Cidr, ConfigError};
use crate::net::NetError;

/// Builds field errors for one config source, and reads values as their types.
pub(super) struct Origin<'a>(pub(super) &'a str);

impl Origin<'_> {
    pub(super) fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Field {
            origin: self.0.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    pub(super) fn string(&self, field: &str, value: Value) -> Result<String, ConfigError> {
        match value {
            Value::String(s) => Ok(s),
            other => Err(self.err(
                field,
                format!("expected a string, got {}", other.type_str()),
            )),
        }
    }

    pub(super) fn integer(&self, field: &str, value: Value) -> Result<i64, ConfigError> {
        match value {
            Value::Integer(n) => Ok(n),
            other => Err(self.err(
                field,
                format!("expected an integer, got {}", other.type_str()),
            )),
        }
    }

    pub(super) fn positive(&self, field: &str, value: Value) -> Result<u64, ConfigError> {
        let n = self.integer(field, value)?;
        u64::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| self.err(field, format!("must be greater than 0 (got {n})")))
    }

    pub(super) fn path(&self, field: &str, value: Value) -> Result<PathBuf, ConfigError> {
        let s = self.string(field, value)?;
        check_path(&s)
            .map(|()| PathBuf::from(s))
            .map_err(|m| self.err(field, m))
    }

    pub(super) fn array(&self, field: &str, value: Value) -> Result<Vec<Value>, ConfigError> {
        match value {
            Value::Array(a) => Ok(a),
            other => Err(self.err(
                field,
                format!("expected an array, got {}", other.type_str()),
            )),
        }
    }

    pub(super) fn boolean(&self, field: &str, value: Value) -> Result<bool, ConfigError> {
        match value {
            Value::Boolean(b) => Ok(b),
            other => Err(self.err(
                field,
                format!("expected true or false, got {}", other.type_str()),
            )),
        }
    }

    pub(super) fn cidr(&self, field: &str, value: Value) -> Result<Cidr, ConfigError> {
        let s = self.string(field, value)?;
        s.parse()
            .map_err(|e: NetError| self.err(field, e.to_string()))
    }

    pub(super) fn host_port(&self, field: &str, value: Value) -> Result<String, ConfigError> {
        let s = self.string(field, value)?;
        check_host_port(&s)
            .map(|()| s)
            .map_err(|m| self.err(field, m))
    }
}

/// A TOML syntax error or unknown key, placed by line when toml gives a position.
pub(super) fn toml_error(origin: &str, text: &str, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim().replace('\n', "; ");
    match err.span() {
        Some(span) => ConfigError::Syntax {
            origin: origin.to_owned(),
            line: line_of(text, span.start),
            message,
        },
        None => ConfigError::Toml {
            origin: origin.to_owned(),
            message,
        },
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Makes a path from a file relative to that file's directory `base`, unless it is absolute.
pub(super) fn rebase(path: &mut PathBuf, base: &Path) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

/// Checks a path from the file or the environment: not blank, no NUL byte.
pub(super) fn check_path(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.contains('\0') {
        return Err("must not contain a NUL byte".to_owned());
    }
    Ok(())
}

/// Checks `host:port` where host is an IPv4 address, a DNS name or a bracketed IPv6 address.
pub(super) fn check_host_port(s: &str) -> Result<(), String> {
    const SHAPE: &str =
        "must be host:port, e.g. 127.0.0.1:7000, relay.example.com:7000 or [::1]:7000";
    let port = if let Some(rest) = s.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(format!("{SHAPE}; missing `]` (got {s:?})"));
        };
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{inside:?} is not an IPv6 address (got {s:?})"));
        }
        let Some(port) = after.strip_prefix(':') else {
            return Err(format!("{SHAPE}; port missing (got {s:?})"));
        };
        port
    } else {
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!("{SHAPE} (got {s:?})"));
        };
        if host.contains(':') {
            return Err(format!(
                "IPv6 addresses must be in brackets, e.g. [::1]:7000 (got {s:?})"
            ));
        }
        check_host(host).map_err(|m| format!("{m} (got {s:?})"))?;
        port
    };
    // u16's parser accepts a leading '+', which is not a port number anyone writes.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{SHAPE}; bad port {port:?} (got {s:?})"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("port must be 1 to 65535 (got {s:?})")),
    }
}

/// The spelling two writings of one `host:port` share: DNS names are case-insensitive,
/// and one IPv6 address has many spellings (`[::1]`, `[0::1]`, `[::0001]`).
pub(super) fn address_key(s: &str) -> String {
    let s = s.trim();
    if let Some((inside, after)) = s.strip_prefix('[').and_then(|r| r.split_once(']')) {
        if let Ok(ip) = inside.parse::<Ipv6Addr>() {
            return format!("[{ip}]{after}");
        }
    }
    s.to_ascii_lowercase()
}

/// The positions of the first item equal to an earlier one, if any.
pub(super) fn first_repeat<T: Eq + Hash>(
    items: impl IntoIterator<Item = T>,
) -> Option<(usize, usize)> {
    let mut seen = HashMap::new();
    for (j, item) in items.into_iter().enumerate() {
        if let Some(&i) = seen.get(&item) {
            return Some((i, j));
        }
        seen.insert(item, j);
    }
    None
}

/// Checks that the list `name` of `host:port` names no address twice (by [`address_key`]).
pub(super) fn check_unique<'a>(
    name: &str,
    addresses: impl IntoIterator<Item = &'a str>,
) -> Result<(), String> {
    let addresses: Vec<&str> = addresses.into_iter().collect();
    match first_repeat(addresses.iter().map(|a| address_key(a))) {
        Some((i, j)) => Err(format!(
            "{} is listed twice ({name}[{i}] and {name}[{j}])",
            addresses[j].trim()
        )),
        None => Ok(()),
    }
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host is empty".to_owned());
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let invalid = || format!("{host:?} is neither an IP address nor a valid DNS name");
    if name.is_empty() || name.len() > 253 {
        return Err(invalid());
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(invalid());
        }
    }
    // An all-numeric last label means a mistyped IPv4 address (e.g. 10.0.0.256), never
    // a name: no top-level domain is numeric.
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{KEY_B64, err, parse};

    #[test]
    fn wrong_types_name_the_field() {
        assert_eq!(
            err("relay = 7000"),
            "config /etc/qnet/qnet.toml: relay: expected a string, got integer"
        );
        assert_eq!(
            err("[session]\nstream_window = \"big\""),
            "config /etc/qnet/qnet.toml: session.stream_window: expected an integer, got string"
        );
        assert!(
            err("[server]\nexit_allow = \"x\"").contains("server.exit_allow: expected an array")
        );
        assert!(
            err("[server]\nexit_allow = [1]").contains("server.exit_allow[0]: expected a string")
        );
        assert!(
            err("[relay]\nlisten = \"x:1\"").contains("relay: expected a string \"host:port\"")
        );
        let msg = err("session = 5");
        assert!(msg.contains("line 1: "), "{msg}");
        assert!(msg.ends_with("expected a [session] table"), "{msg}");
    }

    #[test]
    fn syntax_errors_have_line_numbers() {
        let msg = err("log = \"warn\"\n\n[session\nkeepalive_secs = 1\n");
        assert!(
            msg.starts_with("config /etc/qnet/qnet.toml: line 3: "),
            "{msg}"
        );
        let msg = err("log = \"warn\"\nlog = \"info\"\n");
        assert!(msg.contains("line 2: "), "{msg}");
        let msg = err("relay = \"unterminated\n");
        assert!(msg.contains("line 1: "), "{msg}");
    }

    #[test]
    fn relay_address_validation() {
        for good in [
            "127.0.0.1:7000",
            "[::1]:7000",
            "[2001:db8::1]:65535",
            "relay.example.com:1",
            "relay.example.com.:443",
            "localhost:7000",
            "xn--bcher-kva.example:80",
        ] {
            let c = parse(&format!("relay = \"{good}\"\nrelay_key = \"{KEY_B64}\"")).unwrap();
            assert_eq!(c.relays[0].address, good);
        }
        for bad in [
            "",
            "relay.example.com",
            "127.0.0.1",
            ":7000",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.1:+80",
            "127.0.0.1:http",
            "::1:7000",
            "[::1]7000",
            "[::1:7000",
            "[nope]:7000",
            "[::1]:",
            "10.0.0.256:7000",
            "bad_name.example:7000",
            "-dash.example:7000",
            "a..b:7000",
            "with space:7000",
        ] {
            let msg = err(&format!("relay = {bad:?}"));
            assert!(
                msg.starts_with("config /etc/qnet/qnet.toml: relay: "),
                "{bad}: {msg}"
            );
        }
        let long = format!("{}.com:1", "a".repeat(64));
        assert!(err(&format!("relay = {long:?}")).contains("relay: "));
        assert!(err("[server]\nlisten = \"nope\"").contains("server.listen: must be host:port"));
    }
}
