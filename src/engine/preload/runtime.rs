//! The preload runtime's process-wide state: whether interception is on, the config
//! (loaded once), the one engine thread (started on the first tunneled connect, stopped
//! by `qnet_shutdown`) and the fork handlers that keep all three sound in a child.

use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::published::Published;
use crate::config::Config;
use crate::engine::bypass::{BypassGuard, bypass_thread};
use crate::engine::client::{Attach, Client, ClientConfig};
use crate::engine::fdtab;
use crate::engine::log::tell_once;
use crate::engine::sys;

// ---- activation ---------------------------------------------------------------------

/// Interception is on: set at load for the preloaded `.so`, by `qnet_init` for a static link.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Turn interception on for this process.
fn activate() {
    ACTIVE.store(true, Ordering::Release);
}

/// Whether the library at `ours` was preloaded (named in `LD_PRELOAD` or
/// /etc/ld.so.preload) rather than linked into the program or dlopen'ed: only a preloaded
/// library intercepts from load; a program that links it opts in with `qnet_init`.
pub(crate) fn preloaded(ours: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let _g = BypassGuard::enter();
    let id = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let me = id(ours);
    let base = ours.file_name();
    let mut lists = Vec::new();
    if let Some(v) = std::env::var_os("LD_PRELOAD") {
        lists.push(v.to_string_lossy().into_owned());
    }
    if let Ok(v) = std::fs::read_to_string("/etc/ld.so.preload") {
        lists.push(v);
    }
    lists.iter().any(|l| {
        l.split([' ', ':', '\n', '\t'])
            .filter(|e| !e.is_empty())
            .any(|e| {
                let p = std::path::Path::new(e);
                // The same file, or failing that the same file name: an entry the loader
                // expanded ($LIB, $PLATFORM) or that does not stat must not leave a preloaded
                // library passive, which would let the app connect directly.
                (me.is_some() && id(p) == me) || p.file_name() == base
            })
    })
}

/// Whether hooks intercept at all.
#[inline]
pub(crate) fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// Turn interception on, with the fork handlers it relies on.
pub(crate) fn enable() {
    install_fork_handlers();
    activate();
}

// ---- configuration ------------------------------------------------------------------

static CONFIG: OnceLock<Config> = OnceLock::new();
/// Why loading the config implicitly (first hook) failed: kept, so a broken config fails
/// every tunneled call the same way without re-reading files.
static CONFIG_ERR: Mutex<Option<String>> = Mutex::new(None);

fn loaded(c: Config) -> &'static Config {
    crate::engine::log::set_level(c.log);
    CONFIG.get_or_init(|| c)
}

/// The process's config, loaded once; an error fails every tunneled call closed.
pub(crate) fn config() -> Result<&'static Config, String> {
    if let Some(c) = CONFIG.get() {
        return Ok(c);
    }
    let mut err = CONFIG_ERR.lock();
    if let Some(e) = err.as_ref() {
        return Err(e.clone());
    }
    let _g = BypassGuard::enter();
    match Config::load() {
        Ok(c) => Ok(loaded(c)),
        Err(e) => {
            *err = Some(e.to_string());
            Err(e.to_string())
        }
    }
}

/// Load the config now (the C API's `qnet_init`); `path` as `--config` does. A config
/// already loaded stays; a failed attempt leaves nothing behind, so it can be retried.
/// `check` must accept it before it is kept.
pub(crate) fn init(
    path: Option<&std::path::Path>,
    check: impl Fn(&Config) -> Result<(), String>,
) -> Result<(), String> {
    let _g = BypassGuard::enter();
    install_fork_handlers();
    if let Some(c) = CONFIG.get() {
        return check(c);
    }
    let c = Config::load_from(path).map_err(|e| e.to_string())?;
    check(&c)?;
    loaded(c);
    *CONFIG_ERR.lock() = None;
    Ok(())
}

// ---- the engine thread --------------------------------------------------------------

