//! Fork detection for the entropy ring.
//!
//! A pid check on refill alone is not enough: a child inherits its parent's buffered,
//! not yet served bytes and would serve them again. A `pthread_atfork` child handler
//! bumps an epoch that every draw compares (one relaxed load), so the child discards the
//! inherited buffer before its first byte. The handlers also hold the ring's one lock
//! across `fork`, so a child never inherits it locked by a thread it does not have.

use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bumped in every child of a `fork`.
pub(super) static EPOCH: AtomicU64 = AtomicU64::new(0);

/// Install the handlers (once per process; children inherit them).
pub(super) fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        extern "C" fn prepare() {
            super::fork_prepare();
        }
        extern "C" fn parent() {
            super::fork_release();
        }
        extern "C" fn child() {
            EPOCH.fetch_add(1, Ordering::Relaxed);
            super::fork_release();
        }
        // They only take or release the ring's lock and bump an atomic.
        crate::os::on_fork(prepare, parent, child);
    });
}
