//! Names: `getaddrinfo`, the `gethostby*` family and `getnameinfo`. Names resolve at the
//! relay and the app gets fake addresses (`engine::resolve`); reverse lookups answer from
//! the fake map and /etc/hosts only; no DNS query leaves. The calls that would speak DNS
//! or connect by themselves inside libc (`res_*`, `rcmd*`, `getnetby*` …) are refused
//! in [`refused`].

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::net::{IpAddr, SocketAddr};
use std::ptr;

use libc::{addrinfo, hostent, size_t, sockaddr, socklen_t};

use super::marshal::{AddrinfoChain, fill_hostent, raw_ip};
use super::{guarded, inet_arg, intercepting, real, set_h_errno};
use crate::config::Config;
use crate::engine::preload;
use crate::engine::resolve::{self, Lookup};

/// `h_errno` values (`<netdb.h>`).
const HOST_NOT_FOUND: c_int = 1;
const NO_RECOVERY: c_int = 3;

/// The config, or `None` after telling the user once why every lookup now fails.
fn config_or_fail() -> Option<&'static Config> {
    match preload::config() {
        Ok(c) => Some(c),
        Err(e) => {
            preload::tell_once(&format!("{e}; name lookups fail, nothing is sent directly"));
            None
        }
    }
}

/// A C string argument as text; a string that is not UTF-8 never names a host.
///
/// # Safety
/// `p` is a NUL-terminated string.
unsafe fn name_arg<'a>(p: *const c_char) -> &'a str {
    // SAFETY: this function's contract.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("\u{0}")
}

// ---- getaddrinfo ----------------------------------------------------------------------

type Gai = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    *const addrinfo,
    *mut *mut addrinfo,
) -> c_int;

/// What `getaddrinfo` does with a name.
#[derive(Debug)]
enum GaiPlan {
    /// The real function with these hints (a numeric host, or remote DNS off).
    Real(addrinfo),
    /// Fail with this `EAI_*` code.
    Fail(c_int),
    /// These addresses, each through the real function as a numeric host with `hints`,
    /// and `canon` as the first answer's canonical name when the caller asked for one.
    Answer {
        addrs: Vec<IpAddr>,
        canon: Option<String>,
        hints: addrinfo,
    },
}

/// Plan the answer to a lookup whose result is `found`, for the caller's `hints`.
fn gai_plan(found: Lookup, remote_dns: bool, mut hints: addrinfo) -> GaiPlan {
    match found {
        Lookup::Real => {
            if remote_dns {
                // A numeric host: forbid any lookup even if the string surprises glibc.
                hints.ai_flags |= libc::AI_NUMERICHOST;
            }
            GaiPlan::Real(hints)
        }
        Lookup::NotFound => GaiPlan::Fail(libc::EAI_NONAME),
        // The caller asked for a numeric host and this is a name.
        Lookup::Addrs(..) if hints.ai_flags & libc::AI_NUMERICHOST != 0 => {
            GaiPlan::Fail(libc::EAI_NONAME)
        }
        Lookup::Addrs(addrs, canon) => {
            let canon = (hints.ai_flags & libc::AI_CANONNAME != 0).then_some(canon);
            hints.ai_flags = (hints.ai_flags | libc::AI_NUMERICHOST)
                & !(libc::AI_CANONNAME | libc::AI_ADDRCONFIG);
            GaiPlan::Answer {
                addrs,
                canon,
                hints,
            }
        }
    }
}

