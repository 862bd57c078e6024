//! Helpers shared by the integration tests: temp dirs and a real qnet-relay process.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod load;

use std::path::{Path, PathBuf};

pub use load::{Relay, rss_kib, write_mode};

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qnet-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The `[server]` lines of every test relay: unauthenticated connections close after
/// 1–2 s instead of 5–15 s, so tests of refusals wait less.
pub const TEST_DRAIN: &str = "drain_min_ms = 1000\ndrain_max_ms = 2000\n";

pub fn start_relay(dir: &Path, allowed: &[[u8; 32]], exit_allow: &[&str]) -> Relay {
    let args: Vec<&str> = exit_allow
        .iter()
        .flat_map(|r| ["--exit-allow", r])
        .collect();
    start_relay_with(dir, allowed, &args, TEST_DRAIN)
}

/// [`start_relay`] with any extra command-line arguments, and `server_toml` as the
/// config file's `[server]` table.
pub fn start_relay_with(
    dir: &Path,
    allowed: &[[u8; 32]],
    args: &[&str],
    server_toml: &str,
) -> Relay {
    load::spawn_relay(
        Path::new(env!("CARGO_BIN_EXE_qnet-relay")),
        dir,
        allowed,
        args,
        server_toml,
    )
}
