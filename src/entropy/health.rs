//! NIST SP 800-90B continuous health tests (section 4.4) on 8-bit samples.
//!
//! Both tests use a false-positive probability α = 2⁻²⁰ per sample (RCT) or per window
//! (APT) for a source that really has the claimed min-entropy `H` per sample.

use std::fmt;

/// The APT window for non-binary samples (SP 800-90B 4.4.2).
pub const APT_WINDOW: u32 = 512;

/// -log2(α): the tests' false-positive probability is 2⁻²⁰.
const ALPHA_LOG2: f64 = 20.0;

/// Repetition Count Test cutoff: a run of this many identical samples fails.
///
/// C = 1 + ⌈20 / H⌉ (SP 800-90B 4.4.1 with α = 2⁻²⁰).
pub fn rct_cutoff(h: f64) -> u32 {
    1 + (ALPHA_LOG2 / h).ceil() as u32
}

/// Adaptive Proportion Test cutoff for a 512-sample window: this many copies of the
/// window's first sample (counting it) fail.
///
/// C = 1 + CRITBINOM(512, 2⁻ᴴ, 1 − α): the smallest k with P(X > k) ≤ α for
/// X ~ Binomial(512, 2⁻ᴴ), plus one (SP 800-90B 4.4.2). Computed in log space, as the
/// probabilities of the far tail underflow an f64 for small H.
pub fn apt_cutoff(h: f64) -> u32 {
    let n = APT_WINDOW;
    let p = libm::exp2(-h);
    if p >= 1.0 {
        // H = 0: every sample may be equal; the test can never fail.
        return n + 1;
    }
    let (lp, lq) = (libm::log(p), libm::log1p(-p));
    // ln P(X = k) for k = 0..=n by the ratio P(k+1)/P(k) = (n-k)/(k+1) · p/q.
    let mut ln_pmf = Vec::with_capacity(n as usize + 1);
    let mut l = f64::from(n) * lq;
    for k in 0..=n {
        ln_pmf.push(l);
        l += libm::log(f64::from(n - k)) - libm::log(f64::from(k + 1)) + lp - lq;
    }
    // Sum the upper tail from the top down so small terms are not lost.
    let alpha = libm::exp2(-ALPHA_LOG2);
    let mut tail = 0.0; // P(X > k)
    for k in (0..=n).rev() {
        if tail > alpha {
            return k + 2; // k+1 was the last value with P(X > k+1) ≤ α
        }
        tail += libm::exp(ln_pmf[k as usize]);
    }
    1
}

/// Why a health test rejected a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthFailure {
    /// The Repetition Count Test saw this many identical samples in a row.
    Repetition {
        /// Length of the run.
        run: u32,
    },
    /// The Adaptive Proportion Test saw `count` copies of one value within a window.
    Proportion {
        /// Copies of the window's first sample.
        count: u32,
    },
}

impl fmt::Display for HealthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthFailure::Repetition { run } => {
                write!(f, "repetition count test failed ({run} identical samples)")
            }
            HealthFailure::Proportion { count } => write!(
                f,
                "adaptive proportion test failed ({count} equal samples in a window of {APT_WINDOW})"
            ),
        }
    }
}

/// Both continuous tests over one source's stream of 8-bit samples.
#[derive(Debug, Clone)]
pub struct HealthTest {
    rct_cutoff: u32,
    apt_cutoff: u32,
    last: Option<u8>,
    run: u32,
    apt_value: u8,
    apt_count: u32,
    apt_seen: u32,
}

impl HealthTest {
    /// Tests for a source claiming `h` bits of min-entropy per byte (0 < h ≤ 8).
    pub fn new(h: f64) -> HealthTest {
        HealthTest {
            rct_cutoff: rct_cutoff(h),
            apt_cutoff: apt_cutoff(h),
            last: None,
            run: 0,
            apt_value: 0,
            apt_count: 0,
            apt_seen: 0,
        }
    }

