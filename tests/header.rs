//! include/qnet.h must be what cbindgen makes of src/ffi/mod.rs today.
//!
//! `QNET_BLESS=1 cargo test --test header` rewrites it after an API change.

#[test]
fn committed_header_is_current() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config =
        cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).expect("cbindgen.toml");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        // Only the API file: the preload hooks (connect, close …) must not appear in it.
        .with_src(format!("{dir}/src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen")
        .write(&mut out);
    let path = format!("{dir}/include/qnet.h");
    if std::env::var_os("QNET_BLESS").is_some() {
        std::fs::write(&path, &out).expect("write include/qnet.h");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == out,
        "include/qnet.h is stale; run `QNET_BLESS=1 cargo test --test header` and commit it"
    );
}
