//! The exec family and `posix_spawn`: children stay tunneled (LD_PRELOAD is put back if
//! the app dropped it from the environment it passes), and programs whose connections no
//! hook would see are refused: setuid, setgid or file-capability programs (the loader
//! drops LD_PRELOAD), static and Go programs (their own system calls).
//!
//! Hooked: `execve`, `execv`, `execvp`, `execvpe`, `fexecve`, `execveat`, `posix_spawn`
//! and `posix_spawnp` (`system` and `popen` are [`super::shell`]'s). glibc's `execvp`,
//! `execvpe`, `fexecve` and `posix_spawn*` reach the kernel through internal calls, not
//! through `execve`'s PLT entry, so each is hooked on its own; `fexecve` and `execveat`
//! are judged by the file their fd (and path) name, through `/proc/self/fd`. `execl`,
//! `execle` and `execlp` are C-variadic, which a stable Rust function cannot be: they
//! are `variadic.c`'s, which collects the arguments and calls `execve`/`execvpe` here.
//! `syscall(SYS_execve …)` and `SYS_execveat` reach these hooks through the `syscall`
//! hook; a raw system call instruction reaches none (the README lists it).

use std::ffi::{CStr, CString, c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::sync::OnceLock;

use super::{guarded, intercepting, real, set_errno};
use crate::engine::preload::{self, Decision};

unsafe extern "C" {
    static mut environ: *const *const c_char;
}

/// This libqnet.so, found at load; unset when linked into a program.
pub(super) static LIBRARY: Library = Library(OnceLock::new());

/// The path of this libqnet.so: absolute (so a child started after `chdir` still finds
/// it), and the name the loader was given (`LD_PRELOAD=./libqnet.so`), which a child's
/// `LD_PRELOAD` has replaced.
pub(super) struct Library(OnceLock<(String, String)>);

impl Library {
    /// Record the name the loader gave this library (at load, while the working
    /// directory is still the one the loader resolved it against), made absolute. The
    /// process's own `LD_PRELOAD` gets the absolute path too, so children spawned where
    /// no hook sees them (glibc's internal execve) still find the library after a chdir.
    pub(super) fn set(&self, given: CString) -> Result<(), CString> {
        let Ok(name) = given.to_str() else {
            return Err(given);
        };
        let abs = if name.starts_with('/') {
            name.to_owned()
        } else {
            match std::fs::canonicalize(name) {
                Ok(p) => p.to_string_lossy().into_owned(),
                Err(_) => match std::env::current_dir() {
                    Ok(d) => d.join(name).to_string_lossy().into_owned(),
                    Err(_) => name.to_owned(),
                },
            }
        };
        let current = std::env::var("LD_PRELOAD").ok();
        let listed = current
            .as_deref()
            .is_some_and(|c| c.split([' ', ':']).any(|e| e == name));
        if abs != name && listed {
            if let Some(v) = preload::preload_value(current.as_deref(), &abs, name) {
                if let Ok(v) = CString::new(v) {
                    // SAFETY: at load, from the constructor, before the program's own code
                    // runs or starts a thread that could read the environment meanwhile.
                    unsafe { libc::setenv(c"LD_PRELOAD".as_ptr(), v.as_ptr(), 1) };
                }
            }
        }
        self.0
            .set((abs, name.to_owned()))
            .map_err(|_| CString::default())
    }

    /// The absolute path and the name given at load.
    fn get(&self) -> Option<(&str, &str)> {
        self.0.get().map(|(a, g)| (a.as_str(), g.as_str()))
    }
}

/// The environment a child gets: `envp` with LD_PRELOAD naming this library.
/// The returned vector owns any new string; the pointer array borrows from both.
pub(super) struct ChildEnv {
    _owned: Option<CString>,
    pub(super) ptrs: Vec<*const c_char>,
}

pub(super) unsafe fn child_env(envp: *const *const c_char) -> Option<ChildEnv> {
    let (lib, given) = LIBRARY.get()?;
    // SAFETY: the caller's environment array.
    unsafe { child_env_with(envp, lib, given) }
}

/// [`child_env`] for the library `lib`, loaded as `given`.
unsafe fn child_env_with(envp: *const *const c_char, lib: &str, given: &str) -> Option<ChildEnv> {
    let mut ptrs = Vec::new();
    let mut current = None;
    let mut at = None;
    if !envp.is_null() {
        let mut i = 0;
        // SAFETY: `envp` is a NULL-terminated array of C strings (exec's contract).
        unsafe {
            while !(*envp.add(i)).is_null() {
                let p = *envp.add(i);
                let s = CStr::from_ptr(p).to_bytes();
                if let Some(v) = s.strip_prefix(b"LD_PRELOAD=") {
                    current = std::str::from_utf8(v).ok();
                    at = Some(ptrs.len());
                }
                ptrs.push(p);
                i += 1;
            }
        }
    }
    let new = preload::preload_value(current, lib, given)?;
    let owned = CString::new(format!("LD_PRELOAD={new}")).ok()?;
    match at {
        Some(i) => ptrs[i] = owned.as_ptr(),
        None => ptrs.push(owned.as_ptr()),
    }
    ptrs.push(ptr::null());
    Some(ChildEnv {
        _owned: Some(owned),
        ptrs,
    })
}

/// The decision for executing `path` (a NUL-terminated string; null passes through).
unsafe fn check(path: *const c_char, search: bool) -> Decision<()> {
    if path.is_null() {
        return Decision::Bypass;
    }
    // SAFETY: a NUL-terminated path, by the exec functions' contract.
    let c = unsafe { CStr::from_ptr(path) };
    let target = if search {
        // For the setuid check only; the real function still does its own search.
        crate::os::find_program(std::ffi::OsStr::from_bytes(c.to_bytes()))
    } else {
        Some(Path::new(std::ffi::OsStr::from_bytes(c.to_bytes())).to_path_buf())
    };
    match target {
        Some(t) => preload::exec(&t),
        None => Decision::Bypass,
    }
}

/// The file `execveat(dirfd, path, …, flags)` runs, named so `stat` reaches it: the fd
/// itself for an empty path with `AT_EMPTY_PATH` (that is `fexecve`), the path when it
/// is absolute or relative to the working directory, else the path under the fd.
fn exec_target(dirfd: c_int, path: &[u8], flags: c_int) -> std::path::PathBuf {
    let fd = Path::new("/proc/self/fd").join(dirfd.to_string());
    let p = Path::new(std::ffi::OsStr::from_bytes(path));
    if path.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
        fd
    } else if path.starts_with(b"/") || dirfd == libc::AT_FDCWD {
        p.to_path_buf()
    } else {
        fd.join(p)
    }
}

