//! The conditioner (BLAKE2s-256) and the fast-key-erasure ChaCha20 generator it seeds.

use blake2::{Blake2s256, Digest};
use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};

/// Domain label of the conditioner, so its output is never confused with another BLAKE2s use.
const LABEL: &[u8] = b"qnet entropy ring v1: seed";

/// Keystream bytes per refill: 16 ChaCha20 blocks, the first 32 bytes become the next key.
pub(crate) const BUF_LEN: usize = 1024;

/// Bytes served per refill.
pub(crate) const SERVED_PER_REFILL: usize = BUF_LEN - 32;

/// Hashes the untrusted path sources' bytes, then fresh OS bytes, into a 32-byte seed.
///
/// Each input is length-prefixed so no two different input lists collide by
/// concatenation. The OS bytes come last and are drawn after the other sources were
/// read, so a source cannot adapt to them: the seed is at least as unpredictable as
/// the OS bytes alone (BLAKE2s as a random oracle).
#[cfg(test)]
pub(crate) fn condition(counter: u64, sources: &[&[u8]], os: &[u8; 32]) -> [u8; 32] {
    let mut c = Conditioner::new(counter, sources.len());
    for s in sources {
        c.source(s);
    }
    c.finish(os)
}

/// [`condition`] in steps, so the path sources can be hashed under the pool's lock and
/// the OS bytes drawn after it is released.
pub(crate) struct Conditioner(Blake2s256);

impl Conditioner {
    /// Start a seed: label, counter, and how many sources follow.
    pub(crate) fn new(counter: u64, sources: usize) -> Conditioner {
        let mut h = Blake2s256::new();
        h.update((LABEL.len() as u64).to_le_bytes());
        h.update(LABEL);
        h.update(counter.to_le_bytes());
        h.update((sources as u64).to_le_bytes());
        Conditioner(h)
    }

    /// Add one untrusted source's bytes.
    pub(crate) fn source(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// Add the OS bytes last and produce the seed.
    pub(crate) fn finish(mut self, os: &[u8; 32]) -> [u8; 32] {
        self.0.update(os);
        self.0.finalize().into()
    }
}

/// ChaCha20 with fast key erasure: each refill replaces the key, so the state left in
/// memory never reveals bytes already served.
pub(crate) struct Generator {
    key: [u8; 32],
    buf: [u8; BUF_LEN],
    pos: usize,
}

impl Generator {
    /// A generator keyed with `seed`, with nothing buffered yet.
    pub(crate) fn new(seed: [u8; 32]) -> Generator {
        Generator {
            key: seed,
            buf: [0; BUF_LEN],
            pos: BUF_LEN,
        }
    }

    /// Bytes left to serve before the next refill.
    pub(crate) fn available(&self) -> usize {
        BUF_LEN - self.pos
    }

    /// Generate the next buffer: the old key is used once and overwritten.
    pub(crate) fn refill(&mut self) {
        // Served bytes are zero already; only an unserved tail (after a draw that did not
        // fit) is not, and it is discarded.
        self.buf[self.pos..].fill(0);
        // A key is used for one buffer only, so the all-zero nonce never repeats under it.
        let mut c = ChaCha20::new(&self.key.into(), &[0u8; 12].into());
        c.apply_keystream(&mut self.buf);
        self.key.copy_from_slice(&self.buf[..32]);
        self.buf[..32].fill(0);
        self.pos = 32;
    }

    /// Copy up to `dst.len()` buffered bytes into `dst`, zeroing them here; returns how many.
    pub(crate) fn take(&mut self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.available());
        let src = &mut self.buf[self.pos..self.pos + n];
        dst[..n].copy_from_slice(src);
        src.fill(0);
        self.pos += n;
        n
    }

    /// The next 8 buffered bytes, if there are 8.
    #[inline]
    pub(crate) fn take_u64(&mut self) -> Option<u64> {
        let src = self.buf.get_mut(self.pos..self.pos + 8)?;
        let v = u64::from_le_bytes(src.try_into().expect("8 bytes"));
        src.fill(0);
        self.pos += 8;
        Some(v)
    }

