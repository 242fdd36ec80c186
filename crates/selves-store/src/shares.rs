//! Shares in the store: which folders this node syncs, the current version
//! of every path in them, and paths held back. The share
//! engine (crate `selves-share`) decides what changes and does the disk
//! work; it hands the store a [`ShareChange`], committed here in one
//! transaction with the records it implies.

use std::path::PathBuf;

use rusqlite::{OptionalExtension, Transaction, params};
use selves_wire::file::{BlobHash, FileVersion, RelPath, VersionVector};
use selves_wire::native::Record;
use selves_wire::{Name, NodeId, StreamName};

use crate::log::{node_index, stream_index};
use crate::{Millis, Result, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShareMode {
    /// Send local changes and apply remote ones.
    TwoWay,
    /// Send local changes; never apply remote ones.
    SendOnly,
    /// Apply remote changes; never scan or send.
    ReceiveOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Every node's files at their own paths.
    Flat,
    /// Each sender's files under `<root>/<sender's name>/`.
    PerOrigin,
}

impl ShareMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ShareMode::TwoWay => "two-way",
            ShareMode::SendOnly => "send-only",
            ShareMode::ReceiveOnly => "receive-only",
        }
    }
    fn parse(s: &str) -> ShareMode {
        match s {
            "send-only" => ShareMode::SendOnly,
            "receive-only" => ShareMode::ReceiveOnly,
            _ => ShareMode::TwoWay,
        }
    }
    /// Whether this node scans the folder and sends what changed.
    pub fn sends(self) -> bool {
        self != ShareMode::ReceiveOnly
    }
    /// Whether this node writes what peers send into the folder.
    pub fn receives(self) -> bool {
        self != ShareMode::SendOnly
    }
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Flat => "flat",
            Layout::PerOrigin => "per-origin",
        }
    }
}

/// A share this node carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Share {
    pub name: Name,
    pub root: PathBuf,
    pub mode: ShareMode,
    pub layout: Layout,
    pub stream: StreamName,
    #[serde(skip)]
    pub(crate) idx: i64,
    #[serde(skip)]
    pub(crate) stream_idx: i64,
}

/// The file on disk as last seen matching a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Seen {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
}

/// The current version of one path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileEntry {
    /// The node whose files these are, in the per-origin layout.
    pub origin: Option<NodeId>,
    pub version: FileVersion,
    pub seen: Option<Seen>,
}

/// A path that is not synced, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Held {
    pub path: String,
    /// `secret`, `refused`, `symlink`, `twin`, `ignored`…
    pub kind: String,
    pub reason: String,
    pub since: Millis,
}

/// One record received from a peer, as the engine resolved it.
#[derive(Debug, Clone)]
pub enum Received {
    /// It now points at the current entry of this path.
    Path {
        origin: Option<NodeId>,
        path: RelPath,
    },
    /// Refused, with the reason.
    Void(String),
    /// Superseded: its content travels with a newer record.
    Omitted,
}

/// A received batch of a share, verified: what to store with its records.
#[derive(Debug, Clone, Default)]
pub struct Admitted {
    /// Records up to this seq are already held.
    pub head: u64,
    pub(crate) links: Vec<(selves_wire::sign::Digest, selves_wire::sign::Digest)>,
    pub(crate) sigs: Vec<selves_wire::sign::SeqSig>,
    pub(crate) legacy: u64,
}

/// Everything one engine step changes, committed in one transaction.
#[derive(Debug, Clone, Default)]
pub struct ShareChange {
    /// Records received from `node`, numbered from `start`, with the proof
    /// [`Store::admit_share`] checked.
    pub received: Option<(NodeId, u64, Vec<Received>, Admitted)>,
    /// Entries to store as the current version of their path.
    pub entries: Vec<FileEntry>,
    /// Paths whose stored entry is a new version made here: each gets a
    /// record in this node's own log.
    pub own: Vec<(Option<NodeId>, RelPath)>,
    /// Disk state seen for entries that did not otherwise change.
    pub seen: Vec<(Option<NodeId>, RelPath, Option<Seen>)>,
    pub held: Vec<Held>,
    /// Paths no longer held back.
    pub unheld: Vec<String>,
}

