//! The blob store (`SELVES_HOME/blobs/`): file contents by BLAKE3 hash.
//! It holds what arrived from peers until it is written into a share, and
//! the contents of small text files kept as bases for three-way merges.
//!
//! Small blobs (up to [`SMALL`]) live in one SQLite file, `blobs/small.db`:
//! a folder of ten thousand notes then costs no inode per note (creating
//! inodes, not writing bytes, is what makes many small files slow on ext4),
//! and reading one back is a single indexed row. Larger blobs are files.
//!
//! Nothing here is fsynced: a blob is a staging copy or a merge base, and
//! every read checks it against its hash ([`Blobs::read`],
//! [`Blobs::open_verified`], and the verified copy into a share), so one
//! damaged by a crash is only fetched again. A whole blob is verified
//! before it is kept; a tail (the bytes an appended file gained, from some
//! offset) is verified when it is joined to the file it extends.

use std::fs::File;
use std::io::{Cursor, Read, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, params};
use selves_wire::file::BlobHash;

/// Blobs up to this size are kept in the database, larger ones as files.
pub const SMALL: u64 = 1 << 20;
/// Blobs up to this size are verified before they are served.
const VERIFY_ON_OPEN_BYTES: u64 = 4 << 20;
/// A staged blob untouched this long is left over from a crash or an
/// abandoned sync.
pub const STALE: Duration = Duration::from_secs(3600);

pub struct Blobs {
    dir: PathBuf,
    db: Mutex<Connection>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {expected}: the bytes received hash to {found}")]
    Mismatch { expected: BlobHash, found: BlobHash },
    #[error("blob store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("blob store {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

impl BlobError {
    /// Whether the small-blob database is damaged (not full, not out of
    /// reach): only then is it started afresh.
    fn is_corrupt(&self) -> bool {
        matches!(
            self,
            BlobError::Db {
                source: rusqlite::Error::SqliteFailure(f, _),
                ..
            } if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            )
        )
    }
}

/// A blob opened for reading: a file, or bytes from the database.
pub enum BlobReader {
    File(File),
    Bytes(Cursor<Vec<u8>>),
}

impl BlobReader {
    /// Bytes left to read.
    pub fn remaining(&mut self) -> std::io::Result<u64> {
        match self {
            BlobReader::File(f) => {
                use std::io::Seek as _;
                let pos = f.stream_position()?;
                Ok(f.metadata()?.len().saturating_sub(pos))
            }
            BlobReader::Bytes(c) => Ok(c.get_ref().len() as u64 - c.position()),
        }
    }

    /// Skips to `from` bytes from the start.
    pub fn seek_to(&mut self, from: u64) -> std::io::Result<()> {
        use std::io::{Seek as _, SeekFrom};
        match self {
            BlobReader::File(f) => f.seek(SeekFrom::Start(from)).map(|_| ()),
            BlobReader::Bytes(c) => {
                c.set_position(from);
                Ok(())
            }
        }
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            BlobReader::File(f) => f.read(buf),
            BlobReader::Bytes(c) => c.read(buf),
        }
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Blobs {
    pub fn open(dir: &Path) -> Result<Blobs, BlobError> {
        use std::os::unix::fs::DirBuilderExt as _;
        let io = |source| BlobError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("tmp"))
            .map_err(io)?;
        let path = dir.join("small.db");
        let db = match Self::open_db(&path) {
            Ok(db) => db,
            // Only caches and merge bases live here: a damaged database
            // is dropped and started afresh. Any other failure (a full
            // disk, an I/O error) is said, and nothing is dropped.
            Err(e) if e.is_corrupt() => {
                tracing::warn!(error = %e, "the small-blob database is damaged; starting it afresh");
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                Self::open_db(&path)?
            }
            Err(e) => return Err(e),
        };
        Ok(Blobs {
            dir: dir.to_owned(),
            db: Mutex::new(db),
        })
    }

