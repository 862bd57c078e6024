//! The session state machine: handshake, records, streams, keepalive, rekeying.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admit::{Admitted, SharedAdmission};
use super::frame::{Destination, Frame, FrameRepr, HEADER_LEN, MAX_FRAME, MAX_PAYLOAD, OpenError};
use super::mux::{OpenState, RecvCredit, Stream};
use super::noise::{self, FirstMessage, Handshake, TransportParams};
use super::record::{Opener, RecordError, Sealer};
use super::replay::SharedReplay;
use super::{Random, SystemClock, WallClock};

mod floor;
mod input;

/// Tunable limits and timers of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Send PING after this long without sending anything.
    pub keepalive: Duration,
    /// The session is dead after this long without receiving anything.
    pub idle_timeout: Duration,
    /// The handshake must finish within this.
    pub handshake_timeout: Duration,
    /// Send KEY_UPDATE after this many bytes under one key.
    pub rekey_bytes: u64,
    /// ... or this many records.
    pub rekey_records: u64,
    /// ... or this much time.
    pub rekey_interval: Duration,
    /// Credit granted to each stream we receive on.
    pub stream_window: u32,
    /// Credit granted to the whole session.
    pub session_window: u32,
    /// Most streams open at once.
    pub max_streams: usize,
    /// The `ciphers` byte of our transport parameters ([`crate::proto::aead::Cipher::offer`]).
    pub ciphers: u8,
    /// The wall clock: the client stamps msg1 with it, the relay judges stamps by it.
    pub clock: Arc<dyn WallClock>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            keepalive: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(90),
            handshake_timeout: Duration::from_secs(10),
            rekey_bytes: 1 << 30,
            rekey_records: 1 << 32,
            rekey_interval: Duration::from_secs(600),
            stream_window: 256 * 1024,
            session_window: 16 * 1024 * 1024,
            max_streams: 65_536,
            ciphers: crate::proto::aead::Cipher::offer(true),
            clock: Arc::new(SystemClock),
        }
    }
}

/// Which end this session is.
pub enum Role {
    /// The client, pinning the relay's static public key.
    Client {
        /// The relay's static public key.
        relay_public: [u8; 32],
    },
    /// The relay, admitting clients on its allow-list.
    Server {
        /// The allow-list: msg1 must prove a key on it, msg3 must present that key.
        admission: SharedAdmission,
        /// First messages seen (shared by the relay's connections): stale and replayed
        /// ones are refused before any answer.
        replay: SharedReplay,
        /// The client's network ([`super::replay::source_network`]), whose share of the
        /// replay cache this handshake's entry counts against.
        source: u64,
    },
}

/// Why a session ended. Deliberately coarse: detail would help an attacker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The handshake failed (wrong key, not on the allow-list, stale, replayed, garbage).
    #[error("handshake failed")]
    Handshake,
    /// A record failed authentication or had a bad length.
    #[error("record rejected: {0}")]
    Record(RecordError),
    /// The peer broke the protocol after authenticating (bad frame, flow-control violation).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// Nothing arrived within the idle or handshake timeout.
    #[error("timed out")]
    Timeout,
    /// Client: the relay sent not one byte in answer to msg1 (it stays silent to a msg1
    /// it cannot authenticate, judges stale or from a key not on its list, so these are
    /// the likely causes).
    #[error(
        "no answer to the handshake: the relay may run another version of qnet, or the relay key is wrong, or this client's key is not on the relay's allow-list, or this host's clock is off by minutes"
    )]
    Unanswered,
    /// The session was closed locally.
    #[error("session closed")]
    Closed,
}

/// Why a relay refused a client's handshake (it answers none of them: this is for its
/// own counters, never for the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFault {
    /// A part did not decode or decrypt (random bytes that passed admission, a broken
    /// client).
    Garbage,
    /// msg1 proved no listed key (a stranger, a wrong relay key, random bytes), or msg3
    /// presented another key than msg1 proved, or one removed meanwhile.
    UnknownKey,
    /// msg1's timestamp is further from the relay's clock than the skew allows, or
    /// before the relay started.
    Stale,
    /// msg1 was seen before.
    Replayed,
    /// The replay cache had no room to remember msg1 (all of it, or its network's share).
    CacheFull,
}

