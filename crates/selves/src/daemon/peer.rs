//! One peer's schedule: a sync round now, then another as soon as there is
//! something to move, at the latest after the interval.
//!
//! Something to move means: this node's log moved (a local write, a scan,
//! or a round with another peer that brought records this peer lacks), or
//! the peer's log moved (its `/v1/changes` long poll answered). A failed
//! round is retried with backoff (2 s doubling, capped by the interval and
//! [`MAX_BACKOFF`]); every attempt is recorded in the peer's status.

use std::sync::Arc;
use std::time::Duration;

use selves_client::{NoProgress, PeerClient, SyncOptions};
use selves_store::{Protocol, Remote};
use tokio::sync::watch;

use super::Ctx;
use crate::commands::peers::target;

pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// A git remote is pushed to at most this often after local changes
/// (each push is a commit in its history).
pub const GIT_SPACING: Duration = Duration::from_secs(30);
pub const MAX_BACKOFF: Duration = Duration::from_secs(120);

/// Why the next round runs.
#[derive(Debug)]
enum Wake {
    Local,
    Remote,
    Timer,
    Stop,
}

pub async fn run(ctx: Arc<Ctx>, alias: String) {
    let mut local = ctx.changes.subscribe();
    // The peer's log version, as its long poll last said.
    let (remote_tx, mut remote) = watch::channel(0u64);
    let mut poller = None;
    let mut backoff = FIRST_BACKOFF;
    let mut stop = ctx.stop.clone();
    loop {
        if *stop.borrow() {
            break;
        }
        let Some(peer) = load(&ctx, &alias).await else {
            break;
        };
        if poller.is_none() && peer.protocol == Protocol::Selves {
            poller = Some(AbortOnDrop(tokio::spawn(long_poll(
                ctx.store.clone(),
                peer.clone(),
                remote_tx.clone(),
                ctx.stop.clone(),
            ))));
        }
        if poller.is_none()
            && peer.protocol == Protocol::Medium
            && let Some(root) = selves_client::remote::folder_of(&peer.url)
        {
            poller = Some(AbortOnDrop(tokio::spawn(watch_folder(
                root,
                remote_tx.clone(),
                ctx.stop.clone(),
            ))));
        }
        local.borrow_and_update();
        remote.borrow_and_update();
        let started = std::time::Instant::now();
        let ok = round(&ctx, &peer).await;
        // A remote's own schedule, if it has one.
        let every = peer
            .every_ms
            .map_or(ctx.interval, |ms| Duration::from_millis(ms as u64));
        let wait = if ok {
            backoff = FIRST_BACKOFF;
            every
        } else {
            let wait = backoff.min(every);
            backoff = (backoff * 2).min(MAX_BACKOFF);
            wait
        };
        let wake = tokio::select! {
            r = local.changed() => if r.is_ok() { Wake::Local } else { Wake::Stop },
            r = remote.changed() => if r.is_ok() { Wake::Remote } else { Wake::Stop },
            () = tokio::time::sleep(wait) => Wake::Timer,
            _ = stop.wait_for(|s| *s) => Wake::Stop,
        };
        tracing::debug!(peer = %alias, ?wake, "next round");
        match wake {
            Wake::Stop => break,
            // A git remote: one push (a commit) per spacing at most.
            Wake::Local
                if peer.protocol == Protocol::Medium
                    && selves_client::remote::folder_of(&peer.url).is_none() =>
            {
                let spacing = peer
                    .every_ms
                    .map_or(GIT_SPACING, |ms| Duration::from_millis(ms as u64))
                    .saturating_sub(started.elapsed());
                tokio::time::sleep(spacing.max(ctx.settle)).await;
            }
            // Let a burst of local writes settle into one round.
            Wake::Local => tokio::time::sleep(ctx.settle).await,
            Wake::Remote | Wake::Timer => {}
        }
    }
}

async fn load(ctx: &Ctx, alias: &str) -> Option<Remote> {
    let store = ctx.store.clone();
    let alias = alias.to_owned();
    match tokio::task::spawn_blocking(move || store.remote(&alias)).await {
        Ok(Ok(peer)) => peer,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read a peer");
            None
        }
        Err(_) => None,
    }
}

