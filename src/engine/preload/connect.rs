//! How an app's `connect` becomes a tunneled flow: the fd is swapped for one end of a
//! socketpair whose other end the engine thread carries to the relay. Also the C API's
//! `qnet_connect`, which makes such a socket from nothing.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::Decision;
use super::leaks::datagram_send;
use super::published::local_for;
use super::runtime::{config, send};
use crate::config::{Config, Route};
use crate::engine::bypass::{BypassGuard, paused};
use crate::engine::client::{AppConn, Attach, Failure};
use crate::engine::fdtab::{self, ConnState, FdInfo, Kind};
use crate::engine::log::tell_once;
use crate::engine::{resolve, sys};
use crate::proto::Destination;

/// Decide what `connect(fd, addr)` does for an inet stream socket.
pub(crate) fn connect(fd: i32, addr: SocketAddr) -> Decision<()> {
    let _g = BypassGuard::enter();
    match fdtab::kind(fd) {
        Kind::Internal => return Decision::Refuse(libc::EBADF),
        Kind::Datagram => return datagram_send(fd),
        Kind::Tunneled => {
            return match fdtab::with_info(fd, |i| {
                let st = i.state.get();
                let first = !i.reported;
                i.reported = true;
                (st, first)
            }) {
                Some((None, _)) => Decision::Refuse(libc::EALREADY),
                Some((Some(0), _)) => Decision::Refuse(libc::EISCONN),
                Some((Some(e), true)) => Decision::Refuse(e),
                _ => Decision::Refuse(libc::ECONNABORTED),
            };
        }
        Kind::None => {}
    }
    let cfg = match config() {
        Ok(c) => c,
        Err(e) => {
            tell_once(&format!("{e}; connections fail, nothing is sent directly"));
            return Decision::Refuse(libc::ECONNREFUSED);
        }
    };
    match route(cfg, addr) {
        Decision::Done(dest) => match tunnel(fd, addr, dest, cfg) {
            Ok(()) => Decision::Done(()),
            Err(e) => Decision::Refuse(e),
        },
        Decision::Bypass => super::carried::direct(fd, addr, cfg.intercept.connect_timeout),
        Decision::Refuse(e) => Decision::Refuse(e),
    }
}

/// Where a connection to `addr` goes: a fake address becomes the name behind it
/// (EHOSTUNREACH if none); then `intercept.route` decides: a `bypass` address is
/// `Bypass`, its DNS ports refused; anything else its address with IPv4-mapped IPv6
/// unmapped. Shared by `connect` and the C API's `qnet_connect_addr`.
pub(crate) fn route(cfg: &Config, addr: SocketAddr) -> Decision<Destination> {
    let ip = addr.ip().to_canonical();
    if resolve::is_fake(cfg, ip) {
        return match resolve::name_of(cfg, ip) {
            Some(name) => Decision::Done(Destination::Name(name, addr.port())),
            None => Decision::Refuse(libc::EHOSTUNREACH),
        };
    }
    match cfg.intercept.route(addr) {
        Route::Direct => Decision::Bypass,
        Route::RefusedDns => refused_dns(addr),
        Route::Tunnel => Decision::Done(Destination::Addr(SocketAddr::new(ip, addr.port()))),
    }
}

/// A connect to a bypassed address's DNS port: a local resolver would send the name
/// upstream outside the tunnel. ECONNREFUSED, as from a port nothing listens on.
fn refused_dns<T>(addr: SocketAddr) -> Decision<T> {
    super::refused::count(super::refused::Refusal::Dns);
    tell_once(&format!(
        "refused a connection to {addr}: a resolver there would send names outside the tunnel \
         (intercept.bypass_dns permits it)"
    ));
    Decision::Refuse(libc::ECONNREFUSED)
}

