//! The few process-level libc facilities that several layers share, written once: the
//! next definition of a symbol in load order, fork handlers, the shell's PATH search,
//! the host's interface addresses, the effective uid and the allocator's trim.
#![allow(unsafe_code)]

use std::ffi::{CStr, OsStr};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// `dlsym(RTLD_NEXT, name)`: the definition after the object holding this code, or
/// `None`. Inside libqnet.so that is what the app would reach past us (libc, or
/// proxychains-ng when it is preloaded after us); inside a program it is libc.
/// `RTLD_NEXT`, not `dlopen("libc.so.6")`, so a library preloaded after us still sees
/// our calls and we see its.
pub(crate) fn next_symbol(name: &CStr) -> Option<usize> {
    // SAFETY: a NUL-terminated name; dlsym has no other preconditions.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    (p != 0).then_some(p)
}

/// [`next_symbol`] once per call site; `0` if there is none (e.g. `close_range` on an
/// old libc). Used through [`real!`].
pub(crate) fn lookup(cache: &AtomicUsize, name: &'static [u8]) -> usize {
    let p = cache.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    let f = CStr::from_bytes_with_nul(name)
        .ok()
        .and_then(next_symbol)
        .unwrap_or(0);
    cache.store(f, Ordering::Relaxed);
    f
}

/// `real!(name: fn(args) -> ret)`: the next definition of `name` in load order (the
/// real libc function behind our hook, or proxychains-ng's when it is preloaded after
/// us), as a callable `Option<unsafe extern "C" fn(args) -> ret>`, looked up once.
macro_rules! real {
    ($name:ident : fn($($arg:ty),* $(,)?) -> $ret:ty) => {{
        static CACHE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let p = $crate::os::lookup(&CACHE, concat!(stringify!($name), "\0").as_bytes());
        if p == 0 {
            None
        } else {
            // SAFETY: `p` is the address of the C function `name`, whose prototype is the
            // one written at this call site (checked against the libc headers by hand).
            Some(unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($arg),*) -> $ret>(p) })
        }
    }};
}
pub(crate) use real;

/// The mutex for state that hooks and qnet's threads share inside an app's process and
/// that fork handlers hold across `fork`: std's futex mutex, whose unlock just clears the
/// lock word (and wakes a waiter, if any). parking_lot's unlock may instead hand the lock
/// straight to a waiting thread (its fairness), and a thread that waited in the parent
/// does not exist in the child: the child's copy would stay locked forever. A poisoned
/// lock is taken anyway: a panic inside a hook fails that call; what these locks guard
/// (maps, options) is whole between statements.
pub(crate) struct ForkMutex<T>(std::sync::Mutex<T>);

impl<T> ForkMutex<T> {
    /// A new unlocked mutex (usable in a `static`).
    pub(crate) const fn new(v: T) -> ForkMutex<T> {
        ForkMutex(std::sync::Mutex::new(v))
    }

