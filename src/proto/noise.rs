//! The hybrid handshake: Noise XKpsk2 (snow) with an ML-KEM-768 secret as its PSK.
//!
//! ```text
//! XKpsk2:  <- s        (the client knows and pins the relay's static key)
//!          -> e, es    msg1: 32 + 1212 + 16 bytes, then pad1: the client's time, its
//!                      admission proof (`super::admit`), pad1's length, and a fresh
//!                      ML-KEM encapsulation key (`super::kem`)
//!          (ct)        1088 bytes: the relay's ML-KEM ciphertext, masked (`super::mask`)
//!          <- e, ee, psk  msg2: 32 + 12 + 16, then pad2: the relay's transport parameters
//!          -> s, se    msg3: 48 + 12 + 16, then pad3: the client's transport parameters
//!                      (the two parameter blocks agree on the records' cipher)
//! ```
//! The PSK is the ML-KEM shared secret (with the ciphertext bound in), so every key
//! from msg2's payload on, the one hiding the client's static key among them, depends on
//! both X25519 and ML-KEM. Each message's fixed part has one length and announces, inside
//! its encryption, the length of the pad that follows it (0 to 511 bytes of keystream,
//! checked by the receiver), so no length prefix is sent and sizes vary. Each ephemeral
//! key goes on the wire as an Elligator2 representative (`super::elligator`): an X25519
//! key as such is a curve point anyone can test for. msg1's
//! payload is encrypted under `es`, so only a holder of the relay's public key can write
//! one and a replayer cannot change it. Its timestamp lets the relay refuse stale and
//! replayed first messages (`super::replay`), and its admission tag, under a key derived
//! from the two static keys, lets it refuse a client not on its allow-list
//! (`super::admit`), both before any ML-KEM work and before answering anything.
//! docs/PROTOCOL.md, section 2.

use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver};

use super::Random;
use super::admit::{self, AdmitKey};
use super::aead::{Cipher, OFFER_AES_256_GCM};
use super::elligator::{self, Ephemeral};
use super::kem::{self, CT_LEN, EK_LEN};
use super::mask::{self, Mask, PAD_LEN_BYTES, Part};
use super::memo::{self, Memo};

/// Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Prologue: binds both ends to this protocol and version (a relay or client of another
/// version fails to authenticate msg1 or msg2, and the relay stays silent).
pub const PROLOGUE: &[u8] = b"qnet/5 Noise_XKpsk2_25519_ChaChaPoly_BLAKE2s ML-KEM-768";
/// Protocol version carried in the transport parameters.
pub const VERSION: u8 = 5;
/// Encoded transport parameters.
pub const PARAMS_LEN: usize = 10;
/// msg1's timestamp: the client's wall-clock time, ms since the Unix epoch, big-endian.
pub const STAMP_LEN: usize = 8;
/// msg1's payload: timestamp, admission hint and tag, pad length, encapsulation key.
pub const MSG1_PAYLOAD_LEN: usize =
    STAMP_LEN + admit::HINT_LEN + admit::TAG_LEN + PAD_LEN_BYTES + EK_LEN;
/// msg1's fixed part: ephemeral, encrypted payload, AEAD tag (pad1 follows).
pub const MSG1_LEN: usize = 32 + MSG1_PAYLOAD_LEN + 16;
/// msg2 and msg3's payload: transport parameters and pad length.
const PAYLOAD_LEN: usize = PARAMS_LEN + PAD_LEN_BYTES;
/// Second message: ephemeral, encrypted payload, tag.
pub const MSG2_LEN: usize = 32 + PAYLOAD_LEN + 16;
/// The relay's flight before its pad: the masked ciphertext, then msg2.
pub const REPLY_LEN: usize = CT_LEN + MSG2_LEN;
/// Third message: encrypted static key and tag, encrypted payload, tag (pad3 follows).
pub const MSG3_LEN: usize = 32 + 16 + PAYLOAD_LEN + 16;
/// Where in the relay's keystream pad2 starts: after the ciphertext's mask.
const PAD2_OFFSET: usize = CT_LEN;
/// msg2's PSK position (`psk2`).
const PSK_AT: usize = 2;

