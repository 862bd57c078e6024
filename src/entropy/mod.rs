//! The entropy ring: health-tested sources conditioned into per-thread ChaCha20 generators.
//!
//! - Sources: the OS (`getrandom`) always; any number of configured paths (a device such
//!   as `/dev/hwrng`, a QRNG card, a regular file, a FIFO fed by a vendor tool), each
//!   with a claimed min-entropy `H` per byte (default
//!   [`EntropySource::DEFAULT_MIN_ENTROPY`] = 4; the OS is taken as 8).
//! - Every source's bytes pass the SP 800-90B continuous tests ([`health`]). A failing
//!   path source is dropped, counted and reported once on stderr. The OS source failing
//!   (a getrandom error, or the tests failing twice in a row: once is a 2⁻²⁰ false
//!   alarm now and then, twice is a broken source) stops the generator for good: every
//!   later call returns [`EntropyError::Failed`].
//! - Draws touch no shared memory: each thread has a ChaCha20 generator with fast key
//!   erasure. On a refill (every 992 bytes) it reseeds when the collector published new
//!   source bytes (a generation counter), after 60 s, after 1 MiB, or in a new process.
//!   A seed is BLAKE2s-256 over a label, a counter, the path sources' latest bytes and
//!   then 32 fresh OS bytes, so it is at least as unpredictable as the OS alone.
//! - Fork: a `pthread_atfork` child handler bumps an epoch every draw checks, so a child
//!   never serves the buffer it inherited (see `fork.rs`).
//! - A background collector thread, started on first need and only when path sources
//!   are configured, reads them (blocking reads happen only there), tests them and
//!   publishes their latest bytes under a lock taken once per reseed.
//!
//! Depends on nothing in the crate but the `qlog!` macro, the config types and the
//! `proto::Random` trait it implements.

mod fork;
mod generator;
pub mod health;

use std::cell::RefCell;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::MutexGuard;

use crate::os::ForkMutex;
use thiserror::Error;

pub use crate::config::{EntropyConfig, EntropySource};

use generator::{Conditioner, Generator, SERVED_PER_REFILL};
use health::{APT_WINDOW, HealthTest};

/// The OS source's claimed min-entropy per byte: getrandom serves a CSPRNG's output.
pub const OS_MIN_ENTROPY: f64 = 8.0;

/// A thread generator reseeds after this long.
const RESEED_INTERVAL: Duration = Duration::from_secs(60);

/// A thread generator reseeds after serving this many bytes.
const RESEED_BYTES: u64 = 1 << 20;

/// The collector reads each path source this often.
const COLLECT_INTERVAL: Duration = Duration::from_secs(5);

/// Refills between two process id checks.
const PID_CHECK_EVERY: u32 = 8;

/// Fresh OS bytes re-tested after one OS health alarm, before calling the source broken.
const CONFIRM_LEN: usize = 2 * APT_WINDOW as usize;

/// Why the ring produced nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EntropyError {
    /// The OS source failed; the generator has stopped for good (fail closed).
    #[error("entropy: the OS random source failed, no random bytes are produced: {0}")]
    Failed(String),
    /// A configured source cannot be used.
    #[error("entropy source {}: {message}", path.display())]
    Source {
        /// The source's path.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// One configured path source's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceStats {
    /// The path.
    pub path: PathBuf,
    /// Claimed min-entropy per byte.
    pub min_entropy: f64,
    /// Bytes read from it.
    pub bytes_read: u64,
    /// Health-test failures (the first one drops the source).
    pub health_failures: u64,
    /// Why it was dropped, if it was.
    pub dropped: Option<String>,
}

