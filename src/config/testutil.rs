//! What the config tests share: parsing under a fixed origin, a fake environment, a
//! temporary directory.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use super::{Config, ConfigError};

/// A valid relay public key.
pub(super) const KEY_B64: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
/// Another valid key.
pub(super) const OTHER_KEY_B64: &str = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=";

/// Parses `text` as if it were `/etc/qnet/qnet.toml`.
pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, "/etc/qnet/qnet.toml")
}

/// The error `text` gives, checked to be one line.
pub(super) fn err(text: &str) -> String {
    let msg = parse(text).unwrap_err().to_string();
    assert!(!msg.contains('\n'), "error is not one line: {msg}");
    msg
}

/// An environment of exactly `pairs`.
pub(super) fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

/// A directory removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> TempDir {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "qnet-config-{tag}-{}-{:016x}",
            std::process::id(),
            u64::from_le_bytes(nonce)
        ));
        fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }

    pub(super) fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.0.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        // Whatever the umask: a group-writable config file is refused.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
