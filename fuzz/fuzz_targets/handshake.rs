//! The relay's side of the handshake (and what follows it) on arbitrary input.
//!
//! Input: `flags (1) | size a (1) | size b (1) | rest`. The relay session (fixed key,
//! seeded randomness, one allowed client key) gets its input in chunks whose sizes
//! alternate between `a` and `b` (0: all that is left). `flags & 3` picks what it reads:
//! - 0: the rest, as is (msg1 handling on garbage);
//! - 1: a valid msg1 from the fixture client, then the rest (msg3 handling);
//! - 2: a full valid handshake, then the rest as frames (`len | pad | bytes`) that the
//!   client seals: the established relay's frame handling. With flag `STRANGER` the
//!   handshake comes from a key not on the list, so it must fail at msg1 and send nothing;
//! - 3: msg1 from the allowed client with a valid time and proof, but its pad length (2
//!   bytes) and ML-KEM encapsulation key (1184 bytes, zero-filled when short) taken from
//!   the input, then the rest (pad1 and beyond): the checks after admission.
//!
//! The other flag bits are in `qnet_fuzz::handshake_flags`.
//!
//! The relay acts as a small echo server (answers OPEN, reads and echoes data, closes).
//! Checked: no panic; once `handle_input` fails, `transmit()` is empty, stays empty and
//! every later call fails the same way (a failed session answers nothing); the relay's
//! flight (masked ciphertext, msg2, pad2) is the fixture's; everything an established relay sends opens with the client's
//! key into well-formed frames.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use qnet::proto::frame::{Frame, FrameRepr};
use qnet::proto::kem::EK_LEN;
use qnet::proto::record::Sealer;
use qnet::proto::{Event, OpenError, Session, SessionError};
use qnet_fuzz::handshake_flags::{DRAIN, ECHO, REFUSE, STRANGER};
use qnet_fuzz::{
    End, Input, chunks, client, forged_msg1, next_piece, open_stream, relay_session, seal_raw,
    stranger,
};

/// What the relay's engine would do with its events.
fn serve(relay: &mut Session, now: Instant, flags: u8) {
    let mut buf = [0u8; 512];
    while let Some(ev) = relay.poll_event() {
        match ev {
            Event::Opened { stream, .. } => {
                let result = if flags & REFUSE != 0 {
                    Err(OpenError::Refused)
                } else {
                    Ok(())
                };
                // The stream may be gone already (reset later in the same input).
                let _ = relay.open_result(now, stream, result);
            }
            Event::Readable { stream } => loop {
                match relay.read(now, stream, &mut buf) {
                    Ok(Some(0)) => {
                        let _ = relay.finish(now, stream);
                        break;
                    }
                    Ok(Some(n)) => {
                        if flags & ECHO != 0 {
                            let _ = relay.write(now, stream, &buf[..n]);
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            },
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let sizes = [input.byte() as usize, input.byte() as usize];
    let mode = flags & 3;
    let hs = if mode == 2 && flags & STRANGER != 0 {
        stranger()
    } else {
        client()
    };
    let mut wire = Vec::new();
    match mode {
        0 => wire.extend_from_slice(input.rest()),
        1 => {
            wire.extend_from_slice(&hs.msg1);
            wire.extend_from_slice(input.rest());
        }
        3 => {
            let pad_len = u16::from_be_bytes([input.byte(), input.byte()]);
            let mut ek = [0u8; EK_LEN];
            for b in &mut ek {
                *b = input.byte();
            }
            wire.extend_from_slice(&forged_msg1(pad_len, &ek));
            wire.extend_from_slice(input.rest());
        }
        _ => {
            wire.extend_from_slice(&hs.msg1);
            wire.extend_from_slice(&hs.msg3);
            let mut sealer = Sealer::new(hs.cipher, hs.send);
            for _ in 0..16 {
                let Some(p) = next_piece(&mut input) else {
                    break;
                };
                seal_raw(&mut sealer, &mut wire, p.frame, p.pad);
            }
        }
    }

    let now = Instant::now();
    let mut relay = relay_session(now);
    let mut sent = Vec::new();
    let mut failed: Option<SessionError> = None;
    for piece in chunks(&wire, sizes) {
        if let Err(e) = relay.handle_input(now, piece) {
            assert!(relay.transmit().is_empty(), "failed session still sends");
            assert_eq!(relay.error(), Some(e));
            assert!(!relay.is_established());
            failed = Some(e);
            break;
        }
        serve(&mut relay, now, flags);
        if flags & DRAIN != 0 {
            sent.extend_from_slice(relay.transmit());
            relay.transmit_done(relay.transmit().len());
        }
    }
    if let Some(e) = failed {
        assert_eq!(relay.handle_input(now, b"more"), Err(e));
        assert_eq!(relay.handle_timeout(now), Err(e));
        assert!(
            relay.transmit().is_empty(),
            "failed session sends after more input"
        );
    } else {
        sent.extend_from_slice(relay.transmit());
    }

    if mode == 2 && flags & STRANGER != 0 {
        assert_eq!(failed, Some(SessionError::Handshake), "stranger admitted");
        assert!(sent.is_empty(), "a stranger drew bytes");
    }
    if mode == 2 && failed.is_none() {
        assert!(relay.is_established(), "valid handshake not established");
    }
    if (mode == 1 || mode == 2) && !sent.is_empty() {
        assert_eq!(
            sent[..hs.reply.len()],
            hs.reply,
            "relay's flight differs from the fixture's"
        );
    }
    // Record and protocol errors only happen after the handshake.
    let established = relay.is_established()
        || matches!(
            failed,
            Some(SessionError::Record(_) | SessionError::Protocol(_))
        );
    if established && sent.len() >= hs.reply.len() {
        // Only the fixture client can complete a handshake (nobody else can forge msg1),
        // so whatever follows its flight (ciphertext, msg2, pad2) is sealed with its key.
        let (frames, end) = open_stream(client().cipher, client().recv, &sent[hs.reply.len()..], usize::MAX);
        assert_eq!(end, End::Incomplete(0), "relay output does not open");
        for f in &frames {
            let parsed = FrameRepr::parse(&Frame::new_unchecked(&f[..]));
            assert!(parsed.is_ok(), "relay sent a bad frame: {parsed:?}");
        }
    }
});
