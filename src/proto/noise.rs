//! The Noise XK handshake (snow) and the transport parameters it carries.
//!
//! ```text
//! XK:  <- s            (the client knows and pins the relay's static key)
//!      -> e, es        msg1: 48 bytes, empty payload
//!      <- e, ee        msg2: 32 + 9 + 16 bytes, the relay's transport parameters
//!      -> s, se        msg3: 48 + 9 + 16 bytes, the client's transport parameters
//! ```
//! Every message has a fixed length, so no length prefix is sent. The top bit of each
//! ephemeral key is always zero in X25519 encodings; the sender replaces it with a
//! random bit and the receiver clears it, so that bit does not mark the stream.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver};

use super::Random;

/// Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XK_25519_ChaChaPoly_BLAKE2s";
/// Prologue: binds both ends to this protocol and version.
pub const PROLOGUE: &[u8] = b"qnet/1 Noise_XK_25519_ChaChaPoly_BLAKE2s";
/// Protocol version carried in the transport parameters.
pub const VERSION: u8 = 1;
/// Encoded transport parameters.
pub const PARAMS_LEN: usize = 9;
/// Handshake message lengths.
pub const MSG1_LEN: usize = 32 + 16;
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

/// snow's RNG hook, fed from a seed drawn from the injected randomness.
struct SeededRng(ChaCha20Rng);

impl snow::types::Random for SeededRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

struct SeededResolver([u8; 32]);

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        Some(Box::new(SeededRng(ChaCha20Rng::from_seed(self.0))))
    }
    fn resolve_dh(&self, _: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        None
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

fn builder(rng: &mut dyn Random) -> snow::Builder<'static> {
    let mut seed = [0u8; 32];
    rng.fill(&mut seed);
    let resolver = FallbackResolver::new(Box::new(SeededResolver(seed)), Box::new(DefaultResolver));
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
}

fn randomize_top_bit(msg: &mut [u8], rng: &mut dyn Random) {
    let mut b = [0u8; 1];
    rng.fill(&mut b);
    msg[31] |= b[0] & 0x80;
}

impl Handshake {
    /// Start as the client, pinning the relay's static key.
    pub fn initiator(
        local_private: &[u8; 32],
        relay_public: &[u8; 32],
        params: TransportParams,
        rng: &mut dyn Random,
    ) -> Self {
        let state = builder(rng)
            .local_private_key(local_private)
            .and_then(|b| b.remote_public_key(relay_public))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_initiator())
            .expect("static handshake configuration is valid");
        Handshake { state, params }
    }

    /// Start as the relay.
    pub fn responder(
        local_private: &[u8; 32],
        params: TransportParams,
        rng: &mut dyn Random,
    ) -> Self {
        let state = builder(rng)
            .local_private_key(local_private)
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_responder())
            .expect("static handshake configuration is valid");
        Handshake { state, params }
    }

    /// Client: write msg1.
    pub fn write_msg1(&mut self, rng: &mut dyn Random) -> [u8; MSG1_LEN] {
        let mut m = [0u8; MSG1_LEN];
        let n = self.state.write_message(&[], &mut m).expect("msg1");
        debug_assert_eq!(n, MSG1_LEN);
        randomize_top_bit(&mut m, rng);
        m
    }

    /// Relay: read msg1 and write msg2.
    pub fn read_msg1_write_msg2(
        &mut self,
        msg1: &[u8; MSG1_LEN],
        rng: &mut dyn Random,
    ) -> Result<[u8; MSG2_LEN], HandshakeFailed> {
        let mut m = *msg1;
        m[31] &= 0x7f;
        let mut payload = [0u8; MSG1_LEN];
        let n = self
            .state
            .read_message(&m, &mut payload)
            .map_err(|_| HandshakeFailed)?;
        if n != 0 {
            return Err(HandshakeFailed);
        }
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
        let m1 = c.write_msg1(&mut rng);
        let m2 = r.read_msg1_write_msg2(&m1, &mut rng).unwrap();
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
        let m1 = c.write_msg1(&mut rng);
        assert!(r.read_msg1_write_msg2(&m1, &mut rng).is_err());
    }

    #[test]
    fn tampered_messages_fail() {
        let (cs, _) = keys(1);
        let (rs, rp) = keys(2);
        for byte in 0..MSG3_LEN {
            let mut rng = SeededRandom::new(3);
            let mut c = Handshake::initiator(&cs, &rp, P, &mut rng);
            let mut r = Handshake::responder(&rs, P, &mut rng);
            let mut m1 = c.write_msg1(&mut rng);
            if byte < MSG1_LEN {
                m1[byte] ^= 1;
                assert!(
                    r.read_msg1_write_msg2(&m1, &mut rng).is_err(),
                    "msg1 byte {byte}"
                );
                continue;
            }
            let m2 = r.read_msg1_write_msg2(&m1, &mut rng).unwrap();
            let (mut m3, _) = c.read_msg2_write_msg3(&m2).unwrap();
            m3[byte] ^= 1;
            assert!(r.read_msg3(&m3).is_err(), "msg3 byte {byte}");
        }
    }
}
