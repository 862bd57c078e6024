//! C data layouts the hooks read and write, other than socket addresses
//! ([`crate::sockaddr`]): a `hostent` in a caller's buffer, an `addrinfo` list built from
//! glibc's own lists, raw `in_addr`/`in6_addr` arguments, and the fds of SCM_RIGHTS
//! messages.

use std::ffi::{c_char, c_int, c_void};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ptr;

use libc::{addrinfo, hostent, msghdr, size_t, socklen_t};

/// Lay a hostent for `name` and `addrs` (all of family `af`) out in the caller's buffer:
/// the alias list (empty), the address list, the addresses, then the name. `ERANGE`
/// when `buflen` is too small, as the `_r` functions report it.
///
/// # Safety
/// `ret` is NULL or a writable hostent; `buf` is NULL or `buflen` writable bytes.
pub(super) unsafe fn fill_hostent(
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    name: &str,
    addrs: &[IpAddr],
    af: c_int,
) -> Result<(), c_int> {
    if ret.is_null() || buf.is_null() {
        return Err(libc::EINVAL);
    }
    let alen = if af == libc::AF_INET { 4 } else { 16 };
    let ptrs = size_of::<*mut c_char>();
    let align = (buf as usize).next_multiple_of(ptrs) - buf as usize;
    let need = align + ptrs * (1 + addrs.len() + 1) + alen * addrs.len() + name.len() + 1;
    if need > buflen {
        return Err(libc::ERANGE);
    }
    // SAFETY: every write below is inside `buf[..need]`, which the caller provides
    // (`need <= buflen`); the pointer arrays are aligned by `align`.
    unsafe {
        let base = buf.add(align);
        let aliases = base.cast::<*mut c_char>();
        *aliases = ptr::null_mut();
        let list = aliases.add(1);
        let mut data = list.add(addrs.len() + 1).cast::<u8>();
        for (i, ip) in addrs.iter().enumerate() {
            match ip {
                IpAddr::V4(a) => ptr::copy_nonoverlapping(a.octets().as_ptr(), data, 4),
                IpAddr::V6(a) => ptr::copy_nonoverlapping(a.octets().as_ptr(), data, 16),
            }
            *list.add(i) = data.cast();
            data = data.add(alen);
        }
        *list.add(addrs.len()) = ptr::null_mut();
        ptr::copy_nonoverlapping(name.as_ptr(), data, name.len());
        *data.add(name.len()) = 0;
        *ret = hostent {
            h_name: data.cast(),
            h_aliases: aliases,
            h_addrtype: af,
            h_length: alen as c_int,
            h_addr_list: list,
        };
    }
    Ok(())
}

/// Decode the raw address argument of `gethostbyaddr` (an `in_addr` or `in6_addr`).
///
/// # Safety
/// `addr` is NULL or points to `len` readable bytes.
pub(super) unsafe fn raw_ip(addr: *const c_void, len: socklen_t, af: c_int) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    // At most an in6_addr is read, whatever `len` says.
    let len = (len as usize).min(16);
    // SAFETY: `len` readable bytes (contract; at most the caller's); u8 has no alignment
    // requirement.
    let b = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len) };
    match af {
        libc::AF_INET => Some(Ipv4Addr::from(<[u8; 4]>::try_from(b.get(..4)?).ok()?).into()),
        libc::AF_INET6 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(b.get(..16)?).ok()?).into()),
        _ => None,
    }
}

/// An `addrinfo` list made of glibc-allocated lists chained end to end. glibc's
/// `freeaddrinfo` frees node by node, so the chain is freed by one call on its head.
pub(super) struct AddrinfoChain {
    head: *mut addrinfo,
    tail: *mut addrinfo,
}

impl AddrinfoChain {
    /// An empty chain.
    pub(super) fn new() -> AddrinfoChain {
        AddrinfoChain {
            head: ptr::null_mut(),
            tail: ptr::null_mut(),
        }
    }

    /// Append a list `getaddrinfo` returned (NULL: nothing).
    ///
    /// # Safety
    /// `list` is NULL or a list from glibc's `getaddrinfo`, owned by nobody else.
    pub(super) unsafe fn append(&mut self, list: *mut addrinfo) {
        if list.is_null() {
            return;
        }
        // SAFETY: `tail` is the last node of our own chain (or NULL); `list` is a valid
        // NULL-terminated list (contract).
        unsafe {
            if self.head.is_null() {
                self.head = list;
            } else {
                (*self.tail).ai_next = list;
            }
            self.tail = list;
            while !(*self.tail).ai_next.is_null() {
                self.tail = (*self.tail).ai_next;
            }
        }
    }

    /// The head of the chain (NULL when empty); the caller frees it with `freeaddrinfo`.
    pub(super) fn into_head(self) -> *mut addrinfo {
        self.head
    }
}

