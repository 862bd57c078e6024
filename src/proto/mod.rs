//! The sans-IO tunnel core: no sockets, no clock reads, randomness injected.
//!
//! [`Session`] takes bytes and the time in (`handle_input`, `handle_timeout`) and gives
//! bytes, events and deadlines out (`transmit`, `poll_event`, `next_timeout`). Both the
//! client engine and the relay drive the same type; `sim` drives two of them in memory.
//! The wall-clock time the handshake needs (msg1's timestamp) comes through a
//! [`WallClock`] in the session's config, as randomness comes through [`Random`].

pub mod admit;
pub mod aead;
pub mod elligator;
pub mod frame;
pub mod kem;
pub mod mask;
mod memo;
pub mod mux;
pub mod noise;
pub mod preamble;
pub mod record;
pub mod replay;
pub mod session;
pub mod sim;

pub use frame::{Destination, OpenError};
pub use session::{
    Event, HandshakeFault, Role, Session, SessionConfig, SessionError, SessionStats, StreamError,
};

use std::time::{Duration, Instant, SystemTime};

use blake2::Blake2sMac256;
use blake2::digest::{KeyInit, Mac};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// BLAKE2s keyed with `key` (RFC 7693, 32-byte output) over the concatenation of
/// `parts`: the spec's `BLAKE2s-MAC`, the one KDF and MAC step of the record layer and
/// of msg1's admission proof.
pub(crate) fn blake2s_mac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Blake2sMac256 as KeyInit>::new_from_slice(key).expect("32-byte key");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Where the core's randomness comes from, so tests can inject a seeded source.
pub trait Random: Send {
    /// Fill `dst` with random bytes.
    fn fill(&mut self, dst: &mut [u8]);
}

/// The operating system's CSPRNG.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&mut self, dst: &mut [u8]) {
        // getrandom only fails when the kernel has no entropy interface at all;
        // continuing without randomness would be unsafe, so fail closed.
        getrandom::fill(dst).expect("OS random number generator failed");
    }
}

/// A deterministic ChaCha20 stream for tests and simulations.
pub struct SeededRandom(ChaCha20Rng);

impl SeededRandom {
    /// Seed from a small integer.
    pub fn new(seed: u64) -> Self {
        SeededRandom(ChaCha20Rng::seed_from_u64(seed))
    }
}

impl Random for SeededRandom {
    fn fill(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst);
    }
}

/// Where the core reads the wall-clock time, so tests can set it (like [`Random`]).
pub trait WallClock: Send + Sync + std::fmt::Debug {
    /// Time since the Unix epoch at the monotonic instant `now`.
    fn unix(&self, now: Instant) -> Duration;
}

/// The operating system's real-time clock; `now` is not needed to read it.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn unix(&self, _now: Instant) -> Duration {
        // A clock set before 1970 reads as the epoch: every timestamp is then stale,
        // which fails closed.
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A wall clock that reads `unix` at the instant `at` and runs with the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    /// The instant at which the clock reads `unix`.
    pub at: Instant,
    /// The wall-clock reading at `at`.
    pub unix: Duration,
}

impl WallClock for SimClock {
    fn unix(&self, now: Instant) -> Duration {
        match now.checked_duration_since(self.at) {
            Some(d) => self.unix + d,
            None => self.unix.saturating_sub(self.at - now),
        }
    }
}
