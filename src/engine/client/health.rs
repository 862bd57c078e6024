//! Which path (a relay, or a route of relays) new flows go to: each path's health and
//! the order to try them in. Pure: time and randomness are parameters.
//!
//! A path is down at once on a passive signal (refused, reset, EOF, a handshake that
//! failed or timed out) or when its live session went silent while watched
//! ([`silence_limits`]). A down path is retried with backoff; each retry is a probe
//! (a handshake, then the session is closed), and [`GOOD_PROBES`] probes in a row
//! bring it back.

use std::time::{Duration, Instant};

/// Consecutive good probes that bring a down path back.
pub(super) const GOOD_PROBES: u8 = 2;
/// The first retry of a path that went down; each failed probe doubles it.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between probes of a down path.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Between the good probes of a path coming back.
const PROBE_GAP: Duration = Duration::from_millis(500);

/// While watched, a session silent this long gets a PING.
pub(super) const PROBE_AFTER: Duration = Duration::from_millis(100);
/// While watched, a session silent this long (at least) is suspect: its path goes down
/// and new flows go elsewhere.
const SUSPECT_AFTER: Duration = Duration::from_millis(400);
/// A suspect session silent this long is dead: its flows are reset.
pub(super) const DEAD_AFTER: Duration = Duration::from_secs(4);
/// Happy Eyeballs (RFC 8305's connection attempt delay), per hop of the path: a
/// handshake not finished after this is raced by the next path's.
pub(super) const RACE_AFTER: Duration = Duration::from_millis(250);

/// (probe after, suspect after) for a session whose measured round trip is `rtt`: a
/// PING's answer gets four round trips on top of the probe delay, so a slow path is not
/// taken for a dead one.
pub(super) fn silence_limits(rtt: Option<Duration>) -> (Duration, Duration) {
    let rtt = rtt.unwrap_or_default().min(Duration::from_secs(5));
    (
        PROBE_AFTER,
        SUSPECT_AFTER.max(PROBE_AFTER + rtt * 4 + Duration::from_millis(50)),
    )
}

/// One path's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// New flows may go here.
    Up,
    /// Not before `retry_at`; `good` probes in a row so far.
    Down {
        retry_at: Instant,
        backoff: Duration,
        good: u8,
    },
}

/// Every path's health, and the order of preference.
#[derive(Debug)]
pub(super) struct Health {
    states: Vec<State>,
    /// Path indices, most preferred first.
    order: Vec<usize>,
}

impl Health {
    /// `paths` lists each path's (group, weight) in configured order, which is the order
    /// of preference. A group takes the place of its first path; inside it the order is
    /// drawn by weight (RFC 2782's selection), so clients of one organisation spread over
    /// its relays. `draw` returns uniform random numbers.
    pub(super) fn new(paths: &[(Option<&str>, u32)], mut draw: impl FnMut() -> u64) -> Health {
        // A path without a group is a tier of its own: the configured order stands.
        let mut groups: Vec<(Option<&str>, Vec<usize>)> = Vec::new();
        for (i, (g, _)) in paths.iter().enumerate() {
            match groups.iter_mut().find(|(name, _)| g.is_some() && name == g) {
                Some((_, members)) => members.push(i),
                None => groups.push((*g, vec![i])),
            }
        }
        let mut order = Vec::with_capacity(paths.len());
        for (_, mut members) in groups {
            while !members.is_empty() {
                let total: u64 = members.iter().map(|&i| u64::from(paths[i].1.max(1))).sum();
                let mut pick = draw() % total;
                let at = members
                    .iter()
                    .position(|&i| {
                        let w = u64::from(paths[i].1.max(1));
                        if pick < w {
                            return true;
                        }
                        pick -= w;
                        false
                    })
                    .unwrap_or(0);
                order.push(members.remove(at));
            }
        }
        Health {
            states: vec![State::Up; paths.len()],
            order,
        }
    }

    /// Path `i`'s state.
    pub(super) fn state(&self, i: usize) -> State {
        self.states[i]
    }

