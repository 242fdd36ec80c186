//! `sync` and `verify`: talking to peers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Args;
use selves_client::{PeerClient, SyncOptions, SyncReport};
use selves_store::{Attempt, Protocol, Remote, Store};
use serde::Serialize;

use crate::commands::peers::target;
use crate::home::Home;
use crate::output::{self, Exit, SyncBar, code, now_ms};

#[derive(Args)]
pub struct SyncArgs {
    /// The peer to sync with; may be left out when there is only one
    #[arg(conflicts_with = "all")]
    peer: Option<String>,
    /// Sync with every peer, one after the other
    #[arg(long)]
    all: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
    /// Most records per request [default: the peer's limits]
    #[arg(long, value_name = "N")]
    batch: Option<u32>,
    /// Tries per request when a failure may pass (network, server errors)
    #[arg(long, default_value_t = 5, value_name = "N")]
    attempts: u32,
    /// Send the deletions even if more than half of a share's files are
    /// gone at once (a share stops instead, by default)
    #[arg(long)]
    allow_mass_delete: bool,
}

#[derive(Serialize)]
struct PeerResult {
    peer: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<SyncReport>,
    /// When everything pulled was also searchable here (ms from the start).
    #[serde(skip_serializing_if = "Option::is_none")]
    searchable_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorReport>,
}

#[derive(Serialize)]
struct ErrorReport {
    class: &'static str,
    message: String,
}

/// The remotes a command means: the named one, all, or the only one.
fn chosen(store: &Store, peer: Option<String>, all: bool) -> anyhow::Result<Vec<Remote>> {
    let remotes = store.remotes()?;
    if all {
        if remotes.is_empty() {
            bail!("this node has no peers yet: `selves pair BLOB` adds one");
        }
        return Ok(remotes);
    }
    match peer {
        Some(alias) => remotes
            .into_iter()
            .find(|r| r.alias.as_str() == alias)
            .map(|r| vec![r])
            .with_context(|| format!("no peer named {alias} (see `selves peer list`)")),
        None => match remotes.len() {
            0 => bail!("this node has no peers yet: `selves pair BLOB` adds one"),
            1 => Ok(remotes),
            _ => bail!("which peer? name one, or pass --all (see `selves peer list`)"),
        },
    }
}

/// `selves sync NAME`, as another command's last step.
pub fn sync_named(home: Option<PathBuf>, peer: &str) -> anyhow::Result<()> {
    sync(
        home,
        SyncArgs {
            peer: Some(peer.to_owned()),
            all: false,
            json: false,
            batch: None,
            attempts: 5,
            allow_mass_delete: false,
        },
    )
}

pub fn sync(home: Option<PathBuf>, args: SyncArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    let remotes = chosen(&store, args.peer, args.all)?;
    if store.read_only() {
        // Nothing could be applied or noted: say why before trying.
        return Err(selves_store::StoreError::DiskFull(store.paths().db.clone()).into());
    }
    let engine = home.open_engine(&store)?;
    // What changed in the folders goes out in this round.
    let mut share_failed =
        !crate::commands::shares::scan_all(&engine, &store, args.allow_mass_delete)?;
    // This node's card goes out in this round if it is stale.
    if let Err(e) = crate::identity::refresh_card(&store) {
        tracing::warn!(error = %format!("{e:#}"), "cannot refresh this node's card");
    }
    let opts = SyncOptions {
        batch_records: args.batch,
        attempts: args.attempts.max(1),
        ..SyncOptions::default()
    };
    let rt = crate::runtime()?;
    let mut results = Vec::new();
    let mut first_failure = None;
    for remote in remotes {
        let result = sync_one(&rt, &store, &engine, &remote, &opts);
        share_failed |= result
            .0
            .report
            .as_ref()
            .is_some_and(|r| r.shares.iter().any(|s| s.error.is_some()));
        if !args.json {
            print_result(&result, share_failed);
        }
        if let (None, Some(code)) = (first_failure, result.1) {
            first_failure = Some(code);
        }
        results.push(result.0);
    }
    if args.json {
        output::print_json(&results)?;
    }
    // The identity page, as the daemon keeps it, for nodes synced by hand.
    match crate::identity::write_pages(&store, &engine) {
        Ok(pages) => {
            for why in pages.failed {
                tracing::warn!("cannot write SELVES.md in {why}");
            }
        }
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot write SELVES.md"),
    }
    if let Err(e) = engine.prune_blobs() {
        tracing::warn!(error = %e, "could not prune the blob store");
    }
    match first_failure {
        Some(code) => Err(Exit(code).into()),
        None if share_failed => Err(Exit(code::FAILED).into()),
        None => Ok(()),
    }
}