/// What each end tells the other about itself, inside the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportParams {
    /// Initial credit the sender grants each stream it receives on.
    pub stream_window: u32,
    /// Initial credit the sender grants the whole session.
    pub session_window: u32,
    /// The record ciphers the sender offers besides ChaCha20-Poly1305
    /// ([`super::aead::OFFER_AES_256_GCM`]); unknown bits are ignored on receipt.
    pub ciphers: u8,
}

impl TransportParams {
    fn encode(&self) -> [u8; PARAMS_LEN] {
        let mut b = [0u8; PARAMS_LEN];
        b[0] = VERSION;
        b[1..5].copy_from_slice(&self.stream_window.to_be_bytes());
        b[5..9].copy_from_slice(&self.session_window.to_be_bytes());
        // Only the bits this version defines: the others are sent as 0 (docs/PROTOCOL.md).
        b[9] = self.ciphers & OFFER_AES_256_GCM;
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != PARAMS_LEN || b[0] != VERSION {
            return None;
        }
        let p = TransportParams {
            stream_window: u32::from_be_bytes([b[1], b[2], b[3], b[4]]),
            session_window: u32::from_be_bytes([b[5], b[6], b[7], b[8]]),
            // Bits this version does not know are dropped: a later version may define them.
            ciphers: b[9] & OFFER_AES_256_GCM,
        };
        (p.stream_window >= super::frame::MAX_PAYLOAD as u32 && p.session_window >= p.stream_window)
            .then_some(p)
    }
}

/// The handshake failed. Deliberately without detail: the reason helps only an attacker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("handshake failed")]
pub struct HandshakeFailed;

/// Keys and facts a finished handshake yields.
pub struct HandshakeOutput {
    /// Traffic secret for what this end sends.
    pub send: [u8; 32],
    /// Traffic secret for what this end receives.
    pub recv: [u8; 32],
    /// The peer's static public key.
    pub peer_static: [u8; 32],
    /// The peer's transport parameters.
    pub peer_params: TransportParams,
    /// The records' cipher, from both ends' parameters ([`Cipher::agree`]).
    pub cipher: Cipher,
    /// Noise's handshake hash: the same at both ends of one handshake.
    pub hash: [u8; 32],
}

/// What the relay learns from a msg1 that authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstMessage {
    /// The client's ephemeral public key (decoded from its representative): the replay
    /// cache's key.
    pub ephemeral: [u8; 32],
    /// The client's wall-clock time when it wrote msg1, ms since the Unix epoch.
    pub stamp_ms: u64,
    /// Names the admission key the tag was made with ([`admit::AdmitKey::hint`]).
    pub hint: [u8; admit::HINT_LEN],
    /// The client's proof of being on the allow-list ([`admit::Admission::check_msg1`]).
    pub tag: [u8; admit::TAG_LEN],
}

/// snow's RNG hook. snow wants one, but both ends draw their ephemeral key in advance
/// from the injected randomness, so snow has nothing to draw: if it ever tried, the
/// handshake fails rather than use a source we did not choose.
struct NoRandom;

impl snow::types::Random for NoRandom {
    fn try_fill_bytes(&mut self, _: &mut [u8]) -> Result<(), snow::Error> {
        Err(snow::Error::Rng)
    }
}

/// snow's X25519, with the public halves it would derive known in advance: the static
/// key's (derived once per process, [`static_public`]) and that of the ephemeral key
/// drawn in advance ([`Ephemeral`], whose representative the [`Handshake`] keeps for the
/// wire). The client draws its key before snow asks because msg1's admission tag covers
/// it, the relay at accept; snow takes it through this `Dh` (snow's public resolver API;
/// its builder's fixed-key hook is hidden and meant for tests).
struct X25519 {
    private: [u8; 32],
    public: [u8; 32],
    /// The ephemeral key, drawn in advance, until snow generates (takes) it.
    preset: Option<Ephemeral>,
}

