//! Authentication (control-spec 3.5, 3.21, 3.24): PROTOCOLINFO names the methods Tor
//! accepts and its cookie file; qnet picks NULL, a configured password, SAFECOOKIE or
//! COOKIE, in that order.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::TorError;
use super::conn::Conn;
use super::reply::{Reply, Word, quote, value, words};
use crate::config::TorConfig;
use crate::fileperm::{self, Holds};

/// What PROTOCOLINFO said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ProtocolInfo {
    /// `METHODS=`: NULL, HASHEDPASSWORD, COOKIE, SAFECOOKIE (others kept, unused).
    pub(crate) methods: Vec<String>,
    /// `COOKIEFILE=`, where Tor wrote its cookie.
    pub(crate) cookie_file: Option<PathBuf>,
    /// `VERSION Tor=`.
    pub(crate) version: Option<String>,
}

/// Reads a PROTOCOLINFO reply; lines of unknown keywords are passed over.
pub(crate) fn protocol_info(r: &Reply) -> ProtocolInfo {
    let mut info = ProtocolInfo::default();
    for line in &r.lines {
        let w = words(&line.text);
        match w.first() {
            Some(Word::Arg(k)) if k == "AUTH" => {
                if let Some(m) = value(&w, "METHODS") {
                    info.methods = m.split(',').map(str::to_owned).collect();
                }
                info.cookie_file = value(&w, "COOKIEFILE").map(PathBuf::from);
            }
            Some(Word::Arg(k)) if k == "VERSION" => {
                info.version = value(&w, "Tor").map(str::to_owned);
            }
            _ => {}
        }
    }
    info
}

/// An authentication method qnet can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// No authentication.
    Null,
    /// `HashedControlPassword`.
    Password,
    /// The cookie, proven with HMAC-SHA256 over both sides' nonces.
    SafeCookie,
    /// The cookie itself, in hex.
    Cookie,
}

impl Method {
    /// The name PROTOCOLINFO uses (and `--auth` takes, in lower case).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Method::Null => "NULL",
            Method::Password => "HASHEDPASSWORD",
            Method::SafeCookie => "SAFECOOKIE",
            Method::Cookie => "COOKIE",
        }
    }
}

/// The method to use: `force` if Tor offers it, else the first Tor offers of NULL, a
/// password (if one is configured), SAFECOOKIE, and COOKIE only with a configured
/// `cookie_file`: plain COOKIE sends the cookie itself, and whatever answers on the
/// control port (another user's listener while Tor is down) names the file to read,
/// where SAFECOOKIE sends nothing before the other end has proved it knows the cookie.
pub(crate) fn choose(
    info: &ProtocolInfo,
    have_password: bool,
    have_cookie_file: bool,
    force: Option<Method>,
) -> Result<Method, TorError> {
    let offered = |m: Method| info.methods.iter().any(|o| o == m.name());
    let order = [
        Method::Null,
        Method::Password,
        Method::SafeCookie,
        Method::Cookie,
    ];
    let usable = |m: Method| offered(m) && (m != Method::Password || have_password);
    let pick = match force {
        Some(m) => Some(m).filter(|&m| usable(m)),
        None => order
            .into_iter()
            .find(|&m| usable(m) && (m != Method::Cookie || have_cookie_file)),
    };
    let offers = info.methods.join(",");
    pick.ok_or_else(|| {
        TorError::Auth(match force {
            Some(m) if !offered(m) => {
                format!("Tor does not offer {} (it offers {offers})", m.name())
            }
            _ if offered(Method::Password) && !have_password => {
                format!("Tor offers {offers}: set tor.password or tor.password_file")
            }
            _ => format!("no usable authentication method: Tor offers {offers}"),
        })
    })
}

const SERVER_KEY: &[u8] = b"Tor safe cookie authentication server-to-controller hash";
const CLIENT_KEY: &[u8] = b"Tor safe cookie authentication controller-to-server hash";

fn safecookie_mac(key: &[u8], cookie: &[u8], client: &[u8], server: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in [cookie, client, server] {
        m.update(part);
    }
    m
}

/// Whether Tor's SERVERHASH proves it knows the cookie (compared in constant time).
pub(crate) fn server_hash_ok(cookie: &[u8], client: &[u8], server: &[u8], hash: &[u8]) -> bool {
    safecookie_mac(SERVER_KEY, cookie, client, server)
        .verify_slice(hash)
        .is_ok()
}

