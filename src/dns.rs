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

use crate::proto::frame::valid_hostname;

/// Default fake IPv4 network: 240.0.0.0/4 ("class E", reserved, not routed on the internet).
pub const DEFAULT_V4_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(240, 0, 0, 0), 4);
/// Default fake IPv6 network: `100::/64` (RFC 6666 discard-only block).
pub const DEFAULT_V6_NET: (Ipv6Addr, u8) = (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64);
/// Fewest host bits a fake network may have (a /24 for IPv4: 254 names).
pub const MIN_HOST_BITS: u8 = 8;
/// Bytes of name storage per slot (a DNS name is at most 253 bytes).
pub const NAME_CAP: usize = 256;
/// Byte offset of the slot array inside a table region (just after the [`Header`]).
pub const SLOTS_OFFSET: usize = size_of::<Header>().next_multiple_of(align_of::<Slot>());

const NAME_WORDS: usize = NAME_CAP / 8;

/// Byte size of a table region (header and `capacity` slots) for the caller to map.
pub const fn table_bytes(capacity: usize) -> usize {
    SLOTS_OFFSET + capacity * size_of::<Slot>()
}

/// Why a name could not get a fake address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Not a hostname the relay would accept (after lowercasing and dropping one trailing dot).
    #[error("invalid hostname")]
    InvalidName,
    /// Every fake address is taken; slots are never reused.
    #[error("fake-address table full")]
    Full,
    /// A fake network is unusable (see [`parse_net`] for the rules and a readable message).
    #[error("unusable fake network")]
    BadNet,
}

/// Table header, shared by every process mapping the table; all-zero is an empty table.
#[repr(C, align(64))] // a cache line of its own: `next` is the one hot contended word
#[derive(Debug, Default)]
pub struct Header {
    /// Number of slots claimed so far (claimed ≠ published: see [`Slot`]).
    next: AtomicU32,
}

impl Header {
    /// An empty header (the same as zeroed memory).
    pub const fn new() -> Self {
        Self {
            next: AtomicU32::new(0),
        }
    }
}

/// One name slot (plus two hash-index buckets); all-zero is an empty slot.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Slot {
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
    pub const fn new() -> Self {
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
pub struct FakeDns {
    header: &'static Header,
    slots: &'static [Slot],
    /// Usable slots: the table size, bounded by both networks' sizes.
    capacity: u32,
    v4_base: u32,
    v4_prefix: u8,
    v6_base: u128,
    v6_prefix: u8,
}

impl fmt::Debug for FakeDns {
    // Not derived: the slots would print thousands of atomics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeDns")
            .field(
                "v4",
                &format_args!("{}/{}", self.v4_net().0, self.v4_prefix),
            )
            .field(
                "v6",
                &format_args!("{}/{}", self.v6_net().0, self.v6_prefix),
            )
            .field("capacity", &self.capacity)
            .field("allocated", &self.allocated())
            .finish()
    }
}

impl FakeDns {
    /// A map over an existing table (zeroed memory is an empty one); every process sharing it must pass the same nets.
    pub fn new(
        header: &'static Header,
        slots: &'static [Slot],
        v4_net: (Ipv4Addr, u8),
        v6_net: (Ipv6Addr, u8),
    ) -> Result<Self, DnsError> {
        check_net(IpAddr::V4(v4_net.0), v4_net.1).map_err(|_| DnsError::BadNet)?;
        check_net(IpAddr::V6(v6_net.0), v6_net.1).map_err(|_| DnsError::BadNet)?;
        // Offsets 1..=size-2: never the network address, never the all-ones (broadcast) one.
        let v4_usable = (1u128 << (32 - v4_net.1)) - 2;
        let v6_usable = (1u128 << (128 - v6_net.1)) - 2;
        // Buckets hold `index + 1` in a u32, so u32::MAX slots at most.
        let capacity = (slots.len() as u128)
            .min(v4_usable)
            .min(v6_usable)
            .min(u128::from(u32::MAX)) as u32;
        Ok(Self {
            header,
            slots,
            capacity,
            v4_base: u32::from(v4_net.0),
            v4_prefix: v4_net.1,
            v6_base: u128::from(v6_net.0),
            v6_prefix: v6_net.1,
        })
    }

