//! The qnet runtime directory, `$XDG_RUNTIME_DIR/qnet/`: where this user's qnet
//! processes leave small files for each other (the shared path health, each process's
//! status). One rule for finding it, creating it (mode 0700) and using its files (read
//! only if this user or root owns them and no one else may write them; replaced whole
//! by rename, created 0600), so every file in it is handled the same way.
//!
//! Why this directory: it is the user's own (systemd makes it 0700) and on tmpfs, so
//! nothing in it outlives a reboot and no other user can read it.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::fileperm::{self, Holds};

/// The qnet directory under `runtime_dir` (normally `$XDG_RUNTIME_DIR`).
pub(crate) fn in_runtime(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("qnet")
}

/// The qnet directory of this user: `$XDG_RUNTIME_DIR/qnet`, or `None` when
/// `XDG_RUNTIME_DIR` is unset or empty (then nothing is shared or published).
pub fn qnet_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| in_runtime(Path::new(&d)))
}

/// Create `dir` (mode 0700) if needed and check that it is this user's (or root's) and
/// writable by no one else.
pub(crate) fn ensure(dir: &Path) -> std::io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    fileperm::check(&meta, dir, "qnet runtime directory", Holds::Access)
        .map_err(std::io::Error::other)
}

/// Read `file` (at most `limit` bytes) only if it is a regular file that this user (or
/// root) owns and no one else may write: the one check of files in this directory.
/// `what` names it in the error.
pub(crate) fn read_own(file: &Path, what: &'static str, limit: u64) -> std::io::Result<String> {
    // Non-blocking: a FIFO put there must not hold the reader in open(). No symlinks.
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(file)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a file"));
    }
    fileperm::check(&meta, file, what, Holds::Access).map_err(std::io::Error::other)?;
    let mut text = String::new();
    f.take(limit).read_to_string(&mut text)?;
    Ok(text)
}

/// Replace `file` whole with `bytes`: written to a new file of a random name beside it
/// (created exclusively, mode 0600, so no link planted there is followed), then renamed
/// over it, so a reader sees the old or the new content, never half of one. The
/// directory is created (0700) and checked first.
pub(crate) fn replace(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = file
        .parent()
        .ok_or_else(|| std::io::Error::other("no directory"))?;
    ensure(dir)?;
    let mut nonce = [0u8; 8];
    crate::entropy::fill(&mut nonce).map_err(std::io::Error::other)?;
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}-{:016x}", u64::from_le_bytes(nonce)));
    let r = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| fs::rename(&tmp, file));
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}
