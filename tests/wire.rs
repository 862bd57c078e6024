//! Wire uniformity: what a real client and a real `qnet-relay` send in their first
//! flights must look, to an observer without keys, like uniform random bytes of drawn
//! lengths (docs/PROTOCOL.md, sections 1–2). [`SESSIONS`] handshakes run over loopback;
//! each direction's flights (the client's msg1 + pad1, the relay's masked ML-KEM
//! ciphertext + msg2 + pad2) are pooled and tested: chi-squared over byte values and
//! over 10- and 12-bit fields (ML-KEM's ciphertext is 10-bit compressed coefficients
//! and its encapsulation key 12-bit ones below 3329: the shapes the mask and the AEAD
//! must hide), the balance of every bit position of the fixed part across flights (a
//! stuck bit, such as a representative's top bit left clear, is invisible in pooled
//! counts), and the spread of the flights' lengths.
//!
//! Counting sees only frequencies, not algebra, so the 32 bytes each flight sends in
//! place of its X25519 ephemeral key (the client's bytes 0..32, the relay's 1088..1120:
//! Elligator2 representatives, section 2) are also read as an observer who knows the
//! curve would read them: as X25519 u-coordinates (how many lie on the curve rather than
//! its twist, about half of random strings, and how many in its prime-order subgroup, one
//! random string in sixteen but every key made the usual way), as representatives (how
//! many decode to a point of that subgroup: one random string in eight, but every
//! representative of a clean key), and by the four values of their top two bits, which
//! decoding ignores. A second test feeds the same checks the bytes of a protocol
//! without the mask, without msg1's encryption, without drawn top bits, without pads,
//! with plain X25519 keys (drawn top bit and all, as qnet sent them before
//! representatives), with representatives of clean keys or of dirty keys never clean,
//! and with top bits drawn as one bit twice, and requires each to be rejected (the
//! altered keys by exactly the checks meant to see them) and qnet's own representatives
//! to pass, so neither test passes vacuously.
//!
//! Every check's false-alarm probability is at most about 10⁻⁸, so the eighteen checks
//! of a run (nine a direction) raise a false alarm about once in 5·10⁶ runs: the eight
//! on the key fields use exact binomial tails, and even with a tenfold margin for the
//! approximations of the ten others (below) a run fails falsely with probability about
//! 10⁻⁶; the second test, which also requires the checks not meant to see an altered
//! key to pass, about as rarely. What the checks cannot see: a bias weaker than their
//! power (noted at each); of a decoded key's low-order part, whether it is the identity
//! but not which of the other seven points it is (a sender that drew from fewer of them,
//! the identity still one time in eight, would pass; a u-coordinate shows a point only
//! up to sign anyway); relations between flights, such as a key sent twice; and what
//! only a secret shows: that the bytes after a key are encrypted under a Diffie-Hellman
//! secret of it, that the masked ciphertext is one, that the relay's key answers the
//! client's.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{start_relay_with, tempdir};
use curve25519_elligator2::{MontgomeryPoint, representative_from_privkey};
use qnet::keys::PrivateKey;
use qnet::proto::elligator::Ephemeral;
use qnet::proto::kem::{self, CT_LEN, EK_LEN, KeyPair};
use qnet::proto::mask::PAD_MAX;
use qnet::proto::noise::{MSG1_LEN, REPLY_LEN, public_key};
use qnet::proto::{OsRandom, Random, Role, Session, SessionConfig};

/// Handshakes per run: at ~1.4 KB a flight, ~0.6 MB per direction, ≥ 90 expected
/// counts in each of the 4096 12-bit bins.
const SESSIONS: usize = 400;
/// Each check's false-alarm probability (eighteen checks a run).
const ALPHA: f64 = 1e-8;
/// The standard normal quantile of 1 − [`ALPHA`] (P(Z > 5.6) = 1.07·10⁻⁸).
const Z: f64 = 5.6;
/// Field widths of the chi-squared tests: bytes, ML-KEM's ciphertext coefficients
/// (10 bits) and its encapsulation key's (12).
const WIDTHS: [u32; 3] = [8, 10, 12];
/// Where msg1's payload would put the encapsulation key in clear: it ends the payload,
/// before the 16-byte AEAD tag. 60 bytes = 40 12-bit fields, so its coefficients would
/// land whole in the fields [`field_counts`] reads.
const EK_AT: usize = MSG1_LEN - 16 - EK_LEN;

