//! X25519 static keys: generation, their base64 text form, key files and client allow-lists.
//!
//! Keys are written as standard base64 with padding (44 characters), the same form
//! WireGuard uses, so the usual `wg`-style shell habits carry over.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;

use crate::fileperm::{Holds, PermError};

/// Length in bytes of an X25519 key, private or public.
pub const KEY_LEN: usize = 32;

/// Length of a key in its base64 text form.
pub const KEY_BASE64_LEN: usize = 44;

/// A key file or allow-list larger than this is certainly not one; refusing it early
/// keeps a mistaken path (say, a log file) from being slurped whole.
const MAX_KEY_FILE: u64 = 4096;
const MAX_ALLOW_LIST: u64 = 16 * 1024 * 1024;

/// Everything that can go wrong reading, parsing or writing keys.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The text is not valid standard base64.
    #[error("invalid key: not valid base64 ({0})")]
    Base64(#[from] base64::DecodeError),
    /// The text is not 44 characters long, so it cannot be a base64 key.
    #[error("invalid key: expected {KEY_BASE64_LEN} base64 characters, got {0}")]
    TextLength(usize),
    /// The text decoded, but not to exactly 32 bytes.
    #[error("invalid key: decodes to {0} bytes, expected {KEY_LEN}")]
    Length(usize),
    /// The text is empty (after trimming whitespace).
    #[error("invalid key: empty")]
    Empty,
    /// A key file someone else may access, or an allow-list someone else may change.
    #[error(transparent)]
    Permissions(#[from] PermError),
    /// A file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file is implausibly large for what it should contain.
    #[error("{}: file too large ({size} bytes)", path.display())]
    TooLarge {
        /// The file involved.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// A private key file's content is not a key.
    #[error("key file {}: {source}", path.display())]
    BadKeyFile {
        /// The file involved.
        path: PathBuf,
        /// Why its content was rejected.
        source: Box<KeyError>,
    },
    /// One line of an allow-list is not a public key.
    #[error("allow-list {}, line {line}: {source}", path.display())]
    BadAllowListLine {
        /// The allow-list file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why the line was rejected.
        source: Box<KeyError>,
    },
}

/// Decodes one base64 key, tolerating the whitespace that files and pipes add.
fn decode_key(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    // Checked first because base64's own complaint about a short or long paste
    // ("Invalid padding") does not tell the user what is wrong.
    let chars = text.chars().count();
    if chars != KEY_BASE64_LEN {
        return Err(KeyError::TextLength(chars));
    }
    let bytes = STANDARD.decode(text)?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(bytes.len()))
}

/// An X25519 static private key; zeroed when dropped and never printed.
#[derive(Clone)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// Generates a new key from the operating system's random number generator.
    ///
    /// # Panics
    /// If the OS generator fails, which on Linux only happens on kernels without
    /// `getrandom(2)` and no readable `/dev/urandom`: there is no safe fallback.
    pub fn generate() -> PrivateKey {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).expect("operating system random number generator failed");
        let key = PrivateKey(bytes);
        bytes = [0u8; KEY_LEN];
        std::hint::black_box(&bytes);
        key
    }

    /// Wraps raw key bytes; X25519 clamping is applied when the key is used.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> PrivateKey {
        PrivateKey(bytes)
    }

    /// The raw key bytes, e.g. to hand to the Noise implementation.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Derives the matching public key.
    pub fn public(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// The key as 44 characters of standard base64.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Parses 44 characters of standard base64, ignoring surrounding whitespace.
    pub fn parse_base64(text: &str) -> Result<PrivateKey, KeyError> {
        decode_key(text).map(PrivateKey)
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PrivateKey::parse_base64(s)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Printing the public half still lets logs tell keys apart without leaking.
        write!(f, "PrivateKey(public: {})", self.public().to_base64())
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0 = [0u8; KEY_LEN];
        // Without `unsafe` volatile writes are unavailable; black_box makes the zeroed
        // array observable so the store above is not elided as dead.
        std::hint::black_box(&mut self.0);
    }
}

