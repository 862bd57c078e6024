//! Records: how frames cross the wire after the handshake.
//!
//! ```text
//! masked length (2) | AEAD(frame) | tag (16)
//! ```
//! The length counts the ciphertext and the tag. It is XORed with two bytes of a
//! ChaCha20 keystream that only the two ends know, so the byte stream is uniformly
//! random to an observer, who learns only the sizes and times of TCP segments. The
//! length is not authenticated by itself: a changed length makes the AEAD fail.
//! Nonces are implicit counters, so a replayed, dropped or reordered record fails too.

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};

use super::aead::{AeadKey, Cipher, TAG_LEN};
use super::blake2s_mac;
use super::frame::{FrameRepr, HEADER_LEN, MAX_FRAME};

/// Bytes of the masked length prefix.
pub const LEN_LEN: usize = 2;
/// Smallest legal value of the length field (an empty frame and its tag).
pub const MIN_RECORD_BODY: usize = HEADER_LEN + TAG_LEN;
/// Largest legal value of the length field.
pub const MAX_RECORD_BODY: usize = MAX_FRAME + TAG_LEN;
/// Largest record on the wire.
pub const MAX_RECORD: usize = LEN_LEN + MAX_RECORD_BODY;

/// Why a record was rejected; any of these ends the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The unmasked length is outside the legal range.
    #[error("record length out of range")]
    BadLength,
    /// Authentication failed (tampering, truncation, replay or reordering).
    #[error("record authentication failed")]
    BadTag,
    /// The nonce counter would wrap; the peer should have rekeyed long before.
    #[error("record counter exhausted")]
    CounterExhausted,
}

/// One direction's keys: derived from a traffic secret, replaced on KEY_UPDATE.
struct DirectionKeys {
    cipher: Cipher,
    secret: [u8; 32],
    aead: AeadKey,
    mask: ChaCha20,
    counter: u64,
}

impl DirectionKeys {
    fn new(cipher: Cipher, secret: [u8; 32]) -> Self {
        let aead = AeadKey::with(cipher, &blake2s_mac(&secret, &[cipher.record_key_label()]));
        let mask_key = blake2s_mac(&secret, &[b"qnet/1 length mask"]);
        let mask = ChaCha20::new((&mask_key).into(), (&[0u8; 12]).into());
        DirectionKeys {
            cipher,
            secret,
            aead,
            mask,
            counter: 0,
        }
    }

    fn update(&mut self) {
        *self = DirectionKeys::new(
            self.cipher,
            blake2s_mac(&self.secret, &[b"qnet/1 key update"]),
        );
    }

    fn next_counter(&mut self) -> Result<u64, RecordError> {
        let c = self.counter;
        self.counter = c.checked_add(1).ok_or(RecordError::CounterExhausted)?;
        Ok(c)
    }
}

impl Drop for DirectionKeys {
    fn drop(&mut self) {
        // Best-effort erasure of the long-lived secret; the ciphers zeroize themselves.
        self.secret.fill(0);
    }
}

/// Seals frames into records for one direction.
pub struct Sealer {
    keys: DirectionKeys,
    bytes: u64,
}

impl Sealer {
    /// Start from a traffic secret (from the handshake split) under the agreed cipher.
    pub fn new(cipher: Cipher, secret: [u8; 32]) -> Self {
        Sealer {
            keys: DirectionKeys::new(cipher, secret),
            bytes: 0,
        }
    }

    /// Append one record holding `frame` plus `pad` zero bytes of padding to `out`.
    ///
    /// # Panics
    /// If the frame and padding exceed [`MAX_FRAME`], or the counter is exhausted
    /// (the session rekeys long before 2^64 records).
    pub fn seal(&mut self, out: &mut Vec<u8>, frame: &FrameRepr<'_>, pad: usize) {
        let frame_len = frame.buffer_len() + pad;
        self.seal_with(out, frame_len, |buf| frame.emit(buf));
    }

