//! The relay's metrics, for Prometheus: what each event loop counts, on a cache line of
//! its own so loops never share one; `export` turns them into the text formats at scrape
//! time and `http` serves them.
//!
//! Counters move where the event happens (one relaxed add); gauges and the shaping
//! histogram are copied from the loop's own state once a second ([`LoopMetrics::publish`]),
//! so the data path pays nothing for them. No label carries a key, an address or a
//! destination: labels are the closed sets below.

pub mod export;
pub mod http;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crossbeam::utils::CachePadded;
use prometheus_client::metrics::histogram::Histogram;

use crate::engine::wheel::Lateness;
use crate::proto::{HandshakeFault, OpenError};

/// How a client connection's handshake ended, as the `result` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// A session was established.
    Ok,
    /// msg1 proved no listed key (a stranger key, a wrong relay key, random bytes).
    UnknownKey,
    /// msg1 was a replay.
    Replay,
    /// msg1's time was outside the clock skew.
    Stale,
    /// A part did not decode.
    Garbage,
    /// No complete handshake before the connection's close time.
    Timeout,
    /// The peer closed before the handshake ended.
    Closed,
    /// The replay cache had no room (also counted under `limit="replay_cache"`).
    ReplayCacheFull,
}

impl Handshake {
    /// Every result, in label order.
    const ALL: [(Handshake, &'static str); 8] = [
        (Handshake::Ok, "ok"),
        (Handshake::UnknownKey, "unknown_key"),
        (Handshake::Replay, "replay"),
        (Handshake::Stale, "stale"),
        (Handshake::Garbage, "garbage"),
        (Handshake::Timeout, "timeout"),
        (Handshake::Closed, "closed"),
        (Handshake::ReplayCacheFull, "replay_cache_full"),
    ];

    /// The result a session's handshake fault stands for.
    pub(crate) fn of(f: HandshakeFault) -> Handshake {
        match f {
            HandshakeFault::Garbage => Handshake::Garbage,
            HandshakeFault::UnknownKey => Handshake::UnknownKey,
            HandshakeFault::Stale => Handshake::Stale,
            HandshakeFault::Replayed => Handshake::Replay,
            HandshakeFault::CacheFull => Handshake::ReplayCacheFull,
        }
    }
}

/// A `[server]` limit that refused or held something, as the `limit` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `max_connections`: a connection closed at accept.
    MaxConnections,
    /// `max_connections_per_addr`.
    MaxConnectionsPerAddr,
    /// `handshakes_per_sec`: a connection drained unanswered.
    HandshakesPerSec,
    /// `handshakes_per_sec_per_addr`.
    HandshakesPerSecPerAddr,
    /// `sessions_per_key`: a new session closed.
    SessionsPerKey,
    /// `streams_per_session`: an OPEN refused.
    StreamsPerSession,
    /// `dials_per_key`.
    DialsPerKey,
    /// `lookups_per_key`.
    LookupsPerKey,
    /// `output_high_water_kib`: a client's connection no longer read until it drains.
    OutputHighWater,
    /// `replay_cache`: a handshake refused for want of room.
    ReplayCache,
}

impl Limit {
    /// Every limit, in label order (the `[server]` key names).
    const ALL: [(Limit, &'static str); 10] = [
        (Limit::MaxConnections, "max_connections"),
        (Limit::MaxConnectionsPerAddr, "max_connections_per_addr"),
        (Limit::HandshakesPerSec, "handshakes_per_sec"),
        (
            Limit::HandshakesPerSecPerAddr,
            "handshakes_per_sec_per_addr",
        ),
        (Limit::SessionsPerKey, "sessions_per_key"),
        (Limit::StreamsPerSession, "streams_per_session"),
        (Limit::DialsPerKey, "dials_per_key"),
        (Limit::LookupsPerKey, "lookups_per_key"),
        (Limit::OutputHighWater, "output_high_water"),
        (Limit::ReplayCache, "replay_cache"),
    ];

    /// The `[server]` key of this limit.
    pub(crate) fn name(self) -> &'static str {
        Limit::ALL[self as usize].1
    }
}

