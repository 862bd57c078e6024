//! What `qnet status` shows: each running qnet client process (a preloaded program, a C
//! program using the `qnet_*` API, `qnet forward`, `qnet socks`) publishes a
//! [`Snapshot`] of itself in one small file, `status.<pid>` in this user's qnet runtime
//! directory (`rundir`), and `qnet status` reads them all.
//!
//! Why files and not a port or a socket: nothing is opened inside the host program that
//! another process could talk to, the directory is private to the user (0700, files
//! 0600), and a reader needs nothing from the publisher but the file. The engine thread
//! replaces its file whole (rename) at most once a second when something changed, and
//! every [`HEARTBEAT`] otherwise, so the data path pays no system call per packet.
//!
//! - `mod.rs`: the snapshot (the file's JSON body, versioned by [`VERSION`]).
//! - `file`: the writer (one per process, removed when it ends) and the reader (dead
//!   processes' and reused pids' files ignored and removed, old ones marked stale).
//! - `show`: the table `qnet status` prints.

mod file;
mod show;

pub use file::{Listed, Publisher, list};
pub use show::{json, table};

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The file format's version: a reader skips files of another version.
pub const VERSION: u32 = 1;
/// A publisher with nothing new still rewrites its file this often.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A file not rewritten for this long, whose process is alive, is shown as stale (its
/// engine thread is stuck, or the process stopped).
pub const STALE_AFTER: Duration = Duration::from_secs(35);

/// What kind of program the process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A program run with libqnet.so preloaded (`qnet run`, `LD_PRELOAD`).
    Preload,
    /// A program using the C API (`qnet_init`).
    Capi,
    /// `qnet forward`.
    Forward,
    /// `qnet socks`.
    Socks,
}

impl Kind {
    /// The name in the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Preload => "preload",
            Kind::Capi => "capi",
            Kind::Forward => "forward",
            Kind::Socks => "socks",
        }
    }
}

/// One process's status: the body of its file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`VERSION`].
    pub version: u32,
    /// The publishing process.
    pub pid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22, clock ticks since boot): a pid that
    /// was reused by another process does not match.
    pub start_time: u64,
    /// The program's name (`/proc/<pid>/comm`).
    pub program: String,
    /// What kind of qnet client it is.
    pub kind: Kind,
    /// When the file was written, unix ms.
    pub updated_at_ms: u64,
    /// Every configured path (a relay, or a route of relays), in configured order.
    pub paths: Vec<PathStatus>,
    /// The current session (the one new streams go to), if one is up.
    pub session: Option<SessionStatus>,
    /// Tunneled streams open now.
    pub streams_open: u64,
    /// Stream bytes sent, all sessions since start.
    pub bytes_sent: u64,
    /// Stream bytes received, all sessions since start.
    pub bytes_received: u64,
    /// The configured timing profile of flows no rule matches.
    pub profile: String,
    /// How late shaped departures were served.
    pub lateness: LatenessStatus,
    /// Shaped streams the timing verifier (or the session) stopped.
    pub shaping_failures: u64,
    /// Calls refused because their traffic would bypass the tunnel, by kind (`udp`,
    /// `raw`, `setuid`, `exec`, `inbound`, `received_fd`, `socket`, `dns`): counts since
    /// start. A map, so a new kind needs no new format.
    #[serde(default)]
    pub refusals: BTreeMap<String, u64>,
    /// Tor's view, for a client whose relays are reached through Tor with `[tor]`
    /// configured: bootstrap progress and each of this process's sessions' circuit and
    /// exit (`tor::TorWatch`); `null` for every other client.
    #[serde(default)]
    pub tor: Option<crate::tor::TorStatus>,
}

/// One configured path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStatus {
    /// Its relays' `host:port`, entry first.
    pub hops: Vec<String>,
    /// `up` (new streams may go there) or `down` (retried later).
    pub state: String,
    /// For a down path: how long until its next try, ms (as of the writing in the file,
    /// as of the reading in what [`list`] returns).
    pub retry_in_ms: Option<u64>,
    /// New streams go to this path now.
    pub current: bool,
}

/// The current session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// Which path (an index into [`Snapshot::paths`]).
    pub path: usize,
    /// The exit relay's `host:port` (the relay itself for a one-relay path).
    pub relay: String,
    /// Since the session was established, ms: as of `updated_at_ms` in the file, as of
    /// the reading in what [`list`] returns.
    pub age_ms: u64,
    /// The last measured round trip to the exit relay, µs.
    pub rtt_us: Option<u64>,
    /// Key updates of the record layer this side sent (its sending key's epoch).
    pub key_epoch: u64,
    /// Key updates received from the relay.
    pub key_epoch_peer: u64,
    /// The records' cipher the handshake agreed on (`aes-256-gcm`, `chacha20-poly1305`).
    #[serde(default)]
    pub cipher: String,
}

/// Lateness of shaped departures, from the engine's histogram: a percentile is the upper
/// bound of the bucket it falls in (50 µs, 100, 200, 500, 1 ms, 2 ms, 5 ms; the worst
/// lateness past that).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatenessStatus {
    /// Departures timed.
    pub count: u64,
    /// Median lateness, µs (bucket bound).
    pub p50_us: u64,
    /// 99th percentile, µs (bucket bound).
    pub p99_us: u64,
    /// The worst, µs.
    pub max_us: u64,
    /// Departures per bucket: ≤ 50 µs, ≤ 100, ≤ 200, ≤ 500, ≤ 1 ms, ≤ 2 ms, ≤ 5 ms,
    /// more (two readings give the histogram of what happened between them).
    #[serde(default)]
    pub buckets: [u64; 8],
}

impl LatenessStatus {
    /// From the engine's histogram.
    pub fn of(l: &crate::engine::wheel::Lateness) -> LatenessStatus {
        use crate::engine::wheel::LATENESS_BOUNDS_US;
        let count: u64 = l.buckets.iter().sum();
        let max_us = l.max_ns / 1000;
        let pct = |p: u64| {
            if count == 0 {
                return 0;
            }
            // The smallest bucket holding at least p% of the departures.
            let need = (count * p).div_ceil(100);
            let mut seen = 0;
            for (i, n) in l.buckets.iter().enumerate() {
                seen += n;
                if seen >= need {
                    return LATENESS_BOUNDS_US.get(i).map_or(max_us, |&b| b.min(max_us));
                }
            }
            max_us
        };
        LatenessStatus {
            count,
            p50_us: pct(50),
            p99_us: pct(99),
            max_us,
            buckets: l.buckets,
        }
    }
}

#[cfg(test)]
mod tests;
