//! The calls that would let the app's traffic leave outside the tunnel, refused unless
//! the config allows them: raw, packet and UDP sockets, inbound listeners, setuid exec
//! (the loader drops `LD_PRELOAD`), and connected sockets received from other processes.
//! Each refusal tells the user once on stderr.

use std::net::SocketAddr;

use super::Decision;
use super::refused::{Refusal, count};
use super::runtime::config;
use crate::engine::bypass::BypassGuard;
use crate::engine::fdtab::{self, Kind};
use crate::engine::log::tell_once;
use crate::engine::sys;

// ---- socket(2)'s policy: one table, read by the `socket` hook and compiled into the
// seccomp filter (hooks/seccomp.rs), so the two never disagree --------------------------

/// What `socket(family, type, protocol)` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketVerdict {
    /// Created as asked: unix and netlink (nothing leaves the host), inet TCP/MPTCP
    /// streams (their connects come through the hooks).
    Allow,
    /// An inet UDP socket: created, so programs can probe, but every send is refused.
    Udp,
    /// Raw, packet and non-UDP datagram sockets (ICMP, UDP-Lite): EPERM, unless
    /// `intercept.allow_udp`.
    Raw,
    /// Nothing qnet tunnels or refuses later, so never created: SCTP and other inet
    /// protocols (EPROTONOSUPPORT), other families (EAFNOSUPPORT). With no socket,
    /// libsctp's `sctp_connectx`/`sctp_bindx` have nothing to work on, so they need no hook.
    Errno(i32),
}

/// How a family is decided: outright, or by type and protocol (inet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FamilyRule {
    /// This verdict whatever the type and protocol.
    Is(SocketVerdict),
    /// By [`INET_TYPES`].
    Inet,
}

/// The families `socket` knows; any other gets [`OTHER_FAMILY`].
pub(crate) const FAMILIES: &[(i32, FamilyRule)] = &[
    (libc::AF_UNIX, FamilyRule::Is(SocketVerdict::Allow)),
    // A kernel interface that sends nothing off the host: glibc's getaddrinfo with
    // AI_ADDRCONFIG and if_nameindex ask NETLINK_ROUTE.
    (libc::AF_NETLINK, FamilyRule::Is(SocketVerdict::Allow)),
    (libc::AF_INET, FamilyRule::Inet),
    (libc::AF_INET6, FamilyRule::Inet),
    (libc::AF_PACKET, FamilyRule::Is(SocketVerdict::Raw)),
];
/// AF_VSOCK, AF_XDP, AF_BLUETOOTH, AF_TIPC …
pub(crate) const OTHER_FAMILY: SocketVerdict = SocketVerdict::Errno(libc::EAFNOSUPPORT);

/// `SOCK_PACKET` on AF_INET is the obsolete form of a packet socket.
const SOCK_PACKET: i32 = 10;

