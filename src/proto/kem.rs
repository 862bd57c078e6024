//! ML-KEM-768 (FIPS 203) for the hybrid handshake, over `libcrux-ml-kem`.
//!
//! The client makes a fresh key pair per handshake and sends its encapsulation key
//! inside msg1; the relay encapsulates to it; both turn the shared secret and the
//! ciphertext into msg2's Noise PSK ([`psk`]). docs/PROTOCOL.md, section 2.

use libcrux_ml_kem::mlkem768;

use super::{Random, blake2s_mac};

/// Bytes of an encapsulation key.
pub const EK_LEN: usize = 1184;
/// Bytes of a ciphertext.
pub const CT_LEN: usize = 1088;

/// The client's key pair for one handshake.
pub struct KeyPair(mlkem768::MlKem768KeyPair);

impl KeyPair {
    /// A fresh key pair (FIPS 203 `ML-KEM.KeyGen`, seed `d || z` from `rng`).
    pub fn generate(rng: &mut dyn Random) -> KeyPair {
        let mut seed = [0u8; 64];
        rng.fill(&mut seed);
        Self::from_seed(seed)
    }

    /// The key pair of seed `d || z` (`ML-KEM.KeyGen_internal`; test vectors).
    pub fn from_seed(seed: [u8; 64]) -> KeyPair {
        KeyPair(mlkem768::generate_key_pair(seed))
    }

    /// The encapsulation key msg1 carries.
    pub fn public(&self) -> &[u8; EK_LEN] {
        self.0.public_key().as_slice()
    }

    /// The PSK from the relay's ciphertext. Never fails: a changed ciphertext yields an
    /// unrelated secret (implicit rejection), so msg2 fails to authenticate.
    pub fn psk(&self, ct: &[u8; CT_LEN]) -> [u8; 32] {
        let ciphertext = mlkem768::MlKem768Ciphertext::from(ct);
        psk(
            &mlkem768::decapsulate(self.0.private_key(), &ciphertext),
            ct,
        )
    }
}

/// Relay: encapsulate to the client's key, giving the ciphertext and the PSK; `None`
/// for a key that fails FIPS 203's modulus check (section 7.2).
pub fn encapsulate(ek: &[u8; EK_LEN], rng: &mut dyn Random) -> Option<([u8; CT_LEN], [u8; 32])> {
    let mut m = [0u8; 32];
    rng.fill(&mut m);
    encapsulate_with(ek, m)
}

/// [`encapsulate`] with its randomness `m` given (`ML-KEM.Encaps_internal`; test vectors).
pub fn encapsulate_with(ek: &[u8; EK_LEN], m: [u8; 32]) -> Option<([u8; CT_LEN], [u8; 32])> {
    let key = mlkem768::MlKem768PublicKey::from(ek);
    if !mlkem768::validate_public_key(&key) {
        return None;
    }
    let (ciphertext, shared) = mlkem768::encapsulate(&key, m);
    let ct = *ciphertext.as_slice();
    Some((ct, psk(&shared, &ct)))
}

/// msg2's PSK: the shared secret, with the ciphertext bound in (Noise never hashes it).
fn psk(shared: &[u8; 32], ct: &[u8; CT_LEN]) -> [u8; 32] {
    blake2s_mac(shared, &[b"qnet/4 psk", ct])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::SeededRandom;

    #[test]
    fn both_ends_derive_one_psk() {
        let rng = &mut SeededRandom::new(1);
        let pair = KeyPair::generate(rng);
        let (ct, psk) = encapsulate(pair.public(), rng).unwrap();
        assert_eq!(pair.psk(&ct), psk);
    }

    #[test]
    fn a_changed_ciphertext_gives_another_psk() {
        let rng = &mut SeededRandom::new(2);
        let pair = KeyPair::generate(rng);
        let (mut ct, psk) = encapsulate(pair.public(), rng).unwrap();
        ct[CT_LEN - 1] ^= 1;
        assert_ne!(pair.psk(&ct), psk);
    }

    #[test]
    fn an_invalid_encapsulation_key_is_refused() {
        let rng = &mut SeededRandom::new(3);
        let pair = KeyPair::generate(rng);
        // The first coefficient set to 4095, above q = 3329: the modulus check fails.
        let mut ek = *pair.public();
        ek[0] = 0xff;
        ek[1] |= 0x0f;
        assert!(encapsulate(&ek, rng).is_none());
        assert!(encapsulate(&[0xff; EK_LEN], rng).is_none());
    }
}
