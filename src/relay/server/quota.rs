//! Each client key's use of the relay, counted across every event loop: live sessions,
//! dials in progress and names being resolved (`[server]` sessions_per_key,
//! dials_per_key, lookups_per_key).
//!
//! A key's sessions may land on different loops (the kernel spreads connections over
//! the loops' listeners), so the counts are shared: a map from key to counters, locked
//! only when a session starts or ends, and atomic counters a stream takes and gives
//! back without the lock. Holds give back on drop, so no path that forgets a stream
//! (a reset, a dropped connection, a failed dial) can leak a count.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;

use crate::keys::PublicKey;

/// One key's counters.
#[derive(Default)]
pub(super) struct KeyUse {
    /// Changed only under the [`Quotas`] lock.
    sessions: AtomicU32,
    dials: AtomicU32,
    lookups: AtomicU32,
}

/// Every authenticated key's counters, shared by the loops.
#[derive(Default)]
pub(super) struct Quotas {
    keys: Mutex<HashMap<PublicKey, Arc<KeyUse>>>,
}

/// One live session of a key; dropping it ends the count.
pub(super) struct SessionHold {
    quotas: Arc<Quotas>,
    key: PublicKey,
    usage: Arc<KeyUse>,
}

/// What a stream's dial holds while it is in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pending {
    /// Its name is being resolved.
    Lookup,
    /// Its connect (or exit-proxy handshake) is under way.
    Dial,
}

/// A stream's share of its key's dial and lookup counts; dropping it gives it back.
pub(super) struct StreamHold {
    usage: Arc<KeyUse>,
    held: Option<Pending>,
}

impl Quotas {
    /// Start a session of `key` unless it already has `max` live ones.
    pub(super) fn session(self: &Arc<Self>, key: PublicKey, max: u32) -> Option<SessionHold> {
        let mut keys = self.keys.lock();
        let usage = keys.entry(key).or_default().clone();
        let n = usage.sessions.load(Ordering::Relaxed);
        if n >= max {
            if n == 0 {
                keys.remove(&key);
            }
            return None;
        }
        usage.sessions.store(n + 1, Ordering::Relaxed);
        Some(SessionHold {
            quotas: self.clone(),
            key,
            usage,
        })
    }

    /// Keys with a live session.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.keys.lock().len()
    }
}

impl Drop for SessionHold {
    fn drop(&mut self) {
        let mut keys = self.quotas.keys.lock();
        let n = self.usage.sessions.load(Ordering::Relaxed) - 1;
        self.usage.sessions.store(n, Ordering::Relaxed);
        if n == 0 {
            keys.remove(&self.key);
        }
    }
}

impl SessionHold {
    /// The key this session authenticated with.
    pub(super) fn key(&self) -> &PublicKey {
        &self.key
    }

    /// A stream of this session that holds nothing yet.
    pub(super) fn stream(&self) -> StreamHold {
        StreamHold {
            usage: self.usage.clone(),
            held: None,
        }
    }
}

impl StreamHold {
    fn counter(&self, p: Pending) -> &AtomicU32 {
        match p {
            Pending::Lookup => &self.usage.lookups,
            Pending::Dial => &self.usage.dials,
        }
    }

    /// Hold one of `p` (giving back what was held before) unless the key already holds
    /// `max`; on refusal what was held stays held.
    pub(super) fn take(&mut self, p: Pending, max: u32) -> bool {
        if self.held == Some(p) {
            return true;
        }
        let got = self
            .counter(p)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if got {
            self.release();
            self.held = Some(p);
        }
        got
    }

    /// Give back what is held: the dial is done.
    pub(super) fn release(&mut self) {
        if let Some(p) = self.held.take() {
            self.counter(p).fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for StreamHold {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_capped_per_key_and_the_map_empties() {
        let q = Arc::new(Quotas::default());
        let (a, b) = (PublicKey([1; 32]), PublicKey([2; 32]));
        let s1 = q.session(a, 2).unwrap();
        let s2 = q.session(a, 2).unwrap();
        assert!(q.session(a, 2).is_none());
        let _t = q.session(b, 2).unwrap();
        drop(s1);
        let s3 = q.session(a, 2).unwrap();
        drop((s2, s3));
        assert_eq!(q.len(), 1, "a's entry goes with its last session");
        assert!(q.session(a, 0).is_none());
        assert_eq!(q.len(), 1, "a refused first session leaves no entry");
    }

    #[test]
    fn streams_share_the_key_counts_across_sessions_and_give_back_on_drop() {
        let q = Arc::new(Quotas::default());
        let k = PublicKey([3; 32]);
        let (s1, s2) = (q.session(k, 4).unwrap(), q.session(k, 4).unwrap());
        let mut a = s1.stream();
        let mut b = s2.stream();
        let mut c = s1.stream();
        assert!(a.take(Pending::Lookup, 2));
        assert!(b.take(Pending::Lookup, 2));
        assert!(
            !c.take(Pending::Lookup, 2),
            "two lookups for the key at most"
        );
        // Resolved: the lookup becomes a dial; refused, the lookup stays held.
        assert!(a.take(Pending::Dial, 1));
        assert!(!b.take(Pending::Dial, 1));
        assert!(c.take(Pending::Lookup, 2), "a's lookup was given back");
        a.release();
        assert!(b.take(Pending::Dial, 1));
        drop(b);
        assert!(a.take(Pending::Dial, 1), "b's dial was given back on drop");
        assert!(!s2.stream().take(Pending::Dial, 1));
    }
}
