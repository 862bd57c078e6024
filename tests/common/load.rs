//! Load against a real qnet-relay: many client sessions (the sans-IO `Session`, Role::Client)
//! over non-blocking sockets in one mio loop, a loopback echo server for their streams, and
//! the soak that takes a relay through idle sessions, idle streams and back to nothing while
//! sampling its RSS and fds. Shared by tests/soak.rs and tests/relay_scale.rs (as
//! `common::load`) and by `examples/load.rs` (through `#[path]`), which scripts/bench runs
//! in release.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use qnet::keys::{PrivateKey, PublicKey, write_private_key};
use qnet::proto::{Destination, Event, OsRandom, Role, Session, SessionConfig};

/// Writes `text` to `path` with mode `mode`, whatever the umask: qnet refuses an
/// allow-list or config file that group or others may write.
pub fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A running relay, killed on drop.
pub struct Relay {
    pub child: Child,
    pub addr: SocketAddr,
    pub public: [u8; 32],
    pub clients: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the relay binary `bin` on 127.0.0.1 (a free port) with a new key, `allowed` as
/// its allow-list, `args` on its command line and `server_toml` as its config's
/// `[server]` table; files go to `dir`.
pub fn spawn_relay(
    bin: &Path,
    dir: &Path,
    allowed: &[[u8; 32]],
    args: &[&str],
    server_toml: &str,
) -> Relay {
    let key = PrivateKey::generate();
    let public = key.public().0;
    let key_path = dir.join("relay.key");
    let _ = std::fs::remove_file(&key_path);
    write_private_key(&key_path, &key).unwrap();
    let clients = dir.join("clients");
    let list: String = allowed
        .iter()
        .map(|k| format!("{}\n", PublicKey(*k).to_base64()))
        .collect();
    write_mode(&clients, &list, 0o644);
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--key"])
        .arg(&key_path)
        .arg("--clients")
        .arg(&clients)
        .env("QNET_CONFIG", dir.join("relay.toml"))
        .stderr(Stdio::piped());
    write_mode(
        &dir.join("relay.toml"),
        &format!("[server]\n{server_toml}"),
        0o644,
    );
    cmd.args(args);
    let mut child = cmd.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("qnet-relay listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    // Keep draining stderr so the relay never blocks on a full pipe.
    thread::spawn(move || for _ in err.lines() {});
    Relay {
        child,
        addr,
        public,
        clients,
    }
}

/// A process's resident set size in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// A process's open fds.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Make room for `want` fds in this process and the children it starts: as root the
/// soft and hard `RLIMIT_NOFILE` are raised to `want` (never lowered); otherwise the
/// soft limit goes to the hard one. Returns the soft limit now in force.
#[allow(unsafe_code)]
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid, owned `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_cur.max(want),
        rlim_max: lim.rlim_max.max(want),
    };
    // SAFETY: setrlimit reads the valid `raised`; it fails (EPERM) without privilege and
    // then changes nothing.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return raised.rlim_cur;
    }
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above; raising the soft limit to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
        return soft.rlim_cur;
    }
    lim.rlim_cur
}

/// A one-thread echo server on 127.0.0.1 that reports how many connections it holds open
/// at once. Idle streams make it a holder: it keeps every connection until its peer closes.
/// Its accept backlog is the kernel's most (`somaxconn`, 4096 by default), not mio's 1024:
/// a dial is done for the relay once the kernel queued it, and on a loaded machine this
/// thread may fall behind by more than 1024 (an overflow costs seconds of SYN-ACK retries).
pub fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(65_535).unwrap();
    s.set_nonblocking(true).unwrap();
    let mut l = TcpListener::from_std(s.into());
    let addr = l.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let o = open.clone();
    thread::spawn(move || {
        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(&mut l, Token(0), Interest::READABLE)
            .unwrap();
        let mut conns = HashMap::new();
        let mut next = 1;
        let mut events = Events::with_capacity(1024);
        let mut buf = [0u8; 4096];
        loop {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            for ev in events.iter() {
                if ev.token() == Token(0) {
                    while let Ok((mut s, _)) = l.accept() {
                        poll.registry()
                            .register(&mut s, Token(next), Interest::READABLE)
                            .unwrap();
                        conns.insert(next, s);
                        next += 1;
                    }
                    o.store(conns.len(), Ordering::SeqCst);
                    continue;
                }
                let t = ev.token().0;
                let mut closed = false;
                if let Some(s) = conns.get_mut(&t) {
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => {
                                closed = true;
                                break;
                            }
                            // Small messages: a loopback socket buffer always takes them.
                            Ok(n) => s.write_all(&buf[..n]).unwrap(),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(_) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                }
                if closed {
                    conns.remove(&t);
                    o.store(conns.len(), Ordering::SeqCst);
                }
            }
        }
    });
    (addr, open)
}

/// The `i`th of the soak's source addresses: 127.(1 + i / 254).(1 + i % 254).1, each in
/// a /24 of its own, so the relay's per-network share of its replay cache (a sixteenth)
/// is not what a soak measures.
pub fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (i / 254) as u8,
        1 + (i % 254) as u8,
        1,
    ))
}

/// A non-blocking TCP connect from `src` (any port) to `dst`.
fn connect_from(src: IpAddr, dst: SocketAddr) -> io::Result<TcpStream> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(dst),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    match s.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Handshaking,
    Up,
    Dead,
}

/// One client: its socket and session.
struct Client {
    sock: Option<TcpStream>,
    s: Session,
    state: State,
    /// Handshake given up after this.
    deadline: Instant,
    /// OPENs sent and not answered yet.
    opening: usize,
}

/// What a phase of [`Fleet`] work got done, and how long it took.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub ok: usize,
    pub failed: usize,
    pub secs: f64,
}

impl Outcome {
    /// Successes per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }
}

/// Many client sessions to one relay, driven in one mio loop on this thread.
pub struct Fleet {
    poll: Poll,
    events: Events,
    clients: Vec<Client>,
    buf: Vec<u8>,
    relay: SocketAddr,
    relay_public: [u8; 32],
    /// When the sessions' timers (keepalive PINGs) were last served.
    timers_at: Instant,
    /// Streams opened (answered OK) and refused, over the fleet's life.
    pub streams_ok: usize,
    pub streams_failed: usize,
    /// Sessions the relay ended (or that failed) after their handshake.
    pub lost: usize,
}

impl Fleet {
    pub fn new(relay: SocketAddr, relay_public: [u8; 32]) -> Fleet {
        Fleet {
            poll: Poll::new().unwrap(),
            events: Events::with_capacity(1024),
            clients: Vec::new(),
            buf: vec![0u8; 1 << 16],
            relay,
            relay_public,
            timers_at: Instant::now(),
            streams_ok: 0,
            streams_failed: 0,
            lost: 0,
        }
    }

    /// Sessions up now.
    pub fn up(&self) -> usize {
        self.clients.iter().filter(|c| c.state == State::Up).count()
    }

    /// Start `n` more sessions, client `i` with key `keys[i % keys.len()]` from
    /// `sources[i % sources.len()]`, at most `window` handshakes in flight; wait until each
    /// is up or failed (a handshake gets 10 s; the whole phase stops at `deadline`).
    pub fn connect(
        &mut self,
        n: usize,
        keys: &[PrivateKey],
        sources: &[IpAddr],
        window: usize,
        deadline: Instant,
    ) -> Outcome {
        let t0 = Instant::now();
        let first = self.clients.len();
        let mut started = 0;
        loop {
            let mut pending = self.clients[first..]
                .iter()
                .filter(|c| c.state == State::Handshaking)
                .count();
            while started < n && pending < window {
                let i = first + started;
                started += 1;
                pending += 1;
                self.start(i, &keys[i % keys.len()], sources[i % sources.len()]);
            }
            if started == n && pending == 0 {
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            self.turn(Duration::from_millis(10));
            // Give up handshakes past their own deadline.
            let now = Instant::now();
            for c in &mut self.clients[first..] {
                if c.state == State::Handshaking && now > c.deadline {
                    c.state = State::Dead;
                    c.sock = None;
                }
            }
        }
        // Let the last msg3s reach the relay, which counts a session from there.
        self.flush_all();
        let new = &self.clients[first..];
        let ok = new.iter().filter(|c| c.state == State::Up).count();
        Outcome {
            ok,
            failed: n - ok,
            secs: t0.elapsed().as_secs_f64(),
        }
    }

    fn start(&mut self, i: usize, key: &PrivateKey, src: IpAddr) {
        let now = Instant::now();
        let s = Session::new(
            now,
            SessionConfig::default(),
            Role::Client {
                relay_public: self.relay_public,
            },
            key.as_bytes(),
            Box::new(OsRandom),
        );
        let mut c = Client {
            sock: None,
            s,
            state: State::Dead,
            deadline: now + Duration::from_secs(10),
            opening: 0,
        };
        if let Ok(mut sock) = connect_from(src, self.relay) {
            if self
                .poll
                .registry()
                .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
                .is_ok()
            {
                c.sock = Some(sock);
                c.state = State::Handshaking;
            }
        }
        debug_assert_eq!(self.clients.len(), i);
        self.clients.push(c);
        // msg1 goes out once the connect completes (the first WRITABLE event).
    }

    /// Open `per_session` streams to `dest` on every session that is up, at most `window`
    /// unanswered at once, and wait for every answer (or `deadline`): OPEN to OPENED.
    pub fn open_streams(
        &mut self,
        dest: SocketAddr,
        per_session: usize,
        window: usize,
        deadline: Instant,
    ) -> Outcome {
        let t0 = Instant::now();
        let (ok0, failed0) = (self.streams_ok, self.streams_failed);
        let mut todo: Vec<(usize, usize)> = (0..self.clients.len())
            .filter(|&i| self.clients[i].state == State::Up)
            .map(|i| (i, per_session))
            .collect();
        todo.reverse();
        let wanted = todo.len() * per_session;
        let mut sent = 0;
        loop {
            let answered = self.streams_ok + self.streams_failed - ok0 - failed0;
            let now = Instant::now();
            while sent - answered < window {
                let Some((i, left)) = todo.pop() else { break };
                let c = &mut self.clients[i];
                if c.state == State::Up {
                    if c.s.open(now, Destination::Addr(dest), 0, &[]).is_ok() {
                        c.opening += 1;
                        sent += 1;
                    }
                    if left > 1 {
                        todo.push((i, left - 1));
                    }
                    self.flush(i);
                }
            }
            if answered == sent && todo.is_empty() {
                break;
            }
            if now > deadline {
                break;
            }
            self.turn(Duration::from_millis(10));
        }
        let ok = self.streams_ok - ok0;
        Outcome {
            ok,
            failed: wanted - ok,
            secs: t0.elapsed().as_secs_f64(),
        }
    }

    /// Serve the sessions (input, keepalives) for `d`.
    pub fn hold(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.turn(Duration::from_millis(50));
        }
    }

    /// Close every client socket (the sessions end with them) and forget the clients.
    pub fn close_all(&mut self) {
        self.clients.clear();
    }

    /// One poll: read and hand input to the sessions, take their events, write what they
    /// queued; every half second, the sessions' timers.
    fn turn(&mut self, wait: Duration) {
        let _ = self.poll.poll(&mut self.events, Some(wait));
        let touched: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
        for i in touched {
            self.serve(i);
        }
        let now = Instant::now();
        if now >= self.timers_at + Duration::from_millis(500) {
            self.timers_at = now;
            for i in 0..self.clients.len() {
                let c = &mut self.clients[i];
                if c.state == State::Up && c.s.next_timeout().is_some_and(|t| t <= now) {
                    if c.s.handle_timeout(now).is_err() {
                        self.kill(i);
                    } else {
                        self.flush(i);
                    }
                }
            }
        }
    }

    /// Input on client `i`: read to EAGAIN, then events, then flush.
    fn serve(&mut self, i: usize) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        let Some(sock) = c.sock.as_mut() else {
            return;
        };
        let mut gone = false;
        loop {
            match sock.read(&mut self.buf) {
                Ok(0) => {
                    gone = true;
                    break;
                }
                Ok(n) => {
                    if c.s.handle_input(Instant::now(), &self.buf[..n]).is_err() {
                        gone = true;
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Not connected yet: the WRITABLE event comes when it is.
                Err(e) if e.kind() == ErrorKind::NotConnected => break,
                Err(_) => {
                    gone = true;
                    break;
                }
            }
        }
        if c.state == State::Handshaking && c.s.is_established() {
            c.state = State::Up;
        }
        while let Some(ev) = c.s.poll_event() {
            match ev {
                Event::OpenResult { result, .. } => {
                    c.opening = c.opening.saturating_sub(1);
                    match result {
                        Ok(()) => self.streams_ok += 1,
                        Err(_) => self.streams_failed += 1,
                    }
                }
                Event::Readable { stream } => {
                    let mut b = [0u8; 256];
                    while let Ok(Some(n)) = c.s.read(Instant::now(), stream, &mut b) {
                        if n == 0 {
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
        if gone {
            return self.kill(i);
        }
        self.flush(i);
    }

    /// Write what client `i`'s session queued, up to EAGAIN (the next WRITABLE event
    /// resumes it).
    fn flush(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let Some(sock) = c.sock.as_mut() else {
            return;
        };
        while !c.s.transmit().is_empty() {
            match sock.write(c.s.transmit()) {
                Ok(n) => c.s.transmit_done(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::NotConnected) => {
                    return;
                }
                Err(_) => return self.kill(i),
            }
        }
    }

    fn flush_all(&mut self) {
        for i in 0..self.clients.len() {
            self.flush(i);
        }
    }

    /// Client `i`'s connection ended: its unanswered OPENs count as refused.
    fn kill(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if c.state == State::Up {
            self.lost += 1;
        }
        self.streams_failed += std::mem::take(&mut c.opening);
        c.state = State::Dead;
        c.sock = None;
    }
}

/// What a soak is asked to do.
#[derive(Debug, Clone)]
pub struct SoakParams {
    /// Client sessions.
    pub sessions: usize,
    /// Idle streams each session opens.
    pub streams_per_session: usize,
    /// Sessions per client key (the relay's `sessions_per_key` stays at its default, 32).
    pub sessions_per_key: usize,
    /// Connections per source address (`max_connections_per_addr` stays at 256).
    pub conns_per_addr: usize,
    /// Handshakes in flight at once.
    pub handshake_window: usize,
    /// OPENs unanswered at once: the echo server's accept backlog takes them all.
    pub open_window: usize,
}

impl Default for SoakParams {
    fn default() -> SoakParams {
        SoakParams {
            sessions: 10_000,
            streams_per_session: 1,
            sessions_per_key: 20,
            conns_per_addr: 64,
            handshake_window: 256,
            open_window: 500,
        }
    }
}

/// The relay's VmRSS and fds at one point of a soak.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub rss_kib: u64,
    pub fds: usize,
    /// Since the soak started.
    pub at: f64,
}

/// What a soak measured.
#[derive(Debug, Clone)]
pub struct SoakReport {
    pub params: SoakParams,
    pub sessions: Outcome,
    pub streams: Outcome,
    /// Sessions the relay ended while they should have been held.
    pub lost: usize,
    /// The echo server's open connections with every stream up.
    pub held_at_echo: usize,
    /// Idle after a warm-up; every session up; every stream up too; everything closed.
    pub start: Sample,
    pub with_sessions: Sample,
    pub with_streams: Sample,
    pub closed: Sample,
    /// Seconds from closing the clients until the relay's fds were back at `start`'s
    /// (`None`: not within the deadline).
    pub fds_back_secs: Option<f64>,
}

impl SoakReport {
    /// Relay RSS per idle session (KiB).
    pub fn per_session_kib(&self) -> f64 {
        (self.with_sessions.rss_kib as f64 - self.start.rss_kib as f64)
            / self.sessions.ok.max(1) as f64
    }

    /// Relay RSS per idle stream (KiB), its destination socket's share included.
    pub fn per_stream_kib(&self) -> f64 {
        (self.with_streams.rss_kib as f64 - self.with_sessions.rss_kib as f64)
            / self.streams.ok.max(1) as f64
    }
}

/// The relay config lines a soak of `p` needs beyond the defaults, with why.
pub fn soak_server_toml(p: &SoakParams) -> String {
    format!(
        "# every client connection at once (the default 4096 is a one-person relay's)
max_connections = {}
# 10,000 handshakes arrive within seconds: the default 1000/s would sink most of them.
# Per address (50/s, 256 open) and per key (32 sessions) the defaults stay: the soak
# spreads its clients over {} per address and {} per key.
handshakes_per_sec = 100000
",
        p.sessions + 256,
        p.conns_per_addr,
        p.sessions_per_key,
    )
}

/// Start a relay (`bin`, files in `dir`) and take it through a soak: a warm-up of a few
/// sessions with a stream each, closed; `p.sessions` sessions, held idle; a stream each
/// to a loopback echo server, held idle; every client closed. The relay's RSS and fds are
/// sampled at each stage. `progress` gets one line per stage.
pub fn soak(
    bin: &Path,
    dir: &Path,
    extra_toml: &str,
    p: &SoakParams,
    progress: &mut dyn FnMut(&str),
) -> SoakReport {
    let t0 = Instant::now();
    let keys: Vec<PrivateKey> = (0..p.sessions.div_ceil(p.sessions_per_key).max(1))
        .map(|_| PrivateKey::generate())
        .collect();
    let public: Vec<[u8; 32]> = keys.iter().map(|k| k.public().0).collect();
    let sources: Vec<IpAddr> = (0..p.sessions.div_ceil(p.conns_per_addr).max(1))
        .map(source)
        .collect();
    let relay = spawn_relay(
        bin,
        dir,
        &public,
        &["--exit-allow", "127.0.0.0/8"],
        &format!("{extra_toml}{}", soak_server_toml(p)),
    );
    let pid = relay.child.id();
    progress(&format!(
        "relay config beyond the defaults: max_connections {}, handshakes_per_sec 100000; {} clients per source address, {} sessions per key ({} keys)",
        p.sessions + 256,
        p.conns_per_addr,
        p.sessions_per_key,
        keys.len()
    ));
    let (echo, open_at_echo) = echo_server();
    let sample = || Sample {
        rss_kib: rss_kib(pid),
        fds: fds(pid),
        at: t0.elapsed().as_secs_f64(),
    };
    let fds_idle = fds(pid);
    let wait_fds = |limit: Duration| -> Option<f64> {
        let t = Instant::now();
        while fds(pid) > fds_idle {
            if t.elapsed() > limit {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
        Some(t.elapsed().as_secs_f64())
    };
    let line = |s: &str, x: &Sample| {
        format!(
            "{s}: relay {} KiB, {} fds (at {:.1} s)",
            x.rss_kib, x.fds, x.at
        )
    };

    // Warm-up: the relay's one-time allocations (resolver threads' first work, the
    // replay cache's first entries, the allocator's arenas) are not a leak.
    let mut warm = Fleet::new(relay.addr, relay.public);
    let w = warm.connect(
        8,
        &keys,
        &sources,
        8,
        Instant::now() + Duration::from_secs(20),
    );
    let ws = warm.open_streams(echo, 1, 8, Instant::now() + Duration::from_secs(20));
    warm.hold(Duration::from_millis(200));
    warm.close_all();
    let _ = wait_fds(Duration::from_secs(10));
    thread::sleep(Duration::from_millis(300));
    let start = sample();
    progress(&format!(
        "{} (after a warm-up of {} sessions and {} streams, closed)",
        line("start", &start),
        w.ok,
        ws.ok
    ));

    let mut fleet = Fleet::new(relay.addr, relay.public);
    let sessions = fleet.connect(
        p.sessions,
        &keys,
        &sources,
        p.handshake_window,
        Instant::now() + Duration::from_secs(90),
    );
    fleet.hold(Duration::from_millis(500));
    let with_sessions = sample();
    progress(&format!(
        "{} sessions up, {} failed, in {:.1} s ({:.0}/s); {}",
        sessions.ok,
        sessions.failed,
        sessions.secs,
        sessions.rate(),
        line("idle", &with_sessions)
    ));

    let streams = fleet.open_streams(
        echo,
        p.streams_per_session,
        p.open_window,
        Instant::now() + Duration::from_secs(60),
    );
    // The relay's dial is done once the kernel queued it: the echo server may still be
    // accepting.
    let t = Instant::now();
    while open_at_echo.load(Ordering::SeqCst) < streams.ok && t.elapsed() < Duration::from_secs(20)
    {
        fleet.hold(Duration::from_millis(100));
    }
    let held_at_echo = open_at_echo.load(Ordering::SeqCst);
    fleet.hold(Duration::from_millis(500));
    let with_streams = sample();
    progress(&format!(
        "{} streams opened, {} failed, in {:.1} s ({:.0} OPEN→OPENED/s); {} held at the echo server; {}",
        streams.ok,
        streams.failed,
        streams.secs,
        streams.rate(),
        held_at_echo,
        line("idle", &with_streams)
    ));
    let lost = fleet.lost;

    fleet.close_all();
    let fds_back_secs = wait_fds(Duration::from_secs(30));
    // The relay frees what it can in the rounds after the last close.
    thread::sleep(Duration::from_millis(1500));
    let closed = sample();
    progress(&format!(
        "every client closed: relay fds back to {} in {}; {}",
        fds_idle,
        fds_back_secs.map_or("NOT within 30 s".into(), |s| format!("{s:.1} s")),
        line("closed", &closed)
    ));
    SoakReport {
        params: p.clone(),
        sessions,
        streams,
        lost,
        held_at_echo,
        start,
        with_sessions,
        with_streams,
        closed,
        fds_back_secs,
    }
}
