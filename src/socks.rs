//! The server side of a SOCKS5 handshake (RFC 1928, with RFC 1929 username/password),
//! sans-IO: bytes in, replies and a decision out. `qnet socks` carries each CONNECT as a
//! stream of the tunnel; BIND and UDP ASSOCIATE are refused with "command not supported".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::proto::{Destination, OpenError};

/// What the server accepts from clients.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SocksAuth {
    /// `Some((user, password))`: RFC 1929 is required; `None`: no authentication.
    pub credentials: Option<(Vec<u8>, Vec<u8>)>,
}

/// Why the handshake ended without a CONNECT. The connection is closed after `reply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Bytes to send before closing (may be empty: nothing sensible to answer).
    pub reply: Vec<u8>,
    /// For logs.
    pub reason: &'static str,
}

/// Where a handshake stands after some input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Send `reply` (may be empty) and wait for more input.
    More {
        /// Bytes for the client.
        reply: Vec<u8>,
    },
    /// The client asked to CONNECT: open the stream, then send [`connect_reply`].
    Connect {
        /// Bytes for the client now (the auth answer, if it came with the request).
        reply: Vec<u8>,
        /// Where to.
        dest: Destination,
        /// Bytes the client sent after its request (pipelined data), to forward.
        rest: Vec<u8>,
    },
    /// Close after sending the refusal.
    Refuse(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Auth,
    Request,
    Done,
}

/// One client's handshake.
#[derive(Debug)]
pub struct Handshake {
    auth: SocksAuth,
    state: State,
    buf: Vec<u8>,
}

/// Longest handshake input kept before giving up (a greeting, an auth, a request).
const MAX_BUF: usize = 1024;

const REP_GENERAL: u8 = 0x01;
const REP_NOT_ALLOWED: u8 = 0x02;
const REP_NET_UNREACH: u8 = 0x03;
const REP_HOST_UNREACH: u8 = 0x04;
const REP_REFUSED: u8 = 0x05;
const REP_TTL: u8 = 0x06;
const REP_CMD: u8 = 0x07;
const REP_ATYP: u8 = 0x08;

