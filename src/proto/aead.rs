//! The one seal/open pair every record goes through, so the AEAD backend can be
//! swapped without touching the record layer. benches/core decided for ring (feature
//! `aead-ring`, on by default); `--no-default-features` builds the chacha20poly1305 crate,
//! which has ChaCha20-Poly1305 only, so that build never offers AES-256-GCM.

/// Authentication tag length (both ciphers).
pub const TAG_LEN: usize = 16;

/// Authentication failed: the record was tampered with, truncated, replayed or reordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFailed;

/// The records' AEAD, chosen by the handshake (docs/PROTOCOL.md, section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// ChaCha20-Poly1305 (RFC 8439): always available, the choice unless both ends offer AES.
    ChaCha20Poly1305,
    /// AES-256-GCM: where both ends run AES and carry-less multiplication in hardware.
    Aes256Gcm,
}

/// The transport parameters' `ciphers` bit that offers AES-256-GCM.
pub const OFFER_AES_256_GCM: u8 = 0x01;

/// Records under one AES-256-GCM key before the sender must rekey: TLS 1.3's margin is
/// 2^24.5 full-size records (RFC 8446, section 5.5).
const AES_GCM_MAX_RECORDS: u64 = 1 << 24;

impl Cipher {
    /// The `ciphers` byte this end sends: AES-256-GCM offered when `allow_aes`, the
    /// backend has it and this CPU runs it in hardware (a software AES is slower than
    /// ChaCha20 and hard to make constant-time).
    pub fn offer(allow_aes: bool) -> u8 {
        if allow_aes && cfg!(feature = "aead-ring") && hardware_aes() {
            OFFER_AES_256_GCM
        } else {
            0
        }
    }

    /// The cipher two `ciphers` bytes agree on; both ends compute the same from the
    /// same two bytes, which the handshake transcript covers.
    pub fn agree(ours: u8, theirs: u8) -> Cipher {
        if ours & theirs & OFFER_AES_256_GCM != 0 {
            Cipher::Aes256Gcm
        } else {
            Cipher::ChaCha20Poly1305
        }
    }

    /// Records a sender may seal under one key of this cipher, whatever its config says.
    pub fn max_records(self) -> u64 {
        match self {
            Cipher::ChaCha20Poly1305 => u64::MAX,
            Cipher::Aes256Gcm => AES_GCM_MAX_RECORDS,
        }
    }

    /// The record key's derivation label (docs/PROTOCOL.md, section 3).
    pub fn record_key_label(self) -> &'static [u8] {
        match self {
            Cipher::ChaCha20Poly1305 => b"qnet/1 record key",
            Cipher::Aes256Gcm => b"qnet/5 record key AES-256-GCM",
        }
    }

    /// The name `qnet status` and the logs show.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes256Gcm => "aes-256-gcm",
        }
    }
}

/// Does this CPU run AES-256-GCM in hardware (AES rounds and the GHASH multiply)?
/// Detected once; the std macros cache what they read.
pub fn hardware_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// One direction's record key; nonces are 4 zero bytes then a little-endian counter.
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
    /// Wrap a 32-byte ChaCha20-Poly1305 key.
    pub fn new(key: &[u8; 32]) -> Self {
        Self::with(Cipher::ChaCha20Poly1305, key)
    }

    /// Wrap a 32-byte key of `cipher`.
    ///
    /// # Panics
    /// For AES-256-GCM in a build without `aead-ring`, which never offers it, so a
    /// handshake never agrees on it.
    pub fn with(cipher: Cipher, key: &[u8; 32]) -> Self {
        #[cfg(not(feature = "aead-ring"))]
        {
            use chacha20poly1305::KeyInit;
            assert_eq!(
                cipher,
                Cipher::ChaCha20Poly1305,
                "AES-256-GCM is never offered without aead-ring"
            );
            AeadKey {
                inner: chacha20poly1305::ChaCha20Poly1305::new(key.into()),
            }
        }
        #[cfg(feature = "aead-ring")]
        {
            let alg = match cipher {
                Cipher::ChaCha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
                Cipher::Aes256Gcm => &ring::aead::AES_256_GCM,
            };
            let k = ring::aead::UnboundKey::new(alg, key).expect("32-byte key");
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

    /// The same under AES-256-GCM (docs/PROTOCOL.md, section 8; Python's cryptography
    /// package gives the same bytes).
    #[cfg(feature = "aead-ring")]
    #[test]
    fn golden_seal_aes_256_gcm() {
        let k = AeadKey::with(Cipher::Aes256Gcm, &[7u8; 32]);
        let mut buf = *b"qnet";
        let tag = k.seal(1, &mut buf);
        let hex: String = buf.iter().chain(&tag).map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "4ef416bec63abafeee31995a814a323b50b0d1c1");
        let mut rec = [&buf[..], &tag[..]].concat();
        assert_eq!(k.open(1, &mut rec), Ok(()));
        let mut rec = [&buf[..], &tag[..]].concat();
        let chacha = AeadKey::with(Cipher::ChaCha20Poly1305, &[7u8; 32]);
        assert_eq!(chacha.open(1, &mut rec), Err(OpenFailed));
    }

    /// AES-256-GCM only when both ends offer it; unknown bits change nothing.
    #[test]
    fn agree_needs_both_offers() {
        use Cipher::*;
        let aes = OFFER_AES_256_GCM;
        assert_eq!(Cipher::agree(aes, aes), Aes256Gcm);
        assert_eq!(Cipher::agree(aes, 0), ChaCha20Poly1305);
        assert_eq!(Cipher::agree(0, aes), ChaCha20Poly1305);
        assert_eq!(Cipher::agree(0, 0), ChaCha20Poly1305);
        assert_eq!(Cipher::agree(0xfe, 0xfe), ChaCha20Poly1305);
        assert_eq!(Cipher::agree(0xff, aes), Aes256Gcm);
        assert_eq!(Cipher::offer(false), 0, "config said chacha20-poly1305");
        assert_eq!(
            Cipher::offer(true) != 0,
            cfg!(feature = "aead-ring") && hardware_aes()
        );
    }
}
