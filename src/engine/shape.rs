//! A shaped flow's sending side: the bytes the timing scheduler holds back, and the glue
//! that turns its departures into session frames.
//!
//! The scheduler (`crate::sched`) only counts bytes; the bytes themselves wait here, in
//! arrival order, until a departure takes them. A flow of the `performance` profile has no
//! `Shaper` at all, so unshaped traffic runs the same code as before the scheduler existed.

use std::sync::OnceLock;
use std::time::Instant;

use crate::proto::{Session, StreamError};
use crate::sched::{Departure, Direction, FlowSched, Profile, Violation};

/// Most bytes a shaped flow holds before the engine stops reading its socket (backpressure
/// to the application, as TCP's own buffers would give).
pub(crate) const QUEUE_MAX: usize = 256 * 1024;

/// Nanoseconds since the engine's epoch: the scheduler's clock.
pub(crate) fn now_ns(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    now.saturating_duration_since(epoch).as_nanos() as u64
}

/// Why a shaped flow could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ShapeError {
    /// The entropy ring gave no seed for the flow's schedule (the caller fails it closed).
    #[error("no randomness for the scheduler: {0}")]
    NoRandomness(crate::entropy::EntropyError),
    /// The runtime verifier caught the scheduler breaking one of its invariants.
    #[error("timing verifier: {0}")]
    Violation(Violation),
    /// The session refused the frame.
    #[error("stream: {0}")]
    Stream(#[from] StreamError),
}

/// The held bytes and scheduler of one shaped flow.
pub(crate) struct Shaper {
    sched: FlowSched,
    buf: Vec<u8>,
    head: usize,
    /// The deadline this flow has in the engine's timer wheel, if any.
    pub(crate) armed: Option<u64>,
}

impl std::fmt::Debug for Shaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shaper")
            .field("mode", &self.sched.params().mode)
            .field("queued", &self.queued())
            .field("armed", &self.armed)
            .finish()
    }
}

/// A fresh per-flow seed from the entropy ring: two flows never share one.
fn flow_seed() -> Result<[u8; 32], ShapeError> {
    crate::entropy::seed32().map_err(ShapeError::NoRandomness)
}

impl Shaper {
    /// Switch to `profile` (for `qnet_set_profile`): the bytes held so far keep their order
    /// and leave under the new schedule, counted as arriving now.
    pub(crate) fn switch(
        old: Option<Box<Shaper>>,
        profile: Profile,
        dir: Direction,
        now: Instant,
    ) -> Result<Option<Box<Shaper>>, ShapeError> {
        let held = old.as_ref().map_or(0, |o| o.queued());
        let closed = old.as_ref().is_some_and(|o| o.sched.is_closed());
        let params = profile.params(dir);
        if params.mode == crate::sched::Mode::Off && held == 0 {
            return Ok(None);
        }
        let mut new = Shaper {
            sched: FlowSched::new(params, flow_seed()?, now_ns(now)),
            buf: Vec::new(),
            head: 0,
            armed: None,
        };
        if let Some(o) = old {
            new.push(now, &o.buf[o.head..]);
        }
        if closed {
            new.close(now);
        }
        Ok(Some(Box::new(new)))
    }

    /// A shaper for `profile` in direction `dir`, or `None` when the profile does not shape.
    /// Without randomness for its seed it fails (closed: the caller refuses the flow).
    pub(crate) fn new(
        profile: Profile,
        dir: Direction,
        now: Instant,
    ) -> Result<Option<Shaper>, ShapeError> {
        let params = profile.params(dir);
        if params.mode == crate::sched::Mode::Off {
            return Ok(None);
        }
        let seed = flow_seed()?;
        Ok(Some(Shaper {
            sched: FlowSched::new(params, seed, now_ns(now)),
            buf: Vec::new(),
            head: 0,
            armed: None,
        }))
    }

