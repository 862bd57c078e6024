//! Fake-IP map for remote DNS: hostname ⇄ address from a reserved, unroutable range.
//!
//! The preload library answers a name lookup with a fake address and, when the app later
//! connects to that address, sends the *name* to the relay, so the relay (not the local
//! resolver) resolves it and local DNS never leaks the name.
//!
//! Slot `i` of the table stands for both `v4_base + i + 1` and `v6_base + i + 1`, so an app
//! asking for A and AAAA records gets two addresses that map back to one name. Slots are
//! never reused: a reused fake address would send a still-open app connection to the wrong
//! name. A full table fails lookups instead.
//!
//! # Shared across fork
//!
//! The table lives in memory the caller maps `MAP_SHARED | MAP_ANONYMOUS`, so a parent and
//! its forked children extend one map and a name resolved in one process connects in the
//! other. It therefore holds only atomic integers — no locks (a lock held at fork stays
//! held in the child), no heap pointers (each process has its own heap). Every field's
//! all-zero bit pattern is a valid value, so the zero-filled memory `mmap` returns is a
//! valid empty table; the caller casts it (the only `unsafe`, outside this module):
//!
//! ```text
//! region = mmap(table_bytes(cap), PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS)
//! header = &*(region as *const Header)
//! slots  = slice::from_raw_parts(region.add(SLOTS_OFFSET) as *const Slot, cap)
//! ```
//!
//! # Index
//!
//! Lookups by name go through an open-addressing hash index (linear probing) whose buckets
//! live inside the slots (two per slot, so the index is never more than half full and the
//! region stays one array). A bucket holds `slot index + 1` (0 = empty) and is written once
//! with a compare-and-swap; the index, not the order of slot claims, decides which slot a
//! name owns, so racing inserters of one name agree on a single answer (see
//! [`FakeDns::lookup_or_insert`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::net::{Cidr, Family, NetError};
use crate::proto::frame::valid_hostname;

/// Bytes of name storage per slot (a DNS name is at most 253 bytes).
pub(crate) const NAME_CAP: usize = 256;
/// Byte offset of the slot array inside a table region (just after the [`Header`]).
pub(crate) const SLOTS_OFFSET: usize = size_of::<Header>().next_multiple_of(align_of::<Slot>());

const NAME_WORDS: usize = NAME_CAP / 8;

/// Byte size of a table region (header and `capacity` slots) for the caller to map.
pub(crate) const fn table_bytes(capacity: usize) -> usize {
    SLOTS_OFFSET + capacity * size_of::<Slot>()
}

/// Why a name could not get a fake address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DnsError {
    /// Not a hostname the relay would accept (after lowercasing and dropping one trailing dot).
    #[error("invalid hostname")]
    InvalidName,
    /// Every fake address is taken; slots are never reused.
    #[error("fake-address table full")]
    Full,
    /// A fake network is unusable ([`Cidr::check_fake_net`] has the rule and the reason).
    #[error("unusable fake network: {0}")]
    BadNet(#[from] NetError),
}

/// Table header, shared by every process mapping the table; all-zero is an empty table.
#[repr(C, align(64))] // a cache line of its own: `next` is the one hot contended word
#[derive(Debug, Default)]
pub(crate) struct Header {
    /// Number of slots claimed so far (claimed ≠ published: see [`Slot`]).
    next: AtomicU32,
}

impl Header {
    /// An empty header (the same as zeroed memory).
    #[cfg(test)]
    pub(crate) const fn new() -> Self {
        Self {
            next: AtomicU32::new(0),
        }
    }
}

/// One name slot (plus two hash-index buckets); all-zero is an empty slot.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// Name length; 0 = not (yet) published. Stored last, with Release, after the name.
    len: AtomicU32,
    /// Two buckets of the hash index (`slot index + 1`, 0 = empty); unrelated to this slot.
    buckets: [AtomicU32; 2],
    /// Keeps `name` 8-byte aligned without implicit padding.
    _reserved: AtomicU32,
    /// Name bytes, little-endian in 8-byte words; zero past `len` (slots are never reused).
    name: [AtomicU64; NAME_WORDS],
}

impl Slot {
    /// An empty slot (the same as zeroed memory).
    #[cfg(test)]
    pub(crate) const fn new() -> Self {
        Self {
            len: AtomicU32::new(0),
            buckets: [const { AtomicU32::new(0) }; 2],
            _reserved: AtomicU32::new(0),
            name: [const { AtomicU64::new(0) }; NAME_WORDS],
        }
    }
}

