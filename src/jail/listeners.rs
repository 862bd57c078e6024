//! Whether a TCP listener in this network namespace would take a connection to an
//! address: inside a jail, a bypassed destination that a jailed server listens on stays
//! inside (`qnet run -- sh -c 'server & client'`); any other goes to the host through the
//! broker. Read from `/proc/self/net/tcp{,6}`, which shows this process's namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP_LISTEN in the `st` column.
const LISTEN: &str = "0A";

/// Whether a socket of this network namespace listens where a connect to `dest` lands.
pub(crate) fn listening_here(dest: SocketAddr) -> bool {
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .any(|table| table.lines().skip(1).any(|l| takes(l, dest)))
}

/// Whether the table line `line` is a listener that accepts a connect to `dest`: the same
/// port, and its address is `dest`'s or a wildcard (an IPv6 one takes IPv4 too, unless
/// it is v6-only, which the table does not say: a refused connect then tells).
fn takes(line: &str, dest: SocketAddr) -> bool {
    let mut f = line.split_whitespace().skip(1);
    let (Some(local), Some(_remote), Some(st)) = (f.next(), f.next(), f.next()) else {
        return false;
    };
    let Some((ip, port)) = parse_local(local) else {
        return false;
    };
    st == LISTEN
        && port == dest.port()
        && (ip.is_unspecified() || ip.to_canonical() == dest.ip().to_canonical())
}

/// `0100007F:1F90` or 32 hex digits and a port: the kernel prints each 32-bit word of the
/// address in host order (little-endian here) and the port in hex.
fn parse_local(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(addr.get(8 * i..8 * i + 8)?, 16).ok()?;
        Some(w.to_le_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as Linux 6.x prints them (the fields after `st` cut short).
    const V4_LISTEN: &str = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000";
    const V4_ANY: &str = "   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000";
    const V4_ESTABLISHED: &str =
        "   2: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000";
    const V6_LOOPBACK: &str =
        "   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 0";
    const V6_ANY: &str =
        "   1: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 0";

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn proc_net_tcp_addresses_parse() {
        assert_eq!(
            parse_local("0100007F:1F90"),
            Some(("127.0.0.1".parse().unwrap(), 8080))
        );
        assert_eq!(
            parse_local("00000000000000000000000001000000:0050"),
            Some(("::1".parse().unwrap(), 80))
        );
        assert_eq!(parse_local("0100007F"), None);
        assert_eq!(parse_local("01007F:1F90"), None);
        assert_eq!(parse_local("0100007G:1F90"), None);
    }

    #[test]
    fn a_listener_takes_its_address_and_wildcards_take_all() {
        assert!(takes(V4_LISTEN, sa("127.0.0.1:8080")));
        assert!(!takes(V4_LISTEN, sa("127.0.0.2:8080")), "another address");
        assert!(!takes(V4_LISTEN, sa("127.0.0.1:8081")), "another port");
        assert!(
            !takes(V4_ESTABLISHED, sa("127.0.0.1:8080")),
            "not a listener"
        );
        assert!(takes(V4_ANY, sa("127.0.0.5:22")));
        assert!(takes(V6_LOOPBACK, sa("[::1]:80")));
        assert!(!takes(V6_LOOPBACK, sa("127.0.0.1:80")));
        assert!(takes(V6_ANY, sa("127.0.0.1:443")), "dual-stack wildcard");
        assert!(takes(V4_LISTEN, sa("[::ffff:127.0.0.1]:8080")), "v4-mapped");
        assert!(!takes("garbage", sa("127.0.0.1:8080")));
    }

    #[test]
    fn this_process_sees_its_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        assert!(listening_here(a));
        drop(l);
        // A child another test forked at that moment may hold a copy for a while.
        let gone = (0..200).any(|_| {
            let g = !listening_here(a);
            if !g {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            g
        });
        assert!(gone, "still listening 2 s after the drop");
    }
}
