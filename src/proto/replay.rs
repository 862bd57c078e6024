//! The relay's memory of first handshake messages, so a recorded msg1 cannot be replayed.
//!
//! A msg1 carries its sender's wall-clock time inside its encrypted payload (only the
//! holder of its ephemeral key could have written it). The relay accepts it only when
//! that time is within `skew` of its own clock and its ephemeral key is not in this
//! cache; accepting records the key until the message turns stale (its time + `skew`),
//! so a replay is refused either as seen or as stale. The cache holds at most
//! `capacity` keys; when full it refuses new messages (a message it cannot remember
//! might come back), and since every entry leaves within `2 * skew` of being recorded,
//! a flood locks out honest clients for at most that long after it stops. The rule and
//! its sizing are argued in docs/PROTOCOL.md, section 2.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// The part of the ephemeral key kept: 128 bits, so colliding with a recorded key means
/// finding an X25519 key pair whose public key has a given 128-bit prefix.
const KEY_PREFIX: usize = 16;

type Key = [u8; KEY_PREFIX];

/// Why a first message was refused (for the relay's counters; the peer learns nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its time is more than `skew` away from the relay's clock.
    Stale,
    /// Its time is before the relay started, which may have seen it in a former life.
    BeforeStart,
    /// Its ephemeral key was seen before: a replay.
    Replayed,
    /// The cache is full, so it could not be remembered.
    Full,
}

/// Counters of what the cache refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Messages outside the skew tolerance.
    pub stale: u64,
    /// Messages stamped before the relay started.
    pub before_start: u64,
    /// Replays.
    pub replayed: u64,
    /// Messages refused because the cache was full.
    pub full: u64,
}

/// The ephemeral keys of accepted first messages, until each turns stale.
#[derive(Debug)]
pub struct ReplayCache {
    skew_ms: u64,
    capacity: usize,
    not_before_ms: u64,
    /// Key prefix → the time (ms) after which its message is stale.
    seen: HashMap<Key, u64>,
    /// The same entries by expiry, earliest first.
    expiries: BinaryHeap<Reverse<(u64, Key)>>,
    stats: ReplayStats,
}

/// A cache shared by every connection of one relay.
pub type SharedReplay = Arc<Mutex<ReplayCache>>;

impl ReplayCache {
    /// Most entries allowed by default (≈ 3.5 MiB at most).
    pub const DEFAULT_CAPACITY: usize = 1 << 16;
    /// The default clock-skew tolerance.
    pub const DEFAULT_SKEW: Duration = Duration::from_secs(120);

    /// An empty cache for a relay started at wall-clock time `started`.
    pub fn new(capacity: usize, skew: Duration, started: Duration) -> ReplayCache {
        ReplayCache {
            skew_ms: skew.as_millis() as u64,
            capacity: capacity.max(1),
            not_before_ms: started.as_millis() as u64,
            seen: HashMap::new(),
            expiries: BinaryHeap::new(),
            stats: ReplayStats::default(),
        }
    }

    /// The same, shared.
    pub fn shared(capacity: usize, skew: Duration, started: Duration) -> SharedReplay {
        Arc::new(Mutex::new(Self::new(capacity, skew, started)))
    }

    /// Accept a first message stamped `stamp_ms` with ephemeral key `ephemeral` at the
    /// relay's time `now_ms` (both ms since the Unix epoch), and remember it; or refuse it.
    pub fn admit(
        &mut self,
        ephemeral: &[u8; 32],
        stamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let r = self.check(ephemeral, stamp_ms, now_ms);
        if let Err(e) = r {
            let s = &mut self.stats;
            *match e {
                Refusal::Stale => &mut s.stale,
                Refusal::BeforeStart => &mut s.before_start,
                Refusal::Replayed => &mut s.replayed,
                Refusal::Full => &mut s.full,
            } += 1;
        }
        r
    }