/// One round; a round that has started finishes even if the daemon is
/// asked to stop (the supervisor waits for it, within its grace).
async fn round(ctx: &Ctx, peer: &Remote) -> bool {
    let alias = peer.alias.to_string();
    let store = ctx.store.clone();
    let engine = ctx.engine.clone();
    let outcome = crate::commands::sync::sync_peer(
        &store,
        &engine,
        peer,
        &SyncOptions::default(),
        &NoProgress,
    )
    .await;
    match outcome {
        Ok(report) => {
            if !report.up_to_date() {
                tracing::info!(
                    peer = %alias,
                    pulled = report.pulled,
                    pushed = report.pushed,
                    shares = report.shares.iter().map(|s| s.pulled + s.pushed).sum::<u64>(),
                    ms = report.elapsed_ms,
                    "synced"
                );
            }
            for s in report.shares.iter().filter_map(|s| s.error.as_ref()) {
                tracing::warn!(peer = %alias, "{s}");
            }
            if report.changed_rows > 0 {
                let store = ctx.store.clone();
                let indexed = tokio::task::spawn_blocking(move || store.catch_up_index(|_| {}));
                if let Ok(Err(e)) = indexed.await {
                    tracing::warn!(error = %e, "search indexing failed; it is retried later");
                }
            }
            // What arrived may be news for the other peers.
            ctx.changes.poke();
            true
        }
        Err(e) => {
            tracing::warn!(peer = %alias, class = e.class(), "sync failed: {e}");
            false
        }
    }
}

/// How often a folder remote is looked at for files other nodes wrote.
const FOLDER_LOOK: Duration = Duration::from_secs(2);

/// Watches a folder remote: a new or grown file among the writers'
/// (what a carrier such as Syncthing brings) wakes the schedule. A look is
/// a listing of `w/*/` and `w/*/b/`, a few dozen stats.
async fn watch_folder(
    root: std::path::PathBuf,
    versions: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let look = move || -> u64 {
        let mut h: u64 = 0;
        let Ok(writers) = std::fs::read_dir(root.join("w")) else {
            return 0;
        };
        for w in writers.flatten() {
            for dir in [w.path(), w.path().join("b")] {
                let Ok(files) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for f in files.flatten() {
                    if let Ok(m) = f.metadata() {
                        let mtime = m
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map_or(0, |d| d.as_nanos() as u64);
                        h = h.wrapping_add(m.len().wrapping_mul(31) ^ mtime);
                    }
                }
            }
        }
        h
    };
    let mut last = None;
    loop {
        let now = tokio::task::spawn_blocking(look.clone()).await.unwrap_or(0);
        if last.is_some_and(|l| l != now) {
            versions.send_modify(|v| *v += 1);
        }
        last = Some(now);
        tokio::select! {
            () = tokio::time::sleep(FOLDER_LOOK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Follows the peer's log version with `/v1/changes`; each new version
/// wakes the schedule. A peer without the endpoint (older selves) or out
/// of reach is asked again later; the interval still syncs.
async fn long_poll(
    store: std::sync::Arc<selves_store::Store>,
    peer: Remote,
    versions: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let client = match PeerClient::new(target(&peer, &store)) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(peer = %peer.alias, error = %e, "cannot follow the peer's changes");
            return;
        }
    };
    let mut after = 0u64;
    let mut pause = FIRST_BACKOFF;
    loop {
        let answer = tokio::select! {
            r = client.changes(after) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match answer {
            Ok(v) => {
                pause = FIRST_BACKOFF;
                if v != after {
                    after = v;
                    versions.send_replace(v);
                }
            }
            Err(e) => {
                tracing::debug!(peer = %peer.alias, error = %e, "long poll failed");
                // A peer added without its id: the first round learns it,
                // and the long poll can then prove this node's key.
                if !client.knows_server() {
                    let (s, alias) = (store.clone(), peer.alias.to_string());
                    if let Ok(Ok(Some(r))) =
                        tokio::task::spawn_blocking(move || s.remote(&alias)).await
                        && let Some(id) = r.node_id
                    {
                        client.set_server(&id);
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                pause = (pause * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Aborts a task when the schedule that started it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