/// Which check a [`Verdict`] is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stat {
    /// Chi-squared over the fields of this many bits.
    Fields(u32),
    /// The balance of each bit position of the fixed part across flights.
    Positions,
    /// The spread of the flights' lengths.
    Lengths,
    /// How many key fields, read as u-coordinates, lie on the curve.
    OnCurve,
    /// How many key fields, read as u-coordinates, lie in the prime-order subgroup.
    Subgroup,
    /// How many key fields, decoded as representatives, give a point of that subgroup.
    Decoded,
    /// How often each value of the key fields' top two bits occurs.
    TopBits,
}

/// One check's outcome, with the numbers that decided it.
struct Verdict {
    stat: Stat,
    ok: bool,
    says: String,
}

/// One direction's first flights: their fixed part's length, where the ephemeral key's
/// representative is, and the bytes.
struct Flights {
    name: &'static str,
    fixed: usize,
    key: usize,
    flights: Vec<Vec<u8>>,
}

impl Flights {
    /// A client's: msg1 (its representative first) and pad1.
    fn client(name: &'static str, flights: Vec<Vec<u8>>) -> Flights {
        Flights {
            name,
            fixed: MSG1_LEN,
            key: 0,
            flights,
        }
    }

    /// A relay's: the masked ciphertext, then msg2 (its representative first) and pad2.
    fn relay(name: &'static str, flights: Vec<Vec<u8>>) -> Flights {
        Flights {
            name,
            fixed: REPLY_LEN,
            key: CT_LEN,
            flights,
        }
    }

    /// Each flight's 32 bytes in the place of an ephemeral key.
    fn keys(&self) -> Vec<[u8; 32]> {
        self.flights
            .iter()
            .map(|f| f[self.key..self.key + 32].try_into().expect("32 bytes"))
            .collect()
    }
}

fn client_session(relay_public: [u8; 32], key: &PrivateKey) -> Session {
    Session::new(
        Instant::now(),
        SessionConfig::default(),
        Role::Client { relay_public },
        key.as_bytes(),
        Box::new(OsRandom),
    )
}

/// One real handshake: the client's first flight (all it sends before reading) and the
/// relay's (all it sends before msg3, which is exactly what the client reads until it is
/// established), then msg3 and the close.
fn handshake(addr: SocketAddr, relay_public: [u8; 32], key: &PrivateKey) -> (Vec<u8>, Vec<u8>) {
    let mut s = client_session(relay_public, key);
    let client = s.transmit().to_vec();
    s.transmit_done(client.len());
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(&client).unwrap();
    let mut relay = Vec::new();
    let mut buf = [0u8; 4096];
    while !s.is_established() {
        let n = sock.read(&mut buf).expect("the relay answers");
        assert!(n > 0, "the relay closed mid-handshake");
        s.handle_input(Instant::now(), &buf[..n]).unwrap();
        relay.extend_from_slice(&buf[..n]);
    }
    sock.write_all(s.transmit()).unwrap();
    (client, relay)
}

/// How often each value of the `width`-bit fields occurs: each flight is read from its
/// first byte as a bit stream, least significant bit first (FIPS 203's ByteEncode order,
/// so a coefficient at a field boundary fills one field), and its last partial field is
/// dropped. Width 8 counts bytes.
fn field_counts(flights: &[Vec<u8>], width: u32) -> Vec<u64> {
    let mask = (1u32 << width) - 1;
    let mut counts = vec![0u64; 1 << width];
    for flight in flights {
        let (mut acc, mut bits) = (0u32, 0u32);
        for &b in flight {
            acc |= u32::from(b) << bits;
            bits += 8;
            while bits >= width {
                counts[(acc & mask) as usize] += 1;
                acc >>= width;
                bits -= width;
            }
        }
    }
    counts
}

/// Pearson's statistic of `counts` against equal probabilities.
fn chi_squared(counts: &[u64]) -> f64 {
    let expect = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    counts
        .iter()
        .map(|&c| (c as f64 - expect).powi(2) / expect)
        .sum()
}

/// The chi-squared value with `df` degrees of freedom exceeded with probability
/// [`ALPHA`], by Wilson–Hilferty: (X/df)^(1/3) is close to normal with mean 1 − 2/(9·df)
/// and variance 2/(9·df). At df 255, 1023 and 4095 and z = 5.6 the exact tails (the
/// regularized incomplete gamma function, computed with mpmath) are 1.01, 1.06 and
/// 1.07·10⁻⁸. Pearson's statistic follows the chi-squared law closely with ≥ 90
/// expected counts per bin (its variance is 2·df·(1 − 1/n), slightly less).
fn chi_squared_bound(df: f64) -> f64 {
    let v = 2.0 / (9.0 * df);
    df * (1.0 - v + Z * v.sqrt()).powi(3)
}

