//! What a flow's schedule is made of: the mode, its parameters, the direction, and the
//! named profiles that pick them.

use super::{FRAME_HEADER, MAX_DATA, MAX_FRAME, MS, RECORD_OVERHEAD};

/// How a flow's departures are timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Everything leaves at once: no delay, no padding.
    Off,
    /// obfs4 iat-like jitter from a per-flow seeded weighted distribution.
    Jitter,
    /// The source documents' phase formula: two-band jitter on [1, 1.5) ∪ [2.5, 3) ms.
    Topological,
    /// Exponential delays with a configured mean (Loopix-like), capped.
    Poisson,
    /// Tamaraw/BuFLO-like: one fixed-size cell per interval, padding when idle.
    Constant,
    /// FRONT-like: Rayleigh-placed padding frames at flow start; data not delayed.
    Adaptive,
}

impl Mode {
    /// Every mode, in documentation order.
    pub const ALL: [Mode; 6] = [
        Mode::Off,
        Mode::Jitter,
        Mode::Topological,
        Mode::Poisson,
        Mode::Constant,
        Mode::Adaptive,
    ];

    /// The mode named `name` (the names of [`Mode::name`]).
    pub fn parse(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The mode's lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Jitter => "jitter",
            Mode::Topological => "topological",
            Mode::Poisson => "poisson",
            Mode::Constant => "constant",
            Mode::Adaptive => "adaptive",
        }
    }
}

/// A mode and its parameters; fields a mode does not use are ignored by it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Which schedule.
    pub mode: Mode,
    /// Longest a byte may wait in the scheduler (ns); the cap wins over every schedule.
    pub hold_cap_ns: u64,
    /// Largest DATA payload per frame, 1..=[`MAX_DATA`] (1448 gives obfs4-sized frames).
    pub max_payload: usize,
    /// jitter: smallest delay bin (ns).
    pub jitter_min_ns: u64,
    /// jitter: largest delay bin (ns).
    pub jitter_max_ns: u64,
    /// jitter: number of bins, 1..=100, spread evenly over min..=max.
    pub jitter_bins: usize,
    /// poisson: mean delay (ns).
    pub poisson_mean_ns: u64,
    /// constant: time between cells (ns).
    pub interval_ns: u64,
    /// constant: frame length of every cell, data or padding (FRAME_HEADER + 1..=MAX_FRAME).
    pub cell: usize,
    /// constant: stop sending cells after this long with nothing queued (ns).
    pub quiet_ns: u64,
    /// constant: pad each burst's cell count to a multiple of this (1 = no rounding).
    pub pad_multiple: u32,
    /// constant: how late after its slot a cell may still leave (ns); later slots are skipped.
    pub grid_slack_ns: u64,
    /// adaptive: frame length of each padding frame.
    pub padding_len: usize,
    /// adaptive: each padding time sends a burst of 1..=this many frames (1 = plain FRONT).
    pub padding_burst: u32,
    /// adaptive: fewest padding frames a flow draws as its budget.
    pub budget_min: u32,
    /// adaptive: most padding frames a flow draws as its budget.
    pub budget_max: u32,
    /// adaptive: smallest Rayleigh scale of the padding times (ns).
    pub window_min_ns: u64,
    /// adaptive: largest Rayleigh scale of the padding times (ns).
    pub window_max_ns: u64,
    /// adaptive: the first bytes of each burst wait a uniform 0..=this (ns); 0 = never.
    pub burst_delay_max_ns: u64,
    /// adaptive: the silence (ns) after which arriving bytes start a new burst.
    pub burst_gap_ns: u64,
    /// The session's padding floor: one small PADDING record whenever the session sent
    /// nothing for this long (ns), while the flow is active; 0 = no floor.
    pub floor_ns: u64,
    /// Frame length of each floor record.
    pub floor_len: usize,
    /// How long the floor holds after the flow last sent (ns).
    pub floor_tail_ns: u64,
}

/// A frame that fills one TCP segment of 1448 bytes as a record (1448 - 18).
pub const SEGMENT_FRAME: usize = 1448 - RECORD_OVERHEAD;

/// A floor record's frame: 100 bytes on the wire, the size of a keystroke's record.
pub const FLOOR_FRAME: usize = 100 - RECORD_OVERHEAD;

impl Params {
    /// Off, with every other field at a usable default.
    pub const OFF: Params = Params {
        mode: Mode::Off,
        hold_cap_ns: 50 * MS,
        max_payload: MAX_DATA,
        jitter_min_ns: MS / 10,
        jitter_max_ns: 10 * MS,
        jitter_bins: 100,
        poisson_mean_ns: 5 * MS,
        interval_ns: 10 * MS,
        cell: SEGMENT_FRAME,
        quiet_ns: 500 * MS,
        pad_multiple: 1,
        grid_slack_ns: 2 * MS,
        padding_len: SEGMENT_FRAME,
        padding_burst: 1,
        budget_min: 50,
        budget_max: 300,
        window_min_ns: 500 * MS,
        window_max_ns: 3000 * MS,
        burst_delay_max_ns: 0,
        burst_gap_ns: 20 * MS,
        floor_ns: 0,
        floor_len: FLOOR_FRAME,
        floor_tail_ns: 3000 * MS,
    };

