//! The record layer on arbitrary bytes.
//!
//! Input: `chunk (1) | rest`; bit 6 of the first byte picks the cipher (AES-256-GCM
//! if set, else ChaCha20-Poly1305). The rest is read twice:
//! 1. as wire bytes for `Opener::open`, opened in one go and again `chunk % 64 + 1`
//!    bytes at a time the way `Session` re-presents its unconsumed tail; both readings
//!    must agree exactly (frames, and where and how they stopped), and nothing panics
//!    (each opened frame is parsed too, as the session would);
//! 2. as up to 8 frames (`len | pad | bytes`, see `qnet_fuzz::next_piece`) that a
//!    `Sealer` seals (bytes that do not parse as a frame go in a DATA frame); opening
//!    the result chunk by chunk must give back exactly the emitted frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qnet::proto::aead::{Cipher, TAG_LEN};
use qnet::proto::frame::{Frame, FrameRepr, MAX_FRAME, MAX_PAYLOAD};
use qnet::proto::record::{LEN_LEN, Sealer};
use qnet_fuzz::{End, Input, RECORD_SECRET, next_piece, open_stream, seal_repr};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let first = input.byte();
    let chunk = first as usize % 64 + 1;
    let cipher = if first & 0x40 != 0 {
        Cipher::Aes256Gcm
    } else {
        Cipher::ChaCha20Poly1305
    };
    let wire = input.rest();

    // 1. Arbitrary wire bytes: never a panic, and chunking never changes the outcome.
    let whole = open_stream(cipher, RECORD_SECRET, wire, usize::MAX);
    let split = open_stream(cipher, RECORD_SECRET, wire, chunk);
    assert_eq!(whole, split, "chunk size {chunk} changed what was opened");

    // 2. Frames from the input, sealed and opened again.
    let mut sealer = Sealer::new(cipher, RECORD_SECRET);
    let mut sealed = Vec::new();
    let mut expected = Vec::new();
    for _ in 0..8 {
        let Some(piece) = next_piece(&mut input) else {
            break;
        };
        let parsed = Frame::new_checked(piece.frame).and_then(|f| FrameRepr::parse(&f));
        let repr = parsed.unwrap_or(FrameRepr::Data {
            stream: 1,
            data: &piece.frame[..piece.frame.len().min(MAX_PAYLOAD)],
        });
        let pad = piece.pad.min(MAX_FRAME - repr.buffer_len());
        let before = sealed.len();
        expected.push(seal_repr(&mut sealer, &mut sealed, &repr, pad));
        assert_eq!(
            sealed.len() - before,
            LEN_LEN + repr.buffer_len() + pad + TAG_LEN,
            "record size"
        );
    }
    let (frames, end) = open_stream(cipher, RECORD_SECRET, &sealed, chunk);
    assert_eq!(end, End::Incomplete(0), "sealed records must all open");
    assert_eq!(frames, expected, "sealed frames must round-trip");
});
