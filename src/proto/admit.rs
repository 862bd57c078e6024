//! Admission: msg1 proves that its sender is on the relay's allow-list.
//!
//! XK tells the relay who the client is only in msg3, after the relay has answered
//! msg2, and an answer confirms that the host runs qnet. So msg1's encrypted payload
//! carries, after the timestamp, a proof under a key only the client and the relay can
//! compute, from their static keys:
//!
//! ```text
//! k_c  = BLAKE2s-MAC(key = X25519(s_client, S_relay), msg = "qnet/3 admit")
//! hint = BLAKE2s-MAC(key = k_c, msg = "qnet/3 admit hint")[..2]
//! tag  = BLAKE2s-MAC(key = k_c, msg = e || timestamp)[..16]
//! ```
//! `e` is msg1's ephemeral public key, decoded from its representative (as the transcript
//! hashes it), so a tag cannot be moved to another msg1. The relay derives `k_c` for every
//! allowed key when it loads the list ([`Admission::new`]) and finds the candidates for
//! a msg1 by its hint, so a msg1 costs a MAC or two, not one per allowed key. The rule
//! and its trade-offs are argued in docs/PROTOCOL.md, section 2 ("Admission").

use std::sync::Arc;

use parking_lot::RwLock;
use subtle::ConstantTimeEq;

use super::blake2s_mac;
use super::mask::Mask;
use super::memo::{self, Memo};

/// Bytes of the hint that names a client's admission key without revealing it.
pub const HINT_LEN: usize = 2;
/// Bytes of the admission tag.
pub const TAG_LEN: usize = 16;

/// The allow-list as the relay's sessions read it; replaced whole on reload.
pub type SharedAdmission = Arc<RwLock<Admission>>;

/// One client's admission key `k_c` and its hint; zeroed when dropped.
#[derive(Clone)]
pub struct AdmitKey {
    key: [u8; 32],
    hint: [u8; HINT_LEN],
}

impl AdmitKey {
    /// `k_c` and its hint from the X25519 of the two static keys.
    fn derive(shared: &[u8; 32]) -> AdmitKey {
        let key = blake2s_mac(shared, &[b"qnet/3 admit"]);
        let mut hint = [0u8; HINT_LEN];
        hint.copy_from_slice(&blake2s_mac(&key, &[b"qnet/3 admit hint"])[..HINT_LEN]);
        AdmitKey { key, hint }
    }

    /// The client's key: from its static private key and the relay's public key.
    /// Derived once per process for the same two keys (a full X25519 each time else).
    pub fn client(client_private: &[u8; 32], relay_public: &[u8; 32]) -> AdmitKey {
        static MEMO: Memo<AdmitKey> = Memo::new();
        MEMO.get(memo::pair(client_private, relay_public), || {
            let client = x25519_dalek::StaticSecret::from(*client_private);
            // SharedSecret, unlike a plain array, is zeroed when dropped.
            let shared = client.diffie_hellman(&x25519_dalek::PublicKey::from(*relay_public));
            Self::derive(shared.as_bytes())
        })
    }

    /// The hint msg1 carries (encrypted by Noise, like the rest of its payload).
    pub fn hint(&self) -> [u8; HINT_LEN] {
        self.hint
    }

    /// The tag of a msg1 with (decoded) ephemeral key `ephemeral` and time `stamp_ms`.
    pub fn tag(&self, ephemeral: &[u8; 32], stamp_ms: u64) -> [u8; TAG_LEN] {
        let mac = blake2s_mac(&self.key, &[ephemeral, &stamp_ms.to_be_bytes()]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&mac[..TAG_LEN]);
        tag
    }

    /// The masking key of the handshake whose msg1 has (decoded) ephemeral key `ephemeral`:
    /// `BLAKE2s-MAC(k_c, "qnet/4 mask" || e)`, 43 bytes MACed, so it cannot stand
    /// in for a hint (17) or a tag (40).
    pub fn mask(&self, ephemeral: &[u8; 32]) -> Mask {
        Mask::new(blake2s_mac(&self.key, &[b"qnet/4 mask", ephemeral]))
    }
}

/// An allowed client that msg1 proved, and its handshake's masking key.
pub struct Admitted {
    /// The client's static public key: msg3 must present it.
    pub public: [u8; 32],
    /// The keystreams of this handshake ([`AdmitKey::mask`]).
    pub mask: Mask,
}

impl Drop for AdmitKey {
    fn drop(&mut self) {
        self.key = [0u8; 32];
        // As for keys::PrivateKey: black_box keeps the zeroing store from being elided.
        std::hint::black_box(&mut self.key);
    }
}

/// An allowed client key and its admission key.
struct Entry {
    public: [u8; 32],
    key: AdmitKey,
}

