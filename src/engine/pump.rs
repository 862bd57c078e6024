//! Moving one stream's bytes between its session and a local socket.

use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::Instant;

use mio::event::Source;
use mio::{Interest, Registry, Token};

use super::READ_CHUNK;
use super::shape::ShapeError;
use crate::proto::{Session, StreamError};

/// Why a pump step ended its stream (the caller resets it).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PumpError {
    /// The local socket failed (an app that went away is not a shaping failure).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The session refused an unshaped write, consume or finish.
    #[error(transparent)]
    Stream(StreamError),
    /// The schedule or the session stopped a shaped flow.
    #[error(transparent)]
    Shape(#[from] ShapeError),
}

impl PumpError {
    /// Whether the schedule or the session stopped a shaped flow, counted as a shaping
    /// failure, rather than the local socket.
    pub(crate) fn is_shaping_failure(&self) -> bool {
        matches!(self, PumpError::Shape(_))
    }
}

/// The local end of a stream: a TCP connection or a unix socket (a socketpair end).
#[derive(Debug)]
pub(crate) enum Sock {
    /// A TCP connection (relay destinations, forwarded clients).
    Tcp(mio::net::TcpStream),
    /// A unix stream socket (the engine's end of an app socketpair).
    Unix(mio::net::UnixStream),
}

impl Sock {
    /// Make the coming close a reset, so the peer reads ECONNRESET once (then EOF, and
    /// EPIPE on writes) rather than a clean end of the stream. TCP: `SO_LINGER` 0, an
    /// RST. A unix socket (an app's socketpair, whose record `app` is) cannot send one,
    /// but the kernel gives its peer ECONNRESET when it is closed with bytes unread in
    /// its receive queue (`unix_release_sock`); only the app's end can put a byte there,
    /// so one is sent through a duplicate of it, taken from a number the fd table lists
    /// for this flow and checked by inode (the app may have closed and reused that
    /// number). No such fd left (the app closed every copy it had here): EOF.
    pub(crate) fn reset_on_close(&self, app: Option<&std::sync::Arc<super::fdtab::FlowCounters>>) {
        match (self, app) {
            (Sock::Tcp(s), _) => super::sys::reset_on_close(std::os::fd::AsRawFd::as_raw_fd(s)),
            (Sock::Unix(_), Some(c)) if c.app_end != 0 => {
                for fd in super::fdtab::fds_of(c) {
                    let Ok(copy) = super::sys::dup(fd) else {
                        continue;
                    };
                    let copy = std::os::fd::AsRawFd::as_raw_fd(&copy);
                    if super::sys::socket_inode(copy) == c.app_end {
                        super::sys::send_one_byte(copy);
                        return;
                    }
                }
            }
            (Sock::Unix(_), _) => {}
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.shutdown(Shutdown::Write),
            Sock::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }

    /// Register with both interests.
    pub(crate) fn register(&mut self, r: &Registry, t: Token) -> io::Result<()> {
        let i = Interest::READABLE | Interest::WRITABLE;
        match self {
            Sock::Tcp(s) => s.register(r, t, i),
            Sock::Unix(s) => s.register(r, t, i),
        }
    }

    /// Its fd number.
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Sock::Tcp(s) => std::os::fd::AsRawFd::as_raw_fd(s),
            Sock::Unix(s) => std::os::fd::AsRawFd::as_raw_fd(s),
        }
    }

    /// Move to a new fd number, unregistered (an app's `dup2` onto the old one, see
    /// `sys::renumber`); returns the old number.
    pub(crate) fn renumber(&mut self) -> io::Result<std::os::fd::RawFd> {
        match self {
            Sock::Tcp(s) => super::sys::renumber(s),
            Sock::Unix(s) => super::sys::renumber(s),
        }
    }

    /// Remove from the poller.
    pub(crate) fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.deregister(r),
            Sock::Unix(s) => s.deregister(r),
        }
    }

    /// Pending socket error (non-blocking connect outcome).
    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Sock::Tcp(s) => s.take_error(),
            Sock::Unix(s) => s.take_error(),
        }
    }
}