/// The hash that proves to Tor that qnet knows the cookie.
pub(crate) fn client_hash(cookie: &[u8], client: &[u8], server: &[u8]) -> [u8; 32] {
    safecookie_mac(CLIENT_KEY, cookie, client, server)
        .finalize()
        .into_bytes()
        .into()
}

/// Lower-case hex of `b`.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes of a hex string, `None` when it is not one.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Authenticates `conn` as `cfg` allows; `force` picks a method (for tests and `--auth`).
/// Returns the method used and PROTOCOLINFO's answer.
pub(crate) fn authenticate(
    conn: &mut Conn,
    cfg: &TorConfig,
    force: Option<Method>,
) -> Result<(Method, ProtocolInfo), TorError> {
    let info = protocol_info(&conn.ok("PROTOCOLINFO 1")?);
    let password = match (&cfg.password, &cfg.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(read_secret(f, "Tor control password file")?),
        (None, None) => None,
    };
    let method = choose(&info, password.is_some(), cfg.cookie_file.is_some(), force)?;
    let line = match method {
        Method::Null => "AUTHENTICATE".to_owned(),
        Method::Password => format!("AUTHENTICATE {}", quote(password.as_deref().unwrap_or(""))),
        Method::Cookie => format!("AUTHENTICATE {}", hex(&cookie(cfg, &info)?)),
        Method::SafeCookie => safecookie(conn, &cookie(cfg, &info)?)?,
    };
    conn.ok(&line)
        .map_err(|e| TorError::Auth(format!("{} refused: {e}", method.name())))?;
    Ok((method, info))
}

/// The AUTHCHALLENGE exchange; returns the AUTHENTICATE line to send.
fn safecookie(conn: &mut Conn, cookie: &[u8]) -> Result<String, TorError> {
    let mut nonce = [0u8; 32];
    crate::entropy::fill(&mut nonce).map_err(|e| TorError::Auth(e.to_string()))?;
    let r = conn.ok(&format!("AUTHCHALLENGE SAFECOOKIE {}", hex(&nonce)))?;
    let w = words(r.first());
    let field = |k: &str| {
        value(&w, k)
            .and_then(unhex)
            .ok_or_else(|| TorError::Auth(format!("AUTHCHALLENGE without a hex {k}")))
    };
    let (hash, server) = (field("SERVERHASH")?, field("SERVERNONCE")?);
    if !server_hash_ok(cookie, &nonce, &server, &hash) {
        // Either the cookie read is not this Tor's (a stale file, another Tor's, a wrong
        // cookie_file) or the other end is not Tor: no proof is sent to it either way.
        return Err(TorError::Auth(
            "Tor's SAFECOOKIE server hash does not match the cookie read (a stale or another Tor's cookie file, or not Tor)".into(),
        ));
    }
    Ok(format!(
        "AUTHENTICATE {}",
        hex(&client_hash(cookie, &nonce, &server))
    ))
}

/// The 32-byte cookie, from `cookie_file` if configured, else where Tor said it is.
fn cookie(cfg: &TorConfig, info: &ProtocolInfo) -> Result<Vec<u8>, TorError> {
    let path = cfg
        .cookie_file
        .as_ref()
        .or(info.cookie_file.as_ref())
        .ok_or_else(|| TorError::Auth("Tor named no cookie file (set tor.cookie_file)".into()))?;
    let bytes = read_cookie(path)
        .map_err(|e| TorError::Auth(format!("cookie file {}: {e}", path.display())))?;
    if bytes.len() != 32 {
        let m = format!(
            "cookie file {}: {} bytes, not 32",
            path.display(),
            bytes.len()
        );
        return Err(TorError::Auth(m));
    }
    Ok(bytes)
}

/// At most 33 bytes of a regular file: the path may come from the other end of the
/// control connection, which must not make this read a device, a FIFO or a huge file.
fn read_cookie(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::with_capacity(33);
    f.take(33).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A password file's first line, the file checked like a key file (mode 600).
fn read_secret(path: &Path, what: &'static str) -> Result<String, TorError> {
    let e = |m: String| TorError::Auth(format!("{what} {}: {m}", path.display()));
    let mut f = fs::File::open(path).map_err(|x| e(x.to_string()))?;
    let meta = f.metadata().map_err(|x| e(x.to_string()))?;
    fileperm::check(&meta, path, "Tor control password file", Holds::Secret)
        .map_err(|x| TorError::Auth(x.to_string()))?;
    let mut s = String::new();
    f.read_to_string(&mut s).map_err(|x| e(x.to_string()))?;
    Ok(s.lines().next().unwrap_or("").to_owned())
}