fn sync_one(
    rt: &tokio::runtime::Runtime,
    store: &Arc<Store>,
    engine: &Arc<selves_share::Engine>,
    remote: &Remote,
    opts: &SyncOptions,
) -> (PeerResult, Option<u8>) {
    let alias = remote.alias.to_string();
    let started = Instant::now();
    let bar = SyncBar::new(&alias);
    // Rows are indexed for search while they arrive, on a thread of their
    // own (the index is another file with its own lock), so they are
    // searchable about when they are durable rather than after.
    let indexing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let indexer = {
        let (store, indexing) = (store.clone(), indexing.clone());
        std::thread::spawn(move || {
            while indexing.load(std::sync::atomic::Ordering::Relaxed) {
                match store.index_step(selves_store::search::INDEX_CHUNK) {
                    Ok(0) => std::thread::park_timeout(std::time::Duration::from_millis(20)),
                    Ok(_) => {}
                    // The catch-up after the round reports it.
                    Err(_) => return,
                }
            }
        })
    };
    let outcome = rt.block_on(sync_peer(store, engine, remote, opts, &bar));
    indexing.store(false, std::sync::atomic::Ordering::Relaxed);
    indexer.thread().unpark();
    let _ = indexer.join();
    bar.finish();
    match outcome {
        Ok(report) => {
            // Make what arrived searchable before saying we are done.
            let searchable_ms = if report.changed_rows > 0 {
                match store.catch_up_index(|_| {}) {
                    Ok(_) => Some(started.elapsed().as_millis() as u64),
                    Err(e) => {
                        tracing::warn!(error = %e, "search indexing failed; `selves search` will retry");
                        None
                    }
                }
            } else {
                None
            };
            // Records refused for their proof are a failure to report,
            // however well the rest went.
            let refused = !report.refusals.is_empty() || !report.peer_refused.is_empty();
            (
                PeerResult {
                    peer: alias,
                    ok: !refused,
                    report: Some(report),
                    searchable_ms,
                    error: None,
                },
                refused.then_some(code::FAILED),
            )
        }
        Err(e) => {
            let code = output::sync_code(&e);
            (
                PeerResult {
                    peer: alias,
                    ok: false,
                    report: None,
                    searchable_ms: None,
                    error: Some(ErrorReport {
                        class: e.class(),
                        message: e.to_string(),
                    }),
                },
                Some(code),
            )
        }
    }
}

