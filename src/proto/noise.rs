//! The Noise XK handshake (snow) and the transport parameters it carries.
//!
//! ```text
//! XK:  <- s            (the client knows and pins the relay's static key)
//!      -> e, es        msg1: 32 + 26 + 16 bytes, the client's wall-clock time (ms) and
//!                      its proof of being on the allow-list (`super::admit`)
//!      <- e, ee        msg2: 32 + 9 + 16 bytes, the relay's transport parameters
//!      -> s, se        msg3: 48 + 9 + 16 bytes, the client's transport parameters
//! ```
//! Every message has a fixed length, so no length prefix is sent. The top bit of each
//! ephemeral key is always zero in X25519 encodings; the sender replaces it with a
//! random bit and the receiver clears it, so that bit does not mark the stream.
//! msg1's payload is encrypted under `es`, so only a holder of the relay's public key
//! can write one and a replayer cannot change it. Its timestamp lets the relay refuse
//! stale and replayed first messages (`super::replay`), and its admission tag, under a
//! key derived from the two static keys, lets it refuse a client not on its allow-list
//! (`super::admit`), both before answering anything.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver};

use super::Random;
use super::admit::{self, AdmitKey};

/// Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XK_25519_ChaChaPoly_BLAKE2s";
/// Prologue: binds both ends to this protocol and version (a relay or client of another
/// version fails to authenticate msg1 or msg2, and the relay stays silent).
pub const PROLOGUE: &[u8] = b"qnet/3 Noise_XK_25519_ChaChaPoly_BLAKE2s";
/// Protocol version carried in the transport parameters.
pub const VERSION: u8 = 3;
/// Encoded transport parameters.
pub const PARAMS_LEN: usize = 9;
/// msg1's timestamp: the client's wall-clock time, ms since the Unix epoch, big-endian.
pub const STAMP_LEN: usize = 8;
/// msg1's payload: timestamp, admission hint, admission tag.
pub const MSG1_PAYLOAD_LEN: usize = STAMP_LEN + admit::HINT_LEN + admit::TAG_LEN;
/// First message: ephemeral, encrypted payload, AEAD tag.
pub const MSG1_LEN: usize = 32 + MSG1_PAYLOAD_LEN + 16;
/// Second message: ephemeral, encrypted parameters, tag.
pub const MSG2_LEN: usize = 32 + PARAMS_LEN + 16;
/// Third message: encrypted static key and tag, encrypted parameters, tag.
pub const MSG3_LEN: usize = 32 + 16 + PARAMS_LEN + 16;

/// What each end tells the other about itself, inside the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportParams {
    /// Initial credit the sender grants each stream it receives on.
    pub stream_window: u32,
    /// Initial credit the sender grants the whole session.
    pub session_window: u32,
}