/// The ring's counters since the process started (a forked child starts from its parent's).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EntropyStats {
    /// Bytes read from the OS source.
    pub os_bytes: u64,
    /// OS source health alarms (two in a row stop the generator).
    pub os_health_failures: u64,
    /// The configured path sources.
    pub sources: Vec<SourceStats>,
    /// Path sources dropped (health failure, end of file or read error), ever.
    pub sources_dropped: u64,
    /// Thread generator reseeds.
    pub reseeds: u64,
    /// Generator bytes produced for serving.
    pub bytes_generated: u64,
    /// Why the generator stopped, if it did.
    pub failed: Option<String>,
}

impl fmt::Display for EntropyStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "os: {} bytes read, {} health failures",
            self.os_bytes, self.os_health_failures
        )?;
        for s in &self.sources {
            write!(
                f,
                "source {} (min_entropy {}): {} bytes read, {} health failures",
                s.path.display(),
                s.min_entropy,
                s.bytes_read,
                s.health_failures
            )?;
            match &s.dropped {
                Some(why) => writeln!(f, ", dropped: {why}")?,
                None => writeln!(f, ", in use")?,
            }
        }
        writeln!(f, "sources dropped: {}", self.sources_dropped)?;
        writeln!(f, "reseeds: {}", self.reseeds)?;
        write!(f, "bytes generated: {}", self.bytes_generated)?;
        if let Some(why) = &self.failed {
            write!(f, "\nfailed: {why}")?;
        }
        Ok(())
    }
}

/// Set the path sources (replacing any earlier set); their collector starts on first need.
///
/// # Errors
/// A claimed min-entropy outside (0, 8], or a path that does not exist or is a directory.
pub fn configure(cfg: &EntropyConfig) -> Result<(), EntropyError> {
    SHARED.configure(cfg)
}

/// Register the ring's fork handlers now (they are otherwise registered on first use).
/// The preload runtime calls this before registering its own, so that the ring's
/// prepare handler runs after the runtime's (prepare handlers run in reverse order of
/// registration): the runtime's engine lock is taken before the ring's, the order in
/// which starting an engine nests them.
pub(crate) fn register_fork_handlers() {
    fork::register();
}

/// Start the collector (if path sources are configured) and wait up to `timeout` until
/// each source has been read once or dropped; returns whether that happened in time.
pub fn settle(timeout: Duration) -> bool {
    SHARED.settle(timeout)
}

/// Fill `dst` with random bytes from this thread's generator.
///
/// # Errors
/// [`EntropyError::Failed`] once the OS source has failed; nothing is written then.
pub fn fill(dst: &mut [u8]) -> Result<(), EntropyError> {
    LOCAL
        .try_with(|l| l.borrow_mut().fill(dst))
        // During thread teardown the thread-local is gone: use a one-shot generator.
        .unwrap_or_else(|_| Local::new(&SHARED).fill(dst))
}

/// A random `u64` from this thread's generator.
///
/// # Errors
/// [`EntropyError::Failed`] once the OS source has failed.
#[inline]
pub fn next_u64() -> Result<u64, EntropyError> {
    LOCAL
        .try_with(|l| l.borrow_mut().next_u64())
        .unwrap_or_else(|_| Local::new(&SHARED).next_u64())
}

/// A fresh 32-byte seed (for a per-flow scheduler RNG).
///
/// # Errors
/// [`EntropyError::Failed`] once the OS source has failed.
pub fn seed32() -> Result<[u8; 32], EntropyError> {
    let mut s = [0u8; 32];
    fill(&mut s)?;
    Ok(s)
}

/// The ring's counters.
pub fn stats() -> EntropyStats {
    SHARED.stats()
}

/// [`crate::proto::Random`] served by the ring; like `OsRandom`, it panics rather than
/// continue without randomness once the OS source has failed.
#[derive(Debug, Default, Clone, Copy)]
pub struct RingRandom;

impl crate::proto::Random for RingRandom {
    fn fill(&mut self, dst: &mut [u8]) {
        if let Err(e) = fill(dst) {
            panic!("{e}");
        }
    }
}

// ---- shared state ------------------------------------------------------------------------

