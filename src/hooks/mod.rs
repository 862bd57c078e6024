//! The libc entry points libqnet.so replaces. Thin by rule: decode raw arguments, ask
//! `engine::app` or `engine::resolve` (safe code) what to do, map the answer to a return
//! value and errno.
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
pub(crate) mod real;

use std::ffi::{CStr, CString, c_char, c_int, c_long, c_uint, c_void};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::ptr;

use libc::{addrinfo, hostent, msghdr, size_t, sockaddr, socklen_t, ssize_t};

use crate::engine::app::{self, Decision};
use crate::engine::fdtab::{self, Kind};
use crate::engine::resolve::{self, Lookup};
use real::real;

// ---- plumbing --------------------------------------------------------------------------

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = e };
}

unsafe extern "C" {
    fn __h_errno_location() -> *mut c_int;
}

fn set_h_errno(e: c_int) {
    // SAFETY: glibc's per-thread h_errno slot, always valid.
    unsafe { *__h_errno_location() = e };
}

/// Whether hooks intercept on this thread at all.
#[inline]
fn intercepting() -> bool {
    app::active() && !app::bypassed()
}

/// Run a hook body; a panic becomes `on_panic` with errno EIO and one stderr line.
fn guarded<T>(name: &str, on_panic: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            app::tell_once(&format!(
                "internal error in {name}; the call failed, nothing was sent directly"
            ));
            set_errno(libc::EIO);
            on_panic
        }
    }
}

fn decided(d: Decision<()>, real: impl FnOnce() -> c_int) -> c_int {
    match d {
        Decision::Bypass => real(),
        Decision::Done(()) => 0,
        Decision::Refuse(e) => {
            set_errno(e);
            -1
        }
    }
}

/// The shortest IPv6 address the kernel accepts: RFC 2133's `sockaddr_in6`, without
/// `sin6_scope_id` (Linux's `SIN6_LEN_RFC2133`).
const SIN6_LEN_RFC2133: usize = 24;

/// Decode an address argument as the kernel reads it: `Ok(Some)` for an inet address,
/// `Ok(None)` for other families (passed on), and `Err(EINVAL)` for an inet family with
/// too few bytes, which must never reach the real call either (fail closed).
unsafe fn sockaddr_in(addr: *const sockaddr, len: socklen_t) -> Result<Option<SocketAddr>, c_int> {
    let len = len as usize;
    if addr.is_null() || len < size_of::<libc::sa_family_t>() {
        return Ok(None);
    }
    // SAFETY: the caller passes a readable buffer of `len` bytes (connect's contract);
    // reads are unaligned-safe and bounded by the length checks.
    unsafe {
        match c_int::from((*addr).sa_family) {
            libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
                let a = ptr::read_unaligned(addr.cast::<libc::sockaddr_in>());
                Ok(Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                ))))
            }
            libc::AF_INET6 if len >= SIN6_LEN_RFC2133 => {
                // Copy only the bytes the caller has: a 24-byte address has no scope id.
                let mut a: libc::sockaddr_in6 = std::mem::zeroed();
                let n = len.min(size_of::<libc::sockaddr_in6>());
                ptr::copy_nonoverlapping(addr.cast::<u8>(), (&raw mut a).cast::<u8>(), n);
                Ok(Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                ))))
            }
            libc::AF_INET | libc::AF_INET6 => Err(libc::EINVAL),
            _ => Ok(None),
        }
    }
}

