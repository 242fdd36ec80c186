//! Catches the search index up after writes, in large batches, off the
//! request path: a push is acknowledged as soon as it is durable, and
//! becomes searchable shortly after.

use std::sync::Arc;
use std::time::Duration;

use selves_store::Store;
use tokio::sync::{Notify, watch};

/// Indexing waits for pushes to pause this long, so it does not compete
/// with a bulk sync for the CPU, and runs in big batches…
const LULL: Duration = Duration::from_millis(250);
/// …unless this many pushes came without a pause.
const BACKLOG: u32 = 64;

pub(crate) async fn run(store: Arc<Store>, kick: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = kick.notified() => {}
            _ = stop.changed() => return,
        }
        let mut pushes = 1;
        loop {
            tokio::select! {
                () = kick.notified() => {
                    pushes += 1;
                    if pushes >= BACKLOG {
                        break;
                    }
                }
                () = tokio::time::sleep(LULL) => break,
                _ = stop.changed() => return,
            }
        }
        loop {
            let s = store.clone();
            let step = tokio::task::spawn_blocking(move || {
                s.index_step(selves_store::search::INDEX_CHUNK)
            })
            .await;
            match step {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => tracing::debug!(rows = n, "indexed for search"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "search indexing failed; will retry on the next write");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "search indexer stopped unexpectedly");
                    break;
                }
            }
            if *stop.borrow() {
                return;
            }
        }
        // A restored hub that got its own records back from a spoke writes
        // again, once the pushes pause, what it wrote after the restore.
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.reissue_pending(crate::api::now_ms())).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(records = n, "wrote own records again after a restore"),
            Ok(Err(e)) => tracing::warn!(error = %e, "writing own records again failed"),
            Err(_) => {}
        }
    }
}
