//! The share engine: captures what changed in a share's folder as versions
//! in this node's log ([`Engine::scan`]), and writes what peers send into
//! the folder ([`Engine::apply`]), resolving concurrent versions the same way
//! on every node (docs/shares.md):
//!
//! - dominated: ignored; dominating: taken;
//! - concurrent, same content: kept, version vectors joined;
//! - concurrent delete and modify: the modification wins;
//! - concurrent text edits of one parent: three-way merged against it;
//! - otherwise: the winner (greater `(mtime, author, blob)`) stays at the
//!   path and the loser is written beside it as a conflict copy.
//!
//! Every outcome carries the join of the two version vectors and fields
//! that depend only on the two versions (and their common parent's
//! content, which any node that lacks it fetches first), so every node
//! reaches the same files.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use selves_store::{
    FileEntry, Held, Layout, Millis, Received, Seen, Share, ShareChange, ShareCommit, Store,
    StoreError,
};
use selves_wire::file::{BlobHash, BlobWant, Causality, FileVersion, RelPath, VersionVector};
use selves_wire::native::{Record, RecordBatch};
use selves_wire::{Name, NodeId};

use crate::blobs::{BlobError, BlobReader, Blobs};
use crate::fsops::{FsError, Root, WriteBatch};
use crate::merge::{MAX_MERGE_BYTES, is_text, merge3};
use crate::secrets::{OVERLAP, Scanner};
use crate::walk::walk;

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error(
        "share {share}: its folder {root} is missing. Nothing was deleted anywhere; restore the folder, or remove the share (`selves share remove {share}`)"
    )]
    RootMissing { share: Name, root: PathBuf },
    #[error(
        "share {share}: {gone} of its {live} files are gone at once, so this looks like an accident and no deletion was sent. If you meant it, sync again with --allow-mass-delete"
    )]
    MassDelete {
        share: Name,
        gone: usize,
        live: usize,
    },
    #[error("share {share} is send-only here: it does not take changes from peers")]
    SendOnly { share: Name },
    #[error("the content {0} is needed but not here yet")]
    MissingBlob(BlobHash),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("share lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What [`Engine::write_generated`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generated {
    Unchanged,
    /// Left as it is for now: someone's own file, changed in the last two
    /// seconds (it may be half written). Try again shortly.
    Later,
    /// Written; a file there that selves had not generated was kept at
    /// `kept` first.
    Written {
        kept: Option<RelPath>,
    },
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScanReport {
    /// New or changed files captured as versions.
    pub changed: u64,
    /// Files gone, captured as deletions.
    pub deleted: u64,
    /// Files appended to (only their new bytes will travel).
    pub appended: u64,
    /// Files held back (secrets, symlinks, names that cannot sync).
    pub held: u64,
    /// Files that changed other than by growing: sent whole. (Notable in
    /// a log folder, where files only grow.)
    pub rewritten: Vec<String>,
    /// Temporary files left by an interrupted write, removed.
    pub cleaned: u64,
}

pub struct Engine {
    store: Arc<Store>,
    blobs: Blobs,
    locks: PathBuf,
    /// Shares whose leftover temporary files this process removed.
    cleaned: std::sync::Mutex<HashSet<Name>>,
}

/// Holds a share's lock: one engine at a time per share, across processes.
struct ShareLock(File);

impl Drop for ShareLock {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.0, rustix::fs::FlockOperation::Unlock);
    }
}

impl Engine {
    /// An engine over `store`, with its blob store and locks in `home`.
    pub fn new(store: Arc<Store>, home: &Path) -> Result<Engine, ShareError> {
        let blobs = Blobs::open(&home.join("blobs"))?;
        let locks = home.join("locks");
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .recursive(true)
            .create(&locks)
            .map_err(|source| ShareError::Lock {
                path: locks.clone(),
                source,
            })?;
        Ok(Engine {
            store,
            blobs,
            locks,
            cleaned: Default::default(),
        })
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    fn lock(&self, share: &Share) -> Result<ShareLock, ShareError> {
        let path = self.locks.join(format!("share-{}.lock", share.name));
        let lock_err = |source| ShareError::Lock {
            path: path.clone(),
            source,
        };
        let file = std::os::unix::fs::OpenOptionsExt::mode(&mut std::fs::OpenOptions::new(), 0o600)
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(lock_err)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| lock_err(e.into()))?;
        Ok(ShareLock(file))
    }

    /// Notes that a share's leftover temporary files were removed; `true`
    /// the first time.
    fn cleaned_temps(&self, share: &Share) -> bool {
        self.cleaned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(share.name.clone())
    }

    fn me(&self) -> (&NodeId, &Name) {
        let me = self.store.me();
        (&me.id, &me.name)
    }

