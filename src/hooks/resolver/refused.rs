//! The libc calls that speak DNS or connect by themselves, inside libc where no other
//! hook sees them: refused while interception is on, passed through when it is off (a
//! program that links libqnet without opting in, or qnet's own threads).
//!
//! - `res_*`, `__res_*` (the names older headers bind to): raw DNS queries.
//! - `rcmd`, `rcmd_af`, `rexec`, `rexec_af`: a name lookup and a TCP connect through
//!   glibc's internal calls. `rresvport`/`rresvport_af` only bind a socket (its connect
//!   comes through the hook) and are left alone.
//! - `ruserok`, `ruserok_af`, `iruserok`, `iruserok_af`: host lookups of the names in
//!   hosts.equiv and .rhosts.
//! - `getnetbyname`, `getnetbyname_r`, `getnetbyaddr`, `getnetbyaddr_r`: the networks
//!   database, which nsswitch may send to DNS or NIS.
//!
//! Refusing is what torsocks-style tools do; a program that needs them (dig, rsh) has
//! nothing to gain from the tunnel's DNS and fails visibly instead of leaking.

use std::ffi::{c_char, c_int, c_uchar, c_void};
use std::ptr;

use libc::{netent, sa_family_t, size_t};

use super::NO_RECOVERY;
use crate::engine::preload::{self, Decision};
use crate::hooks::{guarded, intercepting, real, refuse, set_h_errno};

/// The decision for one of these calls: with interception on it is refused (it would
/// send from this host, outside the tunnel); with interception off the real one runs.
pub(super) fn decision(intercepting: bool) -> Decision<()> {
    if intercepting {
        Decision::Refuse(libc::ECONNREFUSED)
    } else {
        Decision::Bypass
    }
}

/// Fail an int-returning resolver call: -1, errno `e`, `h_errno` NO_RECOVERY.
fn res_fail(e: c_int) -> c_int {
    set_h_errno(NO_RECOVERY);
    refuse(e)
}

/// Fail a pointer-returning call: NULL, errno `e`, `h_errno` NO_RECOVERY.
fn null_fail<T>(e: c_int) -> *mut T {
    set_h_errno(NO_RECOVERY);
    crate::hooks::set_errno(e);
    ptr::null_mut()
}

/// Fail a `getnet*_r` call the way it reports errors: the errno as the return value,
/// `*result` NULL and `*h_errnop` NO_RECOVERY (each when given).
///
/// # Safety
/// `result` and `h_errnop` are NULL or valid for writing.
unsafe fn r_fail(e: c_int, result: *mut *mut netent, h_errnop: *mut c_int) -> c_int {
    // SAFETY: this function's contract: null-checked out-parameters of the caller.
    unsafe {
        if !result.is_null() {
            *result = ptr::null_mut();
        }
        if !h_errnop.is_null() {
            *h_errnop = NO_RECOVERY;
        }
    }
    e
}

/// Each entry: `hooked_name / public_name(args) -> ret, on_panic, why, |errno| failure`.
/// The public name is what the hooked one falls back to when `dlsym` cannot find it
/// (glibc 2.34 and later keep `__res_*` only as versioned compatibility symbols).
macro_rules! refused {
    ($($name:ident / $public:ident($($arg:ident: $ty:ty),*) -> $ret:ty, $panic:expr, $why:literal, |$e:ident| $fail:expr;)*) => {$(
        /// The real function behind the hook of the same name.
        pub(super) mod $name {
            #[allow(unused_imports)]
            use super::*;

            /// The next definition of the hooked name, or else of its public name.
            pub(in super::super) fn real() -> Option<unsafe extern "C" fn($($ty),*) -> $ret> {
                real!($name: fn($($ty),*) -> $ret).or_else(|| real!($public: fn($($ty),*) -> $ret))
            }
        }

        #[doc = concat!("`", stringify!($name), "(3)`: refused while interception is on (", $why, ").")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            let fail = |$e: c_int| -> $ret { $fail };
            guarded(stringify!($name), $panic, || match decision(intercepting()) {
                Decision::Refuse(e) => {
                    preload::tell_once(concat!("refused ", stringify!($name), ": ", $why));
                    fail(e)
                }
                _ => match $name::real() {
                    // SAFETY: the caller's arguments, passed on unchanged.
                    Some(real) => unsafe { real($($arg),*) },
                    None => fail(libc::ENOSYS),
                },
            })
        }
    )*};
}

