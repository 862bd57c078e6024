//! The qnet C API (`include/qnet.h`, generated from this file by cbindgen).
//!
//! Every function is `extern "C"`, runs inside a panic boundary (a panic returns
//! `QNET_ERR_PANIC`, or -1 with errno `EIO`, and never unwinds into C), checks every
//! pointer for NULL, and is safe to call from any thread. Errors leave a message for
//! `qnet_last_error` and a code for `qnet_last_result`, per thread.
#![allow(unsafe_code)]
#![allow(unreachable_pub)] // exported C symbols: reached by the linker, not by Rust paths
#![allow(clippy::missing_safety_doc)] // each function documents its contract for C callers

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, c_char, c_int, c_void};
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::engine::fdtab::{self, FlowState};
use crate::engine::preload::{self, Decision};
use crate::proto::Destination;

/// `qnet_init` flag: intercept this program's plain `connect()`, name lookups and the
/// rest, as the preloaded library does. Without it, linking qnet changes nothing.
pub const QNET_INIT_INTERCEPT: u32 = 1;

/// Version of the `qnet_flow_stats` and `qnet_stats` layouts this library fills
/// (2: `qnet_stats` has the timing scheduler's fields; the struct size did not change).
pub const QNET_STATS_VERSION: u32 = 2;

/// What a qnet call did. 0 is success; every other value has a `qnet_strerror` text.
///
/// cbindgen:prefix-with-name=false
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)] // the C names, as C callers write them
pub enum QnetResult {
    /// Success.
    QNET_OK = 0,
    /// A required pointer was NULL.
    QNET_ERR_NULL = 1,
    /// An argument is out of range or malformed (a bad host name, port 0, an unknown profile).
    QNET_ERR_INVALID = 2,
    /// The configuration could not be loaded or is incomplete (relay, relay key, key).
    QNET_ERR_CONFIG = 3,
    /// `qnet_init` has not been called.
    QNET_ERR_NOT_INITIALIZED = 4,
    /// `qnet_shutdown` has been called.
    QNET_ERR_SHUT_DOWN = 5,
    /// The relay cannot be reached or refused this client.
    QNET_ERR_RELAY = 6,
    /// The destination refused the connection.
    QNET_ERR_REFUSED = 7,
    /// The connection timed out.
    QNET_ERR_TIMED_OUT = 8,
    /// No route to the destination's network or host.
    QNET_ERR_UNREACHABLE = 9,
    /// The relay could not resolve the name.
    QNET_ERR_NAME = 10,
    /// The relay's exit policy forbids the destination.
    QNET_ERR_FORBIDDEN = 11,
    /// The fd is not a qnet connection.
    QNET_ERR_NOT_TUNNELED = 12,
    /// The caller's buffer or struct is too small.
    QNET_ERR_BUFFER_TOO_SMALL = 13,
    /// Not supported by this build (timing profiles come with the scheduler).
    QNET_ERR_UNSUPPORTED = 14,
    /// An internal error was caught; nothing was sent directly.
    QNET_ERR_PANIC = 15,
    /// A system call failed.
    QNET_ERR_IO = 16,
}