    /// Writes a file the scan never records (one that is generated on
    /// every node, such as `SELVES.md`), under the share's lock so no scan
    /// or apply runs meanwhile, and only if its content differs. A file
    /// already there that does not start with `header` was not generated:
    /// it is copied to `keep_as` (or `keep_as` numbered, if taken) first,
    /// so nothing is lost.
    pub fn write_generated(
        &self,
        share: &Share,
        path: &RelPath,
        content: &[u8],
        header: &[u8],
        keep_as: &RelPath,
    ) -> Result<Generated, ShareError> {
        let _lock = self.lock(share)?;
        let root = Root::open(&share.root).map_err(|e| self.root_error(share, e))?;
        // Only as much is read as decides: the file is the page, or it
        // starts with the header, or it is someone's own file.
        let limit = content.len().max(header.len()) as u64 + 1;
        let head = match root.open_read(path)? {
            Some(f) => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::Read::take(f, limit), &mut bytes)
                    .map_err(|e| FsError::io(path, e))?;
                Some(bytes)
            }
            None => None,
        };
        let mut kept = None;
        // Someone's own file changed in the last two seconds may be half
        // written (an editor that truncates, then writes): it is left for
        // the next pass, so what is kept is what they wrote.
        let fresh = || -> Result<bool, ShareError> {
            Ok(root.stat(path)?.is_some_and(|seen| {
                let now_ns = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as i64);
                now_ns - seen.mtime_ns < 2_000_000_000
            }))
        };
        match head {
            Some(bytes) if bytes == content => return Ok(Generated::Unchanged),
            Some(bytes) if !bytes.starts_with(header) && fresh()? => {
                return Ok(Generated::Later);
            }
            // An empty file holds nothing to keep: it is simply replaced.
            Some(bytes) if bytes.is_empty() => {}
            Some(bytes) if !bytes.starts_with(header) => {
                let mut target = keep_as.clone();
                let mut n = 1;
                while root.stat(&target)?.is_some() {
                    n += 1;
                    let numbered = match keep_as.as_str().rsplit_once('.') {
                        Some((stem, ext)) => format!("{stem}-{n}.{ext}"),
                        None => format!("{}-{n}", keep_as.as_str()),
                    };
                    target = RelPath::parse(&numbered)
                        .map_err(|e| FsError::io(keep_as, std::io::Error::other(e.to_string())))?;
                }
                // Copied whole, streaming, before the page replaces it.
                if let Some(mut from) = root.open_read(path)? {
                    root.write(&target, |f| std::io::copy(&mut from, f).map(drop))?;
                    kept = Some(target);
                }
            }
            _ => {}
        }
        root.write(path, |f| f.write_all(content))?;
        Ok(Generated::Written { kept })
    }

    /// Captures what changed in a share's folder since the last scan.
    pub fn scan(
        &self,
        share: &Share,
        allow_mass_delete: bool,
        now: Millis,
    ) -> Result<ScanReport, ShareError> {
        let mut report = ScanReport::default();
        let _lock = self.lock(share)?;
        let started = std::time::Instant::now();
        let walked = walk(&share.root).map_err(|e| self.root_error(share, e))?;
        let walk_ms = started.elapsed().as_secs_f64() * 1e3;
        // Under the lock no write is in progress: any temporary file is
        // left over from one that was cut off.
        report.cleaned = remove_temps(&walked.temps);
        self.cleaned_temps(share);
        if !share.mode.sends() {
            return Ok(report);
        }
        let root = Root::open(&share.root).map_err(|e| self.root_error(share, e))?;
        // What each path looked like on disk when last seen: most files
        // still look so, and are not read at all.
        let known = self.store.share_seen(share)?;
        let load_ms = started.elapsed().as_secs_f64() * 1e3 - walk_ms;
        let previously_held: HashSet<String> = self
            .store
            .held(share)?
            .into_iter()
            .filter(|h| h.kind != "refused")
            .map(|h| h.path)
            .collect();
        let mut change = ShareChange::default();
        let mut held_now = HashSet::new();
        let mut found = HashSet::new();
        for f in &walked.files {
            found.insert(f.path.as_str());
            let unchanged = known
                .get(f.path.as_str())
                .is_some_and(|(deleted, seen)| !deleted && *seen == Some(f.seen));
            if unchanged && !previously_held.contains(f.path.as_str()) {
                continue;
            }
            let entry = self.store.share_file(share, None, &f.path)?;
            let entry = entry.as_ref();
            let Some(read) = self.read_local(&root, &f.path, entry)? else {
                continue;
            };
            if let Some(what) = read.secret {
                held_now.insert(f.path.to_string());
                change.held.push(Held {
                    path: f.path.to_string(),
                    kind: "secret".into(),
                    reason: format!("it looks like it holds {what}, so it is not synced"),
                    since: now,
                });
                continue;
            }
            if let Some(e) =
                entry.filter(|e| !e.version.deleted && e.version.blob == Some(read.hash))
            {
                // Touched, same content.
                change
                    .seen
                    .push((None, e.version.path.clone(), Some(read.seen)));
                continue;
            }
            let version = self.local_version(&f.path, entry, &read);
            if version.append_from.is_some() {
                report.appended += 1;
            } else if entry.is_some_and(|e| !e.version.deleted) {
                report.rewritten.push(f.path.to_string());
            }
            if let Some(text) = &read.text {
                self.blobs.put_bytes(&read.hash, text)?;
            }
            change.entries.push(FileEntry {
                origin: None,
                version,
                seen: Some(read.seen),
            });
            change.own.push((None, f.path.clone()));
            report.changed += 1;
        }
        // Vanished files, unless they only stopped being walked (now
        // ignored): those still exist and are left alone.
        let live = known.values().filter(|(deleted, _)| !deleted).count();
        let mut gone = Vec::new();
        for (path, _) in known.iter().filter(|(_, (deleted, _))| !deleted) {
            if found.contains(path.as_str()) || held_now.contains(path) {
                continue;
            }
            let Ok(path) = RelPath::parse(path) else {
                continue;
            };
            // Gone, or replaced by a folder, or under a folder replaced
            // by a file: either way no longer this file.
            if let Ok(None) | Err(FsError::IsADirectory { .. } | FsError::NotADirectory { .. }) =
                root.stat(&path)
            {
                gone.extend(self.store.share_file(share, None, &path)?);
            }
        }
        if !allow_mass_delete && gone.len() >= 3 && gone.len() * 2 > live {
            return Err(ShareError::MassDelete {
                share: share.name.clone(),
                gone: gone.len(),
                live,
            });
        }
        let (me, name) = self.me();
        // Deletions go first in the log: a peer applying in order removes
        // `a.md` before it makes the folder `a.md/`, and empties `dir/`
        // before it writes the file `dir`.
        let (mut entries, mut own) = (Vec::new(), Vec::new());
        for e in gone {
            entries.push(FileEntry {
                origin: None,
                version: FileVersion {
                    path: e.version.path.clone(),
                    vv: e.version.vv.bumped(me),
                    deleted: true,
                    blob: None,
                    size: 0,
                    mtime: now,
                    author: name.to_string(),
                    parent: e.version.blob,
                    append_from: None,
                },
                seen: None,
            });
            own.push((None, e.version.path.clone()));
            report.deleted += 1;
        }
        change.entries.splice(0..0, entries);
        change.own.splice(0..0, own);
        for s in walked.skipped {
            held_now.insert(s.path.clone());
            change.held.push(Held {
                path: s.path,
                kind: s.kind.into(),
                reason: s.reason,
                since: now,
            });
        }
        report.held = held_now.len() as u64;
        change.unheld = previously_held
            .into_iter()
            .filter(|p| !held_now.contains(p))
            .collect();
        // A held path keeps no stale "held" row once it is synced again.
        tracing::debug!(
            share = %share.name,
            files = walked.files.len(),
            walk_ms,
            load_ms,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "scan"
        );
        if !change.is_empty() {
            self.store.commit_share(share, change)?;
        }
        Ok(report)
    }

    fn root_error(&self, share: &Share, e: FsError) -> ShareError {
        match e {
            FsError::RootMissing(root) => ShareError::RootMissing {
                share: share.name.clone(),
                root,
            },
            other => other.into(),
        }
    }

    /// A new version of `path` made here from what was read.
    fn local_version(
        &self,
        path: &RelPath,
        entry: Option<&FileEntry>,
        read: &LocalRead,
    ) -> FileVersion {
        let (me, name) = self.me();
        let previous = entry.filter(|e| !e.version.deleted);
        FileVersion {
            path: path.clone(),
            vv: entry
                .map_or_else(VersionVector::default, |e| e.version.vv.clone())
                .bumped(me),
            deleted: false,
            blob: Some(read.hash),
            size: read.seen.size,
            mtime: read.seen.mtime_ns / 1_000_000,
            author: name.to_string(),
            parent: previous.and_then(|e| e.version.blob),
            append_from: read.appended_to,
        }
    }

    /// Reads a local file: its hash, whether it only grew past `entry`'s
    /// content, whether it holds a credential (all of it is looked at, or
    /// only what was appended to content already sent, with an overlap)
    /// and, if it is small text, all of it. `None` if it vanished meanwhile.
    fn read_local(
        &self,
        root: &Root,
        path: &RelPath,
        entry: Option<&FileEntry>,
    ) -> Result<Option<LocalRead>, ShareError> {
        let Some(mut file) = root.open_read(path)? else {
            return Ok(None);
        };
        let io = |e: std::io::Error| FsError::Io {
            path: path.to_string(),
            source: e,
        };
        let st = rustix::fs::fstat(&file).map_err(|e| io(e.into()))?;
        let seen = crate::fsops::seen_of(&st);
        // The content this may extend.
        let prefix = entry
            .filter(|e| !e.version.deleted && e.version.size > 0 && e.version.size < seen.size)
            .and_then(|e| e.version.blob.map(|b| (b, e.version.size)));
        // Content already sent was scanned when it was: if this only
        // extends it, the scan starts OVERLAP bytes before its end.
        let scan_from = prefix.map_or(0, |(_, len)| len.saturating_sub(OVERLAP as u64));
        let mut secrets = Scanner::default();
        let mut whole = blake3::Hasher::new();
        let mut head = blake3::Hasher::new();
        let mut keep = Vec::new();
        let mut read = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            whole.update(chunk);
            if let Some((_, len)) = prefix
                && read < len
            {
                let take = ((len - read) as usize).min(n);
                head.update(&chunk[..take]);
            }
            let end = read + n as u64;
            if end > scan_from {
                secrets.feed(&chunk[scan_from.saturating_sub(read) as usize..]);
            }
            if end <= MAX_MERGE_BYTES as u64 {
                keep.extend_from_slice(chunk);
            }
            read = end;
        }
        let hash = BlobHash(*whole.finalize().as_bytes());
        let appended_to = prefix
            .filter(|(blob, _)| BlobHash(*head.finalize().as_bytes()) == *blob)
            .map(|(_, len)| len);
        let mut secret = secrets.found();
        if secret.is_none() && scan_from > 0 && appended_to.is_none() {
            // Not an append after all: look at the start too.
            let mut start = Scanner::default();
            file.rewind().map_err(io)?;
            let mut head = (&mut file).take(scan_from + OVERLAP as u64);
            loop {
                let n = head.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                start.feed(&buf[..n]);
            }
            secret = start.found();
        }
        let text = (read <= MAX_MERGE_BYTES as u64 && is_text(&keep)).then_some(keep);
        Ok(Some(LocalRead {
            hash,
            seen: Seen { size: read, ..seen },
            appended_to,
            secret,
            text,
        }))
    }

    /// Where an entry lives on disk, relative to the share's root.
    fn disk_path(
        &self,
        share: &Share,
        origin: Option<&NodeId>,
        path: &RelPath,
    ) -> Result<RelPath, ShareError> {
        match (share.layout, origin) {
            (Layout::PerOrigin, Some(node)) => {
                let name = self
                    .store
                    .known_nodes()?
                    .into_iter()
                    .find(|n| &n.id == node)
                    .map(|n| n.name)
                    .unwrap_or_else(|| {
                        format!("node-{}", node.short())
                            .parse()
                            .expect("valid name")
                    });
                Ok(path.under(&name))
            }
            _ => Ok(path.clone()),
        }
    }

    /// The blobs this node lacks to apply `batch`: the contents of new
    /// versions (only the new bytes of an appended file it holds), and the
    /// common parent of concurrent text edits it would merge.
    pub fn wants(&self, share: &Share, batch: &RecordBatch) -> Result<Vec<BlobWant>, ShareError> {
        let mut out = Vec::new();
        let mut seen_hashes = HashSet::new();
        let origin = self.origin_for(share, &batch.node);
        for record in &batch.records {
            let Record::File(v) = record else { continue };
            let current = self.store.share_file(share, origin.as_ref(), &v.path)?;
            if let Some(c) = &current {
                match v.vv.compare(&c.version.vv) {
                    Causality::Equal | Causality::Dominated => continue,
                    Causality::Concurrent => {
                        let small = v.size <= MAX_MERGE_BYTES as u64
                            && c.version.size <= MAX_MERGE_BYTES as u64;
                        if let (Some(p), Some(cp)) = (v.parent, c.version.parent)
                            && p == cp
                            && small
                            && !c.version.deleted
                            && !v.deleted
                            && !self.blobs.has(&p, 0)
                            && seen_hashes.insert((p, 0))
                        {
                            out.push(BlobWant { hash: p, from: 0 });
                        }
                    }
                    Causality::Dominates => {}
                }
            }
            let Some(hash) = v.blob else { continue };
            if self.blobs.has(&hash, 0) || self.local_copy(share, &hash)?.is_some() {
                continue;
            }
            // An appended file: the bytes past what this node holds.
            let from = match (&current, v.append_from, v.parent) {
                (Some(c), Some(from), Some(parent))
                    if !c.version.deleted
                        && c.version.blob == Some(parent)
                        && c.version.size == from =>
                {
                    from
                }
                _ => 0,
            };
            if !self.blobs.has(&hash, from) && seen_hashes.insert((hash, from)) {
                out.push(BlobWant { hash, from });
            }
        }
        Ok(out)
    }

    fn origin_for(&self, share: &Share, node: &NodeId) -> Option<NodeId> {
        (share.layout == Layout::PerOrigin).then(|| node.clone())
    }

    /// A file in the share whose current content is `hash`, unchanged on
    /// disk since it was seen (a rename or copy needs no transfer).
    fn local_copy(&self, share: &Share, hash: &BlobHash) -> Result<Option<File>, ShareError> {
        let entries = self.store.share_files_with_blob(share, hash)?;
        if entries.is_empty() {
            return Ok(None);
        }
        let Ok(root) = Root::open(&share.root) else {
            return Ok(None);
        };
        for e in entries {
            let path = self.disk_path(share, e.origin.as_ref(), &e.version.path)?;
            if e.seen.is_some()
                && root.stat(&path).ok().flatten() == e.seen
                && let Some(f) = root.open_read(&path)?
            {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    /// A blob's bytes from `from` on, for a peer of `share`: from the blob
    /// store, or from a file in the share that holds it. With its length.
    /// Only contents the share references are served.
    pub fn read_blob(
        &self,
        share: &Share,
        hash: &BlobHash,
        from: u64,
    ) -> Result<Option<(BlobReader, u64)>, ShareError> {
        if !self.store.share_references(share, hash)? {
            return Ok(None);
        }
        let blob = match self.blobs.open_verified(hash) {
            Some(b) => Some(b),
            None => self.local_copy(share, hash)?.map(BlobReader::File),
        };
        let Some(mut blob) = blob else {
            return Ok(None);
        };
        let io = |e: std::io::Error| FsError::Io {
            path: hash.to_hex(),
            source: e,
        };
        let len = blob.remaining().map_err(io)?;
        if from > len {
            return Ok(None);
        }
        blob.seek_to(from).map_err(io)?;
        Ok(Some((blob, len - from)))
    }

    /// Applies records of this share received from a peer: resolves each
    /// against what is held, writes the folder, and commits. Fails with
    /// [`ShareError::MissingBlob`] if content it needs has not arrived, and
    /// with [`FsError::Changed`] if a file changed on disk while it was
    /// being replaced; nothing is committed then, and applying again
    /// (after fetching the content) is safe.
    pub fn apply(
        &self,
        share: &Share,
        mut batch: RecordBatch,
        now: Millis,
    ) -> Result<ShareCommit, ShareError> {
        if !share.mode.receives() {
            return Err(ShareError::SendOnly {
                share: share.name.clone(),
            });
        }
        let _lock = self.lock(share)?;
        let started = std::time::Instant::now();
        let root = Root::open(&share.root).map_err(|e| self.root_error(share, e))?;
        if self.cleaned_temps(share) {
            // The first write here since this process started: remove
            // what an earlier one left when it was cut off.
            if let Ok(walked) = walk(&share.root) {
                remove_temps(&walked.temps);
            }
        }
        if batch.records.is_empty() {
            return Ok(ShareCommit::default());
        }
        // Nothing is resolved before the batch is proven its author's.
        let admitted = match self.store.admit_share(share, &mut batch, now)? {
            Ok(Some(a)) => a,
            Ok(None) => {
                return Ok(ShareCommit {
                    duplicates: batch.records.len() as u64,
                    ..ShareCommit::default()
                });
            }
            Err(refusal) => {
                return Ok(ShareCommit {
                    refused: vec![refusal],
                    ..ShareCommit::default()
                });
            }
        };
        let head = admitted.head;
        let origin = self.origin_for(share, &batch.node);
        let mut step = Step {
            engine: self,
            share,
            root: &root,
            now,
            change: ShareChange::default(),
            current: HashMap::new(),
            dirty: HashSet::new(),
            verified: HashMap::new(),
            writes: WriteBatch::new(&root),
            spent: Vec::new(),
        };
        let mut received = Vec::with_capacity(batch.records.len());
        for (i, record) in batch.records.into_iter().enumerate() {
            let seq = batch.start + i as u64;
            if seq <= head {
                received.push(Received::Void(String::new()));
                continue;
            }
            received.push(match record {
                Record::Omitted(_) | Record::Superseded { .. } => Received::Omitted,
                Record::Void(why) | Record::Refused { why, .. } => {
                    if !why.is_empty() {
                        step.change.held.push(Held {
                            path: refused_name(&why).unwrap_or_else(|| {
                                format!("(record {seq} of node {})", batch.node.short())
                            }),
                            kind: "refused".into(),
                            reason: why.clone(),
                            since: now,
                        });
                    }
                    Received::Void(why)
                }
                Record::Row(_) => Received::Void("a memory row in a share stream".into()),
                Record::Node(_) => Received::Void("a node card in a share stream".into()),
                Record::File(v) => {
                    let path = v.path.clone();
                    match step.incoming(origin.clone(), *v) {
                        Ok(()) => Received::Path {
                            origin: origin.clone(),
                            path,
                        },
                        Err(ShareError::Fs(
                            e @ (FsError::Symlink { .. } | FsError::NotADirectory { .. }),
                        )) => {
                            let reason = e.to_string();
                            step.change.held.push(Held {
                                path: path.to_string(),
                                kind: "refused".into(),
                                reason: reason.clone(),
                                since: now,
                            });
                            Received::Void(reason)
                        }
                        Err(e) => return Err(e),
                    }
                }
            });
        }
        let staged_ms = started.elapsed().as_secs_f64() * 1e3;
        let (mut change, spent) = step.finish()?;
        let written_ms = started.elapsed().as_secs_f64() * 1e3;
        change.received = Some((batch.node, batch.start, received, admitted));
        let commit = self.store.commit_share(share, change)?;
        tracing::debug!(
            share = %share.name,
            staged_ms,
            written_ms,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "applied"
        );
        for (hash, from) in spent {
            self.blobs.remove(&hash, from);
        }
        Ok(commit)
    }

    /// Drops blobs nothing needs any more: at most once an hour (the
    /// time stamp of `locks/blobs-pruned` says when it last ran), as only blobs
    /// an hour old are dropped anyway.
    pub fn prune_blobs(&self) -> Result<usize, ShareError> {
        let marker = self.locks.join("blobs-pruned");
        let recent = std::fs::metadata(&marker)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < crate::blobs::STALE);
        if recent {
            return Ok(0);
        }
        // Its time stamp is what matters: truncated, private, kept.
        let _ = std::os::unix::fs::OpenOptionsExt::mode(&mut std::fs::OpenOptions::new(), 0o600)
            .create(true)
            .truncate(true)
            .write(true)
            .open(&marker);
        let keep = self.store.referenced_blobs()?;
        Ok(self.blobs.prune(&keep, crate::blobs::STALE))
    }
}

fn remove_temps(temps: &[PathBuf]) -> u64 {
    temps
        .iter()
        .filter(|t| std::fs::remove_file(t).is_ok())
        .count() as u64
}

/// The name in a refusal of a path ("path \"../x\" is refused: …").
fn refused_name(why: &str) -> Option<String> {
    let start = why.find("path \"")? + 6;
    let end = start + why[start..].find("\" is refused")?;
    Some(why[start..end].to_owned())
}

struct LocalRead {
    hash: BlobHash,
    seen: Seen,
    appended_to: Option<u64>,
    /// The credential it seems to hold, if any (docs/shares.md).
    secret: Option<&'static str>,
    text: Option<Vec<u8>>,
}

/// One apply: the entries as they evolve through the batch, the writes
/// staged, and what to commit.
struct Step<'a> {
    engine: &'a Engine,
    share: &'a Share,
    root: &'a Root,
    now: Millis,
    change: ShareChange,
    current: HashMap<(Option<NodeId>, RelPath), Option<FileEntry>>,
    /// Entries this step changed (the others were only read).
    dirty: HashSet<(Option<NodeId>, RelPath)>,
    /// Disk paths whose state on disk was checked against their entry, and
    /// that state: a write replaces them only if they are still so.
    verified: HashMap<RelPath, Option<Seen>>,
    writes: WriteBatch<'a>,
    /// Staged blobs used up by this step, dropped once it is committed.
    spent: Vec<(BlobHash, u64)>,
}

