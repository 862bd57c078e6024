//! Which path new flows go to, and when tunnels start and end: the current tunnel on the
//! most preferred healthy path, Happy Eyeballs races while flows wait, probes of down
//! paths, and the silence check that finds a relay that stopped answering.

use std::time::Instant;

use super::Client;
use super::flows::flow_range;
use super::health::{DEAD_AFTER, RACE_AFTER, silence_limits};
use super::tunnel::Purpose;
use crate::qlog;

impl Client {
    /// The tunnel new flows go to, if it is up.
    pub(super) fn current(&self) -> Option<usize> {
        self.tunnels
            .iter()
            .position(|t| t.purpose == Purpose::Current && t.is_established())
    }

    /// Whether tunnel `serial` has flows (opened or being opened).
    fn has_flows(&self, serial: u32) -> bool {
        self.flows.range(flow_range(serial)).next().is_some()
    }

    /// Paths that may be attempted for new flows, in order: candidates not tried in this
    /// round and without a tunnel.
    fn untried(&self) -> Vec<usize> {
        self.health
            .candidates()
            .into_iter()
            .filter(|p| !self.tried.contains(p) && !self.tunnels.iter().any(|t| t.path == *p))
            .collect()
    }

    /// Keep the tunnels right for now; returns when this must run again at the latest.
    pub(super) fn manage_tunnels(&mut self, now: Instant) -> Option<Instant> {
        let mut next = self.watch(now);
        // Draining tunnels go once their flows have.
        let drained: Vec<u32> = self
            .tunnels
            .iter()
            .filter(|t| t.purpose == Purpose::Draining)
            .map(|t| t.serial)
            .filter(|&s| !self.has_flows(s))
            .collect();
        for s in drained {
            self.drop_tunnel(s);
        }
        let attempts: Vec<(usize, Instant)> = self
            .tunnels
            .iter()
            .filter(|t| t.purpose == Purpose::Attempt)
            .map(|t| (t.path, t.started))
            .collect();
        let current = self.current().map(|i| self.tunnels[i].path);
        let waiting = !self.waiting.is_empty();
        let best = self.health.best_up();
        match (current, attempts.last()) {
            // Served by the best path there is.
            (Some(c), None) if best.is_none_or(|b| b == c) => {}
            // A more preferred path came back: move new flows to it once it is up.
            (Some(_), None) => {
                if let Some(b) = best {
                    self.tried.push(b);
                    self.start_tunnel(now, b, Purpose::Attempt);
                }
            }
            (None, None) => {
                // Without flows waiting, only a path that is up or due is tried: a dead set
                // is not hammered for a session no one uses yet.
                let first = self.untried().first().copied().filter(|&p| {
                    waiting || self.health.is_up(p) || self.health.due(now).contains(&p)
                });
                match first {
                    Some(p) => {
                        self.tried.push(p);
                        self.start_tunnel(now, p, Purpose::Attempt);
                    }
                    None if waiting => {
                        // Every path failed in this round: the waiting flows fail, the next
                        // flow starts a new round.
                        self.tried.clear();
                        self.give_up_waiting();
                    }
                    None => self.tried.clear(),
                }
            }
            // Happy Eyeballs: a handshake slow to finish is raced by the next path's, while
            // no tunnel takes new flows (with one, flows go there and the attempt may take
            // its time).
            (None, Some(&(p, started))) => {
                let race_at = started + RACE_AFTER * self.cfg.paths[p].hops.len() as u32;
                if let Some(&n) = self.untried().first() {
                    if now >= race_at {
                        qlog!(
                            Debug,
                            "racing {} against a slow handshake",
                            self.cfg.paths[n].name()
                        );
                        self.tried.push(n);
                        self.start_tunnel(now, n, Purpose::Attempt);
                    } else {
                        next = min(next, Some(race_at));
                    }
                }
            }
            (Some(_), Some(_)) => {}
        }
        // Probes: down paths whose retry is due and that have no tunnel.
        for p in self.health.due(now) {
            if !self.tunnels.iter().any(|t| t.path == p) && !self.tried.contains(&p) {
                self.start_tunnel(now, p, Purpose::Probe);
            }
        }
        // A retry already due waits for what blocks it (a tunnel on that path, this round
        // of attempts), whose end brings the loop back: only later ones set a wake-up.
        min(next, self.health.next_retry_after(now))
    }

    /// The silence check of tunnels carrying flows, when there is another path to go to:
    /// a PING after [`super::health::PROBE_AFTER`] of silence, the path down after the
    /// suspect limit (new flows go elsewhere, the tunnel keeps its flows), its flows
    /// reset after [`DEAD_AFTER`]. Returns the next check.
    fn watch(&mut self, now: Instant) -> Option<Instant> {
        let fast = self.cfg.paths.len() > 1;
        let mut next = None;
        let mut suspects = Vec::new();
        let mut dead = Vec::new();
        for i in 0..self.tunnels.len() {
            let serial = self.tunnels[i].serial;
            let watched =
                fast && matches!(
                    self.tunnels[i].purpose,
                    Purpose::Current | Purpose::Draining
                ) && self.tunnels[i].is_established()
                    && self.has_flows(serial);
            let t = &mut self.tunnels[i];
            if !watched {
                t.watch_since = None;
                continue;
            }
            let since = *t.watch_since.get_or_insert(now);
            let heard = t.last_received().max(since);
            let silent = now.saturating_duration_since(heard);
            let (probe, suspect) = silence_limits(t.exit().and_then(|s| s.rtt()));
            if t.suspect && silent < suspect {
                // It answered again: its flows go on; its path stays down until probes.
                t.suspect = false;
            }
            if silent >= probe {
                if let Some(s) = t.exit_mut() {
                    // Flushed with every tunnel at the end of the round.
                    let _ = s.probe(now);
                }
            }
            if t.suspect && silent >= DEAD_AFTER {
                dead.push((serial, silent));
            } else if !t.suspect && silent >= suspect {
                suspects.push((serial, silent));
            }
            let at = if silent < probe {
                heard + probe
            } else if silent < suspect {
                heard + suspect
            } else {
                heard + DEAD_AFTER
            };
            next = min(next, Some(at));
        }
        for (serial, silent) in suspects {
            let Some(i) = self.tunnel_index(serial) else {
                continue;
            };
            let p = self.tunnels[i].path;
            self.tunnels[i].suspect = true;
            self.tunnels[i].purpose = Purpose::Draining;
            let why = format!("silent for {} ms", silent.as_millis());
            self.path_failed(now, p, &why);
            self.requeue(serial, now);
        }
        for (serial, silent) in dead {
            let why = format!("silent for {} ms", silent.as_millis());
            self.tunnel_down(now, serial, &why);
        }
        next
    }
}

fn min(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
