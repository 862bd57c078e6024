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
}
