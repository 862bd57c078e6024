//! The server side of a SOCKS5 handshake, sans-IO: bytes in, replies and a decision out.
//! `qnet socks` carries each CONNECT as a stream of the tunnel; BIND and UDP ASSOCIATE are
//! refused with "command not supported".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{
    ATYP_NAME, ATYP_V4, ATYP_V6, AUTH_VERSION, CMD_CONNECT, METHOD_NO_ACCEPTABLE, METHOD_NONE,
    METHOD_USER_PASSWORD, REP_ATYP, REP_CMD, REP_GENERAL, REP_HOST_UNREACH, REP_NET_UNREACH,
    REP_NOT_ALLOWED, REP_REFUSED, REP_SUCCEEDED, REP_TTL, VERSION,
};
use crate::proto::{Destination, OpenError};

/// What the server accepts from clients.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SocksAuth {
    /// `Some((user, password))`: RFC 1929 is required; `None`: no authentication.
    pub credentials: Option<(Vec<u8>, Vec<u8>)>,
}

/// Why the handshake ended without a CONNECT. The connection is closed after `reply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// Bytes to send before closing (may be empty: nothing sensible to answer).
    pub(crate) reply: Vec<u8>,
    /// For logs.
    pub(crate) reason: &'static str,
}

/// Where a handshake stands after some input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Progress {
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
pub(crate) struct Handshake {
    auth: SocksAuth,
    state: State,
    buf: Vec<u8>,
}

/// Longest handshake input kept before giving up (a greeting, an auth, a request).
const MAX_BUF: usize = 1024;

/// A reply with a zero IPv4 bound address: clients of a CONNECT have no use for ours.
fn reply(code: u8) -> Vec<u8> {
    vec![VERSION, code, 0, ATYP_V4, 0, 0, 0, 0, 0, 0]
}

fn refuse(reply: Vec<u8>, reason: &'static str) -> Progress {
    Progress::Refuse(Refusal { reply, reason })
}

/// The answer to a CONNECT once the relay has answered OPEN.
pub(crate) fn connect_reply(result: Result<(), OpenError>) -> Vec<u8> {
    reply(match result {
        Ok(()) => REP_SUCCEEDED,
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
    pub(crate) fn new(auth: SocksAuth) -> Handshake {
        Handshake {
            auth,
            state: State::Greeting,
            buf: Vec::new(),
        }
    }

    /// Feed bytes from the client.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Progress {
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
        if b[0] != VERSION {
            // Not SOCKS5 (SOCKS4, HTTP, garbage): nothing a client of ours would understand.
            return Step::End(refuse(vec![], "not SOCKS version 5"));
        }
        if b.len() < 2 || b.len() < 2 + b[1] as usize {
            return Step::Wait;
        }
        let methods = &b[2..2 + b[1] as usize];
        let want = if self.auth.credentials.is_some() {
            METHOD_USER_PASSWORD
        } else {
            METHOD_NONE
        };
        let n = 2 + b[1] as usize;
        if !methods.contains(&want) {
            return Step::End(refuse(
                vec![VERSION, METHOD_NO_ACCEPTABLE],
                "no acceptable authentication method",
            ));
        }
        out.extend_from_slice(&[VERSION, want]);
        self.buf.drain(..n);
        self.state = if want == METHOD_USER_PASSWORD {
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
        if b[0] != AUTH_VERSION {
            return Step::End(refuse(
                vec![AUTH_VERSION, 1],
                "bad username/password version",
            ));
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
            r.extend_from_slice(&[AUTH_VERSION, 1]);
            return Step::End(refuse(r, "wrong username or password"));
        }
        out.extend_from_slice(&[AUTH_VERSION, 0]);
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
        if b[0] != VERSION || b[2] != 0 {
            return Step::End(refuse(vec![], "malformed request"));
        }
        let (addr, at) = match b[3] {
            ATYP_V4 => {
                if b.len() < 4 + 4 + 2 {
                    return Step::Wait;
                }
                let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
                (Some(IpAddr::V4(ip)), 8)
            }
            ATYP_V6 => {
                if b.len() < 4 + 16 + 2 {
                    return Step::Wait;
                }
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[4..20]);
                (Some(IpAddr::V6(Ipv6Addr::from(o))), 20)
            }
            ATYP_NAME => {
                if b.len() < 5 || b.len() < 5 + b[4] as usize + 2 {
                    return Step::Wait;
                }
                (None, 5 + b[4] as usize)
            }
            _ => return fail(REP_ATYP, "address type not supported"),
        };
        let port = u16::from_be_bytes([b[at], b[at + 1]]);
        if b[1] != CMD_CONNECT {
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
    fn connect_replies() {
        assert_eq!(connect_reply(Ok(())), vec![5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(connect_reply(Err(OpenError::Refused))[1], 5);
        assert_eq!(connect_reply(Err(OpenError::Forbidden))[1], 2);
        assert_eq!(connect_reply(Err(OpenError::NameNotFound))[1], 4);
        assert_eq!(connect_reply(Err(OpenError::NetUnreachable))[1], 3);
    }
}