impl snow::types::Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }
    fn pub_len(&self) -> usize {
        32
    }
    fn priv_len(&self) -> usize {
        32
    }
    fn set(&mut self, privkey: &[u8]) {
        // Only the static key is set (the builder's `local_private_key`).
        self.private.copy_from_slice(&privkey[..32]);
        self.public = static_public(&self.private);
    }
    fn generate(&mut self, _: &mut dyn snow::types::Random) -> Result<(), snow::Error> {
        // Both ends draw their ephemeral key in advance; a second one is never asked for.
        let e = self.preset.take().ok_or(snow::Error::Dh)?;
        self.private = *e.private();
        self.public = *e.public();
        Ok(())
    }
    fn pubkey(&self) -> &[u8] {
        &self.public
    }
    fn privkey(&self) -> &[u8] {
        &self.private
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let peer: [u8; 32] = pubkey
            .get(..32)
            .and_then(|p| p.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        out[..32].copy_from_slice(&x25519_dalek::x25519(self.private, peer));
        Ok(())
    }
    fn dh_len(&self) -> usize {
        32
    }
}

impl Drop for X25519 {
    fn drop(&mut self) {
        self.private = [0u8; 32];
        // As for keys::PrivateKey: black_box keeps the zeroing store from being elided.
        std::hint::black_box(&mut self.private);
    }
}

/// Our X25519 with the ephemeral key, and no randomness ([`NoRandom`]).
struct KeysResolver {
    ephemeral: Ephemeral,
}

impl CryptoResolver for KeysResolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        Some(Box::new(NoRandom))
    }
    fn resolve_dh(&self, _: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        // Asked for the static key's slot too, which is set, never generated.
        Some(Box::new(X25519 {
            private: [0u8; 32],
            public: [0u8; 32],
            preset: Some(self.ephemeral.clone()),
        }))
    }
    fn resolve_hash(&self, _: &snow::params::HashChoice) -> Option<Box<dyn snow::types::Hash>> {
        None
    }
    fn resolve_cipher(
        &self,
        _: &snow::params::CipherChoice,
    ) -> Option<Box<dyn snow::types::Cipher>> {
        None
    }
}

/// snow's builder; `ephemeral`: the ephemeral key snow is to take.
fn builder(ephemeral: Ephemeral) -> snow::Builder<'static> {
    let resolver = FallbackResolver::new(
        Box::new(KeysResolver { ephemeral }),
        Box::new(DefaultResolver),
    );
    snow::Builder::with_resolver(
        NOISE_PARAMS.parse().expect("valid params"),
        Box::new(resolver),
    )
}

/// Derive the public key of an X25519 private key.
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*private)).to_bytes()
}

/// [`public_key`] of a static key: each session of a process uses the same one.
fn static_public(private: &[u8; 32]) -> [u8; 32] {
    static MEMO: Memo<[u8; 32]> = Memo::new();
    MEMO.get(memo::pair(private, &[0u8; 32]), || public_key(private))
}

/// Where the handshake is.
enum Stage {
    /// Client: before msg1 (then its key pair for the relay's ciphertext).
    ClientStart,
    ClientAwaitReply(Box<kem::KeyPair>),
    ClientAwaitPad2 {
        pad_len: usize,
        peer: TransportParams,
    },
    RelayAwaitMsg1,
    /// The encapsulation key msg1 carried, until the relay answers; pad1's length.
    RelayRead {
        ek: Box<[u8; EK_LEN]>,
        pad_len: usize,
    },
    RelayAwaitMsg3,
    RelayAwaitPad3 {
        pad_len: usize,
        peer: TransportParams,
    },
    Spent,
}

/// The handshake in progress, either role.
pub struct Handshake {
    state: snow::HandshakeState,
    params: TransportParams,
    /// Initiator: its admission key and the ephemeral public key msg1 will carry.
    admit: Option<(AdmitKey, [u8; 32])>,
    /// The keystreams, once known (client: at msg1; relay: once msg1 proved a key).
    mask: Option<Mask>,
    /// What goes on the wire in place of our ephemeral key.
    representative: [u8; 32],
    stage: Stage,
}

/// Turn the representative that starts a message into the public key Noise reads.
fn decode_ephemeral(msg: &mut [u8]) {
    let r: [u8; 32] = msg[..32].try_into().expect("32 bytes");
    msg[..32].copy_from_slice(&elligator::decode(&r));
}

