//! The preload runtime's process-wide state: whether interception is on, the config
//! (loaded once), the one engine thread (started on the first tunneled connect, stopped
//! by `qnet_shutdown`) and the fork handlers that keep all three sound in a child.

use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::os::ForkMutex;

use super::published::Published;
use crate::config::Config;
use crate::engine::bypass::{BypassGuard, bypass_thread};
use crate::engine::client::{Attach, Client, ClientConfig, Command};
use crate::engine::fdtab;
use crate::engine::log::tell_once;
use crate::engine::status;
use crate::engine::sys;

// ---- activation ---------------------------------------------------------------------

/// Interception is on: set at load for the preloaded `.so`, by `qnet_init` for a static link.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Turn interception on for this process.
fn activate() {
    ACTIVE.store(true, Ordering::Release);
}

/// Whether the library at `ours` was preloaded (named in `LD_PRELOAD`,
/// /etc/ld.so.preload or an explicit loader's `--preload`) rather than linked into the program or dlopen'ed: only a preloaded
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
    if let Some(v) = loader_preload() {
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

/// The `--preload` list of a program started through its loader (`ld.so --preload
/// "libqnet.so" prog`), which sets no LD_PRELOAD: the process's executable is then the
/// loader, and its command line still holds the loader's options.
fn loader_preload() -> Option<String> {
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    let name = exe.file_name()?.to_str()?;
    if !(name.starts_with("ld-") || name.starts_with("ld.so")) {
        return None;
    }
    let cmdline = std::fs::read("/proc/self/cmdline").ok()?;
    loader_preload_arg(&cmdline)
}

/// The value of `--preload` among the loader options at the start of `cmdline` (NUL
/// separated, the loader first), as glibc's ld.so reads them.
fn loader_preload_arg(cmdline: &[u8]) -> Option<String> {
    const WITH_VALUE: &[&[u8]] = &[
        b"--library-path",
        b"--inhibit-rpath",
        b"--audit",
        b"--preload",
        b"--argv0",
        b"--glibc-hwcaps-prepend",
        b"--glibc-hwcaps-mask",
    ];
    let cmdline = cmdline.strip_suffix(&[0]).unwrap_or(cmdline);
    let mut args = cmdline.split(|&b| b == 0).skip(1);
    let mut found = Vec::new();
    while let Some(a) = args.next() {
        if !a.starts_with(b"--") {
            break;
        }
        if WITH_VALUE.contains(&a) {
            let v = args.next()?;
            if a == b"--preload" {
                found.push(String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    (!found.is_empty()).then(|| found.join(" "))
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
static CONFIG_ERR: ForkMutex<Option<String>> = ForkMutex::new(None);

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
    CAPI.store(true, Ordering::Relaxed);
    if let Some(c) = CONFIG.get() {
        return check(c);
    }
    // Under CONFIG_ERR's lock, as in `config`: the fork handlers hold it, so no fork
    // copies the config's one-time initialisation half done.
    let mut err = CONFIG_ERR.lock();
    let c = Config::load_from(path).map_err(|e| e.to_string())?;
    check(&c)?;
    loaded(c);
    *err = None;
    Ok(())
}

// ---- the engine thread --------------------------------------------------------------

struct Engine {
    tx: crossbeam::channel::Sender<Command>,
    wake: Mutex<mio::unix::pipe::Sender>,
    pid: u32,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `qnet_init` was called: this process is a C API program (its status says so).
static CAPI: AtomicBool = AtomicBool::new(false);

/// `qnet_shutdown` was called: the engine stops and no new one starts.
static SHUT_DOWN: AtomicBool = AtomicBool::new(false);

static ENGINE: ForkMutex<Option<Engine>> = ForkMutex::new(None);

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
    let status_dir = status_dir();
    let builder = std::thread::Builder::new().name("qnet-engine".into());
    let thread = crate::os::spawn_signals_blocked(builder, move || {
        bypass_thread();
        // On this thread, which bypasses the hooks, since it reads /proc.
        let kind = match CAPI.load(Ordering::Relaxed) {
            true => status::Kind::Capi,
            false => status::Kind::Preload,
        };
        if let Some(p) = status_dir.and_then(|d| status::Publisher::new(d, kind)) {
            client.publish_status(p);
        }
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

/// The qnet runtime directory this process's status file goes to, fixed at the first
/// engine's start; that file is removed when the process exits (each fork child's own).
fn status_dir() -> Option<&'static std::path::Path> {
    static DIR: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    extern "C" fn at_exit() {
        if let Some(Some(d)) = DIR.get() {
            let _g = BypassGuard::enter();
            status::Publisher::remove_own(d);
        }
    }
    DIR.get_or_init(|| {
        let dir = crate::engine::rundir::qnet_dir();
        if dir.is_some() {
            crate::os::at_exit(at_exit);
        }
        dir
    })
    .as_deref()
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
    e.tx.send(Command::Attach(attach))
        .map_err(|_| libc::ECONNREFUSED)?;
    let _ = std::io::Write::write(&mut *e.wake.lock(), &[1]);
    Ok(())
}

/// An app's `dup2`/`dup3` is about to replace engine fd `fd`: have the engine move off
/// that number first (`Client::renumber`), so the app gets the number and every
/// tunneled connection goes on. False (the hook answers EBUSY) when the engine's lock
/// stays held for half a second (perhaps by the thread a signal handler interrupted,
/// which would never let go: hence a bounded wait, not `lock`), the engine does not
/// answer within two seconds, or the number cannot move (the poller's own fd).
pub(crate) fn free_engine_fd(fd: i32) -> bool {
    // Another thread holds the lock for microseconds (a connect handing over its flow);
    // a busy machine can stretch that, so try for a while before EBUSY.
    let mut tries = 0;
    let mut g = loop {
        if let Some(g) = ENGINE.try_lock() {
            break g;
        }
        tries += 1;
        if tries > 500 {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    let Some(e) = g.as_mut().filter(|e| e.pid == sys::getpid()) else {
        return false;
    };
    // The wake pipe's sending end is held here, not by the engine thread.
    {
        let mut w = e.wake.lock();
        if w.as_raw_fd() == fd {
            return match sys::renumber(&mut *w) {
                Ok(_) => {
                    fdtab::mark_internal(w.as_raw_fd());
                    true
                }
                Err(_) => false,
            };
        }
    }
    let (tx, rx) = crossbeam::channel::bounded(1);
    if e.tx.send(Command::Renumber(fd, tx)).is_err() {
        return false;
    }
    let _ = std::io::Write::write(&mut *e.wake.lock(), &[1]);
    drop(g);
    crate::engine::bypass::paused(|| rx.recv_timeout(std::time::Duration::from_secs(2)))
        .unwrap_or(false)
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
            // A wait: a signal handler meanwhile must meet the hooks (see `paused`).
            let _ = crate::engine::bypass::paused(|| t.join());
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
    ONCE.call_once(|| {
        // First, so that the ring's prepare handler runs after ours (see there).
        crate::entropy::register_fork_handlers();
        crate::os::on_fork(prepare, parent, child);
    });
}

/// Every lock a hook or the engine thread may hold, taken by the thread that forks.
/// The fields are taken in this order, the order in which code nests them (the config's
/// before the engine's, which `send` takes after `config`; the rest never nest).
/// Locks that are not here: the engine's wake pipe lock (only taken under ENGINE's, or on
/// an engine already taken out of it, which a child never touches); the entropy ring's
/// (its own handlers, registered first so that they run after these); and
/// `hooks::shell`'s (its own handlers).
struct ForkHeld {
    _config: std::sync::MutexGuard<'static, Option<String>>,
    engine: std::sync::MutexGuard<'static, Option<Engine>>,
    _fdtab: fdtab::Locks,
    _relay_local: std::sync::MutexGuard<'static, Option<std::net::IpAddr>>,
}

thread_local! {
    static FORK_HELD: std::cell::RefCell<Option<ForkHeld>> = const { std::cell::RefCell::new(None) };
}

/// `pthread_atfork` prepare: hold every lock, so the child never inherits one that a
/// thread which does not exist there was holding; and finish the one-time
/// initialisations a fork could otherwise copy half done.
fn fork_prepare() {
    let _guard = BypassGuard::enter();
    let config = CONFIG_ERR.lock();
    if let Some(c) = CONFIG.get() {
        crate::engine::resolve::settle_fake_map(c);
    }
    let held = ForkHeld {
        _config: config,
        engine: ENGINE.lock(),
        _fdtab: fdtab::lock_all(),
        _relay_local: super::published::lock_for_fork(),
    };
    FORK_HELD.with(|h| *h.borrow_mut() = Some(held));
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
    if let Some(mut held) = held {
        // The parent's engine does not exist here: its thread was not copied, and its
        // pipe fd is closed below with the other engine fds.
        std::mem::forget(held.engine.take());
        drop(held);
    }
    for fd in fdtab::release_internal_after_fork() {
        sys::close(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ld_so_preload_names_the_library_without_ld_preload() {
        // `ld.so --preload "a.so libqnet.so" prog` sets no LD_PRELOAD: the library then
        // thought itself linked, stayed passive, and the program connected directly.
        let v = |c: &[u8]| loader_preload_arg(c);
        assert_eq!(
            v(b"/lib64/ld-linux-x86-64.so.2\0--preload\0/a.so /q/libqnet.so\0/bin/true\0")
                .as_deref(),
            Some("/a.so /q/libqnet.so")
        );
        assert_eq!(
            v(b"ld.so\0--library-path\0/x\0--preload\0/q.so\0--preload\0/r.so\0prog\0--preload\0/s.so\0")
                .as_deref(),
            Some("/q.so /r.so"),
            "the loader's options only, not the program's"
        );
        assert_eq!(
            v(b"ld.so\0--argv0\0--preload\0prog\0"),
            None,
            "a value, not an option"
        );
        assert_eq!(v(b"ld.so\0prog\0--preload\0/q.so\0"), None);
        assert_eq!(v(b"ld.so\0--preload\0"), None);
        assert_eq!(v(b""), None);
    }

    use std::time::Duration;

    /// Fork while another thread holds what `hold` takes (for 150 ms), then take every
    /// lock in the child: the exit status, `None` when the child hung on a lock copied held.
    /// Takes a lock and returns its guard.
    type Hold = fn() -> Box<dyn std::any::Any>;

    fn fork_while_held(hold: Hold) -> Option<i32> {
        let (tx, rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let g = hold();
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(150));
            drop(g);
        });
        rx.recv().unwrap();
        // Threads queued on the lock when the fork happens: the child must not inherit
        // the lock handed to one of them (they do not exist there).
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let contenders: Vec<_> = (0..3)
            .map(|_| {
                let done = done.clone();
                std::thread::spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        drop(hold());
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        let pid = sys::fork_for_test();
        if pid == 0 {
            drop(CONFIG_ERR.lock());
            drop(ENGINE.lock());
            super::super::published::local_ip(true);
            fdtab::add_tunneled(2_600_001, fdtab::FdInfo::for_test());
            let ok = fdtab::with_info(2_600_001, |i| i.peer.port()) == Some(80);
            sys::exit_child(if ok { 0 } else { 1 });
        }
        assert!(pid > 0, "fork");
        let status = sys::wait_child(pid, Duration::from_secs(5));
        holder.join().unwrap();
        done.store(true, Ordering::Relaxed);
        for c in contenders {
            c.join().unwrap();
        }
        status
    }

    #[test]
    fn fork_while_another_thread_holds_a_lock_leaves_the_child_none_held() {
        install_fork_handlers();
        // Each lock a hook or the engine may hold mid-call, held by another thread.
        let holds: [(&str, Hold); 4] = [
            ("config", || Box::new(CONFIG_ERR.lock())),
            ("engine", || Box::new(ENGINE.lock())),
            ("fd table", || Box::new(fdtab::lock_all())),
            ("relay address", || {
                Box::new(super::super::published::lock_for_fork())
            }),
        ];
        for (what, hold) in holds {
            assert_eq!(fork_while_held(hold), Some(0), "{what}: the child hung");
        }
    }
}