/// The `result` label of a stream's OPEN answer: "ok" or the OPEN_RESULT error's name.
const OPEN_RESULTS: [&str; 9] = [
    "ok",
    "refused",
    "timed_out",
    "net_unreachable",
    "host_unreachable",
    "name_not_found",
    "forbidden",
    "too_many_streams",
    "failure",
];

/// The index of an OPEN answer in [`OPEN_RESULTS`] (the wire code, 0 for success).
fn open_index(r: Result<(), OpenError>) -> usize {
    match r {
        Ok(()) => 0,
        Err(e) => e as usize,
    }
}

/// One event loop's counters and gauges.
#[derive(Debug, Default)]
pub(crate) struct LoopMetrics {
    handshakes: [AtomicU64; 8],
    /// Sessions established.
    sessions: AtomicU64,
    /// OPENs received.
    streams: AtomicU64,
    /// Bytes read from clients' connections (records, on the wire).
    wire_in: AtomicU64,
    /// Bytes written to clients' connections.
    wire_out: AtomicU64,
    /// Stream payload from clients (to destinations).
    payload_up: AtomicU64,
    /// Stream payload to clients (from destinations).
    payload_down: AtomicU64,
    /// OPEN answers by [`OPEN_RESULTS`].
    opens: [AtomicU64; 9],
    /// Destinations the exit policy refused (before a dial or after a lookup).
    exit_refusals: AtomicU64,
    /// Extends dialled, and refused.
    extends: AtomicU64,
    extends_refused: AtomicU64,
    /// Names resolved to at least one address, and not.
    lookups_ok: AtomicU64,
    lookups_failed: AtomicU64,
    limits: [AtomicU64; 10],
    // Copied from the loop once a second.
    cpu_ns: AtomicU64,
    connections: AtomicU64,
    sessions_open: AtomicU64,
    streams_open: AtomicU64,
    dials_pending: AtomicU64,
    lookups_pending: AtomicU64,
    output_bytes: AtomicU64,
    reads_paused: AtomicU64,
    shaped_buckets: [AtomicU64; 8],
    shaped_sum_ns: AtomicU64,
    shaping_failures: AtomicU64,
}

/// What a loop copies into its gauges once a second.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LoopGauges {
    /// Client connections open (authenticated or not).
    pub(crate) connections: u64,
    /// Authenticated sessions.
    pub(crate) sessions: u64,
    /// Streams with a destination socket or on their way to one.
    pub(crate) streams: u64,
    /// Streams whose destination is being connected.
    pub(crate) dials: u64,
    /// Streams whose name is being resolved.
    pub(crate) lookups: u64,
    /// Bytes sealed for clients and not yet written to their connections.
    pub(crate) output_bytes: u64,
    /// Clients' connections not read for their output's high-water mark.
    pub(crate) reads_paused: u64,
}

impl LoopMetrics {
    /// A handshake ended so.
    pub(crate) fn handshake(&self, h: Handshake) {
        // The variants are declared in ALL's order.
        self.handshakes[h as usize].fetch_add(1, Relaxed);
        if h == Handshake::Ok {
            self.sessions.fetch_add(1, Relaxed);
        }
    }

    /// A limit refused or held something.
    pub(crate) fn limit(&self, l: Limit) {
        // The variants are declared in ALL's order.
        self.limits[l as usize].fetch_add(1, Relaxed);
    }

    /// A client asked for a stream.
    pub(crate) fn stream(&self) {
        self.streams.fetch_add(1, Relaxed);
    }

    /// A stream's OPEN was answered so.
    pub(crate) fn open(&self, r: Result<(), OpenError>) {
        self.opens[open_index(r)].fetch_add(1, Relaxed);
    }

    /// The exit policy refused a destination.
    pub(crate) fn exit_refused(&self) {
        self.exit_refusals.fetch_add(1, Relaxed);
    }

