//! `system`, `popen`, `pclose` and `wordexp`: the shell they start stays tunneled.
//!
//! glibc's `system` and `popen` spawn `/bin/sh` through its internal `posix_spawn`,
//! which no hook sees, with `environ` as it is: after `unsetenv("LD_PRELOAD")`,
//! `clearenv()` or a `putenv` that replaces it, the shell and everything it starts ran
//! without the library, so their connections left directly. Here both are done over the
//! real `posix_spawn` with the environment the exec hooks give a child ([`child_env`]:
//! LD_PRELOAD put back), after the same setuid check.
//!
//! Why not hook `unsetenv`/`clearenv`/`putenv` instead: the program's own view of its
//! environment would stop being what it asked for, and a program can also assign
//! `environ` itself, which no hook sees. Why not put LD_PRELOAD back into `environ` for
//! the call: `environ` is shared by every thread, glibc's `setenv` is neither
//! async-signal-safe nor safe against a concurrent `getenv`, and `system` would have to
//! hold the change for as long as the shell runs. Building a private copy only reads
//! `environ`, exactly as glibc's own `system` does.
//!
//! `wordexp` runs its command substitutions in `/bin/sh`, also spawned inside libc with
//! `environ`, and cannot be rebuilt from outside (the expansion is glibc's). So only
//! there, and only when `environ` lacks this library, `environ` itself is swapped for the
//! child's copy for the call and put back after: a pointer assignment (no `setenv`, no
//! freed array), under a lock against concurrent calls. wordexp is MT-Unsafe with `env`
//! already (no other thread may change the environment meanwhile); what another thread's
//! `getenv` may see in that window is the same environment with LD_PRELOAD set.
//!
//! A `popen` stream is a plain `fdopen` stream here, so `pclose` is hooked too: it
//! closes the stream and waits for the shell (a stream this hook did not open goes to
//! the real `pclose`). Differences from glibc, none of which a program relies on in
//! practice: `system` is not a cancellation point, and `fclose` on a `popen` stream does
//! not wait for the shell (`pclose` does).

use std::ffi::{CStr, c_char, c_int};
use std::ptr;
use std::sync::Mutex;

use super::exec::{Spawn, child_env, spawn};
use super::{guarded, intercepting, real, set_errno};

unsafe extern "C" {
    static mut environ: *const *const c_char;
}

const SHELL: &CStr = c"/bin/sh";

/// `popen`'s mode: `Some((read, cloexec))`, glibc's rules (one of `r`/`w`, any `e`).
pub(crate) fn popen_mode(mode: &[u8]) -> Option<(bool, bool)> {
    let (mut r, mut w, mut e) = (false, false, false);
    for &c in mode {
        match c {
            b'r' => r = true,
            b'w' => w = true,
            b'e' => e = true,
            _ => return None,
        }
    }
    (r != w).then_some((r, e))
}

fn real_spawn() -> Option<Spawn> {
    real!(posix_spawn: fn(*mut libc::pid_t, *const c_char, *const libc::posix_spawn_file_actions_t, *const libc::posix_spawnattr_t, *const *const c_char, *const *const c_char) -> c_int)
}

/// Wait for `pid`, retrying EINTR: its status, or -1.
fn wait(pid: libc::pid_t) -> c_int {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes one int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return status;
        }
        // SAFETY: this thread's errno slot.
        if r == -1 && unsafe { *libc::__errno_location() } != libc::EINTR {
            return -1;
        }
    }
}

/// Spawn `sh -c cmd` with this process's environment made a tunneled child's.
/// Returns posix_spawn's error number (0: spawned, `pid` set).
///
/// # Safety
/// `cmd` is a NUL-terminated string; `actions`/`attr` are NULL or initialised.
unsafe fn spawn_shell(
    pid: &mut libc::pid_t,
    cmd: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
) -> c_int {
    let Some(real) = real_spawn() else {
        return libc::ENOSYS;
    };
    let argv = [c"sh".as_ptr(), c"-c".as_ptr(), cmd, ptr::null()];
    // SAFETY: the arguments are valid for the call; `environ` is read (as glibc's own
    // system does), never written.
    unsafe {
        spawn(
            real,
            false,
            pid,
            SHELL.as_ptr(),
            actions,
            attr,
            argv.as_ptr(),
            environ,
        )
    }
}

/// SIGINT and SIGQUIT are ignored while any `system` call waits (glibc's rule): the
/// number of callers in it and the dispositions to put back after the last.
static SYSTEM_SIGNALS: Mutex<(usize, Option<(libc::sigaction, libc::sigaction)>)> =
    Mutex::new((0, None));

