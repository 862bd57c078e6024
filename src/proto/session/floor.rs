//! The padding floor: while a shaped flow is active, one small PADDING record leaves
//! whenever the session has sent nothing for an interval, so silence, pauses and sparse
//! traffic (keystrokes, requests) look alike on the wire. It is a faster keepalive with
//! a deadline, and it shapes the session rather than a flow: every flow of the session
//! shares it (docs/TIMING.md).

use std::time::{Duration, Instant};

/// Shortest floor interval: a zero interval would spin the engine.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// A floor in force until `until`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Floor {
    interval: Duration,
    frame_len: usize,
    until: Instant,
}

impl Floor {
    /// A floor from `now` until `tail` later, or the old one extended; a shorter interval
    /// or a larger frame of another caller wins, so no shaped flow gets less than it asked.
    pub(super) fn keep(
        old: Option<Floor>,
        now: Instant,
        interval: Duration,
        frame_len: usize,
        tail: Duration,
    ) -> Floor {
        let until = now + tail;
        let new = Floor {
            interval: interval.max(MIN_INTERVAL),
            frame_len,
            until,
        };
        match old {
            Some(o) if o.until > now => Floor {
                interval: o.interval.min(new.interval),
                frame_len: o.frame_len.max(frame_len),
                until: o.until.max(until),
            },
            _ => new,
        }
    }

    /// When the next floor record is due after a send at `last_tx`, if the floor still
    /// holds then.
    pub(super) fn due(&self, last_tx: Instant) -> Option<Instant> {
        let due = last_tx + self.interval;
        (due <= self.until).then_some(due)
    }

    /// Frame length of each floor record.
    pub(super) fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// The floor has ended by `now`.
    pub(super) fn ended(&self, now: Instant) -> bool {
        now > self.until
    }
}

#[cfg(test)]
mod tests {
    use crate::proto::frame::HEADER_LEN;
    use crate::proto::sim::Pair;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);
    const FRAME: usize = 82;

    /// With nothing else to send, one floor record leaves per interval, each of the asked
    /// size, until the tail ends; the other end, which asked for no floor, sends none.
    #[test]
    fn the_floor_fills_silence_until_its_tail_ends() {
        let mut p = Pair::new(21);
        p.connect();
        let (c0, s0) = (p.client.stats(), p.server.stats());
        p.client.keep_floor(p.now, 50 * MS, FRAME, 1000 * MS);
        p.advance(3000 * MS);
        let (c1, s1) = (p.client.stats(), p.server.stats());
        let records = c1.records_sent - c0.records_sent;
        assert!(
            (19..=21).contains(&records),
            "{records} floor records in 1 s"
        );
        assert_eq!(
            c1.padding_sent - c0.padding_sent,
            records * (FRAME - HEADER_LEN) as u64,
            "every floor record is one padding frame of the asked size"
        );
        assert_eq!(
            s1.records_sent, s0.records_sent,
            "the relay asked for no floor"
        );
        // The floor has ended: the next timer is the keepalive's, seconds away.
        let next = p.client.next_timeout().expect("a keepalive timer");
        assert!(next >= p.now + 1000 * MS, "{:?}", next - p.now);
    }

    /// A timer served late sends one floor record, never the ones it missed in a burst.
    #[test]
    fn a_late_floor_timer_sends_one_record_not_a_burst() {
        let mut p = Pair::new(22);
        p.connect();
        p.client.keep_floor(p.now, 10 * MS, FRAME, 10_000 * MS);
        let before = p.client.stats().records_sent;
        p.client.handle_timeout(p.now + 1000 * MS).unwrap();
        assert_eq!(p.client.stats().records_sent - before, 1);
    }

    /// Traffic of its own keeps the floor quiet: it only fills silence.
    #[test]
    fn a_busy_session_sends_no_floor_records() {
        let mut p = Pair::new(23);
        p.connect();
        let before = p.client.stats();
        p.client.keep_floor(p.now, 50 * MS, FRAME, 1000 * MS);
        for _ in 0..40 {
            p.client.send_padding(p.now, 1430).unwrap();
            p.advance(20 * MS);
        }
        let after = p.client.stats();
        assert_eq!(after.records_sent - before.records_sent, 40);
    }
}