    /// Lock it if nobody holds it (a hook that may run in a signal handler, whose
    /// interrupted thread may be the holder).
    pub(crate) fn try_lock(&self) -> Option<std::sync::MutexGuard<'_, T>> {
        match self.0.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Lock it, waiting as long as it takes.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Register `pthread_atfork` handlers. Callers guard with a `Once`: handlers registered
/// twice run twice.
pub(crate) fn on_fork(prepare: extern "C" fn(), parent: extern "C" fn(), child: extern "C" fn()) {
    // SAFETY: the handlers are plain functions of this library, valid for the process's
    // life (glibc drops them if the library is unloaded).
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

/// Register `f` to run when the process exits normally (`exit`, a return from `main`).
/// Callers guard with a `Once`: a handler registered twice runs twice. Inherited by fork
/// children, so `f` must act for whichever process runs it.
pub(crate) fn at_exit(f: extern "C" fn()) {
    // SAFETY: `f` is a plain function of this library; glibc ties it to this object
    // (`__cxa_atexit` with its DSO handle), so it runs at unload if that comes first.
    unsafe { libc::atexit(f) };
}

/// Spawn one of qnet's threads inside the app's process with every blockable signal
/// blocked. Such a thread carries the bypass flag for its whole life (or holds our locks),
/// so an app's handler that ran there would reach libc directly: its `connect` would go
/// out untunneled. The kernel then delivers process-directed signals to the app's own
/// threads. (glibc keeps its internal SIGCANCEL/SIGSETXID deliverable whatever the mask.)
pub(crate) fn spawn_signals_blocked<T: Send + 'static>(
    builder: std::thread::Builder,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<std::thread::JoinHandle<T>> {
    // A new thread starts with its creator's mask: block everything here for the spawn,
    // then put the caller's mask back (a signal that arrived meanwhile is delivered then).
    // SAFETY: sigset_t is plain data, filled by sigfillset before use; pthread_sigmask
    // only reads `all` and writes `old`, both owned locals.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    let r = builder.spawn(f);
    // SAFETY: restores the mask read above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r
}

/// glibc's search path when `PATH` is unset (`confstr(_CS_PATH)`).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// The program `name` as `execvp` would find it: a name with a `/` is taken as it is,
/// any other is looked up on `PATH` (glibc's default when unset).
pub fn find_program(name: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    find_program_in(name, &path)
}

/// [`find_program`] with the search path given. Like glibc's `execvp`, a directory entry
/// that is not an executable regular file is passed over and the search goes on: the
/// setuid check must look at the file exec will run, not at an earlier one it skips.
fn find_program_in(name: &OsStr, path: &OsStr) -> Option<PathBuf> {
    let p = Path::new(name);
    if name.as_encoded_bytes().contains(&b'/') {
        return Some(p.to_path_buf());
    }
    std::env::split_paths(path)
        .map(|d| d.join(p))
        .find(|c| c.is_file() && executable(c))
}

/// `access(path, X_OK)`: may this process execute `path`?
fn executable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path; access has no other preconditions.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// Every address of every interface of this host (`getifaddrs`), IPv4 and IPv6, `lo`'s
/// included, in no particular order (one on two interfaces is listed twice).
pub fn interface_addrs() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; on success it holds a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addrs = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        // SAFETY: `ifa_addr` is null or points to a sockaddr whose family says which
        // struct it is; each is read only after checking that family.
        let addr = unsafe {
            match ifa.ifa_addr.as_ref().map(|sa| i32::from(sa.sa_family)) {
                Some(libc::AF_INET) => {
                    let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))))
                }
                Some(libc::AF_INET6) => {
                    let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                    Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            }
        };
        addrs.extend(addr);
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once; no reference into it remains.
    unsafe { libc::freeifaddrs(head) };
    Ok(addrs)
}

/// Hand the allocator's free memory back to the kernel (glibc's `malloc_trim(0)`: free
/// pages anywhere in its heaps, not only at their top); whether any was released.
/// Elsewhere (musl) a no-op that says no.
pub(crate) fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a plain size and only walks the allocator's own lists.
    return unsafe { libc::malloc_trim(0) } == 1;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Keep glibc's heap-trim threshold at its default (128 KiB) for good. By default glibc
/// raises it (to twice the size, up to 64 MiB) whenever a block it had mapped on its own
/// is freed, such as a large table; past that, a thread arena (every thread but the
/// first allocates from one) keeps whatever free space sits at its top, and
/// `malloc_trim` trims only the main arena's top. Measured with `tests/soak.rs` on a
/// two-loop relay: 7-10 MB stayed resident in the second loop's arena after 9,968
/// clients had left; fixed thresholds (setting one turns the adjustment off), +2.3 MB,
/// as with one loop. Call before starting threads. Elsewhere (musl) a no-op.
pub(crate) fn steady_malloc_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two plain integers and only sets the allocator's parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// CPU time the calling thread has used (user and system), for the relay's per-loop
/// metric; zero if the clock cannot be read.
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A non-blocking, close-on-exec TCP socket with a connect to `addr` started (done, or
/// EINPROGRESS) through the next `connect` in load order: never qnet's own hook, and
/// proxychains-ng's when it is preloaded after us (or, in a program, before libc). Both
/// the engine's relay dial and the jail's broker use it.
pub(crate) fn connect_next(addr: std::net::SocketAddr) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let Some(connect) =
        real!(connect: fn(libc::c_int, *const libc::sockaddr, libc::socklen_t) -> libc::c_int)
    else {
        return Err(io::Error::other("no connect() next in load order"));
    };
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket creation; the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let sa = crate::sockaddr::encode(addr);
    // SAFETY: a valid socket and a sockaddr of `sa.len()` bytes, alive for the call.
    let r = unsafe { connect(sock.as_raw_fd(), sa.as_ptr(), sa.len()) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(sock)
}

/// Runs `f` in a forked child and returns its exit status (`qnet check`'s probes, so
/// what they change of the process goes with the child). `f` must only make system
/// calls: the child of a threaded process may not allocate or take a lock.
pub(crate) fn in_child(f: impl FnOnce() -> i32) -> io::Result<i32> {
    // SAFETY: the child runs `f` (system calls only, by contract) and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // The child holds none of the parent's descriptors (beyond stdio): a peer the
        // parent closes meanwhile must see the close, not the child's copy.
        // SAFETY: close_range on this process's own descriptor range; no Rust object of
        // the child's uses them (it only runs `f`, which opens what it needs).
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
        // A panic must not unwind into the parent's frames copied into the child (and
        // go on running the parent's code there): it ends the child with 127.
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(127);
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is alive for the call.
        if unsafe { libc::waitpid(pid, &raw mut status, 0) } == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status))
    } else {
        Err(io::Error::other(format!(
            "probe child ended by signal {}",
            libc::WTERMSIG(status)
        )))
    }
}

