//! Wire uniformity: what a real client and a real `qnet-relay` send in their first
//! flights must look, to an observer without keys, like uniform random bytes of drawn
//! lengths (docs/PROTOCOL.md, sections 1–2). [`SESSIONS`] handshakes run over loopback;
//! each direction's flights (the client's msg1 + pad1, the relay's masked ML-KEM
//! ciphertext + msg2 + pad2) are pooled and tested: chi-squared over byte values and
//! over 10- and 12-bit fields (ML-KEM's ciphertext is 10-bit compressed coefficients
//! and its encapsulation key 12-bit ones below 3329: the shapes the mask and the AEAD
//! must hide), the balance of every bit position of the fixed part across flights (a
//! stuck bit, such as an X25519 key's clear top bit, is invisible in pooled counts),
//! and the spread of the flights' lengths. A second test feeds the same checks the
//! bytes of a protocol without the mask, without msg1's encryption, without the top-bit
//! draw and without pads, and requires each to be rejected, so neither test passes
//! vacuously.
//!
//! Every check's false-alarm probability is at most about 10⁻⁸, so the ten checks of a
//! run raise a false alarm about once in 10⁷ runs (with a tenfold margin for the
//! approximations below, well under 10⁻⁶). What the checks cannot see: a bias weaker
//! than their power (noted at each), and algebraic structure: counting tests see only
//! frequencies. So they pass msg1's and msg2's ephemeral keys, though each is an X25519
//! point of the prime-order subgroup, which about one random 32-byte string in 16 is.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{start_relay_with, tempdir};
use qnet::keys::PrivateKey;
use qnet::proto::kem::{self, CT_LEN, EK_LEN, KeyPair};
use qnet::proto::mask::PAD_MAX;
use qnet::proto::noise::{MSG1_LEN, REPLY_LEN};
use qnet::proto::{OsRandom, Role, Session, SessionConfig};

/// Handshakes per run: at ~1.4 KB a flight, ~0.6 MB per direction, ≥ 90 expected
/// counts in each of the 4096 12-bit bins.
const SESSIONS: usize = 400;
/// Each check's false-alarm probability (ten checks a run).
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
}

/// One check's outcome, with the numbers that decided it.
struct Verdict {
    stat: Stat,
    ok: bool,
    says: String,
}

/// One direction's first flights: their fixed part's length, and the bytes.
struct Flights {
    name: &'static str,
    fixed: usize,
    flights: Vec<Vec<u8>>,
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

/// Every check of one direction's flights, each printed.
fn judge(f: &Flights) -> Vec<Verdict> {
    let mut v: Vec<Verdict> = WIDTHS.iter().map(|&w| fields(&f.flights, w)).collect();
    v.push(positions(&f.flights, f.fixed));
    v.push(lengths(&f.flights, f.fixed));
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
        Flights {
            name: "client",
            fixed: MSG1_LEN,
            flights: sent,
        },
        Flights {
            name: "relay",
            fixed: REPLY_LEN,
            flights: got,
        },
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

/// The check `stat` rejects `f`.
fn rejects(f: &Flights, stat: Stat) -> bool {
    judge(f).iter().any(|v| v.stat == stat && !v.ok)
}

#[test]
fn the_checks_reject_a_wire_without_masks_encryption_or_pads() {
    let real = offline_client_flights();
    let rng = &mut OsRandom;
    // The relay's flight without the mask: an ML-KEM ciphertext in clear, then bytes as
    // random as msg2 and pad2, of the relay's lengths (here a real msg1 and pad1, cut to
    // the relay's fixed length plus pad1's).
    let unmasked = Flights {
        name: "unmasked ciphertext",
        fixed: REPLY_LEN,
        flights: altered(&real, |f| {
            f.drain(..MSG1_LEN - REPLY_LEN);
            let ek = *KeyPair::generate(rng).public();
            let (ct, _) = kem::encapsulate(&ek, rng).expect("a valid key");
            f[..CT_LEN].copy_from_slice(&ct);
        }),
    };
    assert!(rejects(&unmasked, Stat::Fields(10)));
    // msg1 with its payload in clear: the encapsulation key's 12-bit coefficients.
    let clear_ek = Flights {
        name: "encapsulation key in clear",
        fixed: MSG1_LEN,
        flights: altered(&real, |f| {
            f[EK_AT..EK_AT + EK_LEN].copy_from_slice(KeyPair::generate(rng).public());
        }),
    };
    assert!(rejects(&clear_ek, Stat::Fields(12)));
    // The ephemeral key as Noise writes it, without the drawn top bit.
    let top_bit = Flights {
        name: "ephemeral key's top bit clear",
        fixed: MSG1_LEN,
        flights: altered(&real, |f| f[31] &= 0x7f),
    };
    assert!(rejects(&top_bit, Stat::Positions));
    // No pads: every msg1 alone.
    let unpadded = Flights {
        name: "no pads",
        fixed: MSG1_LEN,
        flights: altered(&real, |f| f.truncate(MSG1_LEN)),
    };
    assert!(rejects(&unpadded, Stat::Lengths));
}