/// One sync round with a remote, in the protocol it speaks, recorded in
/// the remote's status (last attempt, success or failure and why).
pub(crate) async fn sync_peer(
    store: &Arc<Store>,
    engine: &Arc<selves_share::Engine>,
    remote: &Remote,
    opts: &SyncOptions,
    progress: &dyn selves_client::Progress,
) -> Result<SyncReport, selves_client::SyncError> {
    let alias = remote.alias.to_string();
    let outcome = match remote.protocol {
        Protocol::Selves => {
            let client = PeerClient::new(target(remote, store))?;
            selves_client::sync(store.clone(), engine, &client, opts, progress).await
        }
        Protocol::Memex => {
            let client = PeerClient::new(target(remote, store))?;
            selves_client::sync_memex(store.clone(), &client, &alias, opts, progress).await
        }
        Protocol::Medium => {
            // Git clones live in the home, beside the store.
            let home = store
                .paths()
                .db
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            selves_client::sync_remote(store.clone(), engine.clone(), remote, &home, progress).await
        }
    };
    let attempt = match &outcome {
        Ok(report) => Attempt::Success {
            node_id: report.node_id.clone(),
            node_name: report.node_id.as_ref().map(|_| report.peer.clone()),
            heads: report.peer_heads.clone(),
        },
        Err(e) => Attempt::Failure {
            class: e.class().to_owned(),
            message: e.to_string(),
        },
    };
    if let Err(e) = store.record_attempt(&alias, &attempt, now_ms()) {
        tracing::warn!(error = %e, "cannot record the sync attempt");
    }
    if let Ok(report) = &outcome {
        if let Err(e) = store.note_refusals(&alias, &report.refusals, now_ms()) {
            tracing::warn!(error = %e, "cannot record refused records");
        }
        // A share that stopped says so in status until it syncs again. A
        // sending share is cleared by its next good scan (a round that
        // moved nothing does not prove its folder is back).
        for sh in &report.shares {
            let sends = store
                .share(&sh.share)
                .ok()
                .flatten()
                .is_some_and(|s| s.mode.sends());
            if sh.error.is_none() && sends {
                continue;
            }
            if let Err(e) = store.note_share_state(&sh.share, sh.error.as_deref(), now_ms()) {
                tracing::warn!(error = %e, "cannot record a share's state");
            }
        }
    }
    outcome
}

/// `selves verify` of a remote: converged when this node applied every
/// segment the remote holds and the remote holds every record this node
/// does (memory and cards; shares do not travel through remotes yet).
fn verify_remote(home: &Home, store: &Store, remote: &Remote, json: bool) -> anyhow::Result<()> {
    let verdict = selves_client::remote::verify_remote(store, remote, &home.dir)?;
    if json {
        output::print_json(&serde_json::json!({
            "peer": remote.alias,
            "converged": verdict.converged(),
            "remote": verdict,
        }))?;
    } else if verdict.converged() {
        println!(
            "converged with remote {}: this node holds all it holds, and it all this node holds",
            remote.alias
        );
    } else {
        println!("NOT converged with remote {}:", remote.alias);
        if verdict.segments_not_applied > 0 {
            println!(
                "  it holds {} not applied here",
                output::count(verdict.segments_not_applied, "segment", "segments")
            );
        }
        for (node, stream, here, there) in &verdict.ahead_here {
            let node = node
                .parse::<selves_wire::NodeId>()
                .map_or(node.clone(), |n| {
                    store
                        .known_nodes()
                        .ok()
                        .and_then(|k| k.into_iter().find(|k| k.id == n))
                        .map_or_else(|| n.short().to_owned(), |k| k.name.to_string())
                });
            println!("  {node} {stream}: {here} records here, {there} there");
        }
        println!("  run `selves sync {}` to converge", remote.alias);
    }
    if verdict.converged() {
        Ok(())
    } else {
        Err(Exit(code::DIVERGED).into())
    }
}

