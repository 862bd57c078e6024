//! The watcher: a thread that keeps a control connection, follows bootstrap, CIRC and
//! STREAM events and sends scheduled NEWNYMs. The client loop and the relay ask it
//! [`TorWatch::ready`] (one atomic load while Tor is ready) before they dial through Tor.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::events::{Circ, Event, Stream};
use super::{TorError, conn, control_name};
use crate::config::TorConfig;

/// `percent` before the first answer, or after the connection was lost.
const UNKNOWN: u8 = u8::MAX;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait for events before the stop flag and the NEWNYM schedule are looked at.
const TICK: Duration = Duration::from_millis(500);
/// Open streams kept at most (the oldest id is dropped beyond it).
const MAX_STREAMS: usize = 1024;

#[derive(Default)]
struct Known {
    summary: String,
    error: Option<String>,
    circuits: HashMap<u64, Circ>,
    /// By stream id.
    streams: HashMap<u64, Stream>,
    /// qnet sessions' local addresses whose circuit is told once Tor's stream succeeds.
    expected: Vec<SocketAddr>,
}

struct Shared {
    /// Bootstrap percent, or [`UNKNOWN`].
    percent: AtomicU8,
    known: Mutex<Known>,
    stop: AtomicBool,
    /// A refusal was reported since Tor was last ready ([`TorWatch::gate`]).
    told: AtomicBool,
    /// Bumped at every change of what is known (`qnet status` rewrites on a change).
    changes: AtomicU64,
    name: String,
}

impl Shared {
    fn new(name: String) -> Shared {
        Shared {
            percent: AtomicU8::new(UNKNOWN),
            known: Mutex::new(Known {
                error: Some("no answer yet".into()),
                ..Known::default()
            }),
            stop: AtomicBool::new(false),
            told: AtomicBool::new(false),
            changes: AtomicU64::new(0),
            name,
        }
    }
}

/// A handle on the watcher thread; dropping it stops the thread (within [`TICK`]).
/// The second field is the thread's first-answer signal, taken by [`TorWatch::first_answer`].
pub struct TorWatch(Arc<Shared>, Mutex<Option<mpsc::Receiver<()>>>);

/// One qnet session's (or flow's) Tor stream: what `qnet status` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TorCircuit {
    /// The session's local address towards Tor's SocksPort (Tor's `SOURCE_ADDR`).
    pub local: SocketAddr,
    /// Where Tor connects for it (`host:port`).
    pub target: String,
    /// Tor's circuit id (0 while unattached).
    pub circuit: u64,
    /// The circuit's relays, entry first (`$FINGERPRINT~nickname`).
    pub path: Vec<String>,
    /// The exit relay: the path's last element.
    pub exit: Option<String>,
}

/// What the watcher knows, for `qnet status`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TorStatus {
    /// Bootstrap percent; `None` while the control port gives no answer.
    pub bootstrap_percent: Option<u8>,
    /// Tor's bootstrap summary ("Done").
    pub summary: String,
    /// Why the control port cannot be used, if it cannot.
    pub error: Option<String>,
    /// Open streams that came from a local address, ordered by it.
    pub circuits: Vec<TorCircuit>,
}

impl TorWatch {
    /// Starts the watcher; it does not wait for Tor (the caller may hold locks or run
    /// with the hooks bypassed: a preloaded app's thread). Until its first answer the
    /// gate refuses; [`TorWatch::first_answer`] waits for it. `on_thread` runs first on
    /// the new thread (the preload runtime's bypass flag).
    pub fn start(cfg: TorConfig, on_thread: fn()) -> std::io::Result<TorWatch> {
        let shared = Arc::new(Shared::new(control_name(&cfg.control)));
        let (tx, rx) = mpsc::channel();
        let s = Arc::clone(&shared);
        let builder = std::thread::Builder::new().name("qnet-tor".into());
        crate::os::spawn_signals_blocked(builder, move || {
            on_thread();
            watch(&s, &cfg, tx);
        })?;
        Ok(TorWatch(shared, Mutex::new(Some(rx))))
    }

