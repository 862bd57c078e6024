//! Which fds of the process are tunneled app sockets and which belong to the engine.
//!
//! Every hook asks this table first. For an fd below 2^20 (Linux's default `nr_open`,
//! so every fd of a process that did not raise it) the answer is one acquire load of an
//! atomic byte: no lock, no allocation, safe inside a signal handler that interrupted a
//! thread holding any of our locks (the 1 MiB table is zero-initialised `.bss`: only the
//! pages of numbers in use are ever touched). The rare fds above that are looked up in a
//! map behind a mutex, and only while such a map entry exists (a count says so, lock-free).
//! Details of tunneled fds (the original destination, the connect outcome, TCP options
//! the app set) sit behind a mutex that only tunneled fds ever touch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicUsize, Ordering};

use crate::os::ForkMutex;

/// Fds below this are looked up in the lock-free table; above it, in the map.
const TABLE: usize = 1 << 20;

const NONE: u8 = 0;
const TUNNELED: u8 = 1;
const INTERNAL: u8 = 2;
const DATAGRAM: u8 = 3;

static KINDS: [AtomicU8; TABLE] = [const { AtomicU8::new(NONE) }; TABLE];
/// How many fds are marked: zero lets range operations skip the table.
static MARKED: AtomicUsize = AtomicUsize::new(0);
/// One above the highest fd ever marked in the table: range scans stop there rather than
/// at 2^20.
static TOP: AtomicUsize = AtomicUsize::new(0);
/// How many fds the map above the table holds: zero lets `kind` answer without its lock.
static HIGH_COUNT: AtomicUsize = AtomicUsize::new(0);
static HIGH: ForkMutex<Option<HashMap<i32, u8>>> = ForkMutex::new(None);
static INFO: ForkMutex<Option<HashMap<i32, FdInfo>>> = ForkMutex::new(None);

/// What an fd is to qnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Not ours: every hook passes it straight through.
    None,
    /// An app socket carried by the tunnel.
    Tunneled,
    /// The engine's own (poller, wake pipe, relay connection, stream sockets).
    Internal,
    /// An inet datagram socket the app may create but not send on (UDP would bypass the tunnel).
    Datagram,
}

/// Outcome of a tunneled connect, shared between the app's fd and the engine's flow.
#[derive(Debug)]
pub(crate) struct ConnState(AtomicI32);

const CONNECTING: i32 = -1;

impl ConnState {
    /// A connect in progress.
    pub(crate) fn new() -> Arc<ConnState> {
        Arc::new(ConnState(AtomicI32::new(CONNECTING)))
    }

    /// The relay answered: 0 for connected, else the errno.
    pub(crate) fn set(&self, errno: i32) {
        self.0.store(errno, Ordering::Release);
    }

    /// `None` while connecting, else `Some(0)` or `Some(errno)`.
    pub(crate) fn get(&self) -> Option<i32> {
        match self.0.load(Ordering::Acquire) {
            CONNECTING => None,
            e => Some(e),
        }
    }
}

/// Counters of one tunneled flow, written by the engine, read by `qnet_flow_stats`.
#[derive(Debug, Default)]
pub(crate) struct FlowCounters {
    /// Stream bytes sent toward the destination.
    pub bytes_sent: std::sync::atomic::AtomicU64,
    /// Stream bytes received from it.
    pub bytes_received: std::sync::atomic::AtomicU64,
    /// DATA records sent.
    pub frames_sent: std::sync::atomic::AtomicU64,
    /// DATA records received.
    pub frames_received: std::sync::atomic::AtomicU64,
    /// The stream id in the session (0 before it opens).
    pub stream: std::sync::atomic::AtomicU32,
    /// Padding bytes the flow's schedule sent.
    pub padding_bytes: std::sync::atomic::AtomicU64,
    /// Delay the flow's schedule added (its frames' holds), ns.
    pub added_delay_ns: std::sync::atomic::AtomicU64,
    /// A timing profile `qnet_set_profile` asked for and the engine has not applied yet
    /// (its wire number; 0: none).
    pub profile: AtomicU8,
    /// The flow was open and ended with its relay session (set by the engine).
    pub lost: AtomicBool,
    /// The inode of the app's end of the socketpair (`sys::socket_inode`; 0: none), so
    /// the engine can tell that an fd it found in this table still is that end.
    pub app_end: u64,
}

impl FlowCounters {
    /// The flow ended with its relay session: `qnet_flow_stats` reports it failed.
    pub(crate) fn mark_lost(&self) {
        self.lost.store(true, Ordering::Relaxed);
    }
}

/// Where a tunneled flow stands (`qnet_flow_stats().state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlowState {
    /// The relay has not answered the open yet.
    Connecting,
    /// The destination accepted it.
    Open,
    /// Refused, or lost with its relay session.
    Failed,
}

