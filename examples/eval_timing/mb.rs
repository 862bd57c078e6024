//! maybenot's machines (the framework behind Mullvad's DAITA) as session-level padding:
//! a real `maybenot::Framework` at each end of a user's session, fed that end's records
//! and driven by the timers its actions set, in one discrete-event loop.
//!
//! Choices, and why:
//!
//! - **Packets.** maybenot's machines count packets (FRONT's budget, Tamaraw's pad-to-100,
//!   RegulaTor's rates) and DAITA runs on WireGuard packets of about one MTU. A record is
//!   as many packets as records of one full TCP segment of payload it would take
//!   ([`PKT_WIRE`]); each gets its own events. A padding packet is one record of
//!   [`PAD_WIRE`] bytes, the size of the per-flow schedulers' padding records.
//! - **Event mapping.** Data records are `NormalSent` then `TunnelSent` at the sender,
//!   `TunnelRecv` then `NormalRecv` at the receiver. The per-flow schedulers' padding
//!   records are mapped the same way, as *normal* packets: the framework sits below the
//!   flows, as DAITA sits below WireGuard, and `PaddingSent` names the machine that sent
//!   it, so feeding it for a scheduler's padding would spend that machine's limits and
//!   move its state. Only the other end's maybenot padding is `PaddingRecv`.
//! - **Both ends at once.** Some machines react to the other end's padding (Interspace's
//!   client starts on `PaddingRecv`, RegulaTor's client pads per packet received), so
//!   the two frameworks run in one loop and each end's padding reaches the other after
//!   the user's one-way latency (recovered from the records: the relay receives each
//!   upstream record exactly that long after the client sent it).
//! - **Blocking.** The hook cannot delay data. `BlockOutgoing` is still simulated for
//!   its events (`BlockingBegin`/`BlockingEnd`, which Tamaraw, RegulaTor and Scrambler
//!   need to move on) and for its rule that padding without `bypass` is not sent while
//!   non-bypassable blocking is on, but data is never held, so nothing can replace a
//!   padding packet (`replace` is moot: nothing is ever queued). Rows of machines that
//!   depend on blocking say "(padding-only)": they are cost-only approximations of the
//!   real defenses, whose padding a blocked queue would partly replace.
//! - **End of session.** The frameworks stop [`TAIL`] after the last record either end
//!   sees, as if the tunnel closed then; otherwise constant-rate machines would pad on.

use std::time::Duration;

use maybenot::{Framework, Machine, MachineId, Timer, TriggerAction, TriggerEvent};
use maybenot_machines::{StaticMachine, get_machine};
use qnet::sched::{FRAME_HEADER, MS, RECORD_OVERHEAD, SEGMENT_FRAME};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::MSS;
use crate::session::{Ev, SessionPad};

/// Wire bytes of a record carrying one full TCP segment of payload: one packet.
const PKT_WIRE: u32 = MSS + (FRAME_HEADER + RECORD_OVERHEAD) as u32;
/// Wire bytes of one padding packet: a padding record filling one TCP segment, as the
/// per-flow schedulers send.
const PAD_WIRE: u32 = (SEGMENT_FRAME + RECORD_OVERHEAD) as u32;
/// How long the frameworks run after the session's last record.
const TAIL: u64 = 2000 * MS;
/// Safety valve against a machine padding without end at one instant.
const MAX_PAD: usize = 1 << 21;

/// Simulated time for the framework: ns since the run's start.
#[derive(Clone, Copy, Debug)]
struct Ns(u64);