impl QnetResult {
    fn text(self) -> &'static CStr {
        match self {
            QnetResult::QNET_OK => c"success",
            QnetResult::QNET_ERR_NULL => c"a required pointer was NULL",
            QnetResult::QNET_ERR_INVALID => c"invalid argument",
            QnetResult::QNET_ERR_CONFIG => c"configuration error",
            QnetResult::QNET_ERR_NOT_INITIALIZED => c"qnet_init has not been called",
            QnetResult::QNET_ERR_SHUT_DOWN => c"qnet_shutdown has been called",
            QnetResult::QNET_ERR_RELAY => c"the relay is unreachable or refused this client",
            QnetResult::QNET_ERR_REFUSED => c"connection refused",
            QnetResult::QNET_ERR_TIMED_OUT => c"connection timed out",
            QnetResult::QNET_ERR_UNREACHABLE => c"network or host unreachable",
            QnetResult::QNET_ERR_NAME => c"the relay could not resolve the name",
            QnetResult::QNET_ERR_FORBIDDEN => c"forbidden by the relay's exit policy",
            QnetResult::QNET_ERR_NOT_TUNNELED => c"not a qnet connection",
            QnetResult::QNET_ERR_BUFFER_TOO_SMALL => c"buffer too small",
            QnetResult::QNET_ERR_UNSUPPORTED => c"not supported by this build",
            QnetResult::QNET_ERR_PANIC => c"internal error (caught); nothing was sent directly",
            QnetResult::QNET_ERR_IO => c"system call failed",
        }
    }

    /// The result a failed connect's errno stands for.
    fn from_errno(e: i32) -> QnetResult {
        match e {
            libc::ECONNREFUSED => QnetResult::QNET_ERR_REFUSED,
            libc::ETIMEDOUT => QnetResult::QNET_ERR_TIMED_OUT,
            libc::ENETUNREACH | libc::EHOSTUNREACH => QnetResult::QNET_ERR_UNREACHABLE,
            libc::EACCES => QnetResult::QNET_ERR_FORBIDDEN,
            _ => QnetResult::QNET_ERR_IO,
        }
    }

    fn errno(self) -> i32 {
        match self {
            QnetResult::QNET_OK => 0,
            QnetResult::QNET_ERR_NULL
            | QnetResult::QNET_ERR_INVALID
            | QnetResult::QNET_ERR_BUFFER_TOO_SMALL => libc::EINVAL,
            QnetResult::QNET_ERR_CONFIG
            | QnetResult::QNET_ERR_RELAY
            | QnetResult::QNET_ERR_REFUSED => libc::ECONNREFUSED,
            QnetResult::QNET_ERR_NOT_INITIALIZED | QnetResult::QNET_ERR_SHUT_DOWN => libc::ENOTCONN,
            QnetResult::QNET_ERR_TIMED_OUT => libc::ETIMEDOUT,
            QnetResult::QNET_ERR_UNREACHABLE | QnetResult::QNET_ERR_NAME => libc::EHOSTUNREACH,
            QnetResult::QNET_ERR_FORBIDDEN => libc::EACCES,
            QnetResult::QNET_ERR_NOT_TUNNELED => libc::EBADF,
            QnetResult::QNET_ERR_UNSUPPORTED => libc::ENOTSUP,
            QnetResult::QNET_ERR_PANIC | QnetResult::QNET_ERR_IO => libc::EIO,
        }
    }
}

/// Per-flow counters. Set `size` to `sizeof(struct qnet_flow_stats)` before the call;
/// the library fills what fits and sets `version`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct QnetFlowStats {
    /// Set by the caller: the size of the struct it passes.
    pub size: u32,
    /// Set by the library: the layout version it filled (`QNET_STATS_VERSION`).
    pub version: u32,
    /// Stream bytes sent toward the destination.
    pub bytes_sent: u64,
    /// Stream bytes received from it.
    pub bytes_received: u64,
    /// Records carrying the flow's data, sent.
    pub frames_sent: u64,
    /// Records carrying the flow's data, received.
    pub frames_received: u64,
    /// Padding bytes the flow's timing schedule sent (in its frames and as PADDING frames).
    pub padding_bytes: u64,
    /// Delay the flow's timing schedule added, µs (each frame counts its oldest byte).
    pub added_delay_us: u64,
    /// 1 connecting (the relay has not answered yet), 2 open, 3 failed (refused, or lost
    /// with the relay session).
    pub state: u32,
    /// The flow's stream id in the relay session.
    pub stream_id: u32,
    /// Room for later fields; zero.
    pub reserved: [u8; 48],
}