    /// Wait (once, at most the control port's reply timeout, twice) for the watcher's
    /// first answer, so a connect made right after start is judged on it: on the
    /// thread that will judge it (the client loop's, the relay's main), never on an
    /// app's.
    pub fn first_answer(&self) {
        let rx = self.1.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rx) = rx {
            let _ = rx.recv_timeout(2 * conn::REPLY_TIMEOUT);
        }
    }

    /// `Ok` once Tor has bootstrapped; else the one line that says why not: "Tor not
    /// bootstrapped: N % (summary)" or the control port's failure.
    pub fn ready(&self) -> Result<(), String> {
        let p = self.0.percent.load(Ordering::Acquire);
        if p == 100 {
            return Ok(());
        }
        let k = self.0.known.lock().unwrap_or_else(|e| e.into_inner());
        match (&k.error, p) {
            (Some(e), _) => Err(format!("Tor control port {}: {e}", self.0.name)),
            (None, p) => Err(format!("Tor not bootstrapped: {p} % ({})", k.summary)),
        }
    }

    /// [`TorWatch::ready`], and with a refusal whether it is the first since Tor was
    /// last ready: callers log one line per outage, not one per refused connection.
    pub fn gate(&self) -> Result<(), (String, bool)> {
        match self.ready() {
            Ok(()) => {
                if self.0.told.load(Ordering::Relaxed) {
                    self.0.told.store(false, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(why) => Err((why, !self.0.told.swap(true, Ordering::Relaxed))),
        }
    }

    /// A snapshot for `qnet status` (takes the lock once).
    pub fn status(&self) -> TorStatus {
        let p = self.0.percent.load(Ordering::Acquire);
        let k = self.0.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut circuits: Vec<TorCircuit> = k
            .streams
            .values()
            .filter(|s| !s.ended())
            .filter_map(|s| {
                let path = k.circuits.get(&s.circuit).map(|c| c.path.clone());
                Some(TorCircuit {
                    local: s.source?,
                    target: s.target.clone(),
                    circuit: s.circuit,
                    exit: path.as_ref().and_then(|p| p.last().cloned()),
                    path: path.unwrap_or_default(),
                })
            })
            .collect();
        circuits.sort_by_key(|c| c.local);
        TorStatus {
            bootstrap_percent: (p != UNKNOWN).then_some(p),
            summary: k.summary.clone(),
            error: k.error.clone(),
            circuits,
        }
    }

    /// A count that moves whenever bootstrap, circuits or streams change: one atomic
    /// load, for the status file's change check.
    pub fn changes(&self) -> u64 {
        self.0.changes.load(Ordering::Acquire)
    }

    /// Logs (at info) which circuit and exit carry the session from `local`: now if
    /// Tor's stream from there has succeeded, else when its event comes (the session's
    /// handshake can finish before this thread has read that event).
    pub fn tell_circuit(&self, local: SocketAddr) {
        let mut k = self.0.known.lock().unwrap_or_else(|e| e.into_inner());
        if !tell(&k, local) {
            if k.expected.len() >= MAX_EXPECTED {
                k.expected.remove(0);
            }
            k.expected.push(local);
        }
    }

    /// The circuit of the session whose local address towards Tor is `local`.
    pub fn circuit_of(&self, local: SocketAddr) -> Option<TorCircuit> {
        self.status()
            .circuits
            .into_iter()
            .find(|c| c.local == local)
    }
}

impl Drop for TorWatch {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Release);
    }
}