/// Reads the OS source; a function pointer so tests can inject a broken one.
type OsRead = fn(&mut [u8]) -> Result<(), String>;

fn getrandom_fill(dst: &mut [u8]) -> Result<(), String> {
    getrandom::fill(dst).map_err(|e| e.to_string())
}

static SHARED: Shared = Shared::new(getrandom_fill);

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::new(&SHARED));
    // The ring's lock while a fork is in progress (taken and released by the same thread).
    static FORK_GUARD: RefCell<Option<MutexGuard<'static, State>>> = const { RefCell::new(None) };
}

/// `pthread_atfork` prepare: hold the lock so the child never inherits it held.
fn fork_prepare() {
    let g = SHARED.state.lock();
    FORK_GUARD.with(|h| *h.borrow_mut() = Some(g));
}

/// `pthread_atfork` parent and child: release what [`fork_prepare`] took.
fn fork_release() {
    if let Ok(guard) = FORK_GUARD.try_with(|h| h.borrow_mut().take()) {
        drop(guard);
    }
}

struct Shared {
    /// Set once the OS source failed; checked by every draw.
    failed: AtomicBool,
    /// Bumped when the collector publishes bytes or the sources change.
    generation: AtomicU64,
    /// Makes every conditioner input unique, whatever the sources return.
    counter: AtomicU64,
    os_bytes: AtomicU64,
    os_health_failures: AtomicU64,
    reseeds: AtomicU64,
    bytes_generated: AtomicU64,
    state: ForkMutex<State>,
    os: OsRead,
}

struct State {
    /// Bumped by [`configure`]; a collector of an older epoch exits.
    epoch: u64,
    sources: Vec<Slot>,
    /// The process whose collector serves this epoch (a forked child starts its own).
    collector_pid: Option<u32>,
    /// Collection rounds completed in this epoch.
    rounds: u64,
    sources_dropped: u64,
    failed: Option<String>,
}

struct Slot {
    path: PathBuf,
    min_entropy: f64,
    bytes_read: u64,
    health_failures: u64,
    dropped: Option<String>,
    /// The latest healthy batch, mixed into every reseed until the next one replaces it.
    latest: Vec<u8>,
}

impl Shared {
    const fn new(os: OsRead) -> Shared {
        Shared {
            failed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            counter: AtomicU64::new(0),
            os_bytes: AtomicU64::new(0),
            os_health_failures: AtomicU64::new(0),
            reseeds: AtomicU64::new(0),
            bytes_generated: AtomicU64::new(0),
            state: ForkMutex::new(State {
                epoch: 0,
                sources: Vec::new(),
                collector_pid: None,
                rounds: 0,
                sources_dropped: 0,
                failed: None,
            }),
            os,
        }
    }

