//! The `[session]` table: timers, rekey limits and flow-control windows of one
//! client–relay session.

use std::time::Duration;

use serde::Deserialize;
use toml::Value;

use super::ConfigError;
use super::value::Origin;

/// Tunables of one client–relay session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// Send a PING after this much time without sending anything.
    pub keepalive: Duration,
    /// Declare the session dead after this much time without receiving anything.
    pub idle_timeout: Duration,
    /// Send KEY_UPDATE after this many bytes sent under one key.
    pub rekey_bytes: u64,
    /// Send KEY_UPDATE after this many records sent under one key.
    pub rekey_records: u64,
    /// Send KEY_UPDATE after one key has been in use this long.
    pub rekey_interval: Duration,
    /// Flow-control credit per stream, bytes.
    pub stream_window: u32,
    /// Flow-control credit per session, bytes.
    pub session_window: u32,
    /// Offer AES-256-GCM for records where this CPU runs it in hardware (`cipher = "auto"`,
    /// the default); `cipher = "chacha20-poly1305"` offers ChaCha20-Poly1305 only.
    pub offer_aes: bool,
}

impl SessionParams {
    /// Smallest accepted window: below this, one full record could not fit.
    pub(crate) const MIN_WINDOW: u32 = 16 * 1024;
    /// Largest accepted window (1 GiB).
    pub(crate) const MAX_WINDOW: u32 = 1 << 30;
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            keepalive: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(90),
            rekey_bytes: 1 << 30,
            rekey_records: 1 << 32,
            rekey_interval: Duration::from_secs(600),
            stream_window: 256 * 1024,
            session_window: 16 * 1024 * 1024,
            offer_aes: true,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a [session] table")]
pub(super) struct RawSession {
    keepalive_secs: Option<Value>,
    idle_timeout_secs: Option<Value>,
    rekey_bytes: Option<Value>,
    rekey_records: Option<Value>,
    rekey_secs: Option<Value>,
    stream_window: Option<Value>,
    session_window: Option<Value>,
    cipher: Option<Value>,
}

impl SessionParams {
    pub(super) fn from_raw(raw: RawSession, o: &Origin<'_>) -> Result<SessionParams, ConfigError> {
        let mut p = SessionParams::default();
        let secs = |field: &str, v: Value| o.positive(field, v).map(Duration::from_secs);
        if let Some(v) = raw.keepalive_secs {
            p.keepalive = secs("session.keepalive_secs", v)?;
        }
        if let Some(v) = raw.idle_timeout_secs {
            p.idle_timeout = secs("session.idle_timeout_secs", v)?;
        }
        if let Some(v) = raw.rekey_bytes {
            p.rekey_bytes = o.positive("session.rekey_bytes", v)?;
        }
        if let Some(v) = raw.rekey_records {
            p.rekey_records = o.positive("session.rekey_records", v)?;
        }
        if let Some(v) = raw.rekey_secs {
            p.rekey_interval = secs("session.rekey_secs", v)?;
        }
        if let Some(v) = raw.stream_window {
            p.stream_window = window(o, "session.stream_window", v)?;
        }
        if let Some(v) = raw.session_window {
            p.session_window = window(o, "session.session_window", v)?;
        }
        if let Some(v) = raw.cipher {
            p.offer_aes = match o.string("session.cipher", v)?.as_str() {
                "auto" => true,
                "chacha20-poly1305" => false,
                other => {
                    return Err(o.err(
                        "session.cipher",
                        format!("unknown cipher {other:?} (expected auto or chacha20-poly1305)"),
                    ));
                }
            };
        }
        if p.keepalive >= p.idle_timeout {
            return Err(o.err(
                "session.keepalive_secs",
                format!(
                    "must be less than session.idle_timeout_secs ({} >= {})",
                    p.keepalive.as_secs(),
                    p.idle_timeout.as_secs()
                ),
            ));
        }
        if p.session_window < p.stream_window {
            return Err(o.err(
                "session.session_window",
                format!(
                    "must be at least session.stream_window ({} < {})",
                    p.session_window, p.stream_window
                ),
            ));
        }
        Ok(p)
    }
}

/// A window in bytes: from [`SessionParams::MIN_WINDOW`] to [`SessionParams::MAX_WINDOW`].
fn window(o: &Origin<'_>, field: &str, value: Value) -> Result<u32, ConfigError> {
    let n = o.integer(field, value)?;
    if n < i64::from(SessionParams::MIN_WINDOW) {
        return Err(o.err(
            field,
            format!("must be at least {} (got {n})", SessionParams::MIN_WINDOW),
        ));
    }
    if n > i64::from(SessionParams::MAX_WINDOW) {
        return Err(o.err(
            field,
            format!("must be at most {} (got {n})", SessionParams::MAX_WINDOW),
        ));
    }
    Ok(n as u32)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{err, parse};

    #[test]
    fn cipher_choices() {
        assert!(parse("").unwrap().session.offer_aes);
        assert!(
            parse("[session]\ncipher = \"auto\"")
                .unwrap()
                .session
                .offer_aes
        );
        assert!(
            !parse("[session]\ncipher = \"chacha20-poly1305\"")
                .unwrap()
                .session
                .offer_aes
        );
        assert_eq!(
            err("[session]\ncipher = \"aes-128-cbc\""),
            "config /etc/qnet/qnet.toml: session.cipher: unknown cipher \"aes-128-cbc\" (expected auto or chacha20-poly1305)"
        );
    }

    #[test]
    fn window_limits() {
        assert_eq!(
            err("[session]\nstream_window = 10"),
            "config /etc/qnet/qnet.toml: session.stream_window: must be at least 16384 (got 10)"
        );
        assert!(
            err("[session]\nsession_window = 1073741825")
                .contains("session.session_window: must be at most 1073741824")
        );
        assert!(err("[session]\nstream_window = -1").contains("must be at least 16384 (got -1)"));
        let msg = err("[session]\nstream_window = 1048576\nsession_window = 524288");
        assert!(
            msg.contains("session.session_window: must be at least session.stream_window"),
            "{msg}"
        );
        parse("[session]\nstream_window = 1048576\nsession_window = 1048576").unwrap();
    }

    #[test]
    fn timing_and_rekey_limits() {
        let msg = err("[session]\nkeepalive_secs = 90\nidle_timeout_secs = 90");
        assert!(
            msg.contains("session.keepalive_secs: must be less than session.idle_timeout_secs"),
            "{msg}"
        );
        assert!(err("[session]\nkeepalive_secs = 100").contains("session.keepalive_secs"));
        for field in [
            "keepalive_secs",
            "idle_timeout_secs",
            "rekey_bytes",
            "rekey_records",
            "rekey_secs",
        ] {
            for bad in ["0", "-5"] {
                let msg = err(&format!("[session]\n{field} = {bad}"));
                assert_eq!(
                    msg,
                    format!(
                        "config /etc/qnet/qnet.toml: session.{field}: must be greater than 0 (got {bad})"
                    )
                );
            }
        }
        assert!(err("[session]\nrekey_secs = 1.5").contains("expected an integer, got float"));
    }
}