/// Chi-squared over `width`-bit fields. Power, at 400 flights: an unmasked ML-KEM
/// ciphertext (768 10-bit fields whose values have 3 or 4 preimages below 3329: a
/// noncentrality of 0.0178 per field) adds ~8.7–9.4 per flight to the 10-bit statistic,
/// ~3,500 in all against a bound of 1,297 (rejected half the time from ~30 flights, always
/// from ~60); an encapsulation key in clear (768 12-bit fields below 3329: 0.23 each) adds
/// ~135 per flight, ~54,000 against 4,622 (always rejected from ~8 flights). Bytes: a
/// bias is seen once 0.6 MB · Σ(p − 1/256)²·256 exceeds ~150 (half the time) to ~260
/// (always), e.g. with every byte value's probability 2% above or below 1/256.
fn fields(flights: &[Vec<u8>], width: u32) -> Verdict {
    let counts = field_counts(flights, width);
    let x2 = chi_squared(&counts);
    let bound = chi_squared_bound(counts.len() as f64 - 1.0);
    Verdict {
        stat: Stat::Fields(width),
        ok: x2 <= bound,
        says: format!(
            "{width}-bit fields ({} of them): chi-squared {x2:.1}, bound {bound:.1} (df {})",
            counts.iter().sum::<u64>(),
            counts.len() - 1
        ),
    }
}

/// Every bit of the first `fixed` bytes is 1 in about half the flights. Each count of
/// ones is Binomial(n, 1/2) under uniformity, so by Hoeffding a count strays t from n/2
/// with probability ≤ 2·exp(−2t²/n); over the 8·fixed positions the bound t with
/// 16·fixed·exp(−2t²/n) = [`ALPHA`] holds for all at once. Power: at 400 flights t ≈ 75,
/// so a stuck bit (200 off) or a bit set with probability outside ~0.3–0.7 is rejected.
fn positions(flights: &[Vec<u8>], fixed: usize) -> Verdict {
    let n = flights.len() as f64;
    let bits = 8 * fixed;
    let mut ones = vec![0u32; bits];
    for flight in flights {
        for (i, one) in ones.iter_mut().enumerate() {
            *one += u32::from((flight[i / 8] >> (i % 8)) & 1);
        }
    }
    let (at, dev) = ones
        .iter()
        .map(|&c| (f64::from(c) - n / 2.0).abs())
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("a fixed part");
    let bound = (n / 2.0 * (2.0 * bits as f64 / ALPHA).ln()).sqrt();
    Verdict {
        stat: Stat::Positions,
        ok: dev <= bound,
        says: format!(
            "bit positions of bytes 0..{fixed}: largest |ones − n/2| {dev:.0} (byte {} bit {}), bound {bound:.1}",
            at / 8,
            at % 8
        ),
    }
}

/// The lengths lie in [fixed, fixed + PAD_MAX] and take many values. With pads uniform
/// over m = 512 lengths, n flights show m·(1 − (1 − 1/m)ⁿ) distinct ones on average
/// (~278 at n = 400, standard deviation ~7); one flight changes the count by at most 1,
/// so by McDiarmid it falls t below that with probability ≤ exp(−2t²/n), [`ALPHA`] at
/// t = √(n·ln(1/ALPHA)/2) (~61 at 400: at least ~217). Power: pads drawn from half the
/// range (256 lengths: ~203 distinct on average) are rejected nearly always, a fixed
/// length always.
fn lengths(flights: &[Vec<u8>], fixed: usize) -> Verdict {
    let n = flights.len() as f64;
    let mut lens: Vec<usize> = flights.iter().map(Vec::len).collect();
    lens.sort_unstable();
    let (min, max) = (lens[0], lens[lens.len() - 1]);
    lens.dedup();
    let distinct = lens.len();
    let m = (PAD_MAX + 1) as f64;
    let expect = m * (1.0 - (1.0 - 1.0 / m).powf(n));
    let floor = expect - (n * (1.0 / ALPHA).ln() / 2.0).sqrt();
    Verdict {
        stat: Stat::Lengths,
        ok: distinct as f64 >= floor && min >= fixed && max <= fixed + PAD_MAX,
        says: format!(
            "lengths: {distinct} distinct (at least {floor:.0}; {expect:.0} expected), from {min} to {max} (allowed {fixed} to {})",
            fixed + PAD_MAX
        ),
    }
}

