//! The client side of a SOCKS5 CONNECT, sans-IO: the engine asking an upstream proxy (such
//! as Tor) to connect it to its relay, or the relay to a destination.

use std::net::SocketAddr;

use super::{
    ATYP_NAME, ATYP_V4, ATYP_V6, AUTH_VERSION, CMD_CONNECT, METHOD_NONE, METHOD_USER_PASSWORD,
    REP_HOST_UNREACH, REP_NET_UNREACH, REP_NOT_ALLOWED, REP_REFUSED, REP_SUCCEEDED, REP_TTL,
    VERSION,
};
use crate::proto::{Destination, OpenError};

/// One CONNECT through an upstream proxy. Public only as the type of the public
/// `engine::Link::proxy`; nothing outside the crate can make or drive one.
#[derive(Debug)]
pub(crate) struct ClientHandshake {
    credentials: Option<(Vec<u8>, Vec<u8>)>,
    target: Destination,
    state: ClientState,
    buf: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    Method,
    Auth,
    Reply,
}

/// What the client handshake needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClientProgress {
    /// Send these bytes (may be empty) and read more.
    More(Vec<u8>),
    /// Connected: the first `consumed` bytes fed in the last call were the proxy's; the rest
    /// belong to the tunnel.
    Done {
        /// Bytes of the last input that were the proxy's reply.
        consumed: usize,
    },
}

/// Fresh random RFC 1929 credentials: Tor's IsolateSOCKSAuth gives every distinct pair a
/// circuit of its own, so one pair per session keeps sessions apart.
pub(crate) fn isolation_credentials() -> (Vec<u8>, Vec<u8>) {
    let mut r = [0u8; 16];
    // Unpredictability is not what isolation needs (distinctness is), so a failed
    // getrandom leaves a time-derived value rather than failing the connection.
    if getrandom::fill(&mut r).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        r.copy_from_slice(&t.to_le_bytes());
    }
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    (
        format!("qnet-{}", &hex[..16]).into_bytes(),
        hex.as_bytes()[16..].to_vec(),
    )
}

/// Why a SOCKS5 upstream did not connect us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxyError {
    /// The proxy's CONNECT reply code, when it answered with a failure.
    pub(crate) reply: Option<u8>,
    why: &'static str,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reply {
            Some(r) => write!(f, "the proxy could not connect (SOCKS reply {r})"),
            None => f.write_str(self.why),
        }
    }
}

impl ProxyError {
    fn protocol(why: &'static str) -> ProxyError {
        ProxyError { reply: None, why }
    }

    /// The stream-open error a relay reports for this failure.
    pub(crate) fn open_error(&self) -> OpenError {
        match self.reply {
            Some(REP_NOT_ALLOWED) => OpenError::Forbidden,
            Some(REP_NET_UNREACH) => OpenError::NetUnreachable,
            Some(REP_HOST_UNREACH) => OpenError::HostUnreachable,
            Some(REP_REFUSED) => OpenError::Refused,
            Some(REP_TTL) => OpenError::TimedOut,
            _ => OpenError::Failure,
        }
    }
}

impl ClientHandshake {
    /// Start a CONNECT to `target`; returns the handshake and the greeting to send.
    pub(crate) fn start(
        target: Destination,
        credentials: Option<(Vec<u8>, Vec<u8>)>,
    ) -> (Self, Vec<u8>) {
        // One method offered: the one we can do.
        let greeting = if credentials.is_some() {
            vec![VERSION, 1, METHOD_USER_PASSWORD]
        } else {
            vec![VERSION, 1, METHOD_NONE]
        };
        let h = ClientHandshake {
            credentials,
            target,
            state: ClientState::Method,
            buf: Vec::new(),
        };
        (h, greeting)
    }

    fn request(&self) -> Vec<u8> {
        let mut r = vec![VERSION, CMD_CONNECT, 0];
        match &self.target {
            Destination::Addr(SocketAddr::V4(a)) => {
                r.push(ATYP_V4);
                r.extend_from_slice(&a.ip().octets());
            }
            Destination::Addr(SocketAddr::V6(a)) => {
                r.push(ATYP_V6);
                r.extend_from_slice(&a.ip().octets());
            }
            Destination::Name(n, _) => {
                r.push(ATYP_NAME);
                r.push(n.len() as u8);
                r.extend_from_slice(n.as_bytes());
            }
        }
        r.extend_from_slice(&self.target.port().to_be_bytes());
        r
    }

    /// How many bytes the next step needs at least: reading no more than this never takes
    /// bytes that follow the proxy's reply, so a caller can hand the socket straight on.
    pub(crate) fn wanted(&self) -> usize {
        let have = self.buf.len();
        let need = match self.state {
            ClientState::Method | ClientState::Auth => 2,
            ClientState::Reply if have < 5 => 5,
            ClientState::Reply => match self.buf[3] {
                ATYP_V6 => 4 + 16 + 2,
                ATYP_NAME => 4 + 1 + self.buf[4] as usize + 2,
                // IPv4, or a malformed type the next feed reports.
                _ => 4 + 4 + 2,
            },
        };
        need.saturating_sub(have).max(1)
    }