    /// Whether new flows may go to path `i`.
    pub(super) fn is_up(&self, i: usize) -> bool {
        self.states[i] == State::Up
    }

    /// Paths, most preferred first.
    #[cfg(test)]
    pub(super) fn preference(&self) -> &[usize] {
        &self.order
    }

    /// The most preferred path that is up.
    pub(super) fn best_up(&self) -> Option<usize> {
        self.order.iter().copied().find(|&i| self.is_up(i))
    }

    /// Which paths to try for new flows, in order: those up; when none is, every path
    /// (a dead set is still tried rather than refused).
    pub(super) fn candidates(&self) -> Vec<usize> {
        let up: Vec<usize> = self
            .order
            .iter()
            .copied()
            .filter(|&i| self.is_up(i))
            .collect();
        if up.is_empty() {
            self.order.clone()
        } else {
            up
        }
    }

    /// A passive signal or silence: path `i` is down. True if it was up.
    pub(super) fn mark_down(&mut self, i: usize, now: Instant) -> bool {
        let backoff = match self.states[i] {
            State::Up => FIRST_RETRY,
            State::Down { backoff, .. } => (backoff * 2).min(MAX_RETRY),
        };
        let was_up = self.states[i] == State::Up;
        self.states[i] = State::Down {
            retry_at: now + backoff,
            backoff,
            good: 0,
        };
        was_up
    }

    /// Path `i` cannot be tried before the first retry for a cause not its own (Tor not
    /// bootstrapped): down that long, its backoff not grown, nothing learned about it.
    pub(super) fn hold(&mut self, i: usize, now: Instant) {
        self.states[i] = State::Down {
            retry_at: now + FIRST_RETRY,
            backoff: FIRST_RETRY,
            good: 0,
        };
    }

    /// Path `i` is down until `until` (what another process learned): no sooner retried.
    pub(super) fn learned_down(&mut self, i: usize, until: Instant) {
        if self.states[i] == State::Up {
            self.states[i] = State::Down {
                retry_at: until,
                backoff: FIRST_RETRY,
                good: 0,
            };
        }
    }

    /// A probe of path `i` finished its handshake. True if the path is up again.
    pub(super) fn probe_ok(&mut self, i: usize, now: Instant) -> bool {
        if let State::Down { backoff, good, .. } = self.states[i] {
            let good = good + 1;
            self.states[i] = if good >= GOOD_PROBES {
                State::Up
            } else {
                State::Down {
                    retry_at: now + PROBE_GAP,
                    backoff,
                    good,
                }
            };
        }
        self.is_up(i)
    }

    /// A session carrying flows came up on path `i` (tried while every path was down):
    /// that is as good as the probes.
    pub(super) fn mark_up(&mut self, i: usize) -> bool {
        let was_down = !self.is_up(i);
        self.states[i] = State::Up;
        was_down
    }

    /// Down paths whose retry is due.
    pub(super) fn due(&self, now: Instant) -> Vec<usize> {
        self.order
            .iter()
            .copied()
            .filter(|&i| matches!(self.states[i], State::Down { retry_at, .. } if retry_at <= now))
            .collect()
    }

