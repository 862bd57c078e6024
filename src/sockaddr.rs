//! The one codec for C socket addresses (`sockaddr_in`, `sockaddr_in6`): every hook, the
//! C API and the engine's system calls read and write them here.
//!
//! Decoding follows what the kernel accepts: an IPv4 address needs the 16 bytes of a
//! `sockaddr_in`, an IPv6 address the 24 bytes of RFC 2133's `sockaddr_in6` (no
//! `sin6_scope_id`, Linux's `SIN6_LEN_RFC2133`) or the full 28. `sin6_flowinfo` and
//! `sin6_scope_id` are kept as the caller stored them, as std's own conversion does. An
//! IPv4-mapped IPv6 address stays IPv6 here (`getpeername` must give back what the app
//! gave); callers that route by address unmap it with [`std::net::IpAddr::to_canonical`].
#![allow(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use libc::{c_int, sockaddr, socklen_t};

/// Byte offsets of the fields, as `<netinet/in.h>` lays them out (checked in the tests).
mod field {
    use std::ops::Range;
    pub(super) const FAMILY: Range<usize> = 0..2;
    pub(super) const PORT: Range<usize> = 2..4;
    pub(super) const V4_ADDR: Range<usize> = 4..8;
    pub(super) const V6_FLOWINFO: Range<usize> = 4..8;
    pub(super) const V6_ADDR: Range<usize> = 8..24;
    pub(super) const V6_SCOPE_ID: Range<usize> = 24..28;
}

/// The length of a `sockaddr_in`.
pub(crate) const SIN_LEN: usize = size_of::<libc::sockaddr_in>();
/// The shortest IPv6 address the kernel accepts: RFC 2133's `sockaddr_in6`, without
/// `sin6_scope_id` (Linux's `SIN6_LEN_RFC2133`).
pub(crate) const SIN6_LEN_RFC2133: usize = 24;
/// The length of a full `sockaddr_in6`.
pub(crate) const SIN6_LEN: usize = size_of::<libc::sockaddr_in6>();

/// Why bytes are not an inet socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SockaddrError {
    /// The pointer is NULL.
    #[error("the address is NULL")]
    Null,
    /// Too short to hold even the family field.
    #[error("the address is {0} bytes, too short for its family field")]
    NoFamily(usize),
    /// Neither `AF_INET` nor `AF_INET6`.
    #[error("address family {0} is neither AF_INET nor AF_INET6")]
    Family(u16),
    /// An inet family with fewer bytes than the kernel accepts for it.
    #[error("{len} bytes are too few for an {} address", if *.family == libc::AF_INET as u16 { "IPv4" } else { "IPv6" })]
    Short {
        /// The family field.
        family: u16,
        /// The length given.
        len: usize,
    },
}

impl SockaddrError {
    /// An inet family with too few bytes: the kernel would answer EINVAL, and such an
    /// argument must never reach the real call (fail closed). Every other error is an
    /// address that is not ours to judge.
    pub(crate) fn is_short_inet(self) -> bool {
        matches!(self, SockaddrError::Short { .. })
    }
}

fn array<const N: usize>(b: &[u8], r: std::ops::Range<usize>) -> [u8; N] {
    b[r].try_into().expect("range of the array's size")
}

/// Decode the bytes of a C socket address (as many as the caller's length says).
pub(crate) fn decode(b: &[u8]) -> Result<SocketAddr, SockaddrError> {
    if b.len() < field::FAMILY.end {
        return Err(SockaddrError::NoFamily(b.len()));
    }
    let family = u16::from_ne_bytes(array(b, field::FAMILY));
    let short = || SockaddrError::Short {
        family,
        len: b.len(),
    };
    match i32::from(family) {
        libc::AF_INET => {
            if b.len() < SIN_LEN {
                return Err(short());
            }
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(array::<4>(b, field::V4_ADDR)),
                u16::from_be_bytes(array(b, field::PORT)),
            )))
        }
        libc::AF_INET6 => {
            if b.len() < SIN6_LEN_RFC2133 {
                return Err(short());
            }
            // A 24-byte address has no scope id.
            let scope_id = b
                .get(field::V6_SCOPE_ID)
                .map_or(0, |s| u32::from_ne_bytes(s.try_into().expect("4 bytes")));
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(array::<16>(b, field::V6_ADDR)),
                u16::from_be_bytes(array(b, field::PORT)),
                u32::from_ne_bytes(array(b, field::V6_FLOWINFO)),
                scope_id,
            )))
        }
        _ => Err(SockaddrError::Family(family)),
    }
}

