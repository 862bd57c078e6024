//! Fd lifetimes: the close family keeps the table true and the engine's fds open; the
//! dup family and `F_DUPFD` carry a tunneled or datagram mark to the new number.

use std::ffi::{c_int, c_long, c_uint};

use super::{decided, guarded, real, refuse};
use crate::engine::fdtab::{self, Kind};
use crate::engine::preload;

/// `close(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let Some(real) = real!(close: fn(c_int) -> c_int) else {
        return refuse(libc::ENOSYS);
    };
    // The table is kept true whether or not interception is on (the C API's fds are in it
    // too), and even for qnet's own threads, so the engine's closes unmark its fds.
    if fdtab::kind(fd) == Kind::None {
        // SAFETY: the caller's argument, passed on unchanged.
        return unsafe { real(fd) };
    }
    guarded("close", -1, || {
        // SAFETY: as above.
        decided(preload::close(fd), || unsafe { real(fd) })
    })
}

/// `fclose(3)`: the FILE's fd closes with it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fclose(f: *mut libc::FILE) -> c_int {
    let Some(real) = real!(fclose: fn(*mut libc::FILE) -> c_int) else {
        return refuse(libc::ENOSYS);
    };
    if !fdtab::is_empty() && !f.is_null() {
        // SAFETY: `f` is the caller's open FILE.
        let fd = unsafe { libc::fileno(f) };
        if fd >= 0 && fdtab::kind(fd) != Kind::None {
            guarded("fclose", (), || {
                let _ = preload::close(fd);
            });
        }
    }
    // SAFETY: the caller's argument, passed on unchanged.
    unsafe { real(f) }
}

/// The ranges of `lo..=hi` left when the engine's fds `keep` (ascending, inside the
/// range) are taken out. With nothing to keep it is the caller's range as given, so the
/// real call judges it (`lo > hi` is its EINVAL).
fn ranges_around(lo: c_uint, hi: c_uint, keep: &[c_uint]) -> Vec<(c_uint, c_uint)> {
    if keep.is_empty() {
        return vec![(lo, hi)];
    }
    let mut out = Vec::with_capacity(keep.len() + 1);
    let mut start = lo;
    for &k in keep {
        if k > start {
            out.push((start, k - 1));
        }
        match k.checked_add(1) {
            Some(next) => start = next,
            None => return out,
        }
    }
    if start <= hi {
        out.push((start, hi));
    }
    out
}

/// Close `lo..=hi` except the engine's own fds, which the app cannot know about, and
/// forget the tunneled and datagram fds of each range just before closing it (unless the
/// range is only marked close-on-exec). `real` is `close_range` itself; the first failure
/// is returned.
fn close_range_sparing(
    lo: c_uint,
    hi: c_uint,
    flags: c_int,
    real: impl Fn(c_uint, c_uint, c_int) -> c_int,
) -> c_int {
    let keep: Vec<c_uint> = fdtab::internal_in(lo, hi)
        .into_iter()
        .map(|k| k as c_uint)
        .collect();
    let known = (libc::CLOSE_RANGE_CLOEXEC | libc::CLOSE_RANGE_UNSHARE) as c_int;
    if lo > hi || flags & !known != 0 {
        // The kernel's EINVAL, before it closes anything: nothing to forget.
        return real(lo, hi, flags);
    }
    let closing = flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0;
    for (a, b) in ranges_around(lo, hi, &keep) {
        // Forget before the real close, as `close` does: once the numbers are free another
        // thread may reuse one, and its new mark must not be cleared.
        if closing {
            fdtab::forget_range(a, b);
        }
        let r = real(a, b, flags);
        if r != 0 {
            return r;
        }
    }
    0
}

/// `close_range(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_range(lo: c_uint, hi: c_uint, flags: c_int) -> c_int {
    let Some(real) = real!(close_range: fn(c_uint, c_uint, c_int) -> c_int) else {
        return refuse(libc::ENOSYS);
    };
    if fdtab::is_empty() || preload::bypassed() {
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
    if fdtab::is_empty() || preload::bypassed() || lo < 0 {
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

/// `new` (a dup's result, or -1) now means what `old` means.
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
        return refuse(libc::ENOSYS);
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
    if fdtab::kind(new) == Kind::Internal && !preload::bypassed() {
        // The engine owns that number; replacing it would cut every tunneled connection.
        return refuse(libc::EBUSY);
    }
    let r = call();
    dup_result(old, r)
}

/// `dup2(2)`: the target number's old meaning ends.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    let Some(real) = real!(dup2: fn(c_int, c_int) -> c_int) else {
        return refuse(libc::ENOSYS);
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    dup_onto_hook(old, new, || unsafe { real(old, new) })
}

