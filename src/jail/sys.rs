//! The jail's system calls, in one place: namespaces and the loopback for the child of
//! `qnet run`, and seqpacket unix sockets that carry one fd with SCM_RIGHTS for both
//! ends of the broker. Calls that the preloaded library hooks (connect, sendmsg,
//! recvmsg) go through [`real!`], the next definition in load order, so the library's
//! own dials are never judged by its hooks (the fd that arrives is the point).
#![allow(unsafe_code)]

use std::ffi::c_int;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::os::real;

fn cvt(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: isize) -> io::Result<usize> {
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// `sockaddr_un` for an abstract name (a leading NUL, no file), and its length.
fn abstract_addr(name: &[u8]) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let n = name.len().min(a.sun_path.len() - 1);
    for (d, s) in a.sun_path[1..=n].iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let len = size_of::<libc::sa_family_t>() + 1 + n;
    (a, len as libc::socklen_t)
}

/// A close-on-exec `SOCK_SEQPACKET` unix socket: one message per request or reply.
pub(super) fn seqpacket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the fd is owned right below.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pair of connected close-on-exec seqpacket sockets.
pub(super) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: socketpair writes two fds into the valid two-element array.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Connect `s` to the abstract unix name `name` (of this network namespace).
pub(super) fn connect_abstract(s: &OwnedFd, name: &[u8]) -> io::Result<()> {
    let Some(connect) = real!(connect: fn(c_int, *const libc::sockaddr, libc::socklen_t) -> c_int)
    else {
        return Err(io::Error::other("no connect() in load order"));
    };
    let (a, len) = abstract_addr(name);
    // SAFETY: a valid socket and a sockaddr_un of `len` bytes, alive for the call.
    cvt(unsafe { connect(s.as_raw_fd(), (&raw const a).cast(), len) }).map(drop)
}

/// A listening seqpacket socket on the abstract name `name` (of this network namespace).
pub(super) fn listen_abstract(name: &[u8]) -> io::Result<OwnedFd> {
    let s = seqpacket()?;
    let (a, len) = abstract_addr(name);
    // SAFETY: a valid socket and a sockaddr_un of `len` bytes, alive for the call.
    cvt(unsafe { libc::bind(s.as_raw_fd(), (&raw const a).cast(), len) })?;
    // SAFETY: listen on a bound socket we own.
    cvt(unsafe { libc::listen(s.as_raw_fd(), 128) })?;
    Ok(s)
}

/// Accept one connection (blocking), close-on-exec.
pub(super) fn accept(l: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: accept4 with no address buffer; the fd is owned right below.
    let fd = cvt(unsafe {
        libc::accept4(
            l.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The uid of the process at the other end of a unix socket.
pub(super) fn peer_uid(s: &OwnedFd) -> io::Result<u32> {
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes a ucred into `c`, whose size `len` names.
    cvt(unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut c).cast(),
            &mut len,
        )
    })?;
    Ok(c.uid)
}

/// This process's real uid.
pub(super) fn getuid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// This process's effective uid and gid.
pub(super) fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// A receive timeout on `s`, so a broker that stopped answering fails the call.
pub(super) fn set_recv_timeout(s: &OwnedFd, t: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_usec: t.subsec_micros().into(),
    };
    // SAFETY: SO_RCVTIMEO reads a timeval of the size given.
    cvt(unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Send one message `data` on `s`, with `fd` attached (SCM_RIGHTS) if given.
pub(super) fn send_msg(s: &OwnedFd, data: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let Some(sendmsg) = real!(sendmsg: fn(c_int, *const libc::msghdr, c_int) -> isize) else {
        return Err(io::Error::other("no sendmsg() in load order"));
    };
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // Room for one cmsghdr and one int, aligned for the header.
    let mut ctl = [0u64; 4];
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &raw mut iov;
    m.msg_iovlen = 1;
    if let Some(fd) = fd {
        m.msg_control = ctl.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is arithmetic.
        m.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<c_int>() as u32) } as usize;
        // SAFETY: `m` describes `ctl`, which holds CMSG_SPACE(int) bytes: the first
        // header and its int fit, and the write is unaligned-safe.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&m);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<c_int>(), fd);
        }
    }
    // SAFETY: `m` points at `iov` (over `data`) and `ctl`, all alive for the call.
    let n = cvt_size(unsafe { sendmsg(s.as_raw_fd(), &m, libc::MSG_NOSIGNAL) })?;
    if n != data.len() {
        return Err(io::Error::other("short send on a seqpacket socket"));
    }
    Ok(())
}