/// Process-wide counters. Set `size` as for `qnet_flow_stats`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct QnetStats {
    /// Set by the caller: the size of the struct it passes.
    pub size: u32,
    /// Set by the library: the layout version it filled.
    pub version: u32,
    /// 0 no session yet, 1 connecting, 2 established, 3 down (retrying).
    pub session_state: u32,
    /// Flows open now.
    pub streams_open: u32,
    /// Relay sessions established since start.
    pub sessions_established: u64,
    /// Streams the relay accepted.
    pub streams_opened: u64,
    /// Streams refused or lost with their session.
    pub streams_failed: u64,
    /// Stream bytes sent.
    pub bytes_sent: u64,
    /// Stream bytes received.
    pub bytes_received: u64,
    /// Records sent.
    pub records_sent: u64,
    /// Records received.
    pub records_received: u64,
    /// Padding bytes sent.
    pub padding_bytes: u64,
    /// Delay the timing scheduler added, summed over the frames of shaped flows that
    /// ended (each frame counts its oldest byte's wait), µs.
    pub added_delay_us: u64,
    /// Last round-trip time to the relay, µs (0: not measured yet).
    pub rtt_us: u64,
    /// Version 2: shaped departures the engine's timer served.
    pub departures_timed: u64,
    /// Version 2: of those, how many were served more than 1 ms after their time.
    pub departures_late_1ms: u64,
    /// Version 2: the latest any was served, µs after its time.
    pub lateness_max_us: u64,
    /// Version 2: shaped streams reset because the timing verifier (or the session)
    /// stopped them.
    pub shaping_failures: u64,
    /// Room for later fields; zero.
    pub reserved: [u8; 32],
}

// ---- state and errors ------------------------------------------------------------------

const UNINIT: u8 = 0;
const READY: u8 = 1;
const DOWN: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNINIT);

thread_local! {
    static LAST: Cell<QnetResult> = const { Cell::new(QnetResult::QNET_OK) };
    static LAST_MSG: RefCell<String> = const { RefCell::new(String::new()) };
}

fn fail(r: QnetResult, msg: impl Into<String>) -> QnetResult {
    LAST.with(|l| l.set(r));
    LAST_MSG.with(|m| *m.borrow_mut() = msg.into());
    r
}

fn ready() -> Result<(), QnetResult> {
    match STATE.load(Ordering::Acquire) {
        READY => Ok(()),
        UNINIT => Err(fail(
            QnetResult::QNET_ERR_NOT_INITIALIZED,
            "qnet_init has not been called",
        )),
        _ => Err(fail(
            QnetResult::QNET_ERR_SHUT_DOWN,
            "qnet_shutdown has been called",
        )),
    }
}

/// Run `f` in the panic boundary; a panic becomes `QNET_ERR_PANIC`.
fn boundary(name: &str, f: impl FnOnce() -> QnetResult) -> QnetResult {
    let _g = preload::BypassGuard::enter();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => fail(
            QnetResult::QNET_ERR_PANIC,
            format!("internal error in {name}"),
        ),
    }
}

/// A connect-like call: an fd, or -1 with errno set and the result recorded.
fn boundary_fd(name: &str, f: impl FnOnce() -> Result<c_int, QnetResult>) -> c_int {
    let _g = preload::BypassGuard::enter();
    let r = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(fail(
            QnetResult::QNET_ERR_PANIC,
            format!("internal error in {name}"),
        ))
    });
    match r {
        Ok(fd) => fd,
        Err(e) => {
            // SAFETY: this thread's errno slot.
            unsafe { *libc::__errno_location() = e.errno() };
            -1
        }
    }
}

fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, QnetResult> {
    if p.is_null() {
        return Err(fail(QnetResult::QNET_ERR_NULL, format!("{what} is NULL")));
    }
    // SAFETY: the caller passes a NUL-terminated string (documented).
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| fail(QnetResult::QNET_ERR_INVALID, format!("{what} is not UTF-8")))
}

// ---- the API ---------------------------------------------------------------------------

