//! The preload library's safe operations: what each hook decides, and the one engine
//! thread per process that carries the app's tunneled sockets.
//!
//! Hooks decode raw arguments and call these functions, which answer
//! [`Decision::Bypass`] (call the real function), a result, or an errno. Nothing here
//! touches raw pointers. The engine thread starts on the first tunneled connect and
//! never before, so a preloaded program that makes no connection pays nothing.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use super::bypass::bypass_thread;
pub(crate) use super::bypass::{BypassGuard, bypassed};
use super::client::{AppConn, Attach, Client, ClientConfig, ClientStats, Failure, Observer};
use super::fdtab::{self, ConnState, FdInfo, Kind};
pub(crate) use super::log::tell_once;
use super::sys;
use crate::config::Config;
use crate::proto::Destination;

/// Interception is on: set at load for the preloaded `.so`, by `qnet_init` for a static link.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Turn interception on for this process.
pub fn activate() {
    ACTIVE.store(true, Ordering::Release);
}

/// Whether the library at `ours` was preloaded (named in `LD_PRELOAD` or
/// /etc/ld.so.preload) rather than linked into the program or dlopen'ed: only a preloaded
/// library intercepts from load; a program that links it opts in with `qnet_init`.
pub fn preloaded(ours: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let _g = BypassGuard::enter();
    let id = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let me = id(ours);
    let base = ours.file_name();
    let mut lists = Vec::new();
    if let Some(v) = std::env::var_os("LD_PRELOAD") {
        lists.push(v.to_string_lossy().into_owned());
    }
    if let Ok(v) = std::fs::read_to_string("/etc/ld.so.preload") {
        lists.push(v);
    }
    lists.iter().any(|l| {
        l.split([' ', ':', '\n', '\t'])
            .filter(|e| !e.is_empty())
            .any(|e| {
                let p = std::path::Path::new(e);
                // The same file, or failing that the same file name: an entry the loader
                // expanded ($LIB, $PLATFORM) or that does not stat must not leave a preloaded
                // library passive, which would let the app connect directly.
                (me.is_some() && id(p) == me) || p.file_name() == base
            })
    })
}

/// Whether hooks intercept at all.
#[inline]
pub fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// What a hook must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<T> {
    /// Call the real function with the original arguments.
    Bypass,
    /// Return this value (success).
    Done(T),
    /// Fail with this errno.
    Refuse(i32),
}

// ---- configuration ------------------------------------------------------------------

static CONFIG: OnceLock<Config> = OnceLock::new();
/// Why loading the config implicitly (first hook) failed: kept, so a broken config fails
/// every tunneled call the same way without re-reading files.
static CONFIG_ERR: Mutex<Option<String>> = Mutex::new(None);

fn loaded(c: Config) -> &'static Config {
    super::log::set_level(c.log);
    CONFIG.get_or_init(|| c)
}

/// The process's config, loaded once; an error fails every tunneled call closed.
pub fn config() -> Result<&'static Config, String> {
    if let Some(c) = CONFIG.get() {
        return Ok(c);
    }
    let mut err = CONFIG_ERR.lock();
    if let Some(e) = err.as_ref() {
        return Err(e.clone());
    }
    let _g = BypassGuard::enter();
    match Config::load() {
        Ok(c) => Ok(loaded(c)),
        Err(e) => {
            *err = Some(e.to_string());
            Err(e.to_string())
        }
    }
}

// ---- the engine thread --------------------------------------------------------------

