//! The I/O shell: the only place that owns sockets and reads the clock.
//!
//! Both ends use the same pieces: a `Link` carries one [`Session`] over a TCP
//! connection, and `pump` moves a stream's bytes between the session and a local
//! socket (the app's side on the client, the destination on the relay) with
//! backpressure in both directions. mio is edge-triggered, so every socket remembers
//! whether it may still have bytes (`readable`) until a read says `WouldBlock`.

pub(crate) mod bypass;
pub mod client;
pub(crate) mod fdtab;
pub mod log;
pub(crate) mod preload;
pub(crate) mod pump;
pub(crate) mod resolve;
pub mod rundir;
pub(crate) mod shape;
pub mod status;
mod sys;
pub(crate) mod timers;
pub(crate) mod wheel;

pub use sys::{TimerFd, lower_timer_slack, raise_fd_limit};

use std::io::{self, ErrorKind, Read, Write};
use std::time::Instant;

use crate::proto::{Session, SessionError};

/// Bytes of queued session output above which no more stream data is taken in:
/// the transport is slower than the sources, so they wait in their kernel buffers.
pub const HIGH_WATER: usize = 512 * 1024;

/// Size of the scratch buffer for socket reads.
pub const READ_CHUNK: usize = 64 * 1024;

/// A session carried over a TCP connection.
pub(crate) struct Link {
    /// The transport.
    pub(crate) sock: mio::net::TcpStream,
    /// The protocol state.
    pub(crate) session: Session,
    /// Peer closed the transport.
    pub(crate) eof: bool,
    /// A SOCKS5 upstream still being asked to connect us to the relay.
    pub(crate) proxy: Option<crate::socks::ClientHandshake>,
    /// Bytes for the upstream proxy, sent before anything of the session.
    pub(crate) proxy_out: Vec<u8>,
}

/// What reading the transport did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LinkRead {
    /// Drained until `WouldBlock`.
    Drained,
    /// The session failed; the link must go.
    Failed(SessionError),
    /// The peer closed the connection.
    Eof,
    /// The upstream proxy could not connect us to the relay.
    ProxyFailed(String),
}

impl Link {
    /// Wrap a connected (or connecting) transport.
    pub(crate) fn new(sock: mio::net::TcpStream, session: Session) -> Link {
        Link {
            sock,
            session,
            eof: false,
            proxy: None,
            proxy_out: Vec::new(),
        }
    }

    /// Read everything the kernel has into the session.
    pub(crate) fn read_in(&mut self, now: Instant, buf: &mut [u8]) -> io::Result<LinkRead> {
        loop {
            match self.sock.read(buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(LinkRead::Eof);
                }
                Ok(n) => {
                    let mut data = &buf[..n];
                    if let Some(p) = self.proxy.as_mut() {
                        match p.feed(data) {
                            Ok(crate::socks::ClientProgress::More(out)) => {
                                self.proxy_out.extend(out);
                                continue;
                            }
                            Ok(crate::socks::ClientProgress::Done { consumed }) => {
                                self.proxy = None;
                                data = &data[consumed..];
                            }
                            Err(e) => return Ok(LinkRead::ProxyFailed(e.to_string())),
                        }
                    }
                    if let Err(e) = self.session.handle_input(now, data) {
                        return Ok(LinkRead::Failed(e));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(LinkRead::Drained),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Write as much queued output as the kernel takes; `Ok(true)` when all is out.
    pub(crate) fn flush(&mut self) -> io::Result<bool> {
        while !self.proxy_out.is_empty() {
            match self.sock.write(&self.proxy_out) {
                Ok(n) => {
                    self.proxy_out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.proxy.is_some() {
            // The session's first bytes wait until the proxy has connected us.
            return Ok(true);
        }
        loop {
            let out = self.session.transmit();
            if out.is_empty() {
                return Ok(true);
            }
            match self.sock.write(out) {
                Ok(n) => self.session.transmit_done(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Below the high-water mark: stream data may be taken in.
    pub(crate) fn has_room(&self) -> bool {
        self.session.transmit().len() < HIGH_WATER
    }
}

/// The session tunables a config file sets, as the protocol core takes them.
pub fn session_config(p: &crate::config::SessionParams) -> crate::proto::SessionConfig {
    crate::proto::SessionConfig {
        keepalive: p.keepalive,
        idle_timeout: p.idle_timeout,
        rekey_bytes: p.rekey_bytes,
        rekey_records: p.rekey_records,
        rekey_interval: p.rekey_interval,
        stream_window: p.stream_window,
        session_window: p.session_window,
        ciphers: crate::proto::aead::Cipher::offer(p.offer_aes),
        ..crate::proto::SessionConfig::default()
    }
}