/// The shared body of `fexecve` and `execveat`: the setuid check on `target`, then
/// `call` with the child's environment.
unsafe fn fd_exec_hook(
    what: &str,
    target: impl FnOnce() -> std::path::PathBuf,
    envp: *const *const c_char,
    call: impl Fn(*const *const c_char) -> c_int,
) -> c_int {
    if !intercepting() {
        return call(envp);
    }
    guarded(what, -1, || {
        if let Decision::Refuse(e) = preload::exec(&target()) {
            set_errno(e);
            return -1;
        }
        // SAFETY: the caller's environment array.
        match unsafe { child_env(envp) } {
            Some(env) => call(env.ptrs.as_ptr()),
            None => call(envp),
        }
    })
}

/// `fexecve(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fexecve(
    fd: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let real: Option<
        unsafe extern "C" fn(c_int, *const *const c_char, *const *const c_char) -> c_int,
    > = real!(fexecve: fn(c_int, *const *const c_char, *const *const c_char) -> c_int);
    let Some(real) = real else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: the caller's fd and argv, with its environment or one that outlives the call.
    unsafe {
        fd_exec_hook(
            "fexecve",
            || exec_target(fd, b"", libc::AT_EMPTY_PATH),
            envp,
            |e| real(fd, argv, e),
        )
    }
}

/// `execveat(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execveat(
    dirfd: c_int,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    flags: c_int,
) -> c_int {
    type Execveat = unsafe extern "C" fn(
        c_int,
        *const c_char,
        *const *const c_char,
        *const *const c_char,
        c_int,
    ) -> c_int;
    let real: Option<Execveat> = real!(execveat: fn(c_int, *const c_char, *const *const c_char, *const *const c_char, c_int) -> c_int);
    let Some(real) = real else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    let target = || {
        // NULL: judged as empty (the real call fails with EFAULT).
        let p = if path.is_null() {
            &[][..]
        } else {
            // SAFETY: a NUL-terminated path, by execveat's contract.
            unsafe { CStr::from_ptr(path) }.to_bytes()
        };
        exec_target(dirfd, p, flags)
    };
    // SAFETY: the caller's arguments, with its environment or one that outlives the call.
    unsafe {
        fd_exec_hook("execveat", target, envp, |e| {
            real(dirfd, path, argv, e, flags)
        })
    }
}

type Execve =
    unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;

/// The shared body of `execve` and `execvpe` (`search`: look `path` up on PATH).
unsafe fn exec_hook(
    what: &str,
    real: Option<Execve>,
    search: bool,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let Some(real) = real else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(path, argv, envp) };
    }
    guarded(what, -1, || {
        // SAFETY: the caller's path.
        if let Decision::Refuse(e) = unsafe { check(path, search) } {
            set_errno(e);
            return -1;
        }
        // SAFETY: the caller's environment array.
        match unsafe { child_env(envp) } {
            // SAFETY: the caller's path and argv with an environment that outlives the call.
            Some(env) => unsafe { real(path, argv, env.ptrs.as_ptr()) },
            // SAFETY: as above.
            None => unsafe { real(path, argv, envp) },
        }
    })
}

/// `execve(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let real: Option<Execve> =
        real!(execve: fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int);
    // SAFETY: the caller's arguments.
    unsafe { exec_hook("execve", real, false, path, argv, envp) }
}