/// Inet sockets by type (the flags SOCK_NONBLOCK and SOCK_CLOEXEC masked off): the
/// verdict for each listed protocol, and for any other.
pub(crate) type InetType = (i32, &'static [(i32, SocketVerdict)], SocketVerdict);
pub(crate) const INET_TYPES: &[InetType] = &[
    (
        libc::SOCK_STREAM,
        &[
            (0, SocketVerdict::Allow),
            (libc::IPPROTO_TCP, SocketVerdict::Allow),
            (libc::IPPROTO_MPTCP, SocketVerdict::Allow),
        ],
        // IPPROTO_SCTP: a stream that sctp_connectx would connect past the hooks.
        SocketVerdict::Errno(libc::EPROTONOSUPPORT),
    ),
    (
        libc::SOCK_DGRAM,
        &[
            (0, SocketVerdict::Udp),
            (libc::IPPROTO_UDP, SocketVerdict::Udp),
        ],
        SocketVerdict::Raw,
    ),
    (libc::SOCK_RAW, &[], SocketVerdict::Raw),
    (SOCK_PACKET, &[], SocketVerdict::Raw),
];
/// SOCK_SEQPACKET (SCTP on inet), SOCK_DCCP, SOCK_RDM, or a type with unknown flags.
pub(crate) const OTHER_INET_TYPE: SocketVerdict = SocketVerdict::Errno(libc::EPROTONOSUPPORT);
/// The type flags the kernel takes apart from the type.
pub(crate) const TYPE_FLAGS: i32 = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;

/// The table's verdict for `socket(domain, ty, proto)`.
pub(crate) fn socket_verdict(domain: i32, ty: i32, proto: i32) -> SocketVerdict {
    match FAMILIES.iter().find(|f| f.0 == domain).map(|f| f.1) {
        None => OTHER_FAMILY,
        Some(FamilyRule::Is(v)) => v,
        Some(FamilyRule::Inet) => {
            let Some(&(_, protos, other)) = INET_TYPES.iter().find(|t| t.0 == ty & !TYPE_FLAGS)
            else {
                return OTHER_INET_TYPE;
            };
            protos.iter().find(|p| p.0 == proto).map_or(other, |p| p.1)
        }
    }
}

/// What `socket` must remember about a socket it creates (one with nothing to remember
/// is a [`Decision::Bypass`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NewSocket {
    /// An inet datagram socket: created (programs probe for IPv6 with one), but every
    /// connect and send on it is refused.
    Datagram,
}

/// `socket`: the table's verdict, with `intercept.allow_udp` opening UDP and raw sockets
/// (as the filter's raw switch does). Holds with the seccomp filter off too.
pub(crate) fn socket(domain: i32, ty: i32, proto: i32) -> Decision<NewSocket> {
    let v = socket_verdict(domain, ty, proto);
    if v == SocketVerdict::Allow {
        return Decision::Bypass;
    }
    let _g = BypassGuard::enter();
    let allow_udp = config().is_ok_and(|c| c.intercept.allow_udp);
    match v {
        SocketVerdict::Allow => Decision::Bypass,
        SocketVerdict::Udp | SocketVerdict::Raw if allow_udp => Decision::Bypass,
        SocketVerdict::Udp => Decision::Done(NewSocket::Datagram),
        SocketVerdict::Raw => {
            let base = ty & !TYPE_FLAGS;
            crate::qlog!(
                Warn,
                "refused a raw/packet socket (domain {domain}, type {base}, protocol {proto})"
            );
            count(Refusal::Raw);
            tell_once(
                "refused a raw/packet socket (it would bypass the tunnel); set intercept.allow_udp to permit",
            );
            Decision::Refuse(libc::EPERM)
        }
        SocketVerdict::Errno(e) => {
            count(Refusal::Socket);
            tell_once(&format!(
                "refused a socket qnet cannot tunnel (domain {domain}, type {}, protocol {proto}): \
                 only TCP goes through the tunnel",
                ty & !TYPE_FLAGS
            ));
            Decision::Refuse(e)
        }
    }
}

/// A connect or send with an inet address on a datagram socket created where the
/// `socket` hook could not see it (before interception, in a parent before exec, passed
/// over a unix socket): marked and refused like one it did see, unless UDP is allowed.
pub(crate) fn unknown_datagram(fd: i32) -> Decision<()> {
    let _g = BypassGuard::enter();
    if config().is_ok_and(|c| c.intercept.allow_udp) {
        return Decision::Bypass;
    }
    fdtab::mark_datagram(fd);
    datagram_send(fd)
}

/// A connect or send on a datagram socket (see [`NewSocket::Datagram`]).
pub(crate) fn datagram_send(fd: i32) -> Decision<()> {
    if fdtab::kind(fd) != Kind::Datagram {
        return Decision::Bypass;
    }
    count(Refusal::Udp);
    tell_once(
        "refused to send UDP (it would bypass the tunnel); set intercept.allow_udp to permit",
    );
    Decision::Refuse(libc::EPERM)
}