    /// Feed one sample; an error means the source must be treated as failed.
    pub fn feed(&mut self, s: u8) -> Result<(), HealthFailure> {
        if self.last == Some(s) {
            self.run += 1;
        } else {
            self.last = Some(s);
            self.run = 1;
        }
        // The APT restarts at every window boundary with the window's first sample.
        if self.apt_seen == 0 {
            self.apt_value = s;
            self.apt_count = 1;
        } else if s == self.apt_value {
            self.apt_count += 1;
        }
        self.apt_seen = (self.apt_seen + 1) % APT_WINDOW;
        if self.run >= self.rct_cutoff {
            return Err(HealthFailure::Repetition { run: self.run });
        }
        if self.apt_count >= self.apt_cutoff {
            return Err(HealthFailure::Proportion {
                count: self.apt_count,
            });
        }
        Ok(())
    }

    /// Feed every byte of `samples`, stopping at the first failure.
    pub fn feed_all(&mut self, samples: &[u8]) -> Result<(), HealthFailure> {
        samples.iter().try_for_each(|&s| self.feed(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    #[test]
    fn cutoffs_match_sp800_90b() {
        // SP 800-90B table 2 (α = 2⁻²⁰, W = 512) and the RCT formula.
        assert_eq!(apt_cutoff(8.0), 13);
        assert_eq!(apt_cutoff(4.0), 62);
        assert_eq!(apt_cutoff(2.0), 177);
        assert_eq!(apt_cutoff(0.5), 410);
        assert_eq!(rct_cutoff(8.0), 4);
        assert_eq!(rct_cutoff(4.0), 6);
        assert_eq!(rct_cutoff(1.0), 21);
        assert_eq!(rct_cutoff(6.0), 5);
        // Tiny claims: the binomial tail underflows without log space.
        assert!(apt_cutoff(0.05) > 500);
        assert_eq!(apt_cutoff(0.0), APT_WINDOW + 1);
    }

    #[test]
    fn stuck_source_fails_rct_at_cutoff() {
        for h in [8.0, 4.0, 1.0] {
            let mut t = HealthTest::new(h);
            let n = (0..APT_WINDOW)
                .position(|_| t.feed(0x5a).is_err())
                .expect("a stuck source must fail within one window")
                + 1;
            assert_eq!(n as u32, rct_cutoff(h), "H = {h}");
        }
    }

    #[test]
    fn repeats_below_cutoff_pass() {
        // Runs of 3 (the cutoff is 4), each value back only after 768 samples.
        let mut t = HealthTest::new(8.0);
        for i in 0..100_000u32 {
            t.feed((i / 3) as u8).unwrap();
        }
    }

    #[test]
    fn biased_source_fails_apt_within_a_window() {
        // 90 % one value, the rest spread and never repeated twice in a row: only the
        // APT can see it.
        let mut t = HealthTest::new(4.0);
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut fed = 0;
        let err = loop {
            let s = if rng.next_u32() % 10 == 0 {
                1 + (fed % 200) as u8
            } else {
                0
            };
            // Break runs so the RCT (cutoff 6 at H = 4) does not fire first.
            let s = if fed % 5 == 4 { 255 } else { s };
            fed += 1;
            if let Err(e) = t.feed(s) {
                break e;
            }
            assert!(fed <= 2 * APT_WINDOW, "never rejected");
        };
        assert!(
            matches!(err, HealthFailure::Proportion { count: 62 }),
            "{err}"
        );
        assert!(fed <= 2 * APT_WINDOW);
        assert!(
            err.to_string()
                .starts_with("adaptive proportion test failed")
        );
    }

    #[test]
    fn healthy_source_passes_a_megabyte() {
        for h in [8.0, 4.0] {
            // A fixed seed: the test checks the cutoffs, not luck (at H = 8 a perfect
            // source trips α = 2⁻²⁰ tests now and then over 2²⁰ samples).
            let mut rng = ChaCha20Rng::seed_from_u64(1);
            let mut t = HealthTest::new(h);
            let mut buf = vec![0u8; 1 << 20];
            rng.fill_bytes(&mut buf);
            t.feed_all(&buf).unwrap();
        }
    }

    #[test]
    fn failure_messages() {
        let mut t = HealthTest::new(8.0);
        let e = t.feed_all(&[0; 10]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "repetition count test failed (4 identical samples)"
        );
    }
}
