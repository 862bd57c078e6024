//! Fixtures shared by the fuzz targets and by `examples/gen_seeds.rs`, which writes the
//! committed seed corpora under `fuzz/seeds/`. The seeds depend on every constant here:
//! change one and regenerate them (`cargo run --example gen_seeds` in `fuzz/`).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use qnet::proto::aead::TAG_LEN;
use qnet::proto::frame::{Frame, FrameRepr, HEADER_LEN, MAX_FRAME};
use qnet::proto::admit::Admission;
use qnet::proto::kem::EK_LEN;
use qnet::proto::noise::{Handshake, REPLY_LEN, TransportParams, public_key};
use qnet::proto::record::{LEN_LEN, Opener, RecordError, Sealer};
use qnet::proto::replay::ReplayCache;
use qnet::proto::{Role, SeededRandom, Session, SessionConfig, SimClock};

/// Traffic secret of the `record` target's sealer and opener.
pub const RECORD_SECRET: [u8; 32] = [0x5a; 32];
/// The relay's static private key in the `handshake` target.
pub const RELAY_PRIVATE: [u8; 32] = [0x22; 32];
/// The one client key on the relay's allow-list.
pub const CLIENT_PRIVATE: [u8; 32] = [0x11; 32];
/// A client key the relay does not know: its msg1 proves nothing, so it is refused there.
pub const STRANGER_PRIVATE: [u8; 32] = [0x33; 32];
/// Seed of the relay session's randomness (fixes its msg2 for a given msg1).
pub const RELAY_SEED: u64 = 0x7e1a;
/// Seed of the fixture clients' randomness.
pub const CLIENT_SEED: u64 = 0xc11e;
/// The wall-clock time of every fixture (ms since the epoch): fixed, so the seeds' msg1
/// timestamps are the same every run and never stale to the relay.
pub const UNIX_MS: u64 = 1_700_000_000_000;

/// A session config whose wall clock reads [`UNIX_MS`] at `now`.
fn config_at(now: Instant) -> SessionConfig {
    SessionConfig {
        clock: Arc::new(SimClock {
            at: now,
            unix: Duration::from_millis(UNIX_MS),
        }),
        ..SessionConfig::default()
    }
}

/// Bits of the `handshake` target's first input byte above the two mode bits.
pub mod handshake_flags {
    /// Hand the relay's output to the "socket" after every chunk (else it piles up).
    pub const DRAIN: u8 = 1 << 2;
    /// Mode 2: the handshake comes from a key the relay does not admit.
    pub const STRANGER: u8 = 1 << 3;
    /// Answer OPEN with an error instead of success.
    pub const REFUSE: u8 = 1 << 4;
    /// Echo received data back.
    pub const ECHO: u8 = 1 << 5;
}

/// Bytes left to read from a fuzz input; reads past the end give zeros / nothing.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// Wrap a fuzz input.
    pub fn new(data: &'a [u8]) -> Self {
        Input(data)
    }

    /// The next byte, or 0 once the input is used up.
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// Up to `n` next bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    /// Everything not yet read.
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }

    /// Nothing left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One frame to seal, cut from a fuzz input: `len (1) | pad units (1) | frame bytes`.
///
/// `len == 0xff` takes the rest of the input; padding is `pad units * 64` bytes. Both are
/// capped so that the frame and its padding fit one record.
pub struct Piece<'a> {
    /// Frame bytes as given (may be shorter than a header or not a valid frame).
    pub frame: &'a [u8],
    /// Padding bytes to add after them.
    pub pad: usize,
}

/// The next [`Piece`], or `None` when the input is used up.
pub fn next_piece<'a>(input: &mut Input<'a>) -> Option<Piece<'a>> {
    if input.is_empty() {
        return None;
    }
    let len = match input.byte() {
        0xff => MAX_FRAME,
        n => n as usize,
    };
    let pad = input.byte() as usize * 64;
    let frame = input.take(len.min(MAX_FRAME));
    let pad = pad.min(MAX_FRAME - frame.len().max(HEADER_LEN));
    Some(Piece { frame, pad })
}

