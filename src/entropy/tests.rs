use std::collections::HashSet;
use std::io::Write as _;
use std::sync::atomic::AtomicUsize;

use super::*;
use crate::proto::Random as _;

/// A private ring with an injected OS source (leaked: collectors need `'static`).
fn ring(os: OsRead) -> &'static Shared {
    Box::leak(Box::new(Shared::new(os)))
}

fn drain_buffer(l: &mut Local) {
    while l.rng.available() >= 8 {
        l.next_u64().unwrap();
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "qnet-entropy-{tag}-{}-{}",
            std::process::id(),
            next_u64().unwrap()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn threads_never_share_output() {
    let handles: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let mut v: Vec<u64> = (0..50_000).map(|_| next_u64().unwrap()).collect();
                let mut b = [0u8; 4000];
                for _ in 0..20 {
                    fill(&mut b).unwrap();
                    v.extend(
                        b.chunks(8)
                            .map(|c| u64::from_le_bytes(c.try_into().unwrap())),
                    );
                }
                v
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut n = 0;
    for h in handles {
        for x in h.join().unwrap() {
            n += 1;
            assert!(seen.insert(x), "{x:#x} was served twice");
        }
    }
    assert_eq!(n, 4 * (50_000 + 20 * 500));
    let s = stats();
    assert!(s.reseeds >= 4 && s.bytes_generated >= 8 * n as u64, "{s}");
    assert_eq!(s.failed, None);
}

#[test]
fn seed32_and_ring_random_differ_each_call() {
    let a = seed32().unwrap();
    let b = seed32().unwrap();
    assert_ne!(a, b);
    let mut r = RingRandom;
    let (mut x, mut y) = ([0u8; 100], [0u8; 100]);
    r.fill(&mut x);
    r.fill(&mut y);
    assert_ne!(x, y);
}

#[test]
fn generation_bump_reseeds() {
    let sh = ring(getrandom_fill);
    let mut l = Local::new(sh);
    l.next_u64().unwrap();
    assert_eq!(sh.reseeds.load(Ordering::Relaxed), 1);
    // Further buffers without a new generation: no reseed.
    for _ in 0..3 {
        drain_buffer(&mut l);
        l.next_u64().unwrap();
    }
    assert_eq!(sh.reseeds.load(Ordering::Relaxed), 1);
    sh.generation.fetch_add(1, Ordering::Release);
    // The buffered bytes are served first; the next refill reseeds.
    l.next_u64().unwrap();
    assert_eq!(sh.reseeds.load(Ordering::Relaxed), 1);
    drain_buffer(&mut l);
    l.next_u64().unwrap();
    assert_eq!(sh.reseeds.load(Ordering::Relaxed), 2);
    assert_eq!(sh.os_bytes.load(Ordering::Relaxed), 64);
}

#[test]
fn byte_bound_reseeds() {
    let sh = ring(getrandom_fill);
    let mut l = Local::new(sh);
    let mut buf = vec![0u8; RESEED_BYTES as usize];
    l.fill(&mut buf).unwrap();
    assert_eq!(sh.reseeds.load(Ordering::Relaxed), 1);
    l.fill(&mut buf[..SERVED_PER_REFILL * 2]).unwrap();
    assert_eq!(sh.reseeds.load(Ordering::Relaxed), 2);
}

#[test]
fn fork_epoch_discards_the_buffer() {
    let sh = ring(getrandom_fill);
    let mut l = Local::new(sh);
    l.next_u64().unwrap();
    let left = l.rng.available();
    assert!(left > 0);
    // What the child handler does: the next draw must not come from the old buffer.
    l.fork_epoch = l.fork_epoch.wrapping_sub(1);
    l.next_u64().unwrap();
    assert_eq!(sh.reseeds.load(Ordering::Relaxed), 2);
    assert_eq!(l.rng.available(), SERVED_PER_REFILL - 8);
}

#[test]
fn a_new_pid_reseeds_within_pid_check_every_refills() {
    let sh = ring(getrandom_fill);
    let mut l = Local::new(sh);
    l.next_u64().unwrap();
    // As after a clone() that ran no atfork handler.
    l.pid = l.pid.wrapping_add(1);
    for _ in 0..PID_CHECK_EVERY {
        drain_buffer(&mut l);
        l.next_u64().unwrap();
    }
    assert_eq!(sh.reseeds.load(Ordering::Relaxed), 2);
    assert_eq!(l.pid, std::process::id());
}

#[test]
fn stuck_os_source_fails_closed() {
    let sh = ring(|b| {
        b.fill(0);
        Ok(())
    });
    let mut l = Local::new(sh);
    let mut out = [0x55u8; 64];
    let e = l.fill(&mut out).unwrap_err();
    assert!(
        matches!(&e, EntropyError::Failed(m) if m.contains("repetition count test failed")),
        "{e}"
    );
    assert_eq!(out, [0; 64], "nothing may be produced");
    assert!(l.next_u64().is_err());
    // Every other thread too.
    assert!(Local::new(sh).next_u64().is_err());
    assert_eq!(sh.os_health_failures.load(Ordering::Relaxed), 2);
    assert!(sh.stats().failed.is_some());
}

#[test]
fn os_error_fails_closed() {
    let sh = ring(|_| Err("no entropy interface".to_owned()));
    let e = Local::new(sh).next_u64().unwrap_err();
    assert_eq!(
        e.to_string(),
        "entropy: the OS random source failed, no random bytes are produced: getrandom: no entropy interface"
    );
}

#[test]
fn one_os_false_alarm_is_retested_not_fatal() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let sh = ring(|b| {
        getrandom::fill(b).unwrap();
        // The second read starts with a run a perfect source produces now and then.
        if CALLS.fetch_add(1, Ordering::Relaxed) == 1 {
            b[..4].fill(7);
        }
        Ok(())
    });
    let mut l = Local::new(sh);
    l.next_u64().unwrap();
    drain_buffer(&mut l);
    sh.generation.fetch_add(1, Ordering::Relaxed);
    l.next_u64().unwrap();
    assert_eq!(sh.os_health_failures.load(Ordering::Relaxed), 1);
    assert_eq!(sh.reseeds.load(Ordering::Relaxed), 2);
    assert!(!sh.failed.load(Ordering::Relaxed));
}

#[test]
fn path_sources_are_read_tested_and_dropped() {
    let dir = TempDir::new("paths");
    let zeros = dir.file("zeros", &[0; 4096]);
    let mut good = vec![0u8; 4096];
    getrandom::fill(&mut good).unwrap();
    let good = dir.file("good", &good);
    let sh = ring(getrandom_fill);
    let cfg = EntropyConfig {
        sources: vec![
            EntropySource {
                path: zeros.clone(),
                min_entropy: 4.0,
            },
            EntropySource {
                path: good.clone(),
                min_entropy: 8.0,
            },
        ],
    };
    sh.configure(&cfg).unwrap();
    let g0 = sh.generation.load(Ordering::Relaxed);
    assert!(sh.settle(Duration::from_secs(10)));
    let s = sh.stats();
    assert_eq!(s.sources.len(), 2);
    let z = &s.sources[0];
    assert_eq!(
        z.dropped.as_deref(),
        Some("repetition count test failed (6 identical samples)")
    );
    assert_eq!(z.health_failures, 1);
    let g = &s.sources[1];
    assert_eq!(g.dropped, None);
    assert_eq!(g.bytes_read, batch_len(8.0) as u64);
    assert_eq!(s.sources_dropped, 1);
    assert!(sh.generation.load(Ordering::Relaxed) > g0);
    // The healthy source's bytes go into the next seed.
    let st = sh.state.lock();
    assert!(st.sources[0].latest.is_empty());
    assert_eq!(st.sources[1].latest.len(), batch_len(8.0));
}

#[test]
fn path_source_end_of_file_is_reported() {
    let dir = TempDir::new("eof");
    let mut short = vec![0u8; 10];
    getrandom::fill(&mut short).unwrap();
    let short = dir.file("short", &short);
    let sh = ring(getrandom_fill);
    sh.configure(&EntropyConfig {
        sources: vec![EntropySource {
            path: short,
            min_entropy: 8.0,
        }],
    })
    .unwrap();
    assert!(sh.settle(Duration::from_secs(10)));
    let s = sh.stats();
    assert_eq!(
        s.sources[0].dropped.as_deref(),
        Some("end of file after 10 bytes of a batch")
    );
    assert_eq!(s.sources[0].health_failures, 0);
}

#[test]
fn configure_rejects_bad_sources() {
    let sh = ring(getrandom_fill);
    let dir = TempDir::new("bad");
    let f = dir.file("f", b"x");
    for (path, h, expect) in [
        (dir.0.join("missing"), 4.0, "No such file or directory"),
        (dir.0.clone(), 4.0, "is a directory"),
        (f.clone(), 0.0, "min_entropy must be greater than 0"),
        (f.clone(), f64::NAN, "min_entropy must be greater than 0"),
        (f, 8.5, "at most 8"),
    ] {
        let e = sh
            .configure(&EntropyConfig {
                sources: vec![EntropySource {
                    path: path.clone(),
                    min_entropy: h,
                }],
            })
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("entropy source {}: ", path.display())));
        assert!(msg.contains(expect), "{msg}");
    }
    assert!(sh.stats().sources.is_empty());
}

#[test]
fn stats_display() {
    let sh = ring(getrandom_fill);
    Local::new(sh).next_u64().unwrap();
    let text = sh.stats().to_string();
    assert!(
        text.starts_with("os: 32 bytes read, 0 health failures\n"),
        "{text}"
    );
    assert!(text.ends_with(&format!("bytes generated: {SERVED_PER_REFILL}")));
}