/// Encode `sa` into the caller's buffer with getpeername semantics (truncate, report full length).
unsafe fn write_sockaddr(sa: SocketAddr, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if addr.is_null() || len.is_null() {
        set_errno(libc::EFAULT);
        return -1;
    }
    let mut storage: libc::sockaddr_storage = {
        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
        unsafe { std::mem::zeroed() }
    };
    let full = match sa {
        SocketAddr::V4(a) => {
            let s = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { ptr::write((&raw mut storage).cast(), s) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let s = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { ptr::write((&raw mut storage).cast(), s) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: `len` is the caller's valid in/out length; we copy at most that many bytes.
    unsafe {
        let room = (*len as usize).min(full);
        ptr::copy_nonoverlapping((&raw const storage).cast::<u8>(), addr.cast::<u8>(), room);
        *len = full as socklen_t;
    }
    0
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

extern "C" fn on_load() {
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
    if in_shared_object {
        // SAFETY: as above; dli_fname is a NUL-terminated path owned by the loader.
        let name = unsafe {
            let mut ours: libc::Dl_info = std::mem::zeroed();
            libc::dladdr(on_load as *const c_void, &mut ours);
            (!ours.dli_fname.is_null()).then(|| CStr::from_ptr(ours.dli_fname).to_owned())
        };
        let preloaded = name
            .as_ref()
            .is_some_and(|n| app::preloaded(Path::new(std::ffi::OsStr::from_bytes(n.to_bytes()))));
        if let Some(n) = name {
            let _ = exec::LIBRARY.set(n);
        }
        // Linked into a program (-lqnet) the hooks stay off until qnet_init opts in.
        if preloaded {
            enable();
        }
    }
}

/// Turn interception on and install the fork handlers.
fn enable() {
    app::enable();
}

#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = on_load;

// ---- sockets ---------------------------------------------------------------------------

/// `connect(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(real) = real!(connect: fn(c_int, *const sockaddr, socklen_t) -> c_int) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(fd, addr, len) };
    }
    guarded("connect", -1, || {
        // SAFETY: connect's contract: `addr` points to `len` readable bytes.
        let sa = match unsafe { sockaddr_in(addr, len) } {
            Ok(Some(sa)) => sa,
            // SAFETY: as above.
            Ok(None) => return unsafe { real(fd, addr, len) },
            Err(e) => {
                set_errno(e);
                return -1;
            }
        };
        if fdtab::kind(fd) == Kind::None {
            match socket_type(fd) {
                libc::SOCK_STREAM => {}
                // A datagram socket we never saw created (inherited, passed in): same policy.
                libc::SOCK_DGRAM => {
                    // SAFETY: as above.
                    return decided(app::unknown_datagram(fd), || unsafe { real(fd, addr, len) });
                }
                // SAFETY: as above.
                _ => return unsafe { real(fd, addr, len) },
            }
        }
        // SAFETY: as above.
        decided(app::connect(fd, sa), || unsafe { real(fd, addr, len) })
    })
}

/// `close(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let Some(real) = real!(close: fn(c_int) -> c_int) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // The table is kept true whether or not interception is on (the C API's fds are in it
    // too), and even for qnet's own threads, so the engine's closes unmark its fds.
    if fdtab::kind(fd) == Kind::None {
        // SAFETY: the caller's argument, passed on unchanged.
        return unsafe { real(fd) };
    }
    guarded("close", -1, || {
        // SAFETY: as above.
        decided(app::close(fd), || unsafe { real(fd) })
    })
}

/// `fclose(3)`: the FILE's fd closes with it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fclose(f: *mut libc::FILE) -> c_int {
    let Some(real) = real!(fclose: fn(*mut libc::FILE) -> c_int) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if !fdtab::is_empty() && !f.is_null() {
        // SAFETY: `f` is the caller's open FILE.
        let fd = unsafe { libc::fileno(f) };
        if fd >= 0 && fdtab::kind(fd) != Kind::None {
            guarded("fclose", (), || {
                let _ = app::close(fd);
            });
        }
    }
    // SAFETY: the caller's argument, passed on unchanged.
    unsafe { real(f) }
}

/// Close `lo..=hi` except the engine's own fds, which the app cannot know about.
fn close_range_sparing(
    lo: c_uint,
    hi: c_uint,
    flags: c_int,
    real: impl Fn(c_uint, c_uint, c_int) -> c_int,
) -> c_int {
    let keep = fdtab::internal_in(lo, hi);
    let mut start = lo;
    for k in keep.iter().map(|&k| k as c_uint) {
        if k > start {
            let r = real(start, k - 1, flags);
            if r != 0 {
                return r;
            }
        }
        start = k.saturating_add(1);
    }
    // Tunneled fds in the range are gone (unless only marked close-on-exec).
    if flags & (libc::CLOSE_RANGE_CLOEXEC as c_int) == 0 {
        for fd in lo..=hi.min(1 << 16) {
            if fdtab::kind(fd as c_int) == Kind::Tunneled {
                fdtab::forget(fd as c_int);
            }
        }
    }
    if start <= hi && (keep.is_empty() || start > lo || keep[0] as c_uint != lo) {
        return real(start, hi, flags);
    }
    0
}

/// `close_range(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_range(lo: c_uint, hi: c_uint, flags: c_int) -> c_int {
    let Some(real) = real!(close_range: fn(c_uint, c_uint, c_int) -> c_int) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if fdtab::is_empty() || app::bypassed() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(lo, hi, flags) };
    }
    guarded("close_range", -1, || {
        // SAFETY: the caller's flags; ranges that skip our fds.
        close_range_sparing(lo, hi, flags, |a, b, f| unsafe { real(a, b, f) })
    })
}

/// `closefrom(3)`: glibc implements it without calling `close_range` through the PLT.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn closefrom(lo: c_int) {
    let Some(real) = real!(closefrom: fn(c_int) -> ()) else {
        return;
    };
    if fdtab::is_empty() || app::bypassed() || lo < 0 {
        // SAFETY: the caller's argument, passed on unchanged.
        return unsafe { real(lo) };
    }
    let range = real!(close_range: fn(c_uint, c_uint, c_int) -> c_int);
    guarded("closefrom", (), || match range {
        // SAFETY: close_range over ranges that skip our fds.
        Some(cr) => drop(close_range_sparing(
            lo as c_uint,
            c_uint::MAX,
            0,
            |a, b, f| unsafe { cr(a, b, f) },
        )),
        // SAFETY: the caller's argument (an old kernel: nothing to spare it with).
        None => unsafe { real(lo) },
    })
}

fn dup_result(old: c_int, new: c_int) -> c_int {
    if new >= 0 {
        fdtab::duplicate(old, new);
    }
    new
}

/// `dup(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(old: c_int) -> c_int {
    let Some(real) = real!(dup: fn(c_int) -> c_int) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: the caller's argument, passed on unchanged.
    let new = unsafe { real(old) };
    if matches!(fdtab::kind(old), Kind::Tunneled | Kind::Datagram) {
        return dup_result(old, new);
    }
    new
}

/// The shared body of `dup2` and `dup3`: `call` performs the real duplication.
fn dup_onto_hook(old: c_int, new: c_int, call: impl FnOnce() -> c_int) -> c_int {
    if fdtab::kind(old) == Kind::None && fdtab::kind(new) == Kind::None {
        return call();
    }
    if fdtab::kind(new) == Kind::Internal && !app::bypassed() {
        // The engine owns that number; replacing it would cut every tunneled connection.
        set_errno(libc::EBUSY);
        return -1;
    }
    let r = call();
    dup_result(old, r)
}

/// `dup2(2)`: the target number's old meaning ends.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    let Some(real) = real!(dup2: fn(c_int, c_int) -> c_int) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    dup_onto_hook(old, new, || unsafe { real(old, new) })
}