impl Step<'_> {
    /// Makes the staged writes durable and in place; returns what to
    /// commit to the store.
    fn finish(mut self) -> Result<(ShareChange, Vec<(BlobHash, u64)>), ShareError> {
        self.writes.commit()?;
        let dirty = self.dirty;
        let mut entries: Vec<FileEntry> = self
            .current
            .into_iter()
            .filter(|(k, _)| dirty.contains(k))
            .filter_map(|(_, e)| e)
            .collect();
        entries.sort_by(|a, b| a.version.path.cmp(&b.version.path));
        self.change.entries.splice(0..0, entries);
        Ok((self.change, self.spent))
    }

    fn get(
        &mut self,
        origin: &Option<NodeId>,
        path: &RelPath,
    ) -> Result<Option<FileEntry>, ShareError> {
        let key = (origin.clone(), path.clone());
        if let Some(e) = self.current.get(&key) {
            return Ok(e.clone());
        }
        let e = self
            .engine
            .store
            .share_file(self.share, origin.as_ref(), path)?;
        self.current.insert(key, e.clone());
        Ok(e)
    }

    fn set(&mut self, entry: FileEntry) {
        let key = (entry.origin.clone(), entry.version.path.clone());
        self.dirty.insert(key.clone());
        self.current.insert(key, Some(entry));
    }

    fn disk(&self, origin: &Option<NodeId>, path: &RelPath) -> Result<RelPath, ShareError> {
        self.engine.disk_path(self.share, origin.as_ref(), path)
    }

    /// Puts any staged write of `path` in place first, so what is read
    /// from disk is current.
    fn settle(&mut self, path: &RelPath) -> Result<(), ShareError> {
        if self.writes.holds(path) {
            self.writes.commit()?;
        }
        Ok(())
    }

    /// Stages `path`'s new content; it replaces the file only if the file
    /// is still as it was checked (or as it is now, if it was not).
    fn stage(
        &mut self,
        path: &RelPath,
        fill: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<Seen, ShareError> {
        self.settle(path)?;
        let expect = match self.verified.get(path) {
            Some(state) => *state,
            None => self.root.stat(path)?,
        };
        let seen = self.writes.stage(path, Some(expect), fill)?;
        self.verified.insert(path.clone(), Some(seen));
        Ok(seen)
    }

    /// Resolves one incoming version against what is held.
    fn incoming(&mut self, origin: Option<NodeId>, v: FileVersion) -> Result<(), ShareError> {
        let held = self.get(&origin, &v.path)?;
        if let Some(c) = &held
            && matches!(
                v.vv.compare(&c.version.vv),
                Causality::Equal | Causality::Dominated
            )
        {
            return Ok(());
        }
        let path = self.disk(&origin, &v.path)?;
        self.settle(&path)?;
        // Never overwrite what changed on disk since it was seen: capture
        // it first, and resolve against it.
        let c = match self.local_change(&origin, held.as_ref(), &v.path)? {
            Some(local) => local,
            None => match held {
                Some(c) => c,
                None => return self.take(origin, v, None),
            },
        };
        match v.vv.compare(&c.version.vv) {
            Causality::Equal | Causality::Dominated => Ok(()),
            Causality::Dominates => self.take(origin, v, Some(c)),
            Causality::Concurrent => self.concurrent(origin, c, v),
        }
    }

    /// If the file on disk no longer matches the held entry (or is there
    /// though none is held), captures it as a new local version (or, in a
    /// copy that never sends, keeps it beside as a local copy) and returns
    /// the new entry.
    fn local_change(
        &mut self,
        origin: &Option<NodeId>,
        c: Option<&FileEntry>,
        rel: &RelPath,
    ) -> Result<Option<FileEntry>, ShareError> {
        let path = self.disk(origin, rel)?;
        let on_disk = match self.root.stat(&path) {
            // A folder is no version of this file (`take` writes beside it).
            Err(FsError::IsADirectory { .. }) => None,
            other => other?,
        };
        let expected = c.filter(|c| !c.version.deleted).and_then(|c| c.seen);
        self.verified.insert(path.clone(), on_disk);
        if on_disk.is_none() || on_disk == expected {
            // Unchanged, or deleted here since the last scan (which the
            // next scan records).
            return Ok(None);
        }
        if !self.share.mode.sends() || origin.is_some() {
            // This copy never sends: keep the local edit beside, unsynced.
            self.keep_aside(&path)?;
            return Ok(None);
        }
        let Some(read) = self.engine.read_local(self.root, &path, c)? else {
            return Ok(None);
        };
        // What was read is what will be replaced.
        self.verified.insert(path.clone(), Some(read.seen));
        if let Some(c) = c.filter(|c| !c.version.deleted && c.version.blob == Some(read.hash)) {
            // Touched, same content.
            self.change
                .seen
                .push((origin.clone(), rel.clone(), Some(read.seen)));
            let mut c = c.clone();
            c.seen = Some(read.seen);
            self.current.insert((origin.clone(), rel.clone()), Some(c));
            return Ok(None);
        }
        if read.secret.is_some() {
            // Never made a version (it must not leave this node), nor
            // overwritten: it moves aside, where scans hold it back.
            self.keep_aside(&path)?;
            return Ok(None);
        }
        if let Some(text) = &read.text {
            self.engine.blobs.put_bytes(&read.hash, text)?;
        }
        let entry = FileEntry {
            origin: origin.clone(),
            version: self.engine.local_version(rel, c, &read),
            seen: Some(read.seen),
        };
        self.change.own.push((origin.clone(), rel.clone()));
        self.set(entry.clone());
        Ok(Some(entry))
    }

    /// Copies the file at `path` beside it as a local-only conflict copy,
    /// before it is replaced.
    fn keep_aside(&mut self, path: &RelPath) -> Result<(), ShareError> {
        // Local-only: numbered past any copy kept in the same second.
        let mut aside = conflict_name(path, "local", self.now, None)?;
        let mut n = 1;
        while self.root.stat(&aside)?.is_some() || self.writes.holds(&aside) {
            n += 1;
            aside = conflict_name(path, "local", self.now, Some(&n.to_string()))?;
        }
        if let Some(mut f) = self.root.open_read(path)? {
            self.stage(&aside, |out| std::io::copy(&mut f, out).map(|_| ()))?;
        }
        Ok(())
    }

    /// Makes `v` the current version: writes its content (or removes the
    /// file for a deletion).
    fn take(
        &mut self,
        origin: Option<NodeId>,
        v: FileVersion,
        current: Option<FileEntry>,
    ) -> Result<(), ShareError> {
        let path = self.disk(&origin, &v.path)?;
        let seen = if v.deleted {
            self.settle(&path)?;
            self.root.remove(&path)?;
            self.verified.insert(path, None);
            None
        } else if let Err(FsError::IsADirectory { .. }) = self.root.stat(&path) {
            // A folder of that name is here and still holds something
            // (what a peer's deletions emptied went with them): the file
            // is written beside it as a conflict copy, which syncs; the
            // next scan finds no file at `path` and deletes it everywhere.
            let beside = conflict_name(&path, &v.author, v.mtime, v.blob.map(short).as_deref())?;
            self.write_content(&beside, &v, None)?;
            None
        } else {
            Some(self.write_content(&path, &v, current.as_ref())?)
        };
        self.set(FileEntry {
            origin,
            version: v,
            seen,
        });
        Ok(())
    }

    /// Writes `v`'s content at `path`, from the blob store, from the file it
    /// extends plus the new bytes, or from another file holding it.
    fn write_content(
        &mut self,
        path: &RelPath,
        v: &FileVersion,
        current: Option<&FileEntry>,
    ) -> Result<Seen, ShareError> {
        let hash = v
            .blob
            .expect("a version that is not a deletion has content");
        let mut base = Vec::new();
        if let Some(mut staged) = self.engine.blobs.open_blob(&hash, 0) {
            match self.stage(path, |out| {
                verified_copy(&mut staged, out, &hash, &mut base)
            }) {
                Ok(seen) => {
                    if v.size > MAX_MERGE_BYTES as u64 {
                        self.spent.push((hash, 0));
                    }
                    return Ok(seen);
                }
                Err(e) if !is_corrupt(&e) => return Err(e),
                Err(_) => self.engine.blobs.remove(&hash, 0),
            }
        }
        if let (Some(from), Some(c)) = (v.append_from, current)
            && let Some(mut tail) = self.engine.blobs.open_blob(&hash, from)
            && !c.version.deleted
            && c.version.blob == v.parent
            && c.version.size == from
            && let Some(old) = self.root.open_read(path)?
        {
            let mut joined = old.take(from).chain(&mut tail);
            match self.stage(path, |out| {
                verified_copy(&mut joined, out, &hash, &mut base)
            }) {
                Ok(seen) => {
                    self.spent.push((hash, from));
                    self.keep_base(&hash, &base)?;
                    return Ok(seen);
                }
                Err(e) if !is_corrupt(&e) => return Err(e),
                Err(_) => self.engine.blobs.remove(&hash, from),
            }
        }
        if let Some(mut copy) = self.engine.local_copy(self.share, &hash)? {
            match self.stage(path, |out| verified_copy(&mut copy, out, &hash, &mut base)) {
                Ok(seen) => {
                    self.keep_base(&hash, &base)?;
                    return Ok(seen);
                }
                Err(e) if !is_corrupt(&e) => return Err(e),
                Err(_) => {}
            }
        }
        Err(ShareError::MissingBlob(hash))
    }

    /// Keeps a small text file's content as a merge base.
    fn keep_base(&self, hash: &BlobHash, bytes: &[u8]) -> Result<(), ShareError> {
        if !bytes.is_empty() && is_text(bytes) && !self.engine.blobs.has(hash, 0) {
            self.engine.blobs.put_bytes(hash, bytes)?;
        }
        Ok(())
    }

    fn content(&self, path: &RelPath, v: &FileVersion) -> Result<Option<Vec<u8>>, ShareError> {
        let Some(hash) = v.blob else { return Ok(None) };
        if let Some(b) = self.engine.blobs.read(&hash) {
            return Ok(Some(b));
        }
        if let Some(mut f) = self.root.open_read(path)? {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).map_err(|e| FsError::Io {
                path: path.to_string(),
                source: e,
            })?;
            if BlobHash::of(&buf) == hash {
                return Ok(Some(buf));
            }
        }
        Ok(None)
    }

    /// Resolves two concurrent versions; the outcome depends only on them.
    /// Resolves two concurrent versions (the rules in the module doc).
    /// The outcome is a new version (the join of the two vectors), of
    /// which this node is the author: a record of its own carries it, so
    /// it travels with a signature like any other (docs/protocol.md).
    fn concurrent(
        &mut self,
        origin: Option<NodeId>,
        c: FileEntry,
        v: FileVersion,
    ) -> Result<(), ShareError> {
        let path = v.path.clone();
        self.resolve(origin.clone(), c, v)?;
        if self.share.mode.sends() && origin.is_none() {
            self.change.own.push((None, path));
        }
        Ok(())
    }

    fn resolve(
        &mut self,
        origin: Option<NodeId>,
        c: FileEntry,
        v: FileVersion,
    ) -> Result<(), ShareError> {
        let vv = c.version.vv.join(&v.vv);
        let path = self.disk(&origin, &v.path)?;
        let cv = c.version.clone();
        let (winner, loser) = if rank(&v) > rank(&cv) {
            (&v, &cv)
        } else {
            (&cv, &v)
        };
        // Both deleted, or the same content: one outcome, joined.
        if (cv.deleted && v.deleted) || (!cv.deleted && cv.blob == v.blob) {
            let keep_disk = c.seen;
            self.set(FileEntry {
                origin,
                version: FileVersion {
                    vv,
                    ..winner.clone()
                },
                seen: if winner.deleted { None } else { keep_disk },
            });
            return Ok(());
        }
        // A deletion against a modification: the modification wins.
        if cv.deleted || v.deleted {
            let modified = if cv.deleted { &v } else { &cv };
            let version = FileVersion {
                vv,
                ..modified.clone()
            };
            if cv.deleted {
                return self.take(origin, version, Some(c));
            }
            self.set(FileEntry {
                origin,
                version,
                seen: c.seen,
            });
            return Ok(());
        }
        // Two edits of the same text: merge them if they do not overlap.
        let small = |x: &FileVersion| x.size <= MAX_MERGE_BYTES as u64;
        if let (Some(p), Some(cp)) = (v.parent, cv.parent)
            && p == cp
            && small(&cv)
            && small(&v)
            && let Some(base) = self.engine.blobs.read(&p)
        {
            let mine = self.content(&path, &cv)?;
            let theirs = self.content(&path, &v)?;
            let (Some(mine), Some(theirs)) = (mine, theirs) else {
                return Err(ShareError::MissingBlob(v.blob.expect("not a deletion")));
            };
            let (a, b) = (cv.blob.expect("content"), v.blob.expect("content"));
            if let Some(merged) = merge3(&base, (&a, &mine), (&b, &theirs)) {
                let hash = BlobHash::of(&merged);
                self.engine.blobs.put_bytes(&hash, &merged)?;
                let version = FileVersion {
                    vv,
                    blob: Some(hash),
                    size: merged.len() as u64,
                    mtime: cv.mtime.max(v.mtime),
                    author: winner.author.clone(),
                    parent: Some(p),
                    append_from: None,
                    ..cv.clone()
                };
                return self.take(origin, version, Some(c));
            }
        }
        // Otherwise keep both: the winner at the path, the loser beside it.
        // Named by its content too: two versions of one author that lose
        // in the same second are two copies, on every node alike.
        let copy_path = conflict_name(
            &v.path,
            &loser.author,
            loser.mtime,
            loser.blob.map(short).as_deref(),
        )?;
        let copy_disk = self.disk(&origin, &copy_path)?;
        let copy = FileVersion {
            path: copy_path.clone(),
            parent: None,
            append_from: None,
            ..loser.clone()
        };
        let existing = self.get(&origin, &copy_path)?;
        if existing
            .as_ref()
            .is_none_or(|e| e.version.blob != copy.blob)
        {
            let loser_hash = loser.blob.expect("not a deletion");
            let seen = if std::ptr::eq(loser, &cv) {
                // The local version: copy it from its file.
                let mut from = self
                    .root
                    .open_read(&path)?
                    .ok_or(ShareError::MissingBlob(loser_hash))?;
                let mut base = Vec::new();
                self.stage(&copy_disk, |out| {
                    verified_copy(&mut from, out, &loser_hash, &mut base)
                })?
            } else {
                self.write_content(&copy_disk, &copy, None)?
            };
            self.set(FileEntry {
                origin: origin.clone(),
                version: copy,
                seen: Some(seen),
            });
            if self.share.mode.sends() && origin.is_none() {
                self.change.own.push((None, copy_path));
            }
        }
        let version = FileVersion {
            vv,
            ..winner.clone()
        };
        if std::ptr::eq(winner, &v) {
            self.take(origin, version, Some(c))
        } else {
            self.set(FileEntry {
                origin,
                version,
                seen: c.seen,
            });
            Ok(())
        }
    }
}