/// `execve` and friends: a program whose connections no hook would see is refused. A
/// setuid/setgid or file-capability program loses LD_PRELOAD in the loader (refused
/// unless `intercept.allow_setuid_exec`); a static program never loads it, and a Go
/// program makes its own system calls (refused unless inside `qnet run`'s jail, where
/// such a child reaches nothing).
pub(crate) fn exec(path: &std::path::Path) -> Decision<()> {
    use std::os::unix::fs::PermissionsExt;
    let _g = BypassGuard::enter();
    let Ok(meta) = std::fs::metadata(path) else {
        // Let the real exec report ENOENT, EACCES …
        return Decision::Bypass;
    };
    let privileged = meta.permissions().mode() & 0o6000 != 0 || sys::has_file_caps(path);
    if privileged && !config().is_ok_and(|c| c.intercept.allow_setuid_exec) {
        count(Refusal::Setuid);
        return refuse_exec(
            path,
            "is setuid/setgid or has file capabilities, so LD_PRELOAD would not apply and its \
             connections would bypass the tunnel",
            "intercept.allow_setuid_exec permits it",
        );
    }
    if !meta.is_file() || crate::jail::active() {
        return Decision::Bypass;
    }
    // A script runs its interpreter (the kernel follows up to four of them): that is the
    // program judged. Unreadable or malformed: the kernel decides (it cannot run a
    // malformed ELF either).
    let mut program = path.to_path_buf();
    for _ in 0..5 {
        let why = match crate::elf::file_linkage(&program) {
            Ok(crate::elf::Linkage::NotElf) => {
                match crate::elf::file_script_interpreter(&program) {
                    Some(interp) => {
                        program = interp;
                        continue;
                    }
                    None => return Decision::Bypass,
                }
            }
            Ok(l) => l.unhookable(),
            Err(_) => None,
        };
        let Some(why) = why else {
            return Decision::Bypass;
        };
        let why = if program == path {
            why.to_owned()
        } else {
            format!("runs {}, which {why}", program.display())
        };
        count(Refusal::Exec);
        return refuse_exec(
            path,
            &why,
            "run it in `qnet run`'s network jail, or give it `qnet socks` as its SOCKS5 proxy",
        );
    }
    Decision::Bypass
}

/// The one refusal of an exec: EPERM (what exec gives for a program it may not run this
/// way, as for a setuid one under NO_NEW_PRIVS) and one stderr line saying why and what
/// to do instead.
fn refuse_exec(path: &std::path::Path, why: &str, instead: &str) -> Decision<()> {
    tell_once(&format!(
        "refused to exec {}: it {why} ({instead})",
        path.display()
    ));
    Decision::Refuse(libc::EPERM)
}

/// `listen`: inbound connections are not tunneled; only loopback listeners by default.
pub(crate) fn listen(local: Option<SocketAddr>) -> Decision<()> {
    let Some(local) = local else {
        return Decision::Bypass;
    };
    let _g = BypassGuard::enter();
    let allowed = local.ip().to_canonical().is_loopback()
        || config().is_ok_and(|c| c.intercept.allow_inbound);
    if allowed {
        return Decision::Bypass;
    }
    count(Refusal::Inbound);
    tell_once(&format!(
        "refused to listen on {local}: inbound connections would not go through the tunnel \
         (intercept.allow_inbound permits it)"
    ));
    Decision::Refuse(libc::EPERM)
}