    /// Append one record whose `frame_len` plaintext bytes are written by `fill`.
    pub fn seal_with(&mut self, out: &mut Vec<u8>, frame_len: usize, fill: impl FnOnce(&mut [u8])) {
        assert!((HEADER_LEN..=MAX_FRAME).contains(&frame_len));
        let body = frame_len + TAG_LEN;
        let start = out.len();
        out.resize(start + LEN_LEN + frame_len, 0);
        let mut len = (body as u16).to_be_bytes();
        self.keys.mask.apply_keystream(&mut len);
        out[start..start + LEN_LEN].copy_from_slice(&len);
        let pt = &mut out[start + LEN_LEN..];
        fill(pt);
        let counter = self
            .keys
            .next_counter()
            .expect("rekeyed before counter exhaustion");
        let tag = self.keys.aead.seal(counter, pt);
        out.extend_from_slice(&tag);
        self.bytes += (LEN_LEN + body) as u64;
    }

    /// Switch to the next key (call right after sealing a KEY_UPDATE frame).
    pub fn update_key(&mut self) {
        self.keys.update();
        self.bytes = 0;
    }

    /// Records sealed under the current key.
    pub fn records(&self) -> u64 {
        self.keys.counter
    }

    /// Bytes sealed under the current key.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The cipher this direction seals with.
    pub fn cipher(&self) -> Cipher {
        self.keys.cipher
    }

    /// Tests: jump to record `n` under the current key (2^24 records take minutes).
    #[cfg(test)]
    pub(crate) fn skip_to(&mut self, n: u64) {
        self.keys.counter = n;
    }
}

/// Opens records for one direction.
pub struct Opener {
    keys: DirectionKeys,
    /// Unmasked length of a record whose body has not fully arrived yet: the mask
    /// keystream advances once per record, so it must not be applied twice.
    pending_len: Option<usize>,
}

/// One opened record at the front of a buffer.
#[derive(Debug)]
pub struct Opened {
    /// Bytes of the buffer the record used (length prefix, body, tag).
    pub consumed: usize,
    /// Range of the decrypted frame within the buffer.
    pub frame: core::ops::Range<usize>,
}

impl Opener {
    /// Start from a traffic secret (from the handshake split) under the agreed cipher.
    pub fn new(cipher: Cipher, secret: [u8; 32]) -> Self {
        Opener {
            keys: DirectionKeys::new(cipher, secret),
            pending_len: None,
        }
    }