/// `system(3)`: `sh -c cmd` with SIGCHLD blocked and SIGINT/SIGQUIT ignored meanwhile.
///
/// # Safety
/// `cmd` is NULL or a NUL-terminated string.
pub(crate) unsafe fn run_system(cmd: *const c_char) -> c_int {
    hold_across_fork();
    if cmd.is_null() {
        // "Is a shell available": the answer glibc gives.
        // SAFETY: a NUL-terminated path.
        return c_int::from(unsafe { libc::access(SHELL.as_ptr(), libc::X_OK) } == 0);
    }
    // SAFETY: plain signal-state calls on stack structs, restored below.
    unsafe {
        let saved = {
            let mut g = SYSTEM_SIGNALS.lock().unwrap_or_else(|p| p.into_inner());
            if g.0 == 0 {
                let mut ign: libc::sigaction = std::mem::zeroed();
                ign.sa_sigaction = libc::SIG_IGN;
                libc::sigemptyset(&mut ign.sa_mask);
                let (mut intr, mut quit) = (std::mem::zeroed(), std::mem::zeroed());
                libc::sigaction(libc::SIGINT, &ign, &mut intr);
                libc::sigaction(libc::SIGQUIT, &ign, &mut quit);
                g.1 = Some((intr, quit));
            }
            g.0 += 1;
            g.1
        };
        let mut chld: libc::sigset_t = std::mem::zeroed();
        let mut omask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &chld, &mut omask);

        // The shell gets the caller's mask and default SIGINT/SIGQUIT unless they were
        // ignored before.
        let mut reset: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut reset);
        if let Some((intr, quit)) = saved {
            if intr.sa_sigaction != libc::SIG_IGN {
                libc::sigaddset(&mut reset, libc::SIGINT);
            }
            if quit.sa_sigaction != libc::SIG_IGN {
                libc::sigaddset(&mut reset, libc::SIGQUIT);
            }
        }
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        libc::posix_spawnattr_init(&mut attr);
        libc::posix_spawnattr_setsigmask(&mut attr, &omask);
        libc::posix_spawnattr_setsigdefault(&mut attr, &reset);
        libc::posix_spawnattr_setflags(
            &mut attr,
            (libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK) as libc::c_short,
        );
        let mut pid = 0;
        let e = spawn_shell(&mut pid, cmd, ptr::null(), &attr);
        libc::posix_spawnattr_destroy(&mut attr);
        // POSIX: a shell that could not be run reads as one that ran `exit 127`.
        let status = if e == 0 { wait(pid) } else { 127 << 8 };

        {
            let mut g = SYSTEM_SIGNALS.lock().unwrap_or_else(|p| p.into_inner());
            g.0 -= 1;
            if g.0 == 0 {
                if let Some((intr, quit)) = g.1.take() {
                    libc::sigaction(libc::SIGINT, &intr, ptr::null_mut());
                    libc::sigaction(libc::SIGQUIT, &quit, ptr::null_mut());
                }
            }
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &omask, ptr::null_mut());
        status
    }
}

/// The streams `popen` opened and not yet `pclose`d: (FILE address, shell pid, fd).
static STREAMS: Mutex<Vec<(usize, libc::pid_t, c_int)>> = Mutex::new(Vec::new());

/// Hold this file's two locks across `fork`, so a child never inherits one held by a
/// thread it does not have (its own `popen`, `pclose` or `system` would hang). Registered
/// on first use, before which neither lock is ever taken. `pthread_atfork` runs prepare
/// handlers in reverse order of registration, so these run before the preload runtime's
/// (registered at load): STREAMS is taken before the fd table's locks, the order in which
/// `open_pipe` nests them (it closes a pipe end while holding STREAMS).
fn hold_across_fork() {
    type Held = (
        std::sync::MutexGuard<'static, (usize, Option<(libc::sigaction, libc::sigaction)>)>,
        std::sync::MutexGuard<'static, Vec<(usize, libc::pid_t, c_int)>>,
    );
    thread_local! {
        static HELD: std::cell::RefCell<Option<Held>> = const { std::cell::RefCell::new(None) };
    }
    extern "C" fn prepare() {
        let signals = SYSTEM_SIGNALS.lock().unwrap_or_else(|p| p.into_inner());
        let streams = STREAMS.lock().unwrap_or_else(|p| p.into_inner());
        HELD.with(|h| *h.borrow_mut() = Some((signals, streams)));
    }
    extern "C" fn release() {
        HELD.with(|h| h.borrow_mut().take());
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| crate::os::on_fork(prepare, release, release));
}