/// Initialise the library: load the configuration from `config_path` (NULL: `QNET_CONFIG`,
/// then `~/.config/qnet/qnet.toml`, then `/etc/qnet/qnet.toml`; `QNET_RELAY`,
/// `QNET_RELAY_KEY`, `QNET_HOPS`, `QNET_KEY` and `QNET_LOG` override it). `flags` may contain
/// `QNET_INIT_INTERCEPT`. No thread starts and nothing connects until the first
/// `qnet_connect` (or intercepted connect). Calling it again is allowed and changes
/// nothing but can add `QNET_INIT_INTERCEPT`.
///
/// Returns `QNET_OK`, `QNET_ERR_CONFIG` (see `qnet_last_error`), `QNET_ERR_INVALID` for
/// unknown flags, or `QNET_ERR_SHUT_DOWN`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qnet_init(config_path_or_null: *const c_char, flags: u32) -> QnetResult {
    boundary("qnet_init", || {
        if STATE.load(Ordering::Acquire) == DOWN {
            return fail(
                QnetResult::QNET_ERR_SHUT_DOWN,
                "qnet_shutdown has been called",
            );
        }
        if flags & !QNET_INIT_INTERCEPT != 0 {
            return fail(
                QnetResult::QNET_ERR_INVALID,
                format!("unknown flags {flags:#x}"),
            );
        }
        let path = if config_path_or_null.is_null() {
            None
        } else {
            match str_arg(config_path_or_null, "config_path") {
                Ok(p) => Some(Path::new(p)),
                Err(e) => return e,
            }
        };
        // The relay, its key and ours must all be there (the key file readable, mode 600).
        let check = |c: &crate::config::Config| {
            crate::engine::client::ClientConfig::from_config(c).map(drop)
        };
        if let Err(e) = preload::init(path, check) {
            return fail(QnetResult::QNET_ERR_CONFIG, e);
        }
        if flags & QNET_INIT_INTERCEPT != 0 {
            preload::enable();
        }
        let _ = STATE.compare_exchange(UNINIT, READY, Ordering::AcqRel, Ordering::Acquire);
        QnetResult::QNET_OK
    })
}

fn timeout_of(ms: c_int) -> Duration {
    if ms <= 0 {
        preload::config()
            .map(|c| c.intercept.connect_timeout)
            .unwrap_or(Duration::from_secs(30))
    } else {
        Duration::from_millis(ms as u64)
    }
}

fn open(dest: Destination, peer: SocketAddr, timeout_ms: c_int) -> Result<c_int, QnetResult> {
    use crate::engine::client::Failure;
    use crate::proto::OpenError;
    match preload::connect_stream(dest.clone(), peer, timeout_of(timeout_ms)) {
        Ok(fd) => Ok(fd.into_raw_fd()),
        Err(f) => {
            let r = match f {
                Failure::Open(OpenError::NameNotFound) => QnetResult::QNET_ERR_NAME,
                Failure::Open(OpenError::Forbidden) => QnetResult::QNET_ERR_FORBIDDEN,
                Failure::Open(e) => QnetResult::from_errno(e.errno()),
                // Failing before any answer from the relay: the relay is the problem.
                Failure::Errno(libc::ECONNREFUSED) => QnetResult::QNET_ERR_RELAY,
                Failure::Errno(e) => QnetResult::from_errno(e),
            };
            let text = std::io::Error::from_raw_os_error(f.errno());
            Err(fail(
                r,
                format!("connect to {dest}: {text} ({})", r.text().to_string_lossy()),
            ))
        }
    }
}

