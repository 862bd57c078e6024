//! The relay's memory of first handshake messages, so a recorded msg1 cannot be replayed.
//!
//! A msg1 carries its sender's wall-clock time inside its encrypted payload (only the
//! holder of its ephemeral key could have written it). The relay accepts it only when
//! that time is within `skew` of its own clock and its ephemeral key is not in this
//! cache; accepting records the key until the message turns stale (its time + `skew`),
//! so a replay is refused either as seen or as stale. The cache holds at most
//! `capacity` keys; when full it refuses new messages (a message it cannot remember
//! might come back), and since every entry leaves within `2 * skew` of being recorded,
//! a flood locks out honest clients for at most that long after it stops. One source
//! network (an IPv4 /24, an IPv6 /48) may hold at most a sixteenth of the room, so a
//! flood from a few networks cannot fill it. The rule and its sizing are argued in
//! docs/PROTOCOL.md, section 2.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// The part of the ephemeral key kept: 128 bits, so colliding with a recorded key means
/// finding an X25519 key pair whose public key has a given 128-bit prefix.
const KEY_PREFIX: usize = 16;

type Key = [u8; KEY_PREFIX];

/// One source network's share of the cache: 1/SOURCE_SHARE of its capacity.
const SOURCE_SHARE: usize = 16;

/// The network a connection comes from, as the cache counts it: an IPv4 /24 (also when
/// written v4-mapped) or an IPv6 /48, the blocks one party commonly holds.
pub fn source_network(addr: IpAddr) -> u64 {
    match addr {
        IpAddr::V4(a) => 4 << 56 | u64::from(u32::from(a) >> 8),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => source_network(IpAddr::V4(v4)),
            None => 6 << 56 | (u128::from(a) >> 80) as u64,
        },
    }
}

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
    /// Its source network holds its whole share of the cache.
    SourceFull,
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
    /// Messages refused because their source network held its share.
    pub source_full: u64,
}

/// The ephemeral keys of accepted first messages, until each turns stale.
#[derive(Debug)]
pub struct ReplayCache {
    skew_ms: u64,
    capacity: usize,
    not_before_ms: u64,
    /// Key prefix → the time (ms) after which its message is stale.
    seen: HashMap<Key, u64>,
    /// The same entries by expiry, earliest first, with their source network.
    expiries: BinaryHeap<Reverse<(u64, Key, u64)>>,
    /// Entries held per source network (networks holding none are absent).
    per_source: HashMap<u64, usize>,
    stats: ReplayStats,
}

/// A cache shared by every connection of one relay.
pub type SharedReplay = Arc<Mutex<ReplayCache>>;

