use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::time::Duration;

use super::file::{Verdict, file_of, judge, parse_start_time, start_time_of, unfinished_of};
use super::show::{ago, bytes};
use super::*;
use crate::engine::rundir;

/// A fresh directory for one test, removed by the caller.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qnet-status-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.join("qnet")
}

fn sample(p: &Publisher, now_ms: u64) -> Snapshot {
    let mut s = p.blank(now_ms);
    s.paths = vec![
        PathStatus {
            hops: vec!["127.0.0.1:7000".into()],
            state: "up".into(),
            retry_in_ms: None,
            current: true,
        },
        PathStatus {
            hops: vec!["127.0.0.1:7001".into(), "[::1]:7002".into()],
            state: "down".into(),
            retry_in_ms: Some(5000),
            current: false,
        },
    ];
    s.session = Some(SessionStatus {
        path: 0,
        relay: "127.0.0.1:7000".into(),
        age_ms: 61_000,
        rtt_us: Some(350),
        key_epoch: 2,
        key_epoch_peer: 1,
        cipher: "aes-256-gcm".into(),
    });
    s.streams_open = 3;
    s.bytes_sent = 5000;
    s.bytes_received = 123_456;
    s.profile = "performance".into();
    s.refusals.insert("udp".into(), 2);
    s
}