    /// Bytes that may still be queued.
    pub(crate) fn room(&self) -> usize {
        QUEUE_MAX.saturating_sub(self.queued())
    }

    /// The schedule no longer bounds what this flow sends (a constant flow's drain): the
    /// link's high-water mark has to.
    pub(crate) fn unbounded(&self) -> bool {
        self.sched.is_draining()
    }

    /// Bytes held.
    pub(crate) fn queued(&self) -> usize {
        self.buf.len() - self.head
    }

    /// Queue application bytes that arrived at `now`.
    pub(crate) fn push(&mut self, now: Instant, data: &[u8]) {
        if self.head > 0 && self.head * 2 >= self.buf.len() {
            // Keep the held bytes contiguous without moving them on every departure.
            self.buf.drain(..self.head);
            self.head = 0;
        }
        self.buf.extend_from_slice(data);
        self.sched.on_data(now_ns(now), data.len());
    }

    /// The application finished sending at `now`.
    pub(crate) fn close(&mut self, now: Instant) {
        self.sched.on_close(now_ns(now));
    }

    /// Send every departure due at `now` on `stream`; returns the application bytes sent.
    /// A verifier violation or a session error ends the flow (the caller resets it).
    pub(crate) fn drain(
        &mut self,
        now: Instant,
        session: &mut Session,
        stream: u32,
    ) -> Result<usize, ShapeError> {
        let t = now_ns(now);
        let p = self.sched.params();
        if p.floor_ns > 0 {
            let ns = std::time::Duration::from_nanos;
            session.keep_floor(now, ns(p.floor_ns), p.floor_len, ns(p.floor_tail_ns));
        }
        let mut sent = 0;
        loop {
            let credit = if self.queued() > 0 {
                session.stream_send_capacity(stream)
            } else {
                0
            };
            match self.sched.poll(t, credit).map_err(ShapeError::Violation)? {
                None => {
                    if credit == 0 && self.queued() > 0 {
                        // Credit, not time, is what the held bytes wait for now.
                        session.want_writable(stream);
                    }
                    return Ok(sent);
                }
                Some(Departure::Data { bytes, frame_len }) => {
                    let data = &self.buf[self.head..self.head + bytes];
                    let took = session.write_padded(now, stream, data, frame_len)?;
                    // The scheduler never exceeds the credit it was given.
                    debug_assert_eq!(took, bytes);
                    self.head += took;
                    sent += took;
                    if self.head == self.buf.len() {
                        self.buf.clear();
                        self.head = 0;
                    }
                }
                Some(Departure::Padding { frame_len }) => session.send_padding(now, frame_len)?,
            }
        }
    }

    /// When the engine's timer should next serve this flow, in [`now_ns`] time. A departure
    /// already due that waits only for flow-control credit gets no timer: the session's
    /// `Writable` event brings the flow back, and a timer in the past would spin the loop.
    pub(crate) fn next_timer(&self, now: Instant, session: &Session, stream: u32) -> Option<u64> {
        let d = self.sched.next_deadline()?;
        if d <= now_ns(now) && self.queued() > 0 && session.stream_send_capacity(stream) == 0 {
            return None;
        }
        Some(d)
    }

    /// Nothing is held and the scheduler will not send again (its padding tail is done).
    pub(crate) fn is_finished(&self) -> bool {
        self.queued() == 0 && self.sched.is_finished()
    }

