//! `selves daemon`: one long-running process per node that keeps it in
//! sync without anyone typing `selves sync`.
//!
//! It holds, on one runtime:
//! - the HTTPS server, when a listen address is given or configured;
//! - the change feed ([`ChangeFeed`]): the store's log version, which moves
//!   whenever anything stores a record here (a peer's push, `selves
//!   remember` in another process, a folder scan);
//! - a schedule per peer ([`peer`]): sync now, then again when the local log
//!   moves, when the peer's log moves (the `/v1/changes` long poll), or at
//!   the interval; after a failure, sooner, with backoff;
//! - a watcher per sending share ([`watch`]): a saved file is scanned
//!   within a fraction of a second, which moves the log, which syncs;
//! - a keeper per SSH tunnel ([`tunnel`]): one `ssh -N` child each,
//!   restarted by how it failed, checked through the tunnel;
//! - a supervisor that starts and stops those as peers and shares are
//!   added and removed;
//! - the capture task ([`crate::capture`]): agent sessions and notes read
//!   into memory within a second of being written;
//! - the identity task ([`crate::identity`]): this node's card kept fresh,
//!   `SELVES.md` rendered into every two-way share.
//!
//! One daemon per home ([`lock`]); SIGTERM or SIGINT lets running rounds
//! finish (up to [`SHUTDOWN_GRACE`]) and stops.

mod lock;
pub mod logfile;
mod peer;
pub mod tunnel;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use selves_server::{CHANGE_POLL, ChangeFeed};
use selves_store::{Remote, Share, Store, Tunnel};
use tokio::sync::watch as channel;
use tokio::task::JoinHandle;

use crate::commands::serve::{ServeArgs, Signals, server_setup};
use crate::home::Home;

pub use lock::{DaemonLock, died_at, listening, running};

/// How long running sync rounds may take to finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often the supervisor looks for added or removed peers and shares.
const SUPERVISE_EVERY: Duration = Duration::from_secs(2);

#[derive(Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Sync with each peer at least this often, even when nothing seems to
    /// have changed
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Wait this long after a local change before syncing, so a burst of
    /// changes goes out in one round
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    settle: Duration,
}

/// What every task of the daemon shares.
pub(crate) struct Ctx {
    pub store: Arc<Store>,
    pub engine: Arc<selves_share::Engine>,
    pub changes: ChangeFeed,
    pub interval: Duration,
    pub settle: Duration,
    pub stop: channel::Receiver<bool>,
    pub home: PathBuf,
}

pub fn run(home: Option<PathBuf>, args: DaemonArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let rt = crate::runtime()?;
    // Handle SIGTERM from the moment the daemon can be seen running (the
    // lock names its pid): a stop that early is still a clean stop.
    let signals = rt.block_on(async { Signals::new() })?;
    let _lock = DaemonLock::acquire(&home.dir)?;
    let store = home.open_store()?;
    let engine = home.open_engine(&store)?;
    let serving = args.serve.listen.is_some() || home.config.server.listen.is_some();
    let server = if serving {
        Some(server_setup(&home, args.serve)?)
    } else {
        None
    };
    rt.block_on(async move {
        let changes = ChangeFeed::start(store.clone(), CHANGE_POLL);
        let (stop_tx, stop) = channel::channel(false);
        let ctx = Arc::new(Ctx {
            store: store.clone(),
            engine: engine.clone(),
            changes: changes.clone(),
            interval: args.interval,
            settle: args.settle,
            stop: stop.clone(),
            home: home.dir.clone(),
        });
        let server = match server {
            Some(setup) => {
                let listener = tokio::net::TcpListener::from_std(setup.listener)?;
                let addr = listener.local_addr()?;
                // `invite` dials what the daemon really listens on (noted
                // before anyone is told it listens).
                if let Err(e) = lock::note_address(&home.dir, addr) {
                    tracing::warn!(error = %e, "cannot note the listen address for invites");
                }
                // One line on stdout for scripts, as `serve` prints.
                println!("listening on {addr}");
                use std::io::Write as _;
                std::io::stdout().flush()?;
                tracing::info!(node = %home.name(), %addr, "serving");
                let mut config = setup.config;
                config.changes = Some(changes.clone());
                let mut stopped = stop.clone();
                Some(tokio::spawn(selves_server::run(
                    listener,
                    store.clone(),
                    engine.clone(),
                    config,
                    async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    },
                )))
            }
            None => None,
        };
        tracing::info!(node = %home.name(), "daemon started");
        let identity = tokio::spawn(crate::identity::run(ctx.clone()));
        let capture = tokio::spawn(crate::capture::watch(ctx.clone()));
        let heartbeat = tokio::spawn(lock::heartbeat(home.dir.clone(), stop.clone()));
        let supervisor = tokio::spawn(supervise(ctx));
        signals.recv().await;
        tracing::info!("stopping: letting running rounds finish");
        let _ = stop_tx.send(true);
        if let Err(e) = supervisor.await {
            tracing::warn!(error = %e, "the supervisor failed");
        }
        let _ = identity.await;
        let _ = capture.await;
        if let Some(server) = server {
            match server.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "the server failed"),
                Err(e) => tracing::warn!(error = %e, "the server failed"),
                Ok(Ok(())) => {}
            }
        }
        let _ = heartbeat.await;
        // A clean stop: nothing for `status` to warn about.
        lock::stopped_cleanly(&home.dir);
        tracing::info!("daemon stopped");
        anyhow::Ok(())
    })
}

