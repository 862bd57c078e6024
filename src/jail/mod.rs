//! The network jail of `qnet run`: the program runs in a network namespace with only a
//! loopback, so whatever gets around the hooks (io_uring, raw syscalls, a libc reached
//! through `dlopen`, static or Go children, a cleared environment) reaches nothing. The
//! `qnet run` parent stays outside and is the jail's one door, the broker: the library
//! inside asks it to dial the relay (or the upstream proxy) and the `intercept.bypass`
//! destinations the policy sends directly, and it hands back the socket, its connect
//! already started, with SCM_RIGHTS. It dials nothing else.
//!
//! The broker listens on an abstract unix name in the jail's own network namespace
//! (abstract names are per namespace), so every process in the jail finds it whatever
//! it did to its environment or fds, and no process outside can reach it.
//!
//! One request per connection: `[VERSION, DIAL]` then the target, UTF-8 (the config's
//! `host:port` of the first hop, or a socket address); the reply is `[VERSION]` and an
//! errno (i32 little-endian, 0 for success) with the socket attached on success.

mod broker;
mod listeners;
pub mod run;
mod sys;

use std::io;
use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::time::Duration;

pub(crate) use listeners::listening_here;

/// The broker's abstract unix name inside a jail.
const BROKER_NAME: &[u8] = b"qnet-jail-broker-v1";
const VERSION: u8 = 1;
const DIAL: u8 = 1;
/// A request longer than this is malformed (a `host:port` is at most ~260 bytes).
const MAX_REQUEST: usize = 512;
/// How long the library waits for the broker's answer (it resolves the relay's name).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether this process runs inside a `qnet run` jail whose broker answers: asked once,
/// on first use. The broker must belong to this user (or root), so another user's
/// listener on the same name cannot pose as it.
pub(crate) fn active() -> bool {
    static ACTIVE: OnceLock<bool> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let Ok(s) = sys::seqpacket() else {
            return false;
        };
        sys::connect_abstract(&s, BROKER_NAME).is_ok()
            && sys::peer_uid(&s).is_ok_and(|u| u == sys::getuid() || u == 0)
    })
}

/// Ask the broker for a TCP socket to `target` (the first hop's `host:port` as the
/// config names it, or a bypassed socket address), its non-blocking connect started.
/// The broker's refusal comes back as its errno.
pub(crate) fn dial(target: &str) -> io::Result<OwnedFd> {
    let s = sys::seqpacket()?;
    sys::connect_abstract(&s, BROKER_NAME)
        .map_err(|e| io::Error::new(e.kind(), format!("the jail's broker is gone ({e})")))?;
    sys::set_recv_timeout(&s, ANSWER_TIMEOUT)?;
    let mut req = Vec::with_capacity(2 + target.len());
    req.extend_from_slice(&[VERSION, DIAL]);
    req.extend_from_slice(target.as_bytes());
    sys::send_msg(&s, &req, None)?;
    let mut reply = [0u8; 5];
    let (n, fd) = sys::recv_msg(&s, &mut reply)?;
    match (n, reply[0], fd) {
        (5, VERSION, fd) => {
            let errno = i32::from_le_bytes([reply[1], reply[2], reply[3], reply[4]]);
            match (errno, fd) {
                (0, Some(fd)) => Ok(fd),
                (0, None) => Err(io::Error::other("the jail's broker sent no socket")),
                (e, _) => Err(io::Error::from_raw_os_error(e)),
            }
        }
        (0, ..) => Err(io::Error::other(
            "the jail's broker closed without an answer",
        )),
        _ => Err(io::Error::other(
            "a malformed answer from the jail's broker",
        )),
    }
}
