//! `serve`: this node's HTTPS server, in the foreground until SIGINT or
//! SIGTERM.

use std::io::Write as _;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use selves_server::{
    DEFAULT_LIMITS, DEFAULT_MEMEX_RATES, DEFAULT_RATE, MemexRates, RateLimit, ServerConfig,
};
use selves_wire::native::Limits;

use crate::home::{DEFAULT_PORT, Home};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on [default: server.listen in config.toml; else
    /// `serve` listens on 127.0.0.1:8765, and the daemon serves nothing]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Largest request body accepted, in bytes (after decompression)
    #[arg(long)]
    max_body_bytes: Option<u64>,
    /// Most records accepted in one push (at least 64: the longest span
    /// between two signatures of an author, which no push can split)
    #[arg(long)]
    max_push_records: Option<u32>,
    /// Requests per minute allowed per peer token
    #[arg(long)]
    rate_per_minute: Option<u32>,
    /// Requests a peer may burst above its rate
    #[arg(long)]
    rate_burst: Option<u32>,
    /// Seconds a client may take to send request headers
    #[arg(long)]
    header_timeout_secs: Option<u64>,
    /// memex pushes per minute allowed per token (the spec's 10 by default)
    #[arg(long)]
    memex_pushes_per_minute: Option<u32>,
    /// memex pulls per minute allowed per token (the spec's 60 by default)
    #[arg(long)]
    memex_pulls_per_minute: Option<u32>,
}

/// A bound listener and the server's configuration, from the command
/// line and `config.toml`.
pub struct ServerSetup {
    pub listener: std::net::TcpListener,
    pub config: ServerConfig,
}

pub fn server_setup(home: &Home, args: ServeArgs) -> anyhow::Result<ServerSetup> {
    let cfg = &home.config.server;
    let listen = args
        .listen
        .or_else(|| cfg.listen.clone())
        .unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_PORT}"));
    let limits = Limits {
        max_body_bytes: args
            .max_body_bytes
            .or(cfg.max_body_bytes)
            .unwrap_or(DEFAULT_LIMITS.max_body_bytes),
        max_push_records: args
            .max_push_records
            .or(cfg.max_push_records)
            .unwrap_or(DEFAULT_LIMITS.max_push_records)
            .max(selves_store::chain::SIGN_EVERY as u32),
        max_pull_records: cfg
            .max_pull_records
            .unwrap_or(DEFAULT_LIMITS.max_pull_records),
        max_pull_bytes: cfg.max_pull_bytes.unwrap_or(DEFAULT_LIMITS.max_pull_bytes),
    };
    let nonzero = |v: u32, what: &str| {
        NonZeroU32::new(v).with_context(|| format!("{what} must be at least 1"))
    };
    let rate = RateLimit {
        per_minute: nonzero(
            args.rate_per_minute
                .or(cfg.rate_per_minute)
                .unwrap_or(DEFAULT_RATE.per_minute.get()),
            "the rate per minute",
        )?,
        burst: nonzero(
            args.rate_burst
                .or(cfg.rate_burst)
                .unwrap_or(DEFAULT_RATE.burst.get()),
            "the rate burst",
        )?,
    };
    // A lower per-minute rate lowers the burst with it.
    let memex_rate = |given: Option<u32>, default: RateLimit, what: &str| {
        let Some(n) = given else { return Ok(default) };
        let per_minute = nonzero(n, what)?;
        anyhow::Ok(RateLimit {
            per_minute,
            burst: per_minute.min(default.burst),
        })
    };
    let memex = MemexRates {
        pushes: memex_rate(
            args.memex_pushes_per_minute.or(cfg.memex_pushes_per_minute),
            DEFAULT_MEMEX_RATES.pushes,
            "the memex push rate",
        )?,
        pulls: memex_rate(
            args.memex_pulls_per_minute.or(cfg.memex_pulls_per_minute),
            DEFAULT_MEMEX_RATES.pulls,
            "the memex pull rate",
        )?,
    };
    let header_timeout = Duration::from_secs(
        args.header_timeout_secs
            .or(cfg.header_timeout_secs)
            .unwrap_or(10),
    );
    let tls = selves_server::tls_config(home.certificate()?, home.private_key()?)
        .context("cannot load the node's certificate and key")?;
    let listener = std::net::TcpListener::bind(&listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    listener.set_nonblocking(true)?;
    Ok(ServerSetup {
        listener,
        config: ServerConfig {
            tls,
            limits,
            rate,
            memex,
            header_timeout,
            handshake_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(cfg.body_timeout_secs.unwrap_or(30).max(1)),
            request_timeout: Duration::from_secs(cfg.request_timeout_secs.unwrap_or(300).max(1)),
            max_connections: cfg.max_connections.unwrap_or(256).max(4),
            software: concat!("selves ", env!("CARGO_PKG_VERSION")).to_owned(),
            changes: None,
        },
    })
}

pub fn serve(home: Option<PathBuf>, args: ServeArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let setup = server_setup(&home, args)?;
    let store = home.open_store()?;
    let engine = home.open_engine(&store)?;
    let fingerprint = home.fingerprint()?;
    let addr = setup.listener.local_addr()?;

    let rt = crate::runtime()?;
    rt.block_on(async move {
        let signals = Signals::new()?;
        let listener = tokio::net::TcpListener::from_std(setup.listener)?;
        // One line on stdout for scripts; the rest on stderr.
        println!("listening on {addr}");
        std::io::stdout().flush()?;
        eprintln!(
            "selves: serving node {} on https://{addr} (certificate {fingerprint})",
            home.name()
        );
        selves_server::run(listener, store, engine, setup.config, signals.recv()).await?;
        eprintln!("selves: stopped");
        anyhow::Ok(())
    })
}

/// SIGINT and SIGTERM, handled from the moment this is made (instead of
/// killing the process).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must be called inside the runtime.
    pub fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first of them.
    pub async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
