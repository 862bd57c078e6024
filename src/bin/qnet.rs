//! qnet: the tunnel's command line (keys, port forwarding).

use std::error::Error;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qnet::keys::PrivateKey;

/// Command-line tools for qnet, an encrypted TCP tunnel.
#[derive(Debug, Parser)]
#[command(name = "qnet", version, about)]
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
}

type CmdResult = Result<(), Box<dyn Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (name, result) = match cli.command {
        Command::Keygen => ("keygen", keygen()),
        Command::Pubkey => ("pubkey", pubkey()),
        Command::Forward { listen, to, config } => {
            ("forward", forward(&listen, &to, config.as_deref()))
        }
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
    qnet::engine::log::set_level(cfg.log);
    let client = qnet::engine::client::ClientConfig::from_config(&cfg)?;
    let dest = qnet::engine::client::parse_destination(to)?;
    let listen: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e}"))?;
    let mut engine = qnet::engine::client::Client::new(client)?;
    let addr = engine.forward(listen, dest)?;
    eprintln!("qnet forward listening on {addr}, to {to}");
    engine.run(|_| false)?;
    Ok(())
}
