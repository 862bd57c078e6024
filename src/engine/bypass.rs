//! The thread-local bypass flag: while it is set, every hook on the calling thread calls
//! the real function. The engine thread sets it for its whole life; qnet's own libc calls
//! on an app thread (reading a config, a hosts file, printing) set it with a
//! [`BypassGuard`] so they do not re-enter the hooks.
//!
//! It lives below everything else in `engine` because the resolver, the log and the
//! preload runtime all need it and must not import each other to get it.

use std::cell::Cell;

/// The thread is one of qnet's own, for its whole life.
const THREAD: u8 = 1;
/// A [`BypassGuard`] is alive on the thread.
const GUARD: u8 = 2;

thread_local! {
    // const and destructor-free: safe to touch from any hook at any point of a thread's life.
    static BYPASS: Cell<u8> = const { Cell::new(0) };
}

/// Whether the calling thread must pass every hook straight through (engine threads,
/// and hooks re-entered by qnet's own calls).
#[inline]
pub(crate) fn bypassed() -> bool {
    BYPASS.with(Cell::get) != 0
}

/// Bypass every hook on the calling thread from now until it exits (qnet's own threads).
pub(crate) fn bypass_thread() {
    BYPASS.with(|b| b.set(b.get() | THREAD));
}

/// Run `f` with no guard's bypass in force (a qnet thread stays bypassed): for a hook
/// that waits (a blocking connect waiting for the relay, `qnet_shutdown` joining the
/// engine). The flag belongs around qnet's own libc calls only; kept during a wait, a
/// signal handler that runs on this thread meanwhile would pass every hook, and its
/// `connect` would go out directly. Whatever guards are nested around the call.
pub(crate) fn paused<R>(f: impl FnOnce() -> R) -> R {
    let outer = BYPASS.with(|b| b.replace(b.get() & THREAD));
    let r = f();
    BYPASS.with(|b| b.set(outer));
    r
}

/// Sets the bypass flag for its lifetime; nesting is fine.
pub(crate) struct BypassGuard(u8);

impl BypassGuard {
    /// Enter: qnet's own libc calls from here on reach the real functions.
    pub(crate) fn enter() -> BypassGuard {
        BypassGuard(BYPASS.with(|b| b.replace(b.get() | GUARD)))
    }
}

impl Drop for BypassGuard {
    fn drop(&mut self) {
        let prev = self.0;
        BYPASS.with(|b| b.set(prev));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_nest_and_restore() {
        assert!(!bypassed());
        {
            let _a = BypassGuard::enter();
            assert!(bypassed());
            {
                let _b = BypassGuard::enter();
                assert!(bypassed());
            }
            assert!(bypassed());
        }
        assert!(!bypassed());
    }

    #[test]
    fn signal_handler_during_blocking_connect_is_not_bypassed() {
        // A wait inside a hook runs paused, however many guards are around it: what
        // interrupts it sees the app thread's own state.
        let _outer = BypassGuard::enter();
        let inner = BypassGuard::enter();
        assert!(paused(|| !bypassed()), "unset during the wait");
        assert!(bypassed(), "set again after it");
        drop(inner);
        assert!(bypassed());
    }

    #[test]
    fn a_qnet_thread_stays_bypassed_through_a_pause() {
        std::thread::spawn(|| {
            bypass_thread();
            let _g = BypassGuard::enter();
            assert!(paused(bypassed));
            drop(_g);
            assert!(bypassed());
        })
        .join()
        .unwrap();
    }
}