// Each is declared with its own prototype (<resolv.h>, <netdb.h>), so a pass-through
// forwards every argument, the seventh of res_nquerydomain and rcmd_af included.
refused! {
    res_query / res_query(dname: *const c_char, class: c_int, ty: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    res_search / res_search(dname: *const c_char, class: c_int, ty: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    res_querydomain / res_querydomain(name: *const c_char, domain: *const c_char, class: c_int, ty: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    res_send / res_send(msg: *const c_uchar, msglen: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    res_nquery / res_nquery(statp: *mut c_void, dname: *const c_char, class: c_int, ty: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    res_nsearch / res_nsearch(statp: *mut c_void, dname: *const c_char, class: c_int, ty: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    res_nquerydomain / res_nquerydomain(statp: *mut c_void, name: *const c_char, domain: *const c_char, class: c_int, ty: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    res_nsend / res_nsend(statp: *mut c_void, msg: *const c_uchar, msglen: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    __res_query / res_query(dname: *const c_char, class: c_int, ty: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    __res_search / res_search(dname: *const c_char, class: c_int, ty: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    __res_querydomain / res_querydomain(name: *const c_char, domain: *const c_char, class: c_int, ty: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    __res_send / res_send(msg: *const c_uchar, msglen: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    __res_nquery / res_nquery(statp: *mut c_void, dname: *const c_char, class: c_int, ty: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    __res_nsearch / res_nsearch(statp: *mut c_void, dname: *const c_char, class: c_int, ty: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    __res_nquerydomain / res_nquerydomain(statp: *mut c_void, name: *const c_char, domain: *const c_char, class: c_int, ty: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    __res_nsend / res_nsend(statp: *mut c_void, msg: *const c_uchar, msglen: c_int, answer: *mut c_uchar, anslen: c_int) -> c_int, -1, "raw DNS queries would bypass the tunnel", |e| res_fail(e);
    rcmd / rcmd(ahost: *mut *mut c_char, port: u16, locuser: *const c_char, remuser: *const c_char, cmd: *const c_char, fd2p: *mut c_int) -> c_int, -1, "it looks the host up and connects inside libc, bypassing the tunnel", |e| refuse(e);
    rcmd_af / rcmd_af(ahost: *mut *mut c_char, port: u16, locuser: *const c_char, remuser: *const c_char, cmd: *const c_char, fd2p: *mut c_int, af: sa_family_t) -> c_int, -1, "it looks the host up and connects inside libc, bypassing the tunnel", |e| refuse(e);
    rexec / rexec(ahost: *mut *mut c_char, port: c_int, user: *const c_char, pass: *const c_char, cmd: *const c_char, fd2p: *mut c_int) -> c_int, -1, "it looks the host up and connects inside libc, bypassing the tunnel", |e| refuse(e);
    rexec_af / rexec_af(ahost: *mut *mut c_char, port: c_int, user: *const c_char, pass: *const c_char, cmd: *const c_char, fd2p: *mut c_int, af: sa_family_t) -> c_int, -1, "it looks the host up and connects inside libc, bypassing the tunnel", |e| refuse(e);
    ruserok / ruserok(rhost: *const c_char, suser: c_int, remuser: *const c_char, locuser: *const c_char) -> c_int, -1, "its host lookups would bypass the tunnel", |e| refuse(e);
    ruserok_af / ruserok_af(rhost: *const c_char, suser: c_int, remuser: *const c_char, locuser: *const c_char, af: sa_family_t) -> c_int, -1, "its host lookups would bypass the tunnel", |e| refuse(e);
    iruserok / iruserok(raddr: u32, suser: c_int, remuser: *const c_char, locuser: *const c_char) -> c_int, -1, "its host lookups would bypass the tunnel", |e| refuse(e);
    iruserok_af / iruserok_af(raddr: *const c_void, suser: c_int, remuser: *const c_char, locuser: *const c_char, af: sa_family_t) -> c_int, -1, "its host lookups would bypass the tunnel", |e| refuse(e);
    getnetbyname / getnetbyname(name: *const c_char) -> *mut netent, ptr::null_mut(), "the networks database may query DNS or NIS directly", |e| null_fail(e);
    getnetbyaddr / getnetbyaddr(net: u32, ty: c_int) -> *mut netent, ptr::null_mut(), "the networks database may query DNS or NIS directly", |e| null_fail(e);
    // SAFETY: the caller's out-parameters, NULL or valid by the _r contract.
    getnetbyname_r / getnetbyname_r(name: *const c_char, ret: *mut netent, buf: *mut c_char, buflen: size_t, result: *mut *mut netent, h_errnop: *mut c_int) -> c_int, libc::EIO, "the networks database may query DNS or NIS directly", |e| unsafe { r_fail(e, result, h_errnop) };
    // SAFETY: as above.
    getnetbyaddr_r / getnetbyaddr_r(net: u32, ty: c_int, ret: *mut netent, buf: *mut c_char, buflen: size_t, result: *mut *mut netent, h_errnop: *mut c_int) -> c_int, libc::EIO, "the networks database may query DNS or NIS directly", |e| unsafe { r_fail(e, result, h_errnop) };
}
