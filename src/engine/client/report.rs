//! This process's status file (`engine::status`), written from the loop after a service
//! round: at once when the session comes or goes, within a second of any other change
//! (streams, bytes, paths' health, shaping), and every [`HEARTBEAT`] when nothing
//! changed, so a reader can tell a live process from a stuck one. Between writes a round
//! costs a comparison of a few counters: no system call, no allocation. The heartbeat
//! wakes an idle engine every 10 s (the preload runtime's otherwise sleeps until due).

use std::time::{Duration, Instant};

use super::Client;
use super::health::State;
use crate::engine::status::{
    HEARTBEAT, LatenessStatus, PathStatus, Publisher, SessionStatus, Snapshot,
};

/// The shortest time between two writes that are not a session coming or going.
const MIN_GAP: Duration = Duration::from_secs(1);

/// What a write is due for: when it changes, the file is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// The current tunnel's path, if a session is up (a change is written at once).
    current: Option<usize>,
    streams: usize,
    bytes: (u64, u64),
    /// Paths that are up, as bits (the first 64).
    up: u64,
    /// The earliest and latest retry of a down path (a failed probe moves one).
    retries: (Option<Instant>, Option<Instant>),
    shaping_failures: u64,
    /// Shaped departures timed.
    departures: u64,
    /// Tor's change count (bootstrap, circuits, streams), when it is watched.
    tor: Option<u64>,
}

/// The writer's state in the loop.
pub(super) struct Reporter {
    publisher: Publisher,
    /// What the last write showed, and when it was.
    last: Option<(Seen, Instant)>,
    /// When the next write is due.
    pub(super) due: Option<Instant>,
}

impl Client {
    /// Publish this process's status through `publisher` (`qnet status` reads it) from
    /// now on; its file is removed when this loop is dropped.
    pub fn publish_status(&mut self, publisher: Publisher) {
        self.reporter = Some(Reporter {
            publisher,
            last: None,
            due: None,
        });
    }

    /// After a service round: write the file if it is due, and say when it will be next.
    pub(super) fn report(&mut self, now: Instant) {
        let Some(r) = &self.reporter else {
            return;
        };
        let seen = self.seen();
        let due = match r.last {
            None => now,
            Some((last, _)) if last.current != seen.current => now,
            Some((last, at)) if last != seen => at + MIN_GAP,
            Some((_, at)) => at + HEARTBEAT,
        };
        if now < due {
            self.reporter.as_mut().expect("checked").due = Some(due);
            return;
        }
        let snap = self.snapshot(now, r, &seen);
        let r = self.reporter.as_mut().expect("checked");
        if let Err(e) = r.publisher.write(&snap) {
            crate::qlog!(Debug, "status file not written: {e}");
        }
        r.last = Some((seen, now));
        r.due = Some(now + HEARTBEAT);
    }

    /// The counters a write depends on (cheap: no allocation).
    fn seen(&self) -> Seen {
        let current = self.current();
        let live = current
            .and_then(|i| self.tunnels[i].exit())
            .map(|s| s.stats())
            .unwrap_or_default();
        let mut up = 0u64;
        for p in 0..self.cfg.paths.len().min(64) {
            if self.health.is_up(p) {
                up |= 1 << p;
            }
        }
        Seen {
            current: current.map(|i| self.tunnels[i].path),
            streams: self.flows.len(),
            bytes: (
                self.closed.bytes_sent + live.bytes_sent,
                self.closed.bytes_received + live.bytes_received,
            ),
            up,
            retries: (self.health.retries().min(), self.health.retries().max()),
            shaping_failures: self.stats.shaping_failures,
            departures: self.stats.lateness.buckets.iter().sum(),
            tor: self.tor.as_ref().map(|t| t.changes()),
        }
    }

    /// Everything `qnet status` shows of this process now.
    fn snapshot(&self, now: Instant, r: &Reporter, seen: &Seen) -> Snapshot {
        let mut snap = r.publisher.blank(self.unix_ms(now));
        snap.paths = self
            .cfg
            .paths
            .iter()
            .enumerate()
            .map(|(p, path)| {
                let retry = match self.health.state(p) {
                    State::Up => None,
                    State::Down { retry_at, .. } => {
                        Some(retry_at.saturating_duration_since(now).as_millis() as u64)
                    }
                };
                PathStatus {
                    hops: path.hops.iter().map(|h| h.address.clone()).collect(),
                    state: if retry.is_some() { "down" } else { "up" }.into(),
                    retry_in_ms: retry,
                    current: seen.current == Some(p),
                }
            })
            .collect();
        snap.session = self.current().and_then(|i| {
            let t = &self.tunnels[i];
            let s = t.exit()?;
            let st = s.stats();
            Some(SessionStatus {
                path: t.path,
                relay: self.cfg.paths[t.path].hops.last()?.address.clone(),
                age_ms: t
                    .up_since
                    .map_or(0, |u| now.saturating_duration_since(u).as_millis() as u64),
                rtt_us: s.rtt().map(|d| d.as_micros() as u64),
                key_epoch: st.key_updates_sent,
                key_epoch_peer: st.key_updates_received,
                cipher: s.cipher().map_or("", |c| c.name()).into(),
            })
        });
        snap.streams_open = seen.streams as u64;
        (snap.bytes_sent, snap.bytes_received) = seen.bytes;
        snap.profile = self.cfg.timing.profile.name().into();
        snap.lateness = LatenessStatus::of(&self.stats.lateness);
        snap.shaping_failures = self.stats.shaping_failures;
        snap.refusals = self
            .observer
            .refusals()
            .into_iter()
            .map(|(k, n)| (k.to_owned(), n))
            .collect();
        snap.tor = self.tor_status();
        snap
    }
}
