//! The real libc functions behind our hooks: the next definition in load order
//! ([`crate::os::next_symbol`]), looked up once per function.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Look a symbol up once; `0` if there is none (e.g. `close_range` on an old libc).
pub(super) fn lookup(cache: &AtomicUsize, name: &'static [u8]) -> usize {
    let p = cache.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    let f = std::ffi::CStr::from_bytes_with_nul(name)
        .ok()
        .and_then(crate::os::next_symbol)
        .unwrap_or(0);
    cache.store(f, Ordering::Relaxed);
    f
}

/// `real!(name: fn(args) -> ret)`: the next definition of `name`, as a callable
/// `Option<unsafe extern "C" fn(args) -> ret>`.
macro_rules! real {
    ($name:ident : fn($($arg:ty),* $(,)?) -> $ret:ty) => {{
        static CACHE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let p = $crate::hooks::real::lookup(&CACHE, concat!(stringify!($name), "\0").as_bytes());
        if p == 0 {
            None
        } else {
            // SAFETY: `p` is the address of the C function `name`, whose prototype is the
            // one written at this call site (checked against the libc headers by hand).
            Some(unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($arg),*) -> $ret>(p) })
        }
    }};
}
pub(super) use real;