/// The `LD_PRELOAD` value a child must get so it stays tunneled: `current` with `lib`
/// (this library's absolute path) first, unless it is there already. An entry that is
/// `given` (the name this library was loaded by, which may be relative) is replaced by
/// `lib` where it stands: a relative name no longer finds the library once the program
/// has changed directory, and the loader would run the child without it.
pub(crate) fn preload_value(current: Option<&str>, lib: &str, given: &str) -> Option<String> {
    let Some(c) = current.filter(|c| !c.trim().is_empty()) else {
        return Some(lib.to_owned());
    };
    // Rebuild the list entry by entry, keeping its separators (the order matters: a
    // library before ours sees the app's calls first).
    let mut out = String::with_capacity(c.len() + lib.len());
    let (mut ours, mut changed) = (false, false);
    for entry in c.split_inclusive([' ', ':']) {
        let name = entry.trim_end_matches([' ', ':']);
        let sep = &entry[name.len()..];
        if name == lib {
            ours = true;
            out.push_str(entry);
        } else if name == given && !given.is_empty() {
            ours = true;
            changed = true;
            out.push_str(lib);
            out.push_str(sep);
        } else {
            out.push_str(entry);
        }
    }
    match (ours, changed) {
        (true, false) => None,
        (true, true) => Some(out),
        (false, _) => Some(format!("{lib} {c}")),
    }
}

/// An fd arrived over SCM_RIGHTS: a TCP connection made outside this process's tunnel
/// (to a destination not in the bypass nets) would let the app send directly, so it is
/// refused. Unconnected sockets are fine: their `connect` comes through the hook.
pub(crate) fn received_fd(fd: i32) -> Decision<()> {
    let _g = BypassGuard::enter();
    let Some(peer) = outside_tunnel(fd) else {
        return Decision::Bypass;
    };
    count(Refusal::ReceivedFd);
    tell_once(&format!(
        "refused a connection to {peer} received from another process: it does not go through the tunnel"
    ));
    Decision::Refuse(libc::EPERM)
}

/// The peer of `fd` when it is an inet connection made outside this process's tunnel
/// that the policy does not let through: not one of ours, connected, its destination not
/// a bypass one (a connected UDP socket passes with `intercept.allow_udp`). Unconnected
/// and listening sockets answer `None`: their connects come through the hooks.
fn outside_tunnel(fd: i32) -> Option<SocketAddr> {
    if fdtab::kind(fd) != Kind::None {
        return None;
    }
    let peer = sys::inet_peer(fd)?;
    let c = config().ok();
    let direct = c.is_some_and(|c| c.intercept.route(peer) == crate::config::Route::Direct);
    let udp_allowed = c.is_some_and(|c| c.intercept.allow_udp)
        && sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)
            .is_ok_and(|t| t == libc::SOCK_DGRAM);
    (!direct && !udp_allowed).then_some(peer)
}