/// Whether the kernel takes a seccomp filter from this process, as `libqnet.so` installs
/// one at load: `PR_SET_NO_NEW_PRIVS`, then a one-instruction allow-all filter, both in
/// a forked child.
pub fn seccomp_probe() -> io::Result<()> {
    const NO_NEW_PRIVS: i32 = 1;
    const FILTER: i32 = 2;
    let allow = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: allow.as_ptr().cast_mut(),
    };
    // The child's status: the failed step in the high bits, its errno in the low ones.
    let code = in_child(|| {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return NO_NEW_PRIVS << 6 | errno_low();
        }
        // SAFETY: `prog` points to `allow`, alive for the call; the kernel copies it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &raw const prog,
            )
        };
        if r != 0 {
            return FILTER << 6 | errno_low();
        }
        0
    })?;
    let e = io::Error::from_raw_os_error(code & 63);
    match code >> 6 {
        0 => Ok(()),
        NO_NEW_PRIVS => Err(io::Error::other(format!("prctl(PR_SET_NO_NEW_PRIVS): {e}"))),
        _ => Err(io::Error::other(format!("seccomp(SET_MODE_FILTER): {e}"))),
    }
}

/// This thread's errno, cut to the six bits an exit status has room for beside a step
/// (the errnos a prctl or seccomp returns are all below 64).
fn errno_low() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0) & 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_child_returns_the_childs_exit_status() {
        assert_eq!(in_child(|| 7).unwrap(), 7);
        assert_eq!(in_child(|| 0).unwrap(), 0);
    }

    #[test]
    fn find_program_takes_a_path_as_is_and_searches_a_name() {
        assert_eq!(
            find_program(OsStr::new("./no/such")),
            Some(PathBuf::from("./no/such"))
        );
        let sh = find_program(OsStr::new("sh")).expect("sh on PATH");
        assert!(sh.is_file());
        assert_eq!(find_program(OsStr::new("qnet-no-such-program-xyz")), None);
    }

    #[test]
    fn find_program_skips_a_non_executable_file_earlier_on_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("qnet-os-{}", std::process::id()));
        let (first, second) = (dir.join("a"), dir.join("b"));
        for (d, mode) in [(&first, 0o644), (&second, 0o755)] {
            std::fs::create_dir_all(d).unwrap();
            let f = d.join("prog");
            std::fs::write(&f, b"#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let path = std::env::join_paths([&first, &second]).unwrap();
        let found = find_program_in(OsStr::new("prog"), &path);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found,
            Some(second.join("prog")),
            "exec runs the executable one"
        );
    }

    #[test]
    fn interface_addrs_include_loopback() {
        let addrs = interface_addrs().unwrap();
        // Every Linux host (and network namespace with lo up) has 127.0.0.1 on lo.
        assert!(
            addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
    }

    #[test]
    fn next_symbol_finds_libc_and_not_nonsense() {
        assert!(next_symbol(c"connect").is_some());
        assert!(next_symbol(c"qnet_no_such_symbol_xyz").is_none());
    }

    /// The calling thread's blocked-signal mask.
    fn mask() -> libc::sigset_t {
        // SAFETY: a NULL new set only reads the mask into the owned `m`.
        unsafe {
            let mut m: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut m);
            m
        }
    }

    fn blocked(m: &libc::sigset_t, sig: i32) -> bool {
        // SAFETY: reads a valid sigset_t.
        unsafe { libc::sigismember(m, sig) == 1 }
    }

    #[test]
    fn engine_thread_blocks_every_signal_so_app_handlers_never_run_there() {
        let before = mask();
        let t = spawn_signals_blocked(std::thread::Builder::new(), || {
            let m = mask();
            [
                libc::SIGINT,
                libc::SIGTERM,
                libc::SIGALRM,
                libc::SIGUSR1,
                libc::SIGCHLD,
                libc::SIGPIPE,
            ]
            .iter()
            .all(|&s| blocked(&m, s))
        })
        .unwrap();
        assert!(
            t.join().unwrap(),
            "every blockable signal is blocked in the new thread"
        );
        let after = mask();
        for s in [libc::SIGINT, libc::SIGALRM, libc::SIGUSR1] {
            assert_eq!(
                blocked(&before, s),
                blocked(&after, s),
                "the caller's mask is back"
            );
        }
    }
}
