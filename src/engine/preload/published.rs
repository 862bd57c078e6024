//! What the engine thread publishes for the app's threads, through the client loop's
//! [`Observer`]: the counters `qnet_stats` reads ([`STATS`]), the relay connection's local
//! address `getsockname` reports, and the engine's own fds for the fd table. Named for
//! that one direction of flow (engine thread to app threads) rather than "stats", since
//! the stats are only part of it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use crate::engine::client::{ClientStats, Observer};
use crate::engine::fdtab;

// ---- counters -----------------------------------------------------------------------

/// Process-wide counters the engine publishes for `qnet_stats`.
#[derive(Debug, Default)]
pub(crate) struct EngineStats {
    /// 0 no engine, 1 connecting, 2 established, 3 down (retrying).
    pub(crate) session_state: std::sync::atomic::AtomicU32,
    /// Tunneled flows open now.
    pub(crate) streams_open: std::sync::atomic::AtomicU32,
    /// Relay sessions established since start.
    pub(crate) sessions: std::sync::atomic::AtomicU64,
    /// Streams the relay accepted.
    pub(crate) streams_ok: std::sync::atomic::AtomicU64,
    /// Streams refused or lost with their session.
    pub(crate) streams_failed: std::sync::atomic::AtomicU64,
    /// Stream bytes sent, all sessions.
    pub(crate) bytes_sent: std::sync::atomic::AtomicU64,
    /// Stream bytes received, all sessions.
    pub(crate) bytes_received: std::sync::atomic::AtomicU64,
    /// Records sent, all sessions.
    pub(crate) records_sent: std::sync::atomic::AtomicU64,
    /// Records received, all sessions.
    pub(crate) records_received: std::sync::atomic::AtomicU64,
    /// Padding bytes sent.
    pub(crate) padding: std::sync::atomic::AtomicU64,
    /// Last measured round-trip time to the relay, µs (0: none yet).
    pub(crate) rtt_us: std::sync::atomic::AtomicU64,
    /// Delay the scheduler added to shaped flows that ended, µs.
    pub(crate) added_delay_us: std::sync::atomic::AtomicU64,
    /// Shaped departures the timer served.
    pub(crate) departures_timed: std::sync::atomic::AtomicU64,
    /// Of those, served more than 1 ms late.
    pub(crate) departures_late_1ms: std::sync::atomic::AtomicU64,
    /// The worst lateness, µs.
    pub(crate) lateness_max_us: std::sync::atomic::AtomicU64,
    /// Shaped streams stopped by the verifier or the session.
    pub(crate) shaping_failures: std::sync::atomic::AtomicU64,
}

/// The engine's published counters.
pub(crate) static STATS: std::sync::LazyLock<EngineStats> =
    std::sync::LazyLock::new(EngineStats::default);

/// The preload runtime's [`Observer`]: engine fds go into the fd table, counters into
/// [`STATS`].
pub(super) struct Published;

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

    fn refusals(&self) -> Vec<(&'static str, u64)> {
        super::refused::counts()
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

// ---- the relay connection's local address -------------------------------------------

/// This host's address on the relay connection, set by the engine once connected.
static RELAY_LOCAL: crate::os::ForkMutex<Option<IpAddr>> = crate::os::ForkMutex::new(None);

/// The local address a tunneled socket to `peer` reports: the relay connection's own
/// address when the family matches (else unspecified) and a random ephemeral port.
pub(super) fn local_for(peer: SocketAddr) -> SocketAddr {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    // Linux's default ephemeral range, 32768–60999.
    let port = 32768 + u16::from_ne_bytes(b) % (60999 - 32768 + 1);
    SocketAddr::new(local_ip(peer.is_ipv4()), port)
}

/// [`RELAY_LOCAL`]'s lock, held across `fork` (see the fork handlers in `runtime`).
pub(super) fn lock_for_fork() -> std::sync::MutexGuard<'static, Option<IpAddr>> {
    std::sync::LazyLock::force(&STATS);
    RELAY_LOCAL.lock()
}

pub(super) fn local_ip(v4: bool) -> IpAddr {
    match (v4, *RELAY_LOCAL.lock()) {
        (true, Some(IpAddr::V4(a))) => IpAddr::V4(a),
        (false, Some(IpAddr::V6(a))) => IpAddr::V6(a),
        (true, _) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (false, _) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}
