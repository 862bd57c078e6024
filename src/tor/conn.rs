//! A blocking control-port connection: one command at a time, its reply returned and the
//! events that arrive meanwhile queued for [`Conn::event`].

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::TorError;
use super::reply::{Parser, Reply};
use crate::config::TorControl;

/// A byte stream to Tor whose reads can time out.
pub(crate) trait Stream: Read + Write + Send {
    /// Bounds each read (`None`: wait as long as it takes).
    fn read_timeout(&self, d: Option<Duration>) -> io::Result<()>;
}

impl Stream for TcpStream {
    fn read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(d)
    }
}

impl Stream for UnixStream {
    fn read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(d)
    }
}

/// How long a command may wait for its reply (and a connect for its answer).
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// One authenticated-or-not connection to a control port.
pub(crate) struct Conn {
    s: Box<dyn Stream>,
    parser: Parser,
    events: VecDeque<Reply>,
}

impl Conn {
    /// Connects to `control`; under `qnet run`'s jail a TCP port is dialled by its broker.
    pub(crate) fn open(control: &TorControl) -> Result<Conn, TorError> {
        let s: Box<dyn Stream> = match control {
            TorControl::Unix(p) => Box::new(UnixStream::connect(p)?),
            TorControl::Tcp(hp) if crate::jail::active() => {
                let s = TcpStream::from(crate::jail::dial(hp)?);
                // The broker started a non-blocking connect; blocking writes wait for it.
                s.set_nonblocking(false)?;
                s.set_write_timeout(Some(REPLY_TIMEOUT))?;
                Box::new(s)
            }
            TorControl::Tcp(hp) => {
                let addr = hp
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| io::Error::other("no address"))?;
                let s = TcpStream::connect_timeout(&addr, REPLY_TIMEOUT)?;
                s.set_write_timeout(Some(REPLY_TIMEOUT))?;
                Box::new(s)
            }
        };
        Ok(Conn::over(s))
    }

    /// A connection over an already connected stream.
    pub(crate) fn over(s: Box<dyn Stream>) -> Conn {
        Conn {
            s,
            parser: Parser::new(),
            events: VecDeque::new(),
        }
    }

    /// Sends one command line and returns its reply; events read on the way are queued.
    pub(crate) fn command(&mut self, line: &str) -> Result<Reply, TorError> {
        debug_assert!(!line.contains(['\r', '\n']));
        self.s.write_all(format!("{line}\r\n").as_bytes())?;
        self.s.read_timeout(Some(REPLY_TIMEOUT))?;
        loop {
            let r = self.read_one()?;
            if r.is_event() {
                self.events.push_back(r);
            } else {
                return Ok(r);
            }
        }
    }

    /// Like [`Conn::command`], but a reply other than 2xx is an error naming `line`'s verb.
    pub(crate) fn ok(&mut self, line: &str) -> Result<Reply, TorError> {
        let r = self.command(line)?;
        if r.is_ok() {
            return Ok(r);
        }
        let verb = line.split(' ').next().unwrap_or(line).to_owned();
        Err(TorError::Refused {
            verb,
            status: r.status,
            message: r.first().to_owned(),
        })
    }

    /// The next event, waiting up to `wait`; `None` when none came in time.
    pub(crate) fn event(&mut self, wait: Duration) -> Result<Option<Reply>, TorError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        self.s
            .read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match self.read_one() {
            Ok(r) if r.is_event() => Ok(Some(r)),
            Ok(r) => Err(TorError::Unexpected(r.first().to_owned())),
            Err(TorError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads until the parser has one whole reply.
    fn read_one(&mut self) -> Result<Reply, TorError> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(r) = self.parser.next() {
                return Ok(r);
            }
            let n = match self.s.read(&mut buf) {
                Ok(0) => return Err(TorError::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            self.parser.push(&buf[..n])?;
        }
    }
}
