//! Sockets: `socket`, `connect`, `listen`, the send family (TCP Fast Open and addressed
//! sends are connects; `write`, `writev` and `send` only for tunneled fds, whose EPIPE
//! after a reset is TCP's ECONNRESET), `recvmsg` and `recvmmsg` (fds passed in), and raw
//! `syscall`s of all of these and of `execve`/`execveat` (to the exec hooks).

use std::ffi::{c_char, c_int, c_long, c_uint, c_void};
use std::net::SocketAddr;
use std::ptr;

use libc::{msghdr, size_t, sockaddr, socklen_t, ssize_t};

use super::{decided, guarded, inet_arg, intercepting, real, refuse, socket_type};
use crate::engine::fdtab::{self, Kind};
use crate::engine::preload::{self, Decision};

/// `connect(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(real) = real!(connect: fn(c_int, *const sockaddr, socklen_t) -> c_int) else {
        return refuse(libc::ENOSYS);
    };
    if !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(fd, addr, len) };
    }
    guarded("connect", -1, || {
        // SAFETY: connect's contract: `addr` points to `len` readable bytes.
        let sa = match unsafe { inet_arg(addr, len) } {
            Ok(Some(sa)) => sa,
            // SAFETY: as above.
            Ok(None) => return unsafe { real(fd, addr, len) },
            Err(e) => return refuse(e),
        };
        // SAFETY: as above.
        decided(connect_op(fd, sa), || unsafe { real(fd, addr, len) })
    })
}

/// What `connect(fd, sa)` does: only inet stream sockets are tunneled; a datagram socket
/// the `socket` hook never saw (inherited, passed in) gets the datagram policy.
fn connect_op(fd: c_int, sa: SocketAddr) -> Decision<()> {
    if fdtab::kind(fd) == Kind::None {
        match socket_type(fd) {
            libc::SOCK_STREAM => {}
            libc::SOCK_DGRAM => return preload::unknown_datagram(fd),
            _ => return Decision::Bypass,
        }
    }
    preload::connect(fd, sa)
}

/// `socket(2)`: the socket policy (`preload::socket`, the table the seccomp filter is
/// built from): UDP sockets marked, raw and packet sockets, SCTP and unknown families refused.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int {
    let Some(real) = real!(socket: fn(c_int, c_int, c_int) -> c_int) else {
        return refuse(libc::ENOSYS);
    };
    let verdict = if intercepting() {
        guarded("socket", Decision::Refuse(libc::EIO), || {
            preload::socket(domain, ty, proto)
        })
    } else {
        Decision::Bypass
    };
    let datagram = match verdict {
        Decision::Refuse(e) => return refuse(e),
        Decision::Done(preload::NewSocket::Datagram) => true,
        Decision::Bypass => false,
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    let fd = unsafe { real(domain, ty, proto) };
    if fd >= 0 {
        // A mark left on the number by a close no hook saw is stale.
        fdtab::fresh(fd);
        if datagram {
            fdtab::mark_datagram(fd);
        }
    }
    fd
}

/// `listen(2)`: inbound connections are not tunneled, so only loopback by default.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let Some(real) = real!(listen: fn(c_int, c_int) -> c_int) else {
        return refuse(libc::ENOSYS);
    };
    if !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(fd, backlog) };
    }
    guarded("listen", -1, || {
        // SAFETY: as above.
        decided(preload::listen(local_addr(fd)), || unsafe {
            real(fd, backlog)
        })
    })
}

/// The inet address `fd` is bound to, from the real `getsockname`.
fn local_addr(fd: c_int) -> Option<SocketAddr> {
    let gsn = real!(getsockname: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int)?;
    // SAFETY: getsockname writes at most `*len` bytes at `addr` and sets `*len`.
    crate::sockaddr::fetch(|addr, len| unsafe { gsn(fd, addr, len) })
}