/// Payload of msg2 and msg3: the transport parameters and the pad length.
fn payload(params: &TransportParams, pad_len: usize) -> [u8; PAYLOAD_LEN] {
    let mut b = [0u8; PAYLOAD_LEN];
    b[..PARAMS_LEN].copy_from_slice(&params.encode());
    b[PARAMS_LEN..].copy_from_slice(&(pad_len as u16).to_be_bytes());
    b
}

fn parse_payload(b: &[u8]) -> Result<(TransportParams, usize), HandshakeFailed> {
    if b.len() != PAYLOAD_LEN {
        return Err(HandshakeFailed);
    }
    let params = TransportParams::decode(&b[..PARAMS_LEN]).ok_or(HandshakeFailed)?;
    let pad_len = mask::parse_len(&b[PARAMS_LEN..]).ok_or(HandshakeFailed)?;
    Ok((params, pad_len))
}

impl Handshake {
    /// Start as the client, pinning the relay's static key. Costs an ephemeral key with
    /// a representative besides Noise's work, and once per process the admission key.
    pub fn initiator(
        local_private: &[u8; 32],
        relay_public: &[u8; 32],
        params: TransportParams,
        rng: &mut dyn Random,
    ) -> Self {
        let ephemeral = Ephemeral::generate(|b| rng.fill(b));
        let admit = AdmitKey::client(local_private, relay_public);
        Self::initiator_with(local_private, relay_public, params, ephemeral, admit)
    }

