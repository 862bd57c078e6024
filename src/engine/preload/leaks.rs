//! The calls that would let the app's traffic leave outside the tunnel, refused unless
//! the config allows them: raw, packet and UDP sockets, inbound listeners, setuid exec
//! (the loader drops `LD_PRELOAD`), and connected sockets received from other processes.
//! Each refusal tells the user once on stderr.

use std::net::SocketAddr;

use super::Decision;
use super::runtime::config;
use crate::engine::bypass::BypassGuard;
use crate::engine::fdtab::{self, Kind};
use crate::engine::log::tell_once;
use crate::engine::sys;

/// What `socket` must remember about a socket it creates (one with nothing to remember
/// is a [`Decision::Bypass`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NewSocket {
    /// An inet datagram socket: created (programs probe for IPv6 with one), but every
    /// connect and send on it is refused.
    Datagram,
}

/// `socket`: raw and packet sockets would leave outside the tunnel and are refused; UDP
/// sockets are created but cannot send (see [`NewSocket::Datagram`]), unless allowed.
pub(crate) fn socket(domain: i32, ty: i32) -> Decision<NewSocket> {
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    let inet = domain == libc::AF_INET || domain == libc::AF_INET6;
    let leaky = domain == libc::AF_PACKET || (inet && base != libc::SOCK_STREAM);
    if !leaky {
        return Decision::Bypass;
    }
    let _g = BypassGuard::enter();
    if config().is_ok_and(|c| c.intercept.allow_udp) {
        return Decision::Bypass;
    }
    if inet && base == libc::SOCK_DGRAM {
        return Decision::Done(NewSocket::Datagram);
    }
    crate::qlog!(
        Warn,
        "refused a raw/packet socket (domain {domain}, type {base})"
    );
    tell_once(
        "refused a raw/packet socket (it would bypass the tunnel); set intercept.allow_udp to permit",
    );
    Decision::Refuse(libc::EPERM)
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
    tell_once(
        "refused to send UDP (it would bypass the tunnel); set intercept.allow_udp to permit",
    );
    Decision::Refuse(libc::EPERM)
}

/// `execve` and friends: a setuid/setgid or file-capability program loses LD_PRELOAD in
/// the loader, so its connections would leave directly. Refused unless configured.
pub(crate) fn exec(path: &std::path::Path) -> Decision<()> {
    use std::os::unix::fs::PermissionsExt;
    let _g = BypassGuard::enter();
    let Ok(meta) = std::fs::metadata(path) else {
        // Let the real exec report ENOENT, EACCES …
        return Decision::Bypass;
    };
    let privileged = meta.permissions().mode() & 0o6000 != 0 || sys::has_file_caps(path);
    if !privileged || config().is_ok_and(|c| c.intercept.allow_setuid_exec) {
        return Decision::Bypass;
    }
    tell_once(&format!(
        "refused to exec {}: it is setuid/setgid or has file capabilities, so LD_PRELOAD would not \
         apply and its connections would bypass the tunnel (intercept.allow_setuid_exec permits it)",
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
    tell_once(&format!(
        "refused to listen on {local}: inbound connections would not go through the tunnel \
         (intercept.allow_inbound permits it)"
    ));
    Decision::Refuse(libc::EPERM)
}

/// The `LD_PRELOAD` value a child must get so it stays tunneled: `current` with `lib`
/// first, unless it is there already.
pub(crate) fn preload_value(current: Option<&str>, lib: &str) -> Option<String> {
    match current {
        Some(c) if c.split([' ', ':']).any(|p| p == lib) => None,
        Some(c) if !c.trim().is_empty() => Some(format!("{lib} {c}")),
        _ => Some(lib.to_owned()),
    }
}

/// An fd arrived over SCM_RIGHTS: a TCP connection made outside this process's tunnel
/// (to a destination not in the bypass nets) would let the app send directly, so it is
/// refused. Unconnected sockets are fine: their `connect` comes through the hook.
pub(crate) fn received_fd(fd: i32) -> Decision<()> {
    let _g = BypassGuard::enter();
    if fdtab::kind(fd) != Kind::None {
        return Decision::Bypass;
    }
    let Some(peer) = sys::inet_peer(fd) else {
        return Decision::Bypass;
    };
    let direct = config().is_ok_and(|c| c.intercept.route(peer) == crate::config::Route::Direct);
    if direct {
        return Decision::Bypass;
    }
    tell_once(&format!(
        "refused a connection to {peer} received from another process: it does not go through the tunnel"
    ));
    Decision::Refuse(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_value_keeps_others_and_adds_us_once() {
        assert_eq!(
            preload_value(None, "/l/libqnet.so").as_deref(),
            Some("/l/libqnet.so")
        );
        assert_eq!(
            preload_value(Some("/p/libproxychains4.so"), "/l/libqnet.so").as_deref(),
            Some("/l/libqnet.so /p/libproxychains4.so")
        );
        assert_eq!(
            preload_value(Some("/x.so:/l/libqnet.so"), "/l/libqnet.so"),
            None
        );
    }

    #[test]
    fn exec_and_listen_policy() {
        assert_eq!(exec(std::path::Path::new("/bin/sh")), Decision::Bypass);
        assert_eq!(
            exec(std::path::Path::new("/no/such/file")),
            Decision::Bypass
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