/// Decode a C socket address of `len` bytes at `addr`.
///
/// # Safety
/// `addr` is NULL or points to `len` readable bytes (the contract of `connect`,
/// `sendto`, `getnameinfo` … for their address argument).
pub(crate) unsafe fn read(
    addr: *const sockaddr,
    len: socklen_t,
) -> Result<SocketAddr, SockaddrError> {
    if addr.is_null() {
        return Err(SockaddrError::Null);
    }
    // Never look past the largest address decoded (a caller's addrlen may be anything,
    // up to 4 GiB); every decision is made on the first 28 bytes.
    let len = (len as usize).min(size_of::<libc::sockaddr_in6>());
    // SAFETY: `len` readable bytes at a non-NULL `addr` (this function's contract, and
    // `len` is at most the caller's); u8 has no alignment requirement.
    let b = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len) };
    decode(b)
}

/// The inet address a `getsockname`/`getpeername`-shaped `call` reports (0: success),
/// read from a zeroed `sockaddr_storage` the call fills.
pub(crate) fn fetch(
    call: impl FnOnce(*mut sockaddr, *mut socklen_t) -> c_int,
) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as socklen_t;
    if call((&raw mut ss).cast(), &mut len) != 0 {
        return None;
    }
    // SAFETY: `ss` has 128 readable bytes and `read` looks at no more than 28, whatever
    // `len` the call reported.
    unsafe { read((&raw const ss).cast(), len) }.ok()
}

/// A socket address laid out as the C struct for its family, ready for a system call.
#[derive(Clone, Copy)]
pub(crate) enum Encoded {
    /// An IPv4 address.
    V4(libc::sockaddr_in),
    /// An IPv6 address (flowinfo and scope id as given).
    V6(libc::sockaddr_in6),
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encoded({:?})", self.as_bytes())
    }
}

/// The addresses of an `addrinfo` list, in order; entries that are not inet addresses
/// are skipped.
///
/// # Safety
/// `head` is NULL or a well-formed list (as `getaddrinfo` returns): each `ai_addr` has
/// `ai_addrlen` readable bytes and each `ai_next` is NULL or the next entry.
pub(crate) unsafe fn addrinfo_addrs(head: *const libc::addrinfo) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    let mut p = head;
    while !p.is_null() {
        // SAFETY: `p` is an entry of the list, by the caller's contract.
        let ai = unsafe { &*p };
        // SAFETY: `ai_addr` has `ai_addrlen` bytes, by the caller's contract.
        if let Ok(a) = unsafe { read(ai.ai_addr, ai.ai_addrlen) } {
            out.push(a);
        }
        p = ai.ai_next;
    }
    out
}

/// Lay `sa` out as its C struct.
pub(crate) fn encode(sa: SocketAddr) -> Encoded {
    match sa {
        SocketAddr::V4(a) => Encoded::V4(libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        }),
        SocketAddr::V6(a) => Encoded::V6(libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: a.port().to_be(),
            sin6_flowinfo: a.flowinfo(),
            sin6_addr: libc::in6_addr {
                s6_addr: a.ip().octets(),
            },
            sin6_scope_id: a.scope_id(),
        }),
    }
}

impl Encoded {
    /// The struct's length, as a system call takes it.
    pub(crate) fn len(&self) -> socklen_t {
        self.as_bytes().len() as socklen_t
    }

    /// A pointer to the struct, valid while `self` is.
    pub(crate) fn as_ptr(&self) -> *const sockaddr {
        match self {
            Encoded::V4(s) => (s as *const libc::sockaddr_in).cast(),
            Encoded::V6(s) => (s as *const libc::sockaddr_in6).cast(),
        }
    }

