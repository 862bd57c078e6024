//! Fd lifetimes: the close family keeps the table true and the engine's fds open; the
//! dup family and `F_DUPFD` carry a tunneled or datagram mark to the new number (and
//! clear a stale one); `accept`, `accept4` and `socketpair` clear stale marks on the
//! numbers they hand out (`socket` does the same in `socket.rs`).
//!
//! `close`, `dup`, `dup2`, `dup3` and `fcntl` are async-signal-safe, so a signal handler
//! may call them while the interrupted thread holds one of our locks: for an fd the table
//! does not know they take none and allocate nothing (the table's lock-free fast path).

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
    dup_result(old, unsafe { real(old) })
}

/// The shared body of `dup2` and `dup3`: `call` performs the real duplication.
fn dup_onto_hook(old: c_int, new: c_int, call: impl FnOnce() -> c_int) -> c_int {
    if fdtab::kind(old) == Kind::None && fdtab::kind(new) == Kind::None {
        return call();
    }
    if fdtab::kind(new) == Kind::Internal && old != new && !preload::bypassed() {
        // The engine owns that number: it moves its fd off it first, leaving the number
        // open on its file for the real call to replace atomically. Where it cannot (its
        // lock is held, perhaps by the thread this signal handler interrupted; mio's
        // poller fd, which cannot be given another number), EBUSY, which is what the
        // kernel's own dup2 answers for a number in a racing open.
        let freed = guarded("dup2", false, || preload::free_engine_fd(new));
        if !freed {
            return refuse(libc::EBUSY);
        }
        let r = call();
        if r < 0 {
            // Nothing replaced the number, which still holds the engine's old file.
            let e = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EBADF);
            fdtab::forget(new);
            // SAFETY: the number is no longer the engine's (it moved) nor the app's.
            unsafe { close(new) };
            return refuse(e);
        }
        return dup_result(old, r);
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
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        return dup_result(fd, r);
    }
    r
}

/// A new fd from the kernel (or -1): a mark left on its number is stale.
fn fresh_result(fd: c_int) -> c_int {
    if fd >= 0 {
        fdtab::fresh(fd);
    }
    fd
}

/// `accept(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(
    fd: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
) -> c_int {
    let Some(real) = real!(accept: fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> c_int)
    else {
        return refuse(libc::ENOSYS);
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    fresh_result(unsafe { real(fd, addr, len) })
}

/// `accept4(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
    flags: c_int,
) -> c_int {
    let Some(real) =
        real!(accept4: fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t, c_int) -> c_int)
    else {
        return refuse(libc::ENOSYS);
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    fresh_result(unsafe { real(fd, addr, len, flags) })
}

/// `socketpair(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn socketpair(
    domain: c_int,
    ty: c_int,
    proto: c_int,
    sv: *mut c_int,
) -> c_int {
    let Some(real) = real!(socketpair: fn(c_int, c_int, c_int, *mut c_int) -> c_int) else {
        return refuse(libc::ENOSYS);
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    let r = unsafe { real(domain, ty, proto, sv) };
    if r == 0 {
        // SAFETY: on success the kernel wrote two fds into the caller's array.
        let (a, b) = unsafe { (*sv, *sv.add(1)) };
        fresh_result(a);
        fresh_result(b);
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
        // Numbers apart from every other test's; `high` above the lock-free table (2^20).
        let (low, high, dgram, engine) = (91_000, 3_091_005, 91_006, 91_003);
        tunneled(low);
        tunneled(high);
        fdtab::mark_datagram(dgram);
        fdtab::mark_internal(engine);
        let calls = RefCell::new(Vec::new());
        let r = close_range_sparing(91_000, 3_091_010, 0, |a, b, _| {
            calls.borrow_mut().push((a, b));
            0
        });
        assert_eq!(r, 0);
        assert_eq!(*calls.borrow(), vec![(91_000, 91_002), (91_004, 3_091_010)]);
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

    #[test]
    fn async_signal_safe_hooks_of_unmarked_fds_take_no_lock() {
        // What a signal handler may call while the thread it interrupted holds the fd
        // table's locks: on fds the table does not know, every one must return.
        let held = fdtab::lock_all();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut p = [0; 2];
            // SAFETY: the hooks (the real calls here: interception is off in tests) on a
            // pipe this thread owns; every fd made is closed again.
            let ok = unsafe {
                libc::pipe(p.as_mut_ptr());
                let a = dup(p[0]);
                let b = dup2(p[0], a);
                let c = dup3(p[1], a, libc::O_CLOEXEC);
                let d = fcntl(p[0], libc::F_DUPFD_CLOEXEC, 3);
                let all = [a, b, c, d];
                let ok = all.iter().all(|&f| f >= 0);
                close(d);
                close(a);
                close(p[0]);
                close(p[1]) == 0 && ok
            };
            let _ = tx.send(ok);
        });
        let r = rx.recv_timeout(std::time::Duration::from_secs(5));
        drop(held);
        assert_eq!(r, Ok(true), "the hooks returned without the locks");
    }

    #[test]
    fn stale_datagram_mark_cleared_by_socketpair_and_accept() {
        // A number closed behind the hooks' back (raw syscall) keeps its mark; the next
        // file the kernel puts there must not inherit it.
        let mut sv = [0; 2];
        // SAFETY: the socketpair hook into a two-int array; the fds are closed below with
        // the raw syscall, as a program bypassing libc would.
        unsafe {
            assert_eq!(
                socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()),
                0
            );
            fdtab::mark_datagram(sv[0]);
            fdtab::mark_datagram(sv[1]);
            assert_eq!(fresh_result(sv[0]), sv[0]);
            assert_eq!(fdtab::kind(sv[0]), Kind::None);
            fdtab::mark_datagram(sv[0]);
            let mut again = [0; 2];
            libc::syscall(libc::SYS_close, sv[0]);
            libc::syscall(libc::SYS_close, sv[1]);
            // Another test may take the numbers first; only numbers handed back are checked.
            assert_eq!(
                socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, again.as_mut_ptr()),
                0
            );
            for f in again {
                assert_eq!(fdtab::kind(f), Kind::None, "fd {f} lost its stale mark");
                close(f);
            }
        }
        fdtab::forget(sv[0]);
        fdtab::forget(sv[1]);
    }
}