/// Receive one message into `buf` (its length, and an fd if one came with it). Any
/// other fds, or a truncated message, are closed and refused.
pub(super) fn recv_msg(s: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let Some(recvmsg) = real!(recvmsg: fn(c_int, *mut libc::msghdr, c_int) -> isize) else {
        return Err(io::Error::other("no recvmsg() in load order"));
    };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut ctl = [0u64; 8];
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &raw mut iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.as_mut_ptr().cast();
    m.msg_controllen = size_of_val(&ctl);
    // SAFETY: `m` points at `iov` (over `buf`) and `ctl`, all alive for the call.
    let n = cvt_size(unsafe { recvmsg(s.as_raw_fd(), &mut m, libc::MSG_CMSG_CLOEXEC) })?;
    let mut fds = Vec::new();
    // SAFETY: the CMSG macros walk the control data the kernel wrote into `ctl`, within
    // `msg_controllen`; each SCM_RIGHTS payload is whole ints (read unaligned).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&m);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let p = libc::CMSG_DATA(c).cast::<c_int>();
                for i in 0..bytes / size_of::<c_int>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&m, c);
        }
    }
    if m.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 || fds.len() > 1 {
        return Err(io::Error::other(
            "a malformed message from the jail's broker",
        ));
    }
    Ok((n, fds.pop()))
}

// ---- the child's side of `qnet run`: after fork, before exec ---------------------------

/// Run `f` in the child of `cmd` after fork, before exec. Call only while this process
/// has a single thread: `f` allocates, which is sound in a fork of a one-thread process.
pub(super) fn before_exec(
    cmd: &mut std::process::Command,
    f: impl FnMut() -> io::Result<()> + Send + Sync + 'static,
) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the caller guarantees one thread at the fork (so no lock is held by a
    // thread that does not exist in the child); `f` touches only its captures and the
    // child's own kernel state.
    unsafe { cmd.pre_exec(f) };
}

/// Enter a new network namespace with only a loopback, up: a plain one when the kernel
/// lets this process (root), else inside a new user namespace that maps this process's
/// uid and gid to themselves, so the program keeps its ids as seen from inside. Runs in
/// the forked child before exec; `maps` is ("uid uid 1", "gid gid 1"), formatted before
/// the fork.
pub(super) fn enter_namespaces(maps: &(String, String)) -> io::Result<()> {
    // SAFETY: unshare takes flags only; it changes this (single-threaded) child.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        // SAFETY: as above.
        cvt(unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) })?;
        // An unprivileged map needs setgroups denied first (user_namespaces(7)).
        write_proc("/proc/self/setgroups\0", b"deny")?;
        write_proc("/proc/self/uid_map\0", maps.0.as_bytes())?;
        write_proc("/proc/self/gid_map\0", maps.1.as_bytes())?;
    }
    loopback_up()
}

fn write_proc(path: &str, data: &[u8]) -> io::Result<()> {
    // SAFETY: a NUL-terminated path constant; the fd is closed below.
    let fd = cvt(unsafe { libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC) })?;
    // SAFETY: `data` is valid for its length.
    let r = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let e = io::Error::last_os_error();
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    if r < 0 {
        return Err(e);
    }
    Ok(())
}

/// `ip link set lo up` in this network namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket creation, closed below.
    let s = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    // SAFETY: the SIOC[GS]IFFLAGS ioctls read and write `ifr`, alive for the calls.
    let r = unsafe {
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &raw mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &raw const ifr)
        } else {
            -1
        }
    };
    let e = io::Error::last_os_error();
    // SAFETY: closing the socket made above.
    unsafe { libc::close(s) };
    if r != 0 {
        return Err(e);
    }
    Ok(())
}

/// Reset the signal mask (the parent blocks the signals it forwards).
pub(super) fn unblock_all_signals() -> io::Result<()> {
    // SAFETY: a sigset on the stack, emptied, then installed as the mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        match libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

// ---- the parent's side of `qnet run`: signals and the child's end ------------------------

/// The signals `qnet run` forwards to its child, and SIGCHLD, as a set.
fn forwarded_set() -> libc::sigset_t {
    // SAFETY: a sigset on the stack, filled through the libc calls that own its layout.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

/// What `qnet run` passes on to the program when another process sends it (a terminal's
/// SIGINT, SIGQUIT or SIGHUP reaches the program's process group directly).
pub(super) const FORWARDED: [c_int; 7] = [
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
];

/// Block [`FORWARDED`] and SIGCHLD in this thread (and the threads it starts later).
pub(super) fn block_forwarded() -> io::Result<()> {
    let set = forwarded_set();
    // SAFETY: installs a valid sigset as part of this thread's mask.
    match unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Wait for one of the blocked signals: its number, and whether another process sent
/// it (kill, not the kernel or a terminal).
pub(super) fn wait_signal() -> io::Result<(c_int, bool)> {
    let set = forwarded_set();
    // SAFETY: siginfo_t is plain data; sigwaitinfo fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid set and siginfo, alive for the call.
    let s = unsafe { libc::sigwaitinfo(&set, &mut info) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((s, info.si_code <= 0))
}

/// `kill(pid, sig)`, errors ignored (the child may be gone).
pub(super) fn kill(pid: u32, sig: c_int) {
    // SAFETY: kill takes integers only.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// End this process the way its child ended: the same exit code, or the same signal
/// (with no core file of our own), so a shell sees what it would have without us.
pub(super) fn exit_like(status: std::process::ExitStatus) -> ! {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: integer and struct arguments only; the default action then ends us.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
        std::process::exit(128 + sig);
    }
    std::process::exit(status.code().unwrap_or(1))
}