/// `execv(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: execv is execve with the current environment.
    unsafe { execve(path, argv, environ) }
}

/// `execvpe(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let real: Option<Execve> =
        real!(execvpe: fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int);
    // SAFETY: the caller's arguments.
    unsafe { exec_hook("execvpe", real, true, file, argv, envp) }
}

/// `execvp(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: execvp is execvpe with the current environment.
    unsafe { execvpe(file, argv, environ) }
}

pub(super) type Spawn = unsafe extern "C" fn(
    *mut libc::pid_t,
    *const c_char,
    *const libc::posix_spawn_file_actions_t,
    *const libc::posix_spawnattr_t,
    *const *const c_char,
    *const *const c_char,
) -> c_int;

#[allow(clippy::too_many_arguments)] // posix_spawn's six plus the function and its search mode
pub(super) unsafe fn spawn(
    real: Spawn,
    search: bool,
    pid: *mut libc::pid_t,
    path: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: the caller's path.
    if let Decision::Refuse(e) = unsafe { check(path, search) } {
        return e;
    }
    // SAFETY: the caller's environment array.
    match unsafe { child_env(envp) } {
        // SAFETY: the caller's arguments; the environment is copied before the call returns.
        Some(env) => unsafe { real(pid, path, actions, attr, argv, env.ptrs.as_ptr()) },
        // SAFETY: as above.
        None => unsafe { real(pid, path, actions, attr, argv, envp) },
    }
}

/// `posix_spawn(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut libc::pid_t,
    path: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let real: Option<Spawn> = real!(posix_spawn: fn(*mut libc::pid_t, *const c_char, *const libc::posix_spawn_file_actions_t, *const libc::posix_spawnattr_t, *const *const c_char, *const *const c_char) -> c_int);
    let Some(real) = real else {
        return libc::ENOSYS;
    };
    if !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(pid, path, actions, attr, argv, envp) };
    }
    // SAFETY: the caller's arguments.
    guarded("posix_spawn", libc::EIO, || unsafe {
        spawn(real, false, pid, path, actions, attr, argv, envp)
    })
}

/// `posix_spawnp(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut libc::pid_t,
    file: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let real: Option<Spawn> = real!(posix_spawnp: fn(*mut libc::pid_t, *const c_char, *const libc::posix_spawn_file_actions_t, *const libc::posix_spawnattr_t, *const *const c_char, *const *const c_char) -> c_int);
    let Some(real) = real else {
        return libc::ENOSYS;
    };
    if !intercepting() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real(pid, file, actions, attr, argv, envp) };
    }
    // SAFETY: the caller's arguments.
    guarded("posix_spawnp", libc::EIO, || unsafe {
        spawn(real, true, pid, file, actions, attr, argv, envp)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(env: &ChildEnv) -> Vec<String> {
        let (last, list) = env.ptrs.split_last().unwrap();
        assert!(last.is_null());
        list.iter()
            // SAFETY: the strings the test built or child_env_with owns.
            .map(|p| unsafe { CStr::from_ptr(*p) }.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn fexecve_and_execveat_are_judged_by_the_file_they_run() {
        let t = |fd, p: &str, f| exec_target(fd, p.as_bytes(), f).display().to_string();
        assert_eq!(t(5, "", libc::AT_EMPTY_PATH), "/proc/self/fd/5");
        assert_eq!(t(5, "curl", 0), "/proc/self/fd/5/curl");
        assert_eq!(t(5, "/usr/bin/curl", 0), "/usr/bin/curl");
        assert_eq!(t(libc::AT_FDCWD, "bin/curl", 0), "bin/curl");
        // Empty without the flag: no such file for the check, the real call says ENOENT.
        assert_eq!(t(5, "", 0), "/proc/self/fd/5/");
    }

    #[test]
    fn system_after_unsetenv_or_clearenv_gets_ld_preload_back() {
        // unsetenv("LD_PRELOAD") then system(): the shell's environment is built from
        // environ as it is; it must name the library again. clearenv leaves environ NULL.
        let path = c"PATH=/bin";
        let envp = [path.as_ptr(), ptr::null()];
        // SAFETY: NULL-terminated arrays of literals, or NULL.
        unsafe {
            let env = child_env_with(envp.as_ptr(), "/l/libqnet.so", "/l/libqnet.so").unwrap();
            assert_eq!(strings(&env), ["PATH=/bin", "LD_PRELOAD=/l/libqnet.so"]);
            let env = child_env_with(ptr::null(), "/l/libqnet.so", "/l/libqnet.so").unwrap();
            assert_eq!(strings(&env), ["LD_PRELOAD=/l/libqnet.so"]);
            let kept = c"LD_PRELOAD=/l/libqnet.so";
            let envp = [kept.as_ptr(), ptr::null()];
            assert!(child_env_with(envp.as_ptr(), "/l/libqnet.so", "/l/libqnet.so").is_none());
        }
    }
}