/// Why a stream operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No such stream (never opened, finished or reset).
    #[error("unknown stream")]
    UnknownStream,
    /// The stream's send side is already closed.
    #[error("stream send side closed")]
    Finished,
    /// The session is not established or has ended.
    #[error("session not established")]
    NotReady,
    /// Too many streams open.
    #[error("too many streams")]
    TooManyStreams,
    /// The operation does not fit this end's role or the stream's state.
    #[error("invalid for this stream")]
    Invalid,
}

/// Something the engine must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake finished; `peer` is the other end's static public key.
    Connected {
        /// Peer's static key.
        peer: [u8; 32],
    },
    /// Relay: the client wants a stream to `dest` (first data, if any, is readable).
    Opened {
        /// The stream.
        stream: u32,
        /// Where to connect.
        dest: Destination,
        /// Requested downstream profile.
        profile: u8,
    },
    /// Client: the relay answered our OPEN.
    OpenResult {
        /// The stream.
        stream: u32,
        /// Outcome; on `Err` the stream is gone.
        result: Result<(), OpenError>,
    },
    /// Data or the end of the stream can be read.
    Readable {
        /// The stream.
        stream: u32,
    },
    /// Credit returned after a short write.
    Writable {
        /// The stream.
        stream: u32,
    },
    /// The peer reset the stream; it is gone.
    Reset {
        /// The stream.
        stream: u32,
        /// The peer's reason code.
        code: u8,
    },
}

/// Counters for stats and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Stream payload bytes sent.
    pub bytes_sent: u64,
    /// Stream payload bytes received.
    pub bytes_received: u64,
    /// Records sent.
    pub records_sent: u64,
    /// Records received.
    pub records_received: u64,
    /// Padding bytes sent (PADDING frames and padding inside frames).
    pub padding_sent: u64,
    /// KEY_UPDATEs sent.
    pub key_updates_sent: u64,
    /// KEY_UPDATEs received.
    pub key_updates_received: u64,
    /// Streams opened (either side).
    pub streams_opened: u64,
}

/// Where the handshake is: the part of the stream each state waits for.
enum Hs {
    /// Client: the masked ciphertext and msg2.
    ClientAwaitReply(Handshake),
    /// Client: pad2, then msg3 goes out.
    ClientAwaitPad2(Handshake),
    /// Relay: msg1's fixed part.
    ServerAwaitMsg1(Handshake),
    /// Relay: msg1 proved an allowed key; pad1, then the replay cache and the answer.
    ServerAwaitPad1(Handshake, FirstMessage, Admitted),
    /// With the allowed key msg1 proved: msg3 must present it.
    ServerAwaitMsg3(Handshake, [u8; 32]),
    /// Relay: pad3.
    ServerAwaitPad3(Handshake),
    Done,
    Failed,
}

/// A tunnel session: one handshake, then many multiplexed streams.
pub struct Session {
    cfg: SessionConfig,
    rng: Box<dyn Random>,
    admission: Option<SharedAdmission>,
    replay: Option<(SharedReplay, u64)>,
    is_client: bool,
    hs: Hs,
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_start: usize,
    streams: HashMap<u32, Stream>,
    next_stream: u32,
    highest_peer_stream: u32,
    peer_params: Option<TransportParams>,
    send_credit: u64,
    recv_credit: RecvCredit,
    events: VecDeque<Event>,
    started: Instant,
    last_rx: Instant,
    last_tx: Instant,
    key_since: Instant,
    ping: Option<(u64, Instant)>,
    ping_seq: u64,
    /// The padding floor of shaped flows, while one holds.
    floor: Option<floor::Floor>,
    rtt: Option<Duration>,
    error: Option<SessionError>,
    /// Relay: why the handshake was refused, if it was.
    fault: Option<HandshakeFault>,
    stats: SessionStats,
    /// `out` still holds the end of the handshake: give its capacity back at the next
    /// full drain, so an idle session does not keep it.
    shed_out: bool,
}