    /// Feed bytes from the proxy. An error ends the attempt (the message says why).
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<ClientProgress, ProxyError> {
        self.buf.extend_from_slice(input);
        let mut out = Vec::new();
        loop {
            match self.state {
                ClientState::Method => {
                    if self.buf.len() < 2 {
                        return Ok(ClientProgress::More(out));
                    }
                    let m = self.buf[1];
                    if self.buf[0] != VERSION {
                        return Err(ProxyError::protocol("the proxy does not speak SOCKS5"));
                    }
                    self.buf.drain(..2);
                    match (m, &self.credentials) {
                        (METHOD_NONE, _) => {
                            out.extend(self.request());
                            self.state = ClientState::Reply;
                        }
                        (METHOD_USER_PASSWORD, Some((u, p))) => {
                            out.push(AUTH_VERSION);
                            out.push(u.len() as u8);
                            out.extend_from_slice(u);
                            out.push(p.len() as u8);
                            out.extend_from_slice(p);
                            self.state = ClientState::Auth;
                        }
                        _ => {
                            return Err(ProxyError::protocol(
                                "the proxy accepts none of our authentication methods",
                            ));
                        }
                    }
                }
                ClientState::Auth => {
                    if self.buf.len() < 2 {
                        return Ok(ClientProgress::More(out));
                    }
                    if self.buf[1] != 0 {
                        return Err(ProxyError::protocol(
                            "the proxy refused our username/password",
                        ));
                    }
                    self.buf.drain(..2);
                    out.extend(self.request());
                    self.state = ClientState::Reply;
                }
                ClientState::Reply => {
                    let b = &self.buf;
                    if b.len() < 5 {
                        return Ok(ClientProgress::More(out));
                    }
                    if b[0] != VERSION {
                        return Err(ProxyError::protocol("malformed reply from the proxy"));
                    }
                    if b[1] != REP_SUCCEEDED {
                        return Err(ProxyError {
                            reply: Some(b[1]),
                            why: "",
                        });
                    }
                    let len = match b[3] {
                        ATYP_V4 => 4 + 4 + 2,
                        ATYP_V6 => 4 + 16 + 2,
                        ATYP_NAME => 4 + 1 + b[4] as usize + 2,
                        _ => return Err(ProxyError::protocol("malformed reply from the proxy")),
                    };
                    if b.len() < len {
                        return Ok(ClientProgress::More(out));
                    }
                    if !out.is_empty() {
                        return Err(ProxyError::protocol(
                            "the proxy answered before our request",
                        ));
                    }
                    // Whatever follows the reply is the tunnel's, and came in this call.
                    let tail = b.len() - len;
                    return Ok(ClientProgress::Done {
                        consumed: input.len() - tail,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The server's CONNECT reply is the wire a proxy answers with.
    use crate::socks::connect_reply;

    #[test]
    fn client_handshake_in_one_piece() {
        let t = Destination::Addr("192.0.2.1:7000".parse().unwrap());
        let (mut c, _) = ClientHandshake::start(t, None);
        let mut all = vec![5, 0];
        all.extend(connect_reply(Ok(())));
        all.extend_from_slice(b"xyz");
        // The method reply, the connect reply and tunnel bytes in one read: the request
        // must still be sent, so this is an error, not a silent success.
        assert!(c.feed(&all).is_err());
    }

    #[test]
    fn reading_what_is_wanted_never_takes_tunnel_bytes() {
        // Replies carrying each address type, followed by tunnel bytes.
        let mut domain = vec![5, 0, 0, 3, 9];
        domain.extend_from_slice(b"relay.lan");
        domain.extend_from_slice(&[0x1b, 0x58]);
        let mut v6 = vec![5, 0, 0, 4];
        v6.extend_from_slice(&[0; 18]);
        for reply in [connect_reply(Ok(())), domain, v6] {
            let t = Destination::Name("example.org".into(), 443);
            let (mut c, _) = ClientHandshake::start(t, Some((b"u".to_vec(), b"p".to_vec())));
            let mut wire = vec![5, 2, 1, 0];
            wire.extend_from_slice(&reply);
            wire.extend_from_slice(b"TUNNEL");
            let mut at = 0;
            loop {
                let n = c.wanted();
                let chunk = &wire[at..at + n];
                at += n;
                match c.feed(chunk).unwrap() {
                    ClientProgress::More(_) => {}
                    ClientProgress::Done { consumed } => {
                        assert_eq!(consumed, n);
                        break;
                    }
                }
            }
            assert_eq!(&wire[at..], b"TUNNEL");
        }
    }

    #[test]
    fn client_handshake_failures() {
        let t = Destination::Addr("192.0.2.1:7000".parse().unwrap());
        let (mut c, _) = ClientHandshake::start(t.clone(), None);
        assert!(c.feed(&[5, 0xFF]).is_err());
        let (mut c, _) = ClientHandshake::start(t.clone(), Some((b"u".to_vec(), b"p".to_vec())));
        assert!(matches!(c.feed(&[5, 2]), Ok(ClientProgress::More(_))));
        assert!(c.feed(&[1, 1]).is_err());
        let (mut c, _) = ClientHandshake::start(t, None);
        assert!(matches!(c.feed(&[5, 0]), Ok(ClientProgress::More(_))));
        let e = c.feed(&connect_reply(Err(OpenError::Refused))).unwrap_err();
        assert!(e.to_string().contains("reply 5"), "{e}");
        assert_eq!(e.open_error(), OpenError::Refused);
    }
}
