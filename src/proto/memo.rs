//! A one-entry cache of a costly pure function of secret input.
//!
//! A process talks to its relay with one static key, and the relay has one: each
//! handshake would otherwise derive the same static public key (a base-point X25519) and
//! the client the same admission key (a full X25519). The entry is compared in constant
//! time and its copies are zeroed when replaced or dropped by their owners.

use parking_lot::Mutex;
use subtle::ConstantTimeEq;

/// The last input and its value.
pub(crate) struct Memo<V>(Mutex<Option<([u8; 64], V)>>);

impl<V: Clone> Memo<V> {
    /// An empty memo (for a `static`).
    pub(crate) const fn new() -> Self {
        Memo(Mutex::new(None))
    }

    /// `f()` for input `key`: from the entry when it holds the same input, else computed
    /// (outside the lock) and kept.
    pub(crate) fn get(&self, key: [u8; 64], f: impl FnOnce() -> V) -> V {
        if let Some((k, v)) = &*self.0.lock()
            && bool::from(k.ct_eq(&key))
        {
            return v.clone();
        }
        let v = f();
        if let Some((old, _)) = self.0.lock().replace((key, v.clone())).as_mut() {
            *old = [0u8; 64];
            std::hint::black_box(old);
        }
        v
    }
}

/// Two 32-byte keys as one memo input.
pub(crate) fn pair(a: &[u8; 32], b: &[u8; 32]) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(a);
    k[32..].copy_from_slice(b);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_once_per_input_and_follows_a_new_one() {
        let m: Memo<u32> = Memo::new();
        let calls = std::cell::Cell::new(0);
        let get = |k: u8, v: u32| {
            m.get([k; 64], || {
                calls.set(calls.get() + 1);
                v
            })
        };
        assert_eq!(get(1, 10), 10);
        assert_eq!(get(1, 99), 10, "cached");
        assert_eq!(get(2, 20), 20);
        assert_eq!(get(1, 11), 11, "one entry: the first input was replaced");
        assert_eq!(calls.get(), 3);
    }
}
