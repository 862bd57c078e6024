use super::*;
use crate::proto::SeededRandom;

const P: TransportParams = TransportParams {
    stream_window: 1 << 18,
    session_window: 1 << 24,
};

const T: u64 = 1_700_000_000_123;

fn keys(seed: u8) -> ([u8; 32], [u8; 32]) {
    let private = [seed; 32];
    (private, public_key(&private))
}

/// The relay's side of msg1 and pad1 as a session runs it: read, admit, check the pad.
fn relay_reads(r: &mut Handshake, client_public: [u8; 32], rs: &[u8; 32], wire: &[u8]) -> bool {
    let Ok(first) = r.read_msg1(&wire[..MSG1_LEN]) else {
        return false;
    };
    let admission = admit::Admission::new(rs, [client_public]);
    let Some(a) = admission.check_msg1(&first.ephemeral, first.stamp_ms, &first.hint, &first.tag)
    else {
        return false;
    };
    wire.len() == MSG1_LEN + first.pad_len && r.read_pad1(a.mask, &wire[MSG1_LEN..]).is_ok()
}

/// A whole handshake; `tamper` may change each flight (0: msg1 and pad1, 1: the relay's
/// flight, 2: msg3 and pad3) before it is read. `None` when it failed.
fn run(
    seed: u64,
    tamper: &mut dyn FnMut(usize, &mut Vec<u8>),
) -> Option<(HandshakeOutput, HandshakeOutput)> {
    let rng = &mut SeededRandom::new(seed);
    let (cs, cp) = keys(1);
    let (rs, rp) = keys(2);
    let mut c = Handshake::initiator(&cs, &rp, P, rng);
    let mut r = Handshake::responder(&rs, P, rng);
    let mut m1 = c.write_msg1(T, rng);
    tamper(0, &mut m1);
    if !relay_reads(&mut r, cp, &rs, &m1) {
        return None;
    }
    let mut reply = r.write_reply(rng).ok()?;
    tamper(1, &mut reply);
    c.read_reply(reply.get(..REPLY_LEN)?).ok()?;
    if reply.len() != REPLY_LEN + c.wants() {
        return None;
    }
    let (mut m3, co) = c.finish_client(&reply[REPLY_LEN..], rng).ok()?;
    tamper(2, &mut m3);
    r.read_msg3(m3.get(..MSG3_LEN)?).ok()?;
    if m3.len() != MSG3_LEN + r.wants() {
        return None;
    }
    let ro = r.finish_relay(&m3[MSG3_LEN..]).ok()?;
    Some((co, ro))
}

#[test]
fn full_handshake_agrees() {
    let (co, ro) = run(1, &mut |_, _| {}).expect("handshake");
    assert_eq!(co.send, ro.recv);
    assert_eq!(co.recv, ro.send);
    assert_ne!(co.send, co.recv);
    assert_eq!(co.hash, ro.hash, "both ends' handshake hashes");
    assert_eq!(ro.peer_static, keys(1).1);
    assert_eq!(co.peer_static, keys(2).1);
    assert_eq!(co.peer_params, P);
    assert_eq!(ro.peer_params, P);
}

#[test]
fn wrong_relay_key_fails_at_msg1() {
    let rng = &mut SeededRandom::new(2);
    let (cs, cp) = keys(1);
    let (rs, _) = keys(2);
    let (_, other) = keys(3);
    let mut c = Handshake::initiator(&cs, &other, P, rng);
    let mut r = Handshake::responder(&rs, P, rng);
    let m1 = c.write_msg1(T, rng);
    assert!(!relay_reads(&mut r, cp, &rs, &m1));
}