struct Engine {
    tx: crossbeam::channel::Sender<Attach>,
    wake: Mutex<mio::unix::pipe::Sender>,
    pid: u32,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `qnet_shutdown` was called: the engine stops and no new one starts.
static SHUT_DOWN: AtomicBool = AtomicBool::new(false);

static ENGINE: Mutex<Option<Engine>> = Mutex::new(None);

fn start_engine(cfg: &Config) -> Result<Engine, String> {
    let client_cfg = ClientConfig::from_config(cfg)?;
    crate::entropy::configure(&cfg.entropy).map_err(|e| e.to_string())?;
    let mut client = Client::new(client_cfg).map_err(|e| format!("engine: {e}"))?;
    let (wake_tx, wake_rx) = sys::engine_pipe().map_err(|e| format!("engine: {e}"))?;
    let (tx, rx) = crossbeam::channel::unbounded();
    client
        .accept_commands(rx, wake_rx)
        .map_err(|e| format!("engine: {e}"))?;
    client.observe(Box::new(Published));
    client.set_max_wait(std::time::Duration::from_secs(3600));
    fdtab::mark_internal(wake_tx.as_raw_fd());
    let builder = std::thread::Builder::new().name("qnet-engine".into());
    let thread = crate::os::spawn_signals_blocked(builder, move || {
        bypass_thread();
        if let Err(e) = client.run(|_| SHUT_DOWN.load(Ordering::Acquire)) {
            tell_once(&format!("engine stopped: {e}; tunneled connections fail"));
        }
    })
    .map_err(|e| format!("engine thread: {e}"))?;
    Ok(Engine {
        tx,
        wake: Mutex::new(wake_tx),
        pid: sys::getpid(),
        thread: Some(thread),
    })
}

/// Hand `attach` to the engine thread, starting it on first use (and again in a fork
/// child); an errno when no engine can carry it, so the connect fails closed.
pub(super) fn send(attach: Attach) -> Result<(), i32> {
    let cfg = match config() {
        Ok(c) => c,
        Err(e) => {
            tell_once(&format!(
                "{e}; tunneled connections fail, nothing is sent directly"
            ));
            return Err(libc::ECONNREFUSED);
        }
    };
    if is_shut_down() {
        return Err(libc::ECONNREFUSED);
    }
    let mut g = ENGINE.lock();
    if g.as_ref().is_some_and(|e| e.pid != sys::getpid()) {
        // A fork child that raced `fork_child`: start over.
        std::mem::forget(g.take());
    }
    if g.is_none() {
        match start_engine(cfg) {
            Ok(e) => *g = Some(e),
            Err(e) => {
                tell_once(&format!(
                    "{e}; tunneled connections fail, nothing is sent directly"
                ));
                return Err(libc::ECONNREFUSED);
            }
        }
    }
    let e = g.as_ref().expect("started");
    e.tx.send(attach).map_err(|_| libc::ECONNREFUSED)?;
    let _ = std::io::Write::write(&mut *e.wake.lock(), &[1]);
    Ok(())
}

/// Stop the engine thread (closing the relay session and every tunneled flow) and start
/// no other: later tunneled connects fail closed.
pub(crate) fn shutdown() {
    SHUT_DOWN.store(true, Ordering::Release);
    let engine = ENGINE.lock().take();
    if let Some(mut e) = engine {
        if e.pid != sys::getpid() {
            std::mem::forget(e);
            return;
        }
        let _ = std::io::Write::write(&mut *e.wake.lock(), &[1]);
        if let Some(t) = e.thread.take() {
            let _g = BypassGuard::enter();
            let _ = t.join();
        }
    }
}

/// Whether [`shutdown`] has been called.
fn is_shut_down() -> bool {
    SHUT_DOWN.load(Ordering::Acquire)
}

// ---- fork ---------------------------------------------------------------------------

/// Register the fork handlers once (the preloaded library at load, the C API at init).
fn install_fork_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn prepare() {
        fork_prepare();
    }
    extern "C" fn parent() {
        fork_parent();
    }
    extern "C" fn child() {
        fork_child();
    }
    ONCE.call_once(|| crate::os::on_fork(prepare, parent, child));
}

thread_local! {
    static FORK_HELD: std::cell::RefCell<Option<(parking_lot::MutexGuard<'static, Option<Engine>>, fdtab::Locks)>> =
        const { std::cell::RefCell::new(None) };
}

/// `pthread_atfork` prepare: hold every lock, so the child never inherits one that a
/// thread which does not exist there was holding.
fn fork_prepare() {
    let g = ENGINE.lock();
    let l = fdtab::lock_all();
    FORK_HELD.with(|h| *h.borrow_mut() = Some((g, l)));
}

/// `pthread_atfork` parent: release what [`fork_prepare`] took.
fn fork_parent() {
    FORK_HELD.with(|h| h.borrow_mut().take());
}

/// `pthread_atfork` child: the child holds copies of the parent's engine fds but no
/// engine thread; close them, and let the child start its own engine on first use.
fn fork_child() {
    let _guard = BypassGuard::enter();
    let held = FORK_HELD.with(|h| h.borrow_mut().take());
    if let Some((mut g, locks)) = held {
        // The parent's pipe fd is closed below with the other engine fds.
        std::mem::forget(g.take());
        drop(g);
        drop(locks);
    }
    for fd in fdtab::release_internal_after_fork() {
        sys::close(fd);
    }
}
