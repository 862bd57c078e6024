//! The table `qnet status` prints: one line per process, then a line per path and one
//! for refusals, indented. Pure: the listing and the time are given.

use std::fmt::Write as _;
use std::time::Duration;

use super::{Listed, PathStatus};

/// The table of `list` (from [`super::list`]), or a line saying there is nothing.
pub fn table(list: &[Listed]) -> String {
    if list.is_empty() {
        return "no qnet processes\n".to_owned();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<15} {:<8} {:>7} {:>9} {:>9}  {:<21} {:>8} {:>7} {:>5}  PROFILE",
        "PID", "PROGRAM", "KIND", "STREAMS", "SENT", "RECEIVED", "RELAY", "RTT", "AGE", "EPOCH",
    );
    for l in list {
        let s = &l.snapshot;
        let (relay, rtt, age, epoch) = match &s.session {
            Some(x) => (
                x.relay.clone(),
                x.rtt_us.map_or("-".into(), rtt),
                ago(Duration::from_millis(x.age_ms)),
                x.key_epoch.to_string(),
            ),
            None => ("(no session)".into(), "-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{:<8} {:<15} {:<8} {:>7} {:>9} {:>9}  {:<21} {:>8} {:>7} {:>5}  {}{}",
            s.pid,
            s.program,
            s.kind.name(),
            s.streams_open,
            bytes(s.bytes_sent),
            bytes(s.bytes_received),
            relay,
            rtt,
            age,
            epoch,
            s.profile,
            if l.stale { "  (stale)" } else { "" }
        );
        for p in &s.paths {
            let _ = writeln!(out, "         path {}", path_line(p));
        }
        if let Some(x) = s.session.as_ref().filter(|x| !x.cipher.is_empty()) {
            let _ = writeln!(out, "         records: {}", x.cipher);
        }
        if s.lateness.count > 0 || s.shaping_failures > 0 {
            let l = &s.lateness;
            let _ = writeln!(
                out,
                "         shaping: {} departures, late p50 {}us p99 {}us max {}us; {} failed closed",
                l.count, l.p50_us, l.p99_us, l.max_us, s.shaping_failures
            );
        }
        let refused: Vec<String> = s
            .refusals
            .iter()
            .filter(|&(_, &n)| n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if !refused.is_empty() {
            let _ = writeln!(out, "         refused: {}", refused.join(", "));
        }
        if let Some(t) = &s.tor {
            let boot = t.bootstrap_percent.map_or("?".into(), |p| format!("{p} %"));
            let err = t.error.as_ref().map_or(String::new(), |e| format!("; {e}"));
            let _ = writeln!(out, "         tor: bootstrap {boot} ({}){err}", t.summary);
            for c in &t.circuits {
                let exit = c.exit.as_deref().unwrap_or("?");
                let _ = writeln!(
                    out,
                    "         tor: session from {} on circuit {} exit {exit}",
                    c.local, c.circuit
                );
            }
        }
    }
    // Program names, relay and Tor names come from files and other processes: no
    // terminal escapes from them reach the screen.
    out.chars()
        .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
        .collect()
}

/// A path: its hops, its state, and whether new streams go there.
fn path_line(p: &PathStatus) -> String {
    let mut line = p.hops.join(" -> ");
    match p.retry_in_ms {
        Some(ms) if p.state == "down" => {
            // Rounded up: "in 0s" would say it is being tried now.
            let secs = ms.div_ceil(1000);
            let _ = write!(line, "  down, retry in {}", ago(Duration::from_secs(secs)));
        }
        _ => {
            let _ = write!(line, "  {}", p.state);
        }
    }
    if p.current {
        line.push_str("  current");
    }
    line
}

/// A round trip: µs below a millisecond, else ms.
fn rtt(us: u64) -> String {
    if us < 1000 {
        format!("{us}us")
    } else {
        format!("{:.1}ms", us as f64 / 1000.0)
    }
}

/// A byte count in binary units.
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// A duration in the table's words: `42s`, `3m07s`, `2h05m`.
pub(super) fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// `list` as one JSON document (an array of processes): pretty, or on one line (for
/// `--watch`, a line per refresh).
pub fn json(list: &[Listed], pretty: bool) -> String {
    let r = match pretty {
        true => serde_json::to_string_pretty(list),
        false => serde_json::to_string(list),
    };
    // Plain data with string keys: serializing it cannot fail.
    r.unwrap_or_else(|_| "[]".into())
}
