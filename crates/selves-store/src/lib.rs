//! The selves store: one SQLite database per node holding its record logs,
//! the memory materialised from them, and the peers it knows; plus a search
//! index in a second file.
//!
//! - [`schema`]: tables and append-only migrations.
//! - [`memory`]: the materialiser (rows, conversations, last-writer-wins),
//!   local capture and export.
//! - [`log`]: record logs: heads, applying remote ranges, serving ranges,
//!   the convergence digest.
//! - [`search`]: the FTS5 index, kept in `search.db` and caught up in bulk.
//! - [`peers`]: tokens this node minted and remotes it dials.
//!
//! One writer connection (behind a mutex) and a small pool of readers; every
//! method is blocking, so async callers use `spawn_blocking`. All SQL of
//! selves lives in this crate.

pub mod captures;
pub mod cards;
pub mod chain;
pub mod log;
pub mod memex;
pub mod memory;
pub mod peers;
pub mod schema;
pub mod search;
pub mod shares;
pub mod tunnels;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use selves_wire::{Name, NodeId, StreamName};

pub use captures::{Capture, FileMark, HeldRow, HeldState};
pub use chain::{Fork, Refusal, RefusalCount, RefusalKind};
pub use log::{ApplySummary, RangeRead};
pub use memex::ArrivalPage;
pub use memory::{CaptureOptions, CaptureSummary};
pub use peers::{Attempt, AuthOutcome, Claim, LoginFailures, Protocol, Remote, TokenGrant};
pub use search::{Hit, SearchQuery};
pub use shares::{
    Admitted, FileEntry, Held, Layout, Received, Seen, Share, ShareChange, ShareCommit, ShareMode,
};
pub use tunnels::Tunnel;

/// Milliseconds since the Unix epoch. Callers pass the time in, so tests
/// control it.
pub type Millis = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the database schema is version {found}, newer than this selves knows ({known}): upgrade selves"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error(
        "the database belongs to node {found}, but this home's config says {expected}: was config.toml or selves.db copied from another node?"
    )]
    WrongNode { found: String, expected: NodeId },
    #[error(
        "records of {node} {stream} start at {got}, but this node holds only up to {have}: a gap (the sender's view of our heads is stale; sync again)"
    )]
    Gap {
        node: NodeId,
        stream: StreamName,
        have: u64,
        got: u64,
    },
    #[error("stream {0} is not carried by this node")]
    UnknownStream(StreamName),
    #[error("the search query is empty: give at least one word")]
    EmptyQuery,
    #[error("a peer named {0} already has a token in use: `selves rotate-token {0}` replaces it")]
    TokenInUse(Name),
    #[error("no peer named {0}")]
    NoSuchPeer(String),
    #[error("a remote named {0} already exists: remove it first with `selves peer remove {0}`")]
    RemoteExists(Name),
    #[error("a share named {0} already exists (see `selves share list`)")]
    ShareExists(Name),
    #[error(
        "a share named {name} was removed earlier with root {old}: add it back with that root, or choose another name"
    )]
    ShareRootChanged { name: Name, old: String },
    #[error("no share named {0} (see `selves share list`)")]
    NoSuchShare(String),
    #[error("node card refused: {0}")]
    BadCard(String),
    #[error("the store is damaged: {0}. Run `selves check`")]
    Integrity(String),
    #[error("this home's key does not belong to node {0}: was node.key copied from another home?")]
    WrongKey(NodeId),
    #[error(
        "the disk holding {0} is full: selves can read but not write (nothing was changed); free some space and try again"
    )]
    DiskFull(PathBuf),
}

impl StoreError {
    /// Whether SQLite failed as it does when the disk is full (a full
    /// disk shows as `SQLITE_FULL`, or as an I/O error growing a file).
    fn is_disk_full_at(&self, dir: &Path) -> bool {
        let StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) = self else {
            return false;
        };
        f.code == rusqlite::ErrorCode::DiskFull
            || (f.code == rusqlite::ErrorCode::SystemIoFailure && free_bytes(dir) < 1 << 20)
    }
}

/// Bytes an unprivileged process may still write on the file system
/// holding `dir` (`u64::MAX` if that cannot be told).
fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return u64::MAX;
    };
    // SAFETY: `c` is a valid C string; `st` is written by statvfs only.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return u64::MAX;
    }
    (st.f_bavail as u64).saturating_mul(st.f_frsize as u64)
}

