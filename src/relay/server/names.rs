//! Names the relay resolves for clients' streams: a few threads run the blocking
//! `getaddrinfo`, and the loop takes their answers (checked against the exit policy).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Instant;

use crossbeam::channel::{Receiver, Sender};
use mio::{Token, Waker};

use super::Loop;
use super::dial::per_key;
use super::quota::Pending;
use crate::proto::OpenError;

const RESOLVER_THREADS: usize = 4;

/// A name to resolve for stream `.1` of connection `.0`, and its port.
pub(super) type Query = (Token, u32, String, u16);

/// A resolver thread's answer.
pub(super) struct Resolved {
    conn: Token,
    stream: u32,
    port: u16,
    addrs: io::Result<Vec<SocketAddr>>,
}

/// Start the resolver threads; each answer wakes the loop through `waker`.
pub(super) fn spawn_resolvers(
    waker: Arc<Waker>,
) -> io::Result<(Sender<Query>, Receiver<Resolved>)> {
    let (resolve_tx, resolve_rx) = crossbeam::channel::unbounded::<Query>();
    let (resolved_tx, resolved_rx) = crossbeam::channel::unbounded();
    // getaddrinfo blocks; a few threads keep slow names from stalling the event loop.
    for i in 0..RESOLVER_THREADS {
        let rx = resolve_rx.clone();
        let tx = resolved_tx.clone();
        let waker = waker.clone();
        std::thread::Builder::new()
            .name(format!("qnet-resolve-{i}"))
            .spawn(move || {
                for (conn, stream, host, port) in rx {
                    let addrs = (host.as_str(), port).to_socket_addrs().map(|a| a.collect());
                    if tx
                        .send(Resolved {
                            conn,
                            stream,
                            port,
                            addrs,
                        })
                        .is_err()
                    {
                        break;
                    }
                    let _ = waker.wake();
                }
            })?;
    }
    Ok((resolve_tx, resolved_rx))
}

impl Loop {
    /// Dial the allowed addresses a name resolved to, or refuse the stream.
    pub(super) fn on_resolved(&mut self, now: Instant, r: Resolved) {
        let (allowed, failure) = match r.addrs {
            Ok(addrs) if addrs.is_empty() => (vec![], OpenError::NameNotFound),
            Ok(addrs) => {
                let allowed: Vec<_> = addrs
                    .into_iter()
                    .filter(|a| self.cfg.policy.allows(a.ip(), r.port))
                    .collect();
                (allowed, OpenError::Forbidden)
            }
            Err(_) => (vec![], OpenError::NameNotFound),
        };
        let max_dials = per_key(&self.limits, Pending::Dial);
        let Some(conn) = self.conns.get_mut(&r.conn) else {
            return;
        };
        let Some(up) = conn.ups.get_mut(&r.stream) else {
            return;
        };
        // The name resolved: its lookup becomes a dial, unless the key's dials are at
        // [server] dials_per_key.
        let (allowed, failure) = if !allowed.is_empty() && !up.hold.take(Pending::Dial, max_dials) {
            (vec![], OpenError::TooManyStreams)
        } else {
            (allowed, failure)
        };
        if allowed.is_empty() {
            let _ = conn.link.session.open_result(now, r.stream, Err(failure));
            conn.ups.remove(&r.stream);
        } else {
            self.start_connect(now, r.conn, r.stream, allowed, OpenError::Failure);
        }
        self.service(now, r.conn);
    }
}