/// Encode a piece for a seed file (inverse of [`next_piece`] for frames under 255 bytes).
pub fn encode_piece(frame: &[u8], pad_units: u8) -> Vec<u8> {
    assert!(frame.len() < 0xff);
    let mut v = vec![frame.len() as u8, pad_units];
    v.extend_from_slice(frame);
    v
}

/// Emit a frame without padding.
pub fn frame_bytes(repr: &FrameRepr<'_>) -> Vec<u8> {
    let mut b = vec![0; repr.buffer_len()];
    repr.emit(&mut b);
    b
}

/// Cut `wire` into chunks whose sizes alternate between `sizes[0]` and `sizes[1]`
/// (0: everything that is left).
pub fn chunks(wire: &[u8], sizes: [usize; 2]) -> Vec<&[u8]> {
    let mut out = vec![];
    let mut rest = wire;
    let mut i = 0;
    while !rest.is_empty() {
        let n = match sizes[i % 2] {
            0 => rest.len(),
            n => n.min(rest.len()),
        };
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
        i += 1;
    }
    out
}

/// How reading a record stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// All input used; this many bytes of an incomplete record are left over.
    Incomplete(usize),
    /// A record was rejected; nothing after it is read.
    Failed(RecordError),
}

/// Open every record of `wire` the way `Session` does: bytes arrive `chunk` at a time,
/// the unconsumed tail is presented again with the next arrival, and a KEY_UPDATE
/// frame switches the opener's key. Returns the plaintext frames (padding included).
pub fn open_stream(
    cipher: qnet::proto::aead::Cipher,
    secret: [u8; 32],
    wire: &[u8],
    chunk: usize,
) -> (Vec<Vec<u8>>, End) {
    let mut opener = Opener::new(cipher, secret);
    let mut frames = vec![];
    let mut buf = Vec::new();
    for piece in wire.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        let mut at = 0;
        loop {
            match opener.open(&mut buf[at..]) {
                Ok(Some(r)) => {
                    assert!(r.consumed <= buf.len() - at, "record overruns the buffer");
                    assert_eq!(r.frame, LEN_LEN..r.consumed - TAG_LEN, "frame range");
                    let frame = &buf[at + r.frame.start..at + r.frame.end];
                    let repr = FrameRepr::parse(&Frame::new_unchecked(frame));
                    if repr == Ok(FrameRepr::KeyUpdate) {
                        opener.update_key();
                    }
                    frames.push(frame.to_vec());
                    at += r.consumed;
                }
                Ok(None) => break,
                Err(e) => return (frames, End::Failed(e)),
            }
        }
        buf.drain(..at);
    }
    (frames, End::Incomplete(buf.len()))
}

/// Seal `frame` (the record target's typed path): returns the plaintext the opener must see.
pub fn seal_repr(
    sealer: &mut Sealer,
    wire: &mut Vec<u8>,
    repr: &FrameRepr<'_>,
    pad: usize,
) -> Vec<u8> {
    sealer.seal(wire, repr, pad);
    if *repr == FrameRepr::KeyUpdate {
        sealer.update_key();
    }
    let mut pt = vec![0xa5; repr.buffer_len() + pad];
    repr.emit(&mut pt);
    pt
}

/// Seal raw frame bytes (valid or not), zero-padded to at least a header plus `pad`.
/// Switches the sealer's key after a KEY_UPDATE, as the peer will switch its opener.
pub fn seal_raw(sealer: &mut Sealer, wire: &mut Vec<u8>, frame: &[u8], pad: usize) {
    let mut pt = frame.to_vec();
    pt.resize((frame.len().max(HEADER_LEN) + pad).min(MAX_FRAME), 0);
    sealer.seal_with(wire, pt.len(), |buf| buf.copy_from_slice(&pt));
    if FrameRepr::parse(&Frame::new_unchecked(&pt[..])) == Ok(FrameRepr::KeyUpdate) {
        sealer.update_key();
    }
}