/// Open a TCP connection to `host` (a name, resolved by the relay, or a numeric address)
/// and `port` through the tunnel. Blocks until the relay reports the destination's
/// answer or `timeout_ms` passes (0 or less: the configured connect timeout).
///
/// Returns a connected, blocking stream socket the caller owns (close it with `close`),
/// or -1 with errno set (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, EACCES …) and the reason
/// in `qnet_last_result`/`qnet_last_error`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qnet_connect(host: *const c_char, port: u16, timeout_ms: c_int) -> c_int {
    boundary_fd("qnet_connect", || {
        ready()?;
        let h = str_arg(host, "host")?;
        if port == 0 {
            return Err(fail(QnetResult::QNET_ERR_INVALID, "port 0"));
        }
        let trimmed = h.trim_start_matches('[').trim_end_matches(']');
        let (dest, peer) = match trimmed.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                let a = SocketAddr::new(ip, port);
                (address_destination(a)?, a)
            }
            Err(_) => {
                if !crate::proto::frame::valid_hostname(h) {
                    return Err(fail(
                        QnetResult::QNET_ERR_INVALID,
                        format!("{h:?} is not a host name"),
                    ));
                }
                // getpeername of such a socket shows the unspecified address and the port.
                (
                    Destination::Name(h.to_ascii_lowercase(), port),
                    SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port),
                )
            }
        };
        open(dest, peer, timeout_ms)
    })
}

/// Like `qnet_connect`, to an IPv4 or IPv6 socket address (`len` bytes at `addr`): a
/// `sockaddr_in` (16 bytes) or a `sockaddr_in6` of 28 bytes or RFC 2133's 24 (no scope
/// id); the IPv6 flow label and scope id are kept. The address is routed as `connect()`
/// would route it: an IPv4-mapped IPv6 address goes to its IPv4 form, and a fake address
/// from qnet's resolver to the name behind it (`QNET_ERR_UNREACHABLE` if there is none).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qnet_connect_addr(
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
    timeout_ms: c_int,
) -> c_int {
    boundary_fd("qnet_connect_addr", || {
        ready()?;
        // SAFETY: the caller passes `len` readable bytes at `addr` (documented).
        let sa = unsafe { addr_arg(addr, len) }?;
        open(address_destination(sa)?, sa, timeout_ms)
    })
}

/// Where a C API connection to an address goes: the route `connect()` would take (a fake
/// address becomes its name, IPv4-mapped IPv6 is unmapped), except that an
/// `intercept.bypass` address is tunneled all the same: the caller asked for the relay.
fn address_destination(sa: SocketAddr) -> Result<Destination, QnetResult> {
    let cfg = preload::config().map_err(|e| fail(QnetResult::QNET_ERR_CONFIG, e))?;
    match preload::route(cfg, sa) {
        Decision::Done(dest) => Ok(dest),
        Decision::Bypass => Ok(Destination::Addr(SocketAddr::new(
            sa.ip().to_canonical(),
            sa.port(),
        ))),
        Decision::Refuse(e) => Err(fail(
            QnetResult::from_errno(e),
            format!("{sa} is a fake address with no name behind it"),
        )),
    }
}

/// The destination argument of `qnet_connect_addr`: an inet address with a port.
///
/// # Safety
/// `addr` is NULL or points to `len` readable bytes.
unsafe fn addr_arg(
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> Result<SocketAddr, QnetResult> {
    if addr.is_null() {
        return Err(fail(QnetResult::QNET_ERR_NULL, "addr is NULL"));
    }
    // SAFETY: this function's contract.
    let sa = unsafe { crate::sockaddr::read(addr, len) }
        .map_err(|e| fail(QnetResult::QNET_ERR_INVALID, e.to_string()))?;
    if sa.port() == 0 {
        return Err(fail(QnetResult::QNET_ERR_INVALID, "port 0"));
    }
    Ok(sa)
}

/// The result of this thread's last failed qnet call (`QNET_OK` if none). Thread-local.
#[unsafe(no_mangle)]
pub extern "C" fn qnet_last_result() -> QnetResult {
    LAST.with(Cell::get)
}

/// Copy this thread's last error message into `buf` (`len` bytes, NUL-terminated,
/// truncated to fit; `buf` may be NULL when `len` is 0). Returns the length the whole
/// message needs including its NUL. Thread-local.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qnet_last_error(buf: *mut c_char, len: usize) -> usize {
    let _g = preload::BypassGuard::enter();
    catch_unwind(AssertUnwindSafe(|| {
        LAST_MSG.with(|m| {
            let m = m.borrow();
            let bytes = m.as_bytes();
            if !buf.is_null() && len > 0 {
                let n = bytes.len().min(len - 1);
                // SAFETY: the caller's buffer of `len` bytes; n + 1 <= len.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), n);
                    *buf.add(n) = 0;
                }
            }
            bytes.len() + 1
        })
    }))
    .unwrap_or(0)
}