impl Session {
    /// Create a session; a client's first handshake message is ready to transmit at once.
    pub fn new(
        now: Instant,
        cfg: SessionConfig,
        role: Role,
        local_private: &[u8; 32],
        mut rng: Box<dyn Random>,
    ) -> Session {
        let params = TransportParams {
            stream_window: cfg.stream_window,
            session_window: cfg.session_window,
            ciphers: cfg.ciphers,
        };
        let mut out = Vec::new();
        let (hs, admission, replay, is_client) = match role {
            Role::Client { relay_public } => {
                let mut h = Handshake::initiator(local_private, &relay_public, params, &mut *rng);
                let stamp = cfg.clock.unix(now).as_millis() as u64;
                out.extend_from_slice(&h.write_msg1(stamp, &mut *rng));
                (Hs::ClientAwaitReply(h), None, None, true)
            }
            Role::Server {
                admission,
                replay,
                source,
            } => (
                Hs::ServerAwaitMsg1(Handshake::responder(local_private, params, &mut *rng)),
                Some(admission),
                Some((replay, source)),
                false,
            ),
        };
        Session {
            recv_credit: RecvCredit::new(cfg.session_window),
            cfg,
            rng,
            admission,
            replay,
            is_client,
            hs,
            sealer: None,
            opener: None,
            inbuf: Vec::new(),
            out,
            out_start: 0,
            streams: HashMap::new(),
            next_stream: 1,
            highest_peer_stream: 0,
            peer_params: None,
            send_credit: 0,
            events: VecDeque::new(),
            started: now,
            last_rx: now,
            last_tx: now,
            key_since: now,
            ping: None,
            ping_seq: 0,
            floor: None,
            rtt: None,
            error: None,
            fault: None,
            stats: SessionStats::default(),
            shed_out: false,
        }
    }

    // ---- state ------------------------------------------------------------------

    /// The handshake is done and the session is usable.
    pub fn is_established(&self) -> bool {
        matches!(self.hs, Hs::Done) && self.error.is_none()
    }

    /// Client: msg1 was sent and not one byte has come back (see
    /// [`SessionError::Unanswered`]; an engine whose transport ends then reports that).
    pub fn is_unanswered(&self) -> bool {
        matches!(self.hs, Hs::ClientAwaitReply(_)) && self.inbuf.is_empty() && self.error.is_none()
    }

    /// Why the session ended, if it has.
    pub fn error(&self) -> Option<SessionError> {
        self.error
    }

    /// Relay: why the handshake was refused (`None` while it goes on or once it passed).
    pub fn handshake_fault(&self) -> Option<HandshakeFault> {
        self.fault
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The records' cipher, once the handshake agreed on one.
    pub fn cipher(&self) -> Option<crate::proto::aead::Cipher> {
        self.sealer.as_ref().map(|s| s.cipher())
    }

    /// Round-trip time measured by the last PING/PONG; on a client, before any, the time
    /// from its start to the relay's handshake reply.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Streams currently open.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Session-level send credit left.
    pub fn send_credit(&self) -> u64 {
        self.send_credit
    }

    /// Bytes the given stream may send now (stream and session credit together).
    pub fn stream_send_capacity(&self, stream: u32) -> usize {
        self.streams
            .get(&stream)
            .filter(|s| !s.fin_sent)
            .map_or(0, |s| s.send_credit.min(self.send_credit) as usize)
    }

    /// DATA records (sent, received) on `stream` so far.
    pub fn stream_records(&self, stream: u32) -> Option<(u64, u64)> {
        self.streams.get(&stream).map(|s| s.records)
    }

    /// Profile the peer requested when it opened `stream`.
    pub fn stream_profile(&self, stream: u32) -> Option<u8> {
        self.streams.get(&stream).map(|s| s.profile)
    }

    fn check_live(&self) -> Result<(), StreamError> {
        if self.is_established() {
            Ok(())
        } else {
            Err(StreamError::NotReady)
        }
    }

    fn fail(&mut self, e: SessionError) -> SessionError {
        if self.error.is_none() {
            self.error = Some(e);
        }
        if matches!(e, SessionError::Handshake) {
            self.hs = Hs::Failed;
        }
        // Nothing more may leave: a failed session must not answer with anything.
        self.out.clear();
        self.out_start = 0;
        e
    }

    /// End the session locally; nothing more is sent.
    pub fn close(&mut self) {
        self.fail(SessionError::Closed);
    }

    // ---- output -----------------------------------------------------------------

    /// Bytes waiting to go to the peer.
    pub fn transmit(&self) -> &[u8] {
        &self.out[self.out_start..]
    }

    /// `n` bytes of [`Self::transmit`] were written to the transport.
    pub fn transmit_done(&mut self, n: usize) {
        self.out_start += n;
        debug_assert!(self.out_start <= self.out.len());
        if self.out_start == self.out.len() {
            if std::mem::take(&mut self.shed_out) {
                self.out = Vec::new();
            }
            self.out.clear();
            self.out_start = 0;
        } else if self.out_start > 64 * 1024 && self.out_start * 2 > self.out.len() {
            self.out.drain(..self.out_start);
            self.out_start = 0;
        }
    }

    /// Next thing the engine must act on.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn seal(&mut self, now: Instant, frame: &FrameRepr<'_>, pad: usize) {
        let sealer = self.sealer.as_mut().expect("sealing after handshake");
        sealer.seal(&mut self.out, frame, pad);
        self.stats.records_sent += 1;
        self.stats.padding_sent += pad as u64;
        self.last_tx = now;
        self.maybe_rekey(now);
    }