// The caller casts raw memory to these types; pin the layout it relies on.
const _: () = assert!(size_of::<Slot>() == 16 + NAME_CAP && align_of::<Slot>() == 8);
const _: () = assert!(SLOTS_OFFSET == 64 && align_of::<Header>() == 64);
// Every name the relay accepts fits a slot.
const _: () = assert!(crate::proto::frame::MAX_HOSTNAME <= NAME_CAP);

/// A normalised name: lowercase, no trailing dot, packed the way slots store it.
struct Name {
    len: u32,
    words: [u64; NAME_WORDS],
    hash: u64,
}

impl Name {
    fn parse(name: &str) -> Result<Self, DnsError> {
        let raw = name.strip_suffix('.').unwrap_or(name).as_bytes();
        // Checked before copying so the stack buffer cannot overflow.
        if raw.len() > crate::proto::frame::MAX_HOSTNAME {
            return Err(DnsError::InvalidName);
        }
        let mut bytes = [0u8; NAME_CAP];
        let bytes_n = &mut bytes[..raw.len()];
        bytes_n.copy_from_slice(raw);
        bytes_n.make_ascii_lowercase();
        let norm = std::str::from_utf8(bytes_n).map_err(|_| DnsError::InvalidName)?;
        // valid_hostname allows a trailing dot; a second one would make "a.b.." a name apart from "a.b".
        if !valid_hostname(norm) || norm.ends_with('.') {
            return Err(DnsError::InvalidName);
        }
        // FNV-1a: tiny, no state, identical in every process sharing the table.
        let hash = norm.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let mut words = [0u64; NAME_WORDS];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *w = u64::from_le_bytes(b);
        }
        Ok(Self {
            len: raw.len() as u32,
            words,
            hash,
        })
    }

    fn used_words(&self) -> usize {
        (self.len as usize).div_ceil(8)
    }
}

/// The fake-address map over a (possibly process-shared) table.
#[derive(Clone, Copy)]
pub(crate) struct FakeDns {
    header: &'static Header,
    slots: &'static [Slot],
    /// Usable slots: the table size, bounded by both networks' sizes.
    capacity: u32,
    v4_net: Cidr,
    /// `v4_net`'s address as a number, for slot offsets.
    v4_base: u32,
    v6_net: Cidr,
    /// `v6_net`'s address as a number, for slot offsets.
    v6_base: u128,
}

impl fmt::Debug for FakeDns {
    // Not derived: the slots would print thousands of atomics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeDns")
            .field("v4", &format_args!("{}", self.v4_net))
            .field("v6", &format_args!("{}", self.v6_net))
            .field("capacity", &self.capacity)
            .field("allocated", &self.allocated())
            .finish()
    }
}

impl FakeDns {
    /// A map over an existing table (zeroed memory is an empty one); every process sharing it must pass the same nets.
    pub(crate) fn new(
        header: &'static Header,
        slots: &'static [Slot],
        v4_net: (Ipv4Addr, u8),
        v6_net: (Ipv6Addr, u8),
    ) -> Result<Self, DnsError> {
        let v4 = Cidr::new(IpAddr::V4(v4_net.0), v4_net.1)?;
        let v6 = Cidr::new(IpAddr::V6(v6_net.0), v6_net.1)?;
        v4.check_fake_net(Family::V4)?;
        v6.check_fake_net(Family::V6)?;
        // Offsets 1..=size-2: never the network address, never the all-ones (broadcast) one.
        let v4_usable = (1u128 << v4.host_bits()) - 2;
        let v6_usable = (1u128 << v6.host_bits()) - 2;
        // Buckets hold `index + 1` in a u32, so u32::MAX slots at most.
        let capacity = (slots.len() as u128)
            .min(v4_usable)
            .min(v6_usable)
            .min(u128::from(u32::MAX)) as u32;
        Ok(Self {
            header,
            slots,
            capacity,
            v4_net: v4,
            v4_base: u32::from(v4_net.0),
            v6_net: v6,
            v6_base: u128::from(v6_net.0),
        })
    }

