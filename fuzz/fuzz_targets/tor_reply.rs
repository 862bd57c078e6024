//! Tor control-port replies on arbitrary bytes: no panics, and the same replies whether
//! the bytes arrive at once or in two pieces (the first byte picks the split).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    qnet::tor::fuzz_reply(rest, usize::from(split));
});