    fn maybe_rekey(&mut self, now: Instant) {
        let Some(sealer) = self.sealer.as_mut() else {
            return;
        };
        if sealer.bytes() >= self.cfg.rekey_bytes
            || sealer.records() >= self.cfg.rekey_records.min(sealer.cipher().max_records())
            || now.duration_since(self.key_since) >= self.cfg.rekey_interval
        {
            sealer.seal(&mut self.out, &FrameRepr::KeyUpdate, 0);
            sealer.update_key();
            self.key_since = now;
            self.stats.records_sent += 1;
            self.stats.key_updates_sent += 1;
        }
    }

    /// Send a PADDING record whose frame is `frame_len` bytes (at least the 7-byte header).
    pub fn send_padding(&mut self, now: Instant, frame_len: usize) -> Result<(), StreamError> {
        self.check_live()?;
        self.seal_padding(now, frame_len);
        Ok(())
    }

    /// Seal one PADDING record whose frame is `frame_len` bytes, clamped to a valid frame.
    fn seal_padding(&mut self, now: Instant, frame_len: usize) {
        let len = frame_len.clamp(HEADER_LEN, MAX_FRAME);
        self.seal(now, &FrameRepr::Padding, len - HEADER_LEN);
    }

    /// Keep the padding floor: until `tail` from now (each call extends it), a PADDING
    /// record with a `frame_len`-byte frame leaves whenever nothing was sent for
    /// `interval`. Shaped flows call this as they send (`crate::sched`'s floor).
    pub fn keep_floor(
        &mut self,
        now: Instant,
        interval: Duration,
        frame_len: usize,
        tail: Duration,
    ) {
        self.floor = Some(floor::Floor::keep(
            self.floor, now, interval, frame_len, tail,
        ));
    }

    // ---- streams ----------------------------------------------------------------

    /// Client: open a stream to `dest`, sending as much of `data` as credit allows in OPEN.
    /// Returns the stream id and how many bytes of `data` were taken.
    pub fn open(
        &mut self,
        now: Instant,
        dest: Destination,
        profile: u8,
        data: &[u8],
    ) -> Result<(u32, usize), StreamError> {
        self.check_live()?;
        if !self.is_client {
            return Err(StreamError::Invalid);
        }
        if self.streams.len() >= self.cfg.max_streams || self.next_stream > u32::MAX - 2 {
            return Err(StreamError::TooManyStreams);
        }
        let id = self.next_stream;
        self.next_stream += 2;
        let peer = self.peer_params.expect("established");
        let room = MAX_PAYLOAD - 1 - dest.wire_len();
        let take = data
            .len()
            .min(room)
            .min(peer.stream_window as usize)
            .min(self.send_credit as usize);
        let mut s = Stream::new(
            OpenState::Opening,
            peer.stream_window,
            self.cfg.stream_window,
            profile,
        );
        s.send_credit -= take as u64;
        self.send_credit -= take as u64;
        self.streams.insert(id, s);
        self.stats.streams_opened += 1;
        self.stats.bytes_sent += take as u64;
        self.seal(
            now,
            &FrameRepr::Open {
                stream: id,
                profile,
                dest,
                data: &data[..take],
            },
            0,
        );
        Ok((id, take))
    }

