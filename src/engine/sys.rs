//! The engine's few direct system calls, and where its fds live (see `engine_fd_base`).
//!
//! One fd of the engine stays where it was made: the epoll fd inside mio's `Poll`, which
//! cannot be given another number. A stray `read` or `write` on an epoll fd fails with
//! EINVAL, so nothing can travel through it.
#![allow(unsafe_code)]

/// Raise the soft open-file limit to the hard limit: a relay holds one fd per stream.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid, owned `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max
    {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the valid `lim`; failure leaves the old limit, which is fine.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use crate::os::real;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Write all of `bytes` to `fd`, retrying after EINTR and partial writes, giving up
/// quietly on any error (the log's stderr: nothing must fail or panic for want of it).
pub(super) fn write_ignoring_errors(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: write reads at most `bytes.len()` bytes from the valid slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Where the engine's fds live in an app's process: far above the numbers a program
/// uses, so a stray `write(3..)` of the app (a stale fd variable, a loop over numbers)
/// cannot put its bytes on the relay link or a flow's socket. Three quarters of the soft
/// `RLIMIT_NOFILE`, at most 1024: above that the kernel would grow every such process's
/// fd table for nothing (1024 is already above what stray writes hit), and at 1024 a
/// default soft limit of 1024 still leaves the engine 256 numbers (768 up). Read each
/// time: a program may change its limit.
fn engine_fd_base() -> RawFd {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid, owned `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 3;
    }
    let soft = lim.rlim_cur.min(1 << 20) as RawFd;
    (soft - soft / 4).clamp(3, 1024)
}

/// A close-on-exec duplicate of `fd` at the lowest free number from the engine's base
/// (see [`engine_fd_base`]); where none is free there (a process near its fd limit), the
/// lowest free number at all: the engine still works, only without the distance.
fn dup_high(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an int and returns a new fd that we then own.
    let n = match cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, engine_fd_base()) }) {
        Ok(n) => n,
        // SAFETY: as above.
        Err(_) => cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?,
    };
    // SAFETY: `n` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Move an engine fd to the engine's range (the old number is closed); one that cannot
/// move keeps its number.
pub(super) fn to_engine_range(fd: OwnedFd) -> OwnedFd {
    if fd.as_raw_fd() >= engine_fd_base() {
        return fd;
    }
    dup_high(fd.as_raw_fd()).unwrap_or(fd)
}

/// Give the engine object `obj` a new fd number (in the engine's range), for an app's
/// `dup2` onto its current one: the old number is left open on the same file and is no
/// longer the engine's, so the app's `dup2` replaces it atomically (closing it first
/// would let another thread take the number in between). Returns the old number; `obj`
/// is untouched on error.
pub(super) fn renumber<T: AsRawFd + IntoRawFd + FromRawFd>(obj: &mut T) -> io::Result<RawFd> {
    let new = dup_high(obj.as_raw_fd())?;
    // SAFETY: `new` is a fresh fd owned by nobody else; the old object gives up its number
    // without closing it (its file stays open through `new`).
    let old = std::mem::replace(obj, unsafe { T::from_raw_fd(new.into_raw_fd()) });
    Ok(old.into_raw_fd())
}

/// The preload engine's wake pipe, both ends in the engine's range.
pub(super) fn engine_pipe() -> io::Result<(mio::unix::pipe::Sender, mio::unix::pipe::Receiver)> {
    let (tx, rx) = mio::unix::pipe::new()?;
    // SAFETY: each end is taken out of its owner and moved into an OwnedFd, which then
    // owns it alone.
    let (tx, rx) = unsafe {
        (
            OwnedFd::from_raw_fd(tx.into_raw_fd()),
            OwnedFd::from_raw_fd(rx.into_raw_fd()),
        )
    };
    let (tx, rx) = (to_engine_range(tx), to_engine_range(rx));
    // SAFETY: as above, back into the pipe types (still non-blocking: the flag belongs to
    // the open file description, which the duplicate shares).
    unsafe {
        Ok((
            mio::unix::pipe::Sender::from_raw_fd(tx.into_raw_fd()),
            mio::unix::pipe::Receiver::from_raw_fd(rx.into_raw_fd()),
        ))
    }
}

/// A connected pair of unix stream sockets, both close-on-exec: the app's end, and the
/// engine's end in the engine's range.
pub(super) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two fds into the valid two-element array.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    let (app, engine) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((app, to_engine_range(engine)))
}

/// The file status flags (`O_NONBLOCK` …) of an fd.
pub(super) fn status_flags(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFL takes no pointer; a bad fd gives EBADF.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })
}

/// Set the file status flags of an fd.
pub(super) fn set_status_flags(fd: RawFd, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: F_SETFL takes an int argument.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }).map(drop)
}

/// Whether an fd has close-on-exec set.
pub(super) fn is_cloexec(fd: RawFd) -> io::Result<bool> {
    // SAFETY: F_GETFD takes no pointer.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) }).map(|f| f & libc::FD_CLOEXEC != 0)
}

/// Put `src`'s open file description at fd number `dst` (closing what `dst` was).
pub(super) fn dup_onto(src: &OwnedFd, dst: RawFd, cloexec: bool) -> io::Result<()> {
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: dup3 takes two fd numbers; `src` is open for the duration of the call.
    cvt(unsafe { libc::dup3(src.as_raw_fd(), dst, flags) }).map(drop)
}

/// A close-on-exec duplicate of an fd, for the engine (in its range).
pub(super) fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    dup_high(fd)
}

/// Read an int-valued socket option.
pub(super) fn getsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into the valid, owned `v`.
    cvt(unsafe { libc::getsockopt(fd, level, name, (&raw mut v).cast(), &mut len) })?;
    Ok(v)
}

/// Set an int-valued socket option.
pub(super) fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    let len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel reads `len` bytes from the valid `v`.
    cvt(unsafe { libc::setsockopt(fd, level, name, (&raw const v).cast(), len) }).map(drop)
}

/// Make closing a TCP socket send RST (`SO_LINGER` on, zero seconds); errors ignored.
pub(super) fn reset_on_close(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the kernel reads `size_of::<linger>()` bytes from the valid `l`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// The inode number of the socket `fd` (0 for anything that is not a socket): it names
/// the socket for as long as the socket is open, whatever fd numbers point at it.
pub(super) fn socket_inode(fd: RawFd) -> u64 {
    // SAFETY: stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one `stat` into the valid, owned `st`.
    let r = unsafe { libc::fstat(fd, &mut st) };
    if r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK {
        st.st_ino
    } else {
        0
    }
}

/// Send one byte on `fd` without blocking and without SIGPIPE; errors ignored (a full
/// buffer already holds bytes, which is all the caller wants).
pub(super) fn send_one_byte(fd: RawFd) {
    // SAFETY: send reads one byte from the valid array.
    unsafe {
        libc::send(
            fd,
            [0u8].as_ptr().cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}

/// Write zero bytes without blocking until the socket's send buffer is full; returns the count.
pub(super) fn fill_send_buffer(fd: RawFd) -> io::Result<usize> {
    let chunk = [0u8; 512];
    let mut total = 0;
    loop {
        // SAFETY: send reads `chunk.len()` bytes from the valid array.
        let n = unsafe {
            libc::send(
                fd,
                chunk.as_ptr().cast(),
                chunk.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(total);
            }
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            total += n as usize;
        }
    }
}

/// A zero-filled memory region shared with every process forked from this one.
pub(super) fn shared_zeroed(len: usize) -> io::Result<&'static mut [u8]> {
    // SAFETY: an anonymous shared mapping with no address hint; checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the mapping is `len` bytes, readable and writable, zeroed, never unmapped,
    // and this is the only reference to it.
    Ok(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) })
}

/// This process's id.
pub(super) fn getpid() -> u32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as u32 }
}

/// Close an fd, ignoring errors (used for fds whose owner is gone, e.g. after fork).
pub(super) fn close(fd: RawFd) {
    // SAFETY: the caller gives up the fd; nothing else in this process uses it.
    unsafe { libc::close(fd) };
}

/// The fake-address table in memory shared with forked children (see `crate::dns`).
pub(super) fn shared_fake_table(
    capacity: usize,
) -> io::Result<(&'static crate::dns::Header, &'static [crate::dns::Slot])> {
    use crate::dns::{Header, SLOTS_OFFSET, Slot, table_bytes};
    let mem = shared_zeroed(table_bytes(capacity))?;
    let base = mem.as_mut_ptr();
    // SAFETY: the mapping is page-aligned (≥ the 64-byte alignment of Header and the
    // 8-byte alignment of Slot, at SLOTS_OFFSET, a multiple of 8), large enough for the
    // header and `capacity` slots (table_bytes), zeroed, and both types consist only of
    // atomics for which all-zero is a valid value; it lives for the rest of the process.
    unsafe {
        let header = &*base.cast::<Header>();
        let slots = std::slice::from_raw_parts(base.add(SLOTS_OFFSET).cast::<Slot>(), capacity);
        Ok((header, slots))
    }
}

/// Whether a file carries file capabilities (`security.capability`), which, like the
/// setuid bit, make the loader ignore LD_PRELOAD.
pub(super) fn has_file_caps(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: both strings are NUL-terminated; a NULL buffer of size 0 asks for the size only.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"security.capability".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    n > 0
}

/// The peer of a connected inet socket, if it is one.
pub(super) fn inet_peer(fd: RawFd) -> Option<std::net::SocketAddr> {
    // SAFETY: getpeername writes at most `*len` bytes at `addr` and sets `*len`.
    crate::sockaddr::fetch(|addr, len| unsafe { libc::getpeername(fd, addr, len) })
}

/// Start a non-blocking TCP connect to `addr` through the next `connect` in load order
/// (never through qnet's own hook), on an fd in the engine's range. The connect completes
/// later, as with mio's.
pub(super) fn connect_next(addr: std::net::SocketAddr) -> io::Result<std::net::TcpStream> {
    let sock = to_engine_range(crate::os::connect_next(addr)?);
    Ok(std::net::TcpStream::from(sock))
}

/// Resolve `host` through the next `getaddrinfo` in load order (see [`real!`]).
pub(super) fn resolve_next(host: &str, port: u16) -> io::Result<Vec<std::net::SocketAddr>> {
    let (Some(gai), Some(free)) = (
        real!(getaddrinfo: fn(
            *const libc::c_char,
            *const libc::c_char,
            *const libc::addrinfo,
            *mut *mut libc::addrinfo,
        ) -> libc::c_int),
        real!(freeaddrinfo: fn(*mut libc::addrinfo) -> ()),
    ) else {
        return Err(io::Error::other(
            "no getaddrinfo() after libqnet in load order",
        ));
    };
    let c = std::ffi::CString::new(host).map_err(|_| io::Error::other("NUL in host name"))?;
    // SAFETY: addrinfo is plain old data; zero is "any family, any type".
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid strings and hints; `res` receives a list we free below.
    let r = unsafe { gai(c.as_ptr(), std::ptr::null(), &hints, &mut res) };
    if r != 0 {
        return Err(io::Error::other(format!(
            "cannot resolve {host} (getaddrinfo error {r})"
        )));
    }
    // SAFETY: the list getaddrinfo returned, freed right after and never used again.
    let mut out = unsafe { crate::sockaddr::addrinfo_addrs(res) };
    // SAFETY: as above.
    unsafe { free(res) };
    for a in &mut out {
        a.set_port(port);
    }
    Ok(out)
}

/// A non-blocking CLOCK_MONOTONIC timerfd: the engines' wakeup for shaped departures, with
/// nanosecond resolution where `epoll_wait` has only milliseconds.
#[derive(Debug)]
pub struct TimerFd(OwnedFd);

impl TimerFd {
    /// Create a disarmed timer.
    pub fn new() -> io::Result<TimerFd> {
        // SAFETY: timerfd_create takes no pointers; the returned fd is ours alone.
        let fd = cvt(unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        })?;
        // SAFETY: the fd was just created and is owned by nobody else.
        Ok(TimerFd(to_engine_range(unsafe {
            OwnedFd::from_raw_fd(fd)
        })))
    }

    /// Fire once, `after` from now (zero or less than 1 ns: as soon as possible).
    pub fn arm(&self, after: std::time::Duration) -> io::Result<()> {
        // A zero it_value would disarm the timer; 1 ns means "now".
        let ns = after.as_nanos().clamp(1, i64::MAX as u128) as i64;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for (NULL).
        cvt(unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) })
            .map(drop)
    }

    /// Move to a new fd number (see [`renumber`]); the old one is returned, left open.
    pub(super) fn renumber(&mut self) -> io::Result<RawFd> {
        renumber(&mut self.0)
    }

    /// Read away an expiry so the fd stops being readable.
    pub fn clear(&self) {
        let mut n = 0u64;
        // SAFETY: reads at most 8 bytes into the valid, owned `n`; EAGAIN when not expired.
        unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut n as *mut u64).cast(),
                size_of::<u64>(),
            )
        };
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Lower the calling thread's timer slack to 1 µs (default 50 µs): shaped departures are
/// scheduled at 100 µs ticks.
pub fn lower_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and affects only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
}

/// Wait up to `timeout` for a connect in progress on `fd` to finish; its result.
pub(super) fn wait_connected(fd: RawFd, timeout: std::time::Duration) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, alive for the call.
    if cvt(unsafe { libc::poll(&mut p, 1, ms) })? == 0 {
        return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
    }
    match getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR)? {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// `fork` for tests of the fork handlers; the child must end with [`exit_child`].
#[cfg(test)]
pub(super) fn fork_for_test() -> libc::pid_t {
    // SAFETY: the test's child runs only code that is fork-safe under our handlers
    // (our locks, glibc's malloc, which has its own) and ends with _exit.
    unsafe { libc::fork() }
}

/// End a test's fork child at once (no destructors, no test harness).
#[cfg(test)]
pub(super) fn exit_child(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Wait up to `timeout` for a child's exit status; a child still running then (hung) is
/// killed and `None` returned.
#[cfg(test)]
pub(super) fn wait_child(pid: libc::pid_t, timeout: std::time::Duration) -> Option<i32> {
    let end = std::time::Instant::now() + timeout;
    loop {
        let mut st = 0;
        // SAFETY: waitpid writes one int.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            return libc::WIFEXITED(st).then(|| libc::WEXITSTATUS(st));
        }
        if r < 0 || std::time::Instant::now() > end {
            // SAFETY: our own child; reaped right after.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut st, 0);
            }
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_fds_live_above_the_apps_numbers() {
        let base = engine_fd_base();
        assert!(base >= 3);
        let (app, engine) = socketpair().unwrap();
        assert!(
            engine.as_raw_fd() >= base,
            "engine end {} below {base}",
            engine.as_raw_fd()
        );
        assert!(dup(app.as_raw_fd()).unwrap().as_raw_fd() >= base);
        assert!(TimerFd::new().unwrap().as_raw_fd() >= base);
        let (tx, rx) = engine_pipe().unwrap();
        assert!(tx.as_raw_fd() >= base && rx.as_raw_fd() >= base);
        // The duplicate keeps the pipe non-blocking (an empty read would block otherwise).
        let mut rx = rx;
        let r = io::Read::read(&mut rx, &mut [0u8; 1]);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
