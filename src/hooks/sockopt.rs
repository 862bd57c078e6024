//! What a tunneled fd says about itself: `getpeername` and `getsockname` answer as the
//! TCP socket the app thinks it has; `getsockopt`/`setsockopt` answer and remember the
//! options a unix socket lacks.

use std::ffi::{c_int, c_void};
use std::net::SocketAddr;

use libc::{sockaddr, socklen_t};

use super::{decided, guarded, intercepting, real, refuse};
use crate::engine::fdtab::{self, Kind};
use crate::engine::preload::{self, Decision};

type NameFn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;

/// The shared body of `getpeername` and `getsockname` for a tunneled fd.
///
/// # Safety
/// The caller's arguments of the C function: `len` NULL or valid, `addr` NULL or `*len`
/// writable bytes.
unsafe fn name_hook(
    what: &str,
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    real: Option<NameFn>,
    decide: fn(c_int) -> Decision<SocketAddr>,
) -> c_int {
    let Some(real) = real else {
        return refuse(libc::ENOSYS);
    };
    if fdtab::kind(fd) != Kind::Tunneled || !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(fd, addr, len) };
    }
    guarded(what, -1, || match decide(fd) {
        // SAFETY: the function's contract: `addr`/`len` are the caller's buffers.
        Decision::Done(sa) => match unsafe { crate::sockaddr::write(sa, addr, len) } {
            Ok(()) => 0,
            Err(_) => refuse(libc::EFAULT),
        },
        Decision::Refuse(e) => refuse(e),
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
    unsafe { name_hook("getpeername", fd, addr, len, real, preload::peer_of) }
}

/// `getsockname(2)`: a local address as a connected TCP socket has one.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let real: Option<NameFn> =
        real!(getsockname: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int);
    // SAFETY: the caller's arguments.
    unsafe { name_hook("getsockname", fd, addr, len, real, preload::local_of) }
}

/// Copy an option's value into a caller's buffer as `getsockopt` does: as much as fits;
/// returns the length copied (what `*optlen` becomes).
fn copy_option(value: &[u8], out: &mut [u8]) -> usize {
    let n = value.len().min(out.len());
    out[..n].copy_from_slice(&value[..n]);
    n
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
        return refuse(libc::ENOSYS);
    };
    if fdtab::kind(fd) != Kind::Tunneled || !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(fd, level, name, val, len) };
    }
    guarded("getsockopt", -1, || {
        match preload::sockopt_get(fd, level, name) {
            Decision::Done(bytes) => {
                if val.is_null() || len.is_null() {
                    return refuse(libc::EFAULT);
                }
                // SAFETY: the caller's buffer of `*len` bytes and its valid length; the
                // slice covers no more than the option's bytes.
                unsafe {
                    let n = (*len as usize).min(bytes.len());
                    let out = std::slice::from_raw_parts_mut(val.cast::<u8>(), n);
                    *len = copy_option(&bytes, out) as socklen_t;
                }
                0
            }
            Decision::Refuse(e) => refuse(e),
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
        return refuse(libc::ENOSYS);
    };
    if fdtab::kind(fd) != Kind::Tunneled || !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(fd, level, name, val, len) };
    }
    guarded("setsockopt", -1, || {
        if val.is_null() && len > 0 {
            return refuse(libc::EFAULT);
        }
        let bytes = if len == 0 {
            &[][..]
        } else {
            // SAFETY: the caller's buffer of `len` bytes.
            unsafe { std::slice::from_raw_parts(val.cast::<u8>(), len as usize) }
        };
        // SAFETY: as above.
        decided(preload::sockopt_set(fd, level, name, bytes), || unsafe {
            real(fd, level, name, val, len)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_option_truncates_to_the_callers_length() {
        let mut out = [0u8; 2];
        assert_eq!(copy_option(&7i32.to_ne_bytes(), &mut out), 2);
        assert_eq!(out, [7, 0]);
        let mut out = [0u8; 8];
        assert_eq!(copy_option(&[1, 2, 3], &mut out), 3);
    }
}