/// Switch a qnet connection's timing profile ("performance", "default", "high-security")
/// for the bytes the program sends from now on (the relay's side keeps the profile asked
/// for at connect time: set `[timing]` rules or `QNET_PROFILE` to choose both). Returns
/// `QNET_ERR_INVALID` for another name, `QNET_ERR_NOT_TUNNELED` for an fd that is not a
/// qnet connection, `QNET_ERR_NULL`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qnet_set_profile(fd: c_int, profile: *const c_char) -> QnetResult {
    boundary("qnet_set_profile", || {
        if let Err(e) = ready() {
            return e;
        }
        let p = match str_arg(profile, "profile") {
            Ok(p) => p,
            Err(e) => return e,
        };
        let Some(profile) = crate::sched::Profile::parse(p) else {
            return fail(
                QnetResult::QNET_ERR_INVALID,
                format!("unknown profile {p:?}"),
            );
        };
        let Some((counters, _)) = fdtab::flow(fd) else {
            return fail(
                QnetResult::QNET_ERR_NOT_TUNNELED,
                format!("fd {fd} is not a qnet connection"),
            );
        };
        // The engine applies it to the bytes the app sends from now on.
        counters.profile.store(profile.wire(), Ordering::Relaxed);
        QnetResult::QNET_OK
    })
}

/// Check a caller's stats struct: not NULL, and its leading `size` at least this
/// library's layout, so the whole struct may be written.
///
/// # Safety
/// `out` is NULL or points to at least 4 readable bytes (the caller's `size` field).
unsafe fn out_fits<T>(out: *mut T) -> Result<(), QnetResult> {
    if out.is_null() {
        return Err(fail(QnetResult::QNET_ERR_NULL, "out is NULL"));
    }
    // SAFETY: not NULL; only `size` is read before the size check.
    let size = unsafe { std::ptr::read_unaligned(out.cast::<u32>()) } as usize;
    if size < size_of::<T>() {
        return Err(fail(
            QnetResult::QNET_ERR_BUFFER_TOO_SMALL,
            format!("size {size} < {}", size_of::<T>()),
        ));
    }
    Ok(())
}

/// The counters of the qnet connection `fd`, or `None` if it is not one.
fn flow_stats(fd: c_int) -> Option<QnetFlowStats> {
    use Ordering::Relaxed;
    let (c, state) = fdtab::flow(fd)?;
    Some(QnetFlowStats {
        size: size_of::<QnetFlowStats>() as u32,
        version: QNET_STATS_VERSION,
        bytes_sent: c.bytes_sent.load(Relaxed),
        bytes_received: c.bytes_received.load(Relaxed),
        frames_sent: c.frames_sent.load(Relaxed),
        frames_received: c.frames_received.load(Relaxed),
        padding_bytes: c.padding_bytes.load(Relaxed),
        added_delay_us: c.added_delay_ns.load(Relaxed) / 1000,
        state: match state {
            FlowState::Connecting => 1,
            FlowState::Open => 2,
            FlowState::Failed => 3,
        },
        stream_id: c.stream.load(Relaxed),
        reserved: [0; 48],
    })
}