/// Starts a task per peer and per sending share, and restarts or stops
/// them as the store's peers and shares change. Returns when the daemon
/// stops, after every task has.
async fn supervise(ctx: Arc<Ctx>) {
    let mut peers: HashMap<String, (PeerKey, JoinHandle<()>)> = HashMap::new();
    let mut shares: HashMap<String, (ShareKey, JoinHandle<()>)> = HashMap::new();
    let mut tunnels: HashMap<String, (Tunnel, JoinHandle<()>)> = HashMap::new();
    let mut stop = ctx.stop.clone();
    loop {
        match load(&ctx.store).await {
            Ok((remotes, all_shares, all_tunnels)) => {
                // A tunnel's task depends on its settings, not on the state
                // its keeper records.
                reconcile(
                    &mut tunnels,
                    all_tunnels.into_iter().map(|t| {
                        (
                            t.name.clone(),
                            Tunnel {
                                state: String::new(),
                                detail: None,
                                since: None,
                                spawns: 0,
                                ..t
                            },
                        )
                    }),
                    |t| tokio::spawn(tunnel::run(ctx.clone(), t.name.clone(), ctx.home.clone())),
                );
                reconcile(
                    &mut peers,
                    remotes
                        .into_iter()
                        .map(|r| (r.alias.to_string(), PeerKey::of(&r))),
                    |key| tokio::spawn(peer::run(ctx.clone(), key.alias.clone())),
                );
                reconcile(
                    &mut shares,
                    all_shares
                        .into_iter()
                        .filter(|s| s.mode.sends())
                        .map(|s| (s.name.to_string(), ShareKey::of(&s))),
                    |key| tokio::spawn(watch::run(ctx.clone(), key.name.clone())),
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot read peers and shares"),
        }
        tokio::select! {
            () = tokio::time::sleep(SUPERVISE_EVERY) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let tasks = peers
        .into_values()
        .map(|(_, t)| t)
        .chain(shares.into_values().map(|(_, t)| t))
        .chain(tunnels.into_values().map(|(_, t)| t));
    let all = futures_util::future::join_all(tasks);
    if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
        tracing::warn!(
            "sync rounds still running after {} s; stopping anyway (what was committed stays)",
            SHUTDOWN_GRACE.as_secs()
        );
    }
}

type Loaded = (Vec<Remote>, Vec<Share>, Vec<Tunnel>);

async fn load(store: &Arc<Store>) -> anyhow::Result<Loaded> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || Ok((s.remotes()?, s.shares()?, s.tunnels()?)))
        .await
        .context("worker failed")?
}

/// Starts what is new, restarts what changed, aborts what is gone.
fn reconcile<K: PartialEq>(
    running: &mut HashMap<String, (K, JoinHandle<()>)>,
    wanted: impl Iterator<Item = (String, K)>,
    start: impl Fn(&K) -> JoinHandle<()>,
) {
    let wanted: HashMap<String, K> = wanted.collect();
    running.retain(|name, (key, task)| {
        let keep = wanted.get(name).is_some_and(|k| k == key) && !task.is_finished();
        if !keep {
            task.abort();
        }
        keep
    });
    for (name, key) in wanted {
        if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(name) {
            let task = start(&key);
            slot.insert((key, task));
        }
    }
}

/// What a peer's task depends on: a re-pair (new URL, token or
/// certificate) restarts it.
#[derive(PartialEq)]
struct PeerKey {
    alias: String,
    url: String,
    token: String,
    cert: Option<String>,
}

impl PeerKey {
    fn of(r: &Remote) -> PeerKey {
        PeerKey {
            alias: r.alias.to_string(),
            url: r.url.clone(),
            token: r.token.to_hex(),
            cert: r.cert_fp.as_ref().map(ToString::to_string),
        }
    }
}

#[derive(PartialEq)]
struct ShareKey {
    name: String,
    root: PathBuf,
}

impl ShareKey {
    fn of(s: &Share) -> ShareKey {
        ShareKey {
            name: s.name.to_string(),
            root: s.root.clone(),
        }
    }
}
