//! Helpers shared by the integration tests: temp dirs and a real qnet-relay process.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;

use qnet::keys::{PrivateKey, write_private_key};

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qnet-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `text` to `path` with mode `mode`, whatever the umask: qnet refuses an
/// allow-list or config file that group or others may write.
pub fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A running relay, killed on drop.
pub struct Relay {
    pub child: Child,
    pub addr: SocketAddr,
    pub public: [u8; 32],
    pub clients: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let key = PrivateKey::generate();
    let public = key.public().0;
    let key_path = dir.join("relay.key");
    let _ = std::fs::remove_file(&key_path);
    write_private_key(&key_path, &key).unwrap();
    let clients = dir.join("clients");
    let list: String = allowed
        .iter()
        .map(|k| format!("{}\n", qnet::keys::PublicKey(*k).to_base64()))
        .collect();
    write_mode(&clients, &list, 0o644);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qnet-relay"));
    cmd.args(["--listen", "127.0.0.1:0", "--key"])
        .arg(&key_path)
        .arg("--clients")
        .arg(&clients)
        .env("QNET_CONFIG", dir.join("relay.toml"))
        .stderr(Stdio::piped());
    write_mode(
        &dir.join("relay.toml"),
        &format!("[server]\n{server_toml}"),
        0o644,
    );
    cmd.args(args);
    let mut child = cmd.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("qnet-relay listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    // Keep draining stderr so the relay never blocks on a full pipe.
    thread::spawn(move || for _ in err.lines() {});
    Relay {
        child,
        addr,
        public,
        clients,
    }
}

/// A process's resident set size in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}