/// `dup3(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    let Some(real) = real!(dup3: fn(c_int, c_int, c_int) -> c_int) else {
        return refuse(libc::ENOSYS);
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    dup_onto_hook(old, new, || unsafe { real(old, new, flags) })
}

/// `fcntl(2)`; the third argument is read as a `long`, which covers every command's type
/// on the supported ABIs (variadic integer and pointer arguments share registers).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_long) -> c_int {
    let Some(real) = real!(fcntl: fn(c_int, c_int, c_long) -> c_int) else {
        return refuse(libc::ENOSYS);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn ranges_around_skips_kept_fds() {
        assert_eq!(ranges_around(3, 10, &[]), vec![(3, 10)]);
        assert_eq!(
            ranges_around(9, 3, &[]),
            vec![(9, 3)],
            "the real call judges it"
        );
        assert_eq!(ranges_around(3, 10, &[5, 6]), vec![(3, 4), (7, 10)]);
        assert_eq!(ranges_around(3, 10, &[3, 10]), vec![(4, 9)]);
        assert_eq!(ranges_around(3, 3, &[3]), vec![]);
        assert_eq!(
            ranges_around(0, c_uint::MAX, &[c_uint::MAX]),
            vec![(0, c_uint::MAX - 1)]
        );
    }

    fn tunneled(fd: i32) {
        fdtab::add_tunneled(fd, fdtab::FdInfo::for_test());
    }

    #[test]
    fn close_range_forgets_high_tunneled_fds() {
        // Numbers above the lock-free table (65,536), apart from every other test's.
        let (low, high, dgram, engine) = (91_000, 91_005, 91_006, 91_003);
        tunneled(low);
        tunneled(high);
        fdtab::mark_datagram(dgram);
        fdtab::mark_internal(engine);
        let calls = RefCell::new(Vec::new());
        let r = close_range_sparing(91_000, 91_010, 0, |a, b, _| {
            calls.borrow_mut().push((a, b));
            0
        });
        assert_eq!(r, 0);
        assert_eq!(*calls.borrow(), vec![(91_000, 91_002), (91_004, 91_010)]);
        assert_eq!(fdtab::kind(low), Kind::None);
        assert_eq!(
            fdtab::kind(high),
            Kind::None,
            "a tunneled fd above the table"
        );
        assert_eq!(fdtab::kind(dgram), Kind::None);
        assert_eq!(fdtab::kind(engine), Kind::Internal, "the engine's fd stays");
        fdtab::forget(engine);
    }

    #[test]
    fn close_range_cloexec_or_bad_arguments_forget_nothing() {
        let (a, b, engine) = (92_000, 92_002, 92_001);
        tunneled(a);
        tunneled(b);
        fdtab::mark_internal(engine);
        let cloexec = libc::CLOSE_RANGE_CLOEXEC as c_int;
        assert_eq!(close_range_sparing(92_000, 92_002, cloexec, |_, _, _| 0), 0);
        assert_eq!(
            (fdtab::kind(a), fdtab::kind(b)),
            (Kind::Tunneled, Kind::Tunneled)
        );
        // Flags the kernel refuses (EINVAL, nothing closed): one pass-through call.
        let calls = RefCell::new(Vec::new());
        let r = close_range_sparing(92_000, 92_002, 1 << 30, |lo, hi, _| {
            calls.borrow_mut().push((lo, hi));
            -1
        });
        assert_eq!((r, calls.take()), (-1, vec![(92_000, 92_002)]));
        assert_eq!(
            (fdtab::kind(a), fdtab::kind(b)),
            (Kind::Tunneled, Kind::Tunneled)
        );
        // Each range's marks go before its close, as with `close`: a number another thread
        // reuses once the range is closed keeps its new mark.
        let seen = RefCell::new(Vec::new());
        let r = close_range_sparing(92_000, 92_002, 0, |lo, _, _| {
            seen.borrow_mut().push(fdtab::kind(lo as c_int));
            0
        });
        assert_eq!((r, seen.take()), (0, vec![Kind::None, Kind::None]));
        fdtab::forget(engine);
    }
}