    /// The scheduler's counters.
    pub(crate) fn stats(&self) -> crate::sched::FlowSchedStats {
        self.sched.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Destination;
    use crate::proto::sim::Pair;
    use std::time::Duration;

    /// A connected pair with one accepted stream of `profile`.
    fn open_pair(seed: u64, profile: Profile) -> (Pair, u32) {
        let mut p = Pair::new(seed);
        p.connect();
        let dest = Destination::Addr("192.0.2.1:80".parse().unwrap());
        let (id, _) = p.client.open(p.now, dest, profile.wire(), &[]).unwrap();
        p.drive();
        p.server.open_result(p.now, id, Ok(())).unwrap();
        p.drive();
        (p, id)
    }

    /// Every record a high-security (constant-rate) stream puts on the wire has one size,
    /// data cell or padding cell, and the bytes still arrive intact and in order.
    #[test]
    fn constant_cells_are_one_record_size_and_carry_the_bytes() {
        let (mut p, id) = open_pair(11, Profile::HighSecurity);
        let mut sh = Shaper::new(Profile::HighSecurity, Direction::Up, p.now)
            .unwrap()
            .expect("high-security shapes");
        let cell = Profile::HighSecurity.params(Direction::Up).cell;
        let record = cell + crate::sched::RECORD_OVERHEAD;

        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 241) as u8).collect();
        let mut fed = 0;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let end = p.now + Duration::from_secs(4);
        while p.now < end {
            // Bursty arrivals: 3000 bytes every 50 ms for the first second.
            if fed < data.len() && now_ns(p.now) % 50_000_000 < 1_000_000 {
                let n = 3000.min(data.len() - fed);
                sh.push(p.now, &data[fed..fed + n]);
                fed += n;
            }
            let (bytes0, recs0) = (p.client.transmit().len(), p.client.stats().records_sent);
            sh.drain(p.now, &mut p.client, id).unwrap();
            let (bytes1, recs1) = (p.client.transmit().len(), p.client.stats().records_sent);
            let recs = (recs1 - recs0) as usize;
            assert_eq!(
                bytes1 - bytes0,
                recs * record,
                "a record of another size left"
            );
            p.advance(Duration::from_millis(1));
            while let Ok(Some(n)) = p.server.read(p.now, id, &mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
        let st = sh.stats();
        assert!(st.data_frames > 0 && st.padding_frames > 0, "{st:?}");
        assert_eq!(got, data);
    }

    /// A `default` flow that sends keeps the session's padding floor: the silence after
    /// its bytes is filled with small records until the floor's tail ends.
    #[test]
    fn a_default_flow_keeps_the_session_floor() {
        let (mut p, id) = open_pair(12, Profile::Default);
        let params = Profile::Default.params(Direction::Up);
        assert!(params.floor_ns > 0, "default has a floor");
        let mut sh = Shaper::new(Profile::Default, Direction::Up, p.now)
            .unwrap()
            .expect("default shapes");
        sh.push(p.now, b"GET / HTTP/1.1\r\n\r\n");
        sh.drain(p.now, &mut p.client, id).unwrap();
        // The shaper is not drained again, so FRONT's padding stays queued and every
        // record from here on is the session's floor.
        let before = p.client.stats();
        p.advance(Duration::from_nanos(params.floor_tail_ns / 2));
        let mid = p.client.stats();
        let floor_records = mid.records_sent - before.records_sent;
        let want = params.floor_tail_ns / 2 / params.floor_ns;
        assert!(
            (want - 1..=want + 1).contains(&floor_records),
            "{floor_records} records in half the tail, want {want}"
        );
        assert_eq!(
            mid.padding_sent - before.padding_sent,
            floor_records * (params.floor_len - crate::proto::frame::HEADER_LEN) as u64
        );
        p.advance(Duration::from_nanos(params.floor_tail_ns));
        let end = p.client.stats();
        p.advance(Duration::from_secs(1));
        assert_eq!(
            p.client.stats().records_sent,
            end.records_sent,
            "the tail ended"
        );
    }

    /// `performance` builds no shaper at all: unshaped flows run the old code path.
    #[test]
    fn performance_has_no_shaper() {
        let now = Instant::now();
        assert!(
            Shaper::new(Profile::Performance, Direction::Up, now)
                .unwrap()
                .is_none()
        );
        assert!(
            Shaper::new(Profile::Performance, Direction::Down, now)
                .unwrap()
                .is_none()
        );
    }
}