/// `popen(3)`: a pipe to or from `sh -c cmd`.
///
/// # Safety
/// `cmd` and `mode` are NUL-terminated strings.
pub(crate) unsafe fn open_pipe(cmd: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    hold_across_fork();
    // SAFETY: the caller's mode string.
    let Some((read, cloexec)) = popen_mode(unsafe { CStr::from_ptr(mode) }.to_bytes()) else {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    };
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds; the rest are calls on fds and structs owned here.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return ptr::null_mut();
        }
        let (ours, theirs, target) = if read {
            (fds[0], fds[1], 1)
        } else {
            (fds[1], fds[0], 0)
        };
        let fp = libc::fdopen(ours, if read { c"r" } else { c"w" }.as_ptr());
        if fp.is_null() {
            let e = *libc::__errno_location();
            libc::close(ours);
            libc::close(theirs);
            set_errno(e);
            return ptr::null_mut();
        }
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut fa);
        if theirs == target {
            // dup2 onto itself would keep close-on-exec.
            libc::fcntl(theirs, libc::F_SETFD, 0);
        } else {
            libc::posix_spawn_file_actions_adddup2(&mut fa, theirs, target);
        }
        // POSIX: streams of earlier popen calls are closed in the new child.
        let mut streams = STREAMS.lock().unwrap_or_else(|p| p.into_inner());
        for &(_, _, fd) in streams.iter() {
            if fd != target {
                libc::posix_spawn_file_actions_addclose(&mut fa, fd);
            }
        }
        let mut pid = 0;
        let e = spawn_shell(&mut pid, cmd, &fa, ptr::null());
        libc::posix_spawn_file_actions_destroy(&mut fa);
        libc::close(theirs);
        if e != 0 {
            drop(streams);
            libc::fclose(fp);
            set_errno(e);
            return ptr::null_mut();
        }
        if !cloexec {
            libc::fcntl(ours, libc::F_SETFD, 0);
        }
        streams.push((fp as usize, pid, ours));
        fp
    }
}

/// `pclose(3)` of a stream [`open_pipe`] made: close it and wait for the shell.
/// `None`: not one of ours.
///
/// # Safety
/// `fp` is a stream pointer or NULL.
pub(crate) unsafe fn close_pipe(fp: *mut libc::FILE) -> Option<c_int> {
    let pid = {
        let mut streams = STREAMS.lock().unwrap_or_else(|p| p.into_inner());
        let i = streams.iter().position(|s| s.0 == fp as usize)?;
        streams.swap_remove(i).1
    };
    // SAFETY: a stream fdopen made for popen, closed once (it just left the list).
    unsafe { libc::fclose(fp) };
    Some(wait(pid))
}

/// `system(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn system(cmd: *const c_char) -> c_int {
    if !intercepting() {
        let real = real!(system: fn(*const c_char) -> c_int);
        let Some(real) = real else {
            return -1;
        };
        // SAFETY: the caller's argument, passed on unchanged.
        return unsafe { real(cmd) };
    }
    // SAFETY: the caller's command.
    guarded("system", -1, || unsafe { run_system(cmd) })
}

/// `popen(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn popen(cmd: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    if !intercepting() {
        let real = real!(popen: fn(*const c_char, *const c_char) -> *mut libc::FILE);
        let Some(real) = real else {
            set_errno(libc::ENOSYS);
            return ptr::null_mut();
        };
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(cmd, mode) };
    }
    // SAFETY: the caller's command and mode.
    guarded("popen", ptr::null_mut(), || unsafe { open_pipe(cmd, mode) })
}

/// `pclose(3)`: ours wait for their shell; any other stream goes to the real pclose.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pclose(fp: *mut libc::FILE) -> c_int {
    // SAFETY: the caller's stream.
    if let Some(status) = unsafe { close_pipe(fp) } {
        return status;
    }
    let real = real!(pclose: fn(*mut libc::FILE) -> c_int);
    let Some(real) = real else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: the caller's stream, passed on unchanged.
    unsafe { real(fp) }
}

/// wordexp's flag for "no command substitution" and its out-of-memory answer (glibc).
const WRDE_NOCMD: c_int = 4;
const WRDE_NOSPACE: c_int = 1;

/// Held while `environ` is swapped for a [`wordexp`] call, so two calls never restore
/// each other's copy.
static ENVIRON_SWAPPED: Mutex<()> = Mutex::new(());

/// `wordexp(3)`: a command substitution's shell gets LD_PRELOAD back (see the module doc).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wordexp(
    words: *const c_char,
    we: *mut libc::c_void,
    flags: c_int,
) -> c_int {
    let real = real!(wordexp: fn(*const c_char, *mut libc::c_void, c_int) -> c_int);
    let Some(real) = real else {
        return WRDE_NOSPACE;
    };
    if !intercepting() || flags & WRDE_NOCMD != 0 {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(words, we, flags) };
    }
    guarded("wordexp", WRDE_NOSPACE, || {
        let _g = ENVIRON_SWAPPED.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: `environ` is read (a NULL-terminated array, or NULL after clearenv).
        let Some(env) = (unsafe { child_env(environ) }) else {
            // SAFETY: as above.
            return unsafe { real(words, we, flags) };
        };
        // SAFETY: `env` is a NULL-terminated array whose strings outlive the call; the
        // lock keeps other wordexp calls from interleaving.
        unsafe { with_environ(env.ptrs.as_ptr(), || real(words, we, flags)) }
    })
}