    /// Open the record at the front of `buf` in place. `Ok(None)`: more bytes needed.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Option<Opened>, RecordError> {
        let body = match self.pending_len {
            Some(n) => n,
            None => {
                if buf.len() < LEN_LEN {
                    return Ok(None);
                }
                let mut len = [buf[0], buf[1]];
                self.keys.mask.apply_keystream(&mut len);
                let n = u16::from_be_bytes(len) as usize;
                if !(MIN_RECORD_BODY..=MAX_RECORD_BODY).contains(&n) {
                    return Err(RecordError::BadLength);
                }
                self.pending_len = Some(n);
                n
            }
        };
        if buf.len() < LEN_LEN + body {
            return Ok(None);
        }
        self.pending_len = None;
        let counter = self.keys.next_counter()?;
        self.keys
            .aead
            .open(counter, &mut buf[LEN_LEN..LEN_LEN + body])
            .map_err(|_| RecordError::BadTag)?;
        Ok(Some(Opened {
            consumed: LEN_LEN + body,
            frame: LEN_LEN..LEN_LEN + body - TAG_LEN,
        }))
    }

    /// Switch to the peer's next key (call right after opening a KEY_UPDATE frame).
    pub fn update_key(&mut self) {
        self.keys.update();
    }

    /// Tests: jump to record `n` under the current key, as [`Sealer::skip_to`].
    #[cfg(test)]
    pub(crate) fn skip_to(&mut self, n: u64) {
        self.keys.counter = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::Frame;

    const CHACHA: Cipher = Cipher::ChaCha20Poly1305;

    fn pair() -> (Sealer, Opener) {
        (
            Sealer::new(CHACHA, [1u8; 32]),
            Opener::new(CHACHA, [1u8; 32]),
        )
    }

    fn data(d: &[u8]) -> FrameRepr<'_> {
        FrameRepr::Data { stream: 1, data: d }
    }

    fn open_all(o: &mut Opener, wire: &mut [u8]) -> Result<Vec<Vec<u8>>, RecordError> {
        let mut out = vec![];
        let mut at = 0;
        while let Some(r) = o.open(&mut wire[at..])? {
            let f = Frame::new_checked(&wire[at + r.frame.start..at + r.frame.end]).unwrap();
            out.push(f.payload().to_vec());
            at += r.consumed;
        }
        Ok(out)
    }

    #[test]
    fn roundtrip_and_padding_hidden() {
        let (mut s, mut o) = pair();
        let mut wire = vec![];
        s.seal(&mut wire, &data(b"hello"), 0);
        s.seal(&mut wire, &data(b"hello"), 100);
        assert_eq!(wire.len(), 2 * (LEN_LEN + HEADER_LEN + 5 + TAG_LEN) + 100);
        // Same frame twice gives different bytes: the counter changes the keystream.
        let rec = LEN_LEN + HEADER_LEN + 5 + TAG_LEN;
        assert_ne!(wire[..rec], wire[rec..2 * rec]);
        assert_eq!(
            open_all(&mut o, &mut wire).unwrap(),
            vec![b"hello".to_vec(); 2]
        );
    }

    #[test]
    fn golden_first_record() {
        let (mut s, _) = pair();
        let mut wire = vec![];
        s.seal(&mut wire, &data(b"golden"), 0);
        let hex: String = wire.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN_RECORD);
    }

    /// The first record sealed with secret [1; 32]; pins KDF labels, mask, nonce and layout.
    const GOLDEN_RECORD: &str = "7fa6833d594ecfcba9c6271bead6d0e2e20bd3e04ce7121f3c3da53791874d";

    /// The same under AES-256-GCM: its own key label, the same mask and nonce layout.
    #[cfg(feature = "aead-ring")]
    #[test]
    fn golden_first_record_aes_256_gcm() {
        let mut s = Sealer::new(Cipher::Aes256Gcm, [1u8; 32]);
        let mut wire = vec![];
        s.seal(&mut wire, &data(b"golden"), 0);
        let hex: String = wire.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN_RECORD_AES);
        // The length mask is the cipher's neither: the first two bytes are ChaCha's.
        assert_eq!(hex[..4], GOLDEN_RECORD[..4]);
        let mut o = Opener::new(Cipher::Aes256Gcm, [1u8; 32]);
        assert_eq!(
            open_all(&mut o, &mut wire).unwrap(),
            vec![b"golden".to_vec()]
        );
    }

    /// GOLDEN_RECORD's frame under AES-256-GCM.
    #[cfg(feature = "aead-ring")]
    const GOLDEN_RECORD_AES: &str =
        "7fa625bcb37e302d3dd2855a31e9fa39688264ff50d547e3952fa02b480c4c";

    /// A key update keeps the session's cipher: after it, an AES-256-GCM record opens
    /// under the updated AES key and not under a ChaCha20-Poly1305 opener updated alike.
    #[cfg(feature = "aead-ring")]
    #[test]
    fn a_key_update_keeps_the_cipher() {
        let aes = Cipher::Aes256Gcm;
        let mut s = Sealer::new(aes, [1u8; 32]);
        s.update_key();
        assert_eq!(s.cipher(), aes);
        let mut wire = vec![];
        s.seal(&mut wire, &data(b"after"), 0);
        let mut chacha = Opener::new(CHACHA, [1u8; 32]);
        chacha.update_key();
        assert_eq!(
            chacha.open(&mut wire.clone()).unwrap_err(),
            RecordError::BadTag
        );
        let mut o = Opener::new(aes, [1u8; 32]);
        o.update_key();
        assert_eq!(
            open_all(&mut o, &mut wire).unwrap(),
            vec![b"after".to_vec()]
        );
    }

    /// A record sealed under one cipher never opens under the other, with the same secret.
    #[cfg(feature = "aead-ring")]
    #[test]
    fn a_record_opens_only_under_its_own_cipher() {
        for (a, b) in [(CHACHA, Cipher::Aes256Gcm), (Cipher::Aes256Gcm, CHACHA)] {
            let mut s = Sealer::new(a, [1u8; 32]);
            let mut wire = vec![];
            s.seal(&mut wire, &data(b"which cipher"), 0);
            let mut o = Opener::new(b, [1u8; 32]);
            assert_eq!(o.open(&mut wire).unwrap_err(), RecordError::BadTag);
        }
    }

    #[test]
    fn partial_input_keeps_mask_state() {
        let (mut s, mut o) = pair();
        let mut wire = vec![];
        s.seal(&mut wire, &data(b"abc"), 0);
        s.seal(&mut wire, &data(b"defg"), 0);
        // Feed one byte more each time, re-presenting the unconsumed prefix as a stream reader would.
        let mut got = vec![];
        let mut buf: Vec<u8> = vec![];
        for &b in &wire {
            buf.push(b);
            if let Some(r) = o.open(&mut buf).unwrap() {
                let f = Frame::new_checked(&buf[r.frame.clone()]).unwrap();
                got.push(f.payload().to_vec());
                buf.drain(..r.consumed);
            }
        }
        assert_eq!(got, vec![b"abc".to_vec(), b"defg".to_vec()]);
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let (mut s, _) = pair();
        let mut wire = vec![];
        s.seal(&mut wire, &data(b"tamper me"), 0);
        for i in 0..wire.len() {
            let mut w = wire.clone();
            w[i] ^= 0x01;
            let mut o = Opener::new(CHACHA, [1u8; 32]);
            let r = o.open(&mut w);
            assert!(
                matches!(r, Err(_) | Ok(None)),
                "flip at {i} must not yield a record"
            );
        }
    }

    #[test]
    fn replay_reorder_truncation_rejected() {
        let (mut s, _) = pair();
        let mut a = vec![];
        s.seal(&mut a, &data(b"one"), 0);
        let mut b = vec![];
        s.seal(&mut b, &data(b"two"), 0);
        // Replay: the first record twice.
        let mut o = Opener::new(CHACHA, [1u8; 32]);
        let mut w = [a.clone(), a.clone()].concat();
        assert!(open_all(&mut o, &mut w).is_err());
        // Reorder: second before first.
        let mut o = Opener::new(CHACHA, [1u8; 32]);
        let mut w = [b.clone(), a.clone()].concat();
        assert!(open_all(&mut o, &mut w).is_err());
        // Truncation: a record cut short never yields data.
        let mut o = Opener::new(CHACHA, [1u8; 32]);
        let mut w = a[..a.len() - 1].to_vec();
        assert_eq!(open_all(&mut o, &mut w).unwrap(), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn key_update_both_sides() {
        let (mut s, mut o) = pair();
        let mut wire = vec![];
        s.seal(&mut wire, &FrameRepr::KeyUpdate, 0);
        s.update_key();
        s.seal(&mut wire, &data(b"after"), 0);
        let r = o.open(&mut wire).unwrap().unwrap();
        o.update_key();
        let rest = &mut wire[r.consumed..];
        let r2 = o.open(rest).unwrap().unwrap();
        assert_eq!(
            Frame::new_checked(&rest[r2.frame]).unwrap().payload(),
            b"after"
        );
        // A receiver that misses the update cannot read on.
        let (mut s, mut o) = pair();
        let mut wire = vec![];
        s.update_key();
        s.seal(&mut wire, &data(b"x"), 0);
        assert!(o.open(&mut wire).is_err());
    }

    #[test]
    fn bad_length_rejected() {
        let (_, mut o) = pair();
        // Find two bytes that unmask to 0 (below the minimum) by unmasking the first keystream.
        let mut ks = [0u8; 2];
        ChaCha20::new(
            (&blake2s_mac(&[1u8; 32], &[b"qnet/1 length mask"])).into(),
            (&[0u8; 12]).into(),
        )
        .apply_keystream(&mut ks);
        let mut w = ks.to_vec();
        assert_eq!(o.open(&mut w).unwrap_err(), RecordError::BadLength);
    }
}