/// `dup3(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    let Some(real) = real!(dup3: fn(c_int, c_int, c_int) -> c_int) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    dup_onto_hook(old, new, || unsafe { real(old, new, flags) })
}

/// `fcntl(2)`; the third argument is read as a `long`, which covers every command's type
/// on the supported ABIs (variadic integer and pointer arguments share registers).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_long) -> c_int {
    let Some(real) = real!(fcntl: fn(c_int, c_int, c_long) -> c_int) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    let r = unsafe { real(fd, cmd, arg) };
    if (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC)
        && matches!(fdtab::kind(fd), Kind::Tunneled | Kind::Datagram)
    {
        return dup_result(fd, r);
    }
    r
}

/// `socket(2)`: UDP, raw and packet sockets on inet families would bypass the tunnel.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int {
    let Some(real) = real!(socket: fn(c_int, c_int, c_int) -> c_int) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(domain, ty, proto) };
    }
    guarded("socket", -1, || match app::socket(domain, ty) {
        Decision::Refuse(e) => {
            set_errno(e);
            -1
        }
        Decision::Done(app::NewSocket::Datagram) => {
            // SAFETY: as above.
            let fd = unsafe { real(domain, ty, proto) };
            if fd >= 0 {
                fdtab::mark_datagram(fd);
            }
            fd
        }
        // SAFETY: as above.
        _ => unsafe { real(domain, ty, proto) },
    })
}

/// `listen(2)`: inbound connections are not tunneled, so only loopback by default.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let Some(real) = real!(listen: fn(c_int, c_int) -> c_int) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(fd, backlog) };
    }
    guarded("listen", -1, || {
        let gsn = real!(getsockname: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int);
        // SAFETY: sockaddr_storage is plain old data; getsockname fills at most `len` bytes.
        let local = unsafe {
            let mut ss: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = size_of::<libc::sockaddr_storage>() as socklen_t;
            match gsn {
                Some(f) if f(fd, (&raw mut ss).cast(), &mut len) == 0 => {
                    sockaddr_in((&raw const ss).cast(), len).ok().flatten()
                }
                _ => None,
            }
        };
        // SAFETY: as above.
        decided(app::listen(local), || unsafe { real(fd, backlog) })
    })
}

type NameFn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;

/// The shared body of `getpeername` and `getsockname` for a tunneled fd.
unsafe fn name_hook(
    what: &str,
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    real: Option<NameFn>,
    decide: fn(c_int) -> Decision<SocketAddr>,
) -> c_int {
    let Some(real) = real else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if fdtab::kind(fd) != Kind::Tunneled || !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(fd, addr, len) };
    }
    guarded(what, -1, || match decide(fd) {
        // SAFETY: the function's contract: `addr`/`len` are the caller's buffers.
        Decision::Done(sa) => unsafe { write_sockaddr(sa, addr, len) },
        Decision::Refuse(e) => {
            set_errno(e);
            -1
        }
        // SAFETY: as above.
        Decision::Bypass => unsafe { real(fd, addr, len) },
    })
}

/// `getpeername(2)`: the original destination, not the socket underneath.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let real: Option<NameFn> =
        real!(getpeername: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int);
    // SAFETY: the caller's arguments.
    unsafe { name_hook("getpeername", fd, addr, len, real, app::peer_of) }
}

/// `getsockname(2)`: a local address as a connected TCP socket has one.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let real: Option<NameFn> =
        real!(getsockname: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int);
    // SAFETY: the caller's arguments.
    unsafe { name_hook("getsockname", fd, addr, len, real, app::local_of) }
}

/// `getsockopt(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    let Some(real) =
        real!(getsockopt: fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int)
    else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if fdtab::kind(fd) != Kind::Tunneled || !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(fd, level, name, val, len) };
    }
    guarded("getsockopt", -1, || {
        match app::sockopt_get(fd, level, name) {
            Decision::Done(bytes) => {
                if val.is_null() || len.is_null() {
                    set_errno(libc::EFAULT);
                    return -1;
                }
                // SAFETY: the caller's buffer of `*len` bytes; we copy at most that.
                unsafe {
                    let n = (*len as usize).min(bytes.len());
                    ptr::copy_nonoverlapping(bytes.as_ptr(), val.cast::<u8>(), n);
                    *len = n as socklen_t;
                }
                0
            }
            Decision::Refuse(e) => {
                set_errno(e);
                -1
            }
            // SAFETY: as above.
            Decision::Bypass => unsafe { real(fd, level, name, val, len) },
        }
    })
}

/// `setsockopt(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    let Some(real) = real!(setsockopt: fn(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int)
    else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if fdtab::kind(fd) != Kind::Tunneled || !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(fd, level, name, val, len) };
    }
    guarded("setsockopt", -1, || {
        if val.is_null() && len > 0 {
            set_errno(libc::EFAULT);
            return -1;
        }
        let bytes = if len == 0 {
            &[][..]
        } else {
            // SAFETY: the caller's buffer of `len` bytes.
            unsafe { std::slice::from_raw_parts(val.cast::<u8>(), len as usize) }
        };
        // SAFETY: as above.
        decided(app::sockopt_set(fd, level, name, bytes), || unsafe {
            real(fd, level, name, val, len)
        })
    })
}