    /// Relay: answer an OPEN. On `Err` the stream is dropped with its buffered data.
    pub fn open_result(
        &mut self,
        now: Instant,
        stream: u32,
        result: Result<(), OpenError>,
    ) -> Result<(), StreamError> {
        self.check_live()?;
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(StreamError::UnknownStream)?;
        if self.is_client || s.open != OpenState::Opening {
            return Err(StreamError::Invalid);
        }
        s.open = OpenState::Open;
        self.seal(now, &FrameRepr::OpenResult { stream, result }, 0);
        if result.is_err() {
            self.drop_stream(now, stream);
        }
        Ok(())
    }

    /// Send as much of `data` as credit allows; returns the bytes taken (0: wait for `Writable`).
    pub fn write(&mut self, now: Instant, stream: u32, data: &[u8]) -> Result<usize, StreamError> {
        self.write_padded(now, stream, data, 0)
    }

    /// Like [`Self::write`], padding every record's frame up to at least `min_frame` bytes.
    pub fn write_padded(
        &mut self,
        now: Instant,
        stream: u32,
        data: &[u8],
        min_frame: usize,
    ) -> Result<usize, StreamError> {
        self.check_live()?;
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(StreamError::UnknownStream)?;
        if s.fin_sent {
            return Err(StreamError::Finished);
        }
        let can = (s.send_credit.min(self.send_credit) as usize).min(data.len());
        if can < data.len() {
            s.blocked = true;
        }
        s.send_credit -= can as u64;
        self.send_credit -= can as u64;
        self.stats.bytes_sent += can as u64;
        s.records.0 += can.div_ceil(MAX_PAYLOAD) as u64;
        let mut sent = 0;
        while sent < can {
            let n = (can - sent).min(MAX_PAYLOAD);
            let frame = FrameRepr::Data {
                stream,
                data: &data[sent..sent + n],
            };
            let pad = min_frame.min(MAX_FRAME).saturating_sub(frame.buffer_len());
            self.seal(now, &frame, pad);
            sent += n;
        }
        Ok(can)
    }