    fn configure(&self, cfg: &EntropyConfig) -> Result<(), EntropyError> {
        for s in &cfg.sources {
            let err = |message: String| EntropyError::Source {
                path: s.path.clone(),
                message,
            };
            if !(s.min_entropy > 0.0 && s.min_entropy <= 8.0) {
                return Err(err(format!(
                    "min_entropy must be greater than 0 and at most 8 (got {})",
                    s.min_entropy
                )));
            }
            let meta = std::fs::metadata(&s.path).map_err(|e| err(e.to_string()))?;
            if meta.is_dir() {
                return Err(err("is a directory".to_owned()));
            }
        }
        fork::register();
        let mut st = self.state.lock();
        for old in &mut st.sources {
            old.latest.fill(0);
        }
        st.epoch += 1;
        st.collector_pid = None;
        st.rounds = 0;
        st.sources = cfg
            .sources
            .iter()
            .map(|s| Slot {
                path: s.path.clone(),
                min_entropy: s.min_entropy,
                bytes_read: 0,
                health_failures: 0,
                dropped: None,
                latest: Vec::new(),
            })
            .collect();
        // Threads stop mixing in the old sources' bytes at their next refill.
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    fn settle(&'static self, timeout: Duration) -> bool {
        fork::register();
        self.ensure_collector();
        let deadline = Instant::now() + timeout;
        loop {
            {
                let st = self.state.lock();
                if st.rounds > 0 || st.sources.iter().all(|s| s.dropped.is_some()) {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop the generator for good and say why (once).
    fn fail(&self, reason: String) -> EntropyError {
        let mut st = self.state.lock();
        if st.failed.is_none() {
            crate::qlog!(
                Error,
                "entropy: the OS random source failed, no random bytes will be produced: {reason}"
            );
            st.failed = Some(reason);
        }
        self.failed.store(true, Ordering::Release);
        EntropyError::Failed(st.failed.clone().unwrap_or_default())
    }

    fn failure(&self) -> EntropyError {
        EntropyError::Failed(self.state.lock().failed.clone().unwrap_or_default())
    }

    fn read_os(&self, dst: &mut [u8]) -> Result<(), EntropyError> {
        (self.os)(dst).map_err(|e| self.fail(format!("getrandom: {e}")))?;
        self.os_bytes.fetch_add(dst.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn stats(&self) -> EntropyStats {
        let st = self.state.lock();
        EntropyStats {
            os_bytes: self.os_bytes.load(Ordering::Relaxed),
            os_health_failures: self.os_health_failures.load(Ordering::Relaxed),
            sources: st
                .sources
                .iter()
                .map(|s| SourceStats {
                    path: s.path.clone(),
                    min_entropy: s.min_entropy,
                    bytes_read: s.bytes_read,
                    health_failures: s.health_failures,
                    dropped: s.dropped.clone(),
                })
                .collect(),
            sources_dropped: st.sources_dropped,
            reseeds: self.reseeds.load(Ordering::Relaxed),
            bytes_generated: self.bytes_generated.load(Ordering::Relaxed),
            failed: st.failed.clone(),
        }
    }

    /// Start this process's collector if path sources are configured and none runs.
    fn ensure_collector(&'static self) {
        let pid = std::process::id();
        let mut st = self.state.lock();
        if st.collector_pid == Some(pid) || st.sources.iter().all(|s| s.dropped.is_some()) {
            return;
        }
        st.collector_pid = Some(pid);
        let epoch = st.epoch;
        let live: Vec<(usize, PathBuf, f64)> = st
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| s.dropped.is_none())
            .map(|(i, s)| (i, s.path.clone(), s.min_entropy))
            .collect();
        drop(st);
        // In a preloaded app, an app's signal handler must not run on our thread either.
        let builder = std::thread::Builder::new().name("qnet-entropy".into());
        let spawned =
            crate::os::spawn_signals_blocked(builder, move || self.collect(epoch, pid, live));
        if let Err(e) = spawned {
            // The OS source alone still serves; the path sources wait for the next try.
            crate::qlog!(Warn, "entropy: cannot start the source collector: {e}");
            self.state.lock().collector_pid = None;
        }
    }

    /// The collector thread: read, test and publish every live path source in rounds.
    fn collect(&self, epoch: u64, pid: u32, live: Vec<(usize, PathBuf, f64)>) {
        let mut srcs: Vec<Collected> = live
            .into_iter()
            .map(|(slot, path, h)| Collected {
                slot,
                path,
                file: None,
                test: HealthTest::new(h),
                batch: batch_len(h),
                dead: false,
            })
            .collect();
        let current = |st: &State| st.epoch == epoch && std::process::id() == pid;
        loop {
            let mut published = false;
            for src in srcs.iter_mut().filter(|s| !s.dead) {
                let (bytes, outcome) = src.read_batch();
                let mut st = self.state.lock();
                if !current(&st) {
                    return;
                }
                let slot = &mut st.sources[src.slot];
                slot.bytes_read += bytes.len() as u64;
                let dropped = match outcome {
                    Outcome::Healthy => {
                        slot.latest.fill(0);
                        slot.latest = bytes;
                        published = true;
                        None
                    }
                    Outcome::Unhealthy(why) => {
                        slot.health_failures += 1;
                        Some(why)
                    }
                    Outcome::Gone(why) => Some(why),
                };
                if let Some(why) = dropped {
                    src.dead = true;
                    slot.latest.fill(0);
                    slot.latest.clear();
                    slot.dropped = Some(why.clone());
                    st.sources_dropped += 1;
                    drop(st);
                    crate::qlog!(Warn, "entropy source {} dropped: {why}", src.path.display());
                }
            }
            {
                let mut st = self.state.lock();
                if !current(&st) {
                    return;
                }
                st.rounds += 1;
                if published {
                    self.generation.fetch_add(1, Ordering::Release);
                }
            }
            if srcs.iter().all(|s| s.dead) {
                return;
            }
            std::thread::sleep(COLLECT_INTERVAL);
        }
    }
}

/// Bytes read from a source per round: at least 256 bits of claimed min-entropy.
fn batch_len(h: f64) -> usize {
    ((256.0 / h).ceil() as usize).clamp(64, 4096)
}

/// A path source as the collector thread holds it.
struct Collected {
    slot: usize,
    path: PathBuf,
    file: Option<File>,
    test: HealthTest,
    batch: usize,
    dead: bool,
}

enum Outcome {
    Healthy,
    Unhealthy(String),
    Gone(String),
}

impl Collected {
    /// Read one batch (blocking) and health-test it.
    fn read_batch(&mut self) -> (Vec<u8>, Outcome) {
        let file = match &mut self.file {
            Some(f) => f,
            None => match File::open(&self.path) {
                Ok(f) => self.file.insert(f),
                Err(e) => return (Vec::new(), Outcome::Gone(format!("cannot open: {e}"))),
            },
        };
        let mut buf = vec![0u8; self.batch];
        let mut n = 0;
        let mut end = None;
        while n < buf.len() {
            match file.read(&mut buf[n..]) {
                Ok(0) => {
                    end = Some(format!("end of file after {n} bytes of a batch"));
                    break;
                }
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    end = Some(format!("read error: {e}"));
                    break;
                }
            }
        }
        buf.truncate(n);
        // Test what was read even at the end, so a broken source is reported as such.
        if let Err(f) = self.test.feed_all(&buf) {
            buf.fill(0);
            return (buf, Outcome::Unhealthy(f.to_string()));
        }
        match end {
            Some(why) => (buf, Outcome::Gone(why)),
            None => (buf, Outcome::Healthy),
        }
    }
}

// ---- per-thread generators ----------------------------------------------------------------

struct Local {
    shared: &'static Shared,
    rng: Generator,
    seeded: bool,
    generation: u64,
    pid: u32,
    fork_epoch: u64,
    seeded_at: Instant,
    since_seed: u64,
    refills: u32,
    os_health: HealthTest,
}

impl Local {
    fn new(shared: &'static Shared) -> Local {
        fork::register();
        Local {
            shared,
            rng: Generator::new([0; 32]),
            seeded: false,
            generation: 0,
            pid: 0,
            fork_epoch: fork::EPOCH.load(Ordering::Relaxed),
            seeded_at: Instant::now(),
            since_seed: 0,
            refills: 0,
            os_health: HealthTest::new(OS_MIN_ENTROPY),
        }
    }

    /// Per draw: refuse after a failure, and drop an inherited buffer after a fork.
    #[inline]
    fn check(&mut self) -> Result<(), EntropyError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(self.shared.failure());
        }
        let e = fork::EPOCH.load(Ordering::Relaxed);
        if e != self.fork_epoch {
            self.rng.wipe();
            self.seeded = false;
            self.fork_epoch = e;
        }
        Ok(())
    }

    #[inline]
    fn next_u64(&mut self) -> Result<u64, EntropyError> {
        self.check()?;
        loop {
            if let Some(v) = self.rng.take_u64() {
                return Ok(v);
            }
            self.refill()?;
        }
    }

    fn fill(&mut self, dst: &mut [u8]) -> Result<(), EntropyError> {
        self.check()?;
        let mut off = 0;
        while off < dst.len() {
            off += self.rng.take(&mut dst[off..]);
            if off < dst.len() {
                if let Err(e) = self.refill() {
                    dst.fill(0);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn refill(&mut self) -> Result<(), EntropyError> {
        self.refills = self.refills.wrapping_add(1);
        // getpid is a real system call (150-250 ns here, more than the refill itself), and
        // the fork epoch already catches every fork that runs atfork handlers: the pid is
        // a backstop for a raw clone(), checked every PID_CHECK_EVERY refills.
        let stale = !self.seeded
            || self.generation != self.shared.generation.load(Ordering::Relaxed)
            || self.since_seed >= RESEED_BYTES
            || (self.refills % PID_CHECK_EVERY == 0 && self.pid != std::process::id())
            || self.seeded_at.elapsed() >= RESEED_INTERVAL;
        if stale {
            self.reseed()?;
        }
        self.rng.refill();
        self.since_seed += SERVED_PER_REFILL as u64;
        self.shared
            .bytes_generated
            .fetch_add(SERVED_PER_REFILL as u64, Ordering::Relaxed);
        Ok(())
    }

    fn reseed(&mut self) -> Result<(), EntropyError> {
        let sh = self.shared;
        // A failed seed leaves nothing usable behind.
        self.rng.wipe();
        self.seeded = false;
        sh.ensure_collector();
        let generation = sh.generation.load(Ordering::Acquire);
        let counter = sh.counter.fetch_add(1, Ordering::Relaxed);
        // The untrusted sources first, then OS bytes drawn after them.
        let cond = {
            let st = sh.state.lock();
            let live = st.sources.iter().filter(|s| !s.latest.is_empty());
            let mut c = Conditioner::new(counter, live.clone().count());
            for s in live {
                c.source(&s.latest);
            }
            c
        };
        let mut os = self.os_seed()?;
        self.rng.rekey(cond.finish(&os));
        os.fill(0);
        std::hint::black_box(&mut os);
        self.seeded = true;
        self.generation = generation;
        self.pid = std::process::id();
        self.seeded_at = Instant::now();
        self.since_seed = 0;
        sh.reseeds.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// 32 health-tested OS bytes. One alarm is re-tested on fresh bytes before the
    /// source is called broken: at H = 8 a perfect source trips the RCT about once per
    /// 16 MB, and failing closed on that would be an outage, not safety.
    fn os_seed(&mut self) -> Result<[u8; 32], EntropyError> {
        let sh = self.shared;
        let mut os = [0u8; 32];
        sh.read_os(&mut os)?;
        if let Err(first) = self.os_health.feed_all(&os) {
            sh.os_health_failures.fetch_add(1, Ordering::Relaxed);
            crate::qlog!(Warn, "entropy: OS source {first}; re-testing fresh bytes");
            let mut t = HealthTest::new(OS_MIN_ENTROPY);
            let mut more = vec![0u8; CONFIRM_LEN];
            sh.read_os(&mut more)?;
            let again = t.feed_all(&more);
            more.fill(0);
            sh.read_os(&mut os)?;
            if let Err(second) = again.and_then(|()| t.feed_all(&os)) {
                sh.os_health_failures.fetch_add(1, Ordering::Relaxed);
                os.fill(0);
                return Err(sh.fail(format!(
                    "health tests failed twice in a row: {first}, then {second}"
                )));
            }
            self.os_health = t;
        }
        Ok(os)
    }
}

#[cfg(test)]
mod tests;
