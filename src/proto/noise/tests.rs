use super::*;
use crate::proto::SeededRandom;
use crate::proto::aead::{Cipher, OFFER_AES_256_GCM};

const P: TransportParams = TransportParams {
    stream_window: 1 << 18,
    session_window: 1 << 24,
    ciphers: OFFER_AES_256_GCM,
};

const T: u64 = 1_700_000_000_123;

fn keys(seed: u8) -> ([u8; 32], [u8; 32]) {
    let private = [seed; 32];
    (private, public_key(&private))
}

/// A fresh client (key 1, pinning the relay's key 2) and relay (key 2), with their
/// randomness.
fn fresh(seed: u64) -> (SeededRandom, Handshake, Handshake) {
    fresh_with(seed, P, P)
}

/// [`fresh`] with each end's transport parameters given.
fn fresh_with(
    seed: u64,
    client: TransportParams,
    relay: TransportParams,
) -> (SeededRandom, Handshake, Handshake) {
    let mut rng = SeededRandom::new(seed);
    let c = Handshake::initiator(&keys(1).0, &keys(2).1, client, &mut rng);
    let r = Handshake::responder(&keys(2).0, relay, &mut rng);
    (rng, c, r)
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
    wire.len() == MSG1_LEN + r.wants() && r.read_pad1(a.mask, &wire[MSG1_LEN..]).is_ok()
}

/// A whole handshake; `tamper` may change each flight (0: msg1 and pad1, 1: the relay's
/// flight, 2: msg3 and pad3) before it is read. `None` when it failed.
fn run(
    seed: u64,
    tamper: &mut dyn FnMut(usize, &mut Vec<u8>),
) -> Option<(HandshakeOutput, HandshakeOutput)> {
    run_with(seed, P, P, tamper)
}

