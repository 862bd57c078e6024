//! Session-level defenses in the simulation: a padding machine at each end of a user's
//! session that sees every record its end sends and receives (all of the user's flows
//! multiplexed) and adds padding records of its own.
//!
//! The hook is padding-only: a defense here never delays data (that is the per-flow
//! schedulers' job), so the exit observer and the latency figures are unchanged by it,
//! and its cost is bandwidth alone. Padding one end sends is not among the other end's
//! events: a defense whose ends react to each other's padding simulates the crossing
//! itself (mb.rs does).

/// One record as an end sees it: sent by this end or received from the other.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ev {
    /// When this end sent or received it (ns).
    pub(crate) t: u64,
    /// Sent by this end.
    pub(crate) sent: bool,
    /// Record bytes on the wire.
    pub(crate) wire: u32,
    /// A padding record of the per-flow schedulers (not data).
    #[allow(dead_code)] // mb.rs deliberately maps these as normal packets (see there)
    pub(crate) padding: bool,
}

impl Ev {
    /// An event at `t`.
    pub(crate) fn new(t: u64, sent: bool, wire: u32, padding: bool) -> Ev {
        Ev {
            t,
            sent,
            wire,
            padding,
        }
    }
}

/// A session-level padding defense.
pub(crate) trait SessionPad: Send + Sync {
    /// The padding records (send time, wire bytes) of the client end (upstream) and of
    /// the relay end (downstream), given each end's events in time order. `seed` is the
    /// session's.
    fn pad(&self, seed: u64, client: &[Ev], relay: &[Ev]) -> [Vec<(u64, u32)>; 2];
}