fn reply(code: u8) -> Vec<u8> {
    vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

fn refuse(reply: Vec<u8>, reason: &'static str) -> Progress {
    Progress::Refuse(Refusal { reply, reason })
}

/// The answer to a CONNECT once the relay has answered OPEN.
pub fn connect_reply(result: Result<(), OpenError>) -> Vec<u8> {
    reply(match result {
        Ok(()) => 0,
        Err(OpenError::Refused) => REP_REFUSED,
        Err(OpenError::NetUnreachable) => REP_NET_UNREACH,
        Err(OpenError::HostUnreachable | OpenError::NameNotFound) => REP_HOST_UNREACH,
        Err(OpenError::Forbidden) => REP_NOT_ALLOWED,
        Err(OpenError::TimedOut) => REP_TTL,
        Err(OpenError::TooManyStreams | OpenError::Failure) => REP_GENERAL,
    })
}

impl Handshake {
    /// A new handshake.
    pub fn new(auth: SocksAuth) -> Handshake {
        Handshake {
            auth,
            state: State::Greeting,
            buf: Vec::new(),
        }
    }

    /// Feed bytes from the client.
    pub fn feed(&mut self, input: &[u8]) -> Progress {
        if self.state == State::Done {
            return refuse(vec![], "input after the handshake ended");
        }
        self.buf.extend_from_slice(input);
        let mut out = Vec::new();
        loop {
            let step = match self.state {
                State::Greeting => self.greeting(&mut out),
                State::Auth => self.authenticate(&mut out),
                State::Request => self.request(&mut out),
                State::Done => return refuse(vec![], "input after the handshake ended"),
            };
            match step {
                Step::Again => continue,
                Step::Wait => {
                    if self.buf.len() > MAX_BUF {
                        self.state = State::Done;
                        return refuse(vec![], "handshake too long");
                    }
                    return Progress::More { reply: out };
                }
                Step::End(p) => {
                    self.state = State::Done;
                    return p;
                }
            }
        }
    }

    fn greeting(&mut self, out: &mut Vec<u8>) -> Step {
        let b = &self.buf;
        if b.is_empty() {
            return Step::Wait;
        }
        if b[0] != 5 {
            // Not SOCKS5 (SOCKS4, HTTP, garbage): nothing a client of ours would understand.
            return Step::End(refuse(vec![], "not SOCKS version 5"));
        }
        if b.len() < 2 || b.len() < 2 + b[1] as usize {
            return Step::Wait;
        }
        let methods = &b[2..2 + b[1] as usize];
        let want = if self.auth.credentials.is_some() {
            2
        } else {
            0
        };
        let n = 2 + b[1] as usize;
        if !methods.contains(&want) {
            return Step::End(refuse(vec![5, 0xFF], "no acceptable authentication method"));
        }
        out.extend_from_slice(&[5, want]);
        self.buf.drain(..n);
        self.state = if want == 2 {
            State::Auth
        } else {
            State::Request
        };
        Step::Again
    }

    fn authenticate(&mut self, out: &mut Vec<u8>) -> Step {
        let b = &self.buf;
        if b.is_empty() {
            return Step::Wait;
        }
        if b[0] != 1 {
            return Step::End(refuse(vec![1, 1], "bad username/password version"));
        }
        if b.len() < 2 {
            return Step::Wait;
        }
        let ul = b[1] as usize;
        if b.len() < 2 + ul + 1 {
            return Step::Wait;
        }
        let pl = b[2 + ul] as usize;
        if b.len() < 3 + ul + pl {
            return Step::Wait;
        }
        let (user, pass) = (&b[2..2 + ul], &b[3 + ul..3 + ul + pl]);
        let ok = self
            .auth
            .credentials
            .as_ref()
            .is_some_and(|(u, p)| u.as_slice() == user && p.as_slice() == pass);
        if !ok {
            let mut r = std::mem::take(out);
            r.extend_from_slice(&[1, 1]);
            return Step::End(refuse(r, "wrong username or password"));
        }
        out.extend_from_slice(&[1, 0]);
        self.buf.drain(..3 + ul + pl);
        self.state = State::Request;
        Step::Again
    }

    fn request(&mut self, out: &mut Vec<u8>) -> Step {
        let b = &self.buf;
        if b.len() < 4 {
            return Step::Wait;
        }
        let fail = |code, reason| {
            let mut r = out.clone();
            r.extend_from_slice(&reply(code));
            Step::End(refuse(r, reason))
        };
        if b[0] != 5 || b[2] != 0 {
            return Step::End(refuse(vec![], "malformed request"));
        }
        let (addr, at) = match b[3] {
            1 => {
                if b.len() < 4 + 4 + 2 {
                    return Step::Wait;
                }
                let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
                (Some(IpAddr::V4(ip)), 8)
            }
            4 => {
                if b.len() < 4 + 16 + 2 {
                    return Step::Wait;
                }
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[4..20]);
                (Some(IpAddr::V6(Ipv6Addr::from(o))), 20)
            }
            3 => {
                if b.len() < 5 || b.len() < 5 + b[4] as usize + 2 {
                    return Step::Wait;
                }
                (None, 5 + b[4] as usize)
            }
            _ => return fail(REP_ATYP, "address type not supported"),
        };
        let port = u16::from_be_bytes([b[at], b[at + 1]]);
        if b[1] != 1 {
            return fail(REP_CMD, "only CONNECT is supported");
        }
        let dest = match addr {
            Some(ip) => Destination::Addr(SocketAddr::new(ip, port)),
            None => {
                let name = std::str::from_utf8(&b[5..at]).unwrap_or("");
                if !crate::proto::frame::valid_hostname(name) {
                    return fail(REP_HOST_UNREACH, "invalid host name");
                }
                Destination::Name(name.to_ascii_lowercase(), port)
            }
        };
        let rest = b[at + 2..].to_vec();
        Step::End(Progress::Connect {
            reply: std::mem::take(out),
            dest,
            rest,
        })
    }
}