/// A send with a destination (TCP Fast Open or `msg_name`) on an inet stream socket is a
/// connect: route it through the `connect` hook, then send without the address.
/// Returns `Some(result)` when handled, `None` to pass through.
unsafe fn send_with_address(
    fd: c_int,
    addr: *const sockaddr,
    len: socklen_t,
    flags: c_int,
) -> Option<Result<c_int, c_int>> {
    let tunneled = fdtab::kind(fd) == Kind::Tunneled;
    if addr.is_null() && !tunneled {
        return None;
    }
    if tunneled {
        // Already connected through the tunnel: TCP ignores the address; a unix socket would not.
        return Some(Ok(flags & !libc::MSG_FASTOPEN));
    }
    // SAFETY: the caller's address buffer of `len` bytes.
    let sa = match unsafe { sockaddr_in(addr, len) } {
        Ok(sa) => sa?,
        Err(e) => return Some(Err(e)),
    };
    let ty = socket_type(fd);
    if ty == libc::SOCK_DGRAM {
        // A datagram socket we never saw created (inherited, passed in): same policy.
        return match app::unknown_datagram(fd) {
            Decision::Refuse(e) => Some(Err(e)),
            _ => None,
        };
    }
    if flags & libc::MSG_FASTOPEN == 0 || ty != libc::SOCK_STREAM {
        return None;
    }
    match app::connect(fd, sa) {
        Decision::Done(()) => Some(Ok(flags & !libc::MSG_FASTOPEN)),
        Decision::Refuse(e) => Some(Err(e)),
        Decision::Bypass => None,
    }
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
        set_errno(libc::ENOSYS);
        return -1;
    };
    // The table first: it is the cheaper check, and decides alone for most sends.
    if addr.is_null() && fdtab::kind(fd) == Kind::None || !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(fd, buf, n, flags, addr, len) };
    }
    guarded("sendto", -1, || {
        if let Decision::Refuse(e) = app::datagram_send(fd) {
            set_errno(e);
            return -1;
        }
        // SAFETY: the caller's address buffer.
        match unsafe { send_with_address(fd, addr, len, flags) } {
            // SAFETY: the caller's data buffer, sent on the now tunneled fd without an address.
            Some(Ok(f)) => unsafe { real(fd, buf, n, f, ptr::null(), 0) },
            Some(Err(e)) => {
                set_errno(e);
                -1
            }
            // SAFETY: as above.
            None => unsafe { real(fd, buf, n, flags, addr, len) },
        }
    })
}

/// `sendmsg(2)`: `msg_name` with `MSG_FASTOPEN` is a connect too.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    let Some(real) = real!(sendmsg: fn(c_int, *const msghdr, c_int) -> ssize_t) else {
        set_errno(libc::ENOSYS);
        return -1;
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
        if let Decision::Refuse(e) = app::datagram_send(fd) {
            set_errno(e);
            return -1;
        }
        // SAFETY: the caller's address buffer.
        match unsafe { send_with_address(fd, name, namelen, flags) } {
            Some(Ok(f)) => {
                // SAFETY: a copy of the caller's msghdr without the address; the buffers it
                // points to stay the caller's.
                unsafe {
                    let mut m = ptr::read(msg);
                    m.msg_name = ptr::null_mut();
                    m.msg_namelen = 0;
                    real(fd, &m, f)
                }
            }
            Some(Err(e)) => {
                set_errno(e);
                -1
            }
            // SAFETY: as above.
            None => unsafe { real(fd, msg, flags) },
        }
    })
}

/// `recvmsg(2)`: an inet connection passed in with SCM_RIGHTS that bypasses the tunnel
/// is closed and the call fails (the fast path is untouched: only messages carrying
/// control data are looked at).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    let Some(real) = real!(recvmsg: fn(c_int, *mut msghdr, c_int) -> ssize_t) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    let r = unsafe { real(fd, msg, flags) };
    // SAFETY: `msg` is the caller's msghdr, just filled in by the kernel.
    if r < 0 || msg.is_null() || unsafe { (*msg).msg_controllen } == 0 || !intercepting() {
        return r;
    }
    guarded("recvmsg", -1, || {
        let mut refused = false;
        // SAFETY: walking the control buffer the kernel filled, with libc's CMSG macros.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<c_int>();
                    let n = ((*c).cmsg_len as usize - (data as usize - c as usize))
                        / size_of::<c_int>();
                    for i in 0..n {
                        let got = ptr::read_unaligned(data.add(i));
                        if let Decision::Refuse(_) = app::received_fd(got) {
                            refused = true;
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(msg, c);
            }
            if refused {
                // Close every passed fd: the app must not keep half of a message.
                let mut c = libc::CMSG_FIRSTHDR(msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                        let data = libc::CMSG_DATA(c).cast::<c_int>();
                        let n = ((*c).cmsg_len as usize - (data as usize - c as usize))
                            / size_of::<c_int>();
                        for i in 0..n {
                            close(ptr::read_unaligned(data.add(i)));
                        }
                    }
                    c = libc::CMSG_NXTHDR(msg, c);
                }
            }
        }
        if refused {
            set_errno(libc::EPERM);
            -1
        } else {
            r
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
        set_errno(libc::ENOSYS);
        return -1;
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

/// `syscall(3)`: raw socket calls bypass every libc hook, so route them to ours. It is
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
    );
    // The number first: most raw syscalls (futex, getrandom) must not pay for the rest.
    if routed && app::active() && !app::bypassed() {
        // SAFETY: the raw syscall's arguments, reinterpreted as its libc wrapper's.
        unsafe {
            match n {
                libc::SYS_connect => {
                    return connect(a1 as c_int, a2 as *const sockaddr, a3 as socklen_t) as c_long;
                }
                libc::SYS_sendto => {
                    return sendto(
                        a1 as c_int,
                        a2 as *const c_void,
                        a3 as size_t,
                        a4 as c_int,
                        a5 as *const sockaddr,
                        a6 as socklen_t,
                    ) as c_long;
                }
                libc::SYS_sendmsg => {
                    return sendmsg(a1 as c_int, a2 as *const msghdr, a3 as c_int) as c_long;
                }
                libc::SYS_sendmmsg => {
                    return sendmmsg(
                        a1 as c_int,
                        a2 as *mut libc::mmsghdr,
                        a3 as c_uint,
                        a4 as c_int,
                    ) as c_long;
                }
                libc::SYS_socket => return socket(a1 as c_int, a2 as c_int, a3 as c_int) as c_long,
                libc::SYS_close => return close(a1 as c_int) as c_long,
                libc::SYS_close_range => {
                    return close_range(a1 as c_uint, a2 as c_uint, a3 as c_int) as c_long;
                }
                libc::SYS_recvmsg => {
                    return recvmsg(a1 as c_int, a2 as *mut msghdr, a3 as c_int) as c_long;
                }
                _ => {}
            }
        }
    }
    let Some(real) =
        real!(syscall: fn(c_long, c_long, c_long, c_long, c_long, c_long, c_long) -> c_long)
    else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { real(n, a1, a2, a3, a4, a5, a6) }
}