/// Build the answer list for `addrs`: each address through the real function as a
/// numeric host (so glibc allocates every node and its `freeaddrinfo` frees them), the
/// lists chained. The last error when no address gave a list.
///
/// # Safety
/// `real` is glibc's `getaddrinfo`; `service` is NULL or a NUL-terminated string.
unsafe fn numeric_answers(
    real: Gai,
    addrs: &[IpAddr],
    service: *const c_char,
    mut hints: addrinfo,
) -> Result<*mut addrinfo, c_int> {
    let mut chain = AddrinfoChain::new();
    let mut last_err = libc::EAI_NONAME;
    for ip in addrs {
        let text = CString::new(ip.to_string()).expect("no NUL in an address");
        hints.ai_family = if ip.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let mut out: *mut addrinfo = ptr::null_mut();
        // SAFETY: a numeric host through the real resolver: no query leaves.
        let r = unsafe { real(text.as_ptr(), service, &hints, &mut out) };
        if r != 0 || out.is_null() {
            last_err = r;
            continue;
        }
        // SAFETY: a list glibc just allocated, ours alone.
        unsafe { chain.append(out) };
    }
    let head = chain.into_head();
    if head.is_null() {
        Err(last_err)
    } else {
        Ok(head)
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
        let h: addrinfo = if hints.is_null() {
            // SAFETY: addrinfo is plain old data; all-zero means AF_UNSPEC, any type.
            unsafe { std::mem::zeroed() }
        } else {
            // SAFETY: `hints` is the caller's valid addrinfo.
            unsafe { ptr::read(hints) }
        };
        // SAFETY: getaddrinfo's contract: `node` is a NUL-terminated string.
        let name = unsafe { name_arg(node) };
        let found = resolve::lookup(cfg, name, h.ai_family);
        match gai_plan(found, cfg.intercept.remote_dns, h) {
            // SAFETY: the caller's buffers with our copy of the hints.
            GaiPlan::Real(h) => unsafe { real(node, service, &h, res) },
            GaiPlan::Fail(e) => e,
            GaiPlan::Answer {
                addrs,
                canon,
                hints,
            } => {
                // SAFETY: the caller's service string.
                let head = match unsafe { numeric_answers(real, &addrs, service, hints) } {
                    Ok(h) => h,
                    Err(e) => return e,
                };
                if let Some(c) = canon {
                    let c = CString::new(c).expect("validated name");
                    // SAFETY: strdup'd with malloc, as freeaddrinfo expects of ai_canonname.
                    unsafe { (*head).ai_canonname = libc::strdup(c.as_ptr()) };
                }
                // SAFETY: the caller's result pointer (checked for NULL above).
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

// ---- gethostby* -----------------------------------------------------------------------

/// What a `gethostby*` call answers.
#[derive(Debug, PartialEq, Eq)]
enum HostAnswer {
    /// Ask the real function.
    Real,
    /// The config is unusable: fail (`EIO`, `NO_RECOVERY`) rather than look up directly.
    Fail,
    /// No such host.
    NotFound,
    /// This name and these addresses.
    Found(String, Vec<IpAddr>),
}

/// The forward lookup of the `gethostbyname*` family (`af`: `AF_INET` unless `AF_INET6`).
fn by_name(name: Option<&str>, af: c_int) -> HostAnswer {
    let Some(cfg) = config_or_fail() else {
        return HostAnswer::Fail;
    };
    let Some(name) = name else {
        return HostAnswer::Real;
    };
    match resolve::lookup(cfg, name, af) {
        Lookup::Real => HostAnswer::Real,
        Lookup::NotFound => HostAnswer::NotFound,
        Lookup::Addrs(addrs, canon) => HostAnswer::Found(canon, addrs),
    }
}

/// The reverse lookup of `gethostbyaddr*`: the fake map and /etc/hosts, no PTR query.
fn by_addr(ip: Option<IpAddr>) -> HostAnswer {
    let Some(cfg) = config_or_fail() else {
        // A reverse lookup through the real resolver would send a PTR query.
        return HostAnswer::Fail;
    };
    if !cfg.intercept.remote_dns {
        return HostAnswer::Real;
    }
    let Some(ip) = ip else {
        return HostAnswer::NotFound;
    };
    match resolve::reverse(cfg, ip) {
        Some(name) => HostAnswer::Found(name, vec![ip]),
        None => HostAnswer::NotFound,
    }
}

/// The caller's output arguments of a `gethostby*_r` function.
#[derive(Clone, Copy)]
struct HostOut {
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
}

impl HostOut {
    /// Report a failure: `*result` NULL and `*h_errnop` = `h` (each when given).
    ///
    /// # Safety
    /// Each pointer is NULL or valid for writing.
    unsafe fn failed(self, h: c_int) {
        // SAFETY: null-checked out-parameters of the caller.
        unsafe {
            if !self.result.is_null() {
                *self.result = ptr::null_mut();
            }
            if !self.h_errnop.is_null() {
                *self.h_errnop = h;
            }
        }
    }

    /// Deliver `answer` as the `_r` functions do: the return value (0 or an errno, with
    /// `*result` NULL and `*h_errnop` set on failure); `Err(())` to ask the real function.
    ///
    /// # Safety
    /// The pointers are the caller's, valid as the `_r` functions' contract says.
    unsafe fn deliver(self, answer: HostAnswer, af: c_int) -> Result<c_int, ()> {
        let (r, h) = match answer {
            HostAnswer::Real => return Err(()),
            HostAnswer::Fail => (libc::EIO, NO_RECOVERY),
            HostAnswer::NotFound => (0, HOST_NOT_FOUND),
            HostAnswer::Found(name, addrs) => {
                // SAFETY: the caller's buffers of the given sizes.
                match unsafe { fill_hostent(self.ret, self.buf, self.buflen, &name, &addrs, af) } {
                    Ok(()) => {
                        if !self.result.is_null() {
                            // SAFETY: the caller's out-parameter.
                            unsafe { *self.result = self.ret };
                        }
                        return Ok(0);
                    }
                    Err(e) => (e, NO_RECOVERY),
                }
            }
        };
        // SAFETY: the caller's out-parameters.
        unsafe { self.failed(h) };
        Ok(r)
    }
}

/// The family a `gethostbyname*` answer has: IPv6 only when asked for.
fn host_family(af: c_int) -> c_int {
    if af == libc::AF_INET6 {
        libc::AF_INET6
    } else {
        libc::AF_INET
    }
}

/// The shared body of the `gethostbyname*_r` family. `Err(())`: ask the real function.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `out` holds the caller's valid pointers.
unsafe fn hostbyname_r(name: *const c_char, af: c_int, out: HostOut) -> Result<c_int, ()> {
    // SAFETY: a NUL-terminated name when not NULL, by the function's contract.
    let n = (!name.is_null()).then(|| unsafe { name_arg(name) });
    let af = host_family(af);
    // SAFETY: the caller's out-parameters.
    unsafe { out.deliver(by_name(n, af), af) }
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
    let out = HostOut {
        ret,
        buf,
        buflen,
        result,
        h_errnop,
    };
    guarded("gethostbyname_r", libc::EIO, || {
        // SAFETY: the caller's arguments.
        match unsafe { hostbyname_r(name, libc::AF_INET, out) } {
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
    let out = HostOut {
        ret,
        buf,
        buflen,
        result,
        h_errnop,
    };
    guarded("gethostbyname2_r", libc::EIO, || {
        // SAFETY: the caller's arguments.
        match unsafe { hostbyname_r(name, af, out) } {
            Ok(r) => r,
            // SAFETY: as above.
            Err(()) => unsafe { real(name, af, ret, buf, buflen, result, h_errnop) },
        }
    })
}

/// Storage for the non-reentrant functions' answers.
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
/// return their answer (the previous one is overwritten, as they document), with
/// `h_errno` set on failure. `Err(())`: ask the real function.
fn static_host(fill: impl FnOnce(HostOut) -> Result<c_int, ()>) -> Result<*mut hostent, ()> {
    HOST.with(|h| {
        let h = h.get();
        let mut result: *mut hostent = ptr::null_mut();
        let mut herr: c_int = 0;
        let out = HostOut {
            // SAFETY: pointers into this thread's storage, valid for the call.
            ret: unsafe { &raw mut (*h).ent },
            // SAFETY: as above.
            buf: unsafe { (&raw mut (*h).buf).cast() },
            buflen: size_of::<[u64; 160]>(),
            result: &mut result,
            h_errnop: &mut herr,
        };
        let r = fill(out)?;
        if r != 0 || result.is_null() {
            set_h_errno(if herr == 0 { HOST_NOT_FOUND } else { herr });
        }
        Ok(result)
    })
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
        // SAFETY: the caller's name; the rest points into this thread's storage.
        match static_host(|out| unsafe { hostbyname_r(name, libc::AF_INET, out) }) {
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
        // SAFETY: the caller's name; the rest points into this thread's storage.
        match static_host(|out| unsafe { hostbyname_r(name, af, out) }) {
            Ok(p) => p,
            // SAFETY: as above.
            Err(()) => unsafe { real(name, af) },
        }
    })
}

/// The shared body of `gethostbyaddr` and `gethostbyaddr_r`. `Err(())`: ask the real
/// function (remote DNS off).
///
/// # Safety
/// `addr` is NULL or `len` readable bytes; `out` holds the caller's valid pointers.
unsafe fn hostbyaddr_r(
    addr: *const c_void,
    len: socklen_t,
    af: c_int,
    out: HostOut,
) -> Result<c_int, ()> {
    // SAFETY: the caller's address buffer.
    let ip = unsafe { raw_ip(addr, len, af) };
    // SAFETY: the caller's out-parameters.
    unsafe { out.deliver(by_addr(ip), af) }
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
    let out = HostOut {
        ret,
        buf,
        buflen,
        result,
        h_errnop,
    };
    guarded("gethostbyaddr_r", libc::EIO, || {
        // SAFETY: the caller's arguments.
        match unsafe { hostbyaddr_r(addr, len, af, out) } {
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
        match static_host(|out| unsafe { hostbyaddr_r(addr, len, af, out) }) {
            Ok(p) => p,
            // SAFETY: the caller's arguments (remote DNS off).
            Err(()) => unsafe { real(addr, len, af) },
        }
    })
}

// ---- getnameinfo ----------------------------------------------------------------------

/// What `getnameinfo` does.
#[derive(Debug, PartialEq, Eq)]
enum NameInfo {
    /// The real function with the caller's flags (not inet, or remote DNS off).
    Real,
    /// Fail with this `EAI_*` code.
    Fail(c_int),
    /// The real function with `NI_NUMERICHOST` (service and numeric host), then this
    /// name in place of the numeric host when there is one.
    Numeric(Option<String>),
}

/// Decide `getnameinfo` for the decoded address argument, `want_host`: the caller
/// gave a host buffer.
fn nameinfo_op(addr: Result<Option<SocketAddr>, c_int>, want_host: bool, flags: c_int) -> NameInfo {
    let Some(cfg) = config_or_fail() else {
        return NameInfo::Fail(libc::EAI_FAIL);
    };
    let ip = match addr {
        Ok(a) => a.map(|a| a.ip()),
        Err(_) => return NameInfo::Fail(libc::EAI_FAMILY),
    };
    let (Some(ip), true) = (ip, cfg.intercept.remote_dns) else {
        return NameInfo::Real;
    };
    let numeric = flags & libc::NI_NUMERICHOST != 0;
    let name = if want_host && !numeric {
        resolve::reverse(cfg, ip)
    } else {
        None
    };
    if want_host && name.is_none() && flags & libc::NI_NAMEREQD != 0 && !numeric {
        return NameInfo::Fail(libc::EAI_NONAME);
    }
    NameInfo::Numeric(name)
}

/// Put `name` and its NUL in a caller's host buffer; `EAI_OVERFLOW` if it does not fit.
fn copy_host(name: &str, out: &mut [u8]) -> Result<(), c_int> {
    let Some(dst) = out.get_mut(..name.len() + 1) else {
        return Err(libc::EAI_OVERFLOW);
    };
    dst[..name.len()].copy_from_slice(name.as_bytes());
    dst[name.len()] = 0;
    Ok(())
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
        let want_host = !host.is_null() && hostlen > 0;
        // SAFETY: the caller's address of `salen` bytes.
        let addr = unsafe { inet_arg(sa, salen) };
        let name = match nameinfo_op(addr, want_host, flags) {
            NameInfo::Real => {
                // SAFETY: the caller's arguments, passed on unchanged (not inet, or remote
                // DNS off).
                return unsafe { real(sa, salen, host, hostlen, serv, servlen, flags) };
            }
            NameInfo::Fail(e) => return e,
            NameInfo::Numeric(name) => name,
        };
        let numeric = (flags | libc::NI_NUMERICHOST) & !libc::NI_NAMEREQD;
        // The real function with NI_NUMERICHOST fills the service and a numeric host.
        // SAFETY: the caller's buffers.
        let r = unsafe { real(sa, salen, host, hostlen, serv, servlen, numeric) };
        match (r, name, want_host) {
            (0, Some(n), true) => {
                // SAFETY: `host` has `hostlen` bytes (want_host: not NULL).
                let out =
                    unsafe { std::slice::from_raw_parts_mut(host.cast::<u8>(), hostlen as usize) };
                copy_host(&n, out).map_or_else(|e| e, |()| 0)
            }
            (r, _, _) => r,
        }
    })
}

mod refused;

#[cfg(test)]
mod tests;