/// At load, before the program runs: connected inet sockets it inherited across exec
/// (made by a parent, outside any tunnel) that [`outside_tunnel`] would refuse are
/// replaced, fd number kept, by a unix socket whose peer is gone: reads see EOF, writes
/// fail with EPIPE, as on a connection that was reset. The parent's copy is untouched
/// (no shutdown, which would reach the peer). With `intercept.allow_inbound` they are
/// left alone: an accepted connection (inetd, `socat … EXEC:`) cannot be told from one
/// the parent made.
pub(crate) fn disarm_inherited() {
    use std::os::fd::AsRawFd;
    let _g = BypassGuard::enter();
    if config().is_ok_and(|c| c.intercept.allow_inbound) {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    // The directory's own fd is in the list and closed after it: it then reads as no socket.
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        let Some(peer) = outside_tunnel(fd) else {
            continue;
        };
        let nonblock = sys::status_flags(fd).map_or(0, |f| f & libc::O_NONBLOCK);
        let replaced = sys::socketpair().and_then(|(ours, gone)| {
            drop(gone);
            sys::set_status_flags(ours.as_raw_fd(), nonblock)?;
            sys::dup_onto(&ours, fd, false)
        });
        if replaced.is_err() {
            // No fd to spare: closed instead; a write then fails with EBADF.
            sys::close(fd);
        }
        tell_once(&format!(
            "fd {fd}, an inherited connection to {peer}, was made outside the tunnel; it is \
             cut off here (writes fail with EPIPE)"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_value_keeps_others_and_adds_us_once() {
        let v = |c: Option<&str>| preload_value(c, "/l/libqnet.so", "/l/libqnet.so");
        assert_eq!(v(None).as_deref(), Some("/l/libqnet.so"));
        assert_eq!(v(Some(" ")).as_deref(), Some("/l/libqnet.so"));
        assert_eq!(
            v(Some("/p/libproxychains4.so")).as_deref(),
            Some("/l/libqnet.so /p/libproxychains4.so")
        );
        assert_eq!(v(Some("/x.so:/l/libqnet.so")), None);
    }

    #[test]
    fn relative_preload_path_is_made_absolute_for_children() {
        // LD_PRELOAD=./lib/libqnet.so, then chdir and spawn: the child's loader could not
        // find the relative name and ran it untunneled. The absolute path takes its place.
        let v = |c: &str| preload_value(Some(c), "/w/lib/libqnet.so", "./lib/libqnet.so");
        assert_eq!(v("./lib/libqnet.so").as_deref(), Some("/w/lib/libqnet.so"));
        assert_eq!(
            v("/p/pc.so:./lib/libqnet.so /x.so").as_deref(),
            Some("/p/pc.so:/w/lib/libqnet.so /x.so"),
            "in place, separators and order kept"
        );
        assert_eq!(
            v("/x.so").as_deref(),
            Some("/w/lib/libqnet.so /x.so"),
            "dropped: put back first"
        );
        assert_eq!(v("/w/lib/libqnet.so /x.so"), None);
    }

    #[test]
    fn sctp_and_unknown_families_refused_by_the_socket_hook() {
        // With intercept.seccomp = false nothing but the hook stood in the way: an SCTP
        // stream (which sctp_connectx then connects past the hooks) or an AF_VSOCK
        // socket was created and reached its peer directly.
        use libc::*;
        let nb = SOCK_NONBLOCK | SOCK_CLOEXEC;
        for (dom, ty, proto, want) in [
            (
                AF_INET,
                SOCK_STREAM,
                IPPROTO_SCTP,
                Decision::Refuse(EPROTONOSUPPORT),
            ),
            (
                AF_INET6,
                SOCK_SEQPACKET,
                IPPROTO_SCTP,
                Decision::Refuse(EPROTONOSUPPORT),
            ),
            (
                AF_INET,
                6, /* SOCK_DCCP */
                33,
                Decision::Refuse(EPROTONOSUPPORT),
            ),
            (
                AF_INET,
                SOCK_STREAM | 0x100,
                0,
                Decision::Refuse(EPROTONOSUPPORT),
            ),
            (AF_VSOCK, SOCK_STREAM, 0, Decision::Refuse(EAFNOSUPPORT)),
            (AF_XDP, SOCK_RAW, 0, Decision::Refuse(EAFNOSUPPORT)),
            (AF_INET, SOCK_STREAM | nb, IPPROTO_TCP, Decision::Bypass),
            (AF_INET6, SOCK_STREAM, IPPROTO_MPTCP, Decision::Bypass),
            (AF_UNIX, SOCK_DGRAM, 0, Decision::Bypass),
            (AF_NETLINK, SOCK_RAW | nb, NETLINK_ROUTE, Decision::Bypass),
            (
                AF_INET,
                SOCK_DGRAM | nb,
                0,
                Decision::Done(NewSocket::Datagram),
            ),
            (
                AF_INET6,
                SOCK_DGRAM,
                IPPROTO_UDP,
                Decision::Done(NewSocket::Datagram),
            ),
            (AF_PACKET, SOCK_RAW, 0x0300, Decision::Refuse(EPERM)),
            (AF_INET, SOCK_RAW, IPPROTO_ICMP, Decision::Refuse(EPERM)),
            (AF_INET, SOCK_DGRAM, IPPROTO_ICMP, Decision::Refuse(EPERM)),
        ] {
            assert_eq!(super::socket(dom, ty, proto), want, "{dom} {ty} {proto}");
        }
    }

    #[test]
    fn inherited_connection_outside_the_tunnel_is_cut_off() {
        // A connection a parent made and passed across exec let the program write to its
        // peer directly. A loopback one (bypass by default) and a listener stay; a
        // connection judged outside the tunnel becomes a socket whose writes fail.
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        assert_eq!(outside_tunnel(c.as_raw_fd()), None, "loopback is bypassed");
        assert_eq!(
            outside_tunnel(l.as_raw_fd()),
            None,
            "a listener has no peer"
        );
        disarm_inherited();
        c.write_all(b"kept").unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"kept");
        // The replacement, as disarm_inherited does it to a refused one.
        let (ours, gone) = sys::socketpair().unwrap();
        drop(gone);
        sys::dup_onto(&ours, c.as_raw_fd(), false).unwrap();
        drop(ours);
        // Rust's runtime ignores SIGPIPE, so the write just fails.
        let e = c.write(b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
        assert_eq!(c.read(&mut got).unwrap(), 0, "reads see EOF");
        assert_eq!(
            s.read(&mut got).unwrap(),
            0,
            "the peer sees the connection end"
        );
    }

    #[test]
    fn static_child_exec_is_refused() {
        // A static (or Go) child makes its own system calls: once it ran, and its
        // connects went out directly. A 64-bit ELF header without PT_INTERP is static.
        use std::os::unix::fs::PermissionsExt;
        let f = std::env::temp_dir().join(format!("qnet-static-{}", std::process::id()));
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        std::fs::write(&f, &h).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A script it interprets, and a script run by that script: the kernel runs the
        // static program either way.
        let script = f.with_extension("sh");
        std::fs::write(&script, format!("#!{} -x\n", f.display())).unwrap();
        let outer = f.with_extension("outer");
        std::fs::write(&outer, format!("#! {}\n", script.display())).unwrap();
        let d = [exec(&f), exec(&script), exec(&outer)];
        for p in [&f, &script, &outer] {
            let _ = std::fs::remove_file(p);
        }
        assert_eq!(d, [const { Decision::Refuse(libc::EPERM) }; 3]);
        let sh = std::env::temp_dir().join(format!("qnet-sh-{}", std::process::id()));
        std::fs::write(&sh, "#!/bin/sh\n").unwrap();
        let d = exec(&sh);
        let _ = std::fs::remove_file(&sh);
        assert_eq!(d, Decision::Bypass, "a script of a dynamic interpreter");
    }

    #[test]
    fn exec_and_listen_policy() {
        assert_eq!(exec(std::path::Path::new("/bin/sh")), Decision::Bypass);
        assert_eq!(
            exec(std::path::Path::new("/no/such/file")),
            Decision::Bypass
        );
        assert_eq!(
            exec(&std::env::current_exe().unwrap()),
            Decision::Bypass,
            "a dynamically linked program"
        );
        if let Some(su) = ["/usr/bin/su", "/bin/su", "/usr/bin/passwd"]
            .iter()
            .map(std::path::Path::new)
            .find(|p| p.exists())
        {
            assert_eq!(exec(su), Decision::Refuse(libc::EPERM));
        }
        assert_eq!(
            listen(Some("127.0.0.1:80".parse().unwrap())),
            Decision::Bypass
        );
        assert_eq!(
            listen(Some("[::ffff:127.0.0.1]:80".parse().unwrap())),
            Decision::Bypass
        );
        assert_eq!(
            listen(Some("0.0.0.0:80".parse().unwrap())),
            Decision::Refuse(libc::EPERM)
        );
        assert_eq!(listen(None), Decision::Bypass);
    }
}