/// A send with a destination (TCP Fast Open or `msg_name`) on an inet stream socket is a
/// connect: route it through the `connect` operation, then send without the address.
/// `Done(flags)`: send with these flags and no address; `Bypass`: pass the call through.
fn send_with_address(
    fd: c_int,
    addr: Result<Option<SocketAddr>, c_int>,
    flags: c_int,
) -> Decision<c_int> {
    if fdtab::kind(fd) == Kind::Tunneled {
        // Already connected through the tunnel: TCP ignores the address; a unix socket would not.
        return Decision::Done(flags & !libc::MSG_FASTOPEN);
    }
    let sa = match addr {
        Ok(Some(sa)) => sa,
        Ok(None) => return Decision::Bypass,
        Err(e) => return Decision::Refuse(e),
    };
    let ty = socket_type(fd);
    if ty == libc::SOCK_DGRAM {
        // A datagram socket we never saw created (inherited, passed in): same policy.
        return match preload::unknown_datagram(fd) {
            Decision::Refuse(e) => Decision::Refuse(e),
            _ => Decision::Bypass,
        };
    }
    if flags & libc::MSG_FASTOPEN == 0 || ty != libc::SOCK_STREAM {
        return Decision::Bypass;
    }
    match preload::connect(fd, sa) {
        Decision::Done(()) => Decision::Done(flags & !libc::MSG_FASTOPEN),
        Decision::Refuse(e) => Decision::Refuse(e),
        Decision::Bypass => Decision::Bypass,
    }
}

/// The decision for a send on `fd` to the address argument `addr`/`len`.
///
/// # Safety
/// `addr` is NULL or points to `len` readable bytes.
unsafe fn send_op(
    fd: c_int,
    addr: *const sockaddr,
    len: socklen_t,
    flags: c_int,
) -> Decision<c_int> {
    if let Decision::Refuse(e) = preload::datagram_send(fd) {
        return Decision::Refuse(e);
    }
    if addr.is_null() && fdtab::kind(fd) != Kind::Tunneled {
        return Decision::Bypass;
    }
    // SAFETY: this function's contract.
    let sa = unsafe { inet_arg(addr, len) };
    send_with_address(fd, sa, flags)
}

/// A send on a tunneled fd, made with `MSG_NOSIGNAL` added; an EPIPE is answered as a
/// TCP socket would (`preload::send_broken`): ECONNRESET once after the flow was reset,
/// else EPIPE with the SIGPIPE the kernel would have sent for the caller's flags.
fn tunneled_send(fd: c_int, flags: c_int, send: impl FnOnce(c_int) -> ssize_t) -> ssize_t {
    let r = send(flags | libc::MSG_NOSIGNAL);
    if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPIPE) {
        return r;
    }
    let e = preload::send_broken(fd);
    if e == libc::EPIPE && flags & libc::MSG_NOSIGNAL == 0 {
        // SAFETY: raise has no preconditions; it signals the calling thread, as the
        // kernel's SIGPIPE for a send does.
        unsafe { libc::raise(libc::SIGPIPE) };
    }
    refuse(e)
}

/// `write(2)`: on a tunneled fd, a send (see `tunneled_send`); any other fd costs one
/// lock-free table load before the real call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    let Some(real) = real!(write: fn(c_int, *const c_void, size_t) -> ssize_t) else {
        return refuse(libc::ENOSYS);
    };
    if fdtab::is_tunneled(fd) {
        // SAFETY: the caller's arguments.
        return unsafe { write_tunneled(fd, buf, n) };
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { real(fd, buf, n) }
}

/// `write` on a tunneled fd, out of line: the hot path of every other fd stays short.
///
/// # Safety
/// `write`'s arguments.
#[cold]
#[inline(never)]
unsafe fn write_tunneled(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    let Some(send) = real!(send: fn(c_int, *const c_void, size_t, c_int) -> ssize_t) else {
        return refuse(libc::ENOSYS);
    };
    guarded("write", -1, || {
        // SAFETY: the caller's buffer; on a socket, send with no flags is write.
        tunneled_send(fd, 0, |f| unsafe { send(fd, buf, n, f) })
    })
}

/// `writev(2)`: on a tunneled fd, a `sendmsg` of the same buffers (see `tunneled_send`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const libc::iovec, count: c_int) -> ssize_t {
    let Some(real) = real!(writev: fn(c_int, *const libc::iovec, c_int) -> ssize_t) else {
        return refuse(libc::ENOSYS);
    };
    if fdtab::is_tunneled(fd) && count >= 0 {
        // SAFETY: the caller's arguments.
        return unsafe { writev_tunneled(fd, iov, count) };
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { real(fd, iov, count) }
}

