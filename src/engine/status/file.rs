//! The status files: one writer per process, and the reader `qnet status` uses.
//!
//! A file is `status.<pid>` in the qnet runtime directory, replaced whole by rename
//! (`rundir::replace`: created 0600 and exclusively, in a 0700 directory), so a reader
//! never sees half of one. It is removed when its process ends normally (the writer's
//! `Drop`, or the preload runtime's exit handler through [`Publisher::remove_own`]); a
//! process killed leaves it, and the next reader removes it: its pid is gone, or now
//! belongs to a process that started at another time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use super::{Kind, STALE_AFTER, Snapshot, VERSION};
use crate::engine::rundir;

/// Files larger than this are not status files.
const MAX_LEN: u64 = 256 * 1024;
/// The name's prefix.
const PREFIX: &str = "status.";

/// Set by [`Publisher::remove_own`]: the process is exiting, its engine thread (which
/// the exit does not stop) must not write its file again.
static EXITING: AtomicBool = AtomicBool::new(false);

/// This process's status file and what stays the same in it.
#[derive(Debug)]
pub struct Publisher {
    file: PathBuf,
    pid: u32,
    start_time: u64,
    program: String,
    kind: Kind,
}

/// The file of process `pid` in `dir`.
pub(super) fn file_of(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("{PREFIX}{pid}"))
}

impl Publisher {
    /// The publisher of this process, as a `kind`, into `dir` (the qnet runtime
    /// directory, `rundir::qnet_dir`); `None` when this process's start time cannot be
    /// read (no /proc), since a file without it could be taken for a later process's.
    pub fn new(dir: &Path, kind: Kind) -> Option<Publisher> {
        let pid = std::process::id();
        let start_time = start_time_of("self")?;
        let program = std::fs::read_to_string("/proc/self/comm")
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_default();
        Some(Publisher {
            file: file_of(dir, pid),
            pid,
            start_time,
            program,
            kind,
        })
    }

    /// A snapshot with this process's identity filled in and everything else empty.
    pub fn blank(&self, updated_at_ms: u64) -> Snapshot {
        Snapshot {
            version: VERSION,
            pid: self.pid,
            start_time: self.start_time,
            program: self.program.clone(),
            kind: self.kind,
            updated_at_ms,
            paths: Vec::new(),
            session: None,
            streams_open: 0,
            bytes_sent: 0,
            bytes_received: 0,
            profile: String::new(),
            lateness: Default::default(),
            shaping_failures: 0,
            refusals: Default::default(),
            tor: None,
        }
    }

    /// Replace the file with `snap`. Errors are the caller's to ignore: status is
    /// advisory and must never stop a tunnel.
    pub fn write(&self, snap: &Snapshot) -> std::io::Result<()> {
        if std::process::id() != self.pid || EXITING.load(Ordering::Relaxed) {
            // A fork child's copy (the file is the parent's), or the process is exiting.
            return Ok(());
        }
        let body = serde_json::to_vec(snap).map_err(std::io::Error::other)?;
        rundir::replace(&self.file, &body)
    }

    /// This process is exiting: write no more, and remove its file in `dir`, if any. For
    /// an exit handler, which runs in whichever process exits (a fork child removes only
    /// its own). A write already past its check may still land; the next reader removes
    /// that file, since its process is gone.
    pub fn remove_own(dir: &Path) {
        EXITING.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(file_of(dir, std::process::id()));
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if std::process::id() == self.pid {
            let _ = std::fs::remove_file(&self.file);
        }
    }
}

/// A process `qnet status` lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listed {
    /// Its last snapshot.
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// Not rewritten for [`STALE_AFTER`] although the process lives: what it says may
    /// be old.
    pub stale: bool,
}

/// Every live qnet process's status in `dir`, by pid; `now_ms` is the unix time in ms.
/// Files of processes that are gone (or whose pid now names another process) are
/// removed; unreadable, foreign or malformed files are skipped.
pub fn list(dir: &Path, now_ms: u64) -> Vec<Listed> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let path = e.path();
        let Some(name) = name.to_str() else {
            continue;
        };
        if let Some(pid) = unfinished_of(name) {
            // A write its process never finished (killed between create and rename).
            if start_time_of(&pid.to_string()).is_none() && is_own_file(&path) {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        match judge(&path, pid, || start_time_of(&pid.to_string())) {
            Verdict::Live(mut snapshot) => {
                let age = now_ms.saturating_sub(snapshot.updated_at_ms);
                // The file tells times as of its writing; the reader tells them as of now.
                if let Some(session) = &mut snapshot.session {
                    session.age_ms = session.age_ms.saturating_add(age);
                }
                for p in &mut snapshot.paths {
                    p.retry_in_ms = p.retry_in_ms.map(|ms| ms.saturating_sub(age));
                }
                let stale = age > STALE_AFTER.as_millis() as u64;
                out.push(Listed {
                    snapshot: *snapshot,
                    stale,
                });
            }
            Verdict::Gone => {
                // Only files `read_own` accepted come here as gone, and a torn one cannot
                // be (rename), so this removes nothing of another user's or a live process.
                let _ = std::fs::remove_file(&path);
            }
            Verdict::Skip => {}
        }
    }
    out.sort_by_key(|l| l.snapshot.pid);
    out
}

/// The pid in the name of an unfinished write (`rundir::replace`'s `.status.<pid>-<hex>`).
pub(super) fn unfinished_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?.strip_prefix(PREFIX)?;
    let (pid, nonce) = rest.split_once('-')?;
    (nonce.len() == 16 && nonce.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| pid.parse().ok())
        .flatten()
}

/// A regular file (not a link) that this user owns.
fn is_own_file(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.uid() == crate::os::euid())
}

/// What a file is.
#[derive(Debug)]
pub(super) enum Verdict {
    /// A live process's snapshot.
    Live(Box<Snapshot>),
    /// Its process is gone: remove it.
    Gone,
    /// Not ours, not readable, not of this version, or not a snapshot.
    Skip,
}

/// Judge the file of `pid` at `path`, given how to learn the start time of the process
/// that has that pid now (`None`: no such process). The file is read first: a process
/// that took the pid and wrote its file after a look at /proc would be judged by another
/// process's start time, and its live file removed.
pub(super) fn judge(path: &Path, pid: u32, now_started: impl FnOnce() -> Option<u64>) -> Verdict {
    let Ok(text) = rundir::read_own(path, "status file", MAX_LEN) else {
        return Verdict::Skip;
    };
    let Some(started) = now_started() else {
        return Verdict::Gone;
    };
    let Ok(snap) = serde_json::from_str::<Snapshot>(&text) else {
        return Verdict::Skip;
    };
    if snap.pid != pid || snap.version != VERSION {
        return Verdict::Skip;
    }
    if snap.start_time != started {
        // The pid was reused: the process that wrote this is gone.
        return Verdict::Gone;
    }
    Verdict::Live(Box::new(snap))
}

/// The start time of process `pid` (a number, or `self`): field 22 of its stat line.
pub(super) fn start_time_of(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a `/proc/<pid>/stat` line. The name (field 2) is in parentheses and may
/// hold spaces and parentheses itself, so fields are counted after the last `)`.
pub(super) fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts with field 3 (the state).
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}
