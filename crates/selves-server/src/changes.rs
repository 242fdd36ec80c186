//! The change feed: the store's log version ([`Store::log_version`]),
//! watched. It moves whenever a record is stored here, whoever stored it
//! (a peer's push, `selves remember` in another process, a folder scan),
//! so one poll of one small table serves every waiter: the `/v1/changes`
//! long poll and the daemon's schedules.

use std::sync::Arc;
use std::time::Duration;

use selves_store::Store;
use tokio::sync::{Notify, watch};

/// How often the store is looked at when nothing pokes the feed.
pub const CHANGE_POLL: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct ChangeFeed {
    rx: watch::Receiver<u64>,
    poke: Arc<Notify>,
}

impl ChangeFeed {
    /// Starts watching `store` on the current runtime. The watching task
    /// ends when the last clone of the feed and its subscribers are gone.
    pub fn start(store: Arc<Store>, every: Duration) -> ChangeFeed {
        let first = store.log_version().unwrap_or(0);
        let (tx, rx) = watch::channel(first);
        let poke = Arc::new(Notify::new());
        let poked = poke.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = poked.notified() => {}
                    () = tx.closed() => return,
                }
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.log_version()).await {
                    Ok(Ok(v)) => {
                        tx.send_if_modified(|old| std::mem::replace(old, v) != v);
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the log version"),
                    Err(_) => return,
                }
            }
        });
        ChangeFeed { rx, poke }
    }

    /// A receiver that sees every new version.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rx.clone()
    }

    /// The version last seen.
    pub fn version(&self) -> u64 {
        *self.rx.borrow()
    }

    /// Looks at the store now (after a write this process made), instead
    /// of at the next poll.
    pub fn poke(&self) {
        self.poke.notify_one();
    }
}
