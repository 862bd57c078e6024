//! What a tunneled fd answers where a unix socket and a TCP socket would differ: its
//! names, its options, and `close` (which also keeps the app off the engine's own fds).
//! The app must not be able to tell it is not talking TCP to its destination.

use std::net::SocketAddr;

use super::Decision;
use super::published::local_ip;
use crate::engine::bypass::{BypassGuard, bypassed};
use crate::engine::fdtab::{self, Kind};
use crate::engine::sys;

/// `getpeername`: the original destination for a tunneled fd.
pub(crate) fn peer_of(fd: i32) -> Decision<SocketAddr> {
    if fdtab::kind(fd) != Kind::Tunneled {
        return Decision::Bypass;
    }
    match fdtab::with_info(fd, |i| (i.peer, i.state.get())) {
        Some((p, Some(0))) => Decision::Done(p),
        Some(_) => Decision::Refuse(libc::ENOTCONN),
        None => Decision::Bypass,
    }
}

/// `getsockname`: a local address and port, as a connected TCP socket has.
pub(crate) fn local_of(fd: i32) -> Decision<SocketAddr> {
    if fdtab::kind(fd) != Kind::Tunneled {
        return Decision::Bypass;
    }
    match fdtab::with_info(fd, |i| i.local) {
        // The relay connection may have come up after the connect began: fill the address in now.
        Some(a) => Decision::Done(SocketAddr::new(local_ip(a.is_ipv4()), a.port())),
        None => Decision::Bypass,
    }
}

/// `getsockopt`: answers a TCP socket would give, for the options a unix socket lacks.
pub(crate) fn sockopt_get(fd: i32, level: i32, name: i32) -> Decision<Vec<u8>> {
    if fdtab::kind(fd) != Kind::Tunneled {
        return Decision::Bypass;
    }
    let int = |v: i32| Decision::Done(v.to_ne_bytes().to_vec());
    let Some((peer, state, first, stored)) = fdtab::with_info(fd, |i| {
        let first = !i.reported;
        if level == libc::SOL_SOCKET && name == libc::SO_ERROR && i.state.get().is_some() {
            i.reported = true;
        }
        (
            i.peer,
            i.state.get(),
            first,
            i.options.get(&(level, name)).cloned(),
        )
    }) else {
        return Decision::Bypass;
    };
    match (level, name) {
        (libc::SOL_SOCKET, libc::SO_ERROR) => match state {
            Some(e) if e != 0 && first => int(e),
            // Connected: the socket's own pending error, which after a reset (see
            // `Sock::reset_on_close`) is ECONNRESET once, as a TCP socket's after an RST.
            Some(0) => Decision::Bypass,
            _ => int(0),
        },
        (libc::SOL_SOCKET, libc::SO_DOMAIN) => int(if peer.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        }),
        (libc::SOL_SOCKET, libc::SO_PROTOCOL) => int(libc::IPPROTO_TCP),
        (libc::SOL_SOCKET, libc::SO_TYPE) => int(libc::SOCK_STREAM),
        (libc::SOL_SOCKET, _) => Decision::Bypass,
        (libc::IPPROTO_TCP, libc::TCP_MAXSEG) if stored.is_none() => int(1448),
        (libc::IPPROTO_TCP, libc::TCP_INFO) => {
            // What the app's side knows: established, no retransmissions, no RTT sample.
            let mut info = vec![0u8; size_of::<libc::tcp_info>()];
            info[0] = 1; // TCP_ESTABLISHED in linux/tcp.h
            Decision::Done(info)
        }
        _ => match stored {
            Some(v) => Decision::Done(v),
            None => int(0),
        },
    }
}

/// `setsockopt`: socket-level options go to the real socket; TCP and IP options are
/// remembered and answered back, since the relay's TCP connection is where they would act.
pub(crate) fn sockopt_set(fd: i32, level: i32, name: i32, value: &[u8]) -> Decision<()> {
    if fdtab::kind(fd) != Kind::Tunneled || level == libc::SOL_SOCKET {
        return Decision::Bypass;
    }
    fdtab::with_info(fd, |i| i.options.insert((level, name), value.to_vec()));
    Decision::Done(())
}

/// A send on tunneled `fd` (made with `MSG_NOSIGNAL`) failed with EPIPE: what to report
/// instead. After the engine reset the flow (`Sock::reset_on_close`) the unix socket
/// holds ECONNRESET as its pending error but answers sends with EPIPE, where TCP after
/// an RST answers the first call, read or send, with ECONNRESET (without SIGPIPE) and
/// only later ones with EPIPE. So: the pending error if there is one (taking it, as TCP
/// does), else EPIPE, which is due its SIGPIPE.
pub(crate) fn send_broken(fd: i32) -> i32 {
    let _g = BypassGuard::enter();
    match sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR) {
        Ok(e) if e != 0 => e,
        _ => libc::EPIPE,
    }
}

/// `close`: engine fds are not the app's to close; tunneled fds are forgotten.
pub(crate) fn close(fd: i32) -> Decision<()> {
    match fdtab::kind(fd) {
        Kind::None => Decision::Bypass,
        Kind::Internal if !bypassed() => Decision::Done(()),
        _ => {
            fdtab::forget(fd);
            Decision::Bypass
        }
    }
}