impl TransportParams {
    fn encode(&self) -> [u8; PARAMS_LEN] {
        let mut b = [0u8; PARAMS_LEN];
        b[0] = VERSION;
        b[1..5].copy_from_slice(&self.stream_window.to_be_bytes());
        b[5..9].copy_from_slice(&self.session_window.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != PARAMS_LEN || b[0] != VERSION {
            return None;
        }
        let p = TransportParams {
            stream_window: u32::from_be_bytes([b[1], b[2], b[3], b[4]]),
            session_window: u32::from_be_bytes([b[5], b[6], b[7], b[8]]),
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
}

/// What the relay learns from a msg1 that authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstMessage {
    /// The client's ephemeral public key (top bit cleared): the replay cache's key.
    pub ephemeral: [u8; 32],
    /// The client's wall-clock time when it wrote msg1, ms since the Unix epoch.
    pub stamp_ms: u64,
    /// Names the admission key the tag was made with ([`admit::AdmitKey::hint`]).
    pub hint: [u8; admit::HINT_LEN],
    /// The client's proof of being on the allow-list ([`admit::Admission::check_msg1`]).
    pub tag: [u8; admit::TAG_LEN],
}

/// snow's RNG hook, fed from a seed drawn from the injected randomness.
struct SeededRng(ChaCha20Rng);

impl snow::types::Random for SeededRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// snow draws the initiator's ephemeral key inside `write_message`, after the payload
/// has been handed over; msg1's admission tag covers that key, so the client draws it
/// first and snow takes it through this `Dh` (snow's public resolver API; its builder's
/// fixed-key hook is hidden and meant for tests). Everything else is snow's own X25519.
struct PresetEphemeral {
    inner: Box<dyn snow::types::Dh>,
    preset: Option<[u8; 32]>,
}

impl snow::types::Dh for PresetEphemeral {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn pub_len(&self) -> usize {
        self.inner.pub_len()
    }
    fn priv_len(&self) -> usize {
        self.inner.priv_len()
    }
    fn set(&mut self, privkey: &[u8]) {
        self.inner.set(privkey)
    }
    fn generate(&mut self, rng: &mut dyn snow::types::Random) -> Result<(), snow::Error> {
        // Once only: a second ephemeral from the same handshake would be a fresh draw.
        match self.preset.take() {
            Some(k) => {
                self.inner.set(&k);
                Ok(())
            }
            None => self.inner.generate(rng),
        }
    }
    fn pubkey(&self) -> &[u8] {
        self.inner.pubkey()
    }
    fn privkey(&self) -> &[u8] {
        self.inner.privkey()
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        self.inner.dh(pubkey, out)
    }
    fn dh_len(&self) -> usize {
        self.inner.dh_len()
    }
}

/// snow's randomness from a seed, and (initiator) the ephemeral key drawn in advance.
struct SeededResolver {
    seed: [u8; 32],
    ephemeral: Option<[u8; 32]>,
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        Some(Box::new(SeededRng(ChaCha20Rng::from_seed(self.seed))))
    }
    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        // Asked for the static key's slot too, which is set, never generated.
        let preset = self.ephemeral?;
        Some(Box::new(PresetEphemeral {
            inner: DefaultResolver.resolve_dh(choice)?,
            preset: Some(preset),
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

fn builder(rng: &mut dyn Random, ephemeral: Option<[u8; 32]>) -> snow::Builder<'static> {
    let mut seed = [0u8; 32];
    rng.fill(&mut seed);
    let resolver = FallbackResolver::new(
        Box::new(SeededResolver { seed, ephemeral }),
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

/// The handshake in progress, either role.
pub struct Handshake {
    state: snow::HandshakeState,
    params: TransportParams,
    /// Initiator: its admission key and the ephemeral public key msg1 will carry.
    admit: Option<(AdmitKey, [u8; 32])>,
}

fn randomize_top_bit(msg: &mut [u8], rng: &mut dyn Random) {
    let mut b = [0u8; 1];
    rng.fill(&mut b);
    msg[31] |= b[0] & 0x80;
}

impl Handshake {
    /// Start as the client, pinning the relay's static key. Costs two X25519 besides
    /// Noise's: the admission key and the ephemeral public key the tag covers.
    pub fn initiator(
        local_private: &[u8; 32],
        relay_public: &[u8; 32],
        params: TransportParams,
        rng: &mut dyn Random,
    ) -> Self {
        let mut ephemeral = [0u8; 32];
        rng.fill(&mut ephemeral);
        let admit = AdmitKey::client(local_private, relay_public);
        Self::initiator_with(local_private, relay_public, params, ephemeral, admit, rng)
    }

    /// [`Self::initiator`] with the ephemeral private key and the admission key given
    /// (tests make msg1s that prove another key than the static one).
    pub(crate) fn initiator_with(
        local_private: &[u8; 32],
        relay_public: &[u8; 32],
        params: TransportParams,
        ephemeral: [u8; 32],
        admit: AdmitKey,
        rng: &mut dyn Random,
    ) -> Self {
        let state = builder(rng, Some(ephemeral))
            .local_private_key(local_private)
            .and_then(|b| b.remote_public_key(relay_public))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_initiator())
            .expect("static handshake configuration is valid");
        Handshake {
            state,
            params,
            admit: Some((admit, public_key(&ephemeral))),
        }
    }

    /// Start as the relay.
    pub fn responder(
        local_private: &[u8; 32],
        params: TransportParams,
        rng: &mut dyn Random,
    ) -> Self {
        let state = builder(rng, None)
            .local_private_key(local_private)
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_responder())
            .expect("static handshake configuration is valid");
        Handshake {
            state,
            params,
            admit: None,
        }
    }

    /// Client: write msg1 stamped with the wall-clock time `stamp_ms`, with its proof
    /// of admission.
    pub fn write_msg1(&mut self, stamp_ms: u64, rng: &mut dyn Random) -> [u8; MSG1_LEN] {
        let (admit, ephemeral) = self.admit.as_ref().expect("msg1 is the initiator's");
        let mut payload = [0u8; MSG1_PAYLOAD_LEN];
        let (stamp, rest) = payload.split_at_mut(STAMP_LEN);
        let (hint, tag) = rest.split_at_mut(admit::HINT_LEN);
        stamp.copy_from_slice(&stamp_ms.to_be_bytes());
        hint.copy_from_slice(&admit.hint());
        tag.copy_from_slice(&admit.tag(ephemeral, stamp_ms));
        let mut m = [0u8; MSG1_LEN];
        let n = self.state.write_message(&payload, &mut m).expect("msg1");
        debug_assert_eq!(n, MSG1_LEN);
        debug_assert_eq!(m[..32], ephemeral[..], "snow took the preset ephemeral key");
        randomize_top_bit(&mut m, rng);
        m
    }

    /// Relay: read msg1. The caller decides from its admission tag, time and ephemeral
    /// key whether to answer (`write_msg2`) or to stay silent.
    pub fn read_msg1(&mut self, msg1: &[u8; MSG1_LEN]) -> Result<FirstMessage, HandshakeFailed> {
        let mut m = *msg1;
        m[31] &= 0x7f;
        let mut payload = [0u8; MSG1_LEN];
        let n = self
            .state
            .read_message(&m, &mut payload)
            .map_err(|_| HandshakeFailed)?;
        if n != MSG1_PAYLOAD_LEN {
            return Err(HandshakeFailed);
        }
        let (stamp, rest) = payload[..n].split_at(STAMP_LEN);
        let (hint, tag) = rest.split_at(admit::HINT_LEN);
        Ok(FirstMessage {
            ephemeral: m[..32].try_into().expect("32 bytes"),
            stamp_ms: u64::from_be_bytes(stamp.try_into().expect("8 bytes")),
            hint: hint.try_into().expect("hint"),
            tag: tag.try_into().expect("tag"),
        })
    }

    /// Relay: write msg2, after an accepted msg1.
    pub fn write_msg2(&mut self, rng: &mut dyn Random) -> Result<[u8; MSG2_LEN], HandshakeFailed> {
        let mut out = [0u8; MSG2_LEN];
        let n = self
            .state
            .write_message(&self.params.encode(), &mut out)
            .map_err(|_| HandshakeFailed)?;
        debug_assert_eq!(n, MSG2_LEN);
        randomize_top_bit(&mut out, rng);
        Ok(out)
    }

    /// Client: read msg2, write msg3; the handshake is then complete.
    pub fn read_msg2_write_msg3(
        mut self,
        msg2: &[u8; MSG2_LEN],
    ) -> Result<([u8; MSG3_LEN], HandshakeOutput), HandshakeFailed> {
        let mut m = *msg2;
        m[31] &= 0x7f;
        let mut payload = [0u8; MSG2_LEN];
        let n = self
            .state
            .read_message(&m, &mut payload)
            .map_err(|_| HandshakeFailed)?;
        let peer_params = TransportParams::decode(&payload[..n]).ok_or(HandshakeFailed)?;
        let mut out = [0u8; MSG3_LEN];
        let n = self
            .state
            .write_message(&self.params.encode(), &mut out)
            .map_err(|_| HandshakeFailed)?;
        debug_assert_eq!(n, MSG3_LEN);
        Ok((out, self.finish(peer_params)?))
    }

    /// Relay: read msg3; the handshake is then complete and the client's key known.
    pub fn read_msg3(mut self, msg3: &[u8; MSG3_LEN]) -> Result<HandshakeOutput, HandshakeFailed> {
        let mut payload = [0u8; MSG3_LEN];
        let n = self
            .state
            .read_message(msg3, &mut payload)
            .map_err(|_| HandshakeFailed)?;
        let peer_params = TransportParams::decode(&payload[..n]).ok_or(HandshakeFailed)?;
        self.finish(peer_params)
    }

    fn finish(mut self, peer_params: TransportParams) -> Result<HandshakeOutput, HandshakeFailed> {
        if !self.state.is_handshake_finished() {
            return Err(HandshakeFailed);
        }
        let mut peer_static = [0u8; 32];
        peer_static.copy_from_slice(self.state.get_remote_static().ok_or(HandshakeFailed)?);
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
            peer_params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::SeededRandom;

    const P: TransportParams = TransportParams {
        stream_window: 1 << 18,
        session_window: 1 << 24,
    };

    const T: u64 = 1_700_000_000_123;

    fn keys(seed: u8) -> ([u8; 32], [u8; 32]) {
        let private = [seed; 32];
        (private, public_key(&private))
    }

    #[test]
    fn full_handshake_agrees() {
        let mut rng = SeededRandom::new(1);
        let (cs, cp) = keys(1);
        let (rs, rp) = keys(2);
        let mut c = Handshake::initiator(&cs, &rp, P, &mut rng);
        let mut r = Handshake::responder(&rs, P, &mut rng);
        let m1 = c.write_msg1(T, &mut rng);
        assert_eq!(r.read_msg1(&m1).unwrap().stamp_ms, T);
        let m2 = r.write_msg2(&mut rng).unwrap();
        let (m3, co) = c.read_msg2_write_msg3(&m2).unwrap();
        let ro = r.read_msg3(&m3).unwrap();
        assert_eq!(co.send, ro.recv);
        assert_eq!(co.recv, ro.send);
        assert_ne!(co.send, co.recv);
        assert_eq!(ro.peer_static, cp);
        assert_eq!(co.peer_static, rp);
        assert_eq!(co.peer_params, P);
    }

    #[test]
    fn wrong_relay_key_fails_at_msg1() {
        let mut rng = SeededRandom::new(2);
        let (cs, _) = keys(1);
        let (rs, _) = keys(2);
        let (_, other) = keys(3);
        let mut c = Handshake::initiator(&cs, &other, P, &mut rng);
        let mut r = Handshake::responder(&rs, P, &mut rng);
        let m1 = c.write_msg1(T, &mut rng);
        assert!(r.read_msg1(&m1).is_err());
    }

    #[test]
    fn tampered_messages_fail() {
        let (cs, _) = keys(1);
        let (rs, rp) = keys(2);
        for byte in 0..MSG3_LEN {
            let mut rng = SeededRandom::new(3);
            let mut c = Handshake::initiator(&cs, &rp, P, &mut rng);
            let mut r = Handshake::responder(&rs, P, &mut rng);
            let mut m1 = c.write_msg1(T, &mut rng);
            if byte < MSG1_LEN {
                m1[byte] ^= 1;
                assert!(r.read_msg1(&m1).is_err(), "msg1 byte {byte}");
                continue;
            }
            r.read_msg1(&m1).unwrap();
            let m2 = r.write_msg2(&mut rng).unwrap();
            let (mut m3, _) = c.read_msg2_write_msg3(&m2).unwrap();
            m3[byte] ^= 1;
            assert!(r.read_msg3(&m3).is_err(), "msg3 byte {byte}");
        }
    }

    #[test]
    fn tampering_with_the_top_bit_is_not_a_new_message() {
        // The randomized bit is cleared before Noise reads msg1, so flipping it yields the
        // same ephemeral key: the replay cache sees the same message.
        let mut rng = SeededRandom::new(4);
        let (cs, _) = keys(1);
        let (rs, rp) = keys(2);
        let mut c = Handshake::initiator(&cs, &rp, P, &mut rng);
        let m1 = c.write_msg1(T, &mut rng);
        let mut flipped = m1;
        flipped[31] ^= 0x80;
        let a = Handshake::responder(&rs, P, &mut rng)
            .read_msg1(&m1)
            .unwrap();
        let b = Handshake::responder(&rs, P, &mut rng)
            .read_msg1(&flipped)
            .unwrap();
        assert_eq!(a, b);
    }

    /// docs/PROTOCOL.md section 8: msg1 from fixed keys and time, before the top bit is
    /// randomized (tests/interop/record_spec.py recomputes it).
    #[test]
    fn msg1_golden_bytes() {
        let client = [0x01; 32];
        let relay_public = public_key(&[0x02; 32]);
        let admit = AdmitKey::client(&client, &relay_public);
        let hex = |b: &[u8]| -> String { b.iter().map(|b| format!("{b:02x}")).collect() };
        assert_eq!(hex(&admit.hint()), "c0ab");
        assert_eq!(
            hex(&admit.tag(&public_key(&[0x03; 32]), 1_700_000_000_000)),
            "0b79ec7d45dbad49c91392db2629a1e6"
        );
        let rng = &mut SeededRandom::new(0);
        let mut h = Handshake::initiator_with(&client, &relay_public, P, [0x03; 32], admit, rng);
        let mut m = h.write_msg1(1_700_000_000_000, rng);
        m[31] &= 0x7f;
        assert_eq!(
            hex(&m),
            "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22612932c4eb22713978d715a30d8e63ec4e9e793404f1810b955dc7e9aa5055c35bc03e43d0d74e5567dd"
        );
    }
}
