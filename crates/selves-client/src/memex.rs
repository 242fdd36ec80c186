//! Syncing with a memex v12 node, the spec's way (seeds/memex-sync.md
//! §Wire protocol): health and the schema handshake, then pull rows after
//! `pulled_to` (the memex node's id), then push this node's rows after
//! `pushed_to` (this node's arrival number). Each cursor moves only once what
//! it covers is durable: the pull cursor in the same transaction as the rows
//! it covers, the push cursor after the memex node answered 200.
//!
//! Pulled rows become records in this node's own log, with their `origin`
//! kept, so they relay on to native peers; they are marked as coming from
//! that memex node and never pushed back to it.

use std::sync::Arc;
use std::time::Instant;

use selves_store::{CaptureOptions, Store};
use selves_wire::memex::{self, MAX_PULL_LIMIT, MAX_PUSH_ROWS, RawPullResponse, SCHEMA_VERSION};

use crate::peer::{PeerClient, SyncError};
use crate::replicate::{Counters, Progress, SyncOptions, SyncReport, blocking, retry};

/// memex servers count a push body against 2 MiB as it arrives and reset
/// the connection past it: stay under it with room to spare, as memex's own
/// client does.
const PUSH_BODY_MAX: usize = 1_800_000;
/// What the store's size estimate aims for, below `PUSH_BODY_MAX`.
const PUSH_BODY_TARGET: usize = 1_200_000;

/// One sync round with the memex node behind `client`, registered here as
/// `alias`.
pub async fn sync_memex(
    store: Arc<Store>,
    client: &PeerClient,
    alias: &str,
    opts: &SyncOptions,
    progress: &dyn Progress,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let counters = Counters::default();
    let health = retry(opts, progress, &counters, || client.memex_health()).await?;
    if health.schema_version != SCHEMA_VERSION {
        return Err(SyncError::SchemaMismatch {
            url: client.url().to_owned(),
            theirs: health.schema_version,
            ours: SCHEMA_VERSION,
        });
    }
    let s = store.clone();
    let owned = alias.to_owned();
    let remote = blocking(move || Ok(s.remote(&owned)?))
        .await?
        .ok_or_else(|| SyncError::Store(selves_store::StoreError::NoSuchPeer(alias.to_owned())))?;
    let mut report = SyncReport::new(format!("memex {}", health.version), None, "memex");
    pull(
        &store,
        client,
        alias,
        remote.pulled_to,
        opts,
        progress,
        &counters,
        &mut report,
    )
    .await?;
    push(
        &store,
        client,
        alias,
        remote.pushed_to,
        opts,
        progress,
        &counters,
        &mut report,
    )
    .await?;
    report.durable_ms = started.elapsed().as_millis() as u64;
    counters.fill(&mut report, started);
    Ok(report)
}

struct Page {
    rows: Vec<selves_wire::Row>,
    refused: Vec<String>,
    next_cursor: i64,
    has_more: bool,
    seen: usize,
}

fn parse_page(bytes: &[u8]) -> Result<Page, String> {
    let raw: RawPullResponse = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let mut page = Page {
        rows: Vec::with_capacity(raw.rows.len()),
        refused: Vec::new(),
        next_cursor: raw.next_cursor,
        has_more: raw.has_more,
        seen: raw.rows.len(),
    };
    for r in &raw.rows {
        match memex::parse_row(r.get()) {
            Ok(row) => page.rows.push(row),
            Err(why) => page.refused.push(why),
        }
    }
    Ok(page)
}

#[allow(clippy::too_many_arguments)]
async fn pull(
    store: &Arc<Store>,
    client: &PeerClient,
    alias: &str,
    mut since: i64,
    opts: &SyncOptions,
    progress: &dyn Progress,
    counters: &Counters,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    loop {
        let bytes = retry(opts, progress, counters, || {
            client.memex_pull(since, MAX_PULL_LIMIT)
        })
        .await?;
        let url = client.url().to_owned();
        let page = blocking(move || {
            parse_page(&bytes).map_err(|detail| SyncError::Protocol { url, detail })
        })
        .await?;
        // An empty page, or a cursor that does not move, ends the pull.
        if page.seen == 0 || page.next_cursor <= since {
            return Ok(());
        }
        report.refused.extend(page.refused);
        let s = store.clone();
        let opts = CaptureOptions {
            stamp_origin: None,
            via: Some(alias.to_owned()),
            pulled_to: Some((alias.to_owned(), page.next_cursor)),
        };
        let rows = page.rows;
        let summary = blocking(move || Ok(s.capture(rows, &opts)?)).await?;
        report.pulled += summary.inserted + summary.updated;
        report.changed_rows += summary.inserted + summary.updated;
        report.duplicates += summary.unchanged + summary.stale;
        report
            .refused
            .extend(summary.refused.into_iter().map(|(_, why)| why));
        progress.pulled(page.seen as u64);
        since = page.next_cursor;
        if !page.has_more {
            return Ok(());
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn push(
    store: &Arc<Store>,
    client: &PeerClient,
    alias: &str,
    mut pushed_to: i64,
    opts: &SyncOptions,
    progress: &dyn Progress,
    counters: &Counters,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    // `--batch` caps the batch; halving after a refusal grows back to it.
    let max_batch = opts
        .batch_records
        .map_or(MAX_PUSH_ROWS, |b| (b as usize).clamp(1, MAX_PUSH_ROWS));
    let mut batch = max_batch;
    loop {
        let s = store.clone();
        let skip = alias.to_owned();
        let page =
            blocking(move || Ok(s.rows_since(pushed_to, batch, PUSH_BODY_TARGET, Some(&skip))?))
                .await?;
        if page.rows.is_empty() {
            // Only rows this memex node sent us: nothing to send, move on.
            if page.next_cursor > pushed_to {
                set_pushed_to(store, alias, page.next_cursor).await?;
                pushed_to = page.next_cursor;
            }
            if page.has_more {
                continue;
            }
            return Ok(());
        }
        let count = page.rows.len();
        let body = serde_json::to_vec(&memex::Push { rows: page.rows }).map_err(|e| {
            SyncError::Protocol {
                url: client.url().to_owned(),
                detail: e.to_string(),
            }
        })?;
        if body.len() > PUSH_BODY_MAX && count > 1 {
            batch = count / 2;
            continue;
        }
        match retry(opts, progress, counters, || client.memex_push(body.clone())).await {
            Ok(resp) => {
                report.pushed += resp.accepted;
                report.duplicates += resp.deduplicated;
                set_pushed_to(store, alias, page.next_cursor).await?;
                pushed_to = page.next_cursor;
                progress.pushed(count as u64);
                if !page.has_more {
                    return Ok(());
                }
                batch = (batch * 2).min(max_batch);
            }
            Err(SyncError::PayloadTooLarge { .. }) if count > 1 => {
                progress.waiting(
                    "the memex node refused a batch as too large; halving",
                    std::time::Duration::ZERO,
                );
                batch = count / 2;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn set_pushed_to(store: &Arc<Store>, alias: &str, cursor: i64) -> Result<(), SyncError> {
    let s = store.clone();
    let alias = alias.to_owned();
    blocking(move || Ok(s.set_pushed_to(&alias, cursor)?)).await
}