impl maybenot::time::Instant for Ns {
    type Duration = Duration;
    fn saturating_duration_since(&self, earlier: Ns) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// maybenot machines at the client (upstream padding) and at the relay (downstream).
pub(crate) struct Mb {
    client: Vec<StaticMachine>,
    relay: Vec<StaticMachine>,
}

impl Mb {
    pub(crate) fn new(client: Vec<StaticMachine>, relay: Vec<StaticMachine>) -> Mb {
        Mb { client, relay }
    }
}

/// What a machine's action timer does when it expires.
#[derive(Clone, Copy)]
enum Act {
    Pad {
        bypass: bool,
    },
    Block {
        dur: u64,
        bypass: bool,
        replace: bool,
    },
}

/// One end's framework, its timers, and what it has to process.
struct End<'a> {
    fw: Framework<Vec<Machine>, ChaCha8Rng, Ns>,
    /// This end's records, in time order, and the next one to feed.
    evs: &'a [Ev],
    next: usize,
    /// Arrival times of the other end's maybenot padding (constant delay: in order).
    inbox: std::collections::VecDeque<u64>,
    /// Per machine: the pending action timer and the internal timer (expiry, ns).
    action: Vec<Option<(u64, Act)>>,
    internal: Vec<Option<u64>>,
    /// Blocking in force: (until, bypassable).
    block: Option<(u64, bool)>,
    /// Padding sent: (time, wire bytes).
    out: Vec<(u64, u32)>,
    queue: Vec<TriggerEvent>,
}

/// The kinds of step, in the order taken at equal times: the tunnel's packets before the
/// machines' timers, as maybenot's own simulator does.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Own,
    Inbox,
    BlockEnd,
    Internal(usize),
    Action(usize),
}

impl<'a> End<'a> {
    fn new(machines: &[StaticMachine], seed: u64, evs: &'a [Ev]) -> End<'a> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // FRONT and Interspace draw their parameters here, per end and session.
        let m = get_machine(machines, &mut rng);
        let n = m.len();
        // No framework-wide limits (0.0 = none): the machines carry their own, as
        // designed; the budgets under test are the machines' parameters.
        let fw = Framework::new(m, 0.0, 0.0, Ns(0), rng).expect("valid maybenot machines");
        End {
            fw,
            evs,
            next: 0,
            inbox: Default::default(),
            action: vec![None; n],
            internal: vec![None; n],
            block: None,
            out: Vec::new(),
            queue: Vec::new(),
        }
    }

    fn next_step(&self) -> Option<(u64, Step)> {
        let own = self.evs.get(self.next).map(|e| (e.t, Step::Own));
        let inbox = self.inbox.front().map(|&t| (t, Step::Inbox));
        let block = self.block.map(|(t, _)| (t, Step::BlockEnd));
        let int = self
            .internal
            .iter()
            .enumerate()
            .filter_map(|(m, t)| t.map(|t| (t, Step::Internal(m))));
        let act = self
            .action
            .iter()
            .enumerate()
            .filter_map(|(m, a)| a.map(|(t, _)| (t, Step::Action(m))));
        [own, inbox, block]
            .into_iter()
            .flatten()
            .chain(int)
            .chain(act)
            .min()
    }

    /// Triggers `ev` and every event its actions cause at once (`TimerBegin`).
    fn fire(&mut self, now: u64, ev: TriggerEvent) {
        self.queue.push(ev);
        while let Some(ev) = self.queue.pop() {
            for a in self.fw.trigger_events(&[ev], Ns(now)) {
                match *a {
                    TriggerAction::SendPadding {
                        timeout,
                        bypass,
                        machine,
                        ..
                    } => {
                        self.action[machine.into_raw()] =
                            Some((now.saturating_add(ns(timeout)), Act::Pad { bypass }));
                    }
                    TriggerAction::BlockOutgoing {
                        timeout,
                        duration,
                        bypass,
                        replace,
                        machine,
                    } => {
                        let act = Act::Block {
                            dur: ns(duration),
                            bypass,
                            replace,
                        };
                        self.action[machine.into_raw()] =
                            Some((now.saturating_add(ns(timeout)), act));
                    }
                    TriggerAction::UpdateTimer {
                        duration,
                        replace,
                        machine,
                    } => {
                        let t = now.saturating_add(ns(duration));
                        let cur = &mut self.internal[machine.into_raw()];
                        if replace || cur.is_none_or(|c| t > c) {
                            *cur = Some(t);
                        }
                        self.queue.push(TriggerEvent::TimerBegin { machine });
                    }
                    TriggerAction::Cancel { machine, timer } => {
                        let m = machine.into_raw();
                        if matches!(timer, Timer::Action | Timer::All) {
                            self.action[m] = None;
                        }
                        if matches!(timer, Timer::Internal | Timer::All) {
                            self.internal[m] = None;
                        }
                    }
                }
            }
        }
    }