fn tunnel(fd: i32, peer: SocketAddr, dest: Destination, cfg: &Config) -> Result<(), i32> {
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let flags = sys::status_flags(fd).map_err(errno)?;
    let cloexec = sys::is_cloexec(fd).map_err(errno)?;
    let nonblocking = flags & libc::O_NONBLOCK != 0;
    let (app, engine) = sys::socketpair().map_err(errno)?;
    sys::set_status_flags(app.as_raw_fd(), flags).map_err(errno)?;
    sys::set_status_flags(engine.as_raw_fd(), libc::O_NONBLOCK).map_err(errno)?;
    let state = ConnState::new();
    let info = FdInfo {
        peer,
        local: local_for(peer),
        state: state.clone(),
        reported: false,
        options: Default::default(),
        counters: app_counters(&app),
    };
    fdtab::mark_internal(engine.as_raw_fd());
    let sock = mio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(engine));
    if nonblocking {
        let fill_fd = app.as_raw_fd();
        let size =
            sys::getsockopt_int(fill_fd, libc::SOL_SOCKET, libc::SO_SNDBUF).map_err(errno)?;
        sys::setsockopt_int(fill_fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 1).map_err(errno)?;
        let filler = sys::fill_send_buffer(fill_fd).map_err(errno)?;
        let keep = sys::dup(fill_fd).map_err(errno)?;
        fdtab::mark_internal(keep.as_raw_fd());
        sys::dup_onto(&app, fd, cloexec).map_err(errno)?;
        drop(app);
        let counters = info.counters.clone();
        fdtab::add_tunneled(fd, info);
        // The kernel doubles what setsockopt is given; hand back half of what we read.
        let conn = AppConn {
            filler,
            restore: Some((keep, size / 2)),
            state,
            reply: None,
            counters,
        };
        send(Attach {
            sock,
            dest,
            app: conn,
        })?;
        return Err(libc::EINPROGRESS);
    }
    let started = Instant::now();
    let result = attach_and_wait(
        sock,
        dest,
        state,
        info.counters.clone(),
        cfg.intercept.connect_timeout,
    )
    .map_err(Failure::errno);
    crate::qlog!(
        Debug,
        "connect to {peer}: {result:?} after {:?}",
        started.elapsed()
    );
    result?;
    sys::dup_onto(&app, fd, cloexec).map_err(errno)?;
    info.state.set(0);
    fdtab::add_tunneled(
        fd,
        FdInfo {
            reported: true,
            ..info
        },
    );
    Ok(())
}

/// A new flow's record, naming the app's end `app` so that the engine can find it to
/// reset the flow (`Sock::reset_on_close`).
fn app_counters(app: &std::os::fd::OwnedFd) -> std::sync::Arc<fdtab::FlowCounters> {
    std::sync::Arc::new(fdtab::FlowCounters {
        app_end: sys::socket_inode(app.as_raw_fd()),
        ..Default::default()
    })
}

/// Hand `sock` to the engine as a stream to `dest` and wait up to `timeout` for the
/// relay's answer (a blocking connect). The wait runs paused (`bypass::paused`): a
/// signal handler that runs on this thread meanwhile (its own `connect`) must be
/// intercepted.
fn attach_and_wait(
    sock: mio::net::UnixStream,
    dest: Destination,
    state: std::sync::Arc<ConnState>,
    counters: std::sync::Arc<fdtab::FlowCounters>,
    timeout: std::time::Duration,
) -> Result<(), Failure> {
    let (tx, rx) = crossbeam::channel::bounded(1);
    send(Attach {
        sock,
        dest,
        app: AppConn {
            filler: 0,
            restore: None,
            state,
            reply: Some(tx),
            counters,
        },
    })
    .map_err(Failure::Errno)?;
    paused(|| rx.recv_timeout(timeout)).unwrap_or(Err(Failure::Errno(libc::ETIMEDOUT)))
}

/// A new connected stream socket to `dest` for the C API's `qnet_connect`: the app end of
/// a socketpair whose other end the engine carries (blocking, close-on-exec).
pub(crate) fn connect_stream(
    dest: Destination,
    peer: SocketAddr,
    timeout: std::time::Duration,
) -> Result<std::os::fd::OwnedFd, Failure> {
    let _g = BypassGuard::enter();
    let errno = |e: std::io::Error| Failure::Errno(e.raw_os_error().unwrap_or(libc::EIO));
    let (app, engine) = sys::socketpair().map_err(errno)?;
    sys::set_status_flags(engine.as_raw_fd(), libc::O_NONBLOCK).map_err(errno)?;
    fdtab::mark_internal(engine.as_raw_fd());
    let sock = mio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(engine));
    let state = ConnState::new();
    let counters = app_counters(&app);
    attach_and_wait(sock, dest, state.clone(), counters.clone(), timeout)?;
    state.set(0);
    fdtab::add_tunneled(
        app.as_raw_fd(),
        FdInfo {
            peer,
            local: local_for(peer),
            state,
            reported: true,
            options: Default::default(),
            counters,
        },
    );
    Ok(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_unmaps_v4_mapped_and_names_fake_addresses() {
        let cfg = Config::default();
        let mapped: SocketAddr = "[::ffff:198.51.100.7]:443".parse().unwrap();
        assert_eq!(
            route(&cfg, mapped),
            Decision::Done(Destination::Addr("198.51.100.7:443".parse().unwrap()))
        );
        let loopback: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        assert_eq!(
            route(&cfg, loopback),
            Decision::Bypass,
            "bypass sees the IPv4 form"
        );
        // A fake address no name was given for: unreachable, never sent as an address.
        let fake: SocketAddr = "[::ffff:240.255.255.254]:80".parse().unwrap();
        assert_eq!(route(&cfg, fake), Decision::Refuse(libc::EHOSTUNREACH));
    }
}
