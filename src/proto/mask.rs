//! The handshake's keystreams: they hide the ML-KEM ciphertext and make the pads.
//!
//! ```text
//! m = BLAKE2s-MAC(key = k_c, msg = "qnet/4 mask" || e)      (super::admit)
//! ChaCha20(m, 1): pad1    ChaCha20(m, 2): ct's mask, then pad2    ChaCha20(m, 3): pad3
//! ```
//! A pad is keystream, so it looks like the rest of the flight, and its receiver checks
//! every byte, so it is as authenticated as the message that announced its length.
//! docs/PROTOCOL.md, section 2 ("Masking key", "Pads").

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use subtle::ConstantTimeEq;

use super::Random;

/// The longest pad; each pad's length is drawn uniformly from 0 to this.
pub const PAD_MAX: usize = 511;
/// Bytes of the pad length inside each handshake payload.
pub const PAD_LEN_BYTES: usize = 2;

/// Which keystream: the nonce's last byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// pad1, after msg1.
    Pad1 = 1,
    /// The relay's flight: the ciphertext's mask, then pad2 (from byte 1088).
    Relay = 2,
    /// pad3, after msg3.
    Pad3 = 3,
}

/// The masking key of one handshake; zeroed when dropped.
pub struct Mask([u8; 32]);

impl Mask {
    /// The mask of key `m`.
    pub fn new(m: [u8; 32]) -> Mask {
        Mask(m)
    }

    fn stream(&self, part: Part, offset: usize) -> ChaCha20 {
        let mut nonce = [0u8; 12];
        nonce[11] = part as u8;
        let mut c = ChaCha20::new((&self.0).into(), (&nonce).into());
        c.seek(offset as u64);
        c
    }

    /// XOR `data` with keystream `part` from byte `offset`.
    pub fn apply(&self, part: Part, offset: usize, data: &mut [u8]) {
        self.stream(part, offset).apply_keystream(data);
    }

    /// Append `len` pad bytes: keystream `part` from byte `offset`.
    pub fn pad(&self, part: Part, offset: usize, len: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + len, 0);
        self.apply(part, offset, &mut out[start..]);
    }

    /// `pad` is keystream `part` from byte `offset`.
    pub fn check(&self, part: Part, offset: usize, pad: &[u8]) -> bool {
        let mut expect = [0u8; PAD_MAX];
        let Some(expect) = expect.get_mut(..pad.len()) else {
            return false;
        };
        self.apply(part, offset, expect);
        bool::from(expect.ct_eq(pad))
    }
}

impl Drop for Mask {
    fn drop(&mut self) {
        self.0 = [0u8; 32];
        // As for keys::PrivateKey: black_box keeps the zeroing store from being elided.
        std::hint::black_box(&mut self.0);
    }
}

/// A pad length, uniform from 0 to [`PAD_MAX`] (512 values: two bytes, masked).
pub fn draw_len(rng: &mut dyn Random) -> usize {
    let mut b = [0u8; 2];
    rng.fill(&mut b);
    u16::from_be_bytes(b) as usize & PAD_MAX
}

/// The pad length a payload announces, if within bounds.
pub fn parse_len(b: &[u8]) -> Option<usize> {
    let n = u16::from_be_bytes(b.try_into().ok()?) as usize;
    (n <= PAD_MAX).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::SeededRandom;

    #[test]
    fn a_pad_checks_and_a_changed_byte_does_not() {
        let m = Mask::new([9; 32]);
        let mut pad = Vec::new();
        m.pad(Part::Relay, 1088, 300, &mut pad);
        assert!(m.check(Part::Relay, 1088, &pad));
        assert!(!m.check(Part::Relay, 1087, &pad), "another offset");
        assert!(!m.check(Part::Pad1, 1088, &pad), "another part");
        pad[299] ^= 1;
        assert!(!m.check(Part::Relay, 1088, &pad));
        assert!(!m.check(Part::Pad1, 0, &[0; PAD_MAX + 1]), "too long");
    }

    #[test]
    fn lengths_cover_the_range() {
        let rng = &mut SeededRandom::new(1);
        let lens: Vec<usize> = (0..20_000).map(|_| draw_len(rng)).collect();
        assert_eq!(lens.iter().max(), Some(&PAD_MAX));
        assert_eq!(lens.iter().min(), Some(&0));
        assert_eq!(parse_len(&(PAD_MAX as u16).to_be_bytes()), Some(PAD_MAX));
        assert_eq!(parse_len(&(PAD_MAX as u16 + 1).to_be_bytes()), None);
    }
}
