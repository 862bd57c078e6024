//! `qnet run`'s jail: start the program in new namespaces, keep its door (the broker)
//! open from outside, pass signals on, and end as it ends.

use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;

use super::broker::{Policy, serve};
use super::{BROKER_NAME, sys};
use crate::config::Config;

/// Why the program did not run in a jail.
#[derive(Debug)]
pub enum Failure {
    /// The kernel refused the namespaces (no user namespaces for this account, or no
    /// privilege for a network namespace). Nothing ran: the caller may go on without.
    NoJail(io::Error),
    /// The program could not be started (not found, not executable …).
    Spawn(io::Error),
    /// The jail could not be set up after the namespaces were made.
    Setup(io::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoJail(e) => write!(f, "the kernel refused a network namespace ({e})"),
            Failure::Spawn(e) => write!(f, "{e}"),
            Failure::Setup(e) => write!(f, "setting up the jail: {e}"),
        }
    }
}

/// Marks in the child's first message to the parent: the namespaces failed (and the
/// errno follows), or here is the broker's listener.
const NO_NAMESPACE: u8 = b'N';
const LISTENER: u8 = b'L';

/// Run `cmd` in a network jail with `cfg`'s policy at its door; return only if it could
/// not (the program then did not run). When it ran, this process exits as it did.
pub fn run(mut cmd: Command, cfg: Option<&Config>) -> Result<std::convert::Infallible, Failure> {
    let (ours, theirs) = sys::seqpacket_pair().map_err(Failure::Setup)?;
    let (uid, gid) = sys::effective_ids();
    let maps = (format!("{uid} {uid} 1"), format!("{gid} {gid} 1"));
    // The forked child's steps before exec: this process has one thread here (the broker
    // starts after the spawn), as `before_exec` requires.
    sys::before_exec(&mut cmd, move || {
        sys::unblock_all_signals()?;
        if let Err(e) = sys::enter_namespaces(&maps) {
            let mut msg = [NO_NAMESPACE, 0, 0, 0, 0];
            msg[1..].copy_from_slice(&e.raw_os_error().unwrap_or(0).to_le_bytes());
            let _ = sys::send_msg(&theirs, &msg, None);
            return Err(e);
        }
        let l = sys::listen_abstract(BROKER_NAME)?;
        sys::send_msg(&theirs, &[LISTENER], Some(l.as_raw_fd()))
    });
    // Blocked before the fork, so no signal meant for the program is lost in between;
    // the child unblocks them in the closure above.
    sys::block_forwarded().map_err(Failure::Setup)?;
    let spawned = cmd.spawn();
    drop(cmd); // our copy of the child's end: the next receive must not wait on it
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = sys::unblock_all_signals();
            let mut msg = [0u8; 5];
            return Err(match sys::recv_msg(&ours, &mut msg) {
                Ok((5, None)) if msg[0] == NO_NAMESPACE => Failure::NoJail(e),
                _ => Failure::Spawn(e),
            });
        }
    };
    let mut msg = [0u8; 1];
    let listener = match sys::recv_msg(&ours, &mut msg) {
        Ok((1, Some(l))) if msg[0] == LISTENER => l,
        other => {
            // Unreachable unless the kernel misbehaves; the child must not run doorless.
            sys::kill(child.id(), libc::SIGKILL);
            let _ = child.wait();
            let e = other
                .err()
                .unwrap_or_else(|| io::Error::other("no listener"));
            return Err(Failure::Setup(e));
        }
    };
    serve(listener, Policy::new(cfg)).map_err(|e| {
        sys::kill(child.id(), libc::SIGKILL);
        let _ = child.wait();
        Failure::Setup(e)
    })?;
    loop {
        match sys::wait_signal() {
            Ok((libc::SIGCHLD, _)) => {
                if let Ok(Some(status)) = child.try_wait() {
                    sys::exit_like(status);
                }
            }
            Ok((sig, true)) => sys::kill(child.id(), sig),
            // A terminal's signal reached the program's process group already.
            Ok((_, false)) | Err(_) => {}
        }
    }
}

/// Whether this host lets this user make the jail: a forked child enters the namespaces
/// `qnet run` makes (the same steps) and exits, and they end with it (`qnet check`).
pub fn probe() -> io::Result<()> {
    let (uid, gid) = sys::effective_ids();
    let maps = (format!("{uid} {uid} 1"), format!("{gid} {gid} 1"));
    let code = crate::os::in_child(|| match sys::enter_namespaces(&maps) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(libc::EIO).clamp(1, 255),
    })?;
    match code {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}
