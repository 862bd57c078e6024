//! Quiet-by-default diagnostics on stderr, gated by `QNET_LOG` (or the config's `log`),
//! and the one line a preloaded app's user must see whatever the level (`tell_once`).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::bypass::BypassGuard;
use crate::config::LogLevel;

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
        let _g = BypassGuard::enter();
        eprintln!("qnet: {msg}");
    }
}

/// Print one line to stderr at level `$lvl` (a `LogLevel` variant name).
#[macro_export]
macro_rules! qlog {
    ($lvl:ident, $($arg:tt)*) => {
        if $crate::engine::log::enabled($crate::config::LogLevel::$lvl) {
            eprintln!("qnet[{}]: {}", stringify!($lvl).to_ascii_lowercase(), format_args!($($arg)*));
        }
    };
}
