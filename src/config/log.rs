//! The top-level `log` key: how much the client library and relay log.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// How much the client library and relay log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum LogLevel {
    /// Nothing at all.
    Off,
    /// Only failures.
    Error,
    /// Failures and suspicious events (the default).
    #[default]
    Warn,
    /// Plus session-level events.
    Info,
    /// Plus per-stream detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The level's name as written in config and `QNET_LOG`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A log level name that is not one of off, error, warn, info, debug, trace.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown log level {0:?} (expected off, error, warn, info, debug or trace)")]
pub struct ParseLogLevelError(pub String);

impl FromStr for LogLevel {
    type Err = ParseLogLevelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let level = match s.trim().to_ascii_lowercase().as_str() {
            "off" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return Err(ParseLogLevelError(s.to_owned())),
        };
        Ok(level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_parsing() {
        for (s, l) in [
            ("off", LogLevel::Off),
            ("error", LogLevel::Error),
            ("WARN", LogLevel::Warn),
            ("info", LogLevel::Info),
            (" debug ", LogLevel::Debug),
            ("trace", LogLevel::Trace),
        ] {
            assert_eq!(s.parse::<LogLevel>().unwrap(), l);
            assert_eq!(l.as_str().parse::<LogLevel>().unwrap(), l);
        }
        assert!("verbose".parse::<LogLevel>().is_err());
        assert!(LogLevel::Trace > LogLevel::Warn && LogLevel::Off < LogLevel::Error);
        assert_eq!(LogLevel::Info.to_string(), "info");
    }
}