/// Where an X25519 u-coordinate (RFC 7748: little-endian, the top bit ignored) lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lies {
    /// On the twist: no point of the curve has it.
    Twist,
    /// On the curve, off the prime-order subgroup.
    Curve,
    /// In the prime-order subgroup, as every base-point multiple.
    Subgroup,
}

/// Where `u` lies. Of the two points ±P with this u-coordinate `to_edwards` gives one;
/// both are in the subgroup or neither.
fn lies(u: MontgomeryPoint) -> Lies {
    match u.to_edwards(0) {
        None => Lies::Twist,
        Some(p) if p.is_torsion_free() => Lies::Subgroup,
        Some(_) => Lies::Curve,
    }
}

/// The counts [lo, hi] that a Binomial(n, p) count leaves with probability at most
/// `tail` on each side, from the exact probabilities (each term's logarithm summed, so
/// none underflows).
fn binomial_range(n: usize, p: f64, tail: f64) -> (usize, usize) {
    let mut ln_choose = 0.0;
    let pmf: Vec<f64> = (0..=n)
        .map(|k| {
            if k > 0 {
                ln_choose += ((n - k + 1) as f64 / k as f64).ln();
            }
            (ln_choose + k as f64 * p.ln() + (n - k) as f64 * (1.0 - p).ln()).exp()
        })
        .collect();
    // The first count, in the order of `ks`, at which the tail summed so far passes `tail`.
    let edge = |mut ks: Box<dyn Iterator<Item = usize>>| {
        let mut sum = 0.0;
        ks.find(|&k| {
            sum += pmf[k];
            sum > tail
        })
        .expect("the probabilities sum to 1")
    };
    (edge(Box::new(0..=n)), edge(Box::new((0..=n).rev())))
}

/// The check that `count` of `n` is a Binomial(n, p) count, two-sided, each tail at
/// most [`ALPHA`]/2: exact but for the true probabilities' deviation from `p`, about
/// 2⁻¹²⁷ here (the field has 2²⁵⁵ − 19 elements, the curve 2²⁵⁵ − 18 − t points with
/// |t| < 2¹²⁸).
fn binomial(stat: Stat, what: &str, count: usize, n: usize, p: f64) -> Verdict {
    let (lo, hi) = binomial_range(n, p, ALPHA / 2.0);
    Verdict {
        stat,
        ok: (lo..=hi).contains(&count),
        says: format!(
            "{what}: {count} of {n} (allowed {lo} to {hi}; {:.0} expected)",
            n as f64 * p
        ),
    }
}

/// The key fields read as u-coordinates: on the curve, half of random strings (as
/// Binomial(n, 1/2): 143 to 257 of 400), and in the prime-order subgroup, a sixteenth
/// (3 to 57), where plain X25519 keys, all of them, are. Power at 400: a sender whose
/// fields are on the curve with probability above 0.64 (below 0.36) is rejected half the
/// time, above 0.70 (below 0.30) nearly always; in the subgroup, above 0.145 or below
/// 0.006 half the time, above 0.19 or below 0.001 nearly always.
fn u_coordinates(keys: &[[u8; 32]]) -> [Verdict; 2] {
    let lie: Vec<Lies> = keys.iter().map(|&k| lies(MontgomeryPoint(k))).collect();
    let on = lie.iter().filter(|&&l| l != Lies::Twist).count();
    let sub = lie.iter().filter(|&&l| l == Lies::Subgroup).count();
    [
        binomial(
            Stat::OnCurve,
            "keys as u-coordinates on the curve",
            on,
            keys.len(),
            0.5,
        ),
        binomial(
            Stat::Subgroup,
            "keys as u-coordinates in the prime-order subgroup",
            sub,
            keys.len(),
            1.0 / 16.0,
        ),
    ]
}

/// The key fields decoded as representatives (RFC 9380's map, the top two bits ignored):
/// every decoded point is on the curve, and in the prime-order subgroup an eighth of the
/// time for random strings (the curve's order is 8 times a prime, and the map's image
/// falls evenly into the eight cosets: 24,967 of 200,000 random strings did; the crate
/// says 12.5%), 17 to 91 of 400; every time for representatives of clean keys,
/// never for dirty keys whose low-order point is never the identity. Power at 400: a
/// subgroup share above 0.23 or below 0.041 is rejected half the time, above 0.28 or
/// below 0.022 nearly always (a sender that adds only low-order points of order at most
/// 4, the identity a quarter of the time, 84% of the time).
fn decoded(keys: &[[u8; 32]]) -> Verdict {
    let sub = keys
        .iter()
        .filter(|k| lies(MontgomeryPoint::map_to_point(k)) == Lies::Subgroup)
        .count();
    binomial(
        Stat::Decoded,
        "keys decoded in the prime-order subgroup",
        sub,
        keys.len(),
        1.0 / 8.0,
    )
}

