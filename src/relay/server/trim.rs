//! Giving memory back after a crowd of clients has left.
//!
//! A `HashMap` keeps its table at the largest size it ever grew to, and the relay's
//! connection map holds each `Conn` (3.4 KB) inline: 10,000 clients grow it to 16,384
//! slots, 55 MB, which stayed resident after they were all gone; glibc keeps the
//! sessions' freed buffers in its heap too. Measured with `tests/soak.rs` (9,968 clients
//! with a stream each, debug build): 5.0 MB idle, 70.7 MB with them, 70.7 MB once they
//! had all closed; with this, back to within a few MB of the start.
//!
//! With several loops, the other threads allocate from arenas of their own, whose free
//! tops glibc keeps unless its trim threshold stays fixed: `Relay::bind` fixes it
//! (`os::steady_malloc_thresholds`), which took a two-loop relay from +7-10 MB left to
//! +2.3 MB, the one-loop figure.
//!
//! The check is two loads per loop round. A map is shrunk only once it is at most a
//! quarter full, to twice what it holds, so shrinking (a copy of the live entries)
//! happens at geometrically spaced sizes on the way down: its total cost is bounded by
//! the peak, like growth's, and a load that moves up and down by less than 4x never
//! shrinks at all. `malloc_trim` runs after a shrink, so just as rarely.

use std::collections::HashMap;
use std::hash::Hash;

use super::Loop;

/// Tables smaller than this (bytes) are left as they are: too small to matter. A
/// connection map of 3.4 KB entries still shrinks at 78 slots; a map of 24-byte entries
/// is left alone below 10,923.
const MIN_SHRINK: usize = 256 * 1024;

/// Shrink `map` to twice its entries if it is at most a quarter full; whether it did.
/// `capacity()` is the table's slots less the tombstones of removed entries, so it
/// understates the table by the few removals that left one (most, in a table below
/// its 7/8 load, leave an empty slot): a shrink comes a little later, never wrongly.
fn shrink<K: Eq + Hash, V>(map: &mut HashMap<K, V>) -> bool {
    let bytes = map.capacity() * size_of::<(K, V)>();
    if bytes < MIN_SHRINK || map.len() * 4 > map.capacity() {
        return false;
    }
    map.shrink_to(map.len() * 2);
    true
}

impl Loop {
    /// After connections closed: shrink the maps their peak left oversized, and hand
    /// the freed memory back to the kernel.
    pub(super) fn give_back_memory(&mut self) {
        // The connection map drives the others: they hold per-connection entries too.
        if !shrink(&mut self.conns) {
            return;
        }
        shrink(&mut self.owners);
        shrink(&mut self.sinks);
        crate::os::release_free_memory();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_shrinks_once_a_quarter_full_and_small_ones_never() {
        let mut m: HashMap<u32, [u8; 128]> = (0..10_000).map(|i| (i, [0; 128])).collect();
        let peak = m.capacity();
        // Half full: kept (its capacity drops a little: see `shrink`).
        m.retain(|k, _| *k < 5_000);
        assert!(!shrink(&mut m));
        assert!(m.capacity() > peak * 7 / 8, "{} of {peak}", m.capacity());
        // A tenth: shrunk to about twice its entries.
        m.retain(|k, _| *k < 1_000);
        assert!(shrink(&mut m));
        assert!(
            m.capacity() >= 2_000 && m.capacity() <= peak / 4,
            "{}",
            m.capacity()
        );
        assert_eq!(m.len(), 1_000);
        assert!((0..1_000).all(|k| m.contains_key(&k)));
        // Empty: shrunk to nothing, and then left alone.
        m.clear();
        assert!(shrink(&mut m));
        assert_eq!(m.capacity(), 0);
        assert!(!shrink(&mut m));
        // A small table is left alone, however empty.
        let mut small: HashMap<u32, [u8; 128]> = (0..1_000).map(|i| (i, [0; 128])).collect();
        small.clear();
        assert!(!shrink(&mut small));
    }
}