impl FlowState {
    /// From a connect outcome ([`ConnState::get`]) and whether the flow was lost since.
    pub(crate) fn of(outcome: Option<i32>, lost: bool) -> FlowState {
        match outcome {
            _ if lost => FlowState::Failed,
            None => FlowState::Connecting,
            Some(0) => FlowState::Open,
            Some(_) => FlowState::Failed,
        }
    }
}

/// What we remember about a tunneled fd.
#[derive(Debug, Clone)]
pub(crate) struct FdInfo {
    /// The address the app connected to (a fake address for names).
    pub(crate) peer: SocketAddr,
    /// What `getsockname` answers: this host's address toward the relay (when the
    /// family matches) and an ephemeral port of its own, as a TCP socket would have.
    pub(crate) local: SocketAddr,
    /// The connect outcome.
    pub(crate) state: Arc<ConnState>,
    /// The outcome was already reported once through `SO_ERROR` or a second `connect`.
    pub(crate) reported: bool,
    /// Options the app set at levels the unix socket underneath does not have (IPPROTO_TCP …).
    pub(crate) options: HashMap<(i32, i32), Vec<u8>>,
    /// What the engine counted for this flow.
    pub(crate) counters: Arc<FlowCounters>,
}

#[cfg(test)]
impl FdInfo {
    /// A connecting tunneled fd's record for tests (documentation-range addresses).
    pub(crate) fn for_test() -> FdInfo {
        FdInfo {
            peer: "192.0.2.1:80".parse().unwrap(),
            local: "192.0.2.9:40000".parse().unwrap(),
            state: ConnState::new(),
            reported: false,
            options: HashMap::new(),
            counters: Arc::default(),
        }
    }
}

fn set_kind(fd: i32, k: u8) {
    if fd < 0 {
        return;
    }
    let old = if (fd as usize) < TABLE {
        if k != NONE {
            TOP.fetch_max(fd as usize + 1, Ordering::AcqRel);
        }
        KINDS[fd as usize].swap(k, Ordering::AcqRel)
    } else {
        let mut h = HIGH.lock();
        let m = h.get_or_insert_with(HashMap::new);
        let old = if k == NONE {
            m.remove(&fd).unwrap_or(NONE)
        } else {
            m.insert(fd, k).unwrap_or(NONE)
        };
        HIGH_COUNT.store(m.len(), Ordering::Release);
        old
    };
    match (old == NONE, k == NONE) {
        (true, false) => {
            MARKED.fetch_add(1, Ordering::AcqRel);
        }
        (false, true) => {
            MARKED.fetch_sub(1, Ordering::AcqRel);
        }
        _ => {}
    }
}

/// No fd is marked at all (a program that never tunneled anything).
#[inline]
pub(crate) fn is_empty() -> bool {
    MARKED.load(Ordering::Acquire) == 0
}

/// What `fd` is; the fast path every hook takes.
#[inline]
pub(crate) fn kind(fd: i32) -> Kind {
    let k = if fd < 0 {
        NONE
    } else if (fd as usize) < TABLE {
        KINDS[fd as usize].load(Ordering::Acquire)
    } else if HIGH_COUNT.load(Ordering::Acquire) == 0 {
        NONE
    } else {
        HIGH.lock()
            .as_ref()
            .and_then(|m| m.get(&fd).copied())
            .unwrap_or(NONE)
    };
    match k {
        TUNNELED => Kind::Tunneled,
        INTERNAL => Kind::Internal,
        DATAGRAM => Kind::Datagram,
        _ => Kind::None,
    }
}

/// `kind(fd) == Kind::Tunneled`, inlined for the hooks every `write` of the process
/// passes (`write`, `writev`, `send`): for an fd in the table, one load and a compare.
#[inline(always)]
pub(crate) fn is_tunneled(fd: i32) -> bool {
    match usize::try_from(fd) {
        Ok(i) if i < TABLE => KINDS[i].load(Ordering::Acquire) == TUNNELED,
        _ => kind(fd) == Kind::Tunneled,
    }
}

/// Mark an engine fd so the app cannot close it.
pub(crate) fn mark_internal(fd: i32) {
    set_kind(fd, INTERNAL);
}

/// Mark a datagram socket whose sends are refused.
pub(crate) fn mark_datagram(fd: i32) {
    set_kind(fd, DATAGRAM);
}

/// Record a tunneled app fd.
pub(crate) fn add_tunneled(fd: i32, info: FdInfo) {
    INFO.lock()
        .get_or_insert_with(HashMap::new)
        .insert(fd, info);
    set_kind(fd, TUNNELED);
}

