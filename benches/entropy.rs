//! ns per random u64: the entropy ring against getrandom and rand's ThreadRng, with 1 and
//! 2 threads drawing at once (the ring's draws should touch no shared memory, so two
//! threads should cost each no more than one).
//!
//! `cargo bench --bench entropy`; `QNET_BENCH_DRAWS` sets the draws per thread and round.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use rand::RngCore;

type Draw = fn() -> u64;

fn ring() -> u64 {
    qnet::entropy::next_u64().expect("entropy ring")
}

fn os() -> u64 {
    getrandom::u64().expect("getrandom")
}

fn thread_rng() -> u64 {
    rand::rng().next_u64()
}

/// The floor: 8 bytes of a 1 KiB ChaCha20 keystream buffer, without key erasure,
/// zeroing, reseeding or fork checks.
fn raw_chacha20() -> u64 {
    use chacha20::ChaCha20;
    use chacha20::cipher::{KeyIvInit, StreamCipher};
    use std::cell::RefCell;
    thread_local! {
        static S: RefCell<(ChaCha20, [u8; 1024], usize)> =
            RefCell::new((ChaCha20::new(&[7; 32].into(), &[0; 12].into()), [0; 1024], 1024));
    }
    S.with_borrow_mut(|(c, buf, pos)| {
        if *pos == buf.len() {
            c.apply_keystream(buf);
            *pos = 0;
        }
        let v = u64::from_le_bytes(buf[*pos..*pos + 8].try_into().expect("8 bytes"));
        *pos += 8;
        v
    })
}

/// Per-draw time of `threads` threads each making `draws` draws at once; the slowest
/// thread's wall time, best of `rounds` rounds.
fn measure(draw: Draw, threads: usize, draws: u64, rounds: usize) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let barrier = Barrier::new(threads);
        let slowest = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        // Warm up: the thread's generator seeds on its first draw.
                        for _ in 0..1000 {
                            black_box(draw());
                        }
                        barrier.wait();
                        let t = Instant::now();
                        let mut acc = 0u64;
                        for _ in 0..draws {
                            acc ^= draw();
                        }
                        black_box(acc);
                        t.elapsed()
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("bench thread"))
                .max()
                .expect("threads")
        });
        best = best.min(slowest);
    }
    best.as_nanos() as f64 / draws as f64
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let draws: u64 = std::env::var("QNET_BENCH_DRAWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000_000);
    let cases: [(&str, Draw, u64); 4] = [
        ("entropy::next_u64", ring, draws),
        // A syscall per draw: far fewer draws for the same time.
        ("getrandom::u64", os, draws / 50),
        ("rand ThreadRng", thread_rng, draws),
        ("raw ChaCha20 buffer", raw_chacha20, draws),
    ];
    let mut rows = Vec::new();
    for (name, f, n) in cases {
        let one = measure(f, 1, n, 3);
        let two = measure(f, 2, n, 3);
        rows.push((name, one, two));
    }
    let ring1 = rows[0].1;
    println!(
        "{:<20} {:>12} {:>12} {:>10} {:>14}",
        "ns per u64", "1 thread", "2 threads", "2t / 1t", "1t vs ring"
    );
    for (name, one, two) in &rows {
        println!(
            "{:<20} {:>12.2} {:>12.2} {:>10.2} {:>14.2}",
            name,
            one,
            two,
            two / one,
            one / ring1
        );
    }
    let s = qnet::entropy::stats();
    println!(
        "ring: {} reseeds, {} bytes generated, {} OS bytes",
        s.reseeds, s.bytes_generated, s.os_bytes
    );
}
