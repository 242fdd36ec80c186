//! The database schema. Migrations are append-only: never edit one that has
//! shipped; add the next. `PRAGMA user_version` counts the applied ones.

use rusqlite::Connection;

use crate::StoreError;

/// Each entry moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: record logs, materialised memory, peers.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    -- Every node this node has heard of; `id` is a local index only.
    CREATE TABLE nodes (
        id      INTEGER PRIMARY KEY,
        node_id TEXT NOT NULL UNIQUE,
        name    TEXT
    );

    CREATE TABLE streams (
        id   INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    );

    -- Highest contiguous seq held per (node, stream). Updated in the same
    -- transaction that stores the records, never ahead of them.
    CREATE TABLE heads (
        node   INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        seq    INTEGER NOT NULL,
        PRIMARY KEY (node, stream)
    ) WITHOUT ROWID;

    -- The record logs. A memory record points at the row it wrote
    -- (`target` = messages.id); serving it sends that row as it stands now,
    -- which is the join of every version seen, so rows are never stored
    -- twice. A void record holds its number and the reason it was refused.
    CREATE TABLE records (
        node   INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        seq    INTEGER NOT NULL,
        target INTEGER,
        void   TEXT,
        PRIMARY KEY (node, stream, seq)
    ) WITHOUT ROWID;

    -- Conversation metadata: the join (see ConversationMeta::join) of what
    -- synced rows carried. `synced` = 0 while only local-only rows have
    -- touched it; such a conversation is not part of the digest.
    CREATE TABLE conversations (
        id                     INTEGER PRIMARY KEY,
        source                 TEXT NOT NULL,
        conversation_id        TEXT NOT NULL,
        title                  TEXT,
        first_ts               INTEGER,
        last_ts                INTEGER,
        project_path           TEXT,
        parent_conversation_id TEXT,
        hash                   BLOB NOT NULL,
        synced                 INTEGER NOT NULL,
        UNIQUE (source, conversation_id)
    );

    -- Messages. `key` is the 16-byte identity of (source, conversation_id,
    -- msg_id), NULL for local-only rows. `arrival` is a local sequence,
    -- bumped whenever a row is inserted or replaced by a winning version:
    -- the search indexer and memex's `since` follow it. Large columns last,
    -- so scans of the small ones never touch overflow pages.
    CREATE TABLE messages (
        id        INTEGER PRIMARY KEY,
        key       BLOB UNIQUE,
        conv      INTEGER NOT NULL,
        arrival   INTEGER NOT NULL,
        hash      BLOB NOT NULL,
        msg_id    TEXT,
        uuid      TEXT NOT NULL,
        role      TEXT NOT NULL,
        sender    TEXT,
        ts        INTEGER NOT NULL,
        edited_at INTEGER,
        channel   TEXT,
        origin    TEXT,
        metadata  TEXT,
        text      TEXT NOT NULL
    );
    CREATE UNIQUE INDEX messages_arrival ON messages (arrival);
    -- Local-only rows have no key; their uuid deduplicates re-imports.
    CREATE UNIQUE INDEX messages_local_uuid ON messages (uuid) WHERE key IS NULL;

    -- Tokens this node has minted: who may call it. Only a digest is kept.
    CREATE TABLE tokens (
        peer         TEXT PRIMARY KEY,
        digest       BLOB NOT NULL UNIQUE,
        created_at   INTEGER NOT NULL,
        -- An invited token must be used before this (ms); NULL once used.
        claim_by     INTEGER,
        claimed_at   INTEGER,
        revoked_at   INTEGER,
        last_seen_at INTEGER,
        invite_host  TEXT,
        invite_port  INTEGER
    ) WITHOUT ROWID;

    -- Peers this node dials.
    CREATE TABLE remotes (
        alias                TEXT PRIMARY KEY,
        url                  TEXT NOT NULL,
        token                TEXT NOT NULL,
        cert_fp              TEXT,
        insecure             INTEGER NOT NULL DEFAULT 0,
        node_id              TEXT,
        node_name            TEXT,
        added_at             INTEGER NOT NULL,
        last_attempt_at      INTEGER,
        last_success_at      INTEGER,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        last_error           TEXT,
        last_error_class     TEXT
    ) WITHOUT ROWID;
    "#,
    // 2: memex v12 peers. `via` names the memex peer that delivered a row's
    // current version (so it is not sent back there); remotes learn their
    // protocol and the two memex cursors.
    r#"
    ALTER TABLE messages ADD COLUMN via TEXT;
    ALTER TABLE remotes ADD COLUMN protocol TEXT NOT NULL DEFAULT 'selves';
    ALTER TABLE remotes ADD COLUMN pulled_to INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE remotes ADD COLUMN pushed_to INTEGER NOT NULL DEFAULT 0;
    "#,
    // 3: shares (docs/shares.md). A share record points at the `files` row
    // of its path, as a memory record points at its message.
    r#"
    CREATE TABLE shares (
        id         INTEGER PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        root       TEXT NOT NULL,
        mode       TEXT NOT NULL,
        layout     TEXT NOT NULL,
        stream     INTEGER NOT NULL,
        added_at   INTEGER NOT NULL,
        removed_at INTEGER
    );

    -- The current version of each path. `origin` is 0 in the flat layout
    -- and the author's node index in the per-origin one. `seen_*` is the
    -- file on disk as last seen matching this version (NULL: not on disk).
    CREATE TABLE files (
        id            INTEGER PRIMARY KEY,
        share         INTEGER NOT NULL,
        origin        INTEGER NOT NULL,
        path          TEXT NOT NULL,
        vv            TEXT NOT NULL,
        deleted       INTEGER NOT NULL,
        blob          BLOB,
        size          INTEGER NOT NULL,
        mtime         INTEGER NOT NULL,
        author        TEXT NOT NULL,
        parent        BLOB,
        append_from   INTEGER,
        seen_size     INTEGER,
        seen_mtime_ns INTEGER,
        seen_ino      INTEGER,
        UNIQUE (share, origin, path)
    );
    -- A file already holding some content (a rename needs no transfer),
    -- and whether a share references a blob (what a peer may fetch).
    CREATE INDEX files_blob ON files (share, blob) WHERE blob IS NOT NULL;
    CREATE INDEX files_parent ON files (share, parent) WHERE parent IS NOT NULL;

    -- Paths not synced, and why: a local file that looks like a secret, a
    -- remote name refused, a symlink on the way.
    CREATE TABLE held (
        share  INTEGER NOT NULL,
        path   TEXT NOT NULL,
        kind   TEXT NOT NULL,
        reason TEXT NOT NULL,
        since  INTEGER NOT NULL,
        PRIMARY KEY (share, path)
    ) WITHOUT ROWID;
    "#,
    // 4: health. What each remote is known to hold of the memory logs (as
    // of its last successful round: the records waiting for it are ours
    // past these), and after how long without a success it counts as down.
    r#"
    ALTER TABLE remotes ADD COLUMN down_after_ms INTEGER;
    CREATE TABLE remote_heads (
        alias  TEXT NOT NULL,
        node   TEXT NOT NULL,
        stream TEXT NOT NULL,
        seq    INTEGER NOT NULL,
        PRIMARY KEY (alias, node, stream)
    ) WITHOUT ROWID;
    "#,
    // 5: SSH tunnels the daemon keeps, one per name, and what the keeper
    // last saw (state, detail, since, how many ssh processes it started).
    r#"
    CREATE TABLE tunnels (
        name        TEXT PRIMARY KEY,
        ssh         TEXT NOT NULL,
        kind        TEXT NOT NULL,
        local_port  INTEGER NOT NULL,
        remote_port INTEGER NOT NULL,
        identity    TEXT,
        added_at    INTEGER NOT NULL,
        state       TEXT NOT NULL DEFAULT 'stopped',
        detail      TEXT,
        since       INTEGER,
        spawns      INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    "#,
    // 6: node cards (stream `nodes`): the newest card of each node, as
    // JSON; a `nodes` record points at its node's card (`target` =
    // nodes.id) and is served as the card held now. When a join finished.
    r#"
    CREATE TABLE cards (
        node       INTEGER PRIMARY KEY,
        updated_at INTEGER NOT NULL,
        card       TEXT NOT NULL
    );
    ALTER TABLE remotes ADD COLUMN joined_at INTEGER;
    "#,
    // 7: the node that uses each token (its hello says), so a hub knows
    // when it last saw each node that dials it.
    r#"
    ALTER TABLE tokens ADD COLUMN node_id TEXT;
    "#,
    // 8: signed logs (selves_wire::sign, crate::chain). Each record keeps
    // its content digest, the chain through it and, where its author
    // signed there, the signature; heads note how far a log was carried
    // from before signing (filled in at the first open, which also chains
    // the records held). A node's bound key; who wrote each message's
    // current version. Forks found, batches refused per peer, branches
    // withdrawn by their authors, own content to write again after a
    // restore. Tokens bound to the key of the node that claimed them, and
    // the callers refused because another node holds the token.
    r#"
    ALTER TABLE records ADD COLUMN digest BLOB;
    ALTER TABLE records ADD COLUMN chain BLOB;
    ALTER TABLE records ADD COLUMN sig BLOB;
    ALTER TABLE heads ADD COLUMN legacy INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE nodes ADD COLUMN key BLOB;
    ALTER TABLE messages ADD COLUMN author INTEGER;
    CREATE TABLE forks (
        node        INTEGER NOT NULL,
        stream      INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        ours        BLOB NOT NULL,
        theirs      BLOB NOT NULL,
        peer        TEXT NOT NULL,
        seen_at     INTEGER NOT NULL,
        resolved_at INTEGER,
        PRIMARY KEY (node, stream, seq)
    ) WITHOUT ROWID;
    CREATE TABLE refusals (
        peer        TEXT NOT NULL,
        kind        TEXT NOT NULL,
        count       INTEGER NOT NULL,
        last_at     INTEGER NOT NULL,
        last_reason TEXT NOT NULL,
        node        TEXT NOT NULL,
        PRIMARY KEY (peer, kind)
    ) WITHOUT ROWID;
    CREATE TABLE abandoned (
        node   INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        seq    INTEGER NOT NULL,
        chain  BLOB NOT NULL,
        key    BLOB NOT NULL,
        sig    BLOB NOT NULL,
        UNIQUE (node, stream, seq, chain)
    );
    CREATE TABLE reissue (
        stream INTEGER NOT NULL,
        target INTEGER NOT NULL,
        PRIMARY KEY (stream, target)
    ) WITHOUT ROWID;
    ALTER TABLE tokens ADD COLUMN node_key BLOB;
    ALTER TABLE tokens ADD COLUMN last_addr TEXT;
    CREATE TABLE token_claims (
        peer    TEXT NOT NULL,
        node_id TEXT NOT NULL,
        addr    TEXT,
        at      INTEGER NOT NULL,
        reason  TEXT NOT NULL,
        PRIMARY KEY (peer, node_id)
    ) WITHOUT ROWID;
    "#,
    // 9: a share that stopped itself (its folder missing, a mass delete
    // held back, …) and why, until it syncs again: status says so. The
    // conversation of a memory record received superseded (without its
    // row), so it is served with that conversation's metadata in turn.
    r#"
    ALTER TABLE shares ADD COLUMN stopped TEXT;
    ALTER TABLE shares ADD COLUMN stopped_at INTEGER;
    ALTER TABLE records ADD COLUMN conv INTEGER;
    "#,
    // 10: after how long without a call a peer that calls this node
    // counts as down (NULL: the default, an hour), as for remotes.
    r#"
    ALTER TABLE tokens ADD COLUMN down_after_ms INTEGER;
    "#,
    // 11: requests refused for an unknown token, per address (counted
    // over the last hour), and when the address was last throttled.
    r#"
    CREATE TABLE login_failures (
        addr         TEXT PRIMARY KEY,
        count        INTEGER NOT NULL,
        first_at     INTEGER NOT NULL,
        last_at      INTEGER NOT NULL,
        throttled_at INTEGER
    ) WITHOUT ROWID;
    "#,
    // 12: remotes (a git repository, a carried folder): per writer in the
    // remote, the last segment applied here (or written, for this node's
    // own), and the streams this node carried then (`covered`: a share
    // added since makes it read everything again). What the remote holds
    // is in remote_heads, as for peers.
    r#"
    ALTER TABLE remotes ADD COLUMN covered TEXT;
    ALTER TABLE remotes ADD COLUMN every_ms INTEGER;
    CREATE TABLE remote_cursors (
        alias   TEXT NOT NULL,
        writer  TEXT NOT NULL,
        segment INTEGER NOT NULL,
        PRIMARY KEY (alias, writer)
    ) WITHOUT ROWID;
    "#,
    // 13: capture (docs/capture.md): the sources this node reads agent
    // sessions and notes from, how far it has read each file, and the
    // messages it captured but holds back because they look secret.
    r#"
    CREATE TABLE captures (
        name       TEXT PRIMARY KEY,
        format     TEXT NOT NULL,
        path       TEXT NOT NULL,
        options    TEXT NOT NULL,
        added_at   INTEGER NOT NULL,
        last_run   INTEGER,
        last_error TEXT,
        rows       INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE capture_files (
        capture TEXT NOT NULL,
        path    TEXT NOT NULL,
        size    INTEGER NOT NULL,
        mtime   INTEGER NOT NULL,
        offset  INTEGER NOT NULL,
        head    BLOB NOT NULL,
        context TEXT,
        PRIMARY KEY (capture, path)
    ) WITHOUT ROWID;
    -- `recent` reads the newest rows first; conversations by id alone.
    CREATE INDEX messages_ts ON messages (ts);
    CREATE INDEX conversations_id ON conversations (conversation_id);
    -- Keys a sqlite source wrote back into its application's table: read
    -- back, they are not captured again as this node's.
    CREATE TABLE capture_written (
        capture TEXT NOT NULL,
        key     TEXT NOT NULL,
        PRIMARY KEY (capture, key)
    ) WITHOUT ROWID;
    CREATE TABLE held_rows (
        key     BLOB PRIMARY KEY,
        capture TEXT NOT NULL,
        row     TEXT NOT NULL,
        reason  TEXT NOT NULL,
        since   INTEGER NOT NULL,
        dropped INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings `conn` up to [`SCHEMA_VERSION`], each step in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the lock.
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now > i as i64 {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// The search index lives in its own file: it is derived data, rebuilt from
/// `messages` whenever it is missing or belongs to another database.
pub const SEARCH_SCHEMA: &str = r#"
    CREATE TABLE IF NOT EXISTS state (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        instance  TEXT NOT NULL,
        watermark INTEGER NOT NULL
    );
    CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5 (
        text,
        content = '',
        contentless_delete = 1,
        tokenize = 'unicode61 remove_diacritics 2'
    );
"#;