/// [`run`] with each end's transport parameters given.
fn run_with(
    seed: u64,
    client: TransportParams,
    relay: TransportParams,
    tamper: &mut dyn FnMut(usize, &mut Vec<u8>),
) -> Option<(HandshakeOutput, HandshakeOutput)> {
    let (mut rng, mut c, mut r) = fresh_with(seed, client, relay);
    let rng = &mut rng;
    let mut m1 = c.write_msg1(T, rng);
    tamper(0, &mut m1);
    if !relay_reads(&mut r, keys(1).1, &keys(2).0, &m1) {
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

/// Both ends agree on the records' cipher from the two parameter blocks, AES-256-GCM only
/// when both offer it; a bit this version does not know is dropped, not echoed.
#[test]
fn the_cipher_is_agreed_from_both_offers() {
    let with = |ciphers| TransportParams { ciphers, ..P };
    for (c, r, want) in [
        (OFFER_AES_256_GCM, OFFER_AES_256_GCM, Cipher::Aes256Gcm),
        (OFFER_AES_256_GCM, 0, Cipher::ChaCha20Poly1305),
        (0, OFFER_AES_256_GCM, Cipher::ChaCha20Poly1305),
        (0, 0, Cipher::ChaCha20Poly1305),
        (0x81, 0xff, Cipher::Aes256Gcm),
        (0x80, 0xff, Cipher::ChaCha20Poly1305),
    ] {
        let (co, ro) = run_with(1, with(c), with(r), &mut |_, _| {}).expect("handshake");
        assert_eq!(
            (co.cipher, ro.cipher),
            (want, want),
            "client {c:#x}, relay {r:#x}"
        );
        assert_eq!(co.peer_params.ciphers, r & OFFER_AES_256_GCM);
        assert_eq!(ro.peer_params.ciphers, c & OFFER_AES_256_GCM);
    }
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
    let (mut rng, mut c, mut r) = fresh(5);
    let rng = &mut rng;
    let m1 = c.write_msg1(T, rng);
    assert!(relay_reads(&mut r, keys(1).1, &keys(2).0, &m1));
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
    let (mut rng, mut c, mut r) = fresh(6);
    // ek all 0xff: coefficients 4095 > 3329.
    let m1 = c.write_msg1_forged(T, 0, &[0xff; EK_LEN]);
    assert!(
        relay_reads(&mut r, keys(1).1, &keys(2).0, &m1),
        "msg1 itself is fine"
    );
    assert_eq!(r.write_reply(&mut rng).err(), Some(HandshakeFailed));
}

/// A representative's top two bits are the sender's coin: flipping them gives the same
/// key, not a new message, so the replay cache, keyed by the decoded key, sees the same
/// one. (`-r`, the only other preimage of the key under the map, is at least 2^254 for
/// all but nine representatives: it has no spelling in 254 bits.)
#[test]
fn another_spelling_of_the_ephemeral_key_is_not_a_new_message() {
    let rng = &mut SeededRandom::new(4);
    let (cs, _) = keys(1);
    let (rs, rp) = keys(2);
    let mut c = Handshake::initiator(&cs, &rp, P, rng);
    let m1 = c.write_msg1(T, rng);
    let read = |m: &[u8], rng: &mut SeededRandom| {
        Handshake::responder(&rs, P, rng)
            .read_msg1(&m[..MSG1_LEN])
            .unwrap()
    };
    let original = read(&m1, rng);
    for top in [0x40, 0x80, 0xc0] {
        let mut flipped = m1.clone();
        flipped[31] ^= top;
        assert_eq!(read(&flipped, rng), original);
    }
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

/// The ephemeral key of the test vectors: 32 bytes of `b`, tweak 0.
fn vector_ephemeral(b: u8) -> Ephemeral {
    Ephemeral::from_private([b; 32], 0).expect("a representable key")
}

/// docs/PROTOCOL.md section 8: a whole handshake from fixed keys, seeds, pads and time,
/// representatives drawn with tweak 0 (tests/interop/record_spec.py recomputes it from
/// the spec).
#[test]
fn handshake_golden_bytes() {
    use blake2::{Blake2s256, Digest};
    let hex = |b: &[u8]| -> String { b.iter().map(|b| format!("{b:02x}")).collect() };
    let digest = |b: &[u8]| hex(&Blake2s256::digest(b));
    let (cs, _) = keys(1);
    let (rs, rp) = keys(2);
    let admit = AdmitKey::client(&cs, &rp);
    assert_eq!(hex(&admit.hint()), "c0ab");
    let (ce, re) = (vector_ephemeral(0x03), vector_ephemeral(0x07));
    let tag = hex(&admit.tag(ce.public(), 1_700_000_000_000));
    let (ce_repr, ce_public) = (hex(ce.representative()), hex(ce.public()));
    let re_repr = hex(re.representative());
    let mut c = Handshake::initiator_with(&cs, &rp, P, ce, admit);
    let mut r = Handshake::responder_with(&rs, P, re);
    let mut seed = [0x04; 64];
    seed[32..].fill(0x05);
    let m1 = c.write_msg1_with(1_700_000_000_000, kem::KeyPair::from_seed(seed), 5);
    assert!(relay_reads(&mut r, keys(1).1, &rs, &m1));
    let reply = r.write_reply_with([0x06; 32], 3).unwrap();
    c.read_reply(&reply[..REPLY_LEN]).unwrap();
    let (m3, co) = c.finish_client_with(&reply[REPLY_LEN..], 2).unwrap();
    r.read_msg3(&m3[..MSG3_LEN]).unwrap();
    let ro = r.finish_relay(&m3[MSG3_LEN..]).unwrap();
    assert_eq!(co.send, ro.recv);
    let ek = *kem::KeyPair::from_seed(seed).public();
    let (ct, psk) = kem::encapsulate_with(&ek, [0x06; 32]).unwrap();
    let got = [
        ("e_c representative", ce_repr),
        ("e_c public", ce_public),
        ("e_r representative", re_repr),
        ("tag", tag),
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
    assert_eq!((m1.len(), reply.len(), m3.len()), (1265, 1151, 78));
    assert_eq!(
        (co.cipher, ro.cipher),
        (Cipher::Aes256Gcm, Cipher::Aes256Gcm)
    );
    let got: String = got
        .iter()
        .map(|(what, v)| format!("{what}: {v}\n"))
        .collect();
    let want = "\
e_c representative: 6fa44919e3f6dfc49fa6423edb7b196acea1de1d700007a9d2d730d17794f117
e_c public: 418edeb9799ab80953b72e4a98fefa25a1094dc27847b649de014c0a43b13d76
e_r representative: 5b5cb64e6907695dccbe5d4facbce5e7cd0433317b5dac7e8b57dec9d2e60b21
tag: 3856b08472b980eac858cbdd70bb77d5
ek: 14319c7bc1aa830f17c8fa34d6017693781169297460540e21d1f07c848f4da2
ct: 5cd6293f83679a90424091accf9de399216658de4ec0b14e82fec565bdbef43d
psk: cdf7867c0bc2df2693cd4e6877b3bf4c4b8ad19c335593077f115589c8335b2e
msg1 head: 6fa44919e3f6dfc49fa6423edb7b196acea1de1d700007a9d2d730d17794f117
msg1+pad1: 5052994957eee1c2b13b46de0eada6580321c4f1f78713e3af2bfefa3443e134
reply head: 855201daf2ffba384075d43c042b816be83b8cf20baa71c5acaa78cd0acc350c
reply: 7ce92b3fe23a32e04345d7c338d48327ec861358c8450b3a3ac5a3b07aa395fa
msg3+pad3: d0aa5cf7bd4945797e624481a6157e2e26566e0ff44cb555464c24a208cdb84a
hash: 117f5edab1778a288c082445a7c9eb6a27285298feed0dd128aeb5b394b63aba
k1: 4b1bad605383e198c891ecdcd0d3ddcedc151f3a398ff4c81f16957d4d1290f9
k2: 9ebf2c2d7de9309fb38dd726e0cf8052a60be655f5bb1638dd9e24abd664b70c
";
    assert_eq!(got, want);
}
