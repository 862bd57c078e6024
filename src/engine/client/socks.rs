//! `qnet socks`: SOCKS5 clients on local listeners, each CONNECT a stream to its
//! destination (resolved by the relay).

use std::io::{self, ErrorKind, Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{Client, Pending};
use crate::engine::pump::Sock;
use crate::qlog;
use crate::socks::{Handshake, Progress, SocksAuth, connect_reply};

/// A SOCKS client in its handshake.
pub(super) struct Handshaking {
    sock: TcpStream,
    hs: Handshake,
    started: Instant,
}

/// How long a SOCKS client may take to send its request.
const SOCKS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// Serve SOCKS5 on `listen` (`qnet socks`): each CONNECT becomes a stream to its
    /// destination, resolved by the relay; returns the bound address.
    pub fn socks(&mut self, listen: SocketAddr, auth: SocksAuth) -> io::Result<SocketAddr> {
        let (listener, addr, t) = self.listen(listen)?;
        self.socks_listeners.insert(t, (listener, auth));
        Ok(addr)
    }

    /// Accept every client waiting on SOCKS listener `t`.
    pub(super) fn socks_accept(&mut self, t: Token) {
        loop {
            let Some((l, auth)) = self.socks_listeners.get(&t) else {
                return;
            };
            match l.accept() {
                Ok((mut sock, _)) => {
                    // As the relay does: the tunnel already batches into records, and Nagle
                    // against the app's delayed ACKs stalled small writes by ~40 ms.
                    let _ = sock.set_nodelay(true);
                    let hs = Handshake::new(auth.clone());
                    let ht = self.token();
                    if self
                        .poll
                        .registry()
                        .register(&mut sock, ht, Interest::READABLE)
                        .is_ok()
                    {
                        self.handshakes.insert(
                            ht,
                            Handshaking {
                                sock,
                                hs,
                                started: Instant::now(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    qlog!(Error, "accept: {e}");
                    return;
                }
            }
        }
    }

    /// Move the handshake of the SOCKS client on `t` along; a CONNECT queues its stream.
    pub(super) fn socks_read(&mut self, t: Token) {
        let Some(h) = self.handshakes.get_mut(&t) else {
            return;
        };
        loop {
            let n = match h.sock.read(&mut self.buf) {
                Ok(0) => {
                    self.handshakes.remove(&t);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.handshakes.remove(&t);
                    return;
                }
            };
            match h.hs.feed(&self.buf[..n]) {
                Progress::More { reply } => {
                    // Handshake replies are a few bytes on a fresh socket: they fit.
                    if h.sock.write_all(&reply).is_err() {
                        self.handshakes.remove(&t);
                        return;
                    }
                }
                Progress::Refuse(r) => {
                    qlog!(Info, "SOCKS client refused: {}", r.reason);
                    let _ = h.sock.write_all(&r.reply);
                    self.handshakes.remove(&t);
                    return;
                }
                Progress::Connect { reply, dest, rest } => {
                    let mut h = self.handshakes.remove(&t).expect("present");
                    let _ = self.poll.registry().deregister(&mut h.sock);
                    if h.sock.write_all(&reply).is_err() {
                        return;
                    }
                    self.waiting.push_back(Pending {
                        sock: Sock::Tcp(h.sock),
                        dest,
                        app: None,
                        socks: true,
                        first: rest,
                    });
                    return;
                }
            }
        }
    }

    /// Drop SOCKS clients that took too long to send their request.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        if !self.handshakes.is_empty() {
            self.handshakes
                .retain(|_, h| now.duration_since(h.started) < SOCKS_HANDSHAKE_TIMEOUT);
        }
    }
}

/// Answer a SOCKS client's CONNECT (a few bytes on an idle socket: they fit).
pub(super) fn socks_reply(sock: &mut Sock, result: Result<(), crate::proto::OpenError>) {
    let _ = sock.write_all(&connect_reply(result));
}