/// The order that picks a conflict's winner, the same on every node.
fn rank(v: &FileVersion) -> (i64, &str, Option<BlobHash>) {
    (v.mtime, v.author.as_str(), v.blob)
}

/// `NAME.conflict-<who>-<YYYYMMDD-HHMMSS>.EXT` beside `path`.
/// The first 8 hex digits of a content's hash: what tells two conflict
/// copies of one author and second apart.
fn short(hash: BlobHash) -> String {
    hash.to_hex()[..8].to_owned()
}

/// `NAME.conflict-<who>-<YYYYMMDD-HHMMSS>[-<tag>].EXT`.
pub fn conflict_name(
    path: &RelPath,
    who: &str,
    mtime_ms: i64,
    tag: Option<&str>,
) -> Result<RelPath, ShareError> {
    let name = path.file_name();
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let who: String = who
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stamp = timestamp(mtime_ms);
    let tag = tag.map(|t| format!("-{t}")).unwrap_or_default();
    path.with_file_name(&format!("{stem}.conflict-{who}-{stamp}{tag}{ext}"))
        .map_err(|e| {
            ShareError::Fs(FsError::Io {
                path: path.to_string(),
                source: std::io::Error::other(e.to_string()),
            })
        })
}

/// `YYYYMMDD-HHMMSS` (UTC) of a millisecond timestamp.
fn timestamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Copies `from` into `to`, failing with `InvalidData` if the bytes do
/// not hash to `expected` (the write is then abandoned and the old file
/// stays). Keeps the bytes in `keep` if there are at most
/// [`MAX_MERGE_BYTES`] of them (a merge base).
fn verified_copy(
    from: &mut impl Read,
    to: &mut File,
    expected: &BlobHash,
    keep: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0usize;
    keep.clear();
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n;
        if total <= MAX_MERGE_BYTES {
            keep.extend_from_slice(&buf[..n]);
        } else {
            keep.clear();
        }
    }
    if BlobHash(*hasher.finalize().as_bytes()) != *expected {
        keep.clear();
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the content does not hash to {expected}"),
        ));
    }
    Ok(())
}

/// Whether a write failed because its source did not hold the content.
fn is_corrupt(e: &ShareError) -> bool {
    matches!(e, ShareError::Fs(FsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::InvalidData)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names() {
        let p = RelPath::parse("notes/plan.md").unwrap();
        let c = conflict_name(&p, "laptop", 1_795_000_000_000, Some("0a1b2c3d")).unwrap();
        assert_eq!(
            c.as_str(),
            "notes/plan.conflict-laptop-20261118-110640-0a1b2c3d.md"
        );
        let p = RelPath::parse("README").unwrap();
        assert_eq!(
            conflict_name(&p, "a b", 0, None).unwrap().as_str(),
            "README.conflict-a_b-19700101-000000"
        );
        let p = RelPath::parse(".hidden").unwrap();
        assert_eq!(
            conflict_name(&p, "x", 0, None).unwrap().as_str(),
            ".hidden.conflict-x-19700101-000000"
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "19700101-000000");
        assert_eq!(timestamp(951_782_400_000), "20000229-000000");
        assert_eq!(timestamp(1_716_800_000_000), "20240527-085320");
    }
}