    /// Ask for a `Writable` event when the stream next gains credit.
    pub fn want_writable(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.blocked = true;
        }
    }

    /// Half-close: send CLOSE; reading goes on until the peer closes too.
    pub fn finish(&mut self, now: Instant, stream: u32) -> Result<(), StreamError> {
        self.check_live()?;
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(StreamError::UnknownStream)?;
        if s.fin_sent {
            return Err(StreamError::Finished);
        }
        s.fin_sent = true;
        let done = s.is_done();
        self.seal(now, &FrameRepr::Close { stream }, 0);
        if done {
            self.streams.remove(&stream);
        }
        Ok(())
    }

    /// Abort the stream both ways; unread data is discarded.
    pub fn reset(&mut self, now: Instant, stream: u32, code: u8) -> Result<(), StreamError> {
        self.check_live()?;
        if !self.streams.contains_key(&stream) {
            return Err(StreamError::UnknownStream);
        }
        self.seal(now, &FrameRepr::Reset { stream, code }, 0);
        self.drop_stream(now, stream);
        Ok(())
    }

    /// Forget a stream, returning the session credit its unread data held.
    fn drop_stream(&mut self, now: Instant, stream: u32) {
        if let Some(s) = self.streams.remove(&stream) {
            let n = s.recv_buf.len();
            self.session_consumed(now, n);
        }
    }

    fn session_consumed(&mut self, now: Instant, n: usize) {
        if n == 0 {
            return;
        }
        if let Some(increment) = self.recv_credit.consume(n) {
            if self.is_established() {
                self.seal(
                    now,
                    &FrameRepr::WindowUpdate {
                        stream: 0,
                        increment,
                    },
                    0,
                );
            }
        }
    }

    /// The stream's unread bytes as up to two slices (zero-copy read; then [`Self::consume`]).
    pub fn peek(&self, stream: u32) -> Option<(&[u8], &[u8])> {
        self.streams.get(&stream).map(|s| s.recv_buf.as_slices())
    }

    /// The application took `n` bytes from the front of the stream's buffer.
    pub fn consume(&mut self, now: Instant, stream: u32, n: usize) -> Result<(), StreamError> {
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(StreamError::UnknownStream)?;
        let n = n.min(s.recv_buf.len());
        s.recv_buf.drain(..n);
        if s.recv_buf.is_empty() {
            s.readable_reported = false;
        }
        let inc = if s.fin_received {
            None
        } else {
            s.recv_credit.consume(n)
        };
        if let (Some(increment), true) = (inc, self.is_established()) {
            self.seal(now, &FrameRepr::WindowUpdate { stream, increment }, 0);
        }
        self.session_consumed(now, n);
        Ok(())
    }

    /// Copy out unread bytes. `Ok(Some(0))` (with a non-empty `buf`): the peer closed and
    /// everything was read. `Ok(None)`: nothing yet.
    pub fn read(
        &mut self,
        now: Instant,
        stream: u32,
        buf: &mut [u8],
    ) -> Result<Option<usize>, StreamError> {
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(StreamError::UnknownStream)?;
        if s.recv_buf.is_empty() {
            if s.fin_received && !buf.is_empty() {
                s.fin_read = true;
                if s.is_done() {
                    self.streams.remove(&stream);
                }
                return Ok(Some(0));
            }
            s.readable_reported = false;
            return Ok(None);
        }
        let (a, b) = s.recv_buf.as_slices();
        let n1 = a.len().min(buf.len());
        buf[..n1].copy_from_slice(&a[..n1]);
        let n2 = b.len().min(buf.len() - n1);
        buf[n1..n1 + n2].copy_from_slice(&b[..n2]);
        self.consume(now, stream, n1 + n2)?;
        Ok(Some(n1 + n2))
    }

    /// The peer closed its side and every byte has been read.
    pub fn is_read_finished(&self, stream: u32) -> bool {
        self.streams
            .get(&stream)
            .is_none_or(|s| s.fin_received && s.recv_buf.is_empty())
    }

    // ---- time -------------------------------------------------------------------

    /// The earliest time [`Self::handle_timeout`] must be called.
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.error.is_some() {
            return None;
        }
        if !matches!(self.hs, Hs::Done) {
            return Some(self.started + self.cfg.handshake_timeout);
        }
        let mut t = self.last_rx + self.cfg.idle_timeout;
        t = t.min(self.last_tx + self.cfg.keepalive);
        t = t.min(self.key_since + self.cfg.rekey_interval);
        if let Some(due) = self.floor.and_then(|f| f.due(self.last_tx)) {
            t = t.min(due);
        }
        Some(t)
    }

    /// Run timers: handshake and idle timeouts, keepalive PING, the padding floor, time-based rekey.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !matches!(self.hs, Hs::Done) {
            if now >= self.started + self.cfg.handshake_timeout {
                let e = if self.is_unanswered() {
                    SessionError::Unanswered
                } else {
                    SessionError::Timeout
                };
                return Err(self.fail(e));
            }
            return Ok(());
        }
        if now >= self.last_rx + self.cfg.idle_timeout {
            return Err(self.fail(SessionError::Timeout));
        }
        if now >= self.last_tx + self.cfg.keepalive {
            // A keepalive is sent even with a probe unanswered: it is what keeps the
            // transport's middleboxes from forgetting an idle connection.
            self.ping_seq += 1;
            self.ping = Some((self.ping_seq, now));
            let payload = self.ping_seq.to_be_bytes();
            self.seal(now, &FrameRepr::Ping { payload }, 0);
        }
        if let Some(f) = self.floor {
            if f.due(self.last_tx).is_some_and(|due| now >= due) {
                // One record however late the call: the floor is a rate, never a burst.
                self.seal_padding(now, f.frame_len());
            } else if f.ended(now) {
                self.floor = None;
            }
        }
        self.maybe_rekey(now);
        Ok(())
    }

    /// When the last record (or handshake byte) arrived from the peer.
    pub fn last_received(&self) -> Instant {
        self.last_rx
    }

    /// Send a PING now, unless one is still unanswered: a health check of the peer
    /// between keepalives (its PONG, like any record, moves [`Self::last_received`]).
    pub fn probe(&mut self, now: Instant) -> Result<(), StreamError> {
        self.check_live()?;
        if self.ping.is_none() {
            self.ping_seq += 1;
            self.ping = Some((self.ping_seq, now));
            let payload = self.ping_seq.to_be_bytes();
            self.seal(now, &FrameRepr::Ping { payload }, 0);
        }
        Ok(())
    }

    /// Draw random bytes from the session's source (for engine-side decisions).
    pub fn random(&mut self, dst: &mut [u8]) {
        self.rng.fill(dst);
    }
}