#[test]
fn a_snapshot_round_trips_through_its_file_and_the_file_goes_with_its_publisher() {
    let dir = scratch("round");
    let p = Publisher::new(&dir, Kind::Forward).expect("/proc");
    let now = 1_700_000_000_000;
    let snap = sample(&p, now);
    p.write(&snap).unwrap();
    let file = file_of(&dir, std::process::id());
    // Private: the directory 0700, the file 0600.
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    let listed = list(&dir, now + 1000);
    // As read one second after the write: the session is a second older.
    let mut aged = snap.clone();
    aged.session.as_mut().unwrap().age_ms += 1000;
    aged.paths[1].retry_in_ms = Some(4000);
    assert_eq!(
        listed,
        [Listed {
            snapshot: aged,
            stale: false
        }]
    );
    // Not rewritten for longer than STALE_AFTER: still listed, marked stale.
    let later = now + STALE_AFTER.as_millis() as u64 + 1;
    assert!(list(&dir, later)[0].stale);
    // The JSON has the field names scripts use, and `tor` as null.
    let json = serde_json::to_value(&listed[0]).unwrap();
    assert_eq!(json["kind"], "forward");
    assert_eq!(json["session"]["relay"], "127.0.0.1:7000");
    assert_eq!(json["refusals"]["udp"], 2);
    assert!(json["tor"].is_null());
    assert_eq!(json["stale"], false);
    let t = table(&listed);
    assert!(
        t.contains("forward") && t.contains("120.6 KiB") && t.contains("1m02s"),
        "{t}"
    );
    assert!(t.contains("refused: udp 2") && t.contains(" 350us "), "{t}");
    assert!(t.contains("path 127.0.0.1:7000  up  current"), "{t}");
    assert!(t.contains("records: aes-256-gcm"), "{t}");
    assert!(
        t.contains("path 127.0.0.1:7001 -> [::1]:7002  down, retry in 4s"),
        "{t}"
    );
    // A program name is whatever the process set: no terminal escape reaches the table.
    let mut evil = listed[0].clone();
    evil.snapshot.program = "x\u{1b}]0;owned\u{7}".into();
    let t = table(&[evil]);
    assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
    drop(p);
    assert!(!file.exists(), "removed with its publisher");
    assert!(list(&dir, now).is_empty());
    assert_eq!(table(&[]), "no qnet processes\n");
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn files_of_dead_processes_and_reused_pids_are_removed_and_garbage_is_skipped() {
    let dir = scratch("stale");
    let p = Publisher::new(&dir, Kind::Preload).unwrap();
    let me = std::process::id();
    let mut snap = sample(&p, 1000);
    // A pid above any pid_max (2^22): no such process.
    let dead = 1 << 23;
    snap.pid = dead;
    rundir::replace(&file_of(&dir, dead), &serde_json::to_vec(&snap).unwrap()).unwrap();
    // Our own pid, but another start time: the pid was reused.
    let mut reused = sample(&p, 1000);
    reused.start_time += 1;
    let reused_file = file_of(&dir, me);
    rundir::replace(&reused_file, &serde_json::to_vec(&reused).unwrap()).unwrap();
    // Garbage in a live process's file: skipped, kept (its writer replaces it).
    let parent = std::os::unix::process::parent_id();
    let garbage = file_of(&dir, parent);
    rundir::replace(&garbage, b"{\"version\":1,\"pid\":").unwrap();
    assert!(list(&dir, 1000).is_empty());
    assert!(
        !file_of(&dir, dead).exists(),
        "a dead process's file is removed"
    );
    assert!(!reused_file.exists(), "a reused pid's file is removed");
    assert!(garbage.exists());
    // A file naming another pid than its name, or another version: skipped.
    let mut other = sample(&p, 1000);
    other.pid = parent;
    let f = file_of(&dir, me);
    rundir::replace(&f, &serde_json::to_vec(&other).unwrap()).unwrap();
    assert!(matches!(
        judge(&f, me, || start_time_of("self")),
        Verdict::Skip
    ));
    let mut v2 = sample(&p, 1000);
    v2.version = VERSION + 1;
    rundir::replace(&f, &serde_json::to_vec(&v2).unwrap()).unwrap();
    assert!(matches!(
        judge(&f, me, || start_time_of("self")),
        Verdict::Skip
    ));
    // An unfinished write of a dead process goes; one of a live process stays.
    let dead_tmp = dir.join(format!(".status.{dead}-0123456789abcdef"));
    let live_tmp = dir.join(format!(".status.{me}-0123456789abcdef"));
    std::fs::write(&dead_tmp, b"{").unwrap();
    std::fs::write(&live_tmp, b"{").unwrap();
    list(&dir, 1000);
    assert!(!dead_tmp.exists() && live_tmp.exists());
    assert_eq!(unfinished_of(".status.12-0123456789abcdef"), Some(12));
    assert_eq!(unfinished_of(".status.12-xyz"), None);
    assert_eq!(unfinished_of("status.12"), None);
    drop(p);
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn a_file_others_may_write_is_not_believed() {
    let dir = scratch("mode");
    let p = Publisher::new(&dir, Kind::Socks).unwrap();
    p.write(&sample(&p, 1000)).unwrap();
    let f = file_of(&dir, std::process::id());
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o622)).unwrap();
    assert!(matches!(
        judge(&f, std::process::id(), || start_time_of("self")),
        Verdict::Skip
    ));
    assert!(list(&dir, 1000).is_empty());
    drop(p);
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn the_start_time_is_field_22_even_when_the_name_has_spaces_and_parens() {
    let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                1000 100 18446744073709551615";
    assert_eq!(parse_start_time(line), Some(987_654));
    assert_eq!(parse_start_time("1234 (x) S 1"), None);
    assert!(start_time_of("self").is_some());
}

#[test]
fn lateness_percentiles_are_bucket_bounds_capped_by_the_worst() {
    let mut l = crate::engine::wheel::Lateness::default();
    assert_eq!(LatenessStatus::of(&l), LatenessStatus::default());
    for _ in 0..98 {
        l.record(30_000);
    }
    l.record(700_000);
    l.record(9_000_000);
    let s = LatenessStatus::of(&l);
    assert_eq!(
        (s.count, s.p50_us, s.p99_us, s.max_us),
        (100, 50, 1000, 9000)
    );
    assert_eq!(s.buckets, [98, 0, 0, 0, 1, 0, 0, 1]);
}

#[test]
fn table_units() {
    assert_eq!(bytes(0), "0 B");
    assert_eq!(bytes(2048), "2.0 KiB");
    assert_eq!(ago(Duration::from_secs(7300)), "2h01m");
}