/// `shares_stopped`: a share stopped before the round (its scan), so the
/// round cannot be called "in sync" even if nothing moved.
fn print_result((result, _): &(PeerResult, Option<u8>), shares_stopped: bool) {
    if let Some(r) = &result.report {
        if r.up_to_date() && shares_stopped {
            println!(
                "{}: memory in sync ({} ms), but a share stopped (above)",
                result.peer, r.elapsed_ms
            );
        } else if r.up_to_date() {
            println!("{}: already in sync ({} ms)", result.peer, r.elapsed_ms);
        } else {
            println!("{}: synced in {} ms", result.peer, r.elapsed_ms);
            if r.pulled + r.pushed > 0 {
                println!(
                    "  memory: pulled {}, pushed {} ({} changed here)",
                    output::count(r.pulled, "record", "records"),
                    r.pushed,
                    output::count(r.changed_rows, "row", "rows")
                );
            }
        }
        for sh in &r.shares {
            match &sh.error {
                Some(e) => eprintln!("{}: {e}", result.peer),
                None if sh.pulled + sh.pushed > 0 => println!(
                    "  share {}: pulled {} versions ({} contents, {}), pushed {} ({} contents, {})",
                    sh.share,
                    sh.pulled,
                    sh.blobs_in,
                    output::bytes(sh.blob_bytes_in),
                    sh.pushed,
                    sh.blobs_out,
                    output::bytes(sh.blob_bytes_out)
                ),
                None => {}
            }
        }
        for f in r.refusals.iter().take(10) {
            eprintln!(
                "warning: records {} {} from {} of node {} refused ({}): {}",
                f.stream,
                f.seq,
                result.peer,
                f.node.short(),
                f.kind.as_str(),
                f.reason
            );
        }
        for v in r.peer_refused.iter().take(10) {
            eprintln!(
                "warning: {} refused records {} {} of node {}: {}",
                result.peer,
                v.stream,
                v.seq,
                v.node.short(),
                v.reason
            );
        }
        for why in r.refused.iter().take(10) {
            eprintln!("note: a row from {} was refused: {why}", result.peer);
        }
        for v in r.voided.iter().take(10) {
            eprintln!(
                "note: record {} of {} {} was refused and kept as void: {}",
                v.seq,
                v.node.short(),
                v.stream,
                v.reason
            );
        }
    }
    if let Some(e) = &result.error {
        eprintln!("{}: sync failed ({}): {}", result.peer, e.class, e.message);
    }
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The peer to compare with; may be left out when there is only one
    peer: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Verdict {
    peer: String,
    converged: bool,
    here: selves_wire::native::MemoryDigest,
    there: selves_wire::native::MemoryDigest,
    /// Heads that differ: (node, stream, here, there).
    differing_heads: Vec<HeadDiff>,
    /// Streams the peer holds that this node does not carry (its shares
    /// not added here), left out of the comparison.
    skipped: Vec<String>,
    /// The trees of the shares both carry, where both hold one whole tree
    /// (flat, and neither side send-only).
    shares: Vec<ShareDiff>,
}

#[derive(Serialize)]
struct ShareDiff {
    stream: String,
    files_here: u64,
    files_there: u64,
    same: bool,
}

#[derive(Serialize)]
struct HeadDiff {
    node: String,
    stream: String,
    here: u64,
    there: u64,
    /// The same number of records on two branches.
    fork: bool,
}

pub fn verify(home: Option<PathBuf>, args: VerifyArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    let remote = chosen(&store, args.peer, false)?.remove(0);
    if remote.protocol == Protocol::Medium {
        return verify_remote(&home, &store, &remote, args.json);
    }
    if remote.protocol == Protocol::Memex {
        bail!(
            "{} is a memex node: memex has no digest to compare; `selves sync {}` reports what moved",
            remote.alias,
            remote.alias
        );
    }
    let client = PeerClient::new(target(&remote, &store))?;
    let rt = crate::runtime()?;
    // Right after a big sync the peer may ask us to wait (429): do.
    let theirs = rt.block_on(selves_client::digest(
        &client,
        &SyncOptions::default(),
        &selves_client::NoProgress,
    ))?;
    let (our_heads, ours) = store.digest()?;
    let names = store.known_nodes()?;
    let name_of = |id: &selves_wire::NodeId| {
        names
            .iter()
            .find(|n| &n.id == id)
            .map_or_else(|| id.short().to_owned(), |n| n.name.to_string())
    };
    // Node cards are not compared: a node refreshes its own now and then
    // (HEARTBEAT), and they are not memory. A share this node does not
    // carry is skipped, and said to be: syncing cannot bring it here.
    let carried = store.streams()?;
    let skipped: Vec<String> = theirs
        .heads
        .iter()
        .filter(|h| h.stream.is_share() && !carried.contains(&h.stream))
        .map(|h| h.stream.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    type Side = (u64, Option<selves_wire::sign::Digest>);
    let mut heads: BTreeMap<(String, String), (Side, Side)> = BTreeMap::new();
    for h in our_heads.iter().filter(|h| !h.stream.is_nodes()) {
        heads
            .entry((name_of(&h.node), h.stream.to_string()))
            .or_default()
            .0 = (h.seq, h.chain);
    }
    for h in theirs
        .heads
        .iter()
        .filter(|h| !h.stream.is_nodes() && carried.contains(&h.stream))
    {
        heads
            .entry((name_of(&h.node), h.stream.to_string()))
            .or_default()
            .1 = (h.seq, h.chain);
    }
    let differing: Vec<HeadDiff> = heads
        .into_iter()
        .filter(|(_, (a, b))| {
            // The same seq on another branch is a fork, as different as
            // can be (when both sides say where their chain stands).
            a.0 != b.0 || (a.1.is_some() && b.1.is_some() && a.1 != b.1)
        })
        .map(|((node, stream), (here, there))| HeadDiff {
            node,
            stream,
            here: here.0,
            there: there.0,
            fork: here.0 == there.0,
        })
        .collect();
    // Equal logs should give equal trees; compared, as a folder's state
    // is what the user sees. Only whole trees compare: a send-only copy
    // holds only its own files, a per-origin one each sender's apart.
    let whole = |d: &&selves_wire::native::ShareDigest| d.layout == "flat" && d.mode != "send-only";
    let share_diffs: Vec<ShareDiff> = store
        .share_digests()?
        .iter()
        .filter(whole)
        .filter_map(|here| {
            let there = theirs
                .shares
                .iter()
                .filter(whole)
                .find(|t| t.stream == here.stream)?;
            Some(ShareDiff {
                stream: here.stream.to_string(),
                files_here: here.files,
                files_there: there.files,
                same: here.digest == there.digest,
            })
        })
        .collect();
    let verdict = Verdict {
        peer: remote.alias.to_string(),
        converged: differing.is_empty()
            && ours == theirs.memory
            && share_diffs.iter().all(|d| d.same),
        here: ours,
        there: theirs.memory,
        differing_heads: differing,
        skipped,
        shares: share_diffs,
    };
    if args.json {
        output::print_json(&verdict)?;
    } else if verdict.converged {
        println!(
            "converged with {}: {} rows in {} conversations, digest {}",
            verdict.peer,
            verdict.here.rows,
            verdict.here.conversations,
            &verdict.here.digest[..16]
        );
        for d in &verdict.shares {
            println!(
                "  {}: the same {}",
                d.stream,
                output::count(d.files_here, "file", "files")
            );
        }
    } else {
        println!("NOT converged with {}:", verdict.peer);
        for d in &verdict.differing_heads {
            if d.fork {
                println!(
                    "  {} {}: {} records on each side, but on two branches (a fork: see `selves status`)",
                    d.node, d.stream, d.here
                );
            } else {
                println!(
                    "  {} {}: {} records here, {} there",
                    d.node, d.stream, d.here, d.there
                );
            }
        }
        println!(
            "  here:  {} rows, {} conversations, digest {}",
            verdict.here.rows,
            verdict.here.conversations,
            &verdict.here.digest[..16]
        );
        println!(
            "  there: {} rows, {} conversations, digest {}",
            verdict.there.rows,
            verdict.there.conversations,
            &verdict.there.digest[..16]
        );
        for d in verdict.shares.iter().filter(|d| !d.same) {
            println!(
                "  {}: the trees differ ({} here, {} there)",
                d.stream,
                output::count(d.files_here, "file", "files"),
                output::count(d.files_there, "file", "files")
            );
        }
        // What a sync can settle, and what it cannot.
        let share_only_here = |d: &HeadDiff| d.stream.starts_with("share:") && d.there == 0;
        if verdict.differing_heads.is_empty() {
            println!(
                "  the same records gave different state: run `selves check` on both nodes and report this"
            );
        } else if verdict
            .differing_heads
            .iter()
            .any(|d| !d.fork && !share_only_here(d))
        {
            println!("  run `selves sync {}` to converge", verdict.peer);
        }
        for d in verdict
            .differing_heads
            .iter()
            .filter(|d| share_only_here(d))
        {
            println!(
                "  {}: if {} has no such share, this is expected (`selves share add` there to sync it)",
                d.stream, verdict.peer
            );
        }
    }
    if !args.json && !verdict.skipped.is_empty() {
        println!(
            "  skipped (not carried here): {}",
            verdict.skipped.join(", ")
        );
    }
    if verdict.converged {
        Ok(())
    } else {
        Err(Exit(code::DIVERGED).into())
    }
}
