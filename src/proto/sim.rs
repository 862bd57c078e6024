//! Two sessions joined by a simulated TCP connection and clock, for tests and benches.
//!
//! Like quinn-proto's `Pair`: bytes written by one end arrive at the other after
//! `latency`, in order and without loss, in deliveries of at most `chunk` bytes, so a
//! test can split the byte stream anywhere (one byte at a time included). Both ends read
//! simulated wall clocks that run with `now` (the client's may be set off the relay's),
//! and the relay's replay cache and allow-list are the pair's, so a test can replay into
//! a new relay or reload the list.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admit::{Admission, SharedAdmission};
use super::noise::public_key;
use super::replay::{ReplayCache, SharedReplay};
use super::session::{Event, Role, Session, SessionConfig, SessionError};
use super::{SeededRandom, SimClock};

/// The relay's simulated wall-clock time when a pair is made (2023-11-14, in ms).
pub const SIM_EPOCH: Duration = Duration::from_millis(1_700_000_000_000);

/// How long before [`SIM_EPOCH`] the simulated relay started, so a client whose clock lags
/// within the skew tolerance is not refused as stamped before the start.
const RELAY_UPTIME: Duration = Duration::from_secs(3600);

/// One direction of the simulated connection.
#[derive(Default)]
struct Wire {
    in_flight: VecDeque<(Instant, Vec<u8>)>,
}

/// A client and a relay session over a simulated connection.
pub struct Pair {
    /// The client end.
    pub client: Session,
    /// The relay end.
    pub server: Session,
    /// Simulated time.
    pub now: Instant,
    /// One-way delay.
    pub latency: Duration,
    /// Largest delivery; smaller values split the byte stream finer.
    pub chunk: usize,
    /// Events the client produced, in order.
    pub client_events: Vec<Event>,
    /// Events the relay produced, in order.
    pub server_events: Vec<Event>,
    /// First error each end hit.
    pub client_error: Option<SessionError>,
    /// First error the relay hit.
    pub server_error: Option<SessionError>,
    /// Bytes carried client → relay, for wire-level assertions.
    pub upstream_log: Vec<u8>,
    /// The relay's replay cache (give it to [`Pair::new_server`]'s relays too).
    pub replay: SharedReplay,
    /// The relay's allow-list (replace it to reload; [`Pair::new_server`]'s relays share it).
    pub admission: SharedAdmission,
    relay_private: [u8; 32],
    client_private: [u8; 32],
    pinned_relay: [u8; 32],
    client_cfg: SessionConfig,
    server_cfg: SessionConfig,
    to_server: Wire,
    to_client: Wire,
}

/// Static keys of a simulated pair.
pub struct PairKeys {
    /// Client private key.
    pub client: [u8; 32],
    /// Relay private key.
    pub relay: [u8; 32],
}

impl Pair {
    /// A pair with default configs whose relay admits the client.
    pub fn new(seed: u64) -> Pair {
        Self::with_config(seed, SessionConfig::default(), SessionConfig::default())
    }

    /// A pair with the given configs whose relay admits exactly the client's key.
    pub fn with_config(seed: u64, client: SessionConfig, server: SessionConfig) -> Pair {
        let keys = PairKeys {
            client: [seed as u8 ^ 0x11; 32],
            relay: [seed as u8 ^ 0x22; 32],
        };
        Self::build(
            seed,
            &keys,
            public_key(&keys.relay),
            &[public_key(&keys.client)],
            client,
            server,
        )
    }

    /// A default pair whose client's wall clock is `offset` ahead of the relay's
    /// (`behind`: behind it).
    pub fn with_client_clock(seed: u64, offset: Duration, behind: bool) -> Pair {
        let keys = PairKeys {
            client: [seed as u8 ^ 0x11; 32],
            relay: [seed as u8 ^ 0x22; 32],
        };
        let unix = if behind {
            SIM_EPOCH - offset
        } else {
            SIM_EPOCH + offset
        };
        Self::build_at(
            seed,
            &keys,
            public_key(&keys.relay),
            &[public_key(&keys.client)],
            SessionConfig::default(),
            SessionConfig::default(),
            unix,
        )
    }

    /// Full control: keys, the relay key the client pins, and the relay's allow-list.
    /// The configs' clocks are replaced by the pair's simulated ones.
    pub fn build(
        seed: u64,
        keys: &PairKeys,
        pinned_relay: [u8; 32],
        allowed: &[[u8; 32]],
        ccfg: SessionConfig,
        scfg: SessionConfig,
    ) -> Pair {
        Self::build_at(seed, keys, pinned_relay, allowed, ccfg, scfg, SIM_EPOCH)
    }

    fn build_at(
        seed: u64,
        keys: &PairKeys,
        pinned_relay: [u8; 32],
        allowed: &[[u8; 32]],
        mut ccfg: SessionConfig,
        mut scfg: SessionConfig,
        client_unix: Duration,
    ) -> Pair {
        let now = Instant::now();
        ccfg.clock = Arc::new(SimClock {
            at: now,
            unix: client_unix,
        });
        scfg.clock = Arc::new(SimClock {
            at: now,
            unix: SIM_EPOCH,
        });
        let replay = ReplayCache::shared(
            ReplayCache::DEFAULT_CAPACITY,
            ReplayCache::DEFAULT_SKEW,
            SIM_EPOCH - RELAY_UPTIME,
        );
        let admission = Admission::shared(&keys.relay, allowed.iter().copied());
        let client = Session::new(
            now,
            ccfg.clone(),
            Role::Client {
                relay_public: pinned_relay,
            },
            &keys.client,
            Box::new(SeededRandom::new(seed)),
        );
        let server = Session::new(
            now,
            scfg.clone(),
            Role::Server {
                admission: admission.clone(),
                replay: replay.clone(),
                source: 0,
            },
            &keys.relay,
            Box::new(SeededRandom::new(seed.wrapping_add(1))),
        );
        Pair {
            client,
            server,
            now,
            latency: Duration::from_millis(10),
            chunk: usize::MAX,
            client_events: vec![],
            server_events: vec![],
            client_error: None,
            server_error: None,
            upstream_log: vec![],
            replay,
            admission,
            relay_private: keys.relay,
            client_private: keys.client,
            pinned_relay,
            client_cfg: ccfg,
            server_cfg: scfg,
            to_server: Wire::default(),
            to_client: Wire::default(),
        }
    }

