//! Shaped flows' departures, for both event loops (the client's and the relay's).
//!
//! Each shaped flow has at most one live deadline: its next departure, on a hashed timing
//! wheel. One timerfd wakes the loop for the wheel's earliest deadline with nanosecond
//! precision (poll's millisecond timeout is too coarse for 100 µs ticks). A loop keys its
//! flows as it likes (the client by stream id, the relay by connection and stream) and
//! keeps the flows itself; an entry is live only while the flow's [`Shaper::armed`] still
//! names its deadline, so entries of flows that went away or re-armed earlier are skipped.
//!
//! A timerfd that cannot be armed fails every flow waiting on it closed: without it their
//! departures would leave whenever something else woke the loop (up to an hour later in an
//! idle preloaded program), off their schedule, and polling without sleeping instead would
//! spin a core.

use std::fmt::Display;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::{Interest, Registry, Token};

use super::TimerFd;
use super::pump::{Endpoint, PumpError};
use super::shape::{Shaper, now_ns};
use super::wheel::{Lateness, Wheel};
use crate::proto::Session;
use crate::qlog;

/// Pump/flush rounds for one session per wakeup before other sockets get a turn.
pub(crate) const MAX_ROUNDS: usize = 16;

/// The wheel of shaped departures and the timerfd that wakes the loop for them.
pub(crate) struct ShapedTimers {
    wheel: Wheel,
    fd: TimerFd,
    /// The deadline the timerfd is armed for.
    armed_at: Option<u64>,
}

/// Wheel entries taken out at once, `(key, deadline)`: the due ones after an expiry, or
/// every one when the timerfd could not be armed.
pub(crate) struct Departures {
    /// When they were taken, in [`now_ns`] time.
    at: u64,
    entries: Vec<(u64, u64)>,
    /// Taken because the timer failed: not served, so no lateness is recorded.
    stranded: bool,
}

impl Departures {
    /// The entries as `(key, deadline)`, stale ones included.
    pub(crate) fn entries(&self) -> &[(u64, u64)] {
        &self.entries
    }

    /// Whether `deadline` is `sh`'s live departure; if so it is consumed (the flow is
    /// disarmed) and, for an expiry, how late it is served goes into `lateness`.
    pub(crate) fn claim(&self, sh: &mut Shaper, deadline: u64, lateness: &mut Lateness) -> bool {
        if sh.armed != Some(deadline) {
            return false;
        }
        sh.armed = None;
        if !self.stranded {
            lateness.record(self.at.saturating_sub(deadline));
        }
        true
    }
}

impl ShapedTimers {
    /// An empty wheel and a disarmed timerfd registered under `token`.
    pub(crate) fn new(registry: &Registry, token: Token) -> io::Result<ShapedTimers> {
        let fd = TimerFd::new()?;
        registry.register(
            &mut mio::unix::SourceFd(&fd.as_raw_fd()),
            token,
            Interest::READABLE,
        )?;
        Ok(ShapedTimers {
            wheel: Wheel::new(),
            fd,
            armed_at: None,
        })
    }

    /// Move the timerfd to a new number and register that (an app's `dup2` onto the old
    /// one, see `sys::renumber`); returns the old number.
    pub(crate) fn renumber(&mut self, registry: &Registry, token: Token) -> io::Result<RawFd> {
        let old = self.fd.renumber()?;
        registry.register(
            &mut mio::unix::SourceFd(&self.fd.as_raw_fd()),
            token,
            Interest::READABLE,
        )?;
        Ok(old)
    }

    /// Forget every departure (the loop recovering from a panic of its own drops all its
    /// flows). The timerfd stays; a firing left armed finds nothing due.
    pub(crate) fn clear(&mut self) {
        self.wheel = Wheel::new();
        self.armed_at = None;
    }

    /// The timerfd fired: read it quiet; the next [`ShapedTimers::arm`] sets it again.
    pub(crate) fn fired(&mut self) {
        self.fd.clear();
        self.armed_at = None;
    }

    /// Point the timerfd at the wheel's earliest deadline (a system call only when that
    /// changed). `Ok(true)`: a departure is due already, so the caller polls without
    /// sleeping and serves it next, with no timer set: under load, when departures are
    /// due back to back, programming a timer for each cost more than serving it (in a
    /// VM each one reprograms the virtual APIC's timer). If it cannot be armed, every
    /// entry comes back as stranded: the caller resets the flows whose departure is live
    /// and counts them as shaping failures.
    pub(crate) fn arm(&mut self, now: Instant) -> Result<bool, Departures> {
        let next = self.wheel.next_deadline();
        let at = now_ns(now);
        if next.is_some_and(|d| d <= at) {
            return Ok(true);
        }
        if next == self.armed_at {
            return Ok(false);
        }
        self.armed_at = next;
        let Some(d) = next else {
            return Ok(false);
        };
        let Err(e) = self.fd.arm(Duration::from_nanos(d - at)) else {
            return Ok(false);
        };
        qlog!(
            Error,
            "shaped departures: timer not armed ({e}); their flows fail closed"
        );
        self.armed_at = None;
        let mut entries = Vec::new();
        self.wheel.take_all(&mut entries);
        Err(Departures {
            at,
            entries,
            stranded: true,
        })
    }