    fn check(&mut self, ephemeral: &[u8; 32], stamp_ms: u64, now_ms: u64) -> Result<(), Refusal> {
        if stamp_ms.abs_diff(now_ms) > self.skew_ms {
            return Err(Refusal::Stale);
        }
        // Messages from before a restart are not in this (new) cache, so they are refused
        // outright; a client whose clock lags waits at most that lag after a restart.
        if stamp_ms < self.not_before_ms {
            return Err(Refusal::BeforeStart);
        }
        self.expire(now_ms);
        let key: Key = ephemeral[..KEY_PREFIX].try_into().expect("prefix");
        if self.seen.contains_key(&key) {
            return Err(Refusal::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(Refusal::Full);
        }
        // The message is accepted again by the check above until now > stamp + skew, so
        // the entry lives exactly that long, and the same clock reading decides both.
        let expiry = stamp_ms + self.skew_ms;
        self.seen.insert(key, expiry);
        self.expiries.push(Reverse((expiry, key)));
        Ok(())
    }

    /// Forget the entries whose messages are stale at `now_ms`.
    fn expire(&mut self, now_ms: u64) {
        while let Some(&Reverse((expiry, key))) = self.expiries.peek() {
            if expiry >= now_ms {
                break;
            }
            self.expiries.pop();
            self.seen.remove(&key);
        }
    }

    /// Entries held now (some may be stale until the next `admit`).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Nothing is held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// What was refused so far.
    pub fn stats(&self) -> ReplayStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn cache(cap: usize) -> ReplayCache {
        ReplayCache::new(cap, Duration::from_secs(120), Duration::from_millis(T0))
    }

    fn key(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn a_replay_is_refused_until_it_is_stale_and_then_as_stale() {
        let mut c = cache(10);
        assert_eq!(c.admit(&key(1), T0 + 5_000, T0 + 5_000), Ok(()));
        for dt in [0, 1, 60_000, 120_000] {
            assert_eq!(
                c.admit(&key(1), T0 + 5_000, T0 + 5_000 + dt),
                Err(Refusal::Replayed),
                "{dt}"
            );
        }
        assert_eq!(
            c.admit(&key(1), T0 + 5_000, T0 + 125_001),
            Err(Refusal::Stale)
        );
        // Another key admitted then drops the stale entry.
        assert_eq!(c.admit(&key(2), T0 + 125_001, T0 + 125_001), Ok(()));
        assert_eq!(c.len(), 1);
        assert_eq!(c.stats().replayed, 4);
        assert_eq!(c.stats().stale, 1);
    }

    #[test]
    fn skew_tolerance_is_symmetric_and_inclusive() {
        let mut c = cache(10);
        let now = T0 + 1_000_000;
        assert_eq!(c.admit(&key(1), now - 120_000, now), Ok(()));
        assert_eq!(c.admit(&key(2), now + 120_000, now), Ok(()));
        assert_eq!(c.admit(&key(3), now - 120_001, now), Err(Refusal::Stale));
        assert_eq!(c.admit(&key(4), now + 120_001, now), Err(Refusal::Stale));
    }

    #[test]
    fn messages_stamped_before_the_start_are_refused() {
        let mut c = cache(10);
        assert_eq!(c.admit(&key(1), T0 - 1, T0 + 10), Err(Refusal::BeforeStart));
        assert_eq!(c.admit(&key(1), T0, T0 + 10), Ok(()));
    }

    #[test]
    fn a_full_cache_refuses_new_keys_until_entries_expire() {
        let mut c = cache(3);
        for n in 0..3 {
            assert_eq!(c.admit(&key(n), T0 + 1_000, T0 + 1_000), Ok(()));
        }
        assert_eq!(c.admit(&key(9), T0 + 2_000, T0 + 2_000), Err(Refusal::Full));
        // Still refused just before the oldest entry turns stale ...
        assert_eq!(
            c.admit(&key(9), T0 + 121_000, T0 + 121_000),
            Err(Refusal::Full)
        );
        // ... and accepted just after: at most 2 * skew after the flood.
        assert_eq!(c.admit(&key(9), T0 + 121_001, T0 + 121_001), Ok(()));
        assert_eq!(c.len(), 1);
        assert_eq!(c.stats().full, 2);
    }

    #[test]
    fn an_entry_stamped_ahead_lives_at_most_twice_the_skew() {
        let mut c = cache(1);
        let now = T0 + 10_000;
        assert_eq!(c.admit(&key(1), now + 120_000, now), Ok(()));
        assert_eq!(
            c.admit(&key(2), now + 240_000, now + 240_000),
            Err(Refusal::Full)
        );
        assert_eq!(c.admit(&key(2), now + 240_001, now + 240_001), Ok(()));
    }
}
