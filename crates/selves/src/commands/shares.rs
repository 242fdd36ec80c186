//! `share add|list|remove` and `conflicts`: the folders this node syncs.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use selves_share::{Engine, ShareError};
use selves_store::{FileEntry, Held, Layout, Share, ShareMode, Store};
use selves_wire::Name;
use serde::Serialize;

use crate::home::Home;
use crate::output::{self, ago, now_ms};

#[derive(Subcommand)]
pub enum ShareCommand {
    /// Sync a folder as a share (with every peer that has a share of the same name)
    Add(AddArgs),
    /// The shares of this node [with their files]
    List(ListArgs),
    /// Stop syncing a share; its folder and files stay as they are
    Remove(RemoveArgs),
    /// Record what changed in the shares' folders now (sync does this first)
    Scan(ScanArgs),
}

#[derive(Args)]
pub struct ScanArgs {
    /// Only this share
    name: Option<Name>,
    /// Record the deletions even if more than half of a share's files are gone at once
    #[arg(long)]
    allow_mass_delete: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Send local changes and take the peers'
    TwoWay,
    /// Send local changes; never take the peers' (a spoke's session logs)
    SendOnly,
    /// Take the peers' changes; never send (a hub collecting session logs)
    ReceiveOnly,
}

#[derive(Clone, Copy, ValueEnum)]
enum LayoutArg {
    /// Every node's files at their own paths
    Flat,
    /// Each sender's files under <folder>/<sender's node name>/ (receive-only shares)
    PerOrigin,
}

#[derive(Args)]
pub struct AddArgs {
    /// The share's name: the same on every node that syncs it
    name: Name,
    /// The folder (created if missing)
    path: PathBuf,
    #[arg(long, value_enum, default_value = "two-way")]
    mode: Mode,
    #[arg(long, value_enum, default_value = "flat")]
    layout: LayoutArg,
}

#[derive(Args)]
pub struct ListArgs {
    /// List each share's files too
    #[arg(long)]
    files: bool,
    /// Only files from this node (its folder in a per-origin share, its
    /// last edits in a flat one)
    #[arg(long, value_name = "NODE")]
    origin: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RemoveArgs {
    name: Name,
}

#[derive(Args)]
pub struct ConflictsArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub fn share(home: Option<PathBuf>, cmd: ShareCommand) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    match cmd {
        ShareCommand::Add(a) => add(&home, &store, a),
        ShareCommand::List(a) => list(&store, a),
        ShareCommand::Scan(a) => {
            let engine = home.open_engine(&store)?;
            if let Some(name) = &a.name
                && store.share(name.as_str())?.is_none()
            {
                bail!("no share named {name} (see `selves share list`)");
            }
            let only = |s: &Share| a.name.as_ref().is_none_or(|n| n == &s.name);
            if scan_shares(&engine, &store, a.allow_mass_delete, only, true)? {
                Ok(())
            } else {
                Err(crate::output::Exit(crate::output::code::FAILED).into())
            }
        }
        ShareCommand::Remove(a) => {
            if !store.remove_share(a.name.as_str(), now_ms())? {
                bail!("no share named {} (see `selves share list`)", a.name);
            }
            println!(
                "share {} removed: it no longer syncs; its folder is untouched",
                a.name
            );
            Ok(())
        }
    }
}