    /// Takes the step at `now`; returns the time of a padding packet sent, if any.
    fn step(&mut self, now: u64, s: Step) -> Option<u64> {
        match s {
            Step::Own => {
                let e = self.evs[self.next];
                self.next += 1;
                for _ in 0..e.wire.div_ceil(PKT_WIRE).max(1) {
                    if e.sent {
                        self.fire(now, TriggerEvent::NormalSent);
                        self.fire(now, TriggerEvent::TunnelSent);
                    } else {
                        self.fire(now, TriggerEvent::TunnelRecv);
                        self.fire(now, TriggerEvent::NormalRecv);
                    }
                }
            }
            Step::Inbox => {
                self.inbox.pop_front();
                self.fire(now, TriggerEvent::TunnelRecv);
                self.fire(now, TriggerEvent::PaddingRecv);
            }
            Step::BlockEnd => {
                self.block = None;
                self.fire(now, TriggerEvent::BlockingEnd);
            }
            Step::Internal(m) => {
                self.internal[m] = None;
                let machine = MachineId::from_raw(m);
                self.fire(now, TriggerEvent::TimerEnd { machine });
            }
            Step::Action(m) => {
                let (_, act) = self.action[m].take()?;
                let machine = MachineId::from_raw(m);
                match act {
                    Act::Pad { bypass } => {
                        // Padding without bypass is not sent under blocking, nor with
                        // bypass under blocking that forbids it (the spec's fail-closed
                        // rule); the machine then sees no PaddingSent.
                        if self.block.is_some_and(|(_, b)| !(bypass && b)) {
                            return None;
                        }
                        self.out.push((now, PAD_WIRE));
                        self.fire(now, TriggerEvent::PaddingSent { machine });
                        self.fire(now, TriggerEvent::TunnelSent);
                        return Some(now);
                    }
                    Act::Block {
                        dur,
                        bypass,
                        replace,
                    } => {
                        let until = now.saturating_add(dur);
                        self.block = match self.block {
                            Some((cur, b)) if !replace && cur >= until => Some((cur, b)),
                            _ => Some((until, bypass)),
                        };
                        self.fire(now, TriggerEvent::BlockingBegin { machine });
                    }
                }
            }
        }
        None
    }
}

impl SessionPad for Mb {
    fn pad(&self, seed: u64, client: &[Ev], relay: &[Ev]) -> [Vec<(u64, u32)>; 2] {
        // The user's one-way latency: the relay receives each upstream record exactly
        // that long after the client sent it. Downstream adds 0–5 ms jitter: its mean.
        let first = |v: &[Ev], sent: bool| v.iter().find(|e| e.sent == sent).map(|e| e.t);
        let lat = match (first(client, true), first(relay, false)) {
            (Some(s), Some(r)) => r.saturating_sub(s),
            _ => 50 * MS,
        };
        let delay = [lat, lat + 5 * MS / 2];
        let horizon = client
            .iter()
            .chain(relay)
            .map(|e| e.t)
            .max()
            .unwrap_or(0)
            .saturating_add(TAIL);
        let mut ends = [
            End::new(&self.client, seed, client),
            End::new(&self.relay, seed ^ 0x6d62_7265_6c61_7900, relay),
        ];
        loop {
            let steps = [ends[0].next_step(), ends[1].next_step()];
            let (i, (now, s)) = match steps {
                [Some(a), Some(b)] if b < a => (1, b),
                [Some(a), _] => (0, a),
                [None, Some(b)] => (1, b),
                [None, None] => break,
            };
            if now > horizon || ends[i].out.len() >= MAX_PAD {
                break;
            }
            if let Some(t) = ends[i].step(now, s) {
                ends[1 - i].inbox.push_back(t + delay[i]);
            }
        }
        let [c, r] = ends;
        [c.out, r.out]
    }
}