/// `writev` on a tunneled fd, out of line (see `write_tunneled`).
///
/// # Safety
/// `writev`'s arguments, `count` not negative.
#[cold]
#[inline(never)]
unsafe fn writev_tunneled(fd: c_int, iov: *const libc::iovec, count: c_int) -> ssize_t {
    let Some(sendmsg) = real!(sendmsg: fn(c_int, *const msghdr, c_int) -> ssize_t) else {
        return refuse(libc::ENOSYS);
    };
    guarded("writev", -1, || {
        // SAFETY: msghdr is plain data; all-zero is valid.
        let mut m: msghdr = unsafe { std::mem::zeroed() };
        m.msg_iov = iov.cast_mut();
        m.msg_iovlen = count as usize;
        // SAFETY: the caller's iovec array of `count` buffers, only read by the kernel.
        tunneled_send(fd, 0, |f| unsafe { sendmsg(fd, &m, f) })
    })
}

/// `send(2)`: on a tunneled fd, see `tunneled_send`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t {
    let Some(real) = real!(send: fn(c_int, *const c_void, size_t, c_int) -> ssize_t) else {
        return refuse(libc::ENOSYS);
    };
    if !fdtab::is_tunneled(fd) {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(fd, buf, n, flags) };
    }
    guarded("send", -1, || {
        // SAFETY: the caller's arguments, with MSG_NOSIGNAL added.
        tunneled_send(fd, flags, |f| unsafe { real(fd, buf, n, f) })
    })
}

/// `sendto(2)`: TCP Fast Open sends data with the connect.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> ssize_t {
    let Some(real) = real!(sendto: fn(c_int, *const c_void, size_t, c_int, *const sockaddr, socklen_t) -> ssize_t)
    else {
        return refuse(libc::ENOSYS);
    };
    // The table first: it is the cheaper check, and decides alone for most sends.
    if addr.is_null() && fdtab::kind(fd) == Kind::None || !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(fd, buf, n, flags, addr, len) };
    }
    guarded("sendto", -1, || {
        // SAFETY: the caller's address buffer of `len` bytes.
        match unsafe { send_op(fd, addr, len, flags) } {
            Decision::Done(f) => tunneled_send(fd, f, |g| {
                // SAFETY: the caller's data buffer, sent on the now tunneled fd without an address.
                unsafe { real(fd, buf, n, g, ptr::null(), 0) }
            }),
            Decision::Refuse(e) => refuse(e),
            // SAFETY: as above.
            Decision::Bypass => unsafe { real(fd, buf, n, flags, addr, len) },
        }
    })
}

/// `sendmsg(2)`: `msg_name` with `MSG_FASTOPEN` is a connect too.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    let Some(real) = real!(sendmsg: fn(c_int, *const msghdr, c_int) -> ssize_t) else {
        return refuse(libc::ENOSYS);
    };
    if !intercepting() || msg.is_null() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(fd, msg, flags) };
    }
    // SAFETY: `msg` is the caller's valid msghdr.
    let (name, namelen) = unsafe {
        (
            (*msg).msg_name.cast_const().cast::<sockaddr>(),
            (*msg).msg_namelen,
        )
    };
    if name.is_null() && fdtab::kind(fd) == Kind::None {
        // SAFETY: as above.
        return unsafe { real(fd, msg, flags) };
    }
    guarded("sendmsg", -1, || {
        // SAFETY: the caller's address buffer of `namelen` bytes.
        match unsafe { send_op(fd, name, namelen, flags) } {
            Decision::Done(f) => {
                // SAFETY: a copy of the caller's msghdr without the address; the buffers it
                // points to stay the caller's.
                let mut m = unsafe { ptr::read(msg) };
                m.msg_name = ptr::null_mut();
                m.msg_namelen = 0;
                // SAFETY: as above.
                tunneled_send(fd, f, |g| unsafe { real(fd, &m, g) })
            }
            Decision::Refuse(e) => refuse(e),
            // SAFETY: as above.
            Decision::Bypass => unsafe { real(fd, msg, flags) },
        }
    })
}

