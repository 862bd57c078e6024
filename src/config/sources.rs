//! Where a config comes from: the file search (`QNET_CONFIG`, the user's file, the
//! system file), reading a file with its relative paths resolved, and the `QNET_*`
//! environment overrides applied on top.
//!
//! Relative paths in a file are taken relative to that file's directory, because the
//! client library runs inside arbitrary programs whose working directory says nothing
//! about where the config lives.

use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use super::value::{check_path, rebase};
use super::{Config, ConfigError, ParseLogLevelError, parse_profile};
use crate::fileperm::{self, Holds};

/// The system-wide config file, read when neither `QNET_CONFIG` nor the user's file exists.
pub(crate) const SYSTEM_CONFIG_PATH: &str = "/etc/qnet/qnet.toml";

/// A config file's text and the metadata of the handle it was read through.
struct FileText {
    text: String,
    meta: fs::Metadata,
}

/// Reads a whole file through one handle, so the file whose owner and mode are checked
/// is the file whose text is parsed.
fn read_file(path: &Path) -> io::Result<FileText> {
    let mut file = fs::File::open(path)?;
    let meta = file.metadata()?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(FileText { text, meta })
}

impl Config {
    /// Reads a config file; relative paths in it are resolved against its directory.
    pub(crate) fn from_path(path: &Path) -> Result<Config, ConfigError> {
        let file = read_file(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_file_text(&file, path)
    }

    /// Parses a file read by [`read_file`], after checking who may touch it: the file
    /// names keys, relays and allow-lists, so only its owner (this user or root) may
    /// write it; when it holds SOCKS credentials, only its owner may read it.
    fn from_file_text(file: &FileText, path: &Path) -> Result<Config, ConfigError> {
        fileperm::check(&file.meta, path, "config file", Holds::Access)?;
        let mut config = Config::from_toml_str(&file.text, &path.display().to_string())?;
        if config.has_credentials() {
            let what = "config file with SOCKS credentials";
            fileperm::check(&file.meta, path, what, Holds::Secret)?;
        }
        let base = path.parent().unwrap_or(Path::new(""));
        if let Some(key) = &mut config.key {
            rebase(key, base);
        }
        config.server.rebase(base);
        config.entropy.rebase(base);
        if let Some(t) = &mut config.tor {
            t.rebase(base);
        }
        Ok(config)
    }

    /// Applies `QNET_RELAY`, `QNET_RELAY_KEY`, `QNET_HOPS`, `QNET_KEY`, `QNET_LOG`,
    /// `QNET_PROFILE` and `QNET_SECCOMP` looked up through `get`.
    pub(crate) fn apply_env(
        &mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let env_err = |var: &str, message: String| ConfigError::Env {
            var: var.to_owned(),
            message,
        };
        self.apply_relay_env(
            non_empty(&get, "QNET_RELAY"),
            non_empty(&get, "QNET_RELAY_KEY"),
            non_empty(&get, "QNET_HOPS"),
        )?;
        if let Some(v) = non_empty(&get, "QNET_KEY") {
            check_path(&v).map_err(|m| env_err("QNET_KEY", m))?;
            self.key = Some(PathBuf::from(v));
        }
        if let Some(v) = non_empty(&get, "QNET_LOG") {
            self.log = v
                .parse()
                .map_err(|e: ParseLogLevelError| env_err("QNET_LOG", e.to_string()))?;
        }
        if let Some(v) = non_empty(&get, "QNET_PROFILE") {
            // One profile for every flow of this process: the rules step aside.
            self.timing.profile = parse_profile(&v).map_err(|m| env_err("QNET_PROFILE", m))?;
            self.timing.rules.clear();
        }
        if let Some(v) = non_empty(&get, "QNET_SECCOMP") {
            self.intercept.seccomp = match v.as_str() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => return Err(env_err("QNET_SECCOMP", "expected 0 or 1".to_owned())),
            };
        }
        Ok(())
    }

