//! A bypassed connection from inside `qnet run`'s jail: the jail has only its own
//! loopback, so a connect to an `intercept.bypass` destination (a service on the host's
//! loopback, by default) is carried out by the broker outside, and the app's socket
//! becomes the broker's, its connect already started. A destination that a server in
//! the jail listens on stays inside, as it would without the jail.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::Decision;
use crate::engine::sys;

/// Int-valued options an app may set before `connect` that still matter after it; they
/// move to the broker's socket (buffer sizes and a bound address do not).
const CARRIED_OPTIONS: [(libc::c_int, libc::c_int); 5] = [
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
];

/// What `connect(fd, addr)` does for a bypassed `addr`: the real call outside a jail or
/// towards a jailed listener, else the broker's socket in `fd`'s place.
pub(super) fn direct(fd: i32, addr: SocketAddr, timeout: Duration) -> Decision<()> {
    if !crate::jail::active() || crate::jail::listening_here(addr) {
        return Decision::Bypass;
    }
    match carry(fd, addr, timeout) {
        Ok(()) => Decision::Done(()),
        Err(e) => Decision::Refuse(e),
    }
}

fn carry(fd: i32, addr: SocketAddr, timeout: Duration) -> Result<(), i32> {
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let flags = sys::status_flags(fd).map_err(errno)?;
    let cloexec = sys::is_cloexec(fd).map_err(errno)?;
    // The address as the app gave it: an IPv6 socket to an IPv4-mapped address stays IPv6.
    let sock = crate::jail::dial(&addr.to_string()).map_err(errno)?;
    for (level, name) in CARRIED_OPTIONS {
        if let Ok(v) = sys::getsockopt_int(fd, level, name) {
            let _ = sys::setsockopt_int(sock.as_raw_fd(), level, name, v);
        }
    }
    sys::set_status_flags(sock.as_raw_fd(), flags).map_err(errno)?;
    sys::dup_onto(&sock, fd, cloexec).map_err(errno)?;
    if flags & libc::O_NONBLOCK != 0 {
        return Err(libc::EINPROGRESS);
    }
    // A signal handler that runs during the wait is the app's: its calls are hooked.
    crate::engine::bypass::paused(|| sys::wait_connected(fd, timeout)).map_err(errno)
}