/// An X25519 public key; prints as base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// The key as 44 characters of standard base64.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Parses 44 characters of standard base64, ignoring surrounding whitespace.
    pub fn parse_base64(text: &str) -> Result<PublicKey, KeyError> {
        decode_key(text).map(PublicKey)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::parse_base64(s)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

fn io_error(path: &Path, source: io::Error) -> KeyError {
    KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a whole small file, checking its size through the open handle.
fn read_limited(file: fs::File, path: &Path, limit: u64) -> Result<String, KeyError> {
    let size = file.metadata().map_err(|e| io_error(path, e))?.len();
    if size > limit {
        return Err(KeyError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    let mut text = String::new();
    file.take(limit)
        .read_to_string(&mut text)
        .map_err(|e| io_error(path, e))?;
    Ok(text)
}

/// Opens `path` and checks who may touch it (see `fileperm`), on the open handle so
/// the file judged is the file read.
fn open_checked(path: &Path, what: &'static str, holds: Holds) -> Result<fs::File, KeyError> {
    let file = fs::File::open(path).map_err(|e| io_error(path, e))?;
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    crate::fileperm::check(&meta, path, what, holds)?;
    Ok(file)
}

/// Reads a private key file, refusing one that group or other may access or another
/// user owns.
pub fn load_private_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let file = open_checked(path, "key file", Holds::Secret)?;
    let text = read_limited(file, path, MAX_KEY_FILE)?;
    PrivateKey::parse_base64(&text).map_err(|e| KeyError::BadKeyFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Writes a private key (base64 plus newline) to a new file created with mode 0600.
///
/// Fails if the file already exists: an existing file's looser mode would survive a
/// truncating write, and silently replacing a key is never what a script wants.
pub fn write_private_key(path: &Path, key: &PrivateKey) -> Result<(), KeyError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    // A stack buffer rather than a String, so no copy of the secret is left behind in
    // freed heap memory.
    let mut line = [0u8; KEY_BASE64_LEN + 1];
    let encoded = STANDARD
        .encode_slice(key.as_bytes(), &mut line[..KEY_BASE64_LEN])
        .expect("32 bytes always encode to 44 base64 characters");
    debug_assert_eq!(encoded, KEY_BASE64_LEN);
    line[KEY_BASE64_LEN] = b'\n';
    let written = file.write_all(&line).and_then(|()| file.sync_all());
    line = [0u8; KEY_BASE64_LEN + 1];
    std::hint::black_box(&line);
    written.map_err(|e| io_error(path, e))
}

/// Parses allow-list text: one base64 public key per line, `#` starts a comment.
///
/// `path` only labels errors.
pub fn parse_allow_list(text: &str, path: &Path) -> Result<BTreeSet<PublicKey>, KeyError> {
    let mut keys = BTreeSet::new();
    for (index, line) in text.lines().enumerate() {
        // Base64 never contains '#', so cutting at the first one is unambiguous.
        let content = line
            .split_once('#')
            .map_or(line, |(before, _)| before)
            .trim();
        if content.is_empty() {
            continue;
        }
        let key = PublicKey::parse_base64(content).map_err(|e| KeyError::BadAllowListLine {
            path: path.to_path_buf(),
            line: index + 1,
            source: Box::new(e),
        })?;
        keys.insert(key);
    }
    Ok(keys)
}

/// Reads an allow-list file of client public keys (see [`parse_allow_list`]), refusing
/// one that group or other may write or another user owns: it decides who gets in.
pub fn load_allow_list(path: &Path) -> Result<BTreeSet<PublicKey>, KeyError> {
    let file = open_checked(path, "allow-list", Holds::Access)?;
    let text = read_limited(file, path, MAX_ALLOW_LIST)?;
    parse_allow_list(&text, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    // RFC 7748 section 6.1.
    const ALICE_PRIVATE_HEX: &str =
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PUBLIC_HEX: &str =
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const ALICE_PRIVATE_B64: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const ALICE_PUBLIC_B64: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
    const BOB_PUBLIC_B64: &str = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=";

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let mut nonce = [0u8; 8];
            getrandom::fill(&mut nonce).unwrap();
            let dir = std::env::temp_dir().join(format!(
                "qnet-keys-{tag}-{}-{:016x}",
                std::process::id(),
                u64::from_le_bytes(nonce)
            ));
            fs::create_dir(&dir).unwrap();
            TempDir(dir)
        }
        fn file(&self, name: &str, content: &str, mode: u32) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, content).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn rfc7748_vector_public_key() {
        let key = PrivateKey::from_bytes(hex32(ALICE_PRIVATE_HEX));
        assert_eq!(key.public(), PublicKey(hex32(ALICE_PUBLIC_HEX)));
        assert_eq!(key.to_base64(), ALICE_PRIVATE_B64);
        assert_eq!(key.public().to_base64(), ALICE_PUBLIC_B64);
    }

    #[test]
    fn generate_gives_distinct_valid_keys() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.public(), b.public());
        assert_eq!(a.to_base64().len(), KEY_BASE64_LEN);
    }

    #[test]
    fn base64_round_trip_and_whitespace() {
        let key = PrivateKey::generate();
        let parsed = PrivateKey::parse_base64(&format!("  {}\n", key.to_base64())).unwrap();
        assert_eq!(parsed.as_bytes(), key.as_bytes());
        let public: PublicKey = format!("\t{ALICE_PUBLIC_B64}\r\n").parse().unwrap();
        assert_eq!(public.to_base64(), ALICE_PUBLIC_B64);
        assert_eq!(public.to_string(), ALICE_PUBLIC_B64);
    }

    #[test]
    fn bad_base64_is_rejected() {
        assert!(matches!(
            PublicKey::parse_base64("not base64 at all!"),
            Err(KeyError::TextLength(18))
        ));
        assert!(matches!(
            PublicKey::parse_base64(&"!".repeat(44)),
            Err(KeyError::Base64(_))
        ));
        assert!(matches!(
            PublicKey::parse_base64("   "),
            Err(KeyError::Empty)
        ));
        // Valid base64 of 16 bytes.
        let short = STANDARD.encode([7u8; 16]);
        let err = PublicKey::parse_base64(&short).unwrap_err();
        assert!(matches!(err, KeyError::TextLength(24)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "invalid key: expected 44 base64 characters, got 24"
        );
        // 44 characters of valid base64 that are 31 or 33 bytes, not 32.
        let err = PublicKey::parse_base64(&STANDARD.encode([7u8; 31])).unwrap_err();
        assert!(matches!(err, KeyError::Length(31)), "{err:?}");
        let err = PublicKey::parse_base64(&STANDARD.encode([7u8; 33])).unwrap_err();
        assert!(matches!(err, KeyError::Length(33)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "invalid key: decodes to 33 bytes, expected 32"
        );
        // Missing padding is not standard base64.
        assert!(PublicKey::parse_base64(ALICE_PUBLIC_B64.trim_end_matches('=')).is_err());
        // URL-safe alphabet is not standard base64.
        let err = PublicKey::parse_base64(&ALICE_PUBLIC_B64.replace('/', "_")).unwrap_err();
        assert!(matches!(err, KeyError::Base64(_)), "{err:?}");
        assert!(err.to_string().starts_with("invalid key: not valid base64"));
        let huge = "A".repeat(100_000);
        assert!(matches!(
            PublicKey::parse_base64(&huge),
            Err(KeyError::TextLength(100_000))
        ));
    }

    #[test]
    fn debug_does_not_leak_private_key() {
        let key = PrivateKey::from_bytes(hex32(ALICE_PRIVATE_HEX));
        let shown = format!("{key:?}");
        assert!(!shown.contains(ALICE_PRIVATE_B64), "{shown}");
        assert!(!shown.contains(ALICE_PRIVATE_HEX), "{shown}");
        assert!(!shown.contains('['), "{shown}"); // no byte-array form either
        assert_eq!(
            format!("{:?}", key.public()),
            format!("PublicKey({ALICE_PUBLIC_B64})")
        );
    }

    #[test]
    fn load_private_key_checks_mode() {
        let dir = TempDir::new("mode");
        let good = dir.file("good.key", &format!("{ALICE_PRIVATE_B64}\n"), 0o600);
        assert_eq!(
            load_private_key(&good).unwrap().as_bytes(),
            &hex32(ALICE_PRIVATE_HEX)
        );
        let owner_only = dir.file("ro.key", ALICE_PRIVATE_B64, 0o400);
        assert!(load_private_key(&owner_only).is_ok());

        for mode in [0o644, 0o640, 0o604, 0o610, 0o601] {
            let path = dir.file(&format!("bad{mode:o}.key"), ALICE_PRIVATE_B64, mode);
            let err = load_private_key(&path).unwrap_err();
            assert!(matches!(err, KeyError::Permissions(_)), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("(mode {mode:04o})")), "{msg}");
            assert!(
                msg.ends_with(&format!("run: chmod 600 {}", path.display())),
                "{msg}"
            );
            assert!(!msg.contains('\n'));
        }
    }

    #[test]
    fn load_private_key_content_errors() {
        let dir = TempDir::new("content");
        let garbage = dir.file("garbage.key", "hello\n", 0o600);
        let msg = load_private_key(&garbage).unwrap_err().to_string();
        assert!(msg.starts_with("key file "), "{msg}");
        assert!(msg.contains("garbage.key"), "{msg}");
        let big = dir.file("big.key", &"A".repeat(10_000), 0o600);
        assert!(matches!(
            load_private_key(&big),
            Err(KeyError::TooLarge { .. })
        ));
        let missing = dir.0.join("missing.key");
        let err = load_private_key(&missing).unwrap_err();
        assert!(matches!(err, KeyError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.key"));
    }

    #[test]
    fn write_then_load_private_key() {
        let dir = TempDir::new("write");
        let path = dir.0.join("new.key");
        let key = PrivateKey::generate();
        write_private_key(&path, &key).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", key.to_base64())
        );
        assert_eq!(load_private_key(&path).unwrap().as_bytes(), key.as_bytes());
        // Refuses to clobber an existing key.
        assert!(matches!(
            write_private_key(&path, &PrivateKey::generate()),
            Err(KeyError::Io { .. })
        ));
        assert_eq!(load_private_key(&path).unwrap().as_bytes(), key.as_bytes());
    }

    #[test]
    fn allow_list_parsing() {
        let text = format!(
            "# clients\n\n{ALICE_PUBLIC_B64}\n   {BOB_PUBLIC_B64}   # bob's laptop\n\t\n  # indented comment\n{ALICE_PUBLIC_B64}\n"
        );
        let keys = parse_allow_list(&text, Path::new("clients")).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&ALICE_PUBLIC_B64.parse().unwrap()));
        assert!(keys.contains(&BOB_PUBLIC_B64.parse().unwrap()));
        assert!(
            parse_allow_list("\n# nothing\n", Path::new("x"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn allow_list_error_names_file_and_line() {
        let text = format!("# c\n{ALICE_PUBLIC_B64}\n\nnot-a-key # oops\n");
        let err = parse_allow_list(&text, Path::new("/etc/qnet/clients")).unwrap_err();
        assert!(
            matches!(err, KeyError::BadAllowListLine { line: 4, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("allow-list /etc/qnet/clients, line 4: invalid key"),
            "{msg}"
        );
    }

    #[test]
    fn load_allow_list_from_file() {
        let dir = TempDir::new("allow");
        let path = dir.file("clients", &format!("{BOB_PUBLIC_B64}\n"), 0o644);
        let keys = load_allow_list(&path).unwrap();
        assert_eq!(keys.len(), 1);
        let err = load_allow_list(&dir.0.join("nope")).unwrap_err();
        assert!(matches!(err, KeyError::Io { .. }));
    }

    /// Issue 12: an allow-list anyone could write was read as readily as the key file
    /// was guarded, so a local user could admit their own key.
    #[test]
    fn group_or_world_writable_allow_list_is_refused() {
        let dir = TempDir::new("allow-mode");
        for mode in [0o664, 0o646, 0o666] {
            let path = dir.file(
                &format!("clients{mode:o}"),
                &format!("{BOB_PUBLIC_B64}\n"),
                mode,
            );
            let msg = load_allow_list(&path).unwrap_err().to_string();
            assert_eq!(
                msg,
                format!(
                    "allow-list {p} is writable by group/other (mode {mode:04o}); run: chmod go-w {p}",
                    p = path.display()
                )
            );
        }
    }
}