/// Every byte of every flight, the pads and the masked ciphertext among them, is
/// covered: changing one fails the handshake.
#[test]
fn tampered_messages_fail() {
    for flight in 0..3 {
        let mut len = 0;
        run(3, &mut |f, m| {
            if f == flight {
                len = m.len();
            }
        })
        .expect("untampered");
        assert!(len > 0);
        for byte in 0..len {
            let mut hit = |f: usize, m: &mut Vec<u8>| {
                if f == flight {
                    // Bit 7 of the ephemeral keys' last byte is random on the wire.
                    let bit = if byte == 31 || (flight == 1 && byte == CT_LEN + 31) {
                        1
                    } else {
                        0x80
                    };
                    m[byte] ^= bit;
                }
            };
            assert!(run(3, &mut hit).is_none(), "flight {flight} byte {byte}");
        }
        // Cut short or extended by a byte: the pad no longer matches its length.
        assert!(
            run(3, &mut |f, m| if f == flight {
                m.pop();
            })
            .is_none()
        );
        assert!(
            run(3, &mut |f, m| if f == flight {
                m.push(0);
            })
            .is_none()
        );
    }
}

/// Both secrets are needed: with the right X25519 keys but another ML-KEM secret (the
/// client decapsulating with a key pair other than the one msg1 carried), msg2 fails.
#[test]
fn a_wrong_ml_kem_secret_fails_at_msg2() {
    let rng = &mut SeededRandom::new(5);
    let (cs, cp) = keys(1);
    let (rs, rp) = keys(2);
    let mut c = Handshake::initiator(&cs, &rp, P, rng);
    let mut r = Handshake::responder(&rs, P, rng);
    let m1 = c.write_msg1(T, rng);
    assert!(relay_reads(&mut r, cp, &rs, &m1));
    let reply = r.write_reply(rng).unwrap();
    let Stage::ClientAwaitReply(pair) = &mut c.stage else {
        panic!("client awaits the reply");
    };
    **pair = kem::KeyPair::generate(rng);
    assert_eq!(c.read_reply(&reply[..REPLY_LEN]), Err(HandshakeFailed));
}

/// An encapsulation key that fails FIPS 203's modulus check gets no answer, though
/// msg1 authenticates and proves an allowed key.
#[test]
fn an_invalid_encapsulation_key_is_refused() {
    let rng = &mut SeededRandom::new(6);
    let (cs, cp) = keys(1);
    let (rs, rp) = keys(2);
    let mut c = Handshake::initiator(&cs, &rp, P, rng);
    let mut r = Handshake::responder(&rs, P, rng);
    // ek all 0xff: coefficients 4095 > 3329.
    let m1 = c.write_msg1_forged(T, 0, &[0xff; EK_LEN]);
    assert!(relay_reads(&mut r, cp, &rs, &m1), "msg1 itself is fine");
    assert_eq!(r.write_reply(rng).err(), Some(HandshakeFailed));
}

