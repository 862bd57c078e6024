//! The few process-level libc facilities that several layers share, written once: the
//! next definition of a symbol in load order, fork handlers, the shell's PATH search,
//! the host's interface addresses and the effective uid.
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

/// Register `pthread_atfork` handlers. Callers guard with a `Once`: handlers registered
/// twice run twice.
pub(crate) fn on_fork(prepare: extern "C" fn(), parent: extern "C" fn(), child: extern "C" fn()) {
    // SAFETY: the handlers are plain functions of this library, valid for the process's
    // life (glibc drops them if the library is unloaded).
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
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

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