/// The fd was closed (or replaced by `dup2`): forget whatever it was. An unmarked fd
/// costs one load (no lock, no write).
pub(crate) fn forget(fd: i32) {
    match kind(fd) {
        Kind::None => return,
        Kind::Tunneled => {
            if let Some(m) = INFO.lock().as_mut() {
                m.remove(&fd);
            }
        }
        Kind::Internal | Kind::Datagram => {}
    }
    set_kind(fd, NONE);
}

/// The kernel just handed out `fd` as a new file (`socket`, `accept`, `socketpair`): a
/// mark still on the number is stale, left by a close no hook saw (a raw `syscall`
/// instruction, a library's internal close), and would make the new socket answer for
/// the old one (a TCP socket refused "UDP" sends). Engine threads mark their fds after
/// creating them, so this never clears a live mark.
pub(crate) fn fresh(fd: i32) {
    forget(fd);
}

/// `new` is now a duplicate of `old`: it inherits what `old` is (dup, dup2, dup3).
pub(crate) fn duplicate(old: i32, new: i32) {
    forget(new);
    if kind(old) == Kind::Datagram {
        mark_datagram(new);
    }
    if kind(old) == Kind::Tunneled {
        let info = INFO.lock().as_ref().and_then(|m| m.get(&old).cloned());
        if let Some(i) = info {
            add_tunneled(new, i);
        }
    }
}

/// A tunneled fd's counters and where its flow stands.
pub(crate) fn flow(fd: i32) -> Option<(Arc<FlowCounters>, FlowState)> {
    if kind(fd) != Kind::Tunneled {
        return None;
    }
    with_info(fd, |i| {
        let lost = i.counters.lost.load(Ordering::Relaxed);
        (i.counters.clone(), FlowState::of(i.state.get(), lost))
    })
}

/// The app's fds that carry the flow counted by `counters` (every tunneled fd whose
/// record shares them: the one `connect` made and its duplicates). The numbers may have
/// been closed and reused by the time the caller looks: check what they point at.
pub(crate) fn fds_of(counters: &Arc<FlowCounters>) -> Vec<i32> {
    INFO.lock().as_ref().map_or_else(Vec::new, |m| {
        m.iter()
            .filter(|(_, i)| Arc::ptr_eq(&i.counters, counters))
            .map(|(&fd, _)| fd)
            .collect()
    })
}

/// Run `f` on a tunneled fd's record.
pub(crate) fn with_info<R>(fd: i32, f: impl FnOnce(&mut FdInfo) -> R) -> Option<R> {
    INFO.lock().as_mut().and_then(|m| m.get_mut(&fd)).map(f)
}

/// Every fd in `lo..=hi` whose mark `want` accepts, ascending.
fn marked_in(lo: u32, hi: u32, want: impl Fn(u8) -> bool) -> Vec<i32> {
    let top = TOP.load(Ordering::Acquire);
    if top == 0 && HIGH_COUNT.load(Ordering::Acquire) == 0 {
        return Vec::new();
    }
    let mut v: Vec<i32> = (lo as usize..(hi as usize).saturating_add(1).min(top))
        .filter(|&fd| want(KINDS[fd].load(Ordering::Acquire)))
        .map(|fd| fd as i32)
        .collect();
    if HIGH_COUNT.load(Ordering::Acquire) == 0 {
        return v;
    }
    if let Some(m) = HIGH.lock().as_ref() {
        v.extend(
            m.iter()
                .filter(|&(&fd, &k)| want(k) && fd as u32 >= lo && fd as u32 <= hi)
                .map(|(&fd, _)| fd),
        );
    }
    v.sort_unstable();
    v
}

/// Every engine fd in `lo..=hi`, ascending (for `close_range`, which must skip them).
pub(crate) fn internal_in(lo: u32, hi: u32) -> Vec<i32> {
    marked_in(lo, hi, |k| k == INTERNAL)
}

/// `lo..=hi` is being closed (`close_range`, `closefrom`): forget every tunneled and datagram
/// fd in it, in the table and above it. The engine's fds are not the app's to close and
/// stay marked.
pub(crate) fn forget_range(lo: u32, hi: u32) {
    if is_empty() {
        return;
    }
    for fd in marked_in(lo, hi, |k| k == TUNNELED || k == DATAGRAM) {
        forget(fd);
    }
}

/// Both of the table's locks, held across `fork` (see the fork handlers in `preload::runtime`).
pub(crate) struct Locks {
    _high: std::sync::MutexGuard<'static, Option<HashMap<i32, u8>>>,
    _info: std::sync::MutexGuard<'static, Option<HashMap<i32, FdInfo>>>,
}

/// Take both locks (in the one order used everywhere: HIGH before INFO is never nested
/// elsewhere, so any order is deadlock-free).
pub(crate) fn lock_all() -> Locks {
    Locks {
        _high: HIGH.lock(),
        _info: INFO.lock(),
    }
}