impl ShareChange {
    pub fn is_empty(&self) -> bool {
        self.received.is_none()
            && self.entries.is_empty()
            && self.own.is_empty()
            && self.seen.is_empty()
            && self.held.is_empty()
            && self.unheld.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShareCommit {
    /// Records received and stored (void ones included).
    pub accepted: u64,
    /// Records received that were already held.
    pub duplicates: u64,
    /// Records appended to this node's own log.
    pub own_records: u64,
    /// Records received that were refused (seq, reason).
    pub voided: Vec<(u64, String)>,
    /// Batches refused whole (not provably their author's, or a fork).
    pub refused: Vec<crate::chain::Refusal>,
}

/// The columns [`read_entry`] reads. The node id comes from a subquery,
/// not a join: a join on `f.origin` would let SQLite (built with STAT4)
/// propagate a bound `origin` into it and re-prepare the statement on
/// every call.
const FILE_COLUMNS: &str = "f.origin, f.path, f.vv, f.deleted, f.blob, f.size, f.mtime, \
    f.author, f.parent, f.append_from, f.seen_size, f.seen_mtime_ns, f.seen_ino, \
    (SELECT node_id FROM nodes WHERE id = f.origin)";

fn read_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<FileEntry>> {
    let path: String = r.get(1)?;
    let vv: String = r.get(2)?;
    let (Ok(path), Ok(vv)) = (
        RelPath::parse(&path),
        serde_json::from_str::<VersionVector>(&vv),
    ) else {
        // Stored values were validated when written.
        return Ok(None);
    };
    let hash = |v: Option<Vec<u8>>| v.map(|b| BlobHash(crate::unhex_blob::<32>(b)));
    let seen = match (
        r.get::<_, Option<i64>>(10)?,
        r.get::<_, Option<i64>>(11)?,
        r.get::<_, Option<i64>>(12)?,
    ) {
        (Some(size), Some(mtime_ns), Some(ino)) => Some(Seen {
            size: size as u64,
            mtime_ns,
            ino: ino as u64,
        }),
        _ => None,
    };
    let origin: i64 = r.get(0)?;
    Ok(Some(FileEntry {
        origin: if origin == 0 {
            None
        } else {
            r.get::<_, Option<String>>(13)?.and_then(|n| n.parse().ok())
        },
        version: FileVersion {
            path,
            vv,
            deleted: r.get(3)?,
            blob: hash(r.get(4)?),
            size: r.get::<_, i64>(5)? as u64,
            mtime: r.get(6)?,
            author: r.get(7)?,
            parent: hash(r.get(8)?),
            append_from: r.get::<_, Option<i64>>(9)?.map(|n| n as u64),
        },
        seen,
    }))
}

fn share_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<Share>> {
    let name: String = r.get(1)?;
    let stream: String = r.get(6)?;
    let (Ok(name), Ok(stream)) = (name.parse(), stream.parse()) else {
        return Ok(None);
    };
    Ok(Some(Share {
        idx: r.get(0)?,
        name,
        root: PathBuf::from(r.get::<_, String>(2)?),
        mode: ShareMode::parse(&r.get::<_, String>(3)?),
        layout: if r.get::<_, String>(4)? == "per-origin" {
            Layout::PerOrigin
        } else {
            Layout::Flat
        },
        stream_idx: r.get(5)?,
        stream,
    }))
}

const SHARE_COLUMNS: &str = "s.id, s.name, s.root, s.mode, s.layout, s.stream, st.name";

impl Store {
    /// Adds a share (or brings back a removed one of the same name and root).
    pub fn add_share(
        &self,
        name: &Name,
        root: PathBuf,
        mode: ShareMode,
        layout: Layout,
        now: Millis,
    ) -> Result<Share> {
        let stream: StreamName = format!("share:{name}")
            .parse()
            .expect("a name makes a stream");
        let root_text = root.to_string_lossy().into_owned();
        self.write(|tx| {
            let existing: Option<(String, Option<i64>)> = tx
                .query_row(
                    "SELECT root, removed_at FROM shares WHERE name = ?1",
                    [name.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match existing {
                Some((_, None)) => return Err(StoreError::ShareExists(name.clone())),
                Some((old_root, Some(_))) if old_root != root_text => {
                    return Err(StoreError::ShareRootChanged {
                        name: name.clone(),
                        old: old_root,
                    });
                }
                Some(_) => {
                    tx.execute(
                        "UPDATE shares SET removed_at = NULL, mode = ?2, layout = ?3 WHERE name = ?1",
                        params![name.as_str(), mode.as_str(), layout.as_str()],
                    )?;
                }
                None => {
                    let stream_idx = stream_index(tx, &stream)?;
                    tx.execute(
                        "INSERT INTO shares (name, root, mode, layout, stream, added_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![name.as_str(), root_text, mode.as_str(), layout.as_str(), stream_idx, now],
                    )?;
                }
            }
            Ok(())
        })?;
        self.share(name.as_str())?
            .ok_or_else(|| StoreError::NoSuchShare(name.to_string()))
    }

    /// Stops syncing a share. Its folder and records stay as they are.
    pub fn remove_share(&self, name: &str, now: Millis) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE shares SET removed_at = ?2 WHERE name = ?1 AND removed_at IS NULL",
                params![name, now],
            )? > 0)
        })
    }

    /// The shares this node carries, by name.
    pub fn shares(&self) -> Result<Vec<Share>> {
        let r = self.reader()?;
        let mut stmt = r.prepare_cached(&format!(
            "SELECT {SHARE_COLUMNS} FROM shares s JOIN streams st ON st.id = s.stream
             WHERE s.removed_at IS NULL ORDER BY s.name"
        ))?;
        let rows = stmt.query_map([], share_from_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.extend(row?);
        }
        Ok(out)
    }

    /// What each share holds now, to compare with a peer (`selves
    /// verify`): the live files of the flat tree, as an order-independent
    /// digest of their paths and contents. Two nodes whose trees hold the
    /// same files at the same paths have the same digest.
    pub fn share_digests(&self) -> Result<Vec<selves_wire::native::ShareDigest>> {
        let shares = self.shares()?;
        let r = self.reader()?;
        let mut stmt = r.prepare_cached(
            "SELECT path, blob FROM files WHERE share = ?1 AND origin = 0 AND deleted = 0",
        )?;
        let mut out = Vec::new();
        for share in shares {
            let mut acc = [0u8; 32];
            let mut files = 0u64;
            let mut rows = stmt.query([share.idx])?;
            while let Some(row) = rows.next()? {
                let mut h = selves_wire::domain_hasher!("selves share file v1");
                let path = row.get_ref(0)?.as_str()?;
                h.update(&(path.len() as u64).to_le_bytes());
                h.update(path.as_bytes());
                h.update(row.get_ref(1)?.as_blob_or_null()?.unwrap_or_default());
                for (a, b) in acc.iter_mut().zip(h.finalize().as_bytes()) {
                    *a ^= b;
                }
                files += 1;
            }
            let mut h = selves_wire::domain_hasher!("selves share digest v1");
            h.update(&acc);
            h.update(&files.to_le_bytes());
            out.push(selves_wire::native::ShareDigest {
                stream: share.stream.clone(),
                mode: share.mode.as_str().into(),
                layout: share.layout.as_str().into(),
                files,
                digest: selves_wire::hex(h.finalize().as_bytes()),
            });
        }
        Ok(out)
    }

    pub fn share(&self, name: &str) -> Result<Option<Share>> {
        Ok(self.shares()?.into_iter().find(|s| s.name.as_str() == name))
    }

    /// The share carried on `stream`, if any.
    pub fn share_of(&self, stream: &StreamName) -> Result<Option<Share>> {
        Ok(self.shares()?.into_iter().find(|s| &s.stream == stream))
    }

    /// Every entry of a share (deletions included).
    pub fn share_files(&self, share: &Share) -> Result<Vec<FileEntry>> {
        let r = self.reader()?;
        let mut stmt = r.prepare_cached(&format!(
            "SELECT {FILE_COLUMNS} FROM files f
             WHERE f.share = ?1 ORDER BY f.origin, f.path"
        ))?;
        let rows = stmt.query_map([share.idx], read_entry)?;
        let mut out = Vec::new();
        for row in rows {
            out.extend(row?);
        }
        Ok(out)
    }

    /// For a scan's fast path: each path of this node's own entries (origin
    /// 0), whether it is deleted, and the disk state last seen.
    pub fn share_seen(
        &self,
        share: &Share,
    ) -> Result<std::collections::HashMap<String, (bool, Option<Seen>)>> {
        let r = self.reader()?;
        let mut stmt = r.prepare_cached(
            "SELECT path, deleted, seen_size, seen_mtime_ns, seen_ino FROM files
             WHERE share = ?1 AND origin = 0",
        )?;
        let rows = stmt.query_map([share.idx], |r| {
            let seen = match (
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ) {
                (Some(size), Some(mtime_ns), Some(ino)) => Some(Seen {
                    size: size as u64,
                    mtime_ns,
                    ino: ino as u64,
                }),
                _ => None,
            };
            Ok((r.get::<_, String>(0)?, (r.get::<_, bool>(1)?, seen)))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The current entries of a share whose content is `hash`.
    pub fn share_files_with_blob(&self, share: &Share, hash: &BlobHash) -> Result<Vec<FileEntry>> {
        let r = self.reader()?;
        let mut stmt = r.prepare_cached(&format!(
            "SELECT {FILE_COLUMNS} FROM files f
             WHERE f.share = ?1 AND f.blob = ?2 AND f.deleted = 0 LIMIT 8"
        ))?;
        let rows = stmt.query_map(params![share.idx, &hash.0[..]], read_entry)?;
        let mut out = Vec::new();
        for row in rows {
            out.extend(row?);
        }
        Ok(out)
    }

    /// Whether an entry of the share holds `hash` or was made from it: the
    /// contents a peer of this share may fetch.
    pub fn share_references(&self, share: &Share, hash: &BlobHash) -> Result<bool> {
        let r = self.reader()?;
        Ok(r.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM files WHERE share = ?1 AND blob = ?2)
                 OR EXISTS (SELECT 1 FROM files WHERE share = ?1 AND parent = ?2)",
        )?
        .query_row(params![share.idx, &hash.0[..]], |r| r.get(0))?)
    }

    /// The entry of one path.
    pub fn share_file(
        &self,
        share: &Share,
        origin: Option<&NodeId>,
        path: &RelPath,
    ) -> Result<Option<FileEntry>> {
        let r = self.reader()?;
        let origin = match origin {
            None => 0,
            Some(id) => {
                let idx: Option<i64> = r
                    .prepare_cached("SELECT id FROM nodes WHERE node_id = ?1")?
                    .query_row([id.as_str()], |r| r.get(0))
                    .optional()?;
                match idx {
                    Some(i) => i,
                    None => return Ok(None),
                }
            }
        };
        Ok(r.prepare_cached(&format!(
            "SELECT {FILE_COLUMNS} FROM files f
                 WHERE f.share = ?1 AND f.origin = ?2 AND f.path = ?3"
        ))?
        .query_row(params![share.idx, origin, path.as_str()], read_entry)
        .optional()?
        .flatten())
    }

    /// Notes that share `name` stopped (with why), or, with `None`, that
    /// it synced again.
    pub fn note_share_state(&self, name: &str, stopped: Option<&str>, now: Millis) -> Result<()> {
        self.write(|tx| {
            match stopped {
                Some(why) => tx.execute(
                    "UPDATE shares SET stopped = ?2, stopped_at = COALESCE(
                        CASE WHEN stopped IS NULL THEN NULL ELSE stopped_at END, ?3)
                     WHERE name = ?1 AND removed_at IS NULL",
                    params![name, why, now],
                )?,
                None => tx.execute(
                    "UPDATE shares SET stopped = NULL, stopped_at = NULL
                     WHERE name = ?1 AND stopped IS NOT NULL",
                    [name],
                )?,
            };
            Ok(())
        })
    }

    /// Shares that stopped themselves: (name, why, since when).
    pub fn stopped_shares(&self) -> Result<Vec<(String, String, Millis)>> {
        let r = self.reader()?;
        let mut stmt = r.prepare(
            "SELECT name, stopped, stopped_at FROM shares
             WHERE stopped IS NOT NULL AND removed_at IS NULL ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Paths of a share that are held back.
    pub fn held(&self, share: &Share) -> Result<Vec<Held>> {
        let r = self.reader()?;
        let mut stmt = r.prepare_cached(
            "SELECT path, kind, reason, since FROM held WHERE share = ?1 ORDER BY path",
        )?;
        let rows = stmt.query_map([share.idx], |r| {
            Ok(Held {
                path: r.get(0)?,
                kind: r.get(1)?,
                reason: r.get(2)?,
                since: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The head of this share's stream for `node`.
    pub fn share_head(&self, share: &Share, node: &NodeId) -> Result<u64> {
        self.head(node, &share.stream)
    }

    /// Commits what one engine step changed, in one transaction: entries,
    /// received records (refusing a gap), own records, disk state and held
    /// paths.
    pub fn commit_share(&self, share: &Share, change: ShareChange) -> Result<ShareCommit> {
        self.write(|tx| {
            let mut out = ShareCommit::default();
            for entry in &change.entries {
                upsert_entry(tx, share, entry)?;
            }
            for (origin, path, seen) in &change.seen {
                let origin = origin_index(tx, origin.as_ref())?;
                tx.prepare_cached(
                    "UPDATE files SET seen_size = ?4, seen_mtime_ns = ?5, seen_ino = ?6
                     WHERE share = ?1 AND origin = ?2 AND path = ?3",
                )?
                .execute(params![
                    share.idx,
                    origin,
                    path.as_str(),
                    seen.map(|s| s.size as i64),
                    seen.map(|s| s.mtime_ns),
                    seen.map(|s| s.ino as i64),
                ])?;
            }
            if let Some((node, start, records, proof)) = &change.received {
                store_received(tx, share, node, *start, records, proof, &mut out)?;
            }
            if !change.own.is_empty() {
                let mut own = crate::log::OwnLog::open(tx, self, share.stream_idx)?;
                let mut done = std::collections::HashSet::new();
                for (origin, path) in &change.own {
                    if !done.insert((origin, path)) {
                        continue;
                    }
                    let id = file_id(tx, share, origin.as_ref(), path)?;
                    let Some(version) = Store::served_file(tx, id)? else {
                        continue;
                    };
                    let d = selves_wire::sign::record_digest(&version)
                        .expect("a file version has a digest");
                    own.append(tx, Some(id), &d, 512)?;
                    out.own_records += 1;
                }
                own.finish(tx)?;
            }
            for h in &change.held {
                tx.execute(
                    "INSERT INTO held (share, path, kind, reason, since) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (share, path) DO UPDATE SET kind = excluded.kind,
                        reason = excluded.reason",
                    params![share.idx, h.path, h.kind, h.reason, h.since],
                )?;
            }
            for path in &change.unheld {
                tx.execute(
                    "DELETE FROM held WHERE share = ?1 AND path = ?2",
                    params![share.idx, path],
                )?;
            }
            Ok(out)
        })
    }

    /// Every blob hash the current entries of all shares hold or were made
    /// from: what the blob store must keep.
    pub fn referenced_blobs(&self) -> Result<std::collections::HashSet<BlobHash>> {
        let r = self.reader()?;
        let mut stmt = r.prepare(
            "SELECT blob FROM files WHERE blob IS NOT NULL
             UNION SELECT parent FROM files WHERE parent IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = std::collections::HashSet::new();
        for row in rows {
            out.insert(BlobHash(crate::unhex_blob::<32>(row?)));
        }
        Ok(out)
    }

    /// The file version a share record serves: its path's current entry.
    pub(crate) fn served_file(conn: &rusqlite::Connection, target: i64) -> Result<Option<Record>> {
        let entry = conn
            .prepare_cached(&format!(
                "SELECT {FILE_COLUMNS} FROM files f WHERE f.id = ?1"
            ))?
            .query_row([target], read_entry)
            .optional()?
            .flatten();
        Ok(entry.map(|e| Record::File(Box::new(e.version))))
    }
}

fn origin_index(tx: &Transaction<'_>, origin: Option<&NodeId>) -> Result<i64> {
    match origin {
        None => Ok(0),
        Some(id) => node_index(tx, id, None),
    }
}

fn file_id(
    tx: &Transaction<'_>,
    share: &Share,
    origin: Option<&NodeId>,
    path: &RelPath,
) -> Result<i64> {
    let origin = origin_index(tx, origin)?;
    Ok(tx
        .prepare_cached("SELECT id FROM files WHERE share = ?1 AND origin = ?2 AND path = ?3")?
        .query_row(params![share.idx, origin, path.as_str()], |r| r.get(0))?)
}

fn upsert_entry(tx: &Transaction<'_>, share: &Share, entry: &FileEntry) -> Result<()> {
    let origin = origin_index(tx, entry.origin.as_ref())?;
    let v = &entry.version;
    let vv = serde_json::to_string(&v.vv).expect("a version vector serialises");
    tx.prepare_cached(
        "INSERT INTO files (share, origin, path, vv, deleted, blob, size, mtime, author, parent,
            append_from, seen_size, seen_mtime_ns, seen_ino)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (share, origin, path) DO UPDATE SET vv = excluded.vv,
            deleted = excluded.deleted, blob = excluded.blob, size = excluded.size,
            mtime = excluded.mtime, author = excluded.author, parent = excluded.parent,
            append_from = excluded.append_from, seen_size = excluded.seen_size,
            seen_mtime_ns = excluded.seen_mtime_ns, seen_ino = excluded.seen_ino",
    )?
    .execute(params![
        share.idx,
        origin,
        v.path.as_str(),
        vv,
        v.deleted,
        v.blob.as_ref().map(|h| &h.0[..]),
        v.size as i64,
        v.mtime,
        v.author,
        v.parent.as_ref().map(|h| &h.0[..]),
        v.append_from.map(|n| n as i64),
        entry.seen.map(|s| s.size as i64),
        entry.seen.map(|s| s.mtime_ns),
        entry.seen.map(|s| s.ino as i64),
    ])?;
    Ok(())
}

/// Stores records received from `node`, verified by
/// [`Store::admit_share`], after checking they still continue its log
/// here. Counts them in `out`.
#[allow(clippy::too_many_arguments)]
fn store_received(
    tx: &Transaction<'_>,
    share: &Share,
    node: &NodeId,
    start: u64,
    records: &[Received],
    proof: &Admitted,
    out: &mut ShareCommit,
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let end = start + records.len() as u64 - 1;
    let node_idx = node_index(tx, node, None)?;
    let head = crate::log::head_of(tx, node_idx, share.stream_idx)?;
    if start > head + 1 {
        return Err(StoreError::Gap {
            node: node.clone(),
            stream: share.stream.clone(),
            have: head,
            got: start,
        });
    }
    let sigs: std::collections::BTreeMap<u64, &selves_wire::sign::Signature> =
        proof.sigs.iter().map(|s| (s.seq, &s.sig)).collect();
    for (i, record) in records.iter().enumerate() {
        let seq = start + i as u64;
        if seq <= head {
            out.duplicates += 1;
            continue;
        }
        let (target, void) = match record {
            Received::Path { origin, path } => {
                (Some(file_id(tx, share, origin.as_ref(), path)?), None)
            }
            Received::Void(why) => {
                out.voided.push((seq, why.clone()));
                (None, Some(why.as_str()))
            }
            Received::Omitted => (None, None),
        };
        let (d, chain) = proof.links.get(i).ok_or_else(|| {
            StoreError::Integrity(format!("record {seq} of a share batch has no proof"))
        })?;
        tx.prepare_cached(crate::log::INSERT_RECORD)?
            .execute(params![
                node_idx,
                share.stream_idx,
                seq as i64,
                target,
                void,
                &d.0[..],
                &chain.0[..],
                sigs.get(&seq).map(|s| &s.0[..]),
            ])?;
        out.accepted += 1;
    }
    if end > head {
        crate::log::set_head(tx, node_idx, share.stream_idx, end)?;
        crate::chain::note_legacy(tx, node_idx, share.stream_idx, proof.legacy)?;
    }
    Ok(())
}

impl Store {
    /// Verifies a received batch of `share` before the engine applies it
    /// (see [`Store::admit`]), committing what that settles (a key bound,
    /// fork evidence, a withdrawn branch cut). `Err(refusal)` when the
    /// batch is refused; `Ok(None)` when nothing of it is to be applied.
    pub fn admit_share(
        &self,
        share: &Share,
        batch: &mut selves_wire::native::RecordBatch,
        now: Millis,
    ) -> Result<std::result::Result<Option<Admitted>, crate::chain::Refusal>> {
        self.write(|tx| {
            let mut summary = crate::ApplySummary::default();
            match self.admit(tx, batch, share.stream_idx, now, &mut summary)? {
                Some(v) => Ok(Ok(Some(Admitted {
                    head: v.head,
                    links: v.links,
                    sigs: v.sigs,
                    legacy: v.legacy,
                }))),
                None => match summary.refused.pop() {
                    Some(r) => Ok(Err(r)),
                    None => Ok(Ok(None)),
                },
            }
        })
    }
}
