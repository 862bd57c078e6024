//! `qnet forward` (like `ssh -L`): every connection accepted on a local listener becomes
//! a stream to one fixed destination.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;

use mio::net::TcpListener;
use mio::{Interest, Token};

use super::{Client, Pending};
use crate::engine::pump::Sock;
use crate::proto::Destination;
use crate::qlog;

/// A forwarding listener and where its connections go.
pub(super) struct Forward {
    listener: TcpListener,
    dest: Destination,
}

impl Client {
    /// Carry every connection accepted on `listen` to `dest`; returns the bound address.
    pub fn forward(&mut self, listen: SocketAddr, dest: Destination) -> io::Result<SocketAddr> {
        let (listener, addr, t) = self.listen(listen)?;
        self.forwards.insert(t, Forward { listener, dest });
        Ok(addr)
    }

    /// Bind and register a listener; returns it, its address and its token.
    pub(super) fn listen(
        &mut self,
        listen: SocketAddr,
    ) -> io::Result<(TcpListener, SocketAddr, Token)> {
        let mut listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let t = self.token();
        self.poll
            .registry()
            .register(&mut listener, t, Interest::READABLE)?;
        Ok((listener, addr, t))
    }

    /// Accept every connection waiting on forwarding listener `t`.
    pub(super) fn accept(&mut self, t: Token) {
        loop {
            let Some(f) = self.forwards.get(&t) else {
                return;
            };
            match f.listener.accept() {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    let dest = f.dest.clone();
                    self.waiting
                        .push_back(Pending::plain(Sock::Tcp(sock), dest, None));
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
}