#[test]
fn tampering_with_the_top_bit_is_not_a_new_message() {
    // The randomized bit is cleared before Noise reads msg1, so flipping it yields the
    // same ephemeral key: the replay cache sees the same message.
    let rng = &mut SeededRandom::new(4);
    let (cs, _) = keys(1);
    let (rs, rp) = keys(2);
    let mut c = Handshake::initiator(&cs, &rp, P, rng);
    let m1 = c.write_msg1(T, rng);
    let mut flipped = m1.clone();
    flipped[31] ^= 0x80;
    let a = Handshake::responder(&rs, P, rng)
        .read_msg1(&m1[..MSG1_LEN])
        .unwrap();
    let b = Handshake::responder(&rs, P, rng)
        .read_msg1(&flipped[..MSG1_LEN])
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn lengths_vary_with_the_pads() {
    let mut seen = [
        std::collections::BTreeSet::new(),
        Default::default(),
        Default::default(),
    ];
    for seed in 0..16 {
        run(100 + seed, &mut |f, m| {
            seen[f].insert(m.len());
        })
        .expect("handshake");
    }
    for (f, fixed) in [MSG1_LEN, REPLY_LEN, MSG3_LEN].into_iter().enumerate() {
        assert!(seen[f].len() > 8, "flight {f}: {:?}", seen[f]);
        assert!(
            seen[f]
                .iter()
                .all(|&n| (fixed..=fixed + mask::PAD_MAX).contains(&n))
        );
    }
}

/// docs/PROTOCOL.md section 8: a whole handshake from fixed keys, seeds, pads and time,
/// top bits clear (tests/interop/record_spec.py recomputes it from the spec).
#[test]
fn handshake_golden_bytes() {
    use blake2::{Blake2s256, Digest};
    let hex = |b: &[u8]| -> String { b.iter().map(|b| format!("{b:02x}")).collect() };
    let digest = |b: &[u8]| hex(&Blake2s256::digest(b));
    let (cs, _) = keys(1);
    let (rs, rp) = keys(2);
    let rng = &mut SeededRandom::new(0);
    let admit = AdmitKey::client(&cs, &rp);
    assert_eq!(hex(&admit.hint()), "c0ab");
    assert_eq!(
        hex(&admit.tag(&public_key(&[0x03; 32]), 1_700_000_000_000)),
        "0b79ec7d45dbad49c91392db2629a1e6"
    );
    let mut c = Handshake::initiator_with(&cs, &rp, P, [0x03; 32], admit, rng);
    let mut r = Handshake::responder_with(&rs, P, Some([0x07; 32]), rng);
    let mut seed = [0x04; 64];
    seed[32..].fill(0x05);
    let clear = |pad_len| Draws {
        pad_len,
        top_bit: 0,
    };
    let m1 = c.write_msg1_with(1_700_000_000_000, kem::KeyPair::from_seed(seed), clear(5));
    assert!(relay_reads(&mut r, keys(1).1, &rs, &m1));
    let reply = r.write_reply_with([0x06; 32], clear(3)).unwrap();
    c.read_reply(&reply[..REPLY_LEN]).unwrap();
    let (m3, co) = c.finish_client_with(&reply[REPLY_LEN..], 2).unwrap();
    r.read_msg3(&m3[..MSG3_LEN]).unwrap();
    let ro = r.finish_relay(&m3[MSG3_LEN..]).unwrap();
    assert_eq!(co.send, ro.recv);
    let ek = *kem::KeyPair::from_seed(seed).public();
    let (ct, psk) = kem::encapsulate_with(&ek, [0x06; 32]).unwrap();
    let got = [
        ("ek", digest(&ek)),
        ("ct", digest(&ct)),
        ("psk", hex(&psk)),
        ("msg1 head", hex(&m1[..32])),
        ("msg1+pad1", digest(&m1)),
        ("reply head", hex(&reply[..32])),
        ("reply", digest(&reply)),
        ("msg3+pad3", digest(&m3)),
        ("hash", hex(&co.hash)),
        ("k1", hex(&co.send)),
        ("k2", hex(&co.recv)),
    ];
    assert_eq!((m1.len(), reply.len(), m3.len()), (1265, 1150, 77));
    let want = [
        (
            "ek",
            "14319c7bc1aa830f17c8fa34d6017693781169297460540e21d1f07c848f4da2",
        ),
        (
            "ct",
            "5cd6293f83679a90424091accf9de399216658de4ec0b14e82fec565bdbef43d",
        ),
        (
            "psk",
            "cdf7867c0bc2df2693cd4e6877b3bf4c4b8ad19c335593077f115589c8335b2e",
        ),
        (
            "msg1 head",
            "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22",
        ),
        (
            "msg1+pad1",
            "92a3e11b3987577e8b36829b4727e6eb35d320a4b6dce95ab6b62c3f1731d5a1",
        ),
        (
            "reply head",
            "45321140b92657c325692fca18b2c9e57875cfcf5ad4f6d372c9fadf2956fc72",
        ),
        (
            "reply",
            "73342167e3d02c916f3dc5b16b7fd7479d3cdbe76e822f1e5c469ed456135d68",
        ),
        (
            "msg3+pad3",
            "9d3485999d055ba107b0965c627686ca07576613ca16592c77e4a695a0744d60",
        ),
        (
            "hash",
            "5e25152042489553cc4d9c542bbf3ebdcd14459794430231bc5bcd3751477ef5",
        ),
        (
            "k1",
            "b3c0912e630e95dde59a7f624858bc54bae6af4b59a3e5e4ac10d7a6d9a99ff6",
        ),
        (
            "k2",
            "cdc9be358d1b9b5fdd3fe5e8e74bbee189539b00af513bd7cce187cece48fbf7",
        ),
    ];
    for ((what, v), (w, expect)) in got.iter().zip(want) {
        assert_eq!((*what, v.as_str()), (w, expect));
    }
}