// ---- names -----------------------------------------------------------------------------

fn config_or_fail() -> Option<&'static crate::config::Config> {
    match app::config() {
        Ok(c) => Some(c),
        Err(e) => {
            app::tell_once(&format!("{e}; name lookups fail, nothing is sent directly"));
            None
        }
    }
}

/// `getaddrinfo(3)`: names resolve at the relay; the app gets fake addresses.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    type Gai = unsafe extern "C" fn(
        *const c_char,
        *const c_char,
        *const addrinfo,
        *mut *mut addrinfo,
    ) -> c_int;
    let Some(real): Option<Gai> = real!(getaddrinfo: fn(*const c_char, *const c_char, *const addrinfo, *mut *mut addrinfo) -> c_int)
    else {
        return libc::EAI_SYSTEM;
    };
    if !intercepting() || node.is_null() || res.is_null() {
        // SAFETY: the caller's arguments, passed on unchanged (no node: no lookup).
        return unsafe { real(node, service, hints, res) };
    }
    guarded("getaddrinfo", libc::EAI_FAIL, || {
        let Some(cfg) = config_or_fail() else {
            return libc::EAI_FAIL;
        };
        let mut h: addrinfo = if hints.is_null() {
            // SAFETY: addrinfo is plain old data; all-zero means AF_UNSPEC, any type.
            unsafe { std::mem::zeroed() }
        } else {
            // SAFETY: `hints` is the caller's valid addrinfo.
            unsafe { ptr::read(hints) }
        };
        // SAFETY: getaddrinfo's contract: `node` is a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(node) }.to_str().unwrap_or("\u{0}");
        match resolve::lookup(cfg, name, h.ai_family) {
            Lookup::Real => {
                if cfg.intercept.remote_dns {
                    // A numeric host: forbid any lookup even if the string surprises glibc.
                    h.ai_flags |= libc::AI_NUMERICHOST;
                }
                // SAFETY: the caller's buffers with our copy of the hints.
                unsafe { real(node, service, &h, res) }
            }
            Lookup::NotFound => libc::EAI_NONAME,
            Lookup::Addrs(_, _) if h.ai_flags & libc::AI_NUMERICHOST != 0 => libc::EAI_NONAME,
            Lookup::Addrs(addrs, canon) => {
                let want_canon = h.ai_flags & libc::AI_CANONNAME != 0;
                h.ai_flags = (h.ai_flags | libc::AI_NUMERICHOST)
                    & !(libc::AI_CANONNAME | libc::AI_ADDRCONFIG);
                let mut head: *mut addrinfo = ptr::null_mut();
                let mut tail: *mut addrinfo = ptr::null_mut();
                let mut last_err = libc::EAI_NONAME;
                for ip in addrs {
                    let text = CString::new(ip.to_string()).expect("no NUL in an address");
                    h.ai_family = if ip.is_ipv4() {
                        libc::AF_INET
                    } else {
                        libc::AF_INET6
                    };
                    let mut out: *mut addrinfo = ptr::null_mut();
                    // SAFETY: a numeric host through the real resolver: no query leaves.
                    let r = unsafe { real(text.as_ptr(), service, &h, &mut out) };
                    if r != 0 || out.is_null() {
                        last_err = r;
                        continue;
                    }
                    // SAFETY: `out` is a list glibc allocated; glibc's freeaddrinfo frees
                    // node by node, so lists may be chained.
                    unsafe {
                        if head.is_null() {
                            head = out;
                        } else {
                            (*tail).ai_next = out;
                        }
                        tail = out;
                        while !(*tail).ai_next.is_null() {
                            tail = (*tail).ai_next;
                        }
                    }
                }
                if head.is_null() {
                    return last_err;
                }
                if want_canon {
                    let c = CString::new(canon).expect("validated name");
                    // SAFETY: strdup'd with malloc, as freeaddrinfo expects of ai_canonname.
                    unsafe { (*head).ai_canonname = libc::strdup(c.as_ptr()) };
                }
                // SAFETY: the caller's result pointer.
                unsafe { *res = head };
                0
            }
        }
    })
}

/// `freeaddrinfo(3)`: our answers are glibc-allocated lists, so glibc frees them.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn freeaddrinfo(ai: *mut addrinfo) {
    if let Some(real) = real!(freeaddrinfo: fn(*mut addrinfo) -> ()) {
        // SAFETY: the caller's list, passed on unchanged.
        unsafe { real(ai) }
    }
}