/// After fork, the child's copies of the parent's engine fds are plain fds of the child.
/// Returns them so the child can close them (its own engine starts fresh).
pub(crate) fn release_internal_after_fork() -> Vec<i32> {
    let v = internal_in(0, u32::MAX);
    for &fd in &v {
        set_kind(fd, NONE);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_dup_and_close() {
        // High numbers no real fd of the test process uses.
        let (a, b, big) = (60_001, 60_002, 2_070_000);
        assert_eq!(kind(a), Kind::None);
        add_tunneled(a, FdInfo::for_test());
        assert_eq!(kind(a), Kind::Tunneled);
        duplicate(a, b);
        assert_eq!(kind(b), Kind::Tunneled);
        assert_eq!(with_info(b, |i| i.peer.port()), Some(80));
        forget(a);
        assert_eq!(kind(a), Kind::None);
        assert_eq!(kind(b), Kind::Tunneled, "the duplicate stays tunneled");
        mark_internal(big);
        assert_eq!(kind(big), Kind::Internal);
        assert_eq!(internal_in(2_000_000, 2_100_000), vec![big]);
        duplicate(a, b);
        assert_eq!(
            kind(b),
            Kind::None,
            "dup2 of a plain fd over a tunneled one clears it"
        );
        forget(big);
        assert_eq!(kind(big), Kind::None);
    }

    #[test]
    fn datagram_marks_follow_dup() {
        let (a, b) = (60_101, 60_102);
        mark_datagram(a);
        duplicate(a, b);
        assert_eq!(kind(b), Kind::Datagram);
        forget(a);
        forget(b);
        assert_eq!((kind(a), kind(b)), (Kind::None, Kind::None));
    }

    #[test]
    fn forget_range_reaches_above_the_table() {
        let (dgram, high, engine) = (65_000, 2_100_001, 2_100_002);
        mark_datagram(dgram);
        add_tunneled(high, FdInfo::for_test());
        mark_internal(engine);
        forget_range(65_000, 65_000);
        forget_range(2_100_000, u32::MAX);
        assert_eq!(kind(dgram), Kind::None);
        assert_eq!(kind(high), Kind::None);
        assert!(with_info(high, |_| ()).is_none(), "its record is gone too");
        assert_eq!(kind(engine), Kind::Internal, "the engine's fds stay");
        forget(engine);
    }

    #[test]
    fn stale_mark_is_cleared_when_the_number_is_handed_out_again() {
        // A UDP socket closed behind the hooks' back: the next socket on its number must
        // not be refused "UDP" sends, nor a tunneled number keep its old peer.
        let (dgram, tun) = (60_201, 60_202);
        mark_datagram(dgram);
        add_tunneled(tun, FdInfo::for_test());
        fresh(dgram);
        fresh(tun);
        assert_eq!((kind(dgram), kind(tun)), (Kind::None, Kind::None));
        assert!(with_info(tun, |_| ()).is_none());
        fresh(60_203);
        assert_eq!(
            kind(60_203),
            Kind::None,
            "an unmarked number stays unmarked"
        );
    }

    #[test]
    fn unmarked_fds_are_answered_while_another_thread_holds_every_lock() {
        // A signal handler's close/dup2 may interrupt a thread inside the table's locks:
        // an fd the table does not know must be answered without waiting for them.
        let held = lock_all();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let k = kind(999_999);
            forget(999_998);
            fresh(999_997);
            duplicate(999_996, 999_995);
            let _ = tx.send(k);
        });
        let r = rx.recv_timeout(std::time::Duration::from_secs(5));
        drop(held);
        assert_eq!(r, Ok(Kind::None), "the lookups did not wait for the locks");
    }

    #[test]
    fn fds_of_a_flow_are_its_fd_and_duplicates() {
        let (a, b, other) = (60_301, 60_302, 60_303);
        let info = FdInfo::for_test();
        let counters = info.counters.clone();
        add_tunneled(a, info);
        duplicate(a, b);
        add_tunneled(other, FdInfo::for_test());
        let mut fds = fds_of(&counters);
        fds.sort_unstable();
        assert_eq!(fds, vec![a, b]);
        for fd in [a, b, other] {
            forget(fd);
        }
        assert!(fds_of(&counters).is_empty());
    }

    #[test]
    fn flow_state_from_outcome_and_loss() {
        assert_eq!(FlowState::of(None, false), FlowState::Connecting);
        assert_eq!(FlowState::of(Some(0), false), FlowState::Open);
        assert_eq!(
            FlowState::of(Some(libc::ECONNREFUSED), false),
            FlowState::Failed
        );
        assert_eq!(FlowState::of(Some(0), true), FlowState::Failed);
    }

    #[test]
    fn conn_state() {
        let s = ConnState::new();
        assert_eq!(s.get(), None);
        s.set(libc::ECONNREFUSED);
        assert_eq!(s.get(), Some(libc::ECONNREFUSED));
    }
}