fn add(home: &Home, store: &Arc<Store>, a: AddArgs) -> anyhow::Result<()> {
    let (mode, layout) = match (a.mode, a.layout) {
        (Mode::ReceiveOnly, LayoutArg::PerOrigin) => (ShareMode::ReceiveOnly, Layout::PerOrigin),
        (_, LayoutArg::PerOrigin) => {
            bail!(
                "--layout per-origin is for receive-only shares (a hub collecting what spokes send)"
            )
        }
        (Mode::TwoWay, _) => (ShareMode::TwoWay, Layout::Flat),
        (Mode::SendOnly, _) => (ShareMode::SendOnly, Layout::Flat),
        (Mode::ReceiveOnly, _) => (ShareMode::ReceiveOnly, Layout::Flat),
    };
    let created = !a.path.exists();
    if created {
        std::fs::create_dir_all(&a.path)
            .with_context(|| format!("cannot create {}", a.path.display()))?;
    }
    if !a.path.is_dir() {
        bail!("{} is not a folder", a.path.display());
    }
    let root = std::fs::canonicalize(&a.path)
        .with_context(|| format!("cannot resolve {}", a.path.display()))?;
    let home_dir = std::fs::canonicalize(&home.dir)?;
    if root.starts_with(&home_dir) || home_dir.starts_with(&root) {
        bail!(
            "{} overlaps this node's home {}: a share must not hold the node's own files",
            root.display(),
            home_dir.display()
        );
    }
    for other in store.shares()? {
        if root.starts_with(&other.root) || other.root.starts_with(&root) {
            bail!(
                "{} overlaps share {} ({}): a folder belongs to one share",
                root.display(),
                other.name,
                other.root.display()
            );
        }
    }
    let share = store.add_share(&a.name, root.clone(), mode, layout, now_ms())?;
    println!(
        "share {} ({}, {}) at {}{}",
        share.name,
        share.mode.as_str(),
        share.layout.as_str(),
        root.display(),
        if created { " (created)" } else { "" }
    );
    if share.mode.sends() {
        let engine = home.open_engine(store)?;
        let report = engine.scan(&share, false, now_ms())?;
        println!(
            "  {} files ready to sync{}",
            report.changed,
            if report.held > 0 {
                format!(", {} held back (see `selves conflicts`)", report.held)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct ShareListing {
    #[serde(flatten)]
    share: Share,
    files: usize,
    bytes: u64,
    held: usize,
    conflicts: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<Vec<FileListing>>,
}

#[derive(Serialize)]
struct FileListing {
    path: String,
    size: u64,
    /// The node that made this version.
    author: String,
    /// In a per-origin share, the node whose folder holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
    mtime_ms: i64,
    blob: String,
}

fn node_name(store: &Store, id: &selves_wire::NodeId) -> anyhow::Result<String> {
    Ok(store
        .known_nodes()?
        .into_iter()
        .find(|n| &n.id == id)
        .map_or_else(|| id.short().to_owned(), |n| n.name.to_string()))
}

fn list(store: &Arc<Store>, a: ListArgs) -> anyhow::Result<()> {
    let mut out = Vec::new();
    for share in store.shares()? {
        let entries: Vec<FileEntry> = store
            .share_files(&share)?
            .into_iter()
            .filter(|e| !e.version.deleted)
            .collect();
        let held = store.held(&share)?.len();
        let conflicts = entries.iter().filter(|e| is_conflict_copy(e)).count();
        let mut listed = Vec::new();
        for e in &entries {
            let origin = e.origin.as_ref().map(|o| node_name(store, o)).transpose()?;
            if let Some(want) = &a.origin {
                let matches = match &origin {
                    Some(o) => o == want,
                    None => &e.version.author == want,
                };
                if !matches {
                    continue;
                }
            }
            listed.push(FileListing {
                path: match &origin {
                    Some(o) => format!("{o}/{}", e.version.path),
                    None => e.version.path.to_string(),
                },
                size: e.version.size,
                author: e.version.author.clone(),
                origin,
                mtime_ms: e.version.mtime,
                blob: e.version.blob.map(|b| b.to_hex()).unwrap_or_default(),
            });
        }
        out.push(ShareListing {
            files: entries.len(),
            bytes: entries.iter().map(|e| e.version.size).sum(),
            held,
            conflicts,
            entries: (a.files || a.origin.is_some()).then_some(listed),
            share,
        });
    }
    if a.json {
        return output::print_json(&out);
    }
    if out.is_empty() {
        println!("no shares yet: `selves share add NAME FOLDER` adds one");
    }
    for s in &out {
        println!(
            "{} ({}, {}) {}: {} files, {}{}{}",
            s.share.name,
            s.share.mode.as_str(),
            s.share.layout.as_str(),
            s.share.root.display(),
            s.files,
            output::bytes(s.bytes),
            if s.conflicts > 0 {
                format!(", {} conflict copies", s.conflicts)
            } else {
                String::new()
            },
            if s.held > 0 {
                format!(", {} held back", s.held)
            } else {
                String::new()
            },
        );
        for f in s.entries.iter().flatten() {
            println!(
                "  {:<48} {:>10}  {} {}",
                f.path,
                output::bytes(f.size),
                f.author,
                ago(f.mtime_ms)
            );
        }
    }
    Ok(())
}

/// Conflict copies and held-back files, per share.
pub fn share_health(store: &Store) -> anyhow::Result<Vec<crate::health::ShareHealth>> {
    let mut out = Vec::new();
    let stopped = store.stopped_shares()?;
    for share in store.shares()? {
        let conflicts = store
            .share_files(&share)?
            .iter()
            .filter(|e| !e.version.deleted && is_conflict_copy(e))
            .count();
        out.push(crate::health::ShareHealth {
            share: share.name.to_string(),
            conflicts,
            held: store.held(&share)?.len(),
            stopped: stopped
                .iter()
                .find(|(name, _, _)| name == share.name.as_str())
                .map(|(_, why, at)| (why.clone(), *at)),
        });
    }
    Ok(out)
}

fn is_conflict_copy(e: &FileEntry) -> bool {
    e.version.path.file_name().contains(".conflict-")
}

#[derive(Serialize)]
struct ConflictListing {
    share: String,
    /// `conflict` (a copy kept beside its file) or a held-back kind
    /// (`secret`, `symlink`, `refused`, `twin`, …).
    kind: String,
    /// The file's full path on this machine (for a refused remote name:
    /// the name as received).
    path: String,
    reason: String,
    since_ms: i64,
}

pub fn conflicts(home: Option<PathBuf>, a: ConflictsArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    let mut out = Vec::new();
    for share in store.shares()? {
        for e in store.share_files(&share)? {
            if e.version.deleted || !is_conflict_copy(&e) {
                continue;
            }
            let rel = match &e.origin {
                Some(o) => format!("{}/{}", node_name(&store, o)?, e.version.path),
                None => e.version.path.to_string(),
            };
            out.push(ConflictListing {
                share: share.name.to_string(),
                kind: "conflict".into(),
                path: share.root.join(&rel).display().to_string(),
                reason: format!(
                    "a concurrent version by {}, kept beside the file",
                    e.version.author
                ),
                since_ms: e.version.mtime,
            });
        }
        for Held {
            path,
            kind,
            reason,
            since,
        } in store.held(&share)?
        {
            let shown = if kind == "refused" {
                path
            } else {
                share.root.join(&path).display().to_string()
            };
            out.push(ConflictListing {
                share: share.name.to_string(),
                kind,
                path: shown,
                reason,
                since_ms: since,
            });
        }
    }
    if a.json {
        return output::print_json(&out);
    }
    if out.is_empty() {
        println!("no conflicts and nothing held back");
    }
    for c in &out {
        println!(
            "{:<9} {}\n          {} ({})",
            c.kind,
            c.path,
            c.reason,
            ago(c.since_ms)
        );
    }
    Ok(())
}

/// Scans every share this node sends, before a sync. Prints what stopped
/// a share; returns `false` if any did.
pub fn scan_all(engine: &Engine, store: &Store, allow_mass_delete: bool) -> anyhow::Result<bool> {
    scan_shares(engine, store, allow_mass_delete, |_| true, false)
}

fn scan_shares(
    engine: &Engine,
    store: &Store,
    allow_mass_delete: bool,
    only: impl Fn(&Share) -> bool,
    verbose: bool,
) -> anyhow::Result<bool> {
    let mut ok = true;
    for share in store.shares()? {
        if !share.mode.sends() || !only(&share) {
            continue;
        }
        let scanned = engine.scan(&share, allow_mass_delete, now_ms());
        let stopped = match &scanned {
            Err(e @ (ShareError::RootMissing { .. } | ShareError::MassDelete { .. })) => {
                Some(e.to_string())
            }
            _ => None,
        };
        store.note_share_state(share.name.as_str(), stopped.as_deref(), now_ms())?;
        match scanned {
            Ok(report) => {
                if verbose {
                    println!(
                        "share {}: {} changed, {} deleted, {} appended, {} held back",
                        share.name, report.changed, report.deleted, report.appended, report.held
                    );
                }
                tracing::info!(share = %share.name, ?report, "scanned");
                if share.mode == ShareMode::SendOnly && !report.rewritten.is_empty() {
                    let n = report.rewritten.len();
                    eprintln!(
                        "note: share {}: {n} files changed other than by growing, so they are sent whole: {}{}",
                        share.name,
                        report
                            .rewritten
                            .iter()
                            .take(5)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", "),
                        if n > 5 { ", …" } else { "" }
                    );
                }
                if report.held > 0 {
                    eprintln!(
                        "note: share {}: {} files held back, not synced (see `selves conflicts`)",
                        share.name, report.held
                    );
                }
            }
            Err(e @ (ShareError::RootMissing { .. } | ShareError::MassDelete { .. })) => {
                eprintln!("share stopped: {e}");
                ok = false;
            }
            Err(e) => {
                eprintln!("share {}: scan failed: {e}", share.name);
                ok = false;
            }
        }
    }
    Ok(ok)
}