    /// The struct's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        let n = match self {
            Encoded::V4(_) => SIN_LEN,
            Encoded::V6(_) => SIN6_LEN,
        };
        // SAFETY: both structs are plain old data without padding (16 = 2+2+4+8 and
        // 28 = 2+2+4+16+4 bytes), so all `n` bytes are initialised; the borrow of `self`
        // keeps them alive.
        unsafe { std::slice::from_raw_parts(self.as_ptr().cast::<u8>(), n) }
    }

    /// Copy into `out` with `getpeername` semantics: as much as fits; returns the full
    /// length, which the caller reports even when it truncated.
    pub(crate) fn copy_truncated(&self, out: &mut [u8]) -> usize {
        let b = self.as_bytes();
        let n = b.len().min(out.len());
        out[..n].copy_from_slice(&b[..n]);
        b.len()
    }
}

/// Write `sa` to a caller's `addr`/`len` pair as `getpeername` and `getsockname` do:
/// truncated to `*len`, and `*len` set to the full length.
///
/// # Safety
/// `len` is NULL or points to a readable, writable `socklen_t`; `addr` is NULL or points
/// to `*len` writable bytes.
pub(crate) unsafe fn write(
    sa: SocketAddr,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> Result<(), SockaddrError> {
    if addr.is_null() || len.is_null() {
        return Err(SockaddrError::Null);
    }
    let enc = encode(sa);
    // SAFETY: `len` is a valid socklen_t and `addr` has `*len` writable bytes (contract);
    // the slice covers no more than the bytes written.
    unsafe {
        let n = (*len as usize).min(enc.as_bytes().len());
        let out = std::slice::from_raw_parts_mut(addr.cast::<u8>(), n);
        *len = enc.copy_truncated(out) as socklen_t;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn field_offsets_match_the_c_structs() {
        assert_eq!(offset_of!(libc::sockaddr_in, sin_port), field::PORT.start);
        assert_eq!(
            offset_of!(libc::sockaddr_in, sin_addr),
            field::V4_ADDR.start
        );
        assert_eq!(offset_of!(libc::sockaddr_in6, sin6_port), field::PORT.start);
        assert_eq!(
            offset_of!(libc::sockaddr_in6, sin6_flowinfo),
            field::V6_FLOWINFO.start
        );
        assert_eq!(
            offset_of!(libc::sockaddr_in6, sin6_addr),
            field::V6_ADDR.start
        );
        assert_eq!(
            offset_of!(libc::sockaddr_in6, sin6_scope_id),
            field::V6_SCOPE_ID.start
        );
        assert_eq!((SIN_LEN, SIN6_LEN), (16, 28));
    }

    fn v6(scope: u32) -> libc::sockaddr_in6 {
        let mut s: libc::sockaddr_in6 = unsafe_zeroed();
        s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        s.sin6_port = 443u16.to_be();
        s.sin6_flowinfo = 0x0001_2345;
        s.sin6_addr.s6_addr = "fe80::1".parse::<Ipv6Addr>().unwrap().octets();
        s.sin6_scope_id = scope;
        s
    }

    fn unsafe_zeroed<T: Copy>() -> T {
        // SAFETY: only used for libc's sockaddr structs, for which all-zero is valid.
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn reads_ipv4_from_a_stack_struct() {
        let s = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 8080u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([192, 0, 2, 7]),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: a stack struct of the given size.
        let a = unsafe { read((&raw const s).cast(), SIN_LEN as socklen_t) };
        assert_eq!(a, Ok("192.0.2.7:8080".parse().unwrap()));
    }

    #[test]
    fn reads_ipv6_at_28_bytes_with_flowinfo_and_scope() {
        let s = v6(3);
        // SAFETY: a stack struct of the given size.
        let a = unsafe { read((&raw const s).cast(), SIN6_LEN as socklen_t) }.unwrap();
        let SocketAddr::V6(a) = a else { panic!("v6") };
        assert_eq!(a.ip(), &"fe80::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            (a.port(), a.flowinfo(), a.scope_id()),
            (443, 0x0001_2345, 3)
        );
    }

    #[test]
    fn reads_ipv6_at_24_bytes_without_scope() {
        let s = v6(3);
        // Only the first 24 bytes are the caller's: the scope id is not read.
        // SAFETY: a stack struct of at least the given size.
        let a = unsafe { read((&raw const s).cast(), SIN6_LEN_RFC2133 as socklen_t) }.unwrap();
        let SocketAddr::V6(a) = a else { panic!("v6") };
        assert_eq!(
            (a.port(), a.flowinfo(), a.scope_id()),
            (443, 0x0001_2345, 0)
        );
    }

    #[test]
    fn v4_mapped_stays_ipv6_and_unmaps_with_to_canonical() {
        let mut s = v6(0);
        s.sin6_addr.s6_addr = "::ffff:192.0.2.1".parse::<Ipv6Addr>().unwrap().octets();
        let a = decode(encode_bytes(&s)).unwrap();
        assert!(a.is_ipv6());
        assert_eq!(
            a.ip().to_canonical(),
            "192.0.2.1".parse::<std::net::IpAddr>().unwrap()
        );
    }

    fn encode_bytes(s: &libc::sockaddr_in6) -> &[u8] {
        // SAFETY: the struct has no padding; the slice borrows it.
        unsafe { std::slice::from_raw_parts((s as *const libc::sockaddr_in6).cast(), SIN6_LEN) }
    }

    #[test]
    fn short_null_and_other_families_are_typed_errors() {
        let s = v6(0);
        let b = encode_bytes(&s);
        assert_eq!(
            decode(&b[..23]),
            Err(SockaddrError::Short {
                family: libc::AF_INET6 as u16,
                len: 23
            })
        );
        assert!(decode(&b[..23]).unwrap_err().is_short_inet());
        let v4 = encode(SocketAddr::from(([192, 0, 2, 1], 80)));
        assert_eq!(
            decode(&v4.as_bytes()[..15]),
            Err(SockaddrError::Short {
                family: libc::AF_INET as u16,
                len: 15
            })
        );
        assert_eq!(decode(&b[..1]), Err(SockaddrError::NoFamily(1)));
        let mut unix = [0u8; 110];
        unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(
            decode(&unix),
            Err(SockaddrError::Family(libc::AF_UNIX as u16))
        );
        assert!(!decode(&unix).unwrap_err().is_short_inet());
        // SAFETY: NULL is allowed.
        let null = unsafe { read(std::ptr::null(), 28) };
        assert_eq!(null, Err(SockaddrError::Null));
    }

    #[test]
    fn encode_round_trips_with_scope_id() {
        for text in ["192.0.2.1:80", "[2001:db8::1]:443", "[::ffff:192.0.2.1]:22"] {
            let a: SocketAddr = text.parse().unwrap();
            assert_eq!(decode(encode(a).as_bytes()), Ok(a), "{text}");
        }
        let scoped = SocketAddr::V6(SocketAddrV6::new(
            "fe80::2".parse().unwrap(),
            8443,
            0x000a_bcde,
            7,
        ));
        let e = encode(scoped);
        assert_eq!(e.len() as usize, SIN6_LEN);
        assert_eq!(decode(e.as_bytes()), Ok(scoped));
        // The struct the kernel would get carries the same fields.
        let Encoded::V6(s) = e else { panic!("v6") };
        assert_eq!((u16::from_be(s.sin6_port), s.sin6_scope_id), (8443, 7));
    }

    #[test]
    fn write_truncates_to_a_short_addrlen_and_reports_the_full_length() {
        let a: SocketAddr = "[2001:db8::5]:4000".parse().unwrap();
        let mut out = [0xAAu8; 32];
        let mut len: socklen_t = 8;
        // SAFETY: a 32-byte stack buffer and a valid length (8 <= 32).
        unsafe { write(a, out.as_mut_ptr().cast(), &mut len) }.unwrap();
        assert_eq!(len as usize, SIN6_LEN, "the full length is reported");
        assert_eq!(&out[..8], &encode(a).as_bytes()[..8]);
        assert_eq!(out[8], 0xAA, "nothing written past the caller's length");
        let mut len: socklen_t = 32;
        // SAFETY: as above.
        unsafe { write(a, out.as_mut_ptr().cast(), &mut len) }.unwrap();
        assert_eq!(decode(&out[..len as usize]), Ok(a));
        // SAFETY: NULLs are checked.
        let e = unsafe { write(a, std::ptr::null_mut(), &mut len) };
        assert_eq!(e, Err(SockaddrError::Null));
    }
}