    /// The earliest retry of a down path.
    #[cfg(test)]
    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.retries().min()
    }

    /// The earliest retry of a down path that is still ahead of `now`.
    pub(super) fn next_retry_after(&self, now: Instant) -> Option<Instant> {
        self.retries().filter(|&t| t > now).min()
    }

    /// Every down path's retry time.
    pub(super) fn retries(&self) -> impl Iterator<Item = Instant> + '_ {
        self.states.iter().filter_map(|s| match s {
            State::Down { retry_at, .. } => Some(*retry_at),
            State::Up => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut() -> u64 {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn groups_keep_their_order_and_weights_spread_the_first_choice() {
        let paths = [(Some("eu"), 1), (Some("us"), 1), (Some("eu"), 3)];
        let mut firsts = [0u32; 3];
        let mut draw = counter();
        for _ in 0..4000 {
            let h = Health::new(&paths, &mut draw);
            // "eu" (paths 0 and 2) comes before "us" (path 1) every time.
            assert_eq!(h.preference()[2], 1, "{:?}", h.preference());
            firsts[h.preference()[0]] += 1;
        }
        // Weight 3 against 1: about three quarters of the draws start with path 2.
        assert!((2700..3300).contains(&firsts[2]), "{firsts:?}");
        assert_eq!(firsts[1], 0);
        // Without groups the configured order stands, whatever the weights and draws.
        let plain = Health::new(&[(None, 1), (None, 9), (None, 1)], &mut draw);
        assert_eq!(plain.preference(), [0, 1, 2]);
    }

    #[test]
    fn a_down_path_needs_consecutive_good_probes_and_backs_off_while_it_fails() {
        let t0 = Instant::now();
        let mut h = Health::new(&[(None, 1), (None, 1)], || 0);
        assert_eq!(h.best_up(), Some(0));
        assert!(h.mark_down(0, t0));
        assert_eq!(h.best_up(), Some(1));
        assert_eq!(h.candidates(), [1]);
        assert!(h.due(t0).is_empty());
        assert_eq!(h.next_retry(), Some(t0 + FIRST_RETRY));
        assert_eq!(h.due(t0 + FIRST_RETRY), [0]);
        // A failed probe doubles the wait.
        assert!(!h.mark_down(0, t0 + FIRST_RETRY));
        assert_eq!(h.next_retry(), Some(t0 + FIRST_RETRY * 3));
        let t1 = t0 + FIRST_RETRY * 3;
        assert!(!h.probe_ok(0, t1), "one good probe is not enough");
        assert_eq!(h.next_retry(), Some(t1 + PROBE_GAP));
        assert!(h.probe_ok(0, t1 + PROBE_GAP));
        assert_eq!(h.best_up(), Some(0));
        assert_eq!(h.next_retry(), None);
        // Backoff is bounded.
        for k in 0..20 {
            h.mark_down(1, t1 + Duration::from_secs(k));
        }
        let State::Down { backoff, .. } = h.state(1) else {
            panic!("down")
        };
        assert_eq!(backoff, MAX_RETRY);
    }

    #[test]
    fn a_hold_for_a_cause_not_the_paths_does_not_grow_its_backoff() {
        let t0 = Instant::now();
        let mut h = Health::new(&[(None, 1)], || 0);
        for k in 0..5 {
            h.hold(0, t0 + FIRST_RETRY * k);
        }
        assert_eq!(h.next_retry(), Some(t0 + FIRST_RETRY * 5));
        let State::Down { backoff, .. } = h.state(0) else {
            panic!("down")
        };
        assert_eq!(backoff, FIRST_RETRY);
        assert_eq!(h.candidates(), [0], "still tried when nothing else is up");
    }

    #[test]
    fn with_every_path_down_every_path_is_still_a_candidate() {
        let t0 = Instant::now();
        let mut h = Health::new(&[(None, 1), (None, 1), (None, 1)], || 0);
        for i in 0..3 {
            h.mark_down(i, t0);
        }
        assert_eq!(h.best_up(), None);
        assert_eq!(h.candidates(), [0, 1, 2]);
        assert!(h.mark_up(2));
        assert_eq!(h.candidates(), [2]);
        h.learned_down(2, t0 + Duration::from_secs(3));
        // What another process learned does not shorten a wait or revive a path.
        assert!(!h.is_up(2));
        assert!(h.due(t0 + Duration::from_secs(2)).iter().all(|&i| i != 2));
    }

    #[test]
    fn silence_limits_grow_with_the_round_trip() {
        assert_eq!(silence_limits(None), (PROBE_AFTER, SUSPECT_AFTER));
        let (_, slow) = silence_limits(Some(Duration::from_millis(200)));
        assert_eq!(slow, Duration::from_millis(950));
        let (_, capped) = silence_limits(Some(Duration::from_secs(60)));
        assert!(capped <= Duration::from_secs(21));
    }
}