/// `sendmmsg(2)`: each message as `sendmsg` would see it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmmsg(
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    count: c_uint,
    flags: c_int,
) -> c_int {
    let Some(real) = real!(sendmmsg: fn(c_int, *mut libc::mmsghdr, c_uint, c_int) -> c_int) else {
        return refuse(libc::ENOSYS);
    };
    if !intercepting() || msgs.is_null() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(fd, msgs, count, flags) };
    }
    // SAFETY: the caller's array of `count` messages.
    let any_name =
        (0..count as usize).any(|i| unsafe { !(*msgs.add(i)).msg_hdr.msg_name.is_null() });
    if !any_name && fdtab::kind(fd) == Kind::None {
        // SAFETY: as above.
        return unsafe { real(fd, msgs, count, flags) };
    }
    guarded("sendmmsg", -1, || {
        let mut sent = 0;
        for i in 0..count as usize {
            // SAFETY: element `i` of the caller's array.
            let r = unsafe { sendmsg(fd, &raw const (*msgs.add(i)).msg_hdr, flags) };
            if r < 0 {
                return if sent > 0 { sent } else { -1 };
            }
            // SAFETY: as above; sendmmsg reports each message's length here.
            unsafe { (*msgs.add(i)).msg_len = r as c_uint };
            sent += 1;
        }
        sent
    })
}

/// `recvmsg(2)`: an inet connection passed in with SCM_RIGHTS that bypasses the tunnel
/// is closed and the call fails (the fast path is untouched: only messages carrying
/// control data are looked at).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    let Some(real) = real!(recvmsg: fn(c_int, *mut msghdr, c_int) -> ssize_t) else {
        return refuse(libc::ENOSYS);
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    let r = unsafe { real(fd, msg, flags) };
    // SAFETY: `msg` is the caller's msghdr, just filled in by the kernel.
    if r < 0 || msg.is_null() || unsafe { (*msg).msg_controllen } == 0 || !intercepting() {
        return r;
    }
    guarded("recvmsg", -1, || {
        // SAFETY: the control buffer the kernel just filled.
        let refused = unsafe { passed_fds_refused(&[msg]) };
        if refused { refuse(libc::EPERM) } else { r }
    })
}