/// Fill `out` with the counters of the qnet connection `fd`. `out->size` must be at least
/// the version-1 size; `QNET_ERR_BUFFER_TOO_SMALL` otherwise. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qnet_flow_stats(fd: c_int, out: *mut QnetFlowStats) -> QnetResult {
    boundary("qnet_flow_stats", || {
        if let Err(e) = ready() {
            return e;
        }
        // SAFETY: the caller's pointer, checked by out_fits.
        if let Err(e) = unsafe { out_fits(out) } {
            return e;
        }
        let Some(v) = flow_stats(fd) else {
            return fail(
                QnetResult::QNET_ERR_NOT_TUNNELED,
                format!("fd {fd} is not a qnet connection"),
            );
        };
        // SAFETY: the caller's struct is at least this large (checked).
        unsafe { std::ptr::write_unaligned(out, v) };
        QnetResult::QNET_OK
    })
}

/// Fill `out` with the process-wide counters. `out->size` as for `qnet_flow_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qnet_stats(out: *mut QnetStats) -> QnetResult {
    boundary("qnet_stats", || {
        if let Err(e) = ready() {
            return e;
        }
        // SAFETY: the caller's pointer, checked by out_fits.
        if let Err(e) = unsafe { out_fits(out) } {
            return e;
        }
        use Ordering::Relaxed;
        let s = &*preload::STATS;
        let v = QnetStats {
            size: size_of::<QnetStats>() as u32,
            version: QNET_STATS_VERSION,
            session_state: s.session_state.load(Relaxed),
            streams_open: s.streams_open.load(Relaxed),
            sessions_established: s.sessions.load(Relaxed),
            streams_opened: s.streams_ok.load(Relaxed),
            streams_failed: s.streams_failed.load(Relaxed),
            bytes_sent: s.bytes_sent.load(Relaxed),
            bytes_received: s.bytes_received.load(Relaxed),
            records_sent: s.records_sent.load(Relaxed),
            records_received: s.records_received.load(Relaxed),
            padding_bytes: s.padding.load(Relaxed),
            added_delay_us: s.added_delay_us.load(Relaxed),
            rtt_us: s.rtt_us.load(Relaxed),
            departures_timed: s.departures_timed.load(Relaxed),
            departures_late_1ms: s.departures_late_1ms.load(Relaxed),
            lateness_max_us: s.lateness_max_us.load(Relaxed),
            shaping_failures: s.shaping_failures.load(Relaxed),
            reserved: [0; 32],
        };
        // SAFETY: the caller's struct is at least this large (checked).
        unsafe { std::ptr::write_unaligned(out, v) };
        QnetResult::QNET_OK
    })
}

/// Fill `buf` with `len` random bytes from qnet's entropy ring (health-tested sources,
/// per-thread ChaCha20, safe across fork). Works before `qnet_init`. `QNET_ERR_IO` if
/// the OS random source has failed, after which no call produces bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qnet_entropy(buf: *mut c_void, len: usize) -> QnetResult {
    boundary("qnet_entropy", || {
        if len == 0 {
            return QnetResult::QNET_OK;
        }
        if buf.is_null() {
            return fail(QnetResult::QNET_ERR_NULL, "buf is NULL");
        }
        // SAFETY: the caller's buffer of `len` writable bytes.
        let b = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
        match crate::entropy::fill(b) {
            Ok(()) => QnetResult::QNET_OK,
            Err(e) => fail(QnetResult::QNET_ERR_IO, e.to_string()),
        }
    })
}