enum Step {
    Again,
    Wait,
    End(Progress),
}

/// The client side of a SOCKS5 CONNECT (the engine reaching its relay through an
/// upstream proxy such as Tor), sans-IO.
#[derive(Debug)]
pub struct ClientHandshake {
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
pub enum ClientProgress {
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
pub fn isolation_credentials() -> (Vec<u8>, Vec<u8>) {
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
pub struct ProxyError {
    /// The proxy's CONNECT reply code, when it answered with a failure.
    pub reply: Option<u8>,
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
    pub fn open_error(&self) -> OpenError {
        match self.reply {
            Some(2) => OpenError::Forbidden,
            Some(3) => OpenError::NetUnreachable,
            Some(4) => OpenError::HostUnreachable,
            Some(5) => OpenError::Refused,
            Some(6) => OpenError::TimedOut,
            _ => OpenError::Failure,
        }
    }
}

impl ClientHandshake {
    /// Start a CONNECT to `target`; returns the handshake and the greeting to send.
    pub fn start(target: Destination, credentials: Option<(Vec<u8>, Vec<u8>)>) -> (Self, Vec<u8>) {
        let greeting = if credentials.is_some() {
            vec![5, 1, 2]
        } else {
            vec![5, 1, 0]
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
        let mut r = vec![5, 1, 0];
        match &self.target {
            Destination::Addr(SocketAddr::V4(a)) => {
                r.push(1);
                r.extend_from_slice(&a.ip().octets());
            }
            Destination::Addr(SocketAddr::V6(a)) => {
                r.push(4);
                r.extend_from_slice(&a.ip().octets());
            }
            Destination::Name(n, _) => {
                r.push(3);
                r.push(n.len() as u8);
                r.extend_from_slice(n.as_bytes());
            }
        }
        r.extend_from_slice(&self.target.port().to_be_bytes());
        r
    }

    /// How many bytes the next step needs at least: reading no more than this never takes
    /// bytes that follow the proxy's reply, so a caller can hand the socket straight on.
    pub fn wanted(&self) -> usize {
        let have = self.buf.len();
        let need = match self.state {
            ClientState::Method | ClientState::Auth => 2,
            ClientState::Reply if have < 5 => 5,
            ClientState::Reply => match self.buf[3] {
                4 => 4 + 16 + 2,
                3 => 4 + 1 + self.buf[4] as usize + 2,
                // IPv4, or a malformed type the next feed reports.
                _ => 4 + 4 + 2,
            },
        };
        need.saturating_sub(have).max(1)
    }

    /// Feed bytes from the proxy. An error ends the attempt (the message says why).
    pub fn feed(&mut self, input: &[u8]) -> Result<ClientProgress, ProxyError> {
        self.buf.extend_from_slice(input);
        let mut out = Vec::new();
        loop {
            match self.state {
                ClientState::Method => {
                    if self.buf.len() < 2 {
                        return Ok(ClientProgress::More(out));
                    }
                    let m = self.buf[1];
                    if self.buf[0] != 5 {
                        return Err(ProxyError::protocol("the proxy does not speak SOCKS5"));
                    }
                    self.buf.drain(..2);
                    match (m, &self.credentials) {
                        (0, _) => {
                            out.extend(self.request());
                            self.state = ClientState::Reply;
                        }
                        (2, Some((u, p))) => {
                            out.push(1);
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
                    if b[0] != 5 {
                        return Err(ProxyError::protocol("malformed reply from the proxy"));
                    }
                    if b[1] != 0 {
                        return Err(ProxyError {
                            reply: Some(b[1]),
                            why: "",
                        });
                    }
                    let len = match b[3] {
                        1 => 4 + 4 + 2,
                        4 => 4 + 16 + 2,
                        3 => 4 + 1 + b[4] as usize + 2,
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

    fn connect_name(name: &str, port: u16) -> Vec<u8> {
        let mut v = vec![5, 1, 0, 3, name.len() as u8];
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&port.to_be_bytes());
        v
    }

    #[test]
    fn no_auth_connect_by_name_byte_by_byte_with_pipelined_data() {
        let mut h = Handshake::new(SocksAuth::default());
        let mut wire = vec![5, 2, 0, 2];
        wire.extend(connect_name("Example.COM", 443));
        wire.extend_from_slice(b"GET /");
        let mut replies = vec![];
        for (i, b) in wire.iter().enumerate() {
            match h.feed(&[*b]) {
                Progress::More { reply } => replies.extend(reply),
                Progress::Connect { reply, dest, rest } => {
                    replies.extend(reply);
                    assert_eq!(dest, Destination::Name("example.com".into(), 443));
                    // Fed one byte at a time, the request completes before the data arrives.
                    assert!(rest.is_empty());
                    assert_eq!(i, 4 + 5 + 11 + 2 - 1);
                    assert_eq!(replies, vec![5, 0]);
                    return;
                }
                Progress::Refuse(r) => panic!("refused: {r:?}"),
            }
        }
        panic!("no CONNECT");
    }

    #[test]
    fn v4_v6_and_pipelined_rest() {
        let mut h = Handshake::new(SocksAuth::default());
        let mut w = vec![5, 1, 0, 5, 1, 0, 1, 192, 0, 2, 1, 0, 80];
        w.extend_from_slice(b"hello");
        let Progress::Connect { reply, dest, rest } = h.feed(&w) else {
            panic!()
        };
        assert_eq!(reply, vec![5, 0]);
        assert_eq!(dest, Destination::Addr("192.0.2.1:80".parse().unwrap()));
        assert_eq!(rest, b"hello");
        let mut h = Handshake::new(SocksAuth::default());
        let mut w = vec![5, 1, 0, 5, 1, 0, 4];
        w.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        w.extend_from_slice(&[0, 22]);
        let Progress::Connect { dest, .. } = h.feed(&w) else {
            panic!()
        };
        assert_eq!(dest, Destination::Addr("[2001:db8::1]:22".parse().unwrap()));
    }

    #[test]
    fn username_password() {
        let auth = SocksAuth {
            credentials: Some((b"u".to_vec(), b"pw".to_vec())),
        };
        let mut h = Handshake::new(auth.clone());
        let mut w = vec![5, 1, 2, 1, 1, b'u', 2, b'p', b'w'];
        w.extend(connect_name("a.test", 80));
        let Progress::Connect { reply, .. } = h.feed(&w) else {
            panic!()
        };
        assert_eq!(reply, vec![5, 2, 1, 0]);
        // Wrong password: RFC 1929 failure, then close.
        let mut h = Handshake::new(auth.clone());
        let Progress::Refuse(r) = h.feed(&[5, 1, 2, 1, 1, b'u', 2, b'p', b'x']) else {
            panic!()
        };
        assert_eq!(r.reply, vec![5, 2, 1, 1]);
        // A client that offers only "no authentication" gets 0xFF.
        let mut h = Handshake::new(auth);
        let Progress::Refuse(r) = h.feed(&[5, 1, 0]) else {
            panic!()
        };
        assert_eq!(r.reply, vec![5, 0xFF]);
    }

    #[test]
    fn refusals_carry_the_right_codes() {
        let refuse_code = |w: &[u8]| match Handshake::new(SocksAuth::default()).feed(w) {
            Progress::Refuse(r) => r.reply,
            p => panic!("{p:?}"),
        };
        // The method reply (5 0), then the request's reply (5 REP 0 1 …).
        // BIND and UDP ASSOCIATE: command not supported.
        assert_eq!(
            refuse_code(&[5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80])[2..4],
            [5, 7]
        );
        assert_eq!(
            refuse_code(&[5, 1, 0, 5, 3, 0, 1, 1, 2, 3, 4, 0, 80])[2..4],
            [5, 7]
        );
        // Unknown address type.
        assert_eq!(
            refuse_code(&[5, 1, 0, 5, 1, 0, 9, 1, 2, 3, 4, 0, 80])[2..4],
            [5, 8]
        );
        // A "name" that is no host name: host unreachable, nothing sent to the relay.
        let mut w = vec![5, 1, 0, 5, 1, 0, 3, 3, b'a', b' ', b'b', 0, 80];
        assert_eq!(refuse_code(&w)[2..4], [5, 4]);
        w[8] = 0xFF;
        assert_eq!(refuse_code(&w)[2..4], [5, 4]);
        // Wrong version: closed without a reply.
        assert_eq!(refuse_code(&[4, 1, 0, 80, 1, 2, 3, 4, 0]), Vec::<u8>::new());
        assert_eq!(refuse_code(b"GET / HTTP/1.1\r\n"), Vec::<u8>::new());
    }

    #[test]
    fn truncated_input_waits_and_endless_input_ends() {
        let mut h = Handshake::new(SocksAuth::default());
        assert_eq!(h.feed(&[5, 3, 0]), Progress::More { reply: vec![] });
        let mut h = Handshake::new(SocksAuth::default());
        assert_eq!(h.feed(&[5, 1, 0]), Progress::More { reply: vec![5, 0] });
        assert_eq!(h.feed(&[5, 1, 0, 3, 200]), Progress::More { reply: vec![] });
        let p = h.feed(&[b'a'; 2000]);
        assert!(
            matches!(p, Progress::Refuse(_) | Progress::Connect { .. }),
            "{p:?}"
        );
        assert!(matches!(h.feed(b"x"), Progress::Refuse(_)));
    }

    #[test]
    fn client_handshake_against_our_server() {
        for creds in [None, Some((b"user".to_vec(), b"pw".to_vec()))] {
            let auth = SocksAuth {
                credentials: creds.clone(),
            };
            let mut server = Handshake::new(auth);
            let target = Destination::Name("relay.example".into(), 7000);
            let (mut client, mut to_server) = ClientHandshake::start(target.clone(), creds);
            let mut connected = false;
            for _ in 0..4 {
                match server.feed(&to_server) {
                    Progress::More { reply } => match client.feed(&reply).unwrap() {
                        ClientProgress::More(out) => to_server = out,
                        ClientProgress::Done { .. } => panic!("done before the CONNECT"),
                    },
                    Progress::Connect { reply, dest, .. } => {
                        assert_eq!(dest, target);
                        let mut r = reply;
                        r.extend(connect_reply(Ok(())));
                        r.extend_from_slice(b"tunnel");
                        // Fed in one piece: the proxy's bytes end where the tunnel's begin.
                        let ClientProgress::Done { consumed } = client.feed(&r).unwrap() else {
                            panic!("not done")
                        };
                        assert_eq!(&r[consumed..], b"tunnel");
                        connected = true;
                        break;
                    }
                    Progress::Refuse(r) => panic!("{r:?}"),
                }
            }
            assert!(connected);
        }
    }

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

    #[test]
    fn connect_replies() {
        assert_eq!(connect_reply(Ok(())), vec![5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(connect_reply(Err(OpenError::Refused))[1], 5);
        assert_eq!(connect_reply(Err(OpenError::Forbidden))[1], 2);
        assert_eq!(connect_reply(Err(OpenError::NameNotFound))[1], 4);
        assert_eq!(connect_reply(Err(OpenError::NetUnreachable))[1], 3);
    }
}