/// Lay a hostent for `name` and `addrs` (all of family `af`) out in the caller's buffer.
unsafe fn fill_hostent(
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    name: &str,
    addrs: &[IpAddr],
    af: c_int,
) -> Result<(), c_int> {
    if ret.is_null() || buf.is_null() {
        return Err(libc::EINVAL);
    }
    let alen = if af == libc::AF_INET { 4 } else { 16 };
    let ptrs = size_of::<*mut c_char>();
    let align = (buf as usize).next_multiple_of(ptrs) - buf as usize;
    let need = align + ptrs * (1 + addrs.len() + 1) + alen * addrs.len() + name.len() + 1;
    if need > buflen {
        return Err(libc::ERANGE);
    }
    // SAFETY: every write below is inside `buf[..need]`, which the caller provides
    // (`need <= buflen`); the pointer arrays are aligned by `align`.
    unsafe {
        let base = buf.add(align);
        let aliases = base.cast::<*mut c_char>();
        *aliases = ptr::null_mut();
        let list = aliases.add(1);
        let mut data = list.add(addrs.len() + 1).cast::<u8>();
        for (i, ip) in addrs.iter().enumerate() {
            match ip {
                IpAddr::V4(a) => ptr::copy_nonoverlapping(a.octets().as_ptr(), data, 4),
                IpAddr::V6(a) => ptr::copy_nonoverlapping(a.octets().as_ptr(), data, 16),
            }
            *list.add(i) = data.cast();
            data = data.add(alen);
        }
        *list.add(addrs.len()) = ptr::null_mut();
        ptr::copy_nonoverlapping(name.as_ptr(), data, name.len());
        *data.add(name.len()) = 0;
        *ret = hostent {
            h_name: data.cast(),
            h_aliases: aliases,
            h_addrtype: af,
            h_length: alen as c_int,
            h_addr_list: list,
        };
    }
    Ok(())
}

const HOST_NOT_FOUND: c_int = 1;
const NO_RECOVERY: c_int = 3;

/// The shared body of the `gethostbyname*_r` family. `Err(())`: ask the real function.
unsafe fn hostbyname_r(
    name: *const c_char,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> Result<c_int, ()> {
    let Some(cfg) = config_or_fail() else {
        // SAFETY: the caller's out-parameters (checked for null).
        unsafe { set_host_result(result, h_errnop, NO_RECOVERY) };
        return Ok(libc::EIO);
    };
    if name.is_null() {
        return Err(());
    }
    // SAFETY: a NUL-terminated name, by the function's contract.
    let n = unsafe { CStr::from_ptr(name) }.to_str().unwrap_or("\u{0}");
    let af = if af == libc::AF_INET6 {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    match resolve::lookup(cfg, n, af) {
        Lookup::Real => Err(()),
        Lookup::NotFound => {
            // SAFETY: as above.
            unsafe { set_host_result(result, h_errnop, HOST_NOT_FOUND) };
            Ok(0)
        }
        Lookup::Addrs(addrs, canon) => {
            // SAFETY: the caller's buffers of the given sizes.
            match unsafe { fill_hostent(ret, buf, buflen, &canon, &addrs, af) } {
                Ok(()) => {
                    if !result.is_null() {
                        // SAFETY: the caller's out-parameter.
                        unsafe { *result = ret };
                    }
                    Ok(0)
                }
                Err(e) => {
                    // SAFETY: as above.
                    unsafe { set_host_result(result, h_errnop, NO_RECOVERY) };
                    Ok(e)
                }
            }
        }
    }
}

unsafe fn set_host_result(result: *mut *mut hostent, h_errnop: *mut c_int, h: c_int) {
    // SAFETY: null-checked out-parameters of the caller.
    unsafe {
        if !result.is_null() {
            *result = ptr::null_mut();
        }
        if !h_errnop.is_null() {
            *h_errnop = h;
        }
    }
}

type HostR = unsafe extern "C" fn(
    *const c_char,
    *mut hostent,
    *mut c_char,
    size_t,
    *mut *mut hostent,
    *mut c_int,
) -> c_int;
type Host2R = unsafe extern "C" fn(
    *const c_char,
    c_int,
    *mut hostent,
    *mut c_char,
    size_t,
    *mut *mut hostent,
    *mut c_int,
) -> c_int;

/// `gethostbyname_r(3)` (Python's `gethostbyname_ex` uses it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname_r(
    name: *const c_char,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    let real: Option<HostR> = real!(gethostbyname_r: fn(*const c_char, *mut hostent, *mut c_char, size_t, *mut *mut hostent, *mut c_int) -> c_int);
    let Some(real) = real else {
        return libc::ENOSYS;
    };
    if !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(name, ret, buf, buflen, result, h_errnop) };
    }
    guarded("gethostbyname_r", libc::EIO, || {
        // SAFETY: the caller's arguments.
        match unsafe { hostbyname_r(name, libc::AF_INET, ret, buf, buflen, result, h_errnop) } {
            Ok(r) => r,
            // SAFETY: as above.
            Err(()) => unsafe { real(name, ret, buf, buflen, result, h_errnop) },
        }
    })
}

/// `gethostbyname2_r(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname2_r(
    name: *const c_char,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    let real: Option<Host2R> = real!(gethostbyname2_r: fn(*const c_char, c_int, *mut hostent, *mut c_char, size_t, *mut *mut hostent, *mut c_int) -> c_int);
    let Some(real) = real else {
        return libc::ENOSYS;
    };
    if !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(name, af, ret, buf, buflen, result, h_errnop) };
    }
    guarded("gethostbyname2_r", libc::EIO, || {
        // SAFETY: the caller's arguments.
        match unsafe { hostbyname_r(name, af, ret, buf, buflen, result, h_errnop) } {
            Ok(r) => r,
            // SAFETY: as above.
            Err(()) => unsafe { real(name, af, ret, buf, buflen, result, h_errnop) },
        }
    })
}

