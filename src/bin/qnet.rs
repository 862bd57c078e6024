//! qnet: the tunnel's command line (keys, port forwarding, running programs through it).

use std::error::Error;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qnet::keys::PrivateKey;

/// Where forward, socks and run find their relays (README "Configuration", "Several relays").
const RELAYS: &str = "Relays: the config file (QNET_CONFIG, ~/.config/qnet/qnet.toml, \
                      /etc/qnet/qnet.toml: relay and relay_key, [[relays]], [[routes]]), \
                      then QNET_RELAY and QNET_RELAY_KEY (comma-separated lists of equal \
                      length, in order of preference) and QNET_HOPS (a route of 2 or 3 \
                      relays, entry first: HOST:PORT@KEY,HOST:PORT@KEY). New connections \
                      go to the most preferred healthy relay or route; QNET_LOG=info \
                      logs each one marked down and back.";

/// Command-line tools for qnet, an encrypted TCP tunnel.
#[derive(Debug, Parser)]
#[command(name = "qnet", version, about, after_help = RELAYS)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a new private key, in base64, to standard output.
    Keygen,
    /// Read a private key from standard input and print its public key.
    Pubkey,
    /// Carry every TCP connection accepted on a local address to a destination through the relay (like `ssh -L`).
    Forward {
        /// Local address to listen on (port 0 picks one; printed on stderr).
        #[arg(long)]
        listen: String,
        /// Destination `host:port`, resolved by the relay (IPv6 as `[addr]:port`).
        #[arg(long)]
        to: String,
        /// Config file (default: QNET_CONFIG, ~/.config/qnet/qnet.toml, /etc/qnet/qnet.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Serve SOCKS5 (RFC 1928) locally: every CONNECT becomes a stream through the relay,
    /// which resolves names (use socks5h:// with curl). For browsers, proxychains chains and
    /// static binaries that LD_PRELOAD cannot reach.
    Socks {
        /// Address to listen on, e.g. 127.0.0.1:1080 (port 0 picks one; printed on stderr).
        #[arg(long)]
        listen: String,
        /// Require RFC 1929 username/password with this user; the password is read from
        /// the environment variable QNET_SOCKS_PASSWORD.
        #[arg(long)]
        user: Option<String>,
        /// Config file (default: QNET_CONFIG, ~/.config/qnet/qnet.toml, /etc/qnet/qnet.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write random bytes from qnet's entropy ring (health-tested sources, ChaCha20) to
    /// standard output.
    Entropy {
        /// How many bytes to write.
        #[arg(long)]
        bytes: u64,
        /// An extra source to mix in (a device, file or FIFO); repeatable. A source that
        /// fails its health tests is dropped with a message on stderr.
        #[arg(long = "source", value_name = "PATH")]
        sources: Vec<PathBuf>,
        /// Claimed min-entropy per byte of the --source paths (0 < H <= 8).
        #[arg(long, value_name = "H", default_value_t = qnet::entropy::EntropySource::DEFAULT_MIN_ENTROPY)]
        min_entropy: f64,
        /// Print the ring's counters to stderr at the end.
        #[arg(long)]
        stats: bool,
    },
    /// Say what is wrong before running anything: the config, the key file, the jail and
    /// the seccomp filter here, then for each relay or route: reachable, handshake (key
    /// and allow-list), exit policy, name resolution. One line per check; exit status 0
    /// only if none failed.
    Check {
        /// Config file (default: QNET_CONFIG, ~/.config/qnet/qnet.toml, /etc/qnet/qnet.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Test destination the exit relay's policy is asked about (host:port).
        #[arg(long, value_name = "HOST:PORT", default_value = qnet::check::DEFAULT_TO)]
        to: String,
        /// Host name the exit relay is asked to resolve (default: the --to host, if a name).
        #[arg(long, value_name = "HOST")]
        name: Option<String>,
        /// Seconds allowed for each step (connect, each handshake, the test streams).
        #[arg(long, value_name = "SECS", default_value_t = 3.0)]
        timeout: f64,
        /// The relay's private key file, if at hand (same host): a silent relay then says
        /// whether the configured relay key is wrong.
        #[arg(long, value_name = "FILE")]
        relay_key_file: Option<PathBuf>,
        /// The relay's clients file, if at hand: a silent relay then says whether this
        /// client is on it.
        #[arg(long, value_name = "FILE")]
        clients_file: Option<PathBuf>,
    },
    /// List this user's running qnet processes (preloaded programs, C API programs,
    /// forward, socks): relays and their health, session age, RTT and key epoch, streams,
    /// bytes, shaping and refusals. Read from $XDG_RUNTIME_DIR/qnet/status.<pid>.
    Status {
        /// One JSON document (an array of processes); with --watch, one line per refresh.
        #[arg(long)]
        json: bool,
        /// Refresh like top until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes.
        #[arg(long, value_name = "SECS", default_value_t = 1.0)]
        interval: f64,
        /// With --watch: stop after this many refreshes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Run a program with its TCP connections carried through the tunnel (LD_PRELOAD=libqnet.so),
    /// in a network jail where the kernel allows one: the program's only way out is the relay
    /// and the `intercept.bypass` destinations, which this command dials for it from outside.
    Run {
        /// Config file for the program's library (sets QNET_CONFIG).
        #[arg(long)]
        config: Option<PathBuf>,
        /// prefer: a jail where the kernel allows it (default, or intercept.jail); require:
        /// refuse to start without one; off: the hooks and the seccomp filter alone.
        #[arg(long, value_name = "MODE", value_parser = ["prefer", "require", "off"])]
        jail: Option<String>,
        /// The program and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Talk to Tor's control port (the config's `[tor]` table): `newnym` asks for a new
    /// identity (new circuits for new streams), `status` prints bootstrap and circuits.
    Tor {
        /// newnym or status.
        #[arg(value_parser = ["newnym", "status"])]
        action: String,
        /// Config file (default: QNET_CONFIG, ~/.config/qnet/qnet.toml, /etc/qnet/qnet.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Use this authentication method if Tor offers it (null, password, safecookie,
        /// cookie) instead of the first usable one.
        #[arg(long, value_name = "METHOD")]
        auth: Option<qnet::tor::Method>,
    },
}

type CmdResult = Result<(), Box<dyn Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run {
        config,
        jail,
        command,
    } = cli.command
    {
        return run(config, jail, command);
    }
    if let Command::Check {
        config,
        to,
        name,
        timeout,
        relay_key_file,
        clients_file,
    } = cli.command
    {
        let timeout = match std::time::Duration::try_from_secs_f64(timeout) {
            Ok(t) if (0.01..=600.0).contains(&timeout) => t,
            _ => {
                eprintln!("qnet check: --timeout {timeout}: expected 0.01 to 600 seconds");
                return ExitCode::from(2);
            }
        };
        return check(qnet::check::Options {
            config,
            to,
            name,
            timeout,
            relay_key_file,
            clients_file,
        });
    }
    let (name, result) = match cli.command {
        Command::Keygen => ("keygen", keygen()),
        Command::Pubkey => ("pubkey", pubkey()),
        Command::Forward { listen, to, config } => {
            ("forward", forward(&listen, &to, config.as_deref()))
        }
        Command::Socks {
            listen,
            user,
            config,
        } => ("socks", socks(&listen, user, config.as_deref())),
        Command::Entropy {
            bytes,
            sources,
            min_entropy,
            stats,
        } => ("entropy", entropy(bytes, sources, min_entropy, stats)),
        Command::Status {
            json,
            watch,
            interval,
            count,
        } => ("status", status(json, watch, interval, count)),
        Command::Tor {
            action,
            config,
            auth,
        } => ("tor", tor(&action, config.as_deref(), auth)),
        Command::Run { .. } | Command::Check { .. } => unreachable!("handled above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, so scripts can show it verbatim.
            let msg = e.to_string().replace('\n', " ");
            eprintln!("qnet {name}: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Exit 0 when every check passed, 1 when one failed, 2 when the options are wrong.
fn check(opts: qnet::check::Options) -> ExitCode {
    match qnet::check::run(&opts, &mut io::stdout().lock()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("qnet check: {}", e.to_string().replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

fn tor(action: &str, config: Option<&Path>, auth: Option<qnet::tor::Method>) -> CmdResult {
    let cfg = qnet::config::Config::load_from(config)?;
    let tor = cfg
        .tor
        .ok_or("no [tor] table with a control port in the config")?;
    if action == "newnym" {
        qnet::tor::newnym_once(&tor, auth)?;
        // Tor answers 250 even when it delays the switch (at most one per 10 s).
        writeln!(io::stdout().lock(), "ok")?;
    } else {
        for line in qnet::tor::status_lines(&tor, auth)? {
            writeln!(io::stdout().lock(), "{line}")?;
        }
    }
    Ok(())
}

fn keygen() -> CmdResult {
    let key = PrivateKey::generate();
    writeln!(io::stdout().lock(), "{}", key.to_base64())?;
    Ok(())
}

fn pubkey() -> CmdResult {
    // A key is 44 characters; anything much longer is not one, and need not be read.
    let mut input = Vec::new();
    io::stdin().lock().take(4096).read_to_end(&mut input)?;
    let parsed = std::str::from_utf8(&input)
        .map_err(|_| "standard input is not text".to_owned())
        .and_then(|text| PrivateKey::parse_base64(text).map_err(|e| e.to_string()));
    // The private key passed through this buffer; do not leave it in freed memory.
    input.fill(0);
    std::hint::black_box(&input);
    let key = parsed?;
    writeln!(io::stdout().lock(), "{}", key.public().to_base64())?;
    Ok(())
}

fn forward(listen: &str, to: &str, config: Option<&Path>) -> CmdResult {
    let cfg = qnet::config::Config::load_from(config)?;
    qnet::entropy::configure(&cfg.entropy)?;
    qnet::engine::log::set_level(cfg.log);
    let client = qnet::engine::client::ClientConfig::from_config(&cfg)?;
    let dest = qnet::engine::client::parse_destination(to)?;
    let listen: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e}"))?;
    let mut engine = qnet::engine::client::Client::new(client)?;
    publish_status(&mut engine, qnet::engine::status::Kind::Forward);
    let addr = engine.forward(listen, dest)?;
    eprintln!("qnet forward listening on {addr}, to {to}");
    run_until_signalled(&mut engine, "forward")
}

fn socks(listen: &str, user: Option<String>, config: Option<&Path>) -> CmdResult {
    let cfg = qnet::config::Config::load_from(config)?;
    qnet::entropy::configure(&cfg.entropy)?;
    qnet::engine::log::set_level(cfg.log);
    let client = qnet::engine::client::ClientConfig::from_config(&cfg)?;
    let listen: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e}"))?;
    let auth = match user {
        None => qnet::socks::SocksAuth::default(),
        Some(u) => {
            let p = std::env::var("QNET_SOCKS_PASSWORD")
                .map_err(|_| "--user needs the password in QNET_SOCKS_PASSWORD".to_owned())?;
            if u.len() > 255 || p.len() > 255 || u.is_empty() {
                return Err("user and password must be 1 to 255 bytes".into());
            }
            qnet::socks::SocksAuth {
                credentials: Some((u.into_bytes(), p.into_bytes())),
            }
        }
    };
    let mut engine = qnet::engine::client::Client::new(client)?;
    publish_status(&mut engine, qnet::engine::status::Kind::Socks);
    let addr = engine.socks(listen, auth)?;
    eprintln!("qnet socks listening on {addr}");
    run_until_signalled(&mut engine, "socks")
}

/// Publish the engine's status for `qnet status` (when there is a runtime directory).
fn publish_status(engine: &mut qnet::engine::client::Client, kind: qnet::engine::status::Kind) {
    let dir = qnet::engine::rundir::qnet_dir();
    if let Some(p) = dir.and_then(|d| qnet::engine::status::Publisher::new(&d, kind)) {
        engine.publish_status(p);
    }
}

/// Print the status of this user's qnet processes: once, or every `interval` seconds
/// (at most `count` times) with --watch.
fn status(json: bool, watch: bool, interval: f64, count: Option<u64>) -> CmdResult {
    use qnet::engine::status;
    use std::io::IsTerminal as _;
    if !(interval.is_finite() && interval > 0.0) {
        return Err("--interval must be a positive number of seconds".into());
    }
    let dir = qnet::engine::rundir::qnet_dir();
    let tty = io::stdout().is_terminal();
    let mut frames = 0u64;
    loop {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let list = dir
            .as_deref()
            .map_or(Vec::new(), |d| status::list(d, now_ms));
        let body = match (json, dir.is_some()) {
            (true, _) => status::json(&list, !watch) + "\n",
            (false, true) => status::table(&list),
            (false, false) => "no qnet processes (XDG_RUNTIME_DIR is not set)\n".into(),
        };
        let mut out = io::stdout().lock();
        if watch && !json {
            // Like top: redraw in place on a terminal, one frame after another elsewhere.
            let clear = if tty { "\x1b[H\x1b[2J" } else { "" };
            let secs = now_ms / 1000 % 86400;
            writeln!(
                out,
                "{clear}qnet status at {:02}:{:02}:{:02} UTC, every {interval}s (Ctrl-C to stop)",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            )?;
        }
        out.write_all(body.as_bytes())?;
        out.flush()?;
        drop(out);
        frames += 1;
        if !watch || count.is_some_and(|c| frames >= c) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(interval.min(86_400.0)));
        if !tty && !json {
            writeln!(io::stdout().lock())?;
        }
    }
}

/// Serve until SIGTERM or SIGINT, then say how the shaped departures fared.
fn run_until_signalled(engine: &mut qnet::engine::client::Client, what: &str) -> CmdResult {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| e.to_string())?;
    }
    engine.run(|_| stop.load(std::sync::atomic::Ordering::Relaxed))?;
    if let Some(r) = engine.stats.lateness.report(engine.stats.shaping_failures) {
        eprintln!("qnet {what}: {r}");
    }
    Ok(())
}

fn entropy(bytes: u64, sources: Vec<PathBuf>, min_entropy: f64, stats: bool) -> CmdResult {
    use qnet::entropy::{EntropyConfig, EntropySource};
    if !sources.is_empty() {
        qnet::entropy::configure(&EntropyConfig {
            sources: sources
                .into_iter()
                .map(|path| EntropySource { path, min_entropy })
                .collect(),
        })?;
        // Give the collector its first round, so the sources are in the output (or their
        // rejection on stderr) before the bytes are written. A FIFO without a writer
        // just delays this; the OS source serves meanwhile.
        if !qnet::entropy::settle(std::time::Duration::from_secs(5)) {
            eprintln!("qnet entropy: sources not read within 5 s; continuing without them");
        }
    }
    let result = write_random(bytes);
    if stats {
        eprintln!("{}", qnet::entropy::stats());
    }
    result
}

fn write_random(mut left: u64) -> CmdResult {
    let mut out = io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        qnet::entropy::fill(&mut buf[..n])?;
        match out.write_all(&buf[..n]) {
            Ok(()) => {}
            // The reader has had enough (`| head -c`, rngtest stopping): not an error.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        left -= n as u64;
    }
    buf.fill(0);
    match out.flush() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Where libqnet.so is: `QNET_LIB`, else beside this binary, else `../lib/` of its prefix.
fn find_library() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("QNET_LIB").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate myself: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    for cand in [dir.join("libqnet.so"), dir.join("../lib/libqnet.so")] {
        if cand.is_file() {
            return cand
                .canonicalize()
                .map_err(|e| format!("{}: {e}", cand.display()));
        }
    }
    Err(format!(
        "libqnet.so not found beside {} or in ../lib (set QNET_LIB)",
        exe.display()
    ))
}

fn run(
    config: Option<PathBuf>,
    jail: Option<String>,
    command: Vec<std::ffi::OsString>,
) -> ExitCode {
    use qnet::config::JailMode;
    use std::os::unix::process::CommandExt;
    let fail = |msg: String| {
        eprintln!("qnet run: {}", msg.replace('\n', " "));
        ExitCode::from(127)
    };
    let lib = match find_library() {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let prog = &command[0];
    let Some(path) = qnet::os::find_program(prog) else {
        return fail(format!("{}: command not found", prog.to_string_lossy()));
    };
    // The same config the program's library reads; if it does not load, the library
    // says why and fails closed, and the jail's door opens for nothing.
    let cfg = qnet::config::Config::load_from(config.as_deref()).ok();
    let mode = match jail.as_deref().map(str::parse::<JailMode>) {
        Some(Ok(m)) => m,
        Some(Err(e)) => return fail(e),
        None => cfg.as_ref().map_or(JailMode::Prefer, |c| c.intercept.jail),
    };
    // Static, Go or foreign-architecture programs: the hooks cannot see their connects.
    let unhookable = match qnet::elf::file_linkage(&path) {
        Ok(l) => l.unhookable(),
        Err(e) => return fail(e.to_string()),
    };
    let unhookable_msg = |why: &str| {
        format!(
            "{} {why}; run `qnet socks --listen 127.0.0.1:1080` and point the program's \
             SOCKS5 proxy setting there instead",
            path.display()
        )
    };
    // Keep what is preloaded already, after us (proxychains-ng sits after qnet this way).
    let mut preload = lib.into_os_string();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(" ");
        preload.push(old);
    }
    let build = || {
        let mut cmd = std::process::Command::new(prog);
        cmd.args(&command[1..]).env("LD_PRELOAD", &preload);
        if let Some(c) = &config {
            cmd.env("QNET_CONFIG", c);
        }
        cmd
    };
    if mode != JailMode::Off {
        if let Some(why) = unhookable {
            // In the jail it reaches nothing but its own loopback: let it run, and say so.
            eprintln!(
                "qnet run: {} {why}; in the jail they go nowhere instead (for a tunnel, \
                 point it at `qnet socks`)",
                path.display()
            );
        }
        match qnet::jail::run::run(build(), cfg.as_ref()) {
            Ok(never) => match never {},
            Err(qnet::jail::run::Failure::NoJail(e)) if mode == JailMode::Prefer => {
                if let Some(why) = unhookable {
                    return fail(format!("{}, and no jail here: {e}", unhookable_msg(why)));
                }
                eprintln!(
                    "qnet run: no network jail ({e}); the hooks and the seccomp filter alone \
                     guard {} (--jail=off silences this)",
                    prog.to_string_lossy()
                );
            }
            Err(e @ qnet::jail::run::Failure::NoJail(_)) => {
                return fail(format!("--jail=require: {e}"));
            }
            Err(qnet::jail::run::Failure::Spawn(e)) => {
                return fail(format!("{}: {e}", prog.to_string_lossy()));
            }
            Err(e) => return fail(e.to_string()),
        }
    } else if let Some(why) = unhookable {
        return fail(unhookable_msg(why));
    }
    // exec in place: the program gets our pid, signals and terminal, and its exit status
    // is the command's status with nothing in between.
    let err = build().exec();
    fail(format!("{}: {err}", prog.to_string_lossy()))
}
