//! The libc entry points libqnet.so replaces. Thin by rule: each exported function
//! decodes its raw arguments, asks a safe operation (`engine::preload`, `engine::resolve`,
//! or the small ops beside it) what to do, and maps the answer (bypass: call the real
//! function; done; refuse with an errno) to a return value and errno.
//!
//! - [`socket`]: socket, connect, listen, the send family (write, writev and send for
//!   tunneled fds only), recvmsg, recvmmsg, syscall.
//! - [`fd`]: the close family, close_range, the dup family, fcntl.
//! - [`sockopt`]: getpeername, getsockname, getsockopt, setsockopt.
//! - [`resolver`]: getaddrinfo, the gethostby* family, getnameinfo; refused: res_*,
//!   rcmd*, rexec*, ruserok*, getnetby* (they query DNS or connect inside libc).
//! - [`exec`]: the exec family and posix_spawn (`execl`, `execle`, `execlp` in
//!   `variadic.c`, C-variadic: they collect their arguments and call the hooks here).
//! - [`shell`]: system, popen, pclose and wordexp (the shell they start keeps LD_PRELOAD).
//! - [`marshal`]: hostent and SCM_RIGHTS layouts (sockaddrs are [`crate::sockaddr`]'s).
//! - [`seccomp`]: the kernel filter installed at load (no io_uring, only allowed sockets).
//!
//! Every hook passes straight to the real function when interception is off (a static
//! link without `qnet_init`'s opt-in), when the calling thread is qnet's own (the bypass
//! flag), or when the fd is not a tunneled one. Every hook body runs inside
//! `catch_unwind`: a panic fails the call closed (an errno and one stderr line) rather
//! than falling through to the real function, which could send bytes directly.
#![allow(unsafe_code)]
#![allow(clippy::missing_safety_doc)] // C entry points: their contract is libc's.
#![allow(unreachable_pub)] // exported C symbols: reached by the dynamic linker, not by Rust paths.

mod exec;
mod fd;
mod marshal;

mod resolver;
mod seccomp;
mod shell;
mod socket;
mod sockopt;

use std::ffi::{CStr, c_int, c_void};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use libc::{sockaddr, socklen_t};

use crate::engine::preload::{self, Decision};
use crate::os::real;

// ---- errno and the panic boundary -----------------------------------------------------

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = e };
}

/// Fail a call the libc way: errno `e`, return -1.
fn refuse<T: From<i8>>(e: c_int) -> T {
    set_errno(e);
    T::from(-1)
}

unsafe extern "C" {
    fn __h_errno_location() -> *mut c_int;
}

fn set_h_errno(e: c_int) {
    // SAFETY: glibc's per-thread h_errno slot, always valid.
    unsafe { *__h_errno_location() = e };
}

/// Whether hooks intercept on this thread at all. Before the load-time setup has run (a
/// library earlier in the constructor order calling us from its own constructor), the
/// first hook runs it.
#[inline]
fn intercepting() -> bool {
    if preload::active() {
        return !preload::bypassed();
    }
    !LOADED.load(Ordering::Acquire) && !preload::bypassed() && {
        load();
        preload::active()
    }
}

/// Run a hook body; a panic becomes `on_panic` with errno EIO and one stderr line.
fn guarded<T>(name: &str, on_panic: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            preload::tell_once(&format!(
                "internal error in {name}; the call failed, nothing was sent directly"
            ));
            set_errno(libc::EIO);
            on_panic
        }
    }
}

/// Map an operation's answer to an int-returning call: bypass runs `real`.
fn decided(d: Decision<()>, real: impl FnOnce() -> c_int) -> c_int {
    match d {
        Decision::Bypass => real(),
        Decision::Done(()) => 0,
        Decision::Refuse(e) => refuse(e),
    }
}

// ---- shared argument decoding ---------------------------------------------------------

/// Decode an address argument as the kernel reads it: `Ok(Some)` for an inet address,
/// `Ok(None)` for anything else (passed on to the real call), and `Err(EINVAL)` for an
/// inet family with too few bytes, which must never reach the real call either (fail
/// closed: the real call could read a different address than the one judged).
///
/// # Safety
/// `addr` is NULL or points to `len` readable bytes.
unsafe fn inet_arg(addr: *const sockaddr, len: socklen_t) -> Result<Option<SocketAddr>, c_int> {
    // SAFETY: this function's contract.
    match unsafe { crate::sockaddr::read(addr, len) } {
        Ok(sa) => Ok(Some(sa)),
        Err(e) if e.is_short_inet() => Err(libc::EINVAL),
        Err(_) => Ok(None),
    }
}

