//! A sending share's watcher: file system events (inotify on Linux,
//! FSEvents on macOS) mark the folder dirty; once it has been quiet for the
//! daemon's settle time (at most [`MAX_SETTLE`] into a burst) the share is
//! scanned. A scan that captured something moves the log, which wakes
//! every peer's schedule. A full scan also runs every [`RESCAN`], for the
//! events a watcher can miss (an overflowing queue, network file systems).

use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher as _};
use selves_store::Share;
use tokio::sync::mpsc;

use super::Ctx;
use crate::output::now_ms;

pub const RESCAN: Duration = Duration::from_secs(300);
pub const MAX_SETTLE: Duration = Duration::from_secs(2);
/// How long to wait before watching again when the folder cannot be
/// watched (missing, unreadable).
const RETRY: Duration = Duration::from_secs(30);

pub async fn run(ctx: Arc<Ctx>, name: String) {
    let mut stop = ctx.stop.clone();
    let mut last_error = None;
    loop {
        let Some(share) = load(&ctx, &name).await else {
            return;
        };
        // The channel is a dirty flag: one pending wake is enough.
        let (tx, mut dirty) = mpsc::channel::<()>(1);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let relevant = match event {
                Ok(e) => !matches!(e.kind, EventKind::Access(_)),
                // An error (e.g. a dropped event queue): scan to be sure.
                Err(_) => true,
            };
            if relevant {
                let _ = tx.try_send(());
            }
        })
        .and_then(|mut w| w.watch(&share.root, RecursiveMode::Recursive).map(|()| w));
        let _watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                let msg = format!("cannot watch {}: {e}", share.root.display());
                if last_error.as_ref() != Some(&msg) {
                    tracing::warn!(share = %name, "{msg}; scanning every {} s instead", RETRY.as_secs());
                    last_error = Some(msg);
                }
                scan(&ctx, &share, &mut last_error).await;
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        tracing::debug!(share = %name, root = %share.root.display(), "watching");
        scan(&ctx, &share, &mut last_error).await;
        loop {
            tokio::select! {
                woke = dirty.recv() => if woke.is_none() { break },
                () = tokio::time::sleep(RESCAN) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            // Settle: wait for a quiet moment, within a bound.
            let started = Instant::now();
            while started.elapsed() < MAX_SETTLE {
                tokio::select! {
                    _ = dirty.recv() => {}
                    () = tokio::time::sleep(ctx.settle) => break,
                }
            }
            let Some(share) = load(&ctx, &name).await else {
                return;
            };
            if !scan(&ctx, &share, &mut last_error).await && !share.root.is_dir() {
                // The folder is gone: watch it again when it is back.
                break;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(ctx.settle.max(Duration::from_secs(1))) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn load(ctx: &Ctx, name: &str) -> Option<Share> {
    let store = ctx.store.clone();
    let name = name.to_owned();
    match tokio::task::spawn_blocking(move || store.share(&name)).await {
        Ok(Ok(Some(share))) if share.mode.sends() => Some(share),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read a share");
            None
        }
        _ => None,
    }
}

/// Scans; `false` when the scan failed. A failure is logged when it first
/// appears or changes, not at every scan.
async fn scan(ctx: &Ctx, share: &Share, last_error: &mut Option<String>) -> bool {
    let engine = ctx.engine.clone();
    let s = share.clone();
    let store = ctx.store.clone();
    let result = tokio::task::spawn_blocking(move || {
        let result = engine.scan(&s, false, now_ms());
        // Status says a share stopped until a scan goes through again.
        let stopped = match &result {
            Err(
                e @ (selves_share::ShareError::RootMissing { .. }
                | selves_share::ShareError::MassDelete { .. }),
            ) => Some(e.to_string()),
            _ => None,
        };
        if let Err(e) = store.note_share_state(s.name.as_str(), stopped.as_deref(), now_ms()) {
            tracing::warn!(error = %e, "cannot record a share's state");
        }
        result
    })
    .await;
    match result {
        Ok(Ok(report)) => {
            if report.changed + report.deleted + report.appended > 0 {
                tracing::info!(share = %share.name, ?report, "scanned");
                ctx.changes.poke();
            }
            *last_error = None;
            true
        }
        Ok(Err(e)) => {
            let msg = e.to_string();
            if last_error.as_ref() != Some(&msg) {
                tracing::warn!(share = %share.name, "{msg}");
                *last_error = Some(msg);
            }
            false
        }
        Err(_) => false,
    }
}
