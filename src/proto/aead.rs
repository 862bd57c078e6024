//! The one seal/open pair every record goes through, so the AEAD backend can be
//! swapped without touching the record layer. benches/core decided for ring (feature
//! `aead-ring`, on by default); `--no-default-features` builds the chacha20poly1305 crate.

/// Authentication tag length.
pub const TAG_LEN: usize = 16;

/// Authentication failed: the record was tampered with, truncated, replayed or reordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFailed;

/// A ChaCha20-Poly1305 key for one direction; nonces are 4 zero bytes then a little-endian counter.
pub struct AeadKey {
    #[cfg(not(feature = "aead-ring"))]
    inner: chacha20poly1305::ChaCha20Poly1305,
    #[cfg(feature = "aead-ring")]
    inner: ring::aead::LessSafeKey,
}

fn nonce_bytes(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

impl AeadKey {
    /// Wrap a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        #[cfg(not(feature = "aead-ring"))]
        {
            use chacha20poly1305::KeyInit;
            AeadKey {
                inner: chacha20poly1305::ChaCha20Poly1305::new(key.into()),
            }
        }
        #[cfg(feature = "aead-ring")]
        {
            let k = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key)
                .expect("32-byte key");
            AeadKey {
                inner: ring::aead::LessSafeKey::new(k),
            }
        }
    }

    /// Encrypt `buf` in place under nonce `counter`; returns the tag.
    pub fn seal(&self, counter: u64, buf: &mut [u8]) -> [u8; TAG_LEN] {
        let n = nonce_bytes(counter);
        #[cfg(not(feature = "aead-ring"))]
        {
            use chacha20poly1305::AeadInPlace;
            let tag = self
                .inner
                .encrypt_in_place_detached((&n).into(), &[], buf)
                .expect("record within AEAD limits");
            tag.into()
        }
        #[cfg(feature = "aead-ring")]
        {
            let tag = self
                .inner
                .seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(n),
                    ring::aead::Aad::empty(),
                    buf,
                )
                .expect("record within AEAD limits");
            let mut t = [0u8; TAG_LEN];
            t.copy_from_slice(tag.as_ref());
            t
        }
    }

    /// Decrypt `buf` (ciphertext then tag) in place; on success the plaintext is `buf[..len - TAG_LEN]`.
    pub fn open(&self, counter: u64, buf: &mut [u8]) -> Result<(), OpenFailed> {
        if buf.len() < TAG_LEN {
            return Err(OpenFailed);
        }
        let n = nonce_bytes(counter);
        #[cfg(not(feature = "aead-ring"))]
        {
            use chacha20poly1305::AeadInPlace;
            let (ct, tag) = buf.split_at_mut(buf.len() - TAG_LEN);
            self.inner
                .decrypt_in_place_detached((&n).into(), &[], ct, (&*tag).into())
                .map_err(|_| OpenFailed)
        }
        #[cfg(feature = "aead-ring")]
        {
            self.inner
                .open_in_place(
                    ring::aead::Nonce::assume_unique_for_key(n),
                    ring::aead::Aad::empty(),
                    buf,
                )
                .map(|_| ())
                .map_err(|_| OpenFailed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8439 §2.8.2 is AAD-bearing; this pins our nonce layout and empty-AAD use instead,
    /// so both backends must produce these exact bytes.
    #[test]
    fn golden_seal() {
        let k = AeadKey::new(&[7u8; 32]);
        let mut buf = *b"qnet";
        let tag = k.seal(1, &mut buf);
        let hex: String = buf.iter().chain(&tag).map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "cb3d55141f6859329b3de20490ba61a492dc10b0");
        let mut rec = buf.to_vec();
        rec.extend_from_slice(&tag);
        assert_eq!(k.open(1, &mut rec), Ok(()));
        assert_eq!(&rec[..4], b"qnet");
        let mut rec2 = buf.to_vec();
        rec2.extend_from_slice(&tag);
        assert_eq!(
            k.open(2, &mut rec2),
            Err(OpenFailed),
            "wrong counter must fail"
        );
    }
}
