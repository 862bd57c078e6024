//! App sockets handed to the loop by the preload library, and how each connect's outcome
//! gets back to the app.

use std::io::{self, Read as _};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use mio::Interest;

use super::{Client, Pending, WAKE};
use crate::engine::fdtab::{self, ConnState};
use crate::engine::pump::Sock;
use crate::proto::Destination;

/// An app socket handed over by the preload library's `connect` hook.
pub(crate) struct Attach {
    /// The engine's end of the socketpair whose other end is now the app's fd.
    pub(crate) sock: mio::net::UnixStream,
    /// Where the stream goes.
    pub(crate) dest: Destination,
    /// How to report the outcome.
    pub(crate) app: AppConn,
}

/// How the outcome of an app's connect gets back to it.
///
/// A non-blocking connect must not look writable before the relay has answered, so the
/// hook fills the app end's (shrunk) send buffer with `filler` bytes. On success the
/// engine discards them, which makes the app's fd writable (an epoll edge, as for a TCP
/// connect), and puts the buffer size back through `restore`.
pub(crate) struct AppConn {
    /// Bytes of filler queued ahead of the app's data.
    pub(crate) filler: usize,
    /// A duplicate of the app's end and its original `SO_SNDBUF` (as `setsockopt` takes it).
    pub(crate) restore: Option<(OwnedFd, i32)>,
    /// The outcome, read by the app's `getsockopt(SO_ERROR)` and `connect` hooks.
    pub(crate) state: Arc<ConnState>,
    /// A blocking connect waits here.
    pub(crate) reply: Option<crossbeam::channel::Sender<Result<(), Failure>>>,
    /// The flow's counters, shared with the app's fd record.
    pub(crate) counters: Arc<fdtab::FlowCounters>,
}

impl AppConn {
    pub(super) fn finish(mut self, result: Result<(), Failure>) {
        // The outcome first: growing the send buffer back already wakes the app, which
        // then asks SO_ERROR and getpeername at once.
        self.state.set(result.err().map_or(0, Failure::errno));
        if result.is_ok() {
            if let Some((fd, size)) = self.restore.take() {
                let _ = crate::engine::sys::setsockopt_int(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    size,
                );
            }
        }
        if let Some(r) = self.reply.take() {
            let _ = r.send(result);
        }
    }
}

/// Why an app's connect failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Locally, or the session failed: this errno.
    Errno(i32),
    /// The relay answered OPEN with this reason.
    Open(crate::proto::OpenError),
}

impl Failure {
    /// The errno a local `connect` reports for it.
    pub fn errno(self) -> i32 {
        match self {
            Failure::Errno(e) => e,
            Failure::Open(e) => e.errno(),
        }
    }
}

/// What app threads ask of the loop (the preload runtime's channel).
pub(crate) enum Command {
    /// Carry this app socket.
    Attach(Attach),
    /// An app's `dup2` is about to replace this engine fd: move off that number (see
    /// [`Client::renumber`]) and answer whether it could.
    Renumber(RawFd, crossbeam::channel::Sender<bool>),
}

/// Where commands from app threads come in.
pub(super) struct Commands {
    rx: crossbeam::channel::Receiver<Command>,
    pub(super) wake: mio::unix::pipe::Receiver,
}

impl Client {
    /// Take app sockets from a channel (the preload library); the pipe wakes the loop.
    pub(crate) fn accept_commands(
        &mut self,
        rx: crossbeam::channel::Receiver<Command>,
        mut wake: mio::unix::pipe::Receiver,
    ) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut wake, WAKE, Interest::READABLE)?;
        self.commands = Some(Commands { rx, wake });
        Ok(())
    }

    /// The wake pipe fired: queue every app socket sent since, answer every renumbering.
    pub(super) fn take_commands(&mut self) {
        let Some(c) = self.commands.as_mut() else {
            return;
        };
        let mut sink = [0u8; 64];
        while matches!(c.wake.read(&mut sink), Ok(n) if n > 0) {}
        let cmds: Vec<Command> = c.rx.try_iter().collect();
        for cmd in cmds {
            let a = match cmd {
                Command::Attach(a) => a,
                Command::Renumber(fd, reply) => {
                    let moved = self.renumber(fd);
                    if moved && reply.send(true).is_err() {
                        // The app's call gave up waiting (EBUSY): nobody will replace the
                        // old number, which still holds our file open. Close it.
                        fdtab::forget(fd);
                        crate::engine::sys::close(fd);
                    } else if !moved {
                        let _ = reply.send(false);
                    }
                    continue;
                }
            };
            self.waiting
                .push_back(Pending::plain(Sock::Unix(a.sock), a.dest, Some(a.app)));
        }
    }
}

impl Client {
    /// Move whatever of the loop's own uses fd `fd` to a new number (`sys::renumber`),
    /// registered again under the same token, and mark the new number internal: an app's
    /// `dup2` onto `fd` follows. The old number stays open until that `dup2` replaces it;
    /// epoll's entry for it lasts until the file closes and reports the same token as the
    /// new one (edge-triggered: a repeated event costs a spurious pump). False when `fd`
    /// is not one of the loop's, or is the poller's own (mio cannot give it a new fd).
    pub(super) fn renumber(&mut self, fd: RawFd) -> bool {
        let r = self.poll.registry();
        let new = if self.poll.as_raw_fd() == fd {
            return false;
        } else if self.timers.as_raw_fd() == fd {
            self.timers
                .renumber(r, super::TIMER)
                .map(|_| self.timers.as_raw_fd())
        } else if let Some(c) = self.commands.as_mut().filter(|c| c.wake.as_raw_fd() == fd) {
            crate::engine::sys::renumber(&mut c.wake)
                .and_then(|_| r.register(&mut c.wake, WAKE, Interest::READABLE))
                .map(|()| c.wake.as_raw_fd())
        } else if let Some(l) = self
            .tunnels
            .iter_mut()
            .find(|l| l.link.sock.as_raw_fd() == fd)
        {
            crate::engine::sys::renumber(&mut l.link.sock)
                .and_then(|_| {
                    r.register(
                        &mut l.link.sock,
                        l.token,
                        Interest::READABLE | Interest::WRITABLE,
                    )
                })
                .map(|()| l.link.sock.as_raw_fd())
        } else if let Some(f) = self.flows.values_mut().find(|f| f.ep.sock.raw_fd() == fd) {
            let t = f.ep.token;
            f.ep.sock
                .renumber()
                .and_then(|_| f.ep.sock.register(r, t))
                .map(|()| f.ep.sock.raw_fd())
        } else if let Some(p) = self.waiting.iter_mut().find(|p| p.sock.raw_fd() == fd) {
            // Not registered yet: only the number changes.
            p.sock.renumber().map(|_| p.sock.raw_fd())
        } else if let Some(keep) = self
            .flows
            .values_mut()
            .filter_map(|f| f.app.as_mut())
            .chain(self.waiting.iter_mut().filter_map(|p| p.app.as_mut()))
            .filter_map(|a| a.restore.as_mut().map(|(k, _)| k))
            .find(|k| k.as_raw_fd() == fd)
        {
            crate::engine::sys::renumber(keep).map(|_| keep.as_raw_fd())
        } else {
            return false;
        };
        match new {
            Ok(n) => {
                self.observer.internal_fd(n);
                true
            }
            Err(_) => false,
        }
    }
}