    /// Replace the key with `seed` and drop whatever was buffered under the old one.
    pub(crate) fn rekey(&mut self, seed: [u8; 32]) {
        self.wipe();
        self.key = seed;
    }

    /// Forget everything: key and unserved bytes.
    pub(crate) fn wipe(&mut self) {
        self.key.fill(0);
        self.buf.fill(0);
        self.pos = BUF_LEN;
        // Keep the stores: nothing reads the buffer again before it is freed.
        std::hint::black_box(&mut *self);
    }

    #[cfg(test)]
    fn key(&self) -> [u8; 32] {
        self.key
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.wipe();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditioner_is_deterministic_and_sensitive_to_every_input() {
        let a = [1u8; 40];
        let b = [2u8; 7];
        let os = [3u8; 32];
        let base = condition(5, &[&a, &b], &os);
        assert_eq!(base, condition(5, &[&a, &b], &os));
        let mut changed = vec![condition(6, &[&a, &b], &os)];
        let mut os2 = os;
        os2[31] ^= 1;
        changed.push(condition(5, &[&a, &b], &os2));
        for i in 0..a.len() {
            let mut a2 = a;
            a2[i] ^= 0x80;
            changed.push(condition(5, &[&a2, &b], &os));
        }
        for i in 0..b.len() {
            let mut b2 = b;
            b2[i] ^= 1;
            changed.push(condition(5, &[&a, &b2], &os));
        }
        // Same bytes, different split between sources, or a source missing.
        changed.push(condition(5, &[&a[..39], &[1, 2, 2, 2, 2, 2, 2, 2]], &os));
        changed.push(condition(5, &[&a], &os));
        changed.push(condition(5, &[&a, &b, &[]], &os));
        changed.push(condition(5, &[], &os));
        for (i, c) in changed.iter().enumerate() {
            assert_ne!(*c, base, "change {i} did not change the seed");
        }
        let mut all = changed.clone();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), changed.len());
    }

    #[test]
    fn fast_key_erasure() {
        let mut g = Generator::new([9; 32]);
        assert_eq!(g.available(), 0);
        let mut keys = vec![g.key()];
        let mut out = Vec::new();
        for _ in 0..4 {
            g.refill();
            assert_eq!(g.available(), SERVED_PER_REFILL);
            // The new key is the first 32 keystream bytes of the old one, which are never served.
            let mut expect = [0u8; 64];
            let mut c = ChaCha20::new(&(*keys.last().unwrap()).into(), &[0u8; 12].into());
            c.apply_keystream(&mut expect);
            assert_eq!(g.key(), expect[..32]);
            keys.push(g.key());
            let mut chunk = vec![0u8; SERVED_PER_REFILL];
            assert_eq!(g.take(&mut chunk), SERVED_PER_REFILL);
            assert_eq!(chunk[..32], expect[32..]);
            assert_eq!(g.take(&mut chunk), 0);
            // Served bytes are gone from the buffer.
            assert!(g.buf.iter().all(|&b| b == 0));
            out.extend(chunk);
        }
        let mut k = keys.clone();
        k.sort();
        k.dedup();
        assert_eq!(k.len(), keys.len());
        // The output does not contain any key.
        for key in &keys {
            assert!(!out.windows(32).any(|w| w == key));
        }
    }

    #[test]
    fn take_u64_matches_take() {
        let mut a = Generator::new([4; 32]);
        let mut b = Generator::new([4; 32]);
        a.refill();
        b.refill();
        let mut bytes = [0u8; 8];
        for _ in 0..SERVED_PER_REFILL / 8 {
            b.take(&mut bytes);
            assert_eq!(a.take_u64(), Some(u64::from_le_bytes(bytes)));
        }
        assert_eq!(a.take_u64(), None);
    }
}