    /// Finds the config file to read, if any (see the module docs for the order), and
    /// reads it. `get` looks up environment variables; `system_config` is normally
    /// [`SYSTEM_CONFIG_PATH`].
    fn locate_and_read(
        get: &impl Fn(&str) -> Option<String>,
        system_config: &Path,
    ) -> Result<Option<(PathBuf, FileText)>, ConfigError> {
        if let Some(named) = non_empty(get, "QNET_CONFIG") {
            let path = PathBuf::from(named);
            return match read_file(&path) {
                Ok(file) => Ok(Some((path, file))),
                Err(e) => Err(ConfigError::Env {
                    var: "QNET_CONFIG".to_owned(),
                    message: format!("{}: {e}", path.display()),
                }),
            };
        }
        for path in searched(get, system_config) {
            if let Some(file) = read_optional(&path)? {
                return Ok(Some((path, file)));
            }
        }
        Ok(None)
    }

    /// The file [`Config::load_from`] reads for `explicit`; `None` when it reads none and
    /// starts from the defaults (for `qnet check` to name it).
    pub fn source(explicit: Option<&Path>) -> Option<PathBuf> {
        let get = process_env;
        if let Some(p) = explicit {
            return Some(p.to_path_buf());
        }
        if let Some(named) = non_empty(&get, "QNET_CONFIG") {
            return Some(PathBuf::from(named));
        }
        let system = Path::new(SYSTEM_CONFIG_PATH);
        // As `read_optional`: only a file that is not there is passed over.
        searched(&get, system).into_iter().find(|p| {
            fs::metadata(p).map_or_else(|e| e.kind() != io::ErrorKind::NotFound, |_| true)
        })
    }

    /// [`Config::load_from`] with the environment and system file injected, for tests.
    pub(crate) fn load_with(
        explicit: Option<&Path>,
        get: impl Fn(&str) -> Option<String>,
        system_config: &Path,
    ) -> Result<Config, ConfigError> {
        let mut config = match explicit {
            Some(path) => Config::from_path(path)?,
            None => match Config::locate_and_read(&get, system_config)? {
                Some((path, file)) => Config::from_file_text(&file, &path)?,
                None => Config::default(),
            },
        };
        config.apply_env(get)?;
        Ok(config)
    }
}

/// The files searched without `QNET_CONFIG`, in order: the user's, then the system's.
fn searched(get: &impl Fn(&str) -> Option<String>, system_config: &Path) -> Vec<PathBuf> {
    let user = non_empty(get, "HOME").map(|home| Path::new(&home).join(".config/qnet/qnet.toml"));
    user.into_iter()
        .chain([system_config.to_path_buf()])
        .collect()
}