    fn open_db(path: &Path) -> Result<Connection, BlobError> {
        let err = |source| BlobError::Db {
            path: path.to_owned(),
            source,
        };
        // Private from its first byte.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(BlobError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let db = Connection::open(path).map_err(err)?;
        db.busy_timeout(Duration::from_secs(30)).map_err(err)?;
        // Larger pages for rows of kilobytes (only takes on a new file).
        db.pragma_update(None, "page_size", 16384).map_err(err)?;
        db.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        // Durability is not needed (every read is verified), consistency
        // is: NORMAL syncs only at checkpoints.
        db.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        db.execute_batch(
            // A rowid table: the contents stay out of the index's keys.
            "CREATE TABLE IF NOT EXISTS blobs (
                id    INTEGER PRIMARY KEY,
                hash  BLOB NOT NULL,
                start INTEGER NOT NULL,
                added INTEGER NOT NULL,
                bytes BLOB NOT NULL
            );
            CREATE UNIQUE INDEX IF NOT EXISTS blobs_hash ON blobs (hash, start);
            CREATE INDEX IF NOT EXISTS blobs_added ON blobs (added);",
        )
        .map_err(err)?;
        Ok(db)
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn db_err(&self, source: rusqlite::Error) -> BlobError {
        BlobError::Db {
            path: self.dir.join("small.db"),
            source,
        }
    }

    /// Where a large whole blob (`from` = 0) or tail from `from` is kept.
    fn path(&self, hash: &BlobHash, from: u64) -> PathBuf {
        let hex = hash.to_hex();
        if from == 0 {
            self.dir.join(hex)
        } else {
            self.dir.join(format!("{hex}.from-{from}"))
        }
    }

    fn small(&self, hash: &BlobHash, from: u64) -> Option<Vec<u8>> {
        self.db()
            .prepare_cached("SELECT bytes FROM blobs WHERE hash = ?1 AND start = ?2")
            .and_then(|mut s| {
                s.query_row(params![&hash.0[..], from as i64], |r| r.get(0))
                    .optional()
            })
            .ok()
            .flatten()
    }

    pub fn has(&self, hash: &BlobHash, from: u64) -> bool {
        let in_db = self
            .db()
            .prepare_cached("SELECT 1 FROM blobs WHERE hash = ?1 AND start = ?2")
            .and_then(|mut s| s.exists(params![&hash.0[..], from as i64]))
            .unwrap_or(false);
        in_db || self.path(hash, from).is_file()
    }

    /// A blob (or tail), unverified.
    pub fn open_blob(&self, hash: &BlobHash, from: u64) -> Option<BlobReader> {
        if let Some(bytes) = self.small(hash, from) {
            return Some(BlobReader::Bytes(Cursor::new(bytes)));
        }
        File::open(self.path(hash, from)).ok().map(BlobReader::File)
    }