/// The relay's allow-list with every client's admission key, indexed by hint.
#[derive(Default)]
pub struct Admission {
    /// Sorted by hint, so a hint's candidates are one contiguous run.
    by_hint: Vec<Entry>,
    /// The allowed public keys, sorted, for [`Admission::contains`].
    keys: Vec<[u8; 32]>,
}

impl Admission {
    /// Derive the admission key of every allowed client: one X25519 each. A key whose
    /// X25519 with the relay's is all zeros (a low-order point) is left out.
    pub fn new(relay_private: &[u8; 32], allowed: impl IntoIterator<Item = [u8; 32]>) -> Admission {
        let relay = x25519_dalek::StaticSecret::from(*relay_private);
        let mut by_hint: Vec<Entry> = allowed
            .into_iter()
            .filter_map(|public| {
                let shared = relay.diffie_hellman(&x25519_dalek::PublicKey::from(public));
                // An all-zero result (a low-order point) is a key anyone can compute.
                shared.was_contributory().then(|| Entry {
                    public,
                    key: AdmitKey::derive(shared.as_bytes()),
                })
            })
            .collect();
        by_hint.sort_by_key(|e| (e.key.hint, e.public));
        by_hint.dedup_by_key(|e| e.public);
        let mut keys: Vec<[u8; 32]> = by_hint.iter().map(|e| e.public).collect();
        keys.sort_unstable();
        Admission { by_hint, keys }
    }

    /// [`Admission::new`], shared for the relay's sessions.
    pub fn shared(
        relay_private: &[u8; 32],
        allowed: impl IntoIterator<Item = [u8; 32]>,
    ) -> SharedAdmission {
        Arc::new(RwLock::new(Self::new(relay_private, allowed)))
    }

    /// The allowed client whose key made `tag` for this msg1, if any, with the mask. Only the clients
    /// whose hint is `hint` are tried, each compared in constant time.
    pub fn check_msg1(
        &self,
        ephemeral: &[u8; 32],
        stamp_ms: u64,
        hint: &[u8; HINT_LEN],
        tag: &[u8; TAG_LEN],
    ) -> Option<Admitted> {
        let start = self.by_hint.partition_point(|e| e.key.hint < *hint);
        self.by_hint[start..]
            .iter()
            .take_while(|e| e.key.hint == *hint)
            .find(|e| bool::from(e.key.tag(ephemeral, stamp_ms).ct_eq(tag)))
            .map(|e| Admitted {
                public: e.public,
                mask: e.key.mask(ephemeral),
            })
    }

    /// `public` is on the allow-list.
    pub fn contains(&self, public: &[u8; 32]) -> bool {
        self.keys.binary_search(public).is_ok()
    }

    /// Allowed keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No key is allowed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::noise::public_key;

    const E: [u8; 32] = [0x44; 32];
    const T: u64 = 1_700_000_000_000;

    #[test]
    fn both_ends_derive_the_same_key_and_the_relay_finds_it_by_hint() {
        let relay = [0x02; 32];
        let clients: Vec<[u8; 32]> = (10..60u8).map(|i| [i; 32]).collect();
        let a = Admission::new(&relay, clients.iter().map(public_key));
        assert_eq!(a.len(), clients.len());
        for c in &clients {
            let k = AdmitKey::client(c, &public_key(&relay));
            let tag = k.tag(&E, T);
            assert_eq!(
                a.check_msg1(&E, T, &k.hint(), &tag).map(|a| a.public),
                Some(public_key(c))
            );
            assert!(a.contains(&public_key(c)));
            // The tag covers the ephemeral key and the time.
            assert!(a.check_msg1(&[0x45; 32], T, &k.hint(), &tag).is_none());
            assert!(a.check_msg1(&E, T + 1, &k.hint(), &tag).is_none());
            let mut bad = tag;
            bad[15] ^= 1;
            assert!(a.check_msg1(&E, T, &k.hint(), &bad).is_none());
        }
    }

    #[test]
    fn a_stranger_and_a_removed_key_prove_nothing() {
        let relay = [0x02; 32];
        let (alice, bob) = ([0x0a; 32], [0x0b; 32]);
        let a = Admission::new(&relay, [public_key(&alice)]);
        let k = AdmitKey::client(&bob, &public_key(&relay));
        assert!(a.check_msg1(&E, T, &k.hint(), &k.tag(&E, T)).is_none());
        assert!(!a.contains(&public_key(&bob)));
        let k = AdmitKey::client(&alice, &public_key(&relay));
        assert!(a.check_msg1(&E, T, &k.hint(), &k.tag(&E, T)).is_some());
        let reloaded = Admission::new(&relay, [public_key(&bob)]);
        assert!(
            reloaded
                .check_msg1(&E, T, &k.hint(), &k.tag(&E, T))
                .is_none()
        );
    }