/// `recvmmsg(2)`: each received message as `recvmsg` would see it. A refused fd in any
/// of them fails the whole call (every fd of every message closed: the app must not keep
/// part of what arrived), as `recvmsg` does for one message.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    count: c_uint,
    flags: c_int,
    timeout: *mut libc::timespec,
) -> c_int {
    let Some(real) =
        real!(recvmmsg: fn(c_int, *mut libc::mmsghdr, c_uint, c_int, *mut libc::timespec) -> c_int)
    else {
        return refuse(libc::ENOSYS);
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    let r = unsafe { real(fd, msgs, count, flags, timeout) };
    if r <= 0 || msgs.is_null() || !intercepting() {
        return r;
    }
    // SAFETY: the kernel filled the first `r` messages of the caller's array.
    let has_control = |i: usize| unsafe { (*msgs.add(i)).msg_hdr.msg_controllen != 0 };
    // Without control data there is nothing to judge: no allocation, no lock.
    if !(0..r as usize).any(has_control) {
        return r;
    }
    // SAFETY: as above.
    let received: Vec<*mut msghdr> = (0..r as usize)
        .map(|i| unsafe { &raw mut (*msgs.add(i)).msg_hdr })
        .collect();
    guarded("recvmmsg", -1, || {
        // SAFETY: the control buffers the kernel just filled.
        let refused = unsafe { passed_fds_refused(&received) };
        if refused { refuse(libc::EPERM) } else { r }
    })
}

/// Judge every fd passed with SCM_RIGHTS in `msgs` (each refusal reported, not only up
/// to the first); when any is refused, close them all and answer `true`.
///
/// # Safety
/// Each of `msgs` is a msghdr whose control buffer the kernel just filled.
unsafe fn passed_fds_refused(msgs: &[*mut msghdr]) -> bool {
    let fds: Vec<c_int> = msgs
        .iter()
        // SAFETY: this function's contract (both closures).
        .filter(|&&m| unsafe { (*m).msg_controllen } != 0)
        // SAFETY: as above.
        .flat_map(|&m| unsafe { super::marshal::scm_rights_fds(m) })
        .collect();
    let refused = fds
        .iter()
        .filter(|&&f| matches!(preload::received_fd(f), Decision::Refuse(_)))
        .count()
        > 0;
    if refused {
        for f in fds {
            // SAFETY: fds this call just received, which the app has not seen.
            unsafe { super::fd::close(f) };
        }
    }
    refused
}

/// The libc wrapper a routed raw syscall stands for.
///
/// # Safety
/// The arguments are those of the raw syscall `n`, valid for its wrapper.
unsafe fn route(n: c_long, a: [c_long; 6]) -> Option<c_long> {
    // SAFETY: the raw syscall's arguments, reinterpreted as its libc wrapper's.
    unsafe {
        Some(match n {
            libc::SYS_connect => {
                connect(a[0] as c_int, a[1] as *const sockaddr, a[2] as socklen_t).into()
            }
            libc::SYS_sendto => sendto(
                a[0] as c_int,
                a[1] as *const c_void,
                a[2] as size_t,
                a[3] as c_int,
                a[4] as *const sockaddr,
                a[5] as socklen_t,
            ) as c_long,
            libc::SYS_sendmsg => {
                sendmsg(a[0] as c_int, a[1] as *const msghdr, a[2] as c_int) as c_long
            }
            libc::SYS_sendmmsg => sendmmsg(
                a[0] as c_int,
                a[1] as *mut libc::mmsghdr,
                a[2] as c_uint,
                a[3] as c_int,
            )
            .into(),
            libc::SYS_socket => socket(a[0] as c_int, a[1] as c_int, a[2] as c_int).into(),
            libc::SYS_close => super::fd::close(a[0] as c_int).into(),
            libc::SYS_close_range => {
                super::fd::close_range(a[0] as c_uint, a[1] as c_uint, a[2] as c_int).into()
            }
            libc::SYS_recvmsg => {
                recvmsg(a[0] as c_int, a[1] as *mut msghdr, a[2] as c_int) as c_long
            }
            libc::SYS_recvmmsg => recvmmsg(
                a[0] as c_int,
                a[1] as *mut libc::mmsghdr,
                a[2] as c_uint,
                a[3] as c_int,
                a[4] as *mut libc::timespec,
            )
            .into(),
            libc::SYS_execve => super::exec::execve(
                a[0] as *const c_char,
                a[1] as *const *const c_char,
                a[2] as *const *const c_char,
            )
            .into(),
            libc::SYS_execveat => super::exec::execveat(
                a[0] as c_int,
                a[1] as *const c_char,
                a[2] as *const *const c_char,
                a[3] as *const *const c_char,
                a[4] as c_int,
            )
            .into(),
            _ => return None,
        })
    }
}

/// `syscall(3)`: raw socket and exec calls bypass every libc hook, so route them to ours. It is
/// variadic; reading six `long`s is what the x86-64 and aarch64 calling conventions give
/// a callee either way. Everything else passes through without a lock or an allocation.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn syscall(
    n: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    let routed = matches!(
        n,
        libc::SYS_connect
            | libc::SYS_sendto
            | libc::SYS_sendmsg
            | libc::SYS_sendmmsg
            | libc::SYS_socket
            | libc::SYS_close
            | libc::SYS_close_range
            | libc::SYS_recvmsg
            | libc::SYS_recvmmsg
            | libc::SYS_execve
            | libc::SYS_execveat
    );
    // The number first: most raw syscalls (futex, getrandom) must not pay for the rest.
    if routed && intercepting() {
        // SAFETY: the caller's arguments for syscall `n`.
        if let Some(r) = unsafe { route(n, [a1, a2, a3, a4, a5, a6]) } {
            return r;
        }
    }
    let Some(real) =
        real!(syscall: fn(c_long, c_long, c_long, c_long, c_long, c_long, c_long) -> c_long)
    else {
        return refuse(libc::ENOSYS);
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { real(n, a1, a2, a3, a4, a5, a6) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Send `fd` over `s` with SCM_RIGHTS (one byte of data).
    fn send_fd(s: c_int, fd: c_int) {
        let mut byte = [b'f'];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut ctl = [0u64; 4];
        // SAFETY: a msghdr over the locals above; the CMSG macros stay inside `ctl`.
        unsafe {
            let mut m: msghdr = std::mem::zeroed();
            m.msg_iov = &mut iov;
            m.msg_iovlen = 1;
            m.msg_control = ctl.as_mut_ptr().cast();
            m.msg_controllen = libc::CMSG_SPACE(size_of::<c_int>() as u32) as usize;
            let c = libc::CMSG_FIRSTHDR(&m);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as usize;
            ptr::write_unaligned(libc::CMSG_DATA(c).cast::<c_int>(), fd);
            assert_eq!(libc::sendmsg(s, &m, 0), 1);
        }
    }

    #[test]
    fn send_after_relay_death_reports_reset_once_then_broken_pipe() {
        // A flow the engine reset: its end closed with a byte unread. TCP answers the
        // first send after an RST with ECONNRESET; the unix socket would say EPIPE.
        let mut sv = [0; 2];
        // SAFETY: a socketpair into a two-int array.
        let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) };
        assert_eq!(r, 0);
        let [app, engine] = sv;
        let info = fdtab::FdInfo::for_test();
        info.state.set(0);
        fdtab::add_tunneled(app, info);
        // SAFETY: one byte from a static buffer; then the engine's end is closed.
        unsafe {
            assert_eq!(
                libc::send(app, c"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL),
                1
            );
            libc::close(engine);
        }
        // The peer is closed once no process holds it: a child another test forked at
        // that moment may hold a copy for a while, and a send then would succeed.
        let mut p = libc::pollfd {
            fd: app,
            // None asked: poll waits for the hang-up it always reports.
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        let r = unsafe { libc::poll(&raw mut p, 1, 2000) };
        assert!(
            r == 1 && p.revents & libc::POLLHUP != 0,
            "peer still open: {r} {:#x}",
            p.revents
        );
        let errno = || std::io::Error::last_os_error().raw_os_error();
        // SAFETY: a two-byte buffer, sent through the hooks; SIGPIPE is ignored in tests
        // (Rust's runtime), so the EPIPE's signal does no harm.
        unsafe {
            assert_eq!(write(app, c"y".as_ptr().cast(), 1), -1);
            assert_eq!(errno(), Some(libc::ECONNRESET), "the first send");
            assert_eq!(send(app, c"y".as_ptr().cast(), 1, 0), -1);
            assert_eq!(errno(), Some(libc::EPIPE), "later ones");
        }
        fdtab::forget(app);
        // SAFETY: the test's own fd.
        unsafe { libc::close(app) };
    }

    #[test]
    fn recvmmsg_passes_every_message_and_its_fds_through() {
        // Interception is off in tests: the hook is the real call, all five arguments
        // forwarded; fds that are not inet connections are never refused either way.
        let mut sv = [0; 2];
        // SAFETY: a socketpair into a two-int array.
        let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, sv.as_mut_ptr()) };
        assert_eq!(r, 0);
        send_fd(sv[1], 0);
        send_fd(sv[1], 1);
        let mut bytes = [[0u8; 1]; 2];
        let mut iovs: Vec<libc::iovec> = bytes
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 1,
            })
            .collect();
        let mut ctls = [[0u64; 4]; 2];
        // SAFETY: mmsghdr is plain data; all-zero is valid.
        let mut msgs: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
        for i in 0..2 {
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = ctls[i].as_mut_ptr().cast();
            msgs[i].msg_hdr.msg_controllen = size_of::<[u64; 4]>();
        }
        // SAFETY: the array above, with buffers that outlive the call.
        let r = unsafe {
            recvmmsg(
                sv[0],
                msgs.as_mut_ptr(),
                2,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        assert_eq!(r, 2);
        let ptrs: Vec<*mut msghdr> = msgs.iter_mut().map(|m| &raw mut m.msg_hdr).collect();
        // SAFETY: control buffers the kernel just filled.
        let got: Vec<c_int> = ptrs
            .iter()
            .flat_map(|&m| unsafe { super::super::marshal::scm_rights_fds(m) })
            .collect();
        assert_eq!(got.len(), 2, "one fd per message");
        // SAFETY: as above.
        let refused = unsafe { passed_fds_refused(&ptrs) };
        assert!(!refused, "unix/tty fds are never refused");
        for f in got.into_iter().chain(sv) {
            // SAFETY: fds this test owns.
            unsafe { libc::close(f) };
        }
    }
}
