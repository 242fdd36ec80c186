//! `selves`: keeps an AI assistant's memory converged across every machine
//! it runs on. This binary is glue: it parses the command line, finds the
//! node's home, and drives the store, server and client crates.

mod capture;
mod commands;
mod daemon;
mod demo;
mod health;
mod home;
mod identity;
mod mcp;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "selves",
    version,
    about = "Keeps an AI assistant's memory converged across every machine it runs on",
    long_about = "Keeps an AI assistant's memory converged across every machine it runs on.\n\n\
        Each node keeps a full local copy of memory in SQLite and syncs it, and the folders it\n\
        shares, with its peers over pinned HTTPS, or through a git repository or a carried folder.\n\
        The node lives in SELVES_HOME (default ~/.selves).",
    after_help = "Exit codes: 0 ok, 1 failed, 2 usage, 3 diverged (verify), 4 token refused, \
        5 peer unreachable, 6 certificate refused, 7 protocol version mismatch. \
        `status --brief`: 0 healthy, 1 degraded, 2 a peer down."
)]
struct Cli {
    /// The node's home directory [default: $SELVES_HOME or ~/.selves]
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// More log output on stderr (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create this node: id, name, TLS certificate, config and store
    Init(commands::node::InitArgs),
    /// Serve this node to its peers over HTTPS (foreground)
    Serve(commands::serve::ServeArgs),
    /// Keep this node in sync by itself: serve, watch, sync on every change (foreground)
    Daemon(daemon::DaemonArgs),
    /// Mint a token for a peer and print a one-line pair (or join) blob for it
    Invite(commands::peers::InviteArgs),
    /// Join a hub from a join blob: tunnel, first sync, self-test, all in one
    Join(commands::join::JoinArgs),
    /// Register a hub from a pair blob (and check it answers)
    Pair(commands::peers::PairArgs),
    /// Manage peers: the ones this node dials and the ones it let in
    #[command(subcommand)]
    Peer(commands::peers::PeerCommand),
    /// Sync through a git repository or a carried folder, end-to-end encrypted
    #[command(subcommand)]
    Remote(commands::remote::RemoteCommand),
    /// Replace a peer's token (the old one stops working) and print a new pair blob
    RotateToken(commands::peers::RotateArgs),
    /// Fill memory from agent sessions and notes: sources, and messages held as secret
    #[command(subcommand)]
    Capture(commands::capture::CaptureCommand),
    /// Serve memory to an agent over MCP (stdio); `mcp install` adds it to a client
    Mcp(commands::mcp::McpArgs),
    /// Write one message into memory
    Remember(commands::memory::RememberArgs),
    /// Import rows (JSON lines, the memex Row shape) into memory
    Import(commands::memory::ImportArgs),
    /// Remove messages from memory here and on every node (a tombstone travels)
    Forget(commands::memory::ForgetArgs),
    /// Print every row as JSON lines, in a stable order
    Export(commands::memory::ExportArgs),
    /// Full-text search over memory
    Search(commands::memory::SearchArgs),
    /// Sync with a peer (or all peers), both directions: memory and shares
    Sync(commands::sync::SyncArgs),
    /// Folders this node syncs with its peers
    #[command(subcommand)]
    Share(commands::shares::ShareCommand),
    /// Conflict copies and files held back, with their paths
    Conflicts(commands::shares::ConflictsArgs),
    /// Check that this node and a peer hold the same memory
    Verify(commands::sync::VerifyArgs),
    /// This node, its memory, heads and peers
    Status(commands::node::StatusArgs),
    /// What each node says of itself (role, location, interface); `set` for this one
    Identity {
        /// Print JSON (as `identity show --json`)
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<commands::identity::IdentityCommand>,
    },
    /// Check the database and the record logs for damage
    Check(commands::node::CheckArgs),
    /// SSH tunnels the daemon keeps up
    #[command(subcommand)]
    Tunnel(commands::tunnel::TunnelCommand),
    /// Run the daemon as a service: systemd, launchd, termux-services
    #[command(subcommand)]
    Service(commands::service::ServiceCommand),
    /// Run a local demo: three nodes syncing real data on loopback
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    end_quietly_on_a_closed_stdout();
    // The daemon also logs to its home's logs/ folder.
    let log_file = match &cli.command {
        Command::Daemon(_) => home::Home::locate(cli.home.clone())
            .ok()
            .and_then(|dir| daemon::logfile::LogFile::open(&dir.join("logs")).ok()),
        _ => None,
    };
    let daemon = matches!(cli.command, Command::Daemon(_));
    init_logging(cli.verbose, daemon, log_file);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = output::exit_code(&e);
            if e.downcast_ref::<output::Exit>().is_none() {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let home = cli.home;
    match cli.command {
        Command::Init(a) => commands::node::init(home, a),
        Command::Serve(a) => commands::serve::serve(home, a),
        Command::Daemon(a) => daemon::run(home, a),
        Command::Invite(a) => commands::peers::invite(home, a),
        Command::Join(a) => commands::join::join(home, a),
        Command::Pair(a) => commands::peers::pair(home, a),
        Command::Peer(c) => commands::peers::peer(home, c),
        Command::Remote(c) => commands::remote::remote(home, c),
        Command::RotateToken(a) => commands::peers::rotate(home, a),
        Command::Capture(c) => commands::capture::capture(home, c),
        Command::Mcp(a) => commands::mcp::mcp(home, a),
        Command::Remember(a) => commands::memory::remember(home, a),
        Command::Import(a) => commands::memory::import(home, a),
        Command::Forget(a) => commands::memory::forget(home, a),
        Command::Export(a) => commands::memory::export(home, a),
        Command::Search(a) => commands::memory::search(home, a),
        Command::Sync(a) => commands::sync::sync(home, a),
        Command::Share(c) => commands::shares::share(home, c),
        Command::Conflicts(a) => commands::shares::conflicts(home, a),
        Command::Verify(a) => commands::sync::verify(home, a),
        Command::Status(a) => commands::node::status(home, a),
        Command::Identity { json, command } => commands::identity::identity(
            home,
            command.or(json.then_some(commands::identity::IdentityCommand::Show { json })),
        ),
        Command::Check(a) => commands::node::check(home, a),
        Command::Tunnel(c) => commands::tunnel::tunnel(home, c),
        Command::Service(c) => commands::service::service(home, c),
        Command::Demo(a) => demo::run(a),
    }
}

/// Logs go to stderr (and the daemon's to its log file too);
/// `SELVES_LOG=debug` or `-v` raise the level. The daemon says what it
/// does (info) by default, commands only warn.
fn init_logging(verbose: u8, daemon: bool, file: Option<daemon::logfile::LogFile>) {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::fmt::writer::MakeWriterExt as _;
    let from_env = std::env::var("SELVES_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok());
    let level = from_env.unwrap_or(match verbose + u8::from(daemon) {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    });
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false);
    match file {
        Some(file) => builder
            .with_ansi(false)
            .with_writer(std::io::stderr.and(file))
            .init(),
        // Colours only on a terminal: never into a pipe or a log file.
        None => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
    }
}

/// `selves search … | head -1`: when the reader of standard output goes
/// away, the command ends there, quietly and successfully, as `export`
/// always did. Rust ignores SIGPIPE (a server must never die of a peer
/// that hung up), so `println!` meets a closed pipe as an error and
/// panics with this message; the hook turns exactly that panic into a
/// quiet exit and leaves every other panic as it was.
fn end_quietly_on_a_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// glibc gives each thread that allocates its own arena, and memory freed
/// in one is not reused by another: with the runtime's and SQLite's
/// threads that fragmentation, not data, dominates peak RSS. Two arenas
/// keep memory bounded at no measurable cost in speed.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Builds the runtime for a command that talks to the network.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()?)
}