    /// A relay session admitting `allowed`, and a client handshake whose msg1 proves
    /// `proof` while its static key (msg3) is `client`.
    fn relay_and_client(
        allowed: &[[u8; 32]],
        client: &[u8; 32],
        proof: AdmitKey,
    ) -> (crate::proto::Session, crate::proto::noise::Handshake, u64) {
        use crate::proto::noise::{Handshake, TransportParams};
        use crate::proto::replay::ReplayCache;
        use crate::proto::{Role, SeededRandom, Session, SessionConfig, SimClock};
        use std::time::{Duration, Instant};
        let relay = [0x02; 32];
        let now = Instant::now();
        let unix = Duration::from_millis(T);
        let cfg = SessionConfig {
            clock: Arc::new(SimClock { at: now, unix }),
            ..SessionConfig::default()
        };
        let params = TransportParams {
            stream_window: cfg.stream_window,
            session_window: cfg.session_window,
            ciphers: cfg.ciphers,
        };
        let server = Session::new(
            now,
            cfg,
            Role::Server {
                admission: Admission::shared(&relay, allowed.iter().copied()),
                replay: ReplayCache::shared(1024, Duration::from_secs(120), unix / 2),
                source: 0,
            },
            &relay,
            Box::new(SeededRandom::new(1)),
        );
        let rng = &mut SeededRandom::new(2);
        let ephemeral =
            crate::proto::elligator::Ephemeral::generate(|b| crate::proto::Random::fill(rng, b));
        let hs = Handshake::initiator_with(client, &public_key(&relay), params, ephemeral, proof);
        (server, hs, T)
    }

    /// The client's msg3 and pad3 in answer to the relay's flight.
    fn msg3(mut client: crate::proto::noise::Handshake, reply: &[u8]) -> Vec<u8> {
        use crate::proto::noise::REPLY_LEN;
        client.read_reply(&reply[..REPLY_LEN]).unwrap();
        let rng = &mut crate::proto::SeededRandom::new(4);
        client.finish_client(&reply[REPLY_LEN..], rng).unwrap().0
    }

    /// msg1 proves key A, msg3 presents key B: refused at msg3, whether B is on the list
    /// or not (so holding one allowed key does not let a client in as another).
    #[test]
    fn msg3_must_present_the_key_msg1_proved() {
        let (a, b) = ([0x0a; 32], [0x0b; 32]);
        let relay_public = public_key(&[0x02; 32]);
        for allowed in [vec![public_key(&a)], vec![public_key(&a), public_key(&b)]] {
            let (mut relay, mut client, t) =
                relay_and_client(&allowed, &b, AdmitKey::client(&a, &relay_public));
            let now = std::time::Instant::now();
            let m1 = client.write_msg1(t, &mut crate::proto::SeededRandom::new(3));
            relay.handle_input(now, &m1).expect("msg1 proves A");
            let reply = relay.transmit().to_vec();
            relay.transmit_done(reply.len());
            let m3 = msg3(client, &reply);
            assert_eq!(
                relay.handle_input(now, &m3),
                Err(crate::proto::SessionError::Handshake)
            );
            assert!(relay.transmit().is_empty() && !relay.is_established());
        }
        // The same client proving its own key gets in.
        let (mut relay, mut client, t) =
            relay_and_client(&[public_key(&b)], &b, AdmitKey::client(&b, &relay_public));
        let now = std::time::Instant::now();
        relay
            .handle_input(
                now,
                &client.write_msg1(t, &mut crate::proto::SeededRandom::new(3)),
            )
            .unwrap();
        let reply = relay.transmit().to_vec();
        let m3 = msg3(client, &reply);
        relay.handle_input(now, &m3).unwrap();
        assert!(relay.is_established());
    }

    /// An allowed key's hint with a wrong tag: silence at msg1, like a stranger.
    #[test]
    fn the_right_hint_with_a_wrong_tag_gets_no_answer() {
        let a = [0x0a; 32];
        let real = AdmitKey::client(&a, &public_key(&[0x02; 32]));
        let forged = AdmitKey {
            key: [0x99; 32],
            hint: real.hint(),
        };
        let (mut relay, mut client, t) = relay_and_client(&[public_key(&a)], &a, forged);
        let m1 = client.write_msg1(t, &mut crate::proto::SeededRandom::new(3));
        assert_eq!(
            relay.handle_input(std::time::Instant::now(), &m1),
            Err(crate::proto::SessionError::Handshake)
        );
        assert!(relay.transmit().is_empty());
    }

    #[test]
    fn a_low_order_key_is_never_admitted() {
        // The all-zero point: X25519 with it is zero whatever the private key.
        let a = Admission::new(&[0x02; 32], [[0u8; 32]]);
        assert!(a.is_empty());
    }
}