struct Engine {
    tx: crossbeam::channel::Sender<Attach>,
    wake: Mutex<mio::unix::pipe::Sender>,
    pid: u32,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `qnet_shutdown` was called: the engine stops and no new one starts.
static SHUT_DOWN: AtomicBool = AtomicBool::new(false);

static ENGINE: Mutex<Option<Engine>> = Mutex::new(None);

fn start_engine(cfg: &Config) -> Result<Engine, String> {
    let client_cfg = ClientConfig::from_config(cfg)?;
    crate::entropy::configure(&cfg.entropy).map_err(|e| e.to_string())?;
    let mut client = Client::new(client_cfg).map_err(|e| format!("engine: {e}"))?;
    let (wake_tx, wake_rx) = mio::unix::pipe::new().map_err(|e| format!("engine: {e}"))?;
    let (tx, rx) = crossbeam::channel::unbounded();
    client
        .accept_commands(rx, wake_rx)
        .map_err(|e| format!("engine: {e}"))?;
    client.observe(Box::new(Published));
    client.set_max_wait(std::time::Duration::from_secs(3600));
    fdtab::mark_internal(wake_tx.as_raw_fd());
    let thread = std::thread::Builder::new()
        .name("qnet-engine".into())
        .spawn(move || {
            bypass_thread();
            if let Err(e) = client.run(|_| SHUT_DOWN.load(Ordering::Acquire)) {
                tell_once(&format!("engine stopped: {e}; tunneled connections fail"));
            }
        })
        .map_err(|e| format!("engine thread: {e}"))?;
    Ok(Engine {
        tx,
        wake: Mutex::new(wake_tx),
        pid: sys::getpid(),
        thread: Some(thread),
    })
}

/// Stop the engine thread (closing the relay session and every tunneled flow) and start
/// no other: later tunneled connects fail closed.
pub fn shutdown() {
    SHUT_DOWN.store(true, Ordering::Release);
    let engine = ENGINE.lock().take();
    if let Some(mut e) = engine {
        if e.pid != sys::getpid() {
            std::mem::forget(e);
            return;
        }
        let _ = std::io::Write::write(&mut *e.wake.lock(), &[1]);
        if let Some(t) = e.thread.take() {
            let _g = BypassGuard::enter();
            let _ = t.join();
        }
    }
}

/// Whether [`shutdown`] has been called.
pub fn is_shut_down() -> bool {
    SHUT_DOWN.load(Ordering::Acquire)
}

/// Load the config now (the C API's `qnet_init`); `path` as `--config` does. A config
/// already loaded stays; a failed attempt leaves nothing behind, so it can be retried.
/// `check` must accept it before it is kept.
pub fn init(
    path: Option<&std::path::Path>,
    check: impl Fn(&Config) -> Result<(), String>,
) -> Result<(), String> {
    let _g = BypassGuard::enter();
    install_fork_handlers();
    if let Some(c) = CONFIG.get() {
        return check(c);
    }
    let c = Config::load_from(path).map_err(|e| e.to_string())?;
    check(&c)?;
    loaded(c);
    *CONFIG_ERR.lock() = None;
    Ok(())
}

/// Register the fork handlers once (the preloaded library at load, the C API at init).
pub fn install_fork_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn prepare() {
        fork_prepare();
    }
    extern "C" fn parent() {
        fork_parent();
    }
    extern "C" fn child() {
        fork_child();
    }
    ONCE.call_once(|| crate::os::on_fork(prepare, parent, child));
}

/// Turn interception on, with the fork handlers it relies on.
pub fn enable() {
    install_fork_handlers();
    activate();
}