struct StaticHost {
    ent: hostent,
    buf: [u64; 160],
}

thread_local! {
    // The non-reentrant functions return a pointer into storage of our own, per thread
    // (glibc's is per process; per thread is strictly safer for the caller).
    static HOST: std::cell::UnsafeCell<StaticHost> = const {
        std::cell::UnsafeCell::new(StaticHost {
            ent: hostent {
                h_name: ptr::null_mut(),
                h_aliases: ptr::null_mut(),
                h_addrtype: 0,
                h_length: 0,
                h_addr_list: ptr::null_mut(),
            },
            buf: [0; 160],
        })
    };
}

/// Run one of the `_r` bodies into this thread's storage, as the non-reentrant functions
/// return their answer (the previous one is overwritten, as they document). `Err(())`:
/// ask the real function.
type HostFill = dyn FnOnce(
    *mut hostent,
    *mut c_char,
    size_t,
    *mut *mut hostent,
    *mut c_int,
) -> Result<c_int, ()>;

fn static_host(fill: Box<HostFill>) -> Result<*mut hostent, ()> {
    HOST.with(|h| {
        let h = h.get();
        let mut result: *mut hostent = ptr::null_mut();
        let mut herr: c_int = 0;
        // SAFETY: pointers into this thread's storage, valid for the call.
        let r = fill(
            unsafe { &raw mut (*h).ent },
            unsafe { (&raw mut (*h).buf).cast() },
            size_of::<[u64; 160]>(),
            &mut result,
            &mut herr,
        )?;
        if r != 0 || result.is_null() {
            set_h_errno(if herr == 0 { HOST_NOT_FOUND } else { herr });
        }
        Ok(result)
    })
}

fn static_host_by_name(name: *const c_char, af: c_int) -> Result<*mut hostent, ()> {
    // SAFETY: the caller's name; the rest points into this thread's storage.
    static_host(Box::new(move |e, b, l, r, h| unsafe {
        hostbyname_r(name, af, e, b, l, r, h)
    }))
}

/// `gethostbyname(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut hostent {
    let Some(real) = real!(gethostbyname: fn(*const c_char) -> *mut hostent) else {
        return ptr::null_mut();
    };
    if !intercepting() {
        // SAFETY: the caller's argument, passed on unchanged.
        return unsafe { real(name) };
    }
    guarded("gethostbyname", ptr::null_mut(), || {
        match static_host_by_name(name, libc::AF_INET) {
            Ok(p) => p,
            // SAFETY: as above.
            Err(()) => unsafe { real(name) },
        }
    })
}

/// `gethostbyname2(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname2(name: *const c_char, af: c_int) -> *mut hostent {
    let Some(real) = real!(gethostbyname2: fn(*const c_char, c_int) -> *mut hostent) else {
        return ptr::null_mut();
    };
    if !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(name, af) };
    }
    guarded("gethostbyname2", ptr::null_mut(), || {
        match static_host_by_name(name, af) {
            Ok(p) => p,
            // SAFETY: as above.
            Err(()) => unsafe { real(name, af) },
        }
    })
}

/// Decode the address argument of `gethostbyaddr`.
unsafe fn raw_ip(addr: *const c_void, len: socklen_t, af: c_int) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: the caller's buffer of `len` bytes, length-checked.
    unsafe {
        match af {
            libc::AF_INET if len >= 4 => Some(IpAddr::V4(Ipv4Addr::from(ptr::read_unaligned(
                addr.cast::<[u8; 4]>(),
            )))),
            libc::AF_INET6 if len >= 16 => Some(IpAddr::V6(Ipv6Addr::from(ptr::read_unaligned(
                addr.cast::<[u8; 16]>(),
            )))),
            _ => None,
        }
    }
}

/// Reverse lookups answer from the fake map and /etc/hosts only: no PTR query leaves.
#[allow(clippy::too_many_arguments)] // gethostbyaddr_r's own signature
unsafe fn hostbyaddr_r(
    addr: *const c_void,
    len: socklen_t,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> Result<c_int, ()> {
    let Some(cfg) = config_or_fail() else {
        // Fail closed: a reverse lookup through the real resolver would send a PTR query.
        // SAFETY: the caller's out-parameters (checked for null).
        unsafe { set_host_result(result, h_errnop, NO_RECOVERY) };
        return Ok(libc::EIO);
    };
    if !cfg.intercept.remote_dns {
        return Err(());
    }
    // SAFETY: the caller's address buffer.
    let Some(ip) = (unsafe { raw_ip(addr, len, af) }) else {
        // SAFETY: the caller's out-parameters.
        unsafe { set_host_result(result, h_errnop, HOST_NOT_FOUND) };
        return Ok(0);
    };
    match resolve::reverse(cfg, ip) {
        // SAFETY: the caller's buffers.
        Some(name) => match unsafe { fill_hostent(ret, buf, buflen, &name, &[ip], af) } {
            Ok(()) => {
                if !result.is_null() {
                    // SAFETY: the caller's out-parameter.
                    unsafe { *result = ret };
                }
                Ok(0)
            }
            Err(e) => {
                // SAFETY: as above.
                unsafe { set_host_result(result, h_errnop, NO_RECOVERY) };
                Ok(e)
            }
        },
        None => {
            // SAFETY: as above.
            unsafe { set_host_result(result, h_errnop, HOST_NOT_FOUND) };
            Ok(0)
        }
    }
}

/// `gethostbyaddr_r(3)` (Python's `gethostbyaddr` uses it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyaddr_r(
    addr: *const c_void,
    len: socklen_t,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    type F = unsafe extern "C" fn(
        *const c_void,
        socklen_t,
        c_int,
        *mut hostent,
        *mut c_char,
        size_t,
        *mut *mut hostent,
        *mut c_int,
    ) -> c_int;
    let real: Option<F> = real!(gethostbyaddr_r: fn(*const c_void, socklen_t, c_int, *mut hostent, *mut c_char, size_t, *mut *mut hostent, *mut c_int) -> c_int);
    let Some(real) = real else {
        return libc::ENOSYS;
    };
    if !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(addr, len, af, ret, buf, buflen, result, h_errnop) };
    }
    guarded("gethostbyaddr_r", libc::EIO, || {
        // SAFETY: the caller's arguments.
        match unsafe { hostbyaddr_r(addr, len, af, ret, buf, buflen, result, h_errnop) } {
            Ok(r) => r,
            // SAFETY: as above (remote DNS off).
            Err(()) => unsafe { real(addr, len, af, ret, buf, buflen, result, h_errnop) },
        }
    })
}

