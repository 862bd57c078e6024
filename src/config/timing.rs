//! The `[timing]` table: which timing profile shapes which flows.
//!
//! ```toml
//! [timing]
//! profile = "performance"          # flows no rule matches; QNET_PROFILE overrides everything
//! rules = ["10.0.0.0/8 high-security", "port:22 performance", "example.org default"]
//! ```
//!
//! A rule is `<match> <profile>`: the match is a CIDR, `port:N`, or a host name (which
//! also matches its subdomains, for names the app connects to through remote DNS). The
//! first matching rule wins.

use std::net::IpAddr;

use serde::Deserialize;
use toml::Value;

use super::value::Origin;
use super::{Cidr, ConfigError};
use crate::net::NetError;
use crate::sched::Profile;

/// What a timing rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimingMatch {
    /// Destinations in this network.
    Net(Cidr),
    /// Destinations on this port.
    Port(u16),
    /// This host name and its subdomains (lower case, no trailing dot).
    Domain(String),
}

/// One `<match> <profile>` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimingRule {
    /// What it matches.
    pub matcher: TimingMatch,
    /// The profile for matching flows.
    pub profile: Profile,
}

/// The client's timing choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimingConfig {
    /// The profile for flows no rule matches.
    pub profile: Profile,
    /// Per-destination rules, first match wins.
    pub rules: Vec<TimingRule>,
}

impl Default for TimingConfig {
    fn default() -> Self {
        TimingConfig {
            profile: Profile::Performance,
            rules: Vec::new(),
        }
    }
}

/// Parse a profile name, with the list of valid ones in the error.
pub(crate) fn parse_profile(s: &str) -> Result<Profile, String> {
    Profile::parse(s.trim()).ok_or_else(|| {
        format!("unknown timing profile {s:?} (expected performance, default or high-security)")
    })
}

impl TimingRule {
    /// Parse `<match> <profile>`.
    pub(crate) fn parse(s: &str) -> Result<TimingRule, String> {
        let mut words = s.split_whitespace();
        let (Some(m), Some(p), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "expected \"<CIDR | port:N | host name> <profile>\" (got {s:?})"
            ));
        };
        let profile = parse_profile(p)?;
        let matcher = if let Some(port) = m.strip_prefix("port:") {
            match port.parse::<u16>() {
                Ok(n) if n > 0 => TimingMatch::Port(n),
                _ => return Err(format!("bad port in {m:?} (expected 1..=65535)")),
            }
        } else if m.contains('/') || m.parse::<IpAddr>().is_ok() {
            let net = if m.contains('/') {
                m.to_owned()
            } else if m.contains(':') {
                format!("{m}/128")
            } else {
                format!("{m}/32")
            };
            TimingMatch::Net(net.parse().map_err(|e: NetError| e.to_string())?)
        } else {
            let name = m.trim_end_matches('.').to_ascii_lowercase();
            if !crate::proto::frame::valid_hostname(&name) {
                return Err(format!("{m:?} is neither a CIDR, port:N nor a host name"));
            }
            TimingMatch::Domain(name)
        };
        Ok(TimingRule { matcher, profile })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a [timing] table")]
pub(super) struct RawTiming {
    profile: Option<Value>,
    rules: Option<Value>,
}

impl TimingConfig {
    pub(super) fn from_raw(raw: RawTiming, o: &Origin<'_>) -> Result<TimingConfig, ConfigError> {
        let mut t = TimingConfig::default();
        if let Some(v) = raw.profile {
            let p = o.string("timing.profile", v)?;
            t.profile = parse_profile(&p).map_err(|m| o.err("timing.profile", m))?;
        }
        if let Some(v) = raw.rules {
            for (i, item) in o.array("timing.rules", v)?.into_iter().enumerate() {
                let field = format!("timing.rules[{i}]");
                let r = o.string(&field, item)?;
                t.rules
                    .push(TimingRule::parse(&r).map_err(|m| o.err(&field, m))?);
            }
        }
        Ok(t)
    }

    /// The profile for a destination given by address and/or name.
    pub(crate) fn profile_for(&self, ip: Option<IpAddr>, name: Option<&str>, port: u16) -> Profile {
        let name = name.map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        for r in &self.rules {
            let hit = match &r.matcher {
                TimingMatch::Net(c) => ip.is_some_and(|ip| c.contains(ip)),
                TimingMatch::Port(p) => *p == port,
                TimingMatch::Domain(d) => name.as_deref().is_some_and(|n| {
                    n == d
                        || (n.len() > d.len() && n.ends_with(d.as_str()) && {
                            n.as_bytes()[n.len() - d.len() - 1] == b'.'
                        })
                }),
            };
            if hit {
                return r.profile;
            }
        }
        self.profile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_match_first_wins() {
        let t = TimingConfig {
            profile: Profile::Default,
            rules: [
                "10.0.0.0/8 high-security",
                "port:22 performance",
                "Example.org. default",
                "192.0.2.7 performance",
            ]
            .iter()
            .map(|r| TimingRule::parse(r).unwrap())
            .collect(),
        };
        let ip = |s: &str| Some(s.parse().unwrap());
        assert_eq!(
            t.profile_for(ip("10.1.2.3"), None, 22),
            Profile::HighSecurity
        );
        assert_eq!(t.profile_for(ip("8.8.8.8"), None, 22), Profile::Performance);
        assert_eq!(
            t.profile_for(ip("192.0.2.7"), None, 80),
            Profile::Performance
        );
        assert_eq!(
            t.profile_for(None, Some("www.example.org"), 80),
            Profile::Default
        );
        assert_eq!(
            t.profile_for(None, Some("notexample.org"), 80),
            Profile::Default
        );
        assert_eq!(
            t.profile_for(ip("8.8.8.8"), Some("other.net"), 80),
            Profile::Default
        );
        let t2 = TimingConfig {
            profile: Profile::Performance,
            rules: vec![TimingRule::parse("example.org high-security").unwrap()],
        };
        assert_eq!(
            t2.profile_for(None, Some("notexample.org"), 80),
            Profile::Performance
        );
        assert_eq!(
            t2.profile_for(None, Some("a.example.org"), 80),
            Profile::HighSecurity
        );
    }

    #[test]
    fn bad_rules_say_why() {
        for (rule, needle) in [
            ("10.0.0.0/8", "expected"),
            ("10.0.0.0/8 fast", "unknown timing profile"),
            ("port:0 default", "bad port"),
            ("port:x default", "bad port"),
            ("10.0.0.0/33 default", ""),
            ("bad_name! default", "neither"),
            ("a b c", "expected"),
        ] {
            let e = TimingRule::parse(rule).unwrap_err();
            assert!(e.contains(needle), "{rule}: {e}");
        }
    }
}