/// The thread: connect, follow, and on any failure record it and try again later.
fn watch(s: &Shared, cfg: &TorConfig, first: mpsc::Sender<()>) {
    let mut first = Some(first);
    let mut backoff = Duration::from_secs(1);
    let mut said: Option<String> = None;
    while !s.stop.load(Ordering::Acquire) {
        let r = follow(s, cfg, &mut first);
        s.percent.store(UNKNOWN, Ordering::Release);
        let e = match r {
            Ok(()) => return,
            Err(e) => e.to_string(),
        };
        if said.as_ref() != Some(&e) {
            // Info: whoever is refused for it (client, relay) says so at warn, once.
            crate::qlog!(Info, "Tor control port {}: {e}", s.name);
            said = Some(e.clone());
        }
        s.known.lock().unwrap_or_else(|e| e.into_inner()).error = Some(e);
        s.changes.fetch_add(1, Ordering::Release);
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until && !s.stop.load(Ordering::Acquire) {
            std::thread::sleep(TICK.min(until - Instant::now()));
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life; `Ok` only when asked to stop.
fn follow(
    s: &Shared,
    cfg: &TorConfig,
    first: &mut Option<mpsc::Sender<()>>,
) -> Result<(), TorError> {
    let mut c = super::connect(cfg, None)?;
    c.ok("SETEVENTS CIRC STREAM STATUS_CLIENT")?;
    let b = super::bootstrap(&mut c)?;
    let circuits = super::circuits(&mut c)?;
    {
        let mut k = s.known.lock().unwrap_or_else(|e| e.into_inner());
        k.error = None;
        k.summary = b.summary;
        k.circuits = circuits.into_iter().map(|c| (c.id, c)).collect();
        s.percent.store(b.percent, Ordering::Release);
        s.changes.fetch_add(1, Ordering::Release);
    }
    if let Some(tx) = first.take() {
        let _ = tx.send(());
    }
    let mut next_newnym = cfg.newnym_every.map(|d| Instant::now() + d);
    loop {
        if s.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        if let (Some(at), Some(every)) = (next_newnym, cfg.newnym_every) {
            if Instant::now() >= at {
                super::newnym(&mut c)?;
                crate::qlog!(Info, "Tor: NEWNYM sent (every {} s)", every.as_secs());
                next_newnym = Some(at + every);
            }
        }
        while let Some(ev) = c.event(TICK)? {
            let Some(line) = ev.lines.first() else {
                continue;
            };
            crate::qlog!(Trace, "Tor event: {}", line.text);
            if let Some(e) = super::events::parse(&line.text) {
                apply(s, e);
            }
        }
    }
}

/// Sessions waiting for their stream's event, at most.
const MAX_EXPECTED: usize = 64;

/// Logs the circuit of the succeeded stream from `local`; false when there is none yet.
fn tell(k: &Known, local: SocketAddr) -> bool {
    let Some(s) = k
        .streams
        .values()
        .find(|s| s.source == Some(local) && s.status == "SUCCEEDED")
    else {
        return false;
    };
    let exit = k.circuits.get(&s.circuit).and_then(|c| c.path.last());
    crate::qlog!(
        Info,
        "session from {local} via Tor circuit {} exit {}",
        s.circuit,
        exit.map_or("?", String::as_str)
    );
    true
}

/// Folds one event into what the watcher knows.
fn apply(s: &Shared, e: Event) {
    s.changes.fetch_add(1, Ordering::Release);
    let mut k = s.known.lock().unwrap_or_else(|e| e.into_inner());
    match e {
        Event::Bootstrap(b) => {
            k.summary = b.summary;
            s.percent.store(b.percent, Ordering::Release);
        }
        Event::Circ(c) if c.ended() => {
            k.circuits.remove(&c.id);
        }
        Event::Circ(mut c) => {
            // LAUNCHED and other early events have no path yet; keep what was known.
            if let (true, Some(old)) = (c.path.is_empty(), k.circuits.get(&c.id)) {
                c.path = old.path.clone();
            }
            k.circuits.insert(c.id, c);
        }
        Event::Stream(mut st) => {
            if let Some(old) = k.streams.get(&st.id) {
                st.source = st.source.or(old.source);
                st.username = st.username.clone().or(old.username.clone());
            }
            let source = st.source;
            if st.ended() {
                k.streams.remove(&st.id);
            } else {
                k.streams.insert(st.id, st);
            }
            if let Some(i) = source.and_then(|a| k.expected.iter().position(|&e| e == a)) {
                if tell(&k, k.expected[i]) || !k.streams.values().any(|s| s.source == source) {
                    k.expected.remove(i);
                }
            }
            if k.streams.len() > MAX_STREAMS {
                let oldest = k.streams.keys().min().copied();
                if let Some(o) = oldest {
                    k.streams.remove(&o);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(w: &TorWatch, lines: &[&str]) {
        for l in lines {
            apply(&w.0, super::super::events::parse(l).expect(l));
        }
    }

    #[test]
    fn ready_only_at_100_and_one_refusal_told_per_outage() {
        let w = TorWatch(
            Arc::new(Shared::new("127.0.0.1:9051".into())),
            Mutex::new(None),
        );
        let e = w.ready().unwrap_err();
        assert_eq!(e, "Tor control port 127.0.0.1:9051: no answer yet");
        w.0.known.lock().unwrap().error = None;
        feed(
            &w,
            &[r#"STATUS_CLIENT NOTICE BOOTSTRAP PROGRESS=45 TAG=x SUMMARY="Asking""#],
        );
        assert_eq!(
            w.gate(),
            Err(("Tor not bootstrapped: 45 % (Asking)".into(), true))
        );
        assert_eq!(
            w.gate(),
            Err(("Tor not bootstrapped: 45 % (Asking)".into(), false))
        );
        feed(
            &w,
            &[r#"STATUS_CLIENT NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done""#],
        );
        assert_eq!(w.gate(), Ok(()));
        assert_eq!(w.status().bootstrap_percent, Some(100));
        // Lost again: told again.
        w.0.percent.store(UNKNOWN, Ordering::Release);
        w.0.known.lock().unwrap().error = Some("Tor closed the control connection".into());
        assert!(w.gate().unwrap_err().1);
        assert_eq!(w.status().bootstrap_percent, None);
    }

    #[test]
    fn streams_map_to_circuits_by_source_address() {
        let w = TorWatch(Arc::new(Shared::new("c".into())), Mutex::new(None));
        feed(
            &w,
            &[
                "CIRC 5 LAUNCHED PURPOSE=GENERAL",
                "CIRC 5 EXTENDED $A~a PURPOSE=GENERAL",
                "CIRC 5 BUILT $A~a,$B~b,$C~c PURPOSE=GENERAL",
                "STREAM 9 NEW 0 10.99.0.1:7700 SOURCE_ADDR=127.0.0.1:40000 PURPOSE=USER",
                "STREAM 9 SENTCONNECT 5 10.99.0.1:7700",
                "STREAM 9 SUCCEEDED 5 10.99.0.1:7700",
                "STREAM 10 NEW 0 x:1 SOURCE_ADDR=127.0.0.1:40001",
            ],
        );
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let c = w.circuit_of(local).unwrap();
        assert_eq!((c.circuit, c.exit.as_deref()), (5, Some("$C~c")));
        assert_eq!(c.path.len(), 3);
        assert_eq!(w.status().circuits.len(), 2);
        // A session told before its stream's event is remembered until it comes.
        let other: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        w.tell_circuit(other);
        assert_eq!(w.0.known.lock().unwrap().expected, vec![other]);
        feed(&w, &["STREAM 10 SUCCEEDED 5 x:1"]);
        assert!(w.0.known.lock().unwrap().expected.is_empty());
        // Closed streams and circuits are forgotten.
        feed(
            &w,
            &[
                "STREAM 9 CLOSED 5 10.99.0.1:7700 REASON=DONE",
                "CIRC 5 CLOSED",
            ],
        );
        assert_eq!(w.circuit_of(local), None);
        assert_eq!(w.circuit_of(other).unwrap().exit, None);
    }
}
