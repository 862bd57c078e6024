//! Runs the built `qnet` binary's key subcommands.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

// RFC 7748 section 6.1, Alice's key pair, in base64.
const ALICE_PRIVATE: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
const ALICE_PUBLIC: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

fn qnet(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qnet"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qnet");
    let mut pipe = child.stdin.take().expect("stdin");
    // The child may exit before reading everything; a broken pipe is fine then.
    let _ = pipe.write_all(stdin);
    drop(pipe);
    child.wait_with_output().expect("wait for qnet")
}

fn stdout_line(out: &Output) -> String {
    assert!(
        out.status.success(),
        "qnet failed: {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout.clone()).expect("utf-8 stdout");
    let line = text.strip_suffix('\n').expect("output ends with a newline");
    assert!(!line.contains('\n'), "more than one line: {text:?}");
    line.to_owned()
}

#[test]
fn keygen_prints_a_base64_key() {
    let out = qnet(&["keygen"], b"");
    let key = stdout_line(&out);
    assert_eq!(key.len(), 44, "{key:?}");
    let bytes = STANDARD.decode(&key).expect("standard base64");
    assert_eq!(bytes.len(), 32);
    assert!(out.stderr.is_empty());
}

#[test]
fn two_keygens_differ() {
    let a = stdout_line(&qnet(&["keygen"], b""));
    let b = stdout_line(&qnet(&["keygen"], b""));
    assert_ne!(a, b);
}

#[test]
fn pubkey_matches_rfc7748_vector() {
    let input = format!("{ALICE_PRIVATE}\n");
    assert_eq!(
        stdout_line(&qnet(&["pubkey"], input.as_bytes())),
        ALICE_PUBLIC
    );
    // No trailing newline, surrounding blanks: still accepted.
    let input = format!("  {ALICE_PRIVATE}  ");
    assert_eq!(
        stdout_line(&qnet(&["pubkey"], input.as_bytes())),
        ALICE_PUBLIC
    );
}

#[test]
fn keygen_then_pubkey_pipeline() {
    let private = stdout_line(&qnet(&["keygen"], b""));
    let public = stdout_line(&qnet(&["pubkey"], format!("{private}\n").as_bytes()));
    assert_eq!(public.len(), 44);
    assert_ne!(public, private);
}

#[test]
fn pubkey_rejects_garbage() {
    let inputs: [&[u8]; 4] = [
        b"this is not a key\n",
        b"",
        b"AAAA\n",
        &[0xff, 0xfe, 0x00, 0x41],
    ];
    for input in inputs {
        let out = qnet(&["pubkey"], input);
        assert_eq!(out.status.code(), Some(1), "input {input:?}");
        assert!(out.stdout.is_empty(), "input {input:?}");
        let err = String::from_utf8(out.stderr).expect("utf-8 stderr");
        assert_eq!(err.matches('\n').count(), 1, "not one line: {err:?}");
        assert!(err.ends_with('\n'));
        assert!(err.starts_with("qnet pubkey: "), "{err:?}");
    }
}
