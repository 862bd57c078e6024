//! Quiet-by-default diagnostics on stderr, gated by `QNET_LOG` (or the config's `log`),
//! and the one line a preloaded app's user must see whatever the level (`tell_once`).
//!
//! Every line goes through [`write_line`]: formatted into a buffer on the stack and
//! written to fd 2 with one `write` loop whose errors are ignored. `eprintln!` would
//! panic on a closed or full stderr (outside any panic boundary on the engine thread),
//! takes std's stderr lock (which a `fork` from another thread can leave held in the
//! child) and allocates; none of that is acceptable inside someone else's process.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::bypass::BypassGuard;
use super::sys;
use crate::config::LogLevel;

/// Longest line written; the rest of a longer one is cut (a log line, not a transcript).
const LINE: usize = 1024;

/// A line being formatted on the stack; what does not fit is dropped, never an error.
struct Line {
    buf: [u8; LINE],
    len: usize,
}

impl std::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        // One byte stays free for the newline.
        let room = LINE - 1 - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Write `args` and a newline to stderr, ignoring every error (no panic, no lock, no
/// allocation of ours). Public for the exported `qlog!` macro.
#[doc(hidden)]
pub fn write_line(args: std::fmt::Arguments<'_>) {
    emit(2, args);
}

/// [`write_line`] to any fd.
fn emit(fd: i32, args: std::fmt::Arguments<'_>) {
    let mut line = Line {
        buf: [0; LINE],
        len: 0,
    };
    // A Display impl may report an error; what was written so far is still printed.
    let _ = line.write_fmt(args);
    line.buf[line.len] = b'\n';
    let _g = BypassGuard::enter();
    sys::write_ignoring_errors(fd, &line.buf[..=line.len]);
}

/// The name a level is printed with.
#[doc(hidden)]
pub fn level_name(l: LogLevel) -> &'static str {
    l.as_str()
}

static LEVEL: AtomicU8 = AtomicU8::new(2);

fn rank(l: LogLevel) -> u8 {
    match l {
        LogLevel::Off => 0,
        LogLevel::Error => 1,
        LogLevel::Warn => 2,
        LogLevel::Info => 3,
        LogLevel::Debug => 4,
        LogLevel::Trace => 5,
    }
}

/// Set the process-wide level.
pub fn set_level(l: LogLevel) {
    LEVEL.store(rank(l), Ordering::Relaxed);
}

/// Whether messages at `l` are printed.
pub fn enabled(l: LogLevel) -> bool {
    rank(l) <= LEVEL.load(Ordering::Relaxed) && rank(l) > 0
}

static TOLD: AtomicBool = AtomicBool::new(false);

/// The one stderr line for a failure the app's user must see (printed once per process).
pub(crate) fn tell_once(msg: &str) {
    if !TOLD.swap(true, Ordering::Relaxed) {
        write_line(format_args!("qnet: {msg}"));
    }
}

/// Print one line to stderr at level `$lvl` (a `LogLevel` variant name).
#[macro_export]
macro_rules! qlog {
    ($lvl:ident, $($arg:tt)*) => {
        if $crate::engine::log::enabled($crate::config::LogLevel::$lvl) {
            $crate::engine::log::write_line(format_args!(
                "qnet[{}]: {}",
                $crate::engine::log::level_name($crate::config::LogLevel::$lvl),
                format_args!($($arg)*)
            ));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_line_is_cut_not_a_panic() {
        let mut line = Line {
            buf: [0; LINE],
            len: 0,
        };
        let long = "x".repeat(3 * LINE);
        assert!(line.write_fmt(format_args!("{long}{long}")).is_ok());
        assert_eq!(line.len, LINE - 1, "room is kept for the newline");
    }

    #[test]
    fn write_errors_are_ignored_not_a_panic() {
        // `eprintln!` panics when stderr is closed (EBADF) or its reader is gone (EPIPE;
        // Rust ignores SIGPIPE); `write_line` must return quietly.
        emit(-1, format_args!("qnet: nobody reads this"));
        let (r, w) = std::io::pipe().expect("pipe");
        drop(r);
        emit(
            std::os::fd::AsRawFd::as_raw_fd(&w),
            format_args!("qnet: nor this"),
        );
    }
}
