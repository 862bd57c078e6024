//! App sockets handed to the loop by the preload library, and how each connect's outcome
//! gets back to the app.

use std::io::{self, Read as _};
use std::os::fd::{AsRawFd, OwnedFd};
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

/// Where commands from app threads come in.
pub(super) struct Commands {
    rx: crossbeam::channel::Receiver<Attach>,
    pub(super) wake: mio::unix::pipe::Receiver,
}

impl Client {
    /// Take app sockets from a channel (the preload library); the pipe wakes the loop.
    pub(crate) fn accept_commands(
        &mut self,
        rx: crossbeam::channel::Receiver<Attach>,
        mut wake: mio::unix::pipe::Receiver,
    ) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut wake, WAKE, Interest::READABLE)?;
        self.commands = Some(Commands { rx, wake });
        Ok(())
    }

    /// The wake pipe fired: queue every app socket sent since.
    pub(super) fn take_commands(&mut self) {
        let Some(c) = self.commands.as_mut() else {
            return;
        };
        let mut sink = [0u8; 64];
        while matches!(c.wake.read(&mut sink), Ok(n) if n > 0) {}
        let cmds: Vec<Attach> = c.rx.try_iter().collect();
        for a in cmds {
            if self.refuse_while_down() {
                a.app.finish(Err(Failure::Errno(libc::ECONNREFUSED)));
                continue;
            }
            self.waiting
                .push_back(Pending::plain(Sock::Unix(a.sock), a.dest, Some(a.app)));
        }
    }
}