    /// A map over a new, leaked heap table: for tests and for use without fork sharing.
    pub fn in_heap(
        capacity: usize,
        v4_net: (Ipv4Addr, u8),
        v6_net: (Ipv6Addr, u8),
    ) -> Result<Self, DnsError> {
        let header: &'static Header = Box::leak(Box::new(Header::new()));
        let slots: &'static [Slot] = Box::leak((0..capacity).map(|_| Slot::new()).collect());
        Self::new(header, slots, v4_net, v6_net)
    }

    /// Most names this map can ever hold (table size bounded by both nets' sizes).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slots claimed so far, in every process sharing the table (a few may be race losers).
    pub fn allocated(&self) -> u32 {
        self.header.next.load(Ordering::Relaxed).min(self.capacity)
    }

    /// The fake IPv4 network as (base, prefix length).
    pub fn v4_net(&self) -> (Ipv4Addr, u8) {
        (Ipv4Addr::from(self.v4_base), self.v4_prefix)
    }

    /// The fake IPv6 network as (base, prefix length).
    pub fn v6_net(&self) -> (Ipv6Addr, u8) {
        (Ipv6Addr::from(self.v6_base), self.v6_prefix)
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
    pub fn lookup_or_insert(&self, name: &str) -> Result<u32, DnsError> {
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
    pub fn find(&self, name: &str) -> Option<u32> {
        self.find_parsed(&Name::parse(name).ok()?)
    }

    /// The fake IPv4 address of slot `index` (an index from this map; others give a meaningless address).
    pub fn v4(&self, index: u32) -> Ipv4Addr {
        // Wrapping, not panicking: this runs inside the app's libc calls.
        Ipv4Addr::from(self.v4_base.wrapping_add(index).wrapping_add(1))
    }

    /// The fake IPv6 address of slot `index` (an index from this map; others give a meaningless address).
    pub fn v6(&self, index: u32) -> Ipv6Addr {
        Ipv6Addr::from(self.v6_base.wrapping_add(u128::from(index) + 1))
    }

    /// The name behind a fake address; None for a real or never-allocated address.
    pub fn name_of(&self, ip: IpAddr) -> Option<String> {
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
    pub fn is_fake(&self, ip: IpAddr) -> bool {
        match unmap(ip) {
            IpAddr::V4(a) => in_net(
                u128::from(u32::from(a)),
                self.v4_base.into(),
                self.v4_prefix,
                32,
            ),
            IpAddr::V6(a) => in_net(u128::from(a), self.v6_base, self.v6_prefix, 128),
        }
    }

    /// Slot index for an address inside a fake net and within capacity (allocated or not).
    fn index_of(&self, ip: IpAddr) -> Option<u32> {
        let offset = match unmap(ip) {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                in_net(a.into(), self.v4_base.into(), self.v4_prefix, 32)
                    .then(|| u128::from(a - self.v4_base))?
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                in_net(a, self.v6_base, self.v6_prefix, 128).then(|| a - self.v6_base)?
            }
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

/// `::ffff:a.b.c.d` is how dual-stack sockets show IPv4 peers; treat it as the IPv4 address.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `addr` is inside `base/prefix` in a `bits`-wide address space.
fn in_net(addr: u128, base: u128, prefix: u8, bits: u32) -> bool {
    let host_bits = bits - u32::from(prefix);
    addr.checked_shr(host_bits).unwrap_or(0) == base.checked_shr(host_bits).unwrap_or(0)
}

/// Checks a fake network; the error is one readable line naming the problem.
fn check_net(addr: IpAddr, prefix: u8) -> Result<(), String> {
    let (bits, value) = match addr {
        IpAddr::V4(a) => (32u8, u128::from(u32::from(a))),
        IpAddr::V6(a) => (128u8, u128::from(a)),
    };
    if prefix > bits {
        return Err(format!("{addr}/{prefix}: prefix longer than /{bits}"));
    }
    if prefix == 0 {
        return Err(format!(
            "{addr}/0: would make every address fake; use a reserved block such as 240.0.0.0/4 or 100::/64"
        ));
    }
    let host_bits = bits - prefix;
    if host_bits < MIN_HOST_BITS {
        return Err(format!(
            "{addr}/{prefix}: only {host_bits} host bits; need at least {MIN_HOST_BITS} (/{} or shorter)",
            bits - MIN_HOST_BITS
        ));
    }
    let host_mask = (1u128 << host_bits) - 1;
    if value & host_mask != 0 {
        let base = match addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from((value & !host_mask) as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value & !host_mask)),
        };
        return Err(format!(
            "{addr}/{prefix}: host bits set; did you mean {base}/{prefix}?"
        ));
    }
    if addr.is_ipv6() {
        // Addresses in ::ffff:0:0/96 are read as IPv4, so a fake v6 net must not overlap it.
        let mapped = u128::from(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped());
        let shorter = prefix.min(96);
        if in_net(mapped, value, shorter, 128) {
            return Err(format!(
                "{addr}/{prefix}: overlaps ::ffff:0:0/96 (IPv4-mapped addresses); use e.g. 100::/64"
            ));
        }
    }
    Ok(())
}

/// Parses a fake network `a.b.c.d/len` or `x::/len`, requiring ≥ 8 host bits and no host bits set.
pub fn parse_net(s: &str) -> Result<(IpAddr, u8), String> {
    let s = s.trim();
    let Some((addr, prefix)) = s.split_once('/') else {
        return Err(format!(
            "{s:?}: expected ADDRESS/PREFIX, e.g. 240.0.0.0/4 or 100::/64"
        ));
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 or IPv6 address"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("{s:?}: prefix length {prefix:?} is not a number"))?;
    check_net(addr, prefix)?;
    Ok((addr, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Barrier;

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
        assert_eq!(
            FakeDns::in_heap(4, (Ipv4Addr::new(10, 0, 0, 0), 25), DEFAULT_V6_NET).unwrap_err(),
            DnsError::BadNet
        );
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
    fn parse_net_accepts_and_explains() {
        assert_eq!(
            parse_net("240.0.0.0/4"),
            Ok((IpAddr::V4(DEFAULT_V4_NET.0), DEFAULT_V4_NET.1))
        );
        assert_eq!(
            parse_net("100::/64"),
            Ok((IpAddr::V6(DEFAULT_V6_NET.0), DEFAULT_V6_NET.1))
        );
        assert_eq!(parse_net(" 10.1.2.0/24 ").unwrap().1, 24);
        let cases = [
            ("240.0.0.0", "expected ADDRESS/PREFIX"),
            ("240.0.0/4", "not an IPv4 or IPv6 address"),
            ("240.0.0.0/x", "not a number"),
            ("240.0.0.0/33", "longer than /32"),
            ("10.0.0.0/25", "need at least 8"),
            ("100::/121", "need at least 8"),
            ("240.0.0.1/4", "did you mean 240.0.0.0/4?"),
            ("0.0.0.0/0", "every address"),
            ("::ffff:0:0/96", "IPv4-mapped"),
            ("::/64", "IPv4-mapped"),
            ("::ffff:10.0.0.0/120", "IPv4-mapped"),
        ];
        for (input, want) in cases {
            let err = parse_net(input).unwrap_err();
            assert!(err.contains(want), "{input}: {err}");
            assert!(!err.contains('\n'), "{input}: multi-line error");
        }
        // FakeDns::new applies the same rules.
        let v6 = "2001:db8::".parse().unwrap();
        assert!(FakeDns::in_heap(1, DEFAULT_V4_NET, (v6, 96)).is_ok());
        assert_eq!(
            FakeDns::in_heap(1, DEFAULT_V4_NET, (v6, 121)).unwrap_err(),
            DnsError::BadNet
        );
    }
}
