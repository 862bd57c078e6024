//! Frame parsing on arbitrary bytes: no panics, and parse/emit round-trips exactly.
//!
//! The session parses with `Frame::new_unchecked` + `FrameRepr::parse`; that must agree
//! with `Frame::new_checked` + `FrameRepr::parse`. A frame that parses, emitted into a
//! buffer of `buffer_len()` plus the original padding, must give back the input bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qnet::proto::OpenError;
use qnet::proto::frame::{Frame, FrameRepr, HEADER_LEN, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let unchecked = FrameRepr::parse(&Frame::new_unchecked(data));
    let checked = Frame::new_checked(data).and_then(|f| FrameRepr::parse(&f));
    assert_eq!(unchecked, checked, "checked and unchecked views disagree");
    let Ok(repr) = checked else {
        return;
    };

    let frame = Frame::new_checked(data).expect("parsed above");
    assert!(data.len() <= MAX_FRAME);
    assert_eq!(repr.payload_len(), frame.payload_len());
    assert_eq!(repr.stream(), frame.stream_id());
    let pad = frame.padding().len();
    assert_eq!(repr.buffer_len() + pad, data.len());

    let mut out = vec![0xa5; repr.buffer_len() + pad];
    repr.emit(&mut out);
    let mut want = data.to_vec();
    if let FrameRepr::OpenResult {
        result: Err(OpenError::Failure),
        ..
    } = repr
    {
        // Documented as lossy: every unknown result code reads as Failure (8).
        want[HEADER_LEN] = OpenError::Failure as u8;
    }
    assert_eq!(out, want, "emit(parse(x)) != x for {repr:?}");

    let again = Frame::new_checked(&out[..]).and_then(|f| FrameRepr::parse(&f));
    assert_eq!(again, Ok(repr));
});
