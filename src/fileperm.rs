//! The one permission check for files that grant access or hold a secret: key files,
//! the relay's allow-list, config files (which name keys and relays and can hold a
//! SOCKS password).
//!
//! A file that someone else could write could be made to admit a stranger or point the
//! tunnel elsewhere; a secret someone else could read is no longer one. Callers check
//! the metadata of the handle they read from, so the file judged is the file read.

use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// What a file holds, which decides who besides its owner may touch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// It grants access or says where to connect: only its owner (or root) may write it.
    Access,
    /// A secret as well: group and others may not read it either (nor have any bit).
    Secret,
}

/// A file that someone other than its owner or root could change, or read a secret from.
///
/// Each message is one line naming the file and the command that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PermError {
    /// Owned by a user who is neither this process's (effective) user nor root.
    #[error(
        "{what} {} is owned by uid {owner}, not by this user (uid {euid}) or root; run: chown {euid} {}",
        path.display(),
        path.display()
    )]
    Owner {
        /// What the file is, e.g. "allow-list".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },
    /// Group or others may write a file that grants access.
    #[error(
        "{what} {} is writable by group/other (mode {mode:04o}); run: chmod go-w {}",
        path.display(),
        path.display()
    )]
    Writable {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },
    /// Group or others have any access to a file holding a secret.
    #[error(
        "{what} {} is accessible by group/other (mode {mode:04o}); run: chmod 600 {}",
        path.display(),
        path.display()
    )]
    Exposed {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },
}

/// Checks an opened file's metadata: owned by this user or root, writable by no one
/// else, and for a secret not accessible by anyone else at all. `what` names the file's
/// role in the error ("key file", "allow-list", "config file").
pub fn check(
    meta: &Metadata,
    path: &Path,
    what: &'static str,
    holds: Holds,
) -> Result<(), PermError> {
    let (owner, euid) = (meta.uid(), crate::os::euid());
    let root_alias = if owner != euid && owner != 0 {
        unmapped_root_uid()
    } else {
        None
    };
    check_mode(
        meta.mode() & 0o7777,
        owner,
        euid,
        root_alias,
        path,
        what,
        holds,
    )
}

/// The uid root's files show as here when this user namespace does not map root (as
/// `qnet run`'s jail for an unprivileged user maps only that user): the kernel's
/// overflow uid. A file that uid owns may be root's, and nothing here can tell.
fn unmapped_root_uid() -> Option<u32> {
    let uid_map = fs::read_to_string("/proc/self/uid_map").ok()?;
    if maps_root(&uid_map) {
        return None;
    }
    let overflow = fs::read_to_string("/proc/sys/kernel/overflowuid").ok();
    overflow.and_then(|s| s.trim().parse().ok()).or(Some(65534))
}

/// Whether a `uid_map` (lines of inside, outside, count) maps its parent's root.
fn maps_root(uid_map: &str) -> bool {
    uid_map.lines().any(|line| {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        matches!(f[..], [_, 0, count] if count > 0)
    })
}

/// [`check`] on plain numbers, for tests that cannot chown.
fn check_mode(
    mode: u32,
    owner: u32,
    euid: u32,
    root_alias: Option<u32>,
    path: &Path,
    what: &'static str,
    holds: Holds,
) -> Result<(), PermError> {
    if owner != euid && owner != 0 && Some(owner) != root_alias {
        return Err(PermError::Owner {
            what,
            path: path.to_path_buf(),
            owner,
            euid,
        });
    }
    let path = path.to_path_buf();
    match holds {
        Holds::Access if mode & 0o022 != 0 => Err(PermError::Writable { what, path, mode }),
        Holds::Secret if mode & 0o077 != 0 => Err(PermError::Exposed { what, path, mode }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn modes_and_owners_table() {
        let p = Path::new("/etc/qnet/f");
        let me = 1000;
        for (mode, owner, holds, want) in [
            (0o600, me, Holds::Secret, None),
            (0o400, me, Holds::Secret, None),
            (0o600, 0, Holds::Secret, None),
            (0o644, me, Holds::Access, None),
            (0o755, 0, Holds::Access, None),
            (
                0o640,
                me,
                Holds::Secret,
                Some("accessible by group/other (mode 0640); run: chmod 600 /etc/qnet/f"),
            ),
            (0o601, me, Holds::Secret, Some("(mode 0601)")),
            (0o610, me, Holds::Secret, Some("(mode 0610)")),
            (
                0o664,
                me,
                Holds::Access,
                Some("writable by group/other (mode 0664); run: chmod go-w /etc/qnet/f"),
            ),
            (0o646, me, Holds::Access, Some("(mode 0646)")),
            (
                0o600,
                1001,
                Holds::Secret,
                Some(
                    "owned by uid 1001, not by this user (uid 1000) or root; run: chown 1000 /etc/qnet/f",
                ),
            ),
            (0o644, 1001, Holds::Access, Some("owned by uid 1001")),
        ] {
            let got = check_mode(mode, owner, me, None, p, "thing", holds)
                .err()
                .map(|e| e.to_string());
            match (&got, want) {
                (None, None) => {}
                (Some(msg), Some(needle)) => {
                    assert!(msg.starts_with("thing /etc/qnet/f "), "{msg}");
                    assert!(msg.contains(needle), "{mode:o} {owner}: {msg}");
                    assert!(!msg.contains('\n'));
                }
                _ => panic!("{mode:o} owner {owner} {holds:?}: got {got:?}, want {want:?}"),
            }
        }
        // Run as root, a file some user owns is refused too: that user could change it.
        assert!(check_mode(0o644, me, 0, None, p, "thing", Holds::Access).is_err());
    }

    /// In a user namespace that maps only this user (`qnet run`'s jail when unprivileged),
    /// root's files, `/etc/qnet/qnet.toml` among them, show as owned by the overflow uid
    /// and were refused there.
    #[test]
    fn root_files_seen_from_a_namespace_without_root_are_accepted() {
        let p = Path::new("/etc/qnet/qnet.toml");
        let alias = Some(65534);
        assert_eq!(
            check_mode(0o644, 65534, 1000, alias, p, "config file", Holds::Access),
            Ok(())
        );
        assert!(check_mode(0o664, 65534, 1000, alias, p, "config file", Holds::Access).is_err());
        assert!(check_mode(0o644, 1001, 1000, alias, p, "config file", Holds::Access).is_err());
        assert!(check_mode(0o644, 65534, 1000, None, p, "config file", Holds::Access).is_err());
        assert!(maps_root("         0          0 4294967295\n"));
        assert!(maps_root("1000 1000 1\n0 0 1\n"));
        assert!(!maps_root("      1000       1000          1\n"));
        assert!(
            !maps_root("0 1000 1\n"),
            "root inside, but someone else outside"
        );
        assert!(!maps_root(""));
    }

    #[test]
    fn checks_real_files() {
        let dir = std::env::temp_dir().join(format!("qnet-fileperm-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        fs::write(&f, "x").unwrap();
        let check_as = |mode: u32, holds| {
            fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
            let meta = fs::File::open(&f).unwrap().metadata().unwrap();
            check(&meta, &f, "file", holds)
        };
        assert_eq!(check_as(0o600, Holds::Secret), Ok(()));
        assert_eq!(check_as(0o644, Holds::Access), Ok(()));
        assert!(matches!(
            check_as(0o644, Holds::Secret),
            Err(PermError::Exposed { .. })
        ));
        assert!(matches!(
            check_as(0o666, Holds::Access),
            Err(PermError::Writable { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