/// A static, NUL-terminated description of `code` (never NULL; unknown codes get
/// "unknown qnet result").
#[unsafe(no_mangle)]
pub extern "C" fn qnet_strerror(code: u32) -> *const c_char {
    let all = [
        QnetResult::QNET_OK,
        QnetResult::QNET_ERR_NULL,
        QnetResult::QNET_ERR_INVALID,
        QnetResult::QNET_ERR_CONFIG,
        QnetResult::QNET_ERR_NOT_INITIALIZED,
        QnetResult::QNET_ERR_SHUT_DOWN,
        QnetResult::QNET_ERR_RELAY,
        QnetResult::QNET_ERR_REFUSED,
        QnetResult::QNET_ERR_TIMED_OUT,
        QnetResult::QNET_ERR_UNREACHABLE,
        QnetResult::QNET_ERR_NAME,
        QnetResult::QNET_ERR_FORBIDDEN,
        QnetResult::QNET_ERR_NOT_TUNNELED,
        QnetResult::QNET_ERR_BUFFER_TOO_SMALL,
        QnetResult::QNET_ERR_UNSUPPORTED,
        QnetResult::QNET_ERR_PANIC,
        QnetResult::QNET_ERR_IO,
    ];
    all.iter()
        .find(|r| **r as u32 == code)
        .map_or(c"unknown qnet result".as_ptr(), |r| r.text().as_ptr())
}

/// The library's version, a static NUL-terminated string such as "0.1.0".
#[unsafe(no_mangle)]
pub extern "C" fn qnet_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Stop the engine: the relay session and every qnet connection close, and every later
/// call returns `QNET_ERR_SHUT_DOWN` (intercepted connects fail closed), except those that
/// need no engine: `qnet_entropy`, `qnet_strerror`, `qnet_version`, `qnet_last_result`
/// and `qnet_last_error`. Blocks until the
/// engine thread has exited. Calling it twice returns `QNET_ERR_SHUT_DOWN`.
#[unsafe(no_mangle)]
pub extern "C" fn qnet_shutdown() -> QnetResult {
    boundary("qnet_shutdown", || {
        if let Err(e) = ready() {
            return e;
        }
        STATE.store(DOWN, Ordering::Release);
        preload::shutdown();
        QnetResult::QNET_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV6;

    #[test]
    fn qnet_connect_addr_accepts_24_byte_ipv6_and_keeps_scope() {
        let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 80, 0x1234, 5));
        let c = crate::sockaddr::encode(scoped);
        // SAFETY: the encoded struct's bytes, at its full length and RFC 2133's 24.
        unsafe {
            assert_eq!(
                addr_arg(c.as_ptr(), 28),
                Ok(scoped),
                "flowinfo and scope kept"
            );
            let short = addr_arg(c.as_ptr(), 24).expect("24 bytes are an IPv6 address");
            assert_eq!(
                short,
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 80, 0x1234, 0))
            );
            assert_eq!(addr_arg(c.as_ptr(), 23), Err(QnetResult::QNET_ERR_INVALID));
            assert_eq!(
                addr_arg(std::ptr::null(), 28),
                Err(QnetResult::QNET_ERR_NULL)
            );
        }
        let no_port = crate::sockaddr::encode("[2001:db8::1]:0".parse().unwrap());
        // SAFETY: as above.
        let r = unsafe { addr_arg(no_port.as_ptr(), 24) };
        assert_eq!(r, Err(QnetResult::QNET_ERR_INVALID));
        assert!(LAST_MSG.with(|m| m.borrow().contains("port 0")));
    }

    #[test]
    fn flow_stats_state_reports_connecting_open_failed() {
        let fd = 93_001;
        let state = fdtab::ConnState::new();
        let counters: std::sync::Arc<fdtab::FlowCounters> = Default::default();
        fdtab::add_tunneled(
            fd,
            fdtab::FdInfo {
                state: state.clone(),
                counters: counters.clone(),
                ..fdtab::FdInfo::for_test()
            },
        );
        let st = || flow_stats(fd).expect("a qnet fd").state;
        assert_eq!(st(), 1, "connecting");
        state.set(0);
        assert_eq!(st(), 2, "open");
        counters.mark_lost();
        assert_eq!(st(), 3, "lost with its session");
        let refused = fdtab::ConnState::new();
        refused.set(libc::ECONNREFUSED);
        fdtab::with_info(fd, |i| {
            i.state = refused;
            i.counters = Default::default();
        });
        assert_eq!(st(), 3, "refused");
        fdtab::forget(fd);
        assert!(flow_stats(fd).is_none());
    }
}
