//! Catches the search index up after writes, in large batches, off the
//! request path: a push is acknowledged as soon as it is durable, and
//! becomes searchable shortly after.

use std::sync::Arc;
use std::time::Duration;

use selves_store::Store;
use tokio::sync::{Notify, watch};

/// Waits after a kick so a burst of pushes is indexed in big batches.
const SETTLE: Duration = Duration::from_millis(100);

pub(crate) async fn run(store: Arc<Store>, kick: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = kick.notified() => {}
            _ = stop.changed() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(SETTLE) => {}
            _ = stop.changed() => return,
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
    }
}