/// The relay session under test: fixed key, seeded randomness, one allowed client,
/// its own empty replay cache and a clock reading [`UNIX_MS`] at `now`.
pub fn relay_session(now: Instant) -> Session {
    relay_session_admitting(now, &CLIENT_PRIVATE)
}

/// [`relay_session`] with the one allowed client `client` (its private key).
fn relay_session_admitting(now: Instant, client: &[u8; 32]) -> Session {
    let started = Duration::from_millis(UNIX_MS) - Duration::from_secs(3600);
    Session::new(
        now,
        config_at(now),
        Role::Server {
            admission: Admission::shared(&RELAY_PRIVATE, [public_key(client)]),
            replay: ReplayCache::shared(
                ReplayCache::DEFAULT_CAPACITY,
                ReplayCache::DEFAULT_SKEW,
                started,
            ),
            source: 0,
        },
        &RELAY_PRIVATE,
        Box::new(SeededRandom::new(RELAY_SEED)),
    )
}

/// A complete handshake of a client against [`relay_session`], computed once.
pub struct ClientRun {
    /// The client's first flight: msg1 and pad1.
    pub msg1: Vec<u8>,
    /// What a relay admitting this client answers to `msg1`: the masked ML-KEM
    /// ciphertext, msg2 and pad2 (the same every run: the relay's seed is fixed).
    pub reply: Vec<u8>,
    /// The client's last message and pad3.
    pub msg3: Vec<u8>,
    /// Client-to-relay traffic secret.
    pub send: [u8; 32],
    /// Relay-to-client traffic secret.
    pub recv: [u8; 32],
    /// The records' cipher both ends agreed on.
    pub cipher: qnet::proto::aead::Cipher,
}

/// The fixture client's handshake, before msg1.
fn client_handshake(private: &[u8; 32], rng: &mut SeededRandom) -> Handshake {
    let cfg = SessionConfig::default();
    let params = TransportParams {
        stream_window: cfg.stream_window,
        session_window: cfg.session_window,
        ciphers: cfg.ciphers,
    };
    Handshake::initiator(private, &public_key(&RELAY_PRIVATE), params, rng)
}

/// msg1's fixed part from the allowed client, its time and admission proof valid, with
/// the pad length and encapsulation key given: what [`relay_session`] checks after
/// admission (the pad, the key's validity) on arbitrary values.
pub fn forged_msg1(pad_len: u16, ek: &[u8; EK_LEN]) -> Vec<u8> {
    let mut rng = SeededRandom::new(CLIENT_SEED);
    client_handshake(&CLIENT_PRIVATE, &mut rng).write_msg1_forged(UNIX_MS, pad_len, ek)
}

fn run_client(private: &[u8; 32]) -> ClientRun {
    let mut rng = SeededRandom::new(CLIENT_SEED);
    let mut client = client_handshake(private, &mut rng);
    let msg1 = client.write_msg1(UNIX_MS, &mut rng);
    let now = Instant::now();
    let mut relay = relay_session_admitting(now, private);
    relay
        .handle_input(now, &msg1)
        .expect("relay accepts msg1");
    let reply = relay.transmit().to_vec();
    client
        .read_reply(&reply[..REPLY_LEN])
        .expect("client accepts msg2");
    let (msg3, out) = client
        .finish_client(&reply[REPLY_LEN..], &mut rng)
        .expect("client accepts pad2");
    ClientRun {
        msg1,
        reply,
        msg3,
        send: out.send,
        recv: out.recv,
        cipher: out.cipher,
    }
}

/// The allowed client's handshake.
pub fn client() -> &'static ClientRun {
    static RUN: OnceLock<ClientRun> = OnceLock::new();
    RUN.get_or_init(|| run_client(&CLIENT_PRIVATE))
}

/// A stranger's handshake, as a relay that admitted it would see it: [`relay_session`]
/// refuses its msg1.
pub fn stranger() -> &'static ClientRun {
    static RUN: OnceLock<ClientRun> = OnceLock::new();
    RUN.get_or_init(|| run_client(&STRANGER_PRIVATE))
}