    /// [`Self::initiator`] with the ephemeral private key and the admission key given
    /// (tests make msg1s that prove another key than the static one, and test vectors).
    pub fn initiator_with(
        local_private: &[u8; 32],
        relay_public: &[u8; 32],
        params: TransportParams,
        ephemeral: Ephemeral,
        admit: AdmitKey,
    ) -> Self {
        let ephemeral_public = *ephemeral.public();
        let representative = *ephemeral.representative();
        let state = builder(ephemeral)
            .local_private_key(local_private)
            .and_then(|b| b.remote_public_key(relay_public))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_initiator())
            .expect("static handshake configuration is valid");
        Handshake {
            state,
            params,
            admit: Some((admit, ephemeral_public)),
            mask: None,
            representative,
            stage: Stage::ClientStart,
        }
    }

    /// Start as the relay. Its ephemeral key is drawn now, at accept, not at msg2: the
    /// client spends longer than that writing msg1, so the key is ready when it comes
    /// and off the round trip's critical path.
    pub fn responder(
        local_private: &[u8; 32],
        params: TransportParams,
        rng: &mut dyn Random,
    ) -> Self {
        let ephemeral = Ephemeral::generate(|b| rng.fill(b));
        Self::responder_with(local_private, params, ephemeral)
    }

    /// [`Self::responder`] with its ephemeral key given (test vectors).
    pub fn responder_with(
        local_private: &[u8; 32],
        params: TransportParams,
        ephemeral: Ephemeral,
    ) -> Self {
        let representative = *ephemeral.representative();
        let state = builder(ephemeral)
            .local_private_key(local_private)
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_responder())
            .expect("static handshake configuration is valid");
        Handshake {
            state,
            params,
            admit: None,
            mask: None,
            representative,
            stage: Stage::RelayAwaitMsg1,
        }
    }

    /// Bytes the next read step takes: a fixed part, or the pad it announced.
    pub fn wants(&self) -> usize {
        match &self.stage {
            Stage::ClientAwaitReply(_) => REPLY_LEN,
            Stage::ClientAwaitPad2 { pad_len, .. }
            | Stage::RelayRead { pad_len, .. }
            | Stage::RelayAwaitPad3 { pad_len, .. } => *pad_len,
            Stage::RelayAwaitMsg1 => MSG1_LEN,
            Stage::RelayAwaitMsg3 => MSG3_LEN,
            Stage::ClientStart | Stage::Spent => 0,
        }
    }

    /// Client: msg1 stamped with the wall-clock time `stamp_ms`, with its proof of
    /// admission and a fresh ML-KEM key, then pad1.
    pub fn write_msg1(&mut self, stamp_ms: u64, rng: &mut dyn Random) -> Vec<u8> {
        let pair = kem::KeyPair::generate(rng);
        self.write_msg1_with(stamp_ms, pair, mask::draw_len(rng))
    }

    /// [`Self::write_msg1`] with its key pair and pad length given.
    pub fn write_msg1_with(
        &mut self,
        stamp_ms: u64,
        pair: kem::KeyPair,
        pad_len: usize,
    ) -> Vec<u8> {
        assert!(
            matches!(self.stage, Stage::ClientStart),
            "msg1 is the client's first"
        );
        let mut m = self.msg1(stamp_ms, pad_len as u16, pair.public());
        let (admit, ephemeral) = self.admit.as_ref().expect("msg1 is the initiator's");
        let mask = admit.mask(ephemeral);
        mask.pad(Part::Pad1, 0, pad_len, &mut m);
        self.mask = Some(mask);
        self.stage = Stage::ClientAwaitReply(Box::new(pair));
        m
    }

    /// msg1's fixed part with a valid time and admission proof but the pad length and
    /// encapsulation key given as they are, however wrong (fuzzing and tests of the
    /// relay's checks after admission). The handshake cannot go on from it.
    pub fn write_msg1_forged(&mut self, stamp_ms: u64, pad_len: u16, ek: &[u8; EK_LEN]) -> Vec<u8> {
        assert!(
            matches!(self.stage, Stage::ClientStart),
            "msg1 is the client's first"
        );
        self.stage = Stage::Spent;
        self.msg1(stamp_ms, pad_len, ek)
    }

    fn msg1(&mut self, stamp_ms: u64, pad_len: u16, ek: &[u8; EK_LEN]) -> Vec<u8> {
        let (admit, ephemeral) = self.admit.as_ref().expect("msg1 is the initiator's");
        let mut payload = [0u8; MSG1_PAYLOAD_LEN];
        let (stamp, rest) = payload.split_at_mut(STAMP_LEN);
        let (hint, rest) = rest.split_at_mut(admit::HINT_LEN);
        let (tag, rest) = rest.split_at_mut(admit::TAG_LEN);
        let (len, key) = rest.split_at_mut(PAD_LEN_BYTES);
        stamp.copy_from_slice(&stamp_ms.to_be_bytes());
        hint.copy_from_slice(&admit.hint());
        tag.copy_from_slice(&admit.tag(ephemeral, stamp_ms));
        len.copy_from_slice(&pad_len.to_be_bytes());
        key.copy_from_slice(ek);
        let mut m = vec![0u8; MSG1_LEN];
        let n = self.state.write_message(&payload, &mut m).expect("msg1");
        debug_assert_eq!(n, MSG1_LEN);
        debug_assert_eq!(m[..32], ephemeral[..], "snow took the preset ephemeral key");
        self.put_representative(&mut m[..32]);
        m
    }

    /// Replace the ephemeral key snow just wrote with its representative.
    fn put_representative(&self, key: &mut [u8]) {
        key.copy_from_slice(&self.representative);
    }

    /// Relay: read msg1's fixed part. The caller decides from its admission tag, time
    /// and ephemeral key whether to go on ([`Self::read_pad1`]) or to stay silent. Costs
    /// Noise's X25519 (`es`) and an AEAD; no ML-KEM work.
    pub fn read_msg1(&mut self, msg1: &[u8]) -> Result<FirstMessage, HandshakeFailed> {
        if !matches!(self.stage, Stage::RelayAwaitMsg1) || msg1.len() != MSG1_LEN {
            return Err(HandshakeFailed);
        }
        self.stage = Stage::Spent;
        let mut m = [0u8; MSG1_LEN];
        m.copy_from_slice(msg1);
        decode_ephemeral(&mut m);
        let mut payload = [0u8; MSG1_LEN];
        let n = self
            .state
            .read_message(&m, &mut payload)
            .map_err(|_| HandshakeFailed)?;
        if n != MSG1_PAYLOAD_LEN {
            return Err(HandshakeFailed);
        }
        let (stamp, rest) = payload[..n].split_at(STAMP_LEN);
        let (hint, rest) = rest.split_at(admit::HINT_LEN);
        let (tag, rest) = rest.split_at(admit::TAG_LEN);
        let (pad_len, ek) = rest.split_at(PAD_LEN_BYTES);
        let pad_len = mask::parse_len(pad_len).ok_or(HandshakeFailed)?;
        self.stage = Stage::RelayRead {
            ek: Box::new(ek.try_into().expect("ek")),
            pad_len,
        };
        Ok(FirstMessage {
            ephemeral: m[..32].try_into().expect("32 bytes"),
            stamp_ms: u64::from_be_bytes(stamp.try_into().expect("8 bytes")),
            hint: hint.try_into().expect("hint"),
            tag: tag.try_into().expect("tag"),
        })
    }

    /// Relay: check pad1 under the mask of the key msg1 proved
    /// ([`admit::Admission::check_msg1`]).
    pub fn read_pad1(&mut self, mask: Mask, pad: &[u8]) -> Result<(), HandshakeFailed> {
        let due = matches!(self.stage, Stage::RelayRead { pad_len, .. } if pad_len == pad.len());
        if !due || !mask.check(Part::Pad1, 0, pad) {
            self.stage = Stage::Spent;
            return Err(HandshakeFailed);
        }
        self.mask = Some(mask);
        Ok(())
    }

    /// Relay: after an accepted msg1 and pad1, encapsulate to the client's key and write
    /// the masked ciphertext, msg2 and pad2. Fails for an encapsulation key that fails
    /// FIPS 203's modulus check.
    pub fn write_reply(&mut self, rng: &mut dyn Random) -> Result<Vec<u8>, HandshakeFailed> {
        let mut m = [0u8; 32];
        rng.fill(&mut m);
        self.write_reply_with(m, mask::draw_len(rng))
    }

    /// [`Self::write_reply`] with the encapsulation's randomness and pad2's length given.
    pub fn write_reply_with(
        &mut self,
        m: [u8; 32],
        pad_len: usize,
    ) -> Result<Vec<u8>, HandshakeFailed> {
        let Stage::RelayRead { ek, .. } = std::mem::replace(&mut self.stage, Stage::Spent) else {
            return Err(HandshakeFailed);
        };
        let mask = self.mask.as_ref().ok_or(HandshakeFailed)?;
        let (ct, psk) = kem::encapsulate_with(&ek, m).ok_or(HandshakeFailed)?;
        self.state
            .set_psk(PSK_AT, &psk)
            .map_err(|_| HandshakeFailed)?;
        let mut out = vec![0u8; REPLY_LEN];
        out[..CT_LEN].copy_from_slice(&ct);
        mask.apply(Part::Relay, 0, &mut out[..CT_LEN]);
        let n = self
            .state
            .write_message(&payload(&self.params, pad_len), &mut out[CT_LEN..])
            .map_err(|_| HandshakeFailed)?;
        debug_assert_eq!(n, MSG2_LEN);
        self.put_representative(&mut out[CT_LEN..CT_LEN + 32]);
        mask.pad(Part::Relay, PAD2_OFFSET, pad_len, &mut out);
        self.stage = Stage::RelayAwaitMsg3;
        Ok(out)
    }

    /// Client: read the relay's flight (masked ciphertext and msg2) up to pad2, whose
    /// length [`Self::wants`] then tells.
    pub fn read_reply(&mut self, reply: &[u8]) -> Result<(), HandshakeFailed> {
        let Stage::ClientAwaitReply(pair) = std::mem::replace(&mut self.stage, Stage::Spent) else {
            return Err(HandshakeFailed);
        };
        let mask = self.mask.as_ref().ok_or(HandshakeFailed)?;
        if reply.len() != REPLY_LEN {
            return Err(HandshakeFailed);
        }
        let mut ct = [0u8; CT_LEN];
        ct.copy_from_slice(&reply[..CT_LEN]);
        mask.apply(Part::Relay, 0, &mut ct);
        self.state
            .set_psk(PSK_AT, &pair.psk(&ct))
            .map_err(|_| HandshakeFailed)?;
        let mut m = [0u8; MSG2_LEN];
        m.copy_from_slice(&reply[CT_LEN..]);
        decode_ephemeral(&mut m);
        let mut plain = [0u8; MSG2_LEN];
        let n = self
            .state
            .read_message(&m, &mut plain)
            .map_err(|_| HandshakeFailed)?;
        let (peer, pad_len) = parse_payload(&plain[..n])?;
        self.stage = Stage::ClientAwaitPad2 { pad_len, peer };
        Ok(())
    }

    /// Client: check pad2, write msg3 and pad3; the handshake is then complete.
    pub fn finish_client(
        self,
        pad2: &[u8],
        rng: &mut dyn Random,
    ) -> Result<(Vec<u8>, HandshakeOutput), HandshakeFailed> {
        self.finish_client_with(pad2, mask::draw_len(rng))
    }

    /// [`Self::finish_client`] with pad3's length given.
    pub fn finish_client_with(
        mut self,
        pad2: &[u8],
        pad3_len: usize,
    ) -> Result<(Vec<u8>, HandshakeOutput), HandshakeFailed> {
        let Stage::ClientAwaitPad2 { pad_len, peer } = self.stage else {
            return Err(HandshakeFailed);
        };
        let mask = self.mask.take().ok_or(HandshakeFailed)?;
        if pad2.len() != pad_len || !mask.check(Part::Relay, PAD2_OFFSET, pad2) {
            return Err(HandshakeFailed);
        }
        let mut out = vec![0u8; MSG3_LEN];
        let n = self
            .state
            .write_message(&payload(&self.params, pad3_len), &mut out)
            .map_err(|_| HandshakeFailed)?;
        debug_assert_eq!(n, MSG3_LEN);
        mask.pad(Part::Pad3, 0, pad3_len, &mut out);
        Ok((out, self.finish(peer)?))
    }

    /// Relay: read msg3's fixed part; pad3's length [`Self::wants`] then tells. The
    /// client's static key is known from here on ([`Self::peer_static`]).
    pub fn read_msg3(&mut self, msg3: &[u8]) -> Result<(), HandshakeFailed> {
        if !matches!(self.stage, Stage::RelayAwaitMsg3) || msg3.len() != MSG3_LEN {
            return Err(HandshakeFailed);
        }
        self.stage = Stage::Spent;
        let mut plain = [0u8; MSG3_LEN];
        let n = self
            .state
            .read_message(msg3, &mut plain)
            .map_err(|_| HandshakeFailed)?;
        let (peer, pad_len) = parse_payload(&plain[..n])?;
        self.stage = Stage::RelayAwaitPad3 { pad_len, peer };
        Ok(())
    }

    /// The peer's static key, once Noise has read it.
    pub fn peer_static(&self) -> Option<[u8; 32]> {
        self.state.get_remote_static()?.try_into().ok()
    }

    /// Relay: check pad3; the handshake is then complete.
    pub fn finish_relay(mut self, pad3: &[u8]) -> Result<HandshakeOutput, HandshakeFailed> {
        let Stage::RelayAwaitPad3 { pad_len, peer } = self.stage else {
            return Err(HandshakeFailed);
        };
        let mask = self.mask.take().ok_or(HandshakeFailed)?;
        if pad3.len() != pad_len || !mask.check(Part::Pad3, 0, pad3) {
            return Err(HandshakeFailed);
        }
        self.finish(peer)
    }

    fn finish(mut self, peer_params: TransportParams) -> Result<HandshakeOutput, HandshakeFailed> {
        if !self.state.is_handshake_finished() {
            return Err(HandshakeFailed);
        }
        let peer_static = self.peer_static().ok_or(HandshakeFailed)?;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(self.state.get_handshake_hash());
        let (i2r, r2i) = self.state.dangerously_get_raw_split();
        let (send, recv) = if self.state.is_initiator() {
            (i2r, r2i)
        } else {
            (r2i, i2r)
        };
        Ok(HandshakeOutput {
            send,
            recv,
            peer_static,
            cipher: Cipher::agree(self.params.ciphers, peer_params.ciphers),
            peer_params,
            hash,
        })
    }
}

#[cfg(test)]
mod tests;
