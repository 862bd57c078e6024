//! The thread-local bypass flag: while it is set, every hook on the calling thread calls
//! the real function. The engine thread sets it for its whole life; qnet's own libc calls
//! on an app thread (reading a config, a hosts file, printing) set it with a
//! [`BypassGuard`] so they do not re-enter the hooks.
//!
//! It lives below everything else in `engine` because the resolver, the log and the
//! preload runtime all need it and must not import each other to get it.

use std::cell::Cell;

thread_local! {
    // const and destructor-free: safe to touch from any hook at any point of a thread's life.
    static BYPASS: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread must pass every hook straight through (engine threads,
/// and hooks re-entered by qnet's own calls).
#[inline]
pub(crate) fn bypassed() -> bool {
    BYPASS.with(Cell::get)
}

/// Bypass every hook on the calling thread from now until it exits (qnet's own threads).
pub(crate) fn bypass_thread() {
    BYPASS.with(|b| b.set(true));
}

/// Sets the bypass flag for its lifetime; nesting is fine.
pub(crate) struct BypassGuard(bool);

impl BypassGuard {
    /// Enter: qnet's own libc calls from here on reach the real functions.
    pub(crate) fn enter() -> BypassGuard {
        BypassGuard(BYPASS.with(|b| b.replace(true)))
    }
}

impl BypassGuard {
    /// Run `f` with the flag as it was before [`BypassGuard::enter`]: a hook that waits
    /// (a blocking connect waiting for the relay) must not keep it set, or a signal
    /// handler that runs on this thread meanwhile would pass every hook and reach libc
    /// directly. Only qnet's own libc calls run under the flag.
    pub(crate) fn paused<R>(&self, f: impl FnOnce() -> R) -> R {
        BYPASS.with(|b| b.set(self.0));
        let r = f();
        BYPASS.with(|b| b.set(true));
        r
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
        // A wait inside a hook runs paused: what interrupts it sees the caller's flag.
        let g = BypassGuard::enter();
        assert!(g.paused(|| !bypassed()), "unset during the wait");
        assert!(bypassed(), "set again after it");
        drop(g);
        let _engine = BypassGuard::enter();
        let nested = BypassGuard::enter();
        assert!(
            nested.paused(bypassed),
            "a thread that was bypassed stays bypassed"
        );
    }
}
