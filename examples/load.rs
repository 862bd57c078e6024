//! Many clients through one relay, for scripts/bench: the soak of tests/soak.rs (the same
//! code, tests/common/load.rs) against a relay binary given on the command line, with
//! its numbers printed as `result NAME VALUE` lines.
//!
//! ```sh
//! cargo build --release --bin qnet-relay --example load
//! target/release/examples/load target/release/qnet-relay [CLIENTS [STREAMS_PER_CLIENT]]
//! ```
//!
//! CLIENTS (10,000) sessions, each from its own connection, with STREAMS_PER_CLIENT (1)
//! idle streams to a loopback echo server; then all closed. It needs two fds per client
//! in this process and in the relay: as root it raises RLIMIT_NOFILE (both limits),
//! otherwise it runs as many clients as the hard limit allows and says so. Exits 1 if a
//! session or stream failed or the relay kept fds after the clients left.

#[path = "../tests/common/load.rs"]
mod load;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use load::{SoakParams, raise_nofile, soak};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(relay) = args.next().map(PathBuf::from) else {
        eprintln!("usage: load QNET_RELAY_BINARY [CLIENTS [STREAMS_PER_CLIENT]]");
        return ExitCode::from(2);
    };
    let wanted: usize = args.next().map_or(10_000, |a| a.parse().expect("CLIENTS"));
    let per: usize = args
        .next()
        .map_or(1, |a| a.parse().expect("STREAMS_PER_CLIENT"));
    let limit = raise_nofile(((1 + per) * wanted + 256) as u64);
    let clients = wanted.min((limit.saturating_sub(64) / (1 + per) as u64) as usize);
    if clients < wanted {
        println!("RLIMIT_NOFILE {limit}: {clients} clients instead of {wanted}");
    }
    let p = SoakParams {
        sessions: clients,
        streams_per_session: per,
        ..SoakParams::default()
    };
    let dir = std::env::temp_dir().join(format!("qnet-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let t0 = Instant::now();
    let r = soak(&relay, &dir, "", &p, &mut |line| {
        println!("[{:5.1} s] {line}", t0.elapsed().as_secs_f64())
    });
    let _ = std::fs::remove_dir_all(&dir);
    let results = [
        ("clients", clients as f64),
        ("streams_per_client", per as f64),
        ("sessions_failed", r.sessions.failed as f64),
        ("streams_failed", r.streams.failed as f64),
        ("sessions_per_sec", r.sessions.rate()),
        ("streams_per_sec", r.streams.rate()),
        ("rss_session_kib", r.per_session_kib()),
        ("rss_stream_kib", r.per_stream_kib()),
        ("rss_start_kib", r.start.rss_kib as f64),
        ("rss_sessions_kib", r.with_sessions.rss_kib as f64),
        ("rss_streams_kib", r.with_streams.rss_kib as f64),
        ("rss_closed_kib", r.closed.rss_kib as f64),
        (
            "rss_left_kib",
            r.closed.rss_kib as f64 - r.start.rss_kib as f64,
        ),
    ];
    for (k, v) in results {
        println!("result {k} {v:.3}");
    }
    let failed = r.sessions.failed + r.streams.failed + r.lost;
    if failed > 0 || r.fds_back_secs.is_none() {
        println!(
            "FAILED: {failed} sessions or streams failed or lost; relay fds {} after, {} before",
            r.closed.fds, r.start.fds
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