impl From<rusqlite::types::FromSqlError> for StoreError {
    fn from(e: rusqlite::types::FromSqlError) -> Self {
        StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Null,
            Box::new(e),
        ))
    }
}

impl StoreError {
    /// Whether trying the same thing again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            StoreError::Gap { .. } => true,
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where a node's files live.
#[derive(Debug, Clone)]
pub struct StorePaths {
    pub db: PathBuf,
    pub search: PathBuf,
}

impl StorePaths {
    pub fn in_dir(dir: &Path) -> Self {
        StorePaths {
            db: dir.join("selves.db"),
            search: dir.join("search.db"),
        }
    }
}

/// How durable a commit must be when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On disk (`synchronous=FULL`): survives power loss. For this node's
    /// own records and for anything acknowledged to a peer.
    Full,
    /// Written to the OS (`synchronous=NORMAL`): survives the process being
    /// killed; a power loss may drop a suffix of such commits (WAL recovery
    /// keeps a prefix). Only for records pulled from a peer, which the next
    /// heads exchange fetches again, and only followed by
    /// [`Store::flush_deferred`] before the round reports them durable.
    Deferred,
}

/// This node, as the store knows it.
#[derive(Debug, Clone)]
pub struct Me {
    pub id: NodeId,
    pub name: Name,
    /// Local index of this node in `nodes`.
    pub(crate) idx: i64,
}

/// Local indexes of the streams every store carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Streams {
    pub memory: i64,
    pub nodes: i64,
}

pub struct Store {
    paths: StorePaths,
    me: Me,
    /// This node's signing key.
    key: selves_wire::sign::NodeKey,
    streams: Streams,
    /// Identifies this database, so a search index made for another one is
    /// never trusted.
    instance: String,
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
    /// The connection that writes `search.db`.
    search_writer: Mutex<Option<Connection>>,
    /// `None` when read-only.
    checkpointer: Option<Checkpointer>,
    /// Opened read-only because the disk is full: reads work, every write
    /// is refused with [`StoreError::DiskFull`].
    read_only: bool,
}

const MAX_IDLE_READERS: usize = 4;

impl Store {
    /// Opens (creating if needed) the store of node `id` named `name`,
    /// whose key is `key`. Refuses a database that belongs to another node,
    /// and a key that cannot speak for `id`.
    pub fn open(
        paths: &StorePaths,
        id: &NodeId,
        name: &Name,
        key: selves_wire::sign::NodeKey,
    ) -> Result<Store> {
        let seed = *key.seed();
        match Self::open_writable(paths, id, name, key) {
            Err(e) if e.is_disk_full_at(paths.db.parent().unwrap_or(Path::new("."))) => {
                let key = selves_wire::sign::NodeKey::from_seed(seed);
                Self::open_read_only(paths, id, key).map_err(|_| e)
            }
            other => other,
        }
    }

    /// The store of a home whose disk is full: every read works, every
    /// write says the disk is full. Nothing is created or migrated. With
    /// no write-ahead log left (the last writer closed cleanly) the files
    /// are opened immutable, which needs no shared-memory file either.
    /// [`Store::open`] falls back to it when the disk is full.
    pub fn open_read_only(
        paths: &StorePaths,
        id: &NodeId,
        key: selves_wire::sign::NodeKey,
    ) -> Result<Store> {
        let writer = open_ro(&paths.db)?;
        let found: Option<String> = writer
            .query_row("SELECT value FROM meta WHERE key = 'node_id'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if found.as_deref() != Some(id.as_str()) {
            return Err(StoreError::WrongNode {
                found: found.unwrap_or_default(),
                expected: id.clone(),
            });
        }
        let (idx, name): (i64, String) = writer.query_row(
            "SELECT id, name FROM nodes WHERE node_id = ?1",
            [id.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let stream = |name: &str| -> Result<i64> {
            Ok(
                writer.query_row("SELECT id FROM streams WHERE name = ?1", [name], |r| {
                    r.get(0)
                })?,
            )
        };
        let streams = Streams {
            memory: stream(StreamName::memory().as_str())?,
            nodes: stream(StreamName::nodes().as_str())?,
        };
        let instance: String =
            writer.query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
                r.get(0)
            })?;
        Ok(Store {
            paths: paths.clone(),
            me: Me {
                id: id.clone(),
                name: name.parse().map_err(|_| {
                    StoreError::Integrity(format!("this node's name {name:?} is not valid"))
                })?,
                idx,
            },
            streams,
            key,
            instance,
            writer: Mutex::new(Writer {
                conn: writer,
                convs: memory::ConvCache::default(),
                data_version: None,
                deferred_pending: false,
            }),
            readers: Mutex::new(Vec::new()),
            search_writer: Mutex::new(None),
            checkpointer: None,
            read_only: true,
        })
    }