/// Run `f` with `environ` pointing at `env`, then put the program's array back (never
/// freed or changed, so another thread's `getenv` always reads a complete array).
///
/// # Safety
/// `env` is a NULL-terminated array of C strings that outlives the call; no other thread
/// swaps `environ` meanwhile.
unsafe fn with_environ<T>(env: *const *const c_char, f: impl FnOnce() -> T) -> T {
    // SAFETY: this function's contract; `environ` is a plain pointer glibc reads anew on
    // every use.
    unsafe {
        let saved = environ;
        environ = env;
        let r = f();
        environ = saved;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn wordexp_after_unsetenv_runs_its_shell_with_the_childs_environment() {
        // glibc's wordexp spawns /bin/sh with environ as it is at the call: the swapped
        // array is what its shell sees, and the program's own comes back after.
        unsafe extern "C" {
            fn wordfree(we: *mut libc::c_void);
        }
        // The test process's environment plus one variable: other test threads reading
        // the environment meanwhile see what they saw before.
        let strings: Vec<std::ffi::CString> = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.into_encoded_bytes();
                kv.push(b'=');
                kv.extend(v.into_encoded_bytes());
                std::ffi::CString::new(kv).unwrap()
            })
            .chain([c"QNET_WORDEXP_TEST=seen".to_owned()])
            .collect();
        let env: Vec<*const c_char> = strings
            .iter()
            .map(|c| c.as_ptr())
            .chain([ptr::null()])
            .collect();
        // glibc's wordexp_t: count, words, offset.
        let mut we = [0usize; 3];
        // SAFETY: a NULL-terminated array of strings alive for the call; `we` is as large
        // as wordexp_t.
        let (r, word) = unsafe {
            let before = environ;
            let r = with_environ(env.as_ptr(), || {
                wordexp(
                    c"$(echo $QNET_WORDEXP_TEST)".as_ptr(),
                    we.as_mut_ptr().cast(),
                    0,
                )
            });
            let after = environ;
            assert_eq!(after, before, "the program's array is back");
            let words = we[1] as *const *const c_char;
            let word = (r == 0 && we[0] == 1).then(|| CStr::from_ptr(*words).to_owned());
            if r == 0 {
                wordfree(we.as_mut_ptr().cast());
            }
            (r, word)
        };
        assert_eq!((r, word.as_deref()), (0, Some(c"seen")));
        assert!(std::env::var_os("QNET_WORDEXP_TEST").is_none());
    }

    #[test]
    fn popen_mode_follows_glibc() {
        assert_eq!(popen_mode(b"r"), Some((true, false)));
        assert_eq!(popen_mode(b"we"), Some((false, true)));
        assert_eq!(popen_mode(b"er"), Some((true, true)));
        assert_eq!(popen_mode(b"rw"), None);
        assert_eq!(popen_mode(b""), None);
        assert_eq!(popen_mode(b"rb"), None);
    }

    #[test]
    fn system_and_popen_run_the_shell_and_report_its_status() {
        // The own implementations behind the hooks (not preloaded here, so the
        // environment passes as it is): exit statuses, and a pipe both ways.
        // SAFETY: NUL-terminated literals; streams used once and closed once.
        unsafe {
            assert_eq!(run_system(c"exit 3".as_ptr()), 3 << 8);
            assert_eq!(run_system(ptr::null()), 1);
            let fp = open_pipe(c"echo hello; exit 5".as_ptr(), c"re".as_ptr());
            assert!(!fp.is_null());
            let fd = libc::fileno(fp);
            let mut f = std::mem::ManuallyDrop::new(std::os::fd::FromRawFd::from_raw_fd(fd));
            let mut s = String::new();
            std::fs::File::read_to_string(&mut f, &mut s).unwrap();
            assert_eq!(s, "hello\n");
            assert_eq!(close_pipe(fp), Some(5 << 8));
            assert_eq!(close_pipe(fp), None, "closed once, then forgotten");
            let fp = open_pipe(c"read x; exit $x".as_ptr(), c"w".as_ptr());
            assert!(!fp.is_null());
            libc::fputs(c"7\n".as_ptr(), fp);
            assert_eq!(close_pipe(fp), Some(7 << 8));
            assert!(open_pipe(c"true".as_ptr(), c"x".as_ptr()).is_null());
        }
    }
}