/// Every fd carried by SCM_RIGHTS messages in `msg`'s control buffer.
///
/// # Safety
/// `msg` is a valid msghdr whose control buffer (`msg_control`, `msg_controllen`) is
/// readable, as `recvmsg` leaves it.
pub(super) unsafe fn scm_rights_fds(msg: *const msghdr) -> Vec<c_int> {
    let mut fds = Vec::new();
    // SAFETY: walking the control buffer with libc's CMSG macros, which stay inside
    // `msg_controllen`; each SCM_RIGHTS payload holds whole ints up to its cmsg_len.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<c_int>();
                let header = data as usize - c as usize;
                let n = ((*c).cmsg_len as usize).saturating_sub(header) / size_of::<c_int>();
                fds.extend((0..n).map(|i| ptr::read_unaligned(data.add(i))));
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    fds
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn hostent_is_laid_out_in_a_stack_buffer() {
        let addrs: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()];
        let mut buf = [0u64; 16];
        // SAFETY: an all-zero hostent is valid (NULL pointers).
        let mut ent: hostent = unsafe { std::mem::zeroed() };
        // Start one byte in, so the pointer arrays must be aligned by the code.
        // SAFETY: 127 bytes of a 128-byte stack buffer.
        let r = unsafe {
            let b = buf.as_mut_ptr().cast::<c_char>().add(1);
            fill_hostent(&mut ent, b, 127, "example.org", &addrs, libc::AF_INET)
        };
        assert_eq!(r, Ok(()));
        assert_eq!((ent.h_addrtype, ent.h_length), (libc::AF_INET, 4));
        // SAFETY: the hostent just filled points into `buf`, which is still alive.
        unsafe {
            assert_eq!(CStr::from_ptr(ent.h_name).to_str(), Ok("example.org"));
            assert!((*ent.h_aliases).is_null());
            assert_eq!(ent.h_addr_list as usize % size_of::<*mut c_char>(), 0);
            let second = *ent.h_addr_list.add(1);
            assert_eq!(
                std::slice::from_raw_parts(second.cast::<u8>(), 4),
                &[192, 0, 2, 2]
            );
            assert!((*ent.h_addr_list.add(2)).is_null());
        }
    }

    #[test]
    fn hostent_too_small_is_erange() {
        let addrs: Vec<IpAddr> = vec!["2001:db8::1".parse().unwrap()];
        let mut buf = [0u64; 4];
        // SAFETY: as above.
        let mut ent: hostent = unsafe { std::mem::zeroed() };
        // SAFETY: a 32-byte stack buffer.
        let r = unsafe {
            fill_hostent(
                &mut ent,
                buf.as_mut_ptr().cast(),
                32,
                "example.org",
                &addrs,
                libc::AF_INET6,
            )
        };
        assert_eq!(r, Err(libc::ERANGE));
        // SAFETY: NULLs are checked.
        let r = unsafe { fill_hostent(&mut ent, ptr::null_mut(), 0, "x", &addrs, libc::AF_INET6) };
        assert_eq!(r, Err(libc::EINVAL));
    }

    #[test]
    fn raw_ip_checks_length_and_family() {
        let v6 = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets();
        // SAFETY: stack buffers of the given lengths.
        unsafe {
            assert_eq!(
                raw_ip(v6.as_ptr().cast(), 16, libc::AF_INET6),
                Some(IpAddr::V6("2001:db8::7".parse().unwrap()))
            );
            assert_eq!(raw_ip(v6.as_ptr().cast(), 15, libc::AF_INET6), None);
            assert_eq!(
                raw_ip(v6.as_ptr().cast(), 4, libc::AF_INET),
                Some(IpAddr::V4(Ipv4Addr::new(0x20, 0x01, 0x0d, 0xb8)))
            );
            assert_eq!(raw_ip(v6.as_ptr().cast(), 16, libc::AF_UNIX), None);
            assert_eq!(raw_ip(ptr::null(), 16, libc::AF_INET6), None);
        }
    }

    #[test]
    fn addrinfo_lists_chain_and_free_as_one() {
        let mut chain = AddrinfoChain::new();
        for host in [c"192.0.2.1", c"2001:db8::1"] {
            let mut out = ptr::null_mut();
            // SAFETY: numeric hosts (no lookup), NULL hints, a valid out pointer.
            let r =
                unsafe { libc::getaddrinfo(host.as_ptr(), c"80".as_ptr(), ptr::null(), &mut out) };
            assert_eq!(r, 0);
            // SAFETY: a list getaddrinfo just returned.
            unsafe { chain.append(out) };
        }
        let head = chain.into_head();
        // SAFETY: the chained list, freed right after.
        let seen = unsafe { crate::sockaddr::addrinfo_addrs(head) };
        // SAFETY: as above.
        unsafe { libc::freeaddrinfo(head) };
        assert!(seen.iter().any(|a| a.to_string() == "192.0.2.1:80"));
        assert!(seen.iter().any(|a| a.to_string() == "[2001:db8::1]:80"));
        assert!(seen.first().unwrap().is_ipv4(), "in the order appended");
    }

    #[test]
    fn scm_rights_fds_are_read_from_a_heap_control_buffer() {
        // Two messages: SCM_RIGHTS with fds 7 and 9, then SCM_CREDENTIALS (skipped).
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
        let (space1, space2) = unsafe {
            (
                libc::CMSG_SPACE(2 * size_of::<c_int>() as u32) as usize,
                libc::CMSG_SPACE(size_of::<libc::ucred>() as u32) as usize,
            )
        };
        let mut control = vec![0u64; (space1 + space2).div_ceil(8)];
        // SAFETY: an all-zero msghdr is valid.
        let mut msg: msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space1 + space2;
        // SAFETY: filling the control buffer through libc's macros, within its size.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(2 * size_of::<c_int>() as u32) as usize;
            let d = libc::CMSG_DATA(c).cast::<c_int>();
            ptr::write_unaligned(d, 7);
            ptr::write_unaligned(d.add(1), 9);
            let c2 = libc::CMSG_NXTHDR(&msg, c);
            (*c2).cmsg_level = libc::SOL_SOCKET;
            (*c2).cmsg_type = libc::SCM_CREDENTIALS;
            (*c2).cmsg_len = libc::CMSG_LEN(size_of::<libc::ucred>() as u32) as usize;
        }
        // SAFETY: the msghdr and its control buffer built above.
        assert_eq!(unsafe { scm_rights_fds(&msg) }, vec![7, 9]);
        msg.msg_controllen = 0;
        // SAFETY: as above, with no control data.
        assert_eq!(unsafe { scm_rights_fds(&msg) }, Vec::<c_int>::new());
    }
}