impl Read for Sock {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(b),
            Sock::Unix(s) => s.read(b),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(b),
            Sock::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A stream's local socket and what is known about it.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The socket.
    pub(crate) sock: Sock,
    /// Its token.
    pub(crate) token: Token,
    /// The stream it carries.
    pub(crate) stream: u32,
    /// A readiness event said readable and no read has hit `WouldBlock` since.
    pub(crate) readable: bool,
    /// Likewise for writing.
    pub(crate) writable: bool,
    /// The local side sent EOF and the stream was finished.
    pub(crate) read_eof: bool,
    /// The session's data ended and the local socket was shut down for writing.
    pub(crate) write_shut: bool,
    /// Byte counts for the app (`qnet_flow_stats`), updated as each write happens, before
    /// the end of the stream is passed on, so an app that saw EOF sees every byte counted.
    pub(crate) counters: Option<std::sync::Arc<super::fdtab::FlowCounters>>,
    /// The timing scheduler holding this stream's outgoing bytes (`None`: sent at once).
    pub(crate) shaper: Option<Box<super::shape::Shaper>>,
    /// The local side's EOF is still held by the shaper: finish the stream once it drains.
    fin_pending: bool,
}

/// What a pump step concluded about the stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PumpState {
    /// Still moving bytes.
    Open,
    /// Both directions finished: drop the endpoint.
    Done,
}

impl Endpoint {
    /// A fresh endpoint (no readiness known yet).
    pub(crate) fn new(sock: Sock, token: Token, stream: u32) -> Endpoint {
        Endpoint {
            sock,
            token,
            stream,
            readable: false,
            writable: false,
            read_eof: false,
            write_shut: false,
            counters: None,
            shaper: None,
            fin_pending: false,
        }
    }