    /// Keeps what `source` yields as blob `hash` (from `from`): exactly
    /// `len` bytes if given (fewer is an error). A whole blob must hash to
    /// `hash`; nothing unverified is ever kept under its name.
    pub fn put(
        &self,
        hash: &BlobHash,
        from: u64,
        len: Option<u64>,
        source: impl Read,
    ) -> Result<u64, BlobError> {
        let io = |source| BlobError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut source = source.take(len.unwrap_or(u64::MAX));
        // Up to SMALL bytes in memory; past that, on to a file.
        let mut head = Vec::with_capacity(len.unwrap_or(64 << 10).min(SMALL + 1) as usize);
        (&mut source)
            .take(SMALL + 1)
            .read_to_end(&mut head)
            .map_err(io)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&head);
        if head.len() as u64 <= SMALL {
            check_len(head.len() as u64, len).map_err(io)?;
            check_hash(hash, from, &hasher)?;
            self.db()
                .prepare_cached(
                    "INSERT INTO blobs (hash, start, bytes, added) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (hash, start) DO UPDATE SET bytes = excluded.bytes,
                        added = excluded.added",
                )
                .and_then(|mut s| s.execute(params![&hash.0[..], from as i64, head, now_secs()]))
                .map_err(|e| self.db_err(e))?;
            return Ok(head.len() as u64);
        }
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = self.dir.join("tmp").join(selves_wire::hex(&suffix));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let mut total = head.len() as u64;
        let result = (|| {
            file.write_all(&head)?;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = source.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n])?;
                total += n as u64;
            }
            check_len(total, len)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        if let Err(e) = check_hash(hash, from, &hasher) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, self.path(hash, from)).map_err(io)?;
        Ok(total)
    }

    /// Keeps `bytes` as a whole blob (already hashed by the caller).
    pub fn put_bytes(&self, hash: &BlobHash, bytes: &[u8]) -> Result<(), BlobError> {
        if self.has(hash, 0) {
            return Ok(());
        }
        self.put(hash, 0, Some(bytes.len() as u64), bytes)
            .map(|_| ())
    }

    /// A whole blob's bytes, if it is here and intact (a damaged one is
    /// removed).
    pub fn read(&self, hash: &BlobHash) -> Option<Vec<u8>> {
        let bytes = match self.small(hash, 0) {
            Some(b) => b,
            None => std::fs::read(self.path(hash, 0)).ok()?,
        };
        if BlobHash::of(&bytes) == *hash {
            return Some(bytes);
        }
        self.remove(hash, 0);
        None
    }

    /// A whole blob, opened; small ones are verified first (a damaged one
    /// is removed). Large ones are verified by whoever reads them.
    pub fn open_verified(&self, hash: &BlobHash) -> Option<BlobReader> {
        let mut blob = self.open_blob(hash, 0)?;
        if blob.remaining().ok()? > VERIFY_ON_OPEN_BYTES {
            return Some(blob);
        }
        let mut hasher = blake3::Hasher::new();
        std::io::copy(&mut blob, &mut hasher).ok()?;
        if BlobHash(*hasher.finalize().as_bytes()) != *hash {
            self.remove(hash, 0);
            return None;
        }
        blob.seek_to(0).ok()?;
        Some(blob)
    }

    pub fn remove(&self, hash: &BlobHash, from: u64) {
        let _ = self
            .db()
            .prepare_cached("DELETE FROM blobs WHERE hash = ?1 AND start = ?2")
            .and_then(|mut s| s.execute(params![&hash.0[..], from as i64]));
        let _ = std::fs::remove_file(self.path(hash, from));
    }

    /// Removes every blob not in `keep`, every tail, and leftover
    /// temporary files, once they are `min_age` old (younger ones may be
    /// about to be used by a sync in progress: see [`STALE`]). Returns how
    /// many it removed.
    pub fn prune(&self, keep: &std::collections::HashSet<BlobHash>, min_age: Duration) -> usize {
        let mut removed = 0;
        let cutoff = now_secs() - min_age.as_secs() as i64;
        {
            let db = self.db();
            let old: Vec<(Vec<u8>, i64)> = db
                .prepare("SELECT hash, start FROM blobs INDEXED BY blobs_added WHERE added <= ?1")
                .and_then(|mut s| {
                    s.query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect()
                })
                .unwrap_or_default();
            for (hash, start) in old {
                let whole = <[u8; 32]>::try_from(hash.as_slice()).ok().map(BlobHash);
                if start == 0 && whole.is_some_and(|h| keep.contains(&h)) {
                    continue;
                }
                removed += db
                    .execute(
                        "DELETE FROM blobs WHERE hash = ?1 AND start = ?2",
                        params![hash, start],
                    )
                    .unwrap_or(0);
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return removed;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == "tmp" || name.starts_with("small.db") {
                continue;
            }
            let whole: Option<BlobHash> = name.parse().ok();
            if whole.is_some_and(|h| keep.contains(&h)) || !stale(&entry, min_age) {
                continue;
            }
            if std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        if let Ok(tmp) = std::fs::read_dir(self.dir.join("tmp")) {
            for entry in tmp.flatten().filter(|e| stale(e, min_age)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        removed
    }
}

fn check_len(got: u64, len: Option<u64>) -> std::io::Result<()> {
    match len {
        Some(want) if got < want => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the blob ended after {got} of {want} bytes"),
        )),
        _ => Ok(()),
    }
}

/// A whole blob must hash to its name (a tail is checked when joined).
fn check_hash(hash: &BlobHash, from: u64, hasher: &blake3::Hasher) -> Result<(), BlobError> {
    if from == 0 {
        let found = BlobHash(*hasher.finalize().as_bytes());
        if &found != hash {
            return Err(BlobError::Mismatch {
                expected: *hash,
                found,
            });
        }
    }
    Ok(())
}

fn stale(entry: &std::fs::DirEntry, min_age: Duration) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= min_age)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(b: &mut BlobReader) -> Vec<u8> {
        let mut v = Vec::new();
        b.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn whole_blobs_are_verified_and_tails_kept_apart() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let h = BlobHash::of(b"hello world");
        blobs.put(&h, 0, Some(11), &b"hello world"[..]).unwrap();
        assert!(blobs.has(&h, 0));
        assert_eq!(blobs.read(&h).unwrap(), b"hello world");
        let err = blobs
            .put(&BlobHash::of(b"other"), 0, None, &b"not it"[..])
            .unwrap_err();
        assert!(matches!(err, BlobError::Mismatch { .. }));
        assert!(!blobs.has(&BlobHash::of(b"other"), 0));
        let short = blobs.put(&h, 6, Some(9), &b"world"[..]).unwrap_err();
        assert!(
            matches!(short, BlobError::Io { .. }),
            "a short tail is refused"
        );
        assert!(!blobs.has(&h, 6));
        blobs.put(&h, 6, Some(5), &b"world"[..]).unwrap();
        assert_eq!(content(&mut blobs.open_blob(&h, 6).unwrap()), b"world");
        let keep = [h].into_iter().collect();
        assert_eq!(blobs.prune(&keep, STALE), 0, "young blobs stay");
        assert_eq!(
            blobs.prune(&keep, Duration::ZERO),
            1,
            "the tail goes, the kept blob stays"
        );
        assert!(blobs.has(&h, 0));
        assert_eq!(blobs.prune(&Default::default(), Duration::ZERO), 1);
        assert!(!blobs.has(&h, 0));
    }

    #[test]
    fn large_blobs_are_files_and_damage_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let big: Vec<u8> = (0..(SMALL as usize + 100))
            .map(|i| (i % 251) as u8)
            .collect();
        let h = BlobHash::of(&big);
        // Length unknown up front: it spills to a file past SMALL.
        assert_eq!(blobs.put(&h, 0, None, &big[..]).unwrap(), big.len() as u64);
        assert!(dir.path().join(h.to_hex()).is_file());
        let mut r = blobs.open_verified(&h).unwrap();
        assert_eq!(r.remaining().unwrap(), big.len() as u64);
        assert_eq!(content(&mut r), big);
        // Damaged on disk: not served, and dropped.
        let mut damaged = big.clone();
        damaged[5] ^= 1;
        std::fs::write(dir.path().join(h.to_hex()), &damaged).unwrap();
        assert!(blobs.open_verified(&h).is_none());
        assert!(!blobs.has(&h, 0));
        // A small one damaged in the database is dropped on read too.
        let s = BlobHash::of(b"small");
        blobs.put_bytes(&s, b"small").unwrap();
        blobs
            .db()
            .execute("UPDATE blobs SET bytes = x'00'", [])
            .unwrap();
        assert!(blobs.read(&s).is_none());
        assert!(!blobs.has(&s, 0));
    }

    #[test]
    fn a_damaged_database_is_started_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let h = BlobHash::of(b"x");
        {
            let blobs = Blobs::open(dir.path()).unwrap();
            blobs.put_bytes(&h, b"x").unwrap();
        }
        std::fs::write(dir.path().join("small.db"), b"garbage, not a database").unwrap();
        let _ = std::fs::remove_file(dir.path().join("small.db-wal"));
        let _ = std::fs::remove_file(dir.path().join("small.db-shm"));
        let blobs = Blobs::open(dir.path()).unwrap();
        assert!(!blobs.has(&h, 0));
        blobs.put_bytes(&h, b"x").unwrap();
        assert!(blobs.has(&h, 0));
    }
}