/// The top two bits of the key fields' last byte, which decoding ignores and a sender
/// must draw: each of their four values is a Binomial(n, 1/4) count, checked two-sided
/// with each tail at most [`ALPHA`]/8 (52 to 154 of 400). The bit positions' balance sees
/// each bit alone; this also sees them together, e.g. one bit drawn for both (values 01
/// and 10 never occur, always rejected). Power at 400: a value with probability above
/// 0.39 or below 0.13 is rejected half the time.
fn top_bits(keys: &[[u8; 32]]) -> Verdict {
    let mut counts = [0usize; 4];
    for k in keys {
        counts[usize::from(k[31] >> 6)] += 1;
    }
    let (lo, hi) = binomial_range(keys.len(), 0.25, ALPHA / 8.0);
    Verdict {
        stat: Stat::TopBits,
        ok: counts.iter().all(|c| (lo..=hi).contains(c)),
        says: format!(
            "top two bits of the keys: 00, 01, 10, 11 {counts:?} times (allowed {lo} to {hi} each)"
        ),
    }
}

/// Every check of one direction's flights, each printed.
fn judge(f: &Flights) -> Vec<Verdict> {
    let keys = f.keys();
    let mut v: Vec<Verdict> = WIDTHS.iter().map(|&w| fields(&f.flights, w)).collect();
    v.push(positions(&f.flights, f.fixed));
    v.push(lengths(&f.flights, f.fixed));
    v.extend(u_coordinates(&keys));
    v.push(decoded(&keys));
    v.push(top_bits(&keys));
    for x in &v {
        eprintln!(
            "{} ({} flights): {} {}",
            f.name,
            f.flights.len(),
            if x.ok { "ok" } else { "REJECTED" },
            x.says
        );
    }
    v
}

#[test]
fn first_flights_look_uniform_with_drawn_lengths() {
    let t = Instant::now();
    let dir = tempdir("wire");
    let client = PrivateKey::generate();
    // One address makes every handshake: the per-address and global handshake rates
    // (50/s and 1000/s by default) would refuse a loop running hundreds a second.
    let relay = start_relay_with(
        &dir,
        &[client.public().0],
        &[],
        "handshakes_per_sec = 100000\nhandshakes_per_sec_per_addr = 100000\n",
    );
    let (sent, got): (Vec<_>, Vec<_>) = (0..SESSIONS)
        .map(|_| handshake(relay.addr, relay.public, &client))
        .unzip();
    let took = t.elapsed();
    let directions = [
        Flights::client("client", sent),
        Flights::relay("relay", got),
    ];
    let failed: Vec<String> = directions
        .iter()
        .flat_map(|f| judge(f).into_iter().map(move |v| (f.name, v)))
        .filter(|(_, v)| !v.ok)
        .map(|(name, v)| format!("{name}: {}", v.says))
        .collect();
    eprintln!(
        "{SESSIONS} handshakes in {:.1} s, checked in {:.1} s",
        took.as_secs_f64(),
        (t.elapsed() - took).as_secs_f64()
    );
    assert!(failed.is_empty(), "not uniform: {failed:#?}");
}

/// Real client flights, made without a relay (a client writes msg1 and pad1 at once).
fn offline_client_flights() -> Vec<Vec<u8>> {
    let (relay, client) = (PrivateKey::generate().public().0, PrivateKey::generate());
    (0..SESSIONS)
        .map(|_| client_session(relay, &client).transmit().to_vec())
        .collect()
}

/// `flights`, each changed by `edit`.
fn altered(flights: &[Vec<u8>], mut edit: impl FnMut(&mut Vec<u8>)) -> Vec<Vec<u8>> {
    flights
        .iter()
        .map(|f| {
            let mut f = f.clone();
            edit(&mut f);
            f
        })
        .collect()
}

/// Bytes as random as the relay's flight, of its lengths: real client flights (msg1 and
/// pad1) cut to the relay's fixed length plus pad1's.
fn relay_like(client: &[Vec<u8>]) -> Vec<Vec<u8>> {
    altered(client, |f| {
        f.drain(..MSG1_LEN - REPLY_LEN);
    })
}