    /// A map over a new, leaked heap table (tests).
    #[cfg(test)]
    pub(crate) fn in_heap(
        capacity: usize,
        v4_net: (Ipv4Addr, u8),
        v6_net: (Ipv6Addr, u8),
    ) -> Result<Self, DnsError> {
        let header: &'static Header = Box::leak(Box::new(Header::new()));
        let slots: &'static [Slot] = Box::leak((0..capacity).map(|_| Slot::new()).collect());
        Self::new(header, slots, v4_net, v6_net)
    }

    /// Most names this map can ever hold (table size bounded by both nets' sizes).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slots claimed so far, in every process sharing the table (a few may be race losers).
    pub(crate) fn allocated(&self) -> u32 {
        self.header.next.load(Ordering::Relaxed).min(self.capacity)
    }

    /// The index of `name` (normalised), allocating a fake address for it if it has none.
    ///
    /// Names are ASCII-lowercased and lose one trailing dot, then must pass
    /// [`valid_hostname`]. IP literals are valid hostnames too; the caller should answer
    /// those itself rather than fake them.
    ///
    /// Racing inserts of one name (threads or processes) may each claim a slot, but only
    /// one slot wins the name's place in the hash index and every caller returns that one;
    /// a loser's slot stays published with the same name (so it still maps back correctly)
    /// but is never handed out.
    pub(crate) fn lookup_or_insert(&self, name: &str) -> Result<u32, DnsError> {
        let name = Name::parse(name)?;
        if let Some(index) = self.find_parsed(&name) {
            return Ok(index);
        }
        let Some(index) = self.claim() else {
            // Another thread may have inserted it since our look; it would still resolve.
            return self.find_parsed(&name).ok_or(DnsError::Full);
        };
        let slot = &self.slots[index as usize];
        for (dst, &w) in slot.name.iter().zip(&name.words[..name.used_words()]) {
            dst.store(w, Ordering::Relaxed);
        }
        // Publish before indexing: whoever sees the bucket must be able to read the name.
        slot.len.store(name.len, Ordering::Release);
        Ok(self.index_insert(&name, index))
    }

    /// The index of `name` (normalised) if it already has a fake address.
    #[cfg(test)]
    pub(crate) fn find(&self, name: &str) -> Option<u32> {
        self.find_parsed(&Name::parse(name).ok()?)
    }

    /// The fake IPv4 address of slot `index` (an index from this map; others give a meaningless address).
    pub(crate) fn v4(&self, index: u32) -> Ipv4Addr {
        // Wrapping, not panicking: this runs inside the app's libc calls.
        Ipv4Addr::from(self.v4_base.wrapping_add(index).wrapping_add(1))
    }

    /// The fake IPv6 address of slot `index` (an index from this map; others give a meaningless address).
    pub(crate) fn v6(&self, index: u32) -> Ipv6Addr {
        Ipv6Addr::from(self.v6_base.wrapping_add(u128::from(index) + 1))
    }