    /// Another relay session with this pair's key, allow-list, clock and replay cache,
    /// created at `self.now`: what a fresh connection to the same relay meets.
    pub fn new_server(&self, seed: u64) -> Session {
        Session::new(
            self.now,
            self.server_cfg.clone(),
            Role::Server {
                admission: self.admission.clone(),
                replay: self.replay.clone(),
                source: 0,
            },
            &self.relay_private,
            Box::new(SeededRandom::new(seed)),
        )
    }

    /// The client connects again: a new client session and a [`Pair::new_server`] in place
    /// of the old ones, created at `self.now`, with nothing in flight and no events or
    /// errors recorded. Keys, clocks, replay cache and allow-list stay the pair's.
    pub fn reconnect(&mut self, seed: u64) {
        self.client = Session::new(
            self.now,
            self.client_cfg.clone(),
            Role::Client {
                relay_public: self.pinned_relay,
            },
            &self.client_private,
            Box::new(SeededRandom::new(seed)),
        );
        self.server = self.new_server(seed.wrapping_add(1));
        self.to_server = Wire::default();
        self.to_client = Wire::default();
        self.client_events.clear();
        self.server_events.clear();
        self.client_error = None;
        self.server_error = None;
        self.upstream_log.clear();
    }

    fn collect(&mut self) {
        let now = self.now;
        let out = self.client.transmit().to_vec();
        if !out.is_empty() {
            self.client.transmit_done(out.len());
            self.upstream_log.extend_from_slice(&out);
            self.to_server
                .in_flight
                .push_back((now + self.latency, out));
        }
        let out = self.server.transmit().to_vec();
        if !out.is_empty() {
            self.server.transmit_done(out.len());
            self.to_client
                .in_flight
                .push_back((now + self.latency, out));
        }
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(e);
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
        }
    }

    fn deliver(
        chunk: usize,
        now: Instant,
        wire: &mut Wire,
        to: &mut Session,
        err: &mut Option<SessionError>,
    ) -> bool {
        let mut any = false;
        while wire.in_flight.front().is_some_and(|(t, _)| *t <= now) {
            let (_, bytes) = wire.in_flight.pop_front().expect("checked");
            any = true;
            for piece in bytes.chunks(chunk.max(1)) {
                if err.is_some() {
                    break;
                }
                if let Err(e) = to.handle_input(now, piece) {
                    *err = Some(e);
                }
            }
        }
        any
    }

    /// Move time to the next delivery and deliver; `false` when nothing is in flight.
    pub fn step(&mut self) -> bool {
        self.collect();
        let next = [
            self.to_server.in_flight.front(),
            self.to_client.in_flight.front(),
        ]
        .into_iter()
        .flatten()
        .map(|(t, _)| *t)
        .min();
        let Some(t) = next else {
            return false;
        };
        self.now = self.now.max(t);
        Self::deliver(
            self.chunk,
            self.now,
            &mut self.to_server,
            &mut self.server,
            &mut self.server_error,
        );
        Self::deliver(
            self.chunk,
            self.now,
            &mut self.to_client,
            &mut self.client,
            &mut self.client_error,
        );
        self.collect();
        true
    }

    /// Step until nothing is in flight or waiting to be sent (timers are not run).
    pub fn drive(&mut self) {
        while self.step() {}
    }

    /// Advance the clock by `d`, running both ends' timers and delivering what falls due.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.collect();
            let deliveries = [
                self.to_server.in_flight.front(),
                self.to_client.in_flight.front(),
            ]
            .into_iter()
            .flatten()
            .map(|(t, _)| *t);
            let timers = [self.client.next_timeout(), self.server.next_timeout()]
                .into_iter()
                .flatten();
            let Some(t) = deliveries.chain(timers).filter(|t| *t <= end).min() else {
                break;
            };
            self.now = self.now.max(t);
            Self::deliver(
                self.chunk,
                self.now,
                &mut self.to_server,
                &mut self.server,
                &mut self.server_error,
            );
            Self::deliver(
                self.chunk,
                self.now,
                &mut self.to_client,
                &mut self.client,
                &mut self.client_error,
            );
            for (s, err) in [
                (&mut self.client, &mut self.client_error),
                (&mut self.server, &mut self.server_error),
            ] {
                if s.next_timeout().is_some_and(|t| t <= self.now) {
                    if let Err(e) = s.handle_timeout(self.now) {
                        err.get_or_insert(e);
                    }
                }
            }
        }
        self.now = end;
        self.collect();
    }

    /// Handshake both ends (drive until established).
    pub fn connect(&mut self) {
        self.drive();
        assert!(
            self.client.is_established(),
            "client not established: {:?}",
            self.client_error
        );
        assert!(
            self.server.is_established(),
            "relay not established: {:?}",
            self.server_error
        );
    }
}
