//! The extend preamble: what a relay that extends a route sends the next relay ahead of
//! the client's first byte: how many hops the route already has. Anyone who knows the
//! relay's public key can seal one, but that gains nothing: on an extend the extending
//! relay's comes first (the client's bytes follow it), and on a connection of the
//! client's own a preamble can only claim position 1 or more, which is what it has
//! anyway. So relays hold routes to three hops and no route loops back on itself.
//! docs/PROTOCOL.md, "Routes (multi-hop)".
//!
//! ```text
//! e = a fresh ephemeral key, sent as its Elligator2 representative (32)
//! k = BLAKE2s-MAC(key = X25519(e, S_next), msg = "qnet/4 extend" || repr(e))
//! preamble = repr(e) (32) || ChaCha20-Poly1305(k, nonce 0, hops (1)) (1 + 16)
//! ```
//! 49 bytes that look random; the next relay tries to open the first 49 bytes of a
//! connection from a relay's address, and takes them for a client's msg1 when they do not
//! open (a forgery passes the tag with probability 2^-128).

use super::aead::{AeadKey, TAG_LEN};
use super::blake2s_mac;
use super::elligator::{Ephemeral, decode};

/// Bytes of a preamble.
pub const PREAMBLE_LEN: usize = 32 + 1 + TAG_LEN;

fn key(dh: &[u8; 32], representative: &[u8; 32]) -> AeadKey {
    AeadKey::new(&blake2s_mac(dh, &[b"qnet/4 extend", representative]))
}

/// The preamble telling the relay whose static public key is `next` that the route
/// already has `hops` hops before it, from the fresh key `e`.
pub fn seal(hops: u8, next: &[u8; 32], e: &Ephemeral) -> [u8; PREAMBLE_LEN] {
    let dh = x25519_dalek::x25519(*e.private(), *next);
    let mut out = [0u8; PREAMBLE_LEN];
    out[..32].copy_from_slice(e.representative());
    out[32] = hops;
    let tag = key(&dh, e.representative()).seal(0, &mut out[32..33]);
    out[33..].copy_from_slice(&tag);
    out
}

/// The hop count a preamble carries, if `bytes` is one sealed to this relay's static
/// key `local_private`.
pub fn open(bytes: &[u8; PREAMBLE_LEN], local_private: &[u8; 32]) -> Option<u8> {
    let mut representative = [0u8; 32];
    representative.copy_from_slice(&bytes[..32]);
    let dh = x25519_dalek::x25519(*local_private, decode(&representative));
    let mut sealed = [0u8; 1 + TAG_LEN];
    sealed.copy_from_slice(&bytes[32..]);
    key(&dh, &representative).open(0, &mut sealed).ok()?;
    Some(sealed[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Random, SeededRandom};

    fn keypair(seed: u8) -> ([u8; 32], [u8; 32]) {
        let private = [seed; 32];
        (private, crate::proto::noise::public_key(&private))
    }

    fn fresh(seed: u64) -> Ephemeral {
        let mut rng = SeededRandom::new(seed);
        Ephemeral::generate(|b| rng.fill(b))
    }

    #[test]
    fn a_preamble_opens_only_for_its_relay_and_only_intact() {
        let (b_private, b_public) = keypair(7);
        let (c_private, _) = keypair(9);
        for hops in [1u8, 2, 3, 200] {
            let p = seal(hops, &b_public, &fresh(u64::from(hops)));
            assert_eq!(open(&p, &b_private), Some(hops));
            assert_eq!(open(&p, &c_private), None, "another relay's key");
            for i in [0, 31, 32, 33, PREAMBLE_LEN - 1] {
                let mut bad = p;
                bad[i] ^= 1;
                assert_eq!(open(&bad, &b_private), None, "byte {i} flipped");
            }
        }
        // A client's msg1 (or any random bytes) is not a preamble.
        let mut rng = SeededRandom::new(3);
        for _ in 0..100 {
            let mut junk = [0u8; PREAMBLE_LEN];
            rng.fill(&mut junk);
            assert_eq!(open(&junk, &b_private), None);
        }
    }

    #[test]
    fn preambles_differ_every_time_and_look_random() {
        let (_, b_public) = keypair(7);
        let a = seal(2, &b_public, &fresh(1));
        let b = seal(2, &b_public, &fresh(2));
        assert_ne!(a, b);
        // The hop count does not show: across draws its byte takes many values.
        let seen: std::collections::HashSet<u8> = (0..64)
            .map(|s| seal(2, &b_public, &fresh(100 + s))[32])
            .collect();
        assert!(seen.len() > 40, "{}", seen.len());
    }
}