/// The socket type (`SOCK_STREAM`, `SOCK_DGRAM` …) of `fd`, or -1 if it is no socket.
fn socket_type(fd: c_int) -> c_int {
    let mut ty: c_int = -1;
    let mut len = size_of::<c_int>() as socklen_t;
    let real = real!(getsockopt: fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int);
    let Some(getsockopt) = real else {
        return -1;
    };
    // SAFETY: getsockopt writes at most `len` bytes into `ty`.
    let r = unsafe {
        getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut ty).cast(),
            &mut len,
        )
    };
    if r == 0 { ty } else { -1 }
}

// ---- load time -------------------------------------------------------------------------

/// The load-time setup has run (interception decided).
static LOADED: AtomicBool = AtomicBool::new(false);

/// The load-time setup, once per process: from our constructor, or from the first hook
/// called before it. Another library's constructor runs before ours when it comes later
/// in LD_PRELOAD (the loader runs constructors last-loaded first) and may connect from
/// there: with interception still off, that connect once went out directly.
fn load() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Every libc call of the setup reaches the real function; a hook it enters (the
        // fd scan's getpeername) must not come back here.
        let _g = preload::BypassGuard::enter();
        // A panic must not unwind into the loader (it would abort) or poison the Once.
        if catch_unwind(setup).is_err() {
            preload::tell_once("internal error at load");
        }
        LOADED.store(true, Ordering::Release);
    });
}

extern "C" fn on_load() {
    load();
}

fn setup() {
    // Interception starts at load only when this code sits in a shared object of its own
    // (libqnet.so) that was preloaded. Linked into a program (libqnet.a, -lqnet, or the
    // qnet binaries) it stays off until qnet_init asks, so linking never changes a program.
    // SAFETY: getauxval has no preconditions; dladdr only reads the given addresses.
    let in_shared_object = unsafe {
        let phdr = libc::getauxval(libc::AT_PHDR) as *const c_void;
        let mut main: libc::Dl_info = std::mem::zeroed();
        let mut ours: libc::Dl_info = std::mem::zeroed();
        libc::dladdr(phdr, &mut main) != 0
            && libc::dladdr(on_load as *const c_void, &mut ours) != 0
            && main.dli_fbase != ours.dli_fbase
    };
    if !in_shared_object {
        return;
    }
    // SAFETY: as above; dli_fname is a NUL-terminated path owned by the loader.
    let name = unsafe {
        let mut ours: libc::Dl_info = std::mem::zeroed();
        libc::dladdr(on_load as *const c_void, &mut ours);
        (!ours.dli_fname.is_null()).then(|| CStr::from_ptr(ours.dli_fname).to_owned())
    };
    let preloaded = name
        .as_ref()
        .is_some_and(|n| preload::preloaded(Path::new(std::ffi::OsStr::from_bytes(n.to_bytes()))));
    if let Some(n) = name {
        let _ = exec::LIBRARY.set(n);
    }
    // Linked into a program (-lqnet) the hooks stay off until qnet_init opts in.
    if preloaded {
        // Interception on, with the fork handlers it relies on.
        preload::enable();
        // Connections a parent made outside the tunnel and passed across exec are cut
        // off before the program can write to them.
        if catch_unwind(preload::disarm_inherited).is_err() {
            preload::tell_once("internal error checking inherited connections");
        }
        // Then the kernel's limits (this reads the config now rather than at the first
        // hook that needs it).
        if catch_unwind(seccomp::at_load).is_err() {
            preload::tell_once(
                "internal error installing the seccomp filter; the hooks alone guard this process",
            );
        }
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = on_load;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_arg_passes_other_families_and_refuses_short_inet() {
        let v6 = crate::sockaddr::encode("[2001:db8::1]:80".parse().unwrap());
        // SAFETY: the encoded struct's own bytes, at its length and shorter.
        unsafe {
            assert!(matches!(inet_arg(v6.as_ptr(), 24), Ok(Some(_))));
            assert_eq!(inet_arg(v6.as_ptr(), 20), Err(libc::EINVAL));
            assert_eq!(inet_arg(std::ptr::null(), 28), Ok(None));
            assert_eq!(inet_arg(v6.as_ptr(), 1), Ok(None));
        }
        let f = (libc::AF_UNIX as u16).to_ne_bytes();
        let unix = [f[0], f[1], b'/', 0];
        // SAFETY: a 4-byte stack buffer.
        assert_eq!(unsafe { inet_arg(unix.as_ptr().cast(), 4) }, Ok(None));
    }
}