/// `f` under `name`, with each key field replaced by `key()`.
fn with_keys(name: &'static str, f: &Flights, mut key: impl FnMut() -> [u8; 32]) -> Flights {
    Flights {
        name,
        flights: altered(&f.flights, |g| g[f.key..f.key + 32].copy_from_slice(&key())),
        ..*f
    }
}

/// 32 random bytes.
fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    OsRandom.fill(&mut b);
    b
}

/// The checks that reject `f`, in [`judge`]'s order.
fn rejected_by(f: &Flights) -> Vec<Stat> {
    judge(f).iter().filter(|v| !v.ok).map(|v| v.stat).collect()
}

/// The check `stat` rejects `f`.
fn rejects(f: &Flights, stat: Stat) -> bool {
    rejected_by(f).contains(&stat)
}

#[test]
fn the_checks_reject_a_wire_without_masks_encryption_or_pads() {
    let real = offline_client_flights();
    let rng = &mut OsRandom;
    // The relay's flight without the mask: an ML-KEM ciphertext in clear, then bytes as
    // random as msg2 and pad2.
    let unmasked = Flights::relay(
        "unmasked ciphertext",
        altered(&relay_like(&real), |f| {
            let ek = *KeyPair::generate(rng).public();
            let (ct, _) = kem::encapsulate(&ek, rng).expect("a valid key");
            f[..CT_LEN].copy_from_slice(&ct);
        }),
    );
    assert!(rejects(&unmasked, Stat::Fields(10)));
    // msg1 with its payload in clear: the encapsulation key's 12-bit coefficients.
    let clear_ek = Flights::client(
        "encapsulation key in clear",
        altered(&real, |f| {
            f[EK_AT..EK_AT + EK_LEN].copy_from_slice(KeyPair::generate(rng).public());
        }),
    );
    assert!(rejects(&clear_ek, Stat::Fields(12)));
    // The representative as RFC 9380 writes it, without the drawn top bits.
    let top_clear = Flights::client(
        "representative's top bits clear",
        altered(&real, |f| f[31] &= 0x3f),
    );
    assert!(rejects(&top_clear, Stat::Positions));
    // No pads: every msg1 alone.
    let unpadded = Flights::client("no pads", altered(&real, |f| f.truncate(MSG1_LEN)));
    assert!(rejects(&unpadded, Stat::Lengths));

    // The key fields. Plain X25519 public keys with a drawn top bit, as qnet sent them
    // before representatives, in both directions (so the relay's key field is where the
    // checks look): on the curve and in the subgroup every time.
    let client = Flights::client("client", real.clone());
    let relay = Flights::relay("relay", relay_like(&real));
    let plain = || {
        let mut k = public_key(&random32());
        k[31] |= random32()[0] & 0x80;
        k
    };
    for f in [&client, &relay] {
        let plain = with_keys("plain X25519 keys", f, plain);
        assert_eq!(rejected_by(&plain), [Stat::OnCurve, Stat::Subgroup]);
    }
    // Representatives of clean keys (the base-point multiple itself), top bits drawn:
    // random as u-coordinates, but each decodes into the subgroup.
    let clean = with_keys("representatives of clean keys", &client, || {
        loop {
            if let Some(r) = representative_from_privkey(&random32(), random32()[0]) {
                break r;
            }
        }
    });
    assert_eq!(rejected_by(&clean), [Stat::Decoded]);
    // Dirty keys whose low-order point is never the identity: none decodes into it.
    let fill = |b: &mut [u8]| OsRandom.fill(b);
    let never_clean = with_keys("dirty keys never clean", &client, || {
        loop {
            let e = Ephemeral::generate(fill);
            if *e.public() != public_key(e.private()) {
                break *e.representative();
            }
        }
    });
    assert_eq!(rejected_by(&never_clean), [Stat::Decoded]);
    // One bit drawn for both top bits: each balanced, never 01 or 10.
    let one_bit = Flights::client(
        "one top bit drawn twice",
        altered(&real, |f| f[31] = (f[31] & 0x7f) | ((f[31] & 0x40) << 1)),
    );
    assert_eq!(rejected_by(&one_bit), [Stat::TopBits]);
    // qnet's own representatives pass every check.
    let qnet = with_keys("qnet's representatives", &client, || {
        *Ephemeral::generate(fill).representative()
    });
    assert!(rejected_by(&qnet).is_empty());
}