fn read_optional(path: &Path) -> Result<Option<FileText>, ConfigError> {
    match read_file(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn non_empty(get: &impl Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    get(var).filter(|v| !v.is_empty())
}

/// The process environment, non-UTF-8 values passed on lossily so they fail validation
/// visibly instead of being ignored.
pub(super) fn process_env(var: &str) -> Option<String> {
    std::env::var_os(var).map(|v| v.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use super::super::LogLevel;
    use super::super::testutil::{KEY_B64, OTHER_KEY_B64, TempDir, env, parse};
    use super::*;

    /// The file the search finds with only `HOME` set.
    fn located(home: &str, system: &Path) -> Option<PathBuf> {
        let found = Config::locate_and_read(&env(&[("HOME", home)]), system).unwrap();
        found.map(|(path, _)| path)
    }

    #[test]
    fn env_overrides() {
        let mut c = parse(&format!(
            "relay = \"a.example:1\"\nrelay_key = \"{KEY_B64}\"\nlog = \"info\""
        ))
        .unwrap();
        c.apply_env(env(&[
            ("QNET_RELAY", "[::1]:9"),
            ("QNET_RELAY_KEY", OTHER_KEY_B64),
            ("QNET_KEY", "relative/client.key"),
            ("QNET_LOG", "trace"),
        ]))
        .unwrap();
        assert_eq!(c.relays.len(), 1);
        assert_eq!(c.relays[0].address, "[::1]:9");
        assert_eq!(c.relays[0].key, OTHER_KEY_B64.parse().unwrap());
        assert_eq!(c.key, Some(PathBuf::from("relative/client.key")));
        assert_eq!(c.log, LogLevel::Trace);

        // Empty means unset.
        let before = c.clone();
        c.apply_env(env(&[("QNET_RELAY", ""), ("QNET_LOG", "")]))
            .unwrap();
        assert_eq!(c, before);
    }

    #[test]
    fn qnet_seccomp_switches_the_filter() {
        let mut c = Config::default();
        c.apply_env(env(&[("QNET_SECCOMP", "0")])).unwrap();
        assert!(!c.intercept.seccomp);
        c.apply_env(env(&[("QNET_SECCOMP", "1")])).unwrap();
        assert!(c.intercept.seccomp);
    }

    #[test]
    fn env_errors_name_the_variable() {
        for (var, value, expect) in [
            (
                "QNET_RELAY",
                "nope",
                "environment variable QNET_RELAY: must be host:port",
            ),
            (
                "QNET_RELAY_KEY",
                "xx",
                "environment variable QNET_RELAY_KEY: invalid key",
            ),
            (
                "QNET_LOG",
                "chatty",
                "environment variable QNET_LOG: unknown log level",
            ),
            (
                "QNET_KEY",
                "  ",
                "environment variable QNET_KEY: must not be empty",
            ),
            (
                "QNET_SECCOMP",
                "no",
                "environment variable QNET_SECCOMP: expected 0 or 1",
            ),
        ] {
            let mut c = Config::default();
            let msg = c.apply_env(env(&[(var, value)])).unwrap_err().to_string();
            assert!(msg.starts_with(expect), "{msg}");
            assert!(!msg.contains('\n'));
        }
    }

    #[test]
    fn from_path_rebases_relative_paths() {
        let dir = TempDir::new("rebase");
        let path = dir.write(
            "etc/qnet.toml",
            "key = \"client.key\"\n[server]\nkey = \"/abs/relay.key\"\nclients = \"sub/clients\"\n",
        );
        let c = Config::from_path(&path).unwrap();
        assert_eq!(c.key, Some(dir.0.join("etc/client.key")));
        assert_eq!(c.server.key, Some(PathBuf::from("/abs/relay.key")));
        assert_eq!(c.server.clients, Some(dir.0.join("etc/sub/clients")));

        let bad = dir.write("bad.toml", "log = 3\n");
        let msg = Config::from_path(&bad).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!(
                "config {}: log: expected a string, got integer",
                bad.display()
            )
        );
        let missing = Config::from_path(&dir.0.join("missing.toml")).unwrap_err();
        assert!(matches!(missing, ConfigError::Io { .. }));
    }

    #[test]
    fn search_order() {
        let dir = TempDir::new("search");
        let system = dir.0.join("etc/qnet/qnet.toml");
        let home = dir.0.join("home");
        let home_s = home.to_str().unwrap().to_owned();

        // Nothing anywhere: defaults, plus env.
        let c = Config::load_with(
            None,
            env(&[("HOME", &home_s), ("QNET_LOG", "info")]),
            &system,
        )
        .unwrap();
        assert_eq!(c.log, LogLevel::Info);
        assert_eq!(located(&home_s, &system), None);

        dir.write("etc/qnet/qnet.toml", "log = \"error\"\n");
        let c = Config::load_with(None, env(&[("HOME", &home_s)]), &system).unwrap();
        assert_eq!(c.log, LogLevel::Error);
        // No HOME at all still reaches the system file.
        let c = Config::load_with(None, env(&[]), &system).unwrap();
        assert_eq!(c.log, LogLevel::Error);

        let user = dir.write("home/.config/qnet/qnet.toml", "log = \"debug\"\n");
        let c = Config::load_with(None, env(&[("HOME", &home_s)]), &system).unwrap();
        assert_eq!(c.log, LogLevel::Debug);
        assert_eq!(located(&home_s, &system), Some(user));

        let named = dir.write("named.toml", "log = \"off\"\n");
        let named_s = named.to_str().unwrap();
        let c = Config::load_with(
            None,
            env(&[("HOME", &home_s), ("QNET_CONFIG", named_s)]),
            &system,
        )
        .unwrap();
        assert_eq!(c.log, LogLevel::Off);

        // Env overrides the file.
        let c = Config::load_with(
            None,
            env(&[
                ("HOME", &home_s),
                ("QNET_CONFIG", named_s),
                ("QNET_LOG", "warn"),
            ]),
            &system,
        )
        .unwrap();
        assert_eq!(c.log, LogLevel::Warn);

        // An explicit --config path beats QNET_CONFIG.
        let explicit = dir.write("explicit.toml", "log = \"trace\"\n");
        let c =
            Config::load_with(Some(&explicit), env(&[("QNET_CONFIG", named_s)]), &system).unwrap();
        assert_eq!(c.log, LogLevel::Trace);
    }

    #[test]
    fn qnet_config_must_exist() {
        let dir = TempDir::new("missing");
        let missing = dir.0.join("nope.toml");
        let err = Config::load_with(
            None,
            env(&[("QNET_CONFIG", missing.to_str().unwrap())]),
            &dir.0.join("system.toml"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("environment variable QNET_CONFIG: "),
            "{msg}"
        );
        assert!(msg.contains("nope.toml"), "{msg}");
    }

    #[test]
    fn unreadable_found_file_is_an_error() {
        // A directory where the user file should be is not "absent".
        let dir = TempDir::new("unreadable");
        fs::create_dir_all(dir.0.join("home/.config/qnet/qnet.toml")).unwrap();
        let home = dir.0.join("home");
        let err = Config::load_with(
            None,
            env(&[("HOME", home.to_str().unwrap())]),
            &dir.0.join("system.toml"),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
    }

    /// Issue 12: a config file anyone could write (it names the relay, its key and the
    /// allow-list) or read (it can hold a SOCKS password) was read without a look at its
    /// owner or mode.
    #[test]
    fn config_file_others_may_write_or_read_credentials_from_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = TempDir::new("perm");
        let load = |name: &str, text: &str, mode: u32| {
            let path = dir.write(name, text);
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            (
                Config::from_path(&path)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                path,
            )
        };
        let plain = "relay = \"r.example:7000\"\n";
        let creds = "[server]\nupstream = \"socks5://u:secret@127.0.0.1:9050\"\n";
        let no_creds = "[server]\nupstream = \"socks5://127.0.0.1:9050\"\n";
        assert_eq!(load("a.toml", plain, 0o644).0, Ok(()));
        assert_eq!(load("b.toml", creds, 0o600).0, Ok(()));
        assert_eq!(load("c.toml", no_creds, 0o644).0, Ok(()));
        let (got, p) = load("d.toml", plain, 0o664);
        assert_eq!(
            got,
            Err(format!(
                "config file {p} is writable by group/other (mode 0664); run: chmod go-w {p}",
                p = p.display()
            ))
        );
        let (got, p) = load("e.toml", creds, 0o640);
        assert_eq!(
            got,
            Err(format!(
                "config file with SOCKS credentials {p} is accessible by group/other (mode 0640); run: chmod 600 {p}",
                p = p.display()
            ))
        );
        let client_creds = "upstream = \"socks5://u:p@127.0.0.1:9050\"\n";
        assert!(load("f.toml", client_creds, 0o604).0.is_err());
        // Found by the search, not only named: the same check.
        let system = dir.write("etc/qnet.toml", plain);
        fs::set_permissions(&system, fs::Permissions::from_mode(0o666)).unwrap();
        let err = Config::load_with(None, env(&[]), &system).unwrap_err();
        assert!(matches!(err, ConfigError::Permissions(_)), "{err:?}");
        if crate::os::euid() == 0 {
            let (_, p) = load("g.toml", plain, 0o644);
            std::os::unix::fs::chown(&p, Some(12345), None).unwrap();
            let e = Config::from_path(&p).unwrap_err().to_string();
            assert!(
                e.contains("is owned by uid 12345, not by this user (uid 0) or root"),
                "{e}"
            );
        }
    }

    #[test]
    fn errors_from_file_carry_their_path() {
        let dir = TempDir::new("errpath");
        let system = dir.write("system.toml", "[session]\nstream_window = 10\n");
        let msg = Config::load_with(None, env(&[]), &system)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            format!(
                "config {}: session.stream_window: must be at least 16384 (got 10)",
                system.display()
            )
        );
    }
}