    /// An extend was dialled (`true`) or refused; the count so far, for the log line.
    pub(crate) fn extend(&self, allowed: bool) -> u64 {
        let c = if allowed {
            &self.extends
        } else {
            &self.extends_refused
        };
        c.fetch_add(1, Relaxed) + 1
    }

    /// A name lookup ended, with addresses or without.
    pub(crate) fn lookup(&self, ok: bool) {
        let c = if ok {
            &self.lookups_ok
        } else {
            &self.lookups_failed
        };
        c.fetch_add(1, Relaxed);
    }

    /// Bytes read from a client's connection.
    pub(crate) fn wire_in(&self, n: usize) {
        self.wire_in.fetch_add(n as u64, Relaxed);
    }

    /// Bytes written to a client's connection.
    pub(crate) fn wire_out(&self, n: usize) {
        self.wire_out.fetch_add(n as u64, Relaxed);
    }

    /// Stream payload moved: `up` from clients, `down` to them.
    pub(crate) fn payload(&self, up: u64, down: u64) {
        if up > 0 {
            self.payload_up.fetch_add(up, Relaxed);
        }
        if down > 0 {
            self.payload_down.fetch_add(down, Relaxed);
        }
    }

    /// Copy the loop's gauges, shaping histogram and CPU time (called on the loop's
    /// thread, once a second).
    pub(crate) fn publish(&self, g: LoopGauges, lateness: &Lateness, shaping_failures: u64) {
        self.cpu_ns
            .store(crate::os::thread_cpu_time().as_nanos() as u64, Relaxed);
        self.connections.store(g.connections, Relaxed);
        self.sessions_open.store(g.sessions, Relaxed);
        self.streams_open.store(g.streams, Relaxed);
        self.dials_pending.store(g.dials, Relaxed);
        self.lookups_pending.store(g.lookups, Relaxed);
        self.output_bytes.store(g.output_bytes, Relaxed);
        self.reads_paused.store(g.reads_paused, Relaxed);
        for (a, b) in self.shaped_buckets.iter().zip(lateness.buckets) {
            a.store(b, Relaxed);
        }
        self.shaped_sum_ns.store(lateness.sum_ns, Relaxed);
        self.shaping_failures.store(shaping_failures, Relaxed);
    }
}

/// Upper bounds of the name-lookup latency histogram, in seconds.
const LOOKUP_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Every loop's metrics and what the relay shares.
#[derive(Debug)]
pub struct Metrics {
    loops: Vec<Arc<CachePadded<LoopMetrics>>>,
    /// How long the resolver threads' `getaddrinfo` took.
    lookup_seconds: Histogram,
    /// Names waiting for a resolver thread.
    lookups_queued: AtomicU64,
    /// Client keys on the allow-list.
    clients_allowed: AtomicU64,
    /// When the relay started, seconds since the epoch.
    started_unix: f64,
}

impl Metrics {
    /// Metrics for `loops` event loops.
    pub(crate) fn new(loops: usize) -> Arc<Metrics> {
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Arc::new(Metrics {
            loops: (0..loops).map(|_| Arc::default()).collect(),
            lookup_seconds: Histogram::new(LOOKUP_BUCKETS),
            lookups_queued: AtomicU64::new(0),
            clients_allowed: AtomicU64::new(0),
            started_unix,
        })
    }

    /// Loop `i`'s counters.
    pub(crate) fn of_loop(&self, i: usize) -> Arc<CachePadded<LoopMetrics>> {
        self.loops[i].clone()
    }

    /// A resolver thread's `getaddrinfo` took `d`.
    pub(crate) fn lookup_took(&self, d: Duration) {
        self.lookup_seconds.observe(d.as_secs_f64());
    }

    /// Names waiting for a resolver thread now.
    pub(crate) fn set_lookups_queued(&self, n: usize) {
        self.lookups_queued.store(n as u64, Relaxed);
    }

    /// The allow-list now holds `n` keys.
    pub(crate) fn set_clients_allowed(&self, n: usize) {
        self.clients_allowed.store(n as u64, Relaxed);
    }
}
