//! Writes the committed seed corpora: `cd fuzz && cargo run --example gen_seeds`.
//!
//! A few valid inputs per target, so the fuzzer starts past the checks it cannot
//! guess (AEAD tags, handshake messages). Output is deterministic; rerun after changing
//! a fixture in `src/lib.rs` or the wire format, and commit the result.

use std::fs;
use std::path::Path;

use qnet::proto::aead::Cipher;
use qnet::proto::frame::{Destination, FrameRepr};
use qnet::proto::kem::EK_LEN;
use qnet::proto::record::Sealer;
use qnet::proto::{OpenError, SessionConfig};
use qnet_fuzz::handshake_flags::{DRAIN, ECHO, REFUSE, STRANGER};
use qnet_fuzz::{RECORD_SECRET, client, encode_piece, frame_bytes, seal_repr, stranger};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("create seed dir");
    fs::write(dir.join(name), bytes).expect("write seed");
    println!("{:5} {}", bytes.len(), dir.join(name).display());
}

fn frames() -> Vec<(&'static str, FrameRepr<'static>, usize)> {
    vec![
        ("padding", FrameRepr::Padding, 5),
        (
            "open-v4",
            FrameRepr::Open {
                stream: 1,
                profile: 2,
                dest: Destination::Addr("192.0.2.7:443".parse().expect("addr")),
                data: b"hi",
            },
            0,
        ),
        (
            "open-v6",
            FrameRepr::Open {
                stream: 3,
                profile: 0,
                dest: Destination::Addr("[2001:db8::1]:80".parse().expect("addr")),
                data: b"",
            },
            0,
        ),
        (
            "open-name",
            FrameRepr::Open {
                stream: 5,
                profile: 1,
                dest: Destination::Name("a.example".into(), 8080),
                data: b"GET /",
            },
            0,
        ),
        (
            "open-result-ok",
            FrameRepr::OpenResult {
                stream: 7,
                result: Ok(()),
            },
            0,
        ),
        (
            "open-result-err",
            FrameRepr::OpenResult {
                stream: 7,
                result: Err(OpenError::Forbidden),
            },
            0,
        ),
        (
            "data",
            FrameRepr::Data {
                stream: 9,
                data: b"abc",
            },
            2,
        ),
        (
            "window-update",
            FrameRepr::WindowUpdate {
                stream: 0,
                increment: 65536,
            },
            0,
        ),
        ("close", FrameRepr::Close { stream: 9 }, 0),
        ("reset", FrameRepr::Reset { stream: 9, code: 2 }, 0),
        (
            "ping",
            FrameRepr::Ping {
                payload: *b"pingpong",
            },
            0,
        ),
        (
            "pong",
            FrameRepr::Pong {
                payload: *b"pingpong",
            },
            0,
        ),
        ("key-update", FrameRepr::KeyUpdate, 1),
    ]
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");

    // frame: every frame type, some with padding.
    let dir = root.join("frame");
    for (name, repr, pad) in frames() {
        let mut b = frame_bytes(&repr);
        b.resize(b.len() + pad, 0);
        write(&dir, name, &b);
    }

    // record: valid record streams (chunk byte first), and frames to seal.
    let dir = root.join("record");
    let mut sealer = Sealer::new(Cipher::ChaCha20Poly1305, RECORD_SECRET);
    let mut wire = vec![0];
    let data = FrameRepr::Data {
        stream: 1,
        data: b"hello",
    };
    seal_repr(&mut sealer, &mut wire, &data, 0);
    seal_repr(&mut sealer, &mut wire, &FrameRepr::KeyUpdate, 0);
    seal_repr(&mut sealer, &mut wire, &data, 40);
    write(&dir, "records-key-update", &wire);
    let mut sealer = Sealer::new(Cipher::ChaCha20Poly1305, RECORD_SECRET);
    let mut wire = vec![2];
    let ping = FrameRepr::Ping { payload: [7; 8] };
    seal_repr(&mut sealer, &mut wire, &ping, 0);
    write(&dir, "records-ping", &wire);
    // Bit 6 of the first byte picks AES-256-GCM (see fuzz_targets/record.rs).
    let mut sealer = Sealer::new(Cipher::Aes256Gcm, RECORD_SECRET);
    let mut wire = vec![0x40];
    seal_repr(&mut sealer, &mut wire, &data, 0);
    seal_repr(&mut sealer, &mut wire, &FrameRepr::KeyUpdate, 0);
    seal_repr(&mut sealer, &mut wire, &data, 40);
    write(&dir, "records-aes-key-update", &wire);
    let mut pieces = vec![6];
    for (_, repr, _) in frames().iter().step_by(3) {
        pieces.extend(encode_piece(&frame_bytes(repr), 1));
    }
    write(&dir, "frames-to-seal", &pieces);

    // handshake: raw messages, msg3 after the harness's msg1, and established sessions.
    let dir = root.join("handshake");
    let c = client();
    write(&dir, "raw-msg1", &[&[0, 0, 0][..], &c.msg1].concat());
    write(
        &dir,
        "raw-msg1-msg3",
        &[&[0, 7, 30][..], &c.msg1, &c.msg3].concat(),
    );
    write(&dir, "msg3", &[&[1, 0, 0][..], &c.msg3].concat());
    let mut m = vec![1 | DRAIN, 11, 0];
    m.extend_from_slice(&c.msg3);
    seal_repr(&mut Sealer::new(c.cipher, c.send), &mut m, &ping, 3);
    write(&dir, "msg3-ping-record", &m);

    let window = SessionConfig::default().stream_window;
    let streams = [
        FrameRepr::Open {
            stream: 1,
            profile: 0,
            dest: Destination::Addr("192.0.2.7:443".parse().expect("addr")),
            data: b"hi",
        },
        FrameRepr::Data {
            stream: 1,
            data: b"abc",
        },
        ping.clone(),
        FrameRepr::WindowUpdate {
            stream: 0,
            increment: window,
        },
        FrameRepr::Close { stream: 1 },
        FrameRepr::KeyUpdate,
        FrameRepr::Open {
            stream: 3,
            profile: 1,
            dest: Destination::Name("a.example".into(), 80),
            data: b"",
        },
        FrameRepr::Reset { stream: 3, code: 1 },
    ];
    let mut m = vec![2 | DRAIN | ECHO, 0, 0];
    for f in &streams {
        m.extend(encode_piece(&frame_bytes(f), 0));
    }
    write(&dir, "established-streams", &m);
    let mut m = vec![2 | REFUSE, 40, 9];
    for f in &streams[..2] {
        m.extend(encode_piece(&frame_bytes(f), 2));
    }
    write(&dir, "established-refused-open", &m);
    let mut m = vec![2 | STRANGER | DRAIN, 30, 0];
    m.extend(encode_piece(&frame_bytes(&ping), 0));
    write(&dir, "stranger", &m);
    // Forged msg1s (mode 3): an all-zero encapsulation key is valid (every coefficient
    // below q), all 0xff is not; a pad whose bytes are not the keystream.
    let forged = |pad: [u8; 2], ek: u8, rest: &[u8]| {
        [&[3, 0, 0][..], &pad, &[ek; EK_LEN], rest].concat()
    };
    write(&dir, "forged-zero-ek", &forged([0, 0], 0, &[]));
    write(&dir, "forged-bad-ek", &forged([0, 0], 0xff, &[]));
    write(&dir, "forged-bad-pad", &forged([0, 5], 0, &[1, 2, 3, 4, 5]));
    // The stranger's own messages in raw mode: refused at msg1.
    let s = stranger();
    write(
        &dir,
        "raw-stranger",
        &[&[0, 0, 0][..], &s.msg1, &s.msg3].concat(),
    );
}
