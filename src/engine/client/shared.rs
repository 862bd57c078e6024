//! What this user's qnet processes learned about their paths, shared through one small
//! file in `$XDG_RUNTIME_DIR/qnet/` (the user's own directory, mode 0700, on tmpfs), so a
//! short-lived program that starts while a relay is down does not find that out again.
//!
//! One line per path that is down: `<retry time, unix ms> <path>`, the path written as
//! its hops' `address@key`, comma-separated. Advisory only: a file that is missing,
//! unreadable, not ours, or malformed is treated as empty, and a failed write is
//! ignored. It can only delay a path's first try (never past [`MAX_HOLD`]), never send a
//! byte anywhere but a configured relay.

use std::path::Path;
use std::time::Duration;

use super::config::Hop;
use crate::engine::rundir;

/// At most this many lines are kept (the oldest retry times go first).
const MAX_LINES: usize = 256;
/// A retry time further ahead than this is not believed.
pub(super) const MAX_HOLD: Duration = Duration::from_secs(60);

/// The file's name in the qnet runtime directory (`rundir`).
pub(super) const NAME: &str = "health";

/// The file under `runtime_dir` (normally `$XDG_RUNTIME_DIR`); tests give their own.
#[cfg(test)]
pub(crate) fn file_in(runtime_dir: &Path) -> std::path::PathBuf {
    rundir::in_runtime(runtime_dir).join(NAME)
}

/// How a path is named in the file.
pub(super) fn path_id(hops: &[Hop]) -> String {
    hops.iter()
        .map(|h| {
            format!(
                "{}@{}",
                h.address,
                crate::keys::PublicKey(h.key).to_base64()
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The paths the file says are down, with their retry times (unix ms) still ahead of
/// `now_ms`.
pub(super) fn read(file: &Path, now_ms: u64) -> Vec<(String, u64)> {
    let Ok(text) = read_own(file) else {
        return Vec::new();
    };
    parse(&text, now_ms)
}

fn parse(text: &str, now_ms: u64) -> Vec<(String, u64)> {
    let hold = MAX_HOLD.as_millis() as u64;
    text.lines()
        .filter_map(|l| {
            let (t, id) = l.split_once(' ')?;
            let t: u64 = t.parse().ok()?;
            (t > now_ms && t <= now_ms + hold && !id.is_empty()).then(|| (id.to_owned(), t))
        })
        .take(MAX_LINES)
        .collect()
}

/// The file, through the runtime directory's one rule for its files (`rundir`): read
/// only if this user (or root) owns it and no one else may write it.
fn read_own(file: &Path) -> std::io::Result<String> {
    rundir::read_own(file, "health file", 64 * 1024)
}

/// Record that path `id` is down until `until_ms` (`Some`), or up (`None`).
pub(super) fn record(file: &Path, id: &str, until_ms: Option<u64>, now_ms: u64) {
    let mut lines: Vec<(String, u64)> = read(file, now_ms)
        .into_iter()
        .filter(|(other, _)| other != id)
        .collect();
    if let Some(t) = until_ms {
        lines.push((id.to_owned(), t));
    }
    lines.sort_by_key(|&(_, t)| std::cmp::Reverse(t));
    lines.truncate(MAX_LINES);
    let _ = write(file, &lines);
}

fn write(file: &Path, lines: &[(String, u64)]) -> std::io::Result<()> {
    let mut text = String::new();
    for (id, t) in lines {
        text.push_str(&format!("{t} {id}\n"));
    }
    rundir::replace(file, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn hop(a: &str, k: u8) -> Hop {
        Hop {
            address: a.into(),
            key: [k; 32],
        }
    }

    #[test]
    fn the_shared_file_keeps_down_paths_until_their_retry_and_forgets_up_ones() {
        let dir = std::env::temp_dir().join(format!("qnet-shared-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = file_in(&dir);
        let a = path_id(&[hop("10.0.0.1:7000", 1)]);
        let b = path_id(&[hop("10.0.0.1:7000", 1), hop("[::1]:7001", 2)]);
        assert!(b.contains(",[::1]:7001@"), "{b}");
        assert!(read(&file, 1000).is_empty(), "a missing file is empty");
        record(&file, &a, Some(5000), 1000);
        record(&file, &b, Some(9000), 1000);
        assert_eq!(read(&file, 1000), [(b.clone(), 9000), (a.clone(), 5000)]);
        // Past its retry time a line no longer counts.
        assert_eq!(read(&file, 6000), [(b.clone(), 9000)]);
        record(&file, &b, None, 1000);
        assert_eq!(read(&file, 1000), [(a.clone(), 5000)]);
        let mode =
            std::os::unix::fs::MetadataExt::mode(&fs::metadata(file.parent().unwrap()).unwrap())
                & 0o777;
        assert_eq!(mode, 0o700);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_or_far_future_lines_are_ignored() {
        let text = "x y\n12\n5000 \n999999999 far\n4000 ok\n";
        assert_eq!(parse(text, 1000), [("ok".to_owned(), 4000)]);
    }
}