impl ReplayCache {
    /// Most entries allowed by default (8 MiB measured when full, each from its own network).
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
            per_source: HashMap::new(),
            stats: ReplayStats::default(),
        }
    }

    /// The same, shared.
    pub fn shared(capacity: usize, skew: Duration, started: Duration) -> SharedReplay {
        Arc::new(Mutex::new(Self::new(capacity, skew, started)))
    }

    /// Accept a first message stamped `stamp_ms` with ephemeral key `ephemeral` at the
    /// relay's time `now_ms` (both ms since the Unix epoch), from the network `source`
    /// ([`source_network`]), and remember it; or refuse it.
    pub fn admit(
        &mut self,
        ephemeral: &[u8; 32],
        stamp_ms: u64,
        now_ms: u64,
        source: u64,
    ) -> Result<(), Refusal> {
        let r = self.check(ephemeral, stamp_ms, now_ms, source);
        if let Err(e) = r {
            let s = &mut self.stats;
            *match e {
                Refusal::Stale => &mut s.stale,
                Refusal::BeforeStart => &mut s.before_start,
                Refusal::Replayed => &mut s.replayed,
                Refusal::Full => &mut s.full,
                Refusal::SourceFull => &mut s.source_full,
            } += 1;
        }
        r
    }

    fn check(
        &mut self,
        ephemeral: &[u8; 32],
        stamp_ms: u64,
        now_ms: u64,
        source: u64,
    ) -> Result<(), Refusal> {
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
        let held = self.per_source.entry(source).or_insert(0);
        if *held >= (self.capacity / SOURCE_SHARE).max(1) {
            return Err(Refusal::SourceFull);
        }
        *held += 1;
        // The message is accepted again by the check above until now > stamp + skew, so
        // the entry lives exactly that long, and the same clock reading decides both.
        let expiry = stamp_ms + self.skew_ms;
        self.seen.insert(key, expiry);
        self.expiries.push(Reverse((expiry, key, source)));
        Ok(())
    }

    /// Forget the entries whose messages are stale at `now_ms`.
    fn expire(&mut self, now_ms: u64) {
        while let Some(&Reverse((expiry, key, source))) = self.expiries.peek() {
            if expiry >= now_ms {
                break;
            }
            self.expiries.pop();
            self.seen.remove(&key);
            if let Some(n) = self.per_source.get_mut(&source) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&source);
                }
            }
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

    /// Admit key `n` (32 bytes of `n`) from a network of its own.
    fn admit(c: &mut ReplayCache, n: u8, stamp: u64, now: u64) -> Result<(), Refusal> {
        c.admit(&[n; 32], stamp, now, u64::from(n))
    }

    #[test]
    fn a_replay_is_refused_until_it_is_stale_and_then_as_stale() {
        let mut c = cache(10);
        assert_eq!(admit(&mut c, 1, T0 + 5_000, T0 + 5_000), Ok(()));
        for dt in [0, 1, 60_000, 120_000] {
            assert_eq!(
                admit(&mut c, 1, T0 + 5_000, T0 + 5_000 + dt),
                Err(Refusal::Replayed),
                "{dt}"
            );
        }
        assert_eq!(
            admit(&mut c, 1, T0 + 5_000, T0 + 125_001),
            Err(Refusal::Stale)
        );
        // Another key admitted then drops the stale entry.
        assert_eq!(admit(&mut c, 2, T0 + 125_001, T0 + 125_001), Ok(()));
        assert_eq!(c.len(), 1);
        assert_eq!(c.stats().replayed, 4);
        assert_eq!(c.stats().stale, 1);
    }

    #[test]
    fn skew_tolerance_is_symmetric_and_inclusive() {
        let mut c = cache(10);
        let now = T0 + 1_000_000;
        assert_eq!(admit(&mut c, 1, now - 120_000, now), Ok(()));
        assert_eq!(admit(&mut c, 2, now + 120_000, now), Ok(()));
        assert_eq!(admit(&mut c, 3, now - 120_001, now), Err(Refusal::Stale));
        assert_eq!(admit(&mut c, 4, now + 120_001, now), Err(Refusal::Stale));
    }

    #[test]
    fn messages_stamped_before_the_start_are_refused() {
        let mut c = cache(10);
        assert_eq!(admit(&mut c, 1, T0 - 1, T0 + 10), Err(Refusal::BeforeStart));
        assert_eq!(admit(&mut c, 1, T0, T0 + 10), Ok(()));
    }

    #[test]
    fn a_full_cache_refuses_new_keys_until_entries_expire() {
        let mut c = cache(3);
        for n in 0..3 {
            assert_eq!(admit(&mut c, n, T0 + 1_000, T0 + 1_000), Ok(()));
        }
        assert_eq!(admit(&mut c, 9, T0 + 2_000, T0 + 2_000), Err(Refusal::Full));
        // Still refused just before the oldest entry turns stale ...
        assert_eq!(
            admit(&mut c, 9, T0 + 121_000, T0 + 121_000),
            Err(Refusal::Full)
        );
        // ... and accepted just after: at most 2 * skew after the flood.
        assert_eq!(admit(&mut c, 9, T0 + 121_001, T0 + 121_001), Ok(()));
        assert_eq!(c.len(), 1);
        assert_eq!(c.stats().full, 2);
    }

    #[test]
    fn an_entry_stamped_ahead_lives_at_most_twice_the_skew() {
        let mut c = cache(1);
        let now = T0 + 10_000;
        assert_eq!(admit(&mut c, 1, now + 120_000, now), Ok(()));
        assert_eq!(
            admit(&mut c, 2, now + 240_000, now + 240_000),
            Err(Refusal::Full)
        );
        assert_eq!(admit(&mut c, 2, now + 240_001, now + 240_001), Ok(()));
    }

    #[test]
    fn one_network_holds_at_most_a_sixteenth() {
        let mut c = cache(32);
        let net = source_network("192.0.2.7".parse().unwrap());
        for n in 0..2u8 {
            assert_eq!(c.admit(&[n; 32], T0 + 1, T0 + 1, net), Ok(()));
        }
        let same_24 = source_network("192.0.2.200".parse().unwrap());
        assert_eq!(same_24, net);
        assert_eq!(
            c.admit(&[9; 32], T0 + 1, T0 + 1, same_24),
            Err(Refusal::SourceFull)
        );
        // Another network still gets in, and the first one again once its entries leave.
        let other = source_network("192.0.3.7".parse().unwrap());
        assert_eq!(c.admit(&[9; 32], T0 + 1, T0 + 1, other), Ok(()));
        assert_eq!(c.admit(&[10; 32], T0 + 120_002, T0 + 120_002, net), Ok(()));
        assert_eq!(c.stats().source_full, 1);
    }

    #[test]
    fn source_networks_are_slash_24_and_slash_48() {
        let n = |s: &str| source_network(s.parse().unwrap());
        assert_eq!(n("10.1.2.3"), n("10.1.2.254"));
        assert_ne!(n("10.1.2.3"), n("10.1.3.3"));
        assert_eq!(n("::ffff:10.1.2.3"), n("10.1.2.9"));
        assert_eq!(n("2001:db8:1::1"), n("2001:db8:1:ffff::2"));
        assert_ne!(n("2001:db8:1::1"), n("2001:db8:2::1"));
        // An IPv6 address whose top bits equal a tagged IPv4 block is still another network.
        assert_ne!(n("0.0.0.1"), n("::1"));
    }
}