    /// Payload bytes one constant-mode cell carries.
    pub fn cell_payload(&self) -> usize {
        self.max_payload.min(self.cell.saturating_sub(FRAME_HEADER))
    }

    /// These parameters with another mode.
    pub const fn with_mode(self, mode: Mode) -> Params {
        Params { mode, ..self }
    }

    /// Why these parameters are unusable, or Ok.
    pub fn validate(&self) -> Result<(), &'static str> {
        if !(1..=MAX_DATA).contains(&self.max_payload) {
            return Err("max_payload must be 1..=16384");
        }
        if self.jitter_min_ns > self.jitter_max_ns || !(1..=100).contains(&self.jitter_bins) {
            return Err("jitter needs min <= max and 1..=100 bins");
        }
        if self.interval_ns == 0 || !(FRAME_HEADER + 1..=MAX_FRAME).contains(&self.cell) {
            return Err("constant needs an interval > 0 and a cell of 8..=16391 bytes");
        }
        if self.floor_ns > 0 && !(FRAME_HEADER..=MAX_FRAME).contains(&self.floor_len) {
            return Err("a floor needs a frame of 7..=16391 bytes");
        }
        if self.pad_multiple == 0 || self.padding_burst == 0 {
            return Err("pad_multiple and padding_burst must be at least 1");
        }
        if !(FRAME_HEADER..=MAX_FRAME).contains(&self.padding_len)
            || self.budget_min > self.budget_max
            || self.window_min_ns > self.window_max_ns
        {
            return Err("adaptive needs a padding frame of 7..=16391 bytes, min <= max");
        }
        Ok(())
    }

    /// The nearest valid parameters: `FlowSched::new` cannot fail, so it clamps.
    pub(super) fn sanitized(mut self) -> Params {
        self.max_payload = self.max_payload.clamp(1, MAX_DATA);
        self.jitter_max_ns = self.jitter_max_ns.max(self.jitter_min_ns);
        self.jitter_bins = self.jitter_bins.clamp(1, 100);
        self.interval_ns = self.interval_ns.max(1);
        self.cell = self.cell.clamp(FRAME_HEADER + 1, MAX_FRAME);
        self.pad_multiple = self.pad_multiple.max(1);
        self.padding_len = self.padding_len.clamp(FRAME_HEADER, MAX_FRAME);
        self.budget_max = self.budget_max.max(self.budget_min);
        self.padding_burst = self.padding_burst.max(1);
        self.window_max_ns = self.window_max_ns.max(self.window_min_ns);
        self.floor_len = self.floor_len.clamp(FRAME_HEADER, MAX_FRAME);
        self
    }
}

/// Which way a flow's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → relay.
    Up,
    /// Relay → client.
    Down,
}

/// A named set of parameters for both directions; its number travels in OPEN.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// No shaping at all.
    Performance = 1,
    /// Moderate cost, chosen by the evaluation in docs/TIMING.md.
    Default = 2,
    /// Constant-rate cells: the strongest measured defense, at its measured cost.
    HighSecurity = 3,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 3] = [
        Profile::Performance,
        Profile::Default,
        Profile::HighSecurity,
    ];

    /// "performance", "default" or "high-security".
    pub fn parse(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The profile's configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Performance => "performance",
            Profile::Default => "default",
            Profile::HighSecurity => "high-security",
        }
    }

    /// The OPEN frame's profile byte; 0 on the wire means "the relay's default".
    pub fn wire(self) -> u8 {
        self as u8
    }

    /// The profile a non-zero OPEN profile byte names.
    pub fn from_wire(b: u8) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.wire() == b)
    }

    /// The parameters for one direction (the evaluation in docs/TIMING.md chose them).
    pub fn params(self, dir: Direction) -> Params {
        match (self, dir) {
            (Profile::Performance, _) => Params::OFF,
            // FRONT padding in half-segment frames plus the session's floor of small
            // records; data never delayed. The sweep in docs/TIMING.md ("Choosing the
            // profiles") picked these as the best accuracy within the 30 % bandwidth aim.
            (Profile::Default, dir) => Params {
                budget_min: if dir == Direction::Up { 40 } else { 75 },
                budget_max: if dir == Direction::Up { 200 } else { 380 },
                padding_len: 700,
                window_min_ns: 300 * MS,
                window_max_ns: 2000 * MS,
                padding_burst: 1,
                floor_ns: 50 * MS,
                floor_len: FLOOR_FRAME,
                floor_tail_ns: 3000 * MS,
                ..Params::OFF.with_mode(Mode::Adaptive)
            },
            // Tamaraw's rates (outgoing cell every 40 ms, incoming every 12 ms, bursts padded
            // to 100 cells), one TCP segment per cell; bytes wait up to 2 s, then the cap wins.
            (Profile::HighSecurity, dir) => Params {
                hold_cap_ns: 2000 * MS,
                interval_ns: if dir == Direction::Up {
                    40 * MS
                } else {
                    12 * MS
                },
                cell: SEGMENT_FRAME,
                quiet_ns: 500 * MS,
                pad_multiple: 100,
                ..Params::OFF.with_mode(Mode::Constant)
            },
        }
    }
}