/// `gethostbyaddr(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyaddr(
    addr: *const c_void,
    len: socklen_t,
    af: c_int,
) -> *mut hostent {
    let Some(real) = real!(gethostbyaddr: fn(*const c_void, socklen_t, c_int) -> *mut hostent)
    else {
        return ptr::null_mut();
    };
    if !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(addr, len, af) };
    }
    guarded("gethostbyaddr", ptr::null_mut(), || {
        // SAFETY: the caller's address; the rest points into this thread's storage.
        let fill =
            Box::new(move |e, b, l, r, h| unsafe { hostbyaddr_r(addr, len, af, e, b, l, r, h) });
        match static_host(fill) {
            Ok(p) => p,
            // SAFETY: the caller's arguments (remote DNS off).
            Err(()) => unsafe { real(addr, len, af) },
        }
    })
}

/// `getnameinfo(3)`: fake addresses give back their names; others are numeric unless
/// /etc/hosts names them (no PTR query leaves).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getnameinfo(
    sa: *const sockaddr,
    salen: socklen_t,
    host: *mut c_char,
    hostlen: socklen_t,
    serv: *mut c_char,
    servlen: socklen_t,
    flags: c_int,
) -> c_int {
    type F = unsafe extern "C" fn(
        *const sockaddr,
        socklen_t,
        *mut c_char,
        socklen_t,
        *mut c_char,
        socklen_t,
        c_int,
    ) -> c_int;
    let real: Option<F> = real!(getnameinfo: fn(*const sockaddr, socklen_t, *mut c_char, socklen_t, *mut c_char, socklen_t, c_int) -> c_int);
    let Some(real) = real else {
        return libc::EAI_SYSTEM;
    };
    if !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(sa, salen, host, hostlen, serv, servlen, flags) };
    }
    guarded("getnameinfo", libc::EAI_FAIL, || {
        let Some(cfg) = config_or_fail() else {
            return libc::EAI_FAIL;
        };
        // SAFETY: the caller's address of `salen` bytes.
        let ip = match unsafe { sockaddr_in(sa, salen) } {
            Ok(a) => a.map(|a| a.ip()),
            Err(_) => return libc::EAI_FAMILY,
        };
        let (Some(ip), true) = (ip, cfg.intercept.remote_dns) else {
            // SAFETY: as above (not inet, or remote DNS off).
            return unsafe { real(sa, salen, host, hostlen, serv, servlen, flags) };
        };
        let want_host = !host.is_null() && hostlen > 0;
        let name = if want_host && flags & libc::NI_NUMERICHOST == 0 {
            resolve::reverse(cfg, ip)
        } else {
            None
        };
        if want_host
            && name.is_none()
            && flags & libc::NI_NAMEREQD != 0
            && flags & libc::NI_NUMERICHOST == 0
        {
            return libc::EAI_NONAME;
        }
        // The real function with NI_NUMERICHOST fills the service and a numeric host.
        // SAFETY: the caller's buffers.
        let r = unsafe {
            real(
                sa,
                salen,
                host,
                hostlen,
                serv,
                servlen,
                (flags | libc::NI_NUMERICHOST) & !libc::NI_NAMEREQD,
            )
        };
        if r != 0 {
            return r;
        }
        if let (Some(n), true) = (name, want_host) {
            if n.len() + 1 > hostlen as usize {
                return libc::EAI_OVERFLOW;
            }
            // SAFETY: `host` has `hostlen` bytes; the name and its NUL fit (checked).
            unsafe {
                ptr::copy_nonoverlapping(n.as_ptr(), host.cast::<u8>(), n.len());
                *host.add(n.len()) = 0;
            }
        }
        0
    })
}

macro_rules! refuse_resolver {
    ($($name:ident),*) => {$(
        /// Refused while remote DNS is on: it would send a DNS query from this host.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(_a: c_long, _b: c_long, _c: c_long, _d: c_long, _e: c_long, _f: c_long) -> c_int {
            if app::active() {
                app::tell_once(concat!("refused ", stringify!($name), ": raw DNS queries would bypass the tunnel"));
            }
            set_h_errno(NO_RECOVERY);
            set_errno(libc::ECONNREFUSED);
            -1
        }
    )*};
}

// The res_* family speaks DNS on the wire itself; with remote DNS there is no server to
// ask here. Refusing is what torsocks-style tools do; a program that needs them (dig)
// has nothing to gain from the tunnel's DNS and fails visibly instead of leaking.
refuse_resolver!(
    res_query,
    res_search,
    res_querydomain,
    res_send,
    res_nquery,
    res_nsearch,
    res_nquerydomain,
    res_nsend,
    __res_query,
    __res_search,
    __res_querydomain,
    __res_send
);
