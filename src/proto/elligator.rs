//! The handshake's ephemeral keys on the wire: Elligator2 representatives.
//!
//! An X25519 public key is the u-coordinate of a curve point; about half of all 32-byte
//! strings are one, and a key made the usual way is also in the prime-order subgroup,
//! which one random string in sixteen is: an observer who decodes the first 32 bytes of
//! a connection tells qnet from random bytes after a handshake or two. So each end sends
//! its ephemeral key as an Elligator2 representative (RFC 9380, section 6.7.1, with the
//! top two bits random), which decodes to the key's point and is itself a uniform
//! string, and makes the key "dirty" first: the base-point multiple plus one of the eight
//! low-order points, so that decoded keys are uniform over the whole curve, as decoded
//! random strings are. X25519 clamps its scalar to a multiple of eight, which removes
//! the low-order part: the Diffie-Hellman results do not change. About half of all keys
//! have a representative; [`Ephemeral::generate`] draws until one has.
//! docs/PROTOCOL.md, section 2 ("Ephemeral keys").

use curve25519_elligator2::{MapToPointVariant, MontgomeryPoint, Randomized};

/// Draws before giving up: a fair coin fails 128 times in a row once in 2^128.
const TRIES: usize = 128;

/// An ephemeral key pair with its representative; zeroed when dropped.
#[derive(Clone)]
pub struct Ephemeral {
    private: [u8; 32],
    public: [u8; 32],
    representative: [u8; 32],
}

impl Ephemeral {
    /// A fresh key with a representative, from `fill` (33 random bytes a draw).
    pub fn generate(mut fill: impl FnMut(&mut [u8])) -> Ephemeral {
        for _ in 0..TRIES {
            let mut draw = [0u8; 33];
            fill(&mut draw);
            let mut private = [0u8; 32];
            private.copy_from_slice(&draw[..32]);
            if let Some(e) = Self::from_private(private, draw[32]) {
                return e;
            }
        }
        panic!("no representable key in {TRIES} draws: the random source is broken");
    }

    /// The key of `private` with the representative's top two bits from `tweak`, if it
    /// has one (test vectors fix both).
    pub fn from_private(private: [u8; 32], tweak: u8) -> Option<Ephemeral> {
        let representative: Option<[u8; 32]> =
            Randomized::to_representative(&private, tweak).into();
        Some(Ephemeral {
            private,
            public: Randomized::mul_base_clamped(private)
                .to_montgomery()
                .to_bytes(),
            representative: representative?,
        })
    }

    /// The private key.
    pub fn private(&self) -> &[u8; 32] {
        &self.private
    }

    /// The public key as Noise hashes it: the (dirty) point's u-coordinate.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// What goes on the wire in place of the public key.
    pub fn representative(&self) -> &[u8; 32] {
        &self.representative
    }
}

impl Drop for Ephemeral {
    fn drop(&mut self) {
        self.private = [0u8; 32];
        // As for keys::PrivateKey: black_box keeps the zeroing store from being elided.
        std::hint::black_box(&mut self.private);
    }
}

/// The public key a representative stands for (any 32 bytes decode to one).
pub fn decode(representative: &[u8; 32]) -> [u8; 32] {
    MontgomeryPoint::map_to_point(representative).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Random, SeededRandom};

    fn draw(seed: u64) -> Ephemeral {
        let mut rng = SeededRandom::new(seed);
        Ephemeral::generate(|b| rng.fill(b))
    }

    #[test]
    fn a_representative_decodes_to_the_key_and_the_dh_is_x25519s() {
        for seed in 0..50 {
            let e = draw(seed);
            assert_eq!(&decode(e.representative()), e.public());
            // The peer's X25519 with the dirty key equals the one with the clean key.
            let peer = [0x42u8; 32];
            let clean = crate::proto::noise::public_key(e.private());
            assert_eq!(
                x25519_dalek::x25519(peer, *e.public()),
                x25519_dalek::x25519(peer, clean)
            );
            assert_eq!(
                x25519_dalek::x25519(*e.private(), crate::proto::noise::public_key(&peer)),
                x25519_dalek::x25519(peer, clean)
            );
        }
    }

    #[test]
    fn the_top_two_bits_are_drawn_and_do_not_change_the_key() {
        let (mut seen, e) = ([false; 4], draw(7));
        for seed in 0..64 {
            seen[(draw(seed).representative()[31] >> 6) as usize] = true;
        }
        assert_eq!(seen, [true; 4]);
        let mut r = *e.representative();
        r[31] ^= 0xc0;
        assert_eq!(&decode(&r), e.public());
    }

    /// Dirty keys: they fall in all eight cosets of the prime-order subgroup as decoded
    /// random strings do, not only in the subgroup (where a key equals the clean
    /// base-point multiple of its private key) as the usual keys do.
    #[test]
    fn keys_are_not_all_in_the_prime_order_subgroup() {
        let mut dirty = 0;
        for seed in 0..64 {
            let e = draw(seed);
            if *e.public() != crate::proto::noise::public_key(e.private()) {
                dirty += 1;
            }
        }
        // One key in eight gets the identity as its low-order point.
        assert!((40..=64).contains(&dirty), "{dirty} of 64 dirty");
    }
}
