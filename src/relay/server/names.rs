//! Names the relay resolves for clients' streams: a few threads run the blocking
//! `getaddrinfo`, and the loop takes their answers (checked against the exit policy).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};
use mio::{Token, Waker};

use super::Loop;
use super::dial::per_key;
use super::quota::Pending;
use crate::proto::OpenError;
use crate::relay::metrics::{Limit, Metrics};

const RESOLVER_THREADS: usize = 4;

/// Where a loop takes its answers: the channel, and the waker that makes it look.
pub(super) struct Answers {
    tx: Sender<Resolved>,
    waker: Arc<Waker>,
}

impl Answers {
    /// A loop's answer channel, woken through `waker`; the receiver is the loop's.
    pub(super) fn new(waker: Arc<Waker>) -> (Arc<Answers>, Receiver<Resolved>) {
        let (tx, rx) = crossbeam::channel::unbounded();
        (Arc::new(Answers { tx, waker }), rx)
    }
}

/// A name to resolve for stream `stream` of connection `conn`, and where to answer.
pub(super) struct Query {
    pub(super) answers: Arc<Answers>,
    pub(super) conn: Token,
    pub(super) stream: u32,
    pub(super) host: String,
    pub(super) port: u16,
}

/// A resolver thread's answer.
pub(super) struct Resolved {
    conn: Token,
    stream: u32,
    port: u16,
    addrs: io::Result<Vec<SocketAddr>>,
    /// How long `getaddrinfo` took.
    took: Duration,
}

/// Start the resolver threads every loop shares; each answer goes to the asking loop's
/// channel and wakes it. They end when every sender of queries is gone.
pub(super) fn spawn_resolvers(metrics: Arc<Metrics>) -> io::Result<Sender<Query>> {
    let (resolve_tx, resolve_rx) = crossbeam::channel::unbounded::<Query>();
    // getaddrinfo blocks; a few threads keep slow names from stalling the event loops.
    for i in 0..RESOLVER_THREADS {
        let rx = resolve_rx.clone();
        let metrics = metrics.clone();
        std::thread::Builder::new()
            .name(format!("qnet-resolve-{i}"))
            .spawn(move || {
                for q in rx {
                    let asked = Instant::now();
                    let addrs = (q.host.as_str(), q.port)
                        .to_socket_addrs()
                        .map(|a| a.collect());
                    let answer = Resolved {
                        conn: q.conn,
                        stream: q.stream,
                        port: q.port,
                        addrs,
                        took: asked.elapsed(),
                    };
                    // Here, not in the loop: the histogram takes a lock.
                    metrics.lookup_took(answer.took);
                    // A loop that has ended no longer reads its answers.
                    if q.answers.tx.send(answer).is_ok() {
                        let _ = q.answers.waker.wake();
                    }
                }
            })?;
    }
    Ok(resolve_tx)
}

impl Loop {
    /// Dial the allowed addresses a name resolved to, or refuse the stream.
    pub(super) fn on_resolved(&mut self, now: Instant, r: Resolved) {
        self.m.lookup(r.addrs.as_ref().is_ok_and(|a| !a.is_empty()));
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
            self.m.limit(Limit::DialsPerKey);
            (vec![], OpenError::TooManyStreams)
        } else {
            (allowed, failure)
        };
        if allowed.is_empty() && failure == OpenError::Forbidden {
            self.m.exit_refused();
        }
        if allowed.is_empty() {
            conn.answer(&self.m, now, r.stream, Err(failure));
            conn.ups.remove(&r.stream);
        } else {
            self.start_connect(now, r.conn, r.stream, allowed, OpenError::Failure);
        }
        self.service(now, r.conn);
    }
}