thread_local! {
    static FORK_HELD: std::cell::RefCell<Option<(parking_lot::MutexGuard<'static, Option<Engine>>, fdtab::Locks)>> =
        const { std::cell::RefCell::new(None) };
}

/// `pthread_atfork` prepare: hold every lock, so the child never inherits one that a
/// thread which does not exist there was holding.
pub fn fork_prepare() {
    let g = ENGINE.lock();
    let l = fdtab::lock_all();
    FORK_HELD.with(|h| *h.borrow_mut() = Some((g, l)));
}

/// `pthread_atfork` parent: release what [`fork_prepare`] took.
pub fn fork_parent() {
    FORK_HELD.with(|h| h.borrow_mut().take());
}

/// `pthread_atfork` child: the child holds copies of the parent's engine fds but no
/// engine thread; close them, and let the child start its own engine on first use.
pub fn fork_child() {
    let _guard = BypassGuard::enter();
    let held = FORK_HELD.with(|h| h.borrow_mut().take());
    if let Some((mut g, locks)) = held {
        // The parent's pipe fd is closed below with the other engine fds.
        std::mem::forget(g.take());
        drop(g);
        drop(locks);
    }
    for fd in fdtab::release_internal_after_fork() {
        sys::close(fd);
    }
}

fn send(attach: Attach) -> Result<(), i32> {
    let cfg = match config() {
        Ok(c) => c,
        Err(e) => {
            tell_once(&format!(
                "{e}; tunneled connections fail, nothing is sent directly"
            ));
            return Err(libc::ECONNREFUSED);
        }
    };
    if is_shut_down() {
        return Err(libc::ECONNREFUSED);
    }
    let mut g = ENGINE.lock();
    if g.as_ref().is_some_and(|e| e.pid != sys::getpid()) {
        // A fork child that raced after_fork_child: start over.
        std::mem::forget(g.take());
    }
    if g.is_none() {
        match start_engine(cfg) {
            Ok(e) => *g = Some(e),
            Err(e) => {
                tell_once(&format!(
                    "{e}; tunneled connections fail, nothing is sent directly"
                ));
                return Err(libc::ECONNREFUSED);
            }
        }
    }
    let e = g.as_ref().expect("started");
    e.tx.send(attach).map_err(|_| libc::ECONNREFUSED)?;
    let _ = std::io::Write::write(&mut *e.wake.lock(), &[1]);
    Ok(())
}

// ---- connect ------------------------------------------------------------------------

/// Decide what `connect(fd, addr)` does for an inet stream socket.
pub fn connect(fd: i32, addr: SocketAddr) -> Decision<()> {
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
    let ip = addr.ip().to_canonical();
    let dest = if super::resolve::is_fake(cfg, ip) {
        match super::resolve::name_of(cfg, ip) {
            Some(name) => Destination::Name(name, addr.port()),
            None => return Decision::Refuse(libc::EHOSTUNREACH),
        }
    } else if cfg.intercept.bypass.iter().any(|n| n.contains(ip)) {
        return Decision::Bypass;
    } else {
        Destination::Addr(SocketAddr::new(ip, addr.port()))
    };
    match tunnel(fd, addr, dest, cfg) {
        Ok(()) => Decision::Done(()),
        Err(e) => Decision::Refuse(e),
    }
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
        counters: Default::default(),
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

/// Hand `sock` to the engine as a stream to `dest` and wait up to `timeout` for the
/// relay's answer (a blocking connect).
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
    rx.recv_timeout(timeout)
        .unwrap_or(Err(Failure::Errno(libc::ETIMEDOUT)))
}

/// A new connected stream socket to `dest` for the C API's `qnet_connect`: the app end of
/// a socketpair whose other end the engine carries (blocking, close-on-exec).
pub fn connect_stream(
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
    let counters: std::sync::Arc<fdtab::FlowCounters> = Default::default();
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

/// The engine's counters for a tunneled fd.
pub fn flow_counters(fd: i32) -> Option<std::sync::Arc<fdtab::FlowCounters>> {
    if fdtab::kind(fd) != Kind::Tunneled {
        return None;
    }
    fdtab::with_info(fd, |i| i.counters.clone())
}

/// Process-wide counters the engine publishes for `qnet_stats`.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// 0 no engine, 1 connecting, 2 established, 3 down (retrying).
    pub session_state: std::sync::atomic::AtomicU32,
    /// Tunneled flows open now.
    pub streams_open: std::sync::atomic::AtomicU32,
    /// Relay sessions established since start.
    pub sessions: std::sync::atomic::AtomicU64,
    /// Streams the relay accepted.
    pub streams_ok: std::sync::atomic::AtomicU64,
    /// Streams refused or lost with their session.
    pub streams_failed: std::sync::atomic::AtomicU64,
    /// Stream bytes sent, all sessions.
    pub bytes_sent: std::sync::atomic::AtomicU64,
    /// Stream bytes received, all sessions.
    pub bytes_received: std::sync::atomic::AtomicU64,
    /// Records sent, all sessions.
    pub records_sent: std::sync::atomic::AtomicU64,
    /// Records received, all sessions.
    pub records_received: std::sync::atomic::AtomicU64,
    /// Padding bytes sent.
    pub padding: std::sync::atomic::AtomicU64,
    /// Last measured round-trip time to the relay, µs (0: none yet).
    pub rtt_us: std::sync::atomic::AtomicU64,
    /// Delay the scheduler added to shaped flows that ended, µs.
    pub added_delay_us: std::sync::atomic::AtomicU64,
    /// Shaped departures the timer served.
    pub departures_timed: std::sync::atomic::AtomicU64,
    /// Of those, served more than 1 ms late.
    pub departures_late_1ms: std::sync::atomic::AtomicU64,
    /// The worst lateness, µs.
    pub lateness_max_us: std::sync::atomic::AtomicU64,
    /// Shaped streams stopped by the verifier or the session.
    pub shaping_failures: std::sync::atomic::AtomicU64,
}

/// The engine's published counters.
pub static STATS: std::sync::LazyLock<EngineStats> = std::sync::LazyLock::new(EngineStats::default);

/// The preload runtime's [`Observer`]: engine fds go into the fd table, counters into
/// [`STATS`].
struct Published;

impl Observer for Published {
    fn internal_fd(&self, fd: i32) {
        fdtab::mark_internal(fd);
    }

    fn relay_local(&self, ip: IpAddr) {
        *RELAY_LOCAL.lock() = Some(ip);
    }

    fn stats(
        &self,
        session: &crate::proto::Session,
        client: &ClientStats,
        closed: &crate::proto::SessionStats,
        flows: usize,
    ) {
        publish_stats(session, client, closed, flows);
    }

    fn down(&self, client: &ClientStats, closed: &crate::proto::SessionStats) {
        publish_down(client, closed);
    }
}

/// Publish the live session's counters.
fn publish_stats(
    session: &crate::proto::Session,
    client: &ClientStats,
    closed: &crate::proto::SessionStats,
    flows: usize,
) {
    use Ordering::Relaxed;
    let st = session.stats();
    let s = &*STATS;
    s.session_state
        .store(if session.is_established() { 2 } else { 1 }, Relaxed);
    s.streams_open.store(flows as u32, Relaxed);
    s.sessions.store(client.sessions, Relaxed);
    s.streams_ok.store(client.streams_ok, Relaxed);
    s.streams_failed.store(client.streams_failed, Relaxed);
    s.bytes_sent
        .store(closed.bytes_sent + st.bytes_sent, Relaxed);
    s.bytes_received
        .store(closed.bytes_received + st.bytes_received, Relaxed);
    s.records_sent
        .store(closed.records_sent + st.records_sent, Relaxed);
    s.records_received
        .store(closed.records_received + st.records_received, Relaxed);
    s.padding
        .store(closed.padding_sent + st.padding_sent, Relaxed);
    if let Some(rtt) = session.rtt() {
        s.rtt_us.store(rtt.as_micros() as u64, Relaxed);
    }
    let late = &client.lateness;
    s.added_delay_us
        .store(client.added_delay_ns / 1000, Relaxed);
    s.departures_timed.store(late.buckets.iter().sum(), Relaxed);
    s.departures_late_1ms.store(late.later_than_1ms(), Relaxed);
    s.lateness_max_us.store(late.max_ns / 1000, Relaxed);
    s.shaping_failures.store(client.shaping_failures, Relaxed);
}

/// Publish that the session is down (counters of the sessions that ended stay).
fn publish_down(client: &ClientStats, closed: &crate::proto::SessionStats) {
    use Ordering::Relaxed;
    let s = &*STATS;
    s.session_state.store(3, Relaxed);
    s.streams_open.store(0, Relaxed);
    s.streams_failed.store(client.streams_failed, Relaxed);
    s.bytes_sent.store(closed.bytes_sent, Relaxed);
    s.bytes_received.store(closed.bytes_received, Relaxed);
    s.records_sent.store(closed.records_sent, Relaxed);
    s.records_received.store(closed.records_received, Relaxed);
    s.padding.store(closed.padding_sent, Relaxed);
}

// ---- answers for tunneled fds -------------------------------------------------------

/// `getpeername`: the original destination for a tunneled fd.
pub fn peer_of(fd: i32) -> Decision<SocketAddr> {
    if fdtab::kind(fd) != Kind::Tunneled {
        return Decision::Bypass;
    }
    match fdtab::with_info(fd, |i| (i.peer, i.state.get())) {
        Some((p, Some(0))) => Decision::Done(p),
        Some(_) => Decision::Refuse(libc::ENOTCONN),
        None => Decision::Bypass,
    }
}

/// `getsockname`: a local address and port, as a connected TCP socket has.
pub fn local_of(fd: i32) -> Decision<SocketAddr> {
    if fdtab::kind(fd) != Kind::Tunneled {
        return Decision::Bypass;
    }
    match fdtab::with_info(fd, |i| i.local) {
        // The relay connection may have come up after the connect began: fill the address in now.
        Some(a) => Decision::Done(SocketAddr::new(local_ip(a.is_ipv4()), a.port())),
        None => Decision::Bypass,
    }
}

/// This host's address on the relay connection, set by the engine once connected.
static RELAY_LOCAL: Mutex<Option<IpAddr>> = Mutex::new(None);

/// The local address a tunneled socket to `peer` reports: the relay connection's own
/// address when the family matches (else unspecified) and a random ephemeral port.
fn local_for(peer: SocketAddr) -> SocketAddr {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    // Linux's default ephemeral range, 32768–60999.
    let port = 32768 + u16::from_ne_bytes(b) % (60999 - 32768 + 1);
    SocketAddr::new(local_ip(peer.is_ipv4()), port)
}

fn local_ip(v4: bool) -> IpAddr {
    match (v4, *RELAY_LOCAL.lock()) {
        (true, Some(IpAddr::V4(a))) => IpAddr::V4(a),
        (false, Some(IpAddr::V6(a))) => IpAddr::V6(a),
        (true, _) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (false, _) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// `getsockopt`: answers a TCP socket would give, for the options a unix socket lacks.
pub fn sockopt_get(fd: i32, level: i32, name: i32) -> Decision<Vec<u8>> {
    if fdtab::kind(fd) != Kind::Tunneled {
        return Decision::Bypass;
    }
    let int = |v: i32| Decision::Done(v.to_ne_bytes().to_vec());
    let Some((peer, state, first, stored)) = fdtab::with_info(fd, |i| {
        let first = !i.reported;
        if level == libc::SOL_SOCKET && name == libc::SO_ERROR && i.state.get().is_some() {
            i.reported = true;
        }
        (
            i.peer,
            i.state.get(),
            first,
            i.options.get(&(level, name)).cloned(),
        )
    }) else {
        return Decision::Bypass;
    };
    match (level, name) {
        (libc::SOL_SOCKET, libc::SO_ERROR) => match state {
            Some(e) if e != 0 && first => int(e),
            _ => int(0),
        },
        (libc::SOL_SOCKET, libc::SO_DOMAIN) => int(if peer.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        }),
        (libc::SOL_SOCKET, libc::SO_PROTOCOL) => int(libc::IPPROTO_TCP),
        (libc::SOL_SOCKET, libc::SO_TYPE) => int(libc::SOCK_STREAM),
        (libc::SOL_SOCKET, _) => Decision::Bypass,
        (libc::IPPROTO_TCP, libc::TCP_MAXSEG) if stored.is_none() => int(1448),
        (libc::IPPROTO_TCP, libc::TCP_INFO) => {
            // What the app's side knows: established, no retransmissions, no RTT sample.
            let mut info = vec![0u8; size_of::<libc::tcp_info>()];
            info[0] = 1; // TCP_ESTABLISHED in linux/tcp.h
            Decision::Done(info)
        }
        _ => match stored {
            Some(v) => Decision::Done(v),
            None => int(0),
        },
    }
}

/// `setsockopt`: socket-level options go to the real socket; TCP and IP options are
/// remembered and answered back, since the relay's TCP connection is where they would act.
pub fn sockopt_set(fd: i32, level: i32, name: i32, value: &[u8]) -> Decision<()> {
    if fdtab::kind(fd) != Kind::Tunneled || level == libc::SOL_SOCKET {
        return Decision::Bypass;
    }
    fdtab::with_info(fd, |i| i.options.insert((level, name), value.to_vec()));
    Decision::Done(())
}

/// `close`: engine fds are not the app's to close; tunneled fds are forgotten.
pub fn close(fd: i32) -> Decision<()> {
    match fdtab::kind(fd) {
        Kind::None => Decision::Bypass,
        Kind::Internal if !bypassed() => Decision::Done(()),
        _ => {
            fdtab::forget(fd);
            Decision::Bypass
        }
    }
}

/// What `socket` does with a new socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewSocket {
    /// Nothing to remember.
    Plain,
    /// An inet datagram socket: created (programs probe for IPv6 with one), but every
    /// connect and send on it is refused.
    Datagram,
}

/// `socket`: raw and packet sockets would leave outside the tunnel and are refused; UDP
/// sockets are created but cannot send (see [`NewSocket::Datagram`]), unless allowed.
pub fn socket(domain: i32, ty: i32) -> Decision<NewSocket> {
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
pub fn unknown_datagram(fd: i32) -> Decision<()> {
    let _g = BypassGuard::enter();
    if config().is_ok_and(|c| c.intercept.allow_udp) {
        return Decision::Bypass;
    }
    fdtab::mark_datagram(fd);
    datagram_send(fd)
}

/// A connect or send on a datagram socket (see [`NewSocket::Datagram`]).
pub fn datagram_send(fd: i32) -> Decision<()> {
    if fdtab::kind(fd) != Kind::Datagram {
        return Decision::Bypass;
    }
    tell_once(
        "refused to send UDP (it would bypass the tunnel); set intercept.allow_udp to permit",
    );
    Decision::Refuse(libc::EPERM)
}

// ---- process life -------------------------------------------------------------------

/// `execve` and friends: a setuid/setgid or file-capability program loses LD_PRELOAD in
/// the loader, so its connections would leave directly. Refused unless configured.
pub fn exec(path: &std::path::Path) -> Decision<()> {
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
pub fn listen(local: Option<SocketAddr>) -> Decision<()> {
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
pub fn preload_value(current: Option<&str>, lib: &str) -> Option<String> {
    match current {
        Some(c) if c.split([' ', ':']).any(|p| p == lib) => None,
        Some(c) if !c.trim().is_empty() => Some(format!("{lib} {c}")),
        _ => Some(lib.to_owned()),
    }
}

/// An fd arrived over SCM_RIGHTS: a TCP connection made outside this process's tunnel
/// (to a destination not in the bypass nets) would let the app send directly, so it is
/// refused. Unconnected sockets are fine: their `connect` comes through the hook.
pub fn received_fd(fd: i32) -> Decision<()> {
    let _g = BypassGuard::enter();
    if fdtab::kind(fd) != Kind::None {
        return Decision::Bypass;
    }
    let Some(peer) = sys::inet_peer(fd) else {
        return Decision::Bypass;
    };
    let bypassed = config().is_ok_and(|c| {
        c.intercept
            .bypass
            .iter()
            .any(|n| n.contains(peer.ip().to_canonical()))
    });
    if bypassed {
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