    /// Session → local: write buffered stream bytes out, then pass on the end of the stream.
    pub(crate) fn pump_down(
        &mut self,
        now: Instant,
        session: &mut Session,
    ) -> Result<(), PumpError> {
        while self.writable {
            let Some((a, _)) = session.peek(self.stream) else {
                break;
            };
            if a.is_empty() {
                break;
            }
            match self.sock.write(a) {
                Ok(n) => {
                    if let Some(c) = &self.counters {
                        c.bytes_received
                            .fetch_add(n as u64, std::sync::atomic::Ordering::Release);
                    }
                    session
                        .consume(now, self.stream, n)
                        .map_err(PumpError::Stream)?
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !self.write_shut && session.is_read_finished(self.stream) {
            if let Some((a, _)) = session.peek(self.stream) {
                if !a.is_empty() {
                    return Ok(());
                }
            }
            self.write_shut = true;
            // Mark the end as seen so the session can forget the stream once both sides are done.
            let _ = session.read(now, self.stream, &mut [0u8; 1]);
            // The peer may already have closed its reading side; that is not an error here.
            let _ = self.sock.shutdown_write();
        }
        Ok(())
    }

    /// Local → session: read what the socket has, as far as credit and `room` allow.
    pub(crate) fn pump_up(
        &mut self,
        now: Instant,
        session: &mut Session,
        room: bool,
        buf: &mut [u8],
    ) -> Result<(), PumpError> {
        if self.shaper.is_some() {
            return self.pump_up_shaped(now, session, room, buf);
        }
        if !room {
            return Ok(());
        }
        while self.readable && !self.read_eof {
            let cap = session
                .stream_send_capacity(self.stream)
                .min(buf.len())
                .min(READ_CHUNK);
            if cap == 0 {
                session.want_writable(self.stream);
                break;
            }
            match self.sock.read(&mut buf[..cap]) {
                Ok(0) => {
                    self.read_eof = true;
                    match session.finish(now, self.stream) {
                        Ok(()) | Err(StreamError::UnknownStream) | Err(StreamError::Finished) => {}
                        Err(e) => return Err(PumpError::Stream(e)),
                    }
                }
                Ok(n) => {
                    let took = session
                        .write(now, self.stream, &buf[..n])
                        .map_err(PumpError::Stream)?;
                    debug_assert_eq!(took, n, "read no more than the credit");
                    if let Some(c) = &self.counters {
                        c.bytes_sent
                            .fetch_add(took as u64, std::sync::atomic::Ordering::Release);
                    }
                    if session.transmit().len() >= super::HIGH_WATER {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Local → shaper → session: read what the shaper has room for, then send whatever
    /// its schedule says is due. The schedule and the stream's credit bound what one flow
    /// adds to the session's output, so the link's high-water mark (`room`) is consulted
    /// only while a drain has lifted the schedule: then it stops the reading, as for an
    /// unshaped flow, and the held bytes still leave.
    fn pump_up_shaped(
        &mut self,
        now: Instant,
        session: &mut Session,
        mut room: bool,
        buf: &mut [u8],
    ) -> Result<(), PumpError> {
        let Some(sh) = self.shaper.as_mut() else {
            return Ok(());
        };
        // Read, send what is due, and read again while that made room: mio is
        // edge-triggered, so bytes left in the socket when the shaper was full would
        // otherwise wait for an unrelated wakeup.
        loop {
            while self.readable && !self.read_eof && (room || !sh.unbounded()) {
                let cap = sh.room().min(buf.len()).min(READ_CHUNK);
                if cap == 0 {
                    break;
                }
                match self.sock.read(&mut buf[..cap]) {
                    Ok(0) => {
                        self.read_eof = true;
                        self.fin_pending = true;
                        sh.close(now);
                    }
                    Ok(n) => sh.push(now, &buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => self.readable = false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let sent = sh.drain(now, session, self.stream)?;
            if let Some(c) = &self.counters {
                c.bytes_sent
                    .fetch_add(sent as u64, std::sync::atomic::Ordering::Release);
            }
            room = room && session.transmit().len() < super::HIGH_WATER;
            if sent == 0 || !self.readable || self.read_eof || sh.room() == 0 {
                break;
            }
        }
        if self.fin_pending && sh.queued() == 0 {
            // The data is out; padding cells may still follow on stream 0.
            self.fin_pending = false;
            match session.finish(now, self.stream) {
                Ok(()) | Err(StreamError::UnknownStream) | Err(StreamError::Finished) => {}
                Err(e) => return Err(PumpError::Stream(e)),
            }
        }
        Ok(())
    }

    /// Both directions have ended (and a shaper's padding tail is done).
    pub(crate) fn state(&self) -> PumpState {
        let shaper_done = self.shaper.as_ref().is_none_or(|s| s.is_finished());
        if self.read_eof && self.write_shut && !self.fin_pending && shaper_done {
            PumpState::Done
        } else {
            PumpState::Open
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    use super::Sock;
    use crate::engine::fdtab::{self, FdInfo, FlowCounters};
    use crate::engine::sys;

    /// An app socketpair as `connect` makes it: the app's end recorded in the fd table.
    fn app_pair() -> (UnixStream, Sock, Arc<FlowCounters>) {
        let (app, engine) = sys::socketpair().unwrap();
        let counters = Arc::new(FlowCounters {
            app_end: sys::socket_inode(app.as_raw_fd()),
            ..Default::default()
        });
        fdtab::add_tunneled(
            app.as_raw_fd(),
            FdInfo {
                counters: counters.clone(),
                ..FdInfo::for_test()
            },
        );
        let engine = UnixStream::from(engine);
        // As the engine's own sockets: a read with nothing to read says WouldBlock.
        engine.set_nonblocking(true).unwrap();
        let engine = mio::net::UnixStream::from_std(engine);
        (UnixStream::from(app), Sock::Unix(engine), counters)
    }

    #[test]
    fn relay_death_reads_as_reset_not_eof_on_an_app_socketpair() {
        let (mut app, engine, counters) = app_pair();
        engine.reset_on_close(Some(&counters));
        drop(engine);
        let mut buf = [0u8; 8];
        let r = app.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "first read: {r:?}"
        );
        assert_eq!(
            app.read(&mut buf).unwrap(),
            0,
            "then EOF, as TCP after an RST"
        );
        assert!(app.write(b"x").is_err(), "and writes fail");
        fdtab::forget(app.as_raw_fd());
    }

    /// Found in review: once a high-security flow drains (its schedule lifted), it read its
    /// socket past the link's high-water mark, which the schedule alone had bounded.
    #[test]
    fn a_draining_flow_stops_reading_while_the_link_is_full() {
        use crate::engine::shape::Shaper;
        use crate::proto::Destination;
        use crate::proto::sim::Pair;
        use crate::sched::{Direction, Profile};
        use std::time::Duration;

        let mut p = Pair::new(21);
        p.connect();
        let dest = Destination::Addr("192.0.2.1:80".parse().unwrap());
        let (id, _) = p
            .client
            .open(p.now, dest, Profile::HighSecurity.wire(), &[])
            .unwrap();
        p.drive();
        p.server.open_result(p.now, id, Ok(())).unwrap();
        p.drive();
        let (mut app, sock, _) = app_pair();
        let mut ep = super::Endpoint::new(sock, mio::Token(1), id);
        let sh = Shaper::new(Profile::HighSecurity, Direction::Up, p.now).unwrap();
        ep.shaper = sh.map(Box::new);
        let mut buf = vec![0u8; 64 * 1024];
        let mut pump = |ep: &mut super::Endpoint, p: &mut Pair, room: bool| {
            ep.readable = true;
            ep.pump_up(p.now, &mut p.client, room, &mut buf).unwrap();
        };
        app.write_all(&[7u8; 32 * 1024]).unwrap();
        pump(&mut ep, &mut p, true);
        // The cap: 2 s later the held bytes start a drain and leave.
        p.advance(Duration::from_millis(2100));
        pump(&mut ep, &mut p, true);
        let sh = ep.shaper.as_ref().unwrap();
        assert!(sh.unbounded() && sh.queued() == 0, "{sh:?}");
        // With the link full, new bytes stay in the socket...
        app.write_all(&[8u8; 16 * 1024]).unwrap();
        pump(&mut ep, &mut p, false);
        assert_eq!(
            ep.shaper.as_ref().unwrap().queued(),
            0,
            "read past the high-water mark"
        );
        assert!(ep.readable, "the socket was not drained");
        // ...and are read, and leave, once it has room.
        let before = p.client.stats().records_sent;
        pump(&mut ep, &mut p, true);
        assert!(!ep.readable, "read to WouldBlock");
        assert!(p.client.stats().records_sent > before);
        fdtab::forget(app.as_raw_fd());
    }

    #[test]
    fn reset_never_writes_to_a_reused_fd_number() {
        // The app closed its end and the number now holds another socket: the reset
        // must not put a byte there, and the flow ends with EOF (nothing to reset).
        let (app, engine, counters) = app_pair();
        let n = app.as_raw_fd();
        let (mut other, mut other_peer) = UnixStream::pair().unwrap();
        let other_fd: OwnedFd = other.try_clone().unwrap().into();
        sys::dup_onto(&other_fd, n, true).unwrap();
        engine.reset_on_close(Some(&counters));
        drop(engine);
        other_peer.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        let r = other_peer.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::WouldBlock),
            "nothing written to the reused number: {r:?}"
        );
        other.write_all(b"ok").unwrap();
        fdtab::forget(n);
        drop(app);
    }
}