    /// Take the entries due at `now`; the caller claims each against its flow's shaper
    /// and pumps the flows whose departure it was.
    pub(crate) fn expire(&mut self, now: Instant) -> Departures {
        let at = now_ns(now);
        let mut entries = Vec::new();
        if !self.wheel.is_empty() {
            self.wheel.expire(at, &mut entries);
        }
        Departures {
            at,
            entries,
            stranded: false,
        }
    }

    /// After a pump of flow `key`: put its next departure on the wheel, unless one at
    /// least as early is already there (a later one would be a stale entry it skips).
    pub(crate) fn schedule(&mut self, key: u64, ep: &mut Endpoint, now: Instant, s: &Session) {
        let Some(sh) = ep.shaper.as_mut() else {
            return;
        };
        if let Some(d) = sh.next_timer(now, s, ep.stream) {
            if sh.armed.is_none_or(|a| d < a) {
                self.wheel.insert(d, key);
                sh.armed = Some(d);
            }
        }
    }
}

impl AsRawFd for ShapedTimers {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Whether a pump ended its flow (the caller resets it); a failure of the schedule or the
/// session, not of the local socket, is counted in `failures` and logged for `flow`.
pub(crate) fn pump_failed(
    result: &Result<(), PumpError>,
    failures: &mut u64,
    flow: impl Display,
) -> bool {
    let Err(e) = result else {
        return false;
    };
    if e.is_shaping_failure() {
        *failures += 1;
        qlog!(Warn, "shaped stream {flow} failed closed: {e}");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{Direction, Profile};

    fn shaper(now: Instant) -> Shaper {
        Shaper::new(Profile::HighSecurity, Direction::Up, now)
            .unwrap()
            .expect("high-security shapes")
    }

    #[test]
    fn only_a_live_departure_is_claimed_and_counted() {
        let now = Instant::now();
        let mut sh = shaper(now);
        let mut late = Lateness::default();
        let d = Departures {
            at: 2_000_000,
            entries: vec![(7, 1_000_000)],
            stranded: false,
        };
        sh.armed = Some(1_500_000);
        assert!(!d.claim(&mut sh, 1_000_000, &mut late), "a stale entry");
        assert_eq!(sh.armed, Some(1_500_000));
        sh.armed = Some(1_000_000);
        assert!(d.claim(&mut sh, 1_000_000, &mut late));
        assert_eq!(sh.armed, None);
        assert_eq!(late.max_ns, 1_000_000);
        assert!(!d.claim(&mut sh, 1_000_000, &mut late), "claimed once");
    }

    #[test]
    fn a_stranded_departure_is_claimed_without_lateness() {
        let mut sh = shaper(Instant::now());
        let mut late = Lateness::default();
        let d = Departures {
            at: 9_000_000,
            entries: vec![(1, 1_000_000)],
            stranded: true,
        };
        sh.armed = Some(1_000_000);
        assert!(d.claim(&mut sh, 1_000_000, &mut late));
        assert_eq!(late, Lateness::default());
    }

    #[test]
    fn the_timer_is_armed_for_the_earliest_deadline_and_expires_it() {
        let poll = mio::Poll::new().unwrap();
        let mut t = ShapedTimers::new(poll.registry(), Token(9)).unwrap();
        let now = Instant::now();
        let base = now_ns(now);
        t.wheel.insert(base + 5_000_000, 1);
        t.wheel.insert(base + 1_000_000, 2);
        assert!(t.arm(now).is_ok());
        assert_eq!(t.armed_at, Some(base + 1_000_000));
        // Nothing changed: no re-arm.
        assert!(t.arm(now).is_ok());
        let due = t.expire(now + Duration::from_millis(2));
        assert_eq!(due.entries(), &[(2, base + 1_000_000)]);
        t.fired();
        assert!(t.arm(now).is_ok());
        assert_eq!(t.armed_at, Some(base + 5_000_000));
    }

    /// Under load departures fall due back to back: one already due is served by the
    /// next poll, which does not sleep, with no timer programmed for it.
    #[test]
    fn a_departure_already_due_sets_no_timer() {
        let poll = mio::Poll::new().unwrap();
        let mut t = ShapedTimers::new(poll.registry(), Token(9)).unwrap();
        let now = Instant::now();
        let base = now_ns(now);
        t.wheel.insert(base + 5_000_000, 1);
        assert_eq!(t.arm(now).ok(), Some(false));
        assert_eq!(t.armed_at, Some(base + 5_000_000));
        t.wheel.insert(base + 1_000_000, 2);
        let later = now + Duration::from_millis(2);
        assert_eq!(t.arm(later).ok(), Some(true), "due: poll without sleeping");
        assert_eq!(
            t.armed_at,
            Some(base + 5_000_000),
            "the timerfd was left alone"
        );
        let due = t.expire(later);
        assert_eq!(due.entries(), &[(2, base + 1_000_000)]);
        assert_eq!(t.arm(later).ok(), Some(false));
    }

    #[test]
    fn only_schedule_and_session_errors_are_counted() {
        use crate::proto::StreamError;
        let mut n = 0;
        assert!(!pump_failed(&Ok(()), &mut n, 1));
        let pipe = PumpError::Io(io::ErrorKind::BrokenPipe.into());
        assert!(pump_failed(&Err(pipe), &mut n, 1));
        assert_eq!(n, 0);
        let shape = super::super::shape::ShapeError::Stream(StreamError::UnknownStream);
        assert!(pump_failed(&Err(shape.into()), &mut n, 1));
        assert_eq!(n, 1);
    }
}