    /// The name behind a fake address; None for a real or never-allocated address.
    pub(crate) fn name_of(&self, ip: IpAddr) -> Option<String> {
        let slot = &self.slots[self.index_of(ip)? as usize];
        let len = slot.len.load(Ordering::Acquire) as usize;
        if len == 0 || len > NAME_CAP {
            return None;
        }
        let mut bytes = Vec::with_capacity(len.next_multiple_of(8));
        for w in &slot.name[..len.div_ceil(8)] {
            bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        bytes.truncate(len);
        String::from_utf8(bytes).ok()
    }

    /// Whether `ip` lies in either fake network, allocated or not (connects there must never go out as-is).
    pub(crate) fn is_fake(&self, ip: IpAddr) -> bool {
        self.v4_net.contains(ip) || self.v6_net.contains(ip)
    }

    /// Slot index for an address inside a fake net and within capacity (allocated or not).
    fn index_of(&self, ip: IpAddr) -> Option<u32> {
        if !self.is_fake(ip) {
            return None;
        }
        // Inside a net, so the subtraction cannot wrap; `::ffff:a.b.c.d` is its IPv4 address.
        let offset = match ip.to_canonical() {
            IpAddr::V4(a) => u128::from(u32::from(a) - self.v4_base),
            IpAddr::V6(a) => u128::from(a) - self.v6_base,
        };
        (1..=u128::from(self.capacity))
            .contains(&offset)
            .then(|| (offset - 1) as u32)
    }

    /// Claims the next unused slot; None when full. A CAS loop, not fetch_add, so failed
    /// attempts on a full table never wrap the counter back onto used slots.
    fn claim(&self) -> Option<u32> {
        self.header
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .ok()
    }

    /// Hash-index buckets: two per slot, so the index is at most half full.
    fn bucket_count(&self) -> usize {
        self.slots.len() * 2
    }

    fn bucket(&self, i: usize) -> &AtomicU32 {
        &self.slots[i / 2].buckets[i % 2]
    }

    /// Whether published slot `index` holds `name`.
    fn slot_holds(&self, index: u32, name: &Name) -> bool {
        // Bounds-checked: bucket values come from memory other processes write.
        let Some(slot) = self.slots.get(index as usize) else {
            return false;
        };
        slot.len.load(Ordering::Acquire) == name.len
            && slot.name[..name.used_words()]
                .iter()
                .zip(&name.words)
                .all(|(s, &w)| s.load(Ordering::Relaxed) == w)
    }

    fn find_parsed(&self, name: &Name) -> Option<u32> {
        let n = self.bucket_count();
        if n == 0 {
            return None;
        }
        let mut i = (name.hash % n as u64) as usize;
        // Buckets are never cleared, so an empty bucket ends the name's probe chain.
        for _ in 0..n {
            let entry = self.bucket(i).load(Ordering::Acquire);
            if entry == 0 {
                return None;
            }
            if self.slot_holds(entry - 1, name) {
                return Some(entry - 1);
            }
            i = (i + 1) % n;
        }
        None
    }

    /// Enters published slot `index` for `name` into the index; returns the slot that owns the name.
    ///
    /// Each bucket is set once. Two inserters of one name walk the same probe chain and
    /// take the first empty bucket by CAS; the one that loses there (or meets the name
    /// already entered) returns the winner's slot, so each name has at most one entry.
    fn index_insert(&self, name: &Name, index: u32) -> u32 {
        let n = self.bucket_count();
        let mut i = (name.hash % n as u64) as usize;
        // Claimed slots ≤ slots.len() < n buckets, so an empty bucket always exists.
        for _ in 0..n {
            let bucket = self.bucket(i);
            // Release on success pairs with readers' Acquire: the slot's name is visible to them.
            let entry =
                match bucket.compare_exchange(0, index + 1, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return index,
                    Err(entry) => entry,
                };
            if self.slot_holds(entry - 1, name) {
                return entry - 1;
            }
            i = (i + 1) % n;
        }
        // Unreachable unless another process corrupted the table; our own slot is still correct.
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Barrier;

    /// The config's default fake nets.
    const DEFAULT_V4_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(240, 0, 0, 0), 4);
    const DEFAULT_V6_NET: (Ipv6Addr, u8) = (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64);

    fn dns(capacity: usize) -> FakeDns {
        FakeDns::in_heap(capacity, DEFAULT_V4_NET, DEFAULT_V6_NET).unwrap()
    }

    #[test]
    fn same_name_same_address() {
        let d = dns(16);
        let a = d.lookup_or_insert("example.com").unwrap();
        let b = d.lookup_or_insert("other.org").unwrap();
        assert_ne!(a, b);
        assert_eq!(d.lookup_or_insert("example.com").unwrap(), a);
        assert_eq!(d.find("example.com"), Some(a));
        assert_eq!(d.v4(a), Ipv4Addr::new(240, 0, 0, 1));
        assert_eq!(d.v4(b), Ipv4Addr::new(240, 0, 0, 2));
        assert_eq!(d.allocated(), 2);
    }

    #[test]
    fn normalises_case_and_trailing_dot() {
        let d = dns(16);
        let a = d.lookup_or_insert("Example.COM.").unwrap();
        assert_eq!(d.lookup_or_insert("example.com").unwrap(), a);
        assert_eq!(d.find("EXAMPLE.com"), Some(a));
        assert_eq!(d.name_of(d.v4(a).into()).as_deref(), Some("example.com"));
        // Only one trailing dot goes.
        assert_eq!(
            d.lookup_or_insert("example.com.."),
            Err(DnsError::InvalidName)
        );
        assert_eq!(d.allocated(), 1);
    }

    #[test]
    fn v4_and_v6_share_the_index() {
        let d = dns(16);
        d.lookup_or_insert("a.example").unwrap();
        let i = d.lookup_or_insert("b.example").unwrap();
        assert_eq!(d.v4(i), Ipv4Addr::new(240, 0, 0, 2));
        assert_eq!(d.v6(i), "100::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(d.name_of(d.v4(i).into()).as_deref(), Some("b.example"));
        assert_eq!(d.name_of(d.v6(i).into()).as_deref(), Some("b.example"));
    }

    #[test]
    fn reverse_lookup_includes_v4_mapped() {
        let d = dns(16);
        let i = d.lookup_or_insert("mapped.example").unwrap();
        let mapped = IpAddr::V6(d.v4(i).to_ipv6_mapped());
        assert!(d.is_fake(mapped));
        assert_eq!(d.name_of(mapped).as_deref(), Some("mapped.example"));
        // Real addresses are neither fake nor named.
        for real in [
            "1.1.1.1",
            "::ffff:8.8.8.8",
            "2001:db8::1",
            "239.255.255.255",
        ] {
            let ip: IpAddr = real.parse().unwrap();
            assert!(!d.is_fake(ip), "{real}");
            assert_eq!(d.name_of(ip), None, "{real}");
        }
    }

    #[test]
    fn unallocated_fake_is_fake_but_unnamed() {
        let d = dns(16);
        d.lookup_or_insert("one.example").unwrap();
        for ip in [
            "240.0.0.2",
            "240.0.0.0",
            "255.255.255.255",
            "100::",
            "100::5",
            "100::ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(d.is_fake(ip), "{ip}");
            assert_eq!(d.name_of(ip), None, "{ip}");
        }
        assert!(!d.is_fake("100:0:0:1::".parse().unwrap()));
    }

    #[test]
    fn invalid_names_rejected() {
        let d = dns(16);
        let long = "a".repeat(254);
        for bad in [
            "",
            ".",
            "..",
            ".example",
            "a..b",
            "has space",
            "ünï.com",
            "a/b",
            long.as_str(),
        ] {
            assert_eq!(
                d.lookup_or_insert(bad),
                Err(DnsError::InvalidName),
                "{bad:?}"
            );
            assert_eq!(d.find(bad), None);
        }
        assert_eq!(d.allocated(), 0);
        // The longest valid name fits, with or without its trailing dot.
        let max = "b".repeat(253);
        let i = d.lookup_or_insert(&max).unwrap();
        assert_eq!(d.lookup_or_insert(&format!("{max}.")), Ok(i));
        assert_eq!(d.name_of(d.v6(i).into()), Some(max));
    }

    #[test]
    fn full_table_keeps_existing_names() {
        let d = dns(3);
        let names = ["a.test", "b.test", "c.test"];
        let idx: Vec<u32> = names
            .iter()
            .map(|n| d.lookup_or_insert(n).unwrap())
            .collect();
        assert_eq!(idx, [0, 1, 2]);
        assert_eq!(d.lookup_or_insert("d.test"), Err(DnsError::Full));
        assert_eq!(d.lookup_or_insert("e.test"), Err(DnsError::Full));
        for (n, &i) in names.iter().zip(&idx) {
            assert_eq!(d.lookup_or_insert(n), Ok(i));
            assert_eq!(d.name_of(d.v4(i).into()).as_deref(), Some(*n));
        }
        assert_eq!(d.allocated(), 3);
        // Beyond capacity, still inside the net: fake, unnamed.
        assert!(d.is_fake(d.v4(3).into()));
        assert_eq!(d.name_of(d.v4(3).into()), None);
    }

    #[test]
    fn capacity_bounded_by_net_size() {
        let net = (Ipv4Addr::new(10, 9, 8, 0), 24);
        let d = FakeDns::in_heap(1000, net, DEFAULT_V6_NET).unwrap();
        assert_eq!(d.capacity(), 254);
        let mut last = 0;
        for k in 0..254 {
            last = d.lookup_or_insert(&format!("h{k}.test")).unwrap();
        }
        assert_eq!(d.v4(last), Ipv4Addr::new(10, 9, 8, 254));
        assert_eq!(d.lookup_or_insert("one-more.test"), Err(DnsError::Full));
        assert_eq!(d.name_of(Ipv4Addr::new(10, 9, 8, 255).into()), None);
        assert_eq!(d.name_of(Ipv4Addr::new(10, 9, 8, 0).into()), None);
        assert!(matches!(
            FakeDns::in_heap(4, (Ipv4Addr::new(10, 0, 0, 0), 25), DEFAULT_V6_NET),
            Err(DnsError::BadNet(NetError::FakeTooSmall { .. }))
        ));
    }

    #[test]
    fn empty_table_is_full() {
        let d = dns(0);
        assert_eq!(d.lookup_or_insert("x.test"), Err(DnsError::Full));
        assert_eq!(d.find("x.test"), None);
        assert!(d.is_fake("240.0.0.1".parse().unwrap()));
    }

    #[test]
    fn zeroed_table_is_empty() {
        // The same bits a fresh anonymous mmap has: every atomic zero.
        let header: &'static Header = Box::leak(Box::new(Header {
            next: AtomicU32::new(0),
        }));
        let slots: &'static [Slot] = Box::leak(
            (0..64)
                .map(|_| Slot {
                    len: AtomicU32::new(0),
                    buckets: [AtomicU32::new(0), AtomicU32::new(0)],
                    _reserved: AtomicU32::new(0),
                    name: std::array::from_fn(|_| AtomicU64::new(0)),
                })
                .collect(),
        );
        let d = FakeDns::new(header, slots, DEFAULT_V4_NET, DEFAULT_V6_NET).unwrap();
        assert_eq!(d.allocated(), 0);
        assert_eq!(d.capacity(), 64);
        for i in 0..64 {
            assert_eq!(d.name_of(d.v4(i).into()), None);
            assert_eq!(d.name_of(d.v6(i).into()), None);
        }
        assert_eq!(d.find("a.test"), None);
        assert_eq!(d.lookup_or_insert("a.test"), Ok(0));
        assert_eq!(table_bytes(64), 64 + 64 * 272);
    }

    #[test]
    fn concurrent_inserts_agree() {
        const THREADS: usize = 8;
        const PER: usize = 500;
        let d = dns(4096);
        let barrier = Barrier::new(THREADS);
        // Thread t takes names t*250 .. t*250+500: each overlaps its neighbours by 250.
        let results: Vec<Vec<(String, u32)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (d, barrier) = (&d, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let mut ks: Vec<usize> = (t * 250..t * 250 + PER).collect();
                        if t % 2 == 1 {
                            ks.reverse(); // meet the neighbours head-on
                        }
                        ks.into_iter()
                            .map(|k| {
                                let name = format!("host{k}.example");
                                let i = d.lookup_or_insert(&name).unwrap();
                                (name, i)
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut agreed: HashMap<String, u32> = HashMap::new();
        for (name, i) in results.into_iter().flatten() {
            assert_eq!(
                *agreed.entry(name.clone()).or_insert(i),
                i,
                "{name}: two indexes"
            );
        }
        assert_eq!(agreed.len(), (THREADS - 1) * 250 + PER);
        let mut owners: HashMap<u32, &str> = HashMap::new();
        for (name, &i) in &agreed {
            assert!(
                owners.insert(i, name).is_none(),
                "index {i} handed to two names"
            );
            assert_eq!(d.find(name), Some(i));
            assert_eq!(d.name_of(d.v4(i).into()).as_deref(), Some(name.as_str()));
            assert_eq!(d.name_of(d.v6(i).into()).as_deref(), Some(name.as_str()));
        }
    }

    #[test]
    fn new_applies_the_fake_net_rule_of_cidr() {
        // The map has no rule of its own: it accepts exactly what Cidr::check_fake_net does,
        // so a net the config accepted never fails at the first lookup.
        for (v6, prefix) in [
            ("100::", 64),
            ("2001:db8::", 96),
            ("2001:db8::", 121),
            ("::", 64),
            ("::", 0),
            ("::ffff:0:0", 96),
            ("100::1", 64),
        ] {
            let v6: Ipv6Addr = v6.parse().unwrap();
            let rule = Cidr::new(IpAddr::V6(v6), prefix).and_then(|c| c.check_fake_net(Family::V6));
            let map = FakeDns::in_heap(1, DEFAULT_V4_NET, (v6, prefix));
            match (rule, map) {
                (Ok(()), Ok(_)) => {}
                (Err(e), Err(DnsError::BadNet(m))) => assert_eq!(e, m, "{v6}/{prefix}"),
                (r, m) => panic!("{v6}/{prefix}: rule {r:?}, map {m:?}"),
            }
        }
        let e = FakeDns::in_heap(1, DEFAULT_V4_NET, ("::".parse().unwrap(), 64)).unwrap_err();
        assert!(e.to_string().contains("overlaps ::ffff:0:0/96"), "{e}");
    }
}
