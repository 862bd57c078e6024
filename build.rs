//! Builds the one C file of the library, `src/hooks/variadic.c`: `execl`, `execle` and
//! `execlp` are C-variadic, and stable Rust cannot define a variadic function. glibc's own
//! versions call its internal execve, which no hook sees, so a setuid program started
//! that way lost the preload and a child given an environment without LD_PRELOAD ran
//! untunneled. The C versions collect their arguments and call the exec hooks.

/// The C file's exported functions.
const EXPORTS: &[&str] = &["execl", "execle", "execlp"];

fn main() {
    const SRC: &str = "src/hooks/variadic.c";
    println!("cargo:rerun-if-changed={SRC}");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    cc::Build::new()
        .file(SRC)
        .warnings(true)
        .extra_warnings(true)
        .cargo_metadata(false)
        .compile("qnet_variadic");
    println!("cargo:rustc-link-search=native={}", out.display());
    // Whole archive: nothing in Rust calls these, and the linker would otherwise leave the
    // object out of libqnet.so, libqnet.a and the binaries.
    println!("cargo:rustc-link-lib=static:+whole-archive=qnet_variadic");
    // rustc's version script for a cdylib exports only Rust items (`local: *` for the
    // rest); the linker merges this second one, which makes the C functions visible, so
    // the loader finds them in a preloaded libqnet.so before libc's.
    let map = out.join("variadic.map");
    let globals: String = EXPORTS.iter().map(|s| format!("{s}; ")).collect();
    std::fs::write(&map, format!("{{ global: {globals}}};\n")).expect("write the version script");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        map.display()
    );
}