    /// Whether the store was opened read-only because its disk is full.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn open_writable(
        paths: &StorePaths,
        id: &NodeId,
        name: &Name,
        key: selves_wire::sign::NodeKey,
    ) -> Result<Store> {
        create_private(&paths.db)?;
        let mut writer = open_conn(&paths.db)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: the commit that gates an acknowledgement must survive power
        // loss; in WAL mode that is one fsync per commit, and we commit per
        // batch.
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.pragma_update(None, "cache_size", -8000)?;
        // What is deleted or replaced is overwritten, not left in free
        // space: a forgotten row's words must leave the file (see
        // `Store::purge_forgotten`).
        writer.pragma_update(None, "secure_delete", "ON")?;
        // Checkpoints run on the checkpointer's thread, off the commit path;
        // the writer checkpoints itself only if the WAL grows past 256 MB.
        writer.pragma_update(None, "wal_autocheckpoint", 65536)?;
        writer.pragma_update(None, "journal_size_limit", 64 << 20)?;
        schema::migrate(&mut writer)?;

        let tx = writer.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'node_id'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match found {
            Some(found) if found != id.as_str() => {
                return Err(StoreError::WrongNode {
                    found,
                    expected: id.clone(),
                });
            }
            Some(_) => {}
            None => {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('node_id', ?1)",
                    [id.as_str()],
                )?;
                let mut instance = [0u8; 16];
                getrandom::fill(&mut instance).map_err(|e| StoreError::Io {
                    path: paths.db.clone(),
                    source: std::io::Error::other(e),
                })?;
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('instance', ?1)",
                    [selves_wire::hex(&instance)],
                )?;
            }
        }
        let idx = log::node_index(&tx, id, Some(name.as_str()))?;
        if !chain::bind_key(&tx, idx, id, &key.public())? {
            return Err(StoreError::WrongKey(id.clone()));
        }
        let memory = log::stream_index(&tx, &StreamName::memory())?;
        let nodes = log::stream_index(&tx, &StreamName::nodes())?;
        let chained: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'chained'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if chained.is_none() {
            chain::backfill(&tx, &key, idx)?;
            tx.execute("INSERT INTO meta (key, value) VALUES ('chained', '1')", [])?;
        }
        let instance: String =
            tx.query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
                r.get(0)
            })?;
        tx.commit()?;
        let checkpointer = Checkpointer::start(&paths.db)?;

        let store = Store {
            paths: paths.clone(),
            me: Me {
                id: id.clone(),
                name: name.clone(),
                idx,
            },
            streams: Streams { memory, nodes },
            key,
            instance,
            writer: Mutex::new(Writer {
                conn: writer,
                convs: memory::ConvCache::default(),
                data_version: None,
                deferred_pending: false,
            }),
            readers: Mutex::new(Vec::new()),
            search_writer: Mutex::new(None),
            checkpointer: Some(checkpointer),
            read_only: false,
        };
        search::prepare(&store)?;
        Ok(store)
    }

    pub fn me(&self) -> &Me {
        &self.me
    }

    pub fn paths(&self) -> &StorePaths {
        &self.paths
    }

    /// Runs `f` in an IMMEDIATE transaction on the writer, committed
    /// durably (`synchronous=FULL`) on `Ok`.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.write_memory(Durability::Full, |tx, _| f(tx))
    }

    /// Like [`Store::write`], with the writer's conversation cache. The
    /// cache is trusted only while no other connection has written (SQLite's
    /// `data_version` tells), and dropped whenever a transaction fails.
    pub(crate) fn write_memory<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &mut memory::ConvCache) -> Result<T>,
    ) -> Result<T> {
        if self.read_only {
            return Err(StoreError::DiskFull(self.paths.db.clone()));
        }
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let w = &mut *guard;
        // The level can only change outside a transaction; FULL is the
        // writer's resting state.
        if durability == Durability::Deferred {
            w.conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        let result = Self::transact(w, f);
        if durability == Durability::Deferred {
            w.conn.pragma_update(None, "synchronous", "FULL")?;
        }
        let out = result?;
        // A FULL commit fsyncs the WAL, which makes every earlier frame
        // durable too.
        w.deferred_pending = durability == Durability::Deferred;
        if let Some(c) = &self.checkpointer {
            c.kick();
        }
        Ok(out)
    }

    /// Makes every `Deferred` commit durable: if any is outstanding, commits
    /// a tiny write with `synchronous=FULL`, whose fsync of the WAL covers
    /// all frames before it. Returns whether it had to.
    pub fn flush_deferred(&self) -> Result<bool> {
        let pending = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .deferred_pending;
        if !pending {
            return Ok(false);
        }
        self.write(|tx| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('durable_at', '0')
                 ON CONFLICT (key) DO UPDATE SET value = value + 1",
                [],
            )?;
            Ok(())
        })?;
        Ok(true)
    }

    fn transact<T>(
        w: &mut Writer,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &mut memory::ConvCache) -> Result<T>,
    ) -> Result<T> {
        let tx = w
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if w.data_version != Some(version) || w.convs.len() > memory::CONV_CACHE_MAX {
            w.convs.clear();
            w.data_version = Some(version);
        }
        match f(&tx, &mut w.convs).and_then(|out| Ok((out, tx.commit()?))) {
            Ok((out, ())) => Ok(out),
            Err(e) => {
                w.convs.clear();
                Err(e)
            }
        }
    }

    /// A read connection from the pool (search.db attached as `search`).
    pub(crate) fn reader(&self) -> Result<Reader<'_>> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None if self.read_only => {
                let c = open_ro(&self.paths.db)?;
                c.execute("ATTACH DATABASE ?1 AS search", [ro_uri(&self.paths.search)])?;
                c
            }
            None => {
                let c = open_conn(&self.paths.db)?;
                c.pragma_update(None, "query_only", true)?;
                c.execute(
                    "ATTACH DATABASE ?1 AS search",
                    [self.paths.search.to_string_lossy()],
                )?;
                c
            }
        };
        Ok(Reader {
            store: self,
            conn: Some(conn),
        })
    }

    /// Runs `PRAGMA integrity_check` on both files and checks the record
    /// logs: every (node, stream) holds exactly seqs 1..=head, and every
    /// non-void record points at a row. Returns the problems found.
    pub fn check(&self) -> Result<Vec<String>> {
        let r = self.reader()?;
        let mut problems = Vec::new();
        for schema in ["main", "search"] {
            let mut stmt = r.prepare(&format!("PRAGMA {schema}.integrity_check"))?;
            let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
            for line in rows {
                let line = line?;
                if line != "ok" {
                    problems.push(format!("{schema}: {line}"));
                }
            }
        }
        let mut stmt = r.prepare(
            "SELECT n.node_id, s.name, h.seq,
                    (SELECT COUNT(*) FROM records r WHERE r.node = h.node AND r.stream = h.stream),
                    (SELECT MAX(seq) FROM records r WHERE r.node = h.node AND r.stream = h.stream)
             FROM heads h JOIN nodes n ON n.id = h.node JOIN streams s ON s.id = h.stream",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, Option<i64>>(4)?,
            ))
        })?;
        for row in rows {
            let (node, stream, head, count, max) = row?;
            if count != head || max.unwrap_or(0) != head {
                problems.push(format!(
                    "log {node} {stream}: head {head} but {count} records (highest {max:?})"
                ));
            }
        }
        let dangling: i64 = r.query_row(
            "SELECT COUNT(*) FROM records r
             WHERE r.target IS NOT NULL AND CASE
                WHEN r.stream = ?1 THEN NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = r.target)
                WHEN r.stream = ?2 THEN NOT EXISTS (SELECT 1 FROM cards c WHERE c.node = r.target)
                ELSE NOT EXISTS (SELECT 1 FROM files f WHERE f.id = r.target) END",
            [self.streams.memory, self.streams.nodes],
            |row| row.get(0),
        )?;
        if dangling > 0 {
            problems.push(format!("{dangling} records point at missing rows"));
        }
        let orphans: i64 = r.query_row(
            "SELECT COUNT(*) FROM messages m WHERE m.key IS NOT NULL
             -- One pass over the records (a temporary index), not one scan
             -- of them per message.
             AND m.id NOT IN (SELECT target FROM records WHERE stream = ?1 AND target IS NOT NULL)
             -- Rows whose records were withdrawn by their author and are
             -- to be written again (here, or by that author) are waiting,
             -- not orphaned.
             AND NOT EXISTS (SELECT 1 FROM reissue q WHERE q.stream = ?1 AND q.target = m.id)
             AND NOT EXISTS (SELECT 1 FROM abandoned a WHERE a.node = m.author)",
            [self.streams.memory],
            |row| row.get(0),
        )?;
        if orphans > 0 {
            problems.push(format!("{orphans} synced rows have no record"));
        }
        Ok(problems)
    }

    /// Counts for status output.
    pub fn counts(&self) -> Result<Counts> {
        let r = self.reader()?;
        let (synced, local_only): (i64, i64) = r.query_row(
            "SELECT COUNT(key), COUNT(*) - COUNT(key) FROM messages",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let conversations: i64 =
            r.query_row("SELECT COUNT(*) FROM conversations", [], |row| row.get(0))?;
        Ok(Counts {
            rows: synced as u64,
            local_only_rows: local_only as u64,
            conversations: conversations as u64,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub rows: u64,
    pub local_only_rows: u64,
    pub conversations: u64,
}

/// The writer connection and what it may remember between transactions.
struct Writer {
    conn: Connection,
    convs: memory::ConvCache,
    /// `PRAGMA data_version` when `convs` was last known good.
    data_version: Option<i64>,
    /// A `Deferred` commit has not been followed by a `Full` one yet.
    deferred_pending: bool,
}

/// Copies committed WAL frames into the database file on its own thread
/// and connection, so commits only append to the WAL. It waits for a lull
/// in commits (or a large backlog), so a bulk sync is not slowed by copying
/// every page a second time while it runs.
struct Checkpointer {
    kick: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long the writer must be quiet before a checkpoint.
const CHECKPOINT_LULL: Duration = Duration::from_millis(250);
/// Commits after which a checkpoint runs even without a lull.
const CHECKPOINT_BACKLOG: u32 = 64;

impl Checkpointer {
    fn start(db: &Path) -> Result<Checkpointer> {
        use std::sync::mpsc::RecvTimeoutError;
        let conn = open_conn(db)?;
        let (kick, woken) = std::sync::mpsc::sync_channel::<()>(1);
        // PASSIVE never blocks the writer or readers. A failure only leaves
        // the WAL longer; the next pass retries.
        let checkpoint = move || {
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        };
        let thread = std::thread::Builder::new()
            .name("selves-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    let mut commits = 1;
                    loop {
                        match woken.recv_timeout(CHECKPOINT_LULL) {
                            Ok(()) if commits < CHECKPOINT_BACKLOG => commits += 1,
                            Ok(()) | Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => {
                                checkpoint();
                                return;
                            }
                        }
                    }
                    checkpoint();
                }
            })
            .map_err(|source| StoreError::Io {
                path: db.to_owned(),
                source,
            })?;
        Ok(Checkpointer {
            kick: Some(kick),
            thread: Some(thread),
        })
    }

    fn kick(&self) {
        if let Some(k) = &self.kick {
            let _ = k.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current pass.
        self.kick.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) struct Reader<'a> {
    store: &'a Store,
    conn: Option<Connection>,
}

impl Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("reader holds a connection until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut pool = self.store.readers.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < MAX_IDLE_READERS {
                pool.push(conn);
            }
        }
    }
}

pub(crate) fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    Ok(conn)
}

/// A read-only connection to `path` that creates nothing: immutable if no
/// write-ahead log is left beside it (so no shared-memory file is needed),
/// else an ordinary read-only one.
fn open_ro(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        ro_uri(path),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    Ok(conn)
}

fn ro_uri(path: &Path) -> String {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let logged = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
    // Percent-encode what a URI path cannot hold as is.
    let mut uri = String::from("file:");
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'%' | b'?' | b'#' => uri.push_str(&format!("%{b:02X}")),
            b if b.is_ascii() && !b.is_ascii_control() => uri.push(*b as char),
            b => uri.push_str(&format!("%{b:02X}")),
        }
    }
    uri.push_str(if logged { "?mode=ro" } else { "?immutable=1" });
    uri
}

/// Creates `path` with mode 0600 if it does not exist, so the database (which
/// holds peer tokens) is private from its first byte. SQLite gives its -wal
/// and -shm files the same mode.
pub(crate) fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

pub(crate) fn unhex_blob<const N: usize>(v: Vec<u8>) -> [u8; N] {
    let mut out = [0u8; N];
    if v.len() == N {
        out.copy_from_slice(&v);
    }
    out
}
