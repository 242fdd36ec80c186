//! The memory materialiser: turns row versions into the `messages` and
//! `conversations` tables, resolving versions of one row by
//! [`selves_wire::row::Version`] (last writer wins, a total order) and
//! conversation metadata by [`ConversationMeta::join`]. Both are joins, so
//! every node that has seen the same versions holds the same state, whatever
//! the order they arrived in.
//!
//! Also local capture (`remember`, `import`), which appends this node's own
//! records, and export.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, Transaction, params};
use selves_wire::row::{Version, VersionHash};
use selves_wire::{ConversationMeta, Row, RowKey};

use crate::{Result, Store};

/// How capture treats rows.
#[derive(Debug, Clone, Default)]
pub struct CaptureOptions {
    /// The `origin` given to rows that carry none (normally this node's
    /// name). `None` keeps their origin null: provenance is never invented.
    pub stamp_origin: Option<String>,
    /// The memex peer the rows came from, if any: its name is kept on the
    /// rows so they are not sent back to it.
    pub via: Option<String>,
    /// A memex remote's pull cursor to move, in the same transaction.
    pub pulled_to: Option<(String, i64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureSummary {
    /// New rows.
    pub inserted: u64,
    /// Rows replaced by a newer version.
    pub updated: u64,
    /// Rows already held exactly.
    pub unchanged: u64,
    /// Versions older than the one held, kept out.
    pub stale: u64,
    /// Rows without `msg_id`: stored here, never synced.
    pub local_only: u64,
    /// (index in the input, reason) of rows refused.
    pub refused: Vec<(usize, String)>,
}

impl CaptureSummary {
    pub fn merge(&mut self, other: CaptureSummary) {
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.stale += other.stale;
        self.local_only += other.local_only;
        self.refused.extend(other.refused);
    }
}

/// What writing one row version did to the message (its conversation is
/// reported apart, in [`Written`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Inserted(i64),
    Updated(i64),
    Unchanged(i64),
    Stale(i64),
}

/// What writing one row version did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub outcome: Outcome,
    /// The row's conversation metadata changed the conversation.
    pub conversation_changed: bool,
}

impl Written {
    /// Whether the row's state as served to peers changed: the message, or
    /// the conversation it carries.
    pub(crate) fn changed(self) -> bool {
        self.conversation_changed
            || matches!(self.outcome, Outcome::Inserted(_) | Outcome::Updated(_))
    }
}

impl Outcome {
    pub(crate) fn id(self) -> i64 {
        match self {
            Outcome::Inserted(id)
            | Outcome::Updated(id)
            | Outcome::Unchanged(id)
            | Outcome::Stale(id) => id,
        }
    }
}

pub(crate) struct Conv {
    id: i64,
    meta: ConversationMeta,
    synced: bool,
    dirty: bool,
}

/// Conversations as the writer last wrote them: source → conversation_id
/// → state (two levels, so lookups borrow instead of allocating a key per
/// row). Kept across transactions by the writer while valid.
#[derive(Default)]
pub(crate) struct ConvCache(HashMap<String, HashMap<String, Conv>>);

/// Conversations remembered at most; past this the cache starts over.
pub(crate) const CONV_CACHE_MAX: usize = 100_000;

impl ConvCache {
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
    pub(crate) fn len(&self) -> usize {
        self.0.values().map(HashMap::len).sum()
    }
}

/// One write transaction's view of the materialised state. Conversation
/// metadata is joined in memory and written once per transaction.
pub(crate) struct Materialiser<'t, 'c> {
    tx: &'t Transaction<'t>,
    convs: &'c mut ConvCache,
    next_arrival: i64,
    /// Written on every row this transaction inserts or replaces.
    via: Option<String>,
    /// Held for the transaction: looking a statement up in the cache hashes
    /// its whole text, which is measurable at one call per row.
    insert: rusqlite::CachedStatement<'t>,
}

const INSERT_MESSAGE: &str = "INSERT INTO messages (key, conv, arrival, hash, msg_id, uuid, role,
        sender, ts, edited_at, channel, origin, metadata, text, via, author)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
     ON CONFLICT DO NOTHING";

/// Fills in what a row must have before it is hashed: a uuid derived from
/// its identity when the writer gave none, so every node derives the same.
pub(crate) fn normalise(row: &mut Row) {
    if row.uuid.is_none() {
        row.uuid = Some(row.derived_uuid());
    }
}

impl<'t, 'c> Materialiser<'t, 'c> {
    pub(crate) fn new(
        tx: &'t Transaction<'t>,
        convs: &'c mut ConvCache,
        via: Option<String>,
    ) -> Result<Self> {
        let max: i64 = tx.query_row("SELECT COALESCE(MAX(arrival), 0) FROM messages", [], |r| {
            r.get(0)
        })?;
        Ok(Materialiser {
            tx,
            convs,
            next_arrival: max + 1,
            via,
            insert: tx.prepare_cached(INSERT_MESSAGE)?,
        })
    }

    /// Writes one (normalised, validated) row version, written by the
    /// node of local index `author` (the log whose record carries it;
    /// `None` when unknown: carried from before signing).
    pub(crate) fn put(&mut self, row: &Row, author: Option<i64>) -> Result<Written> {
        self.put_hashed(row, row.version_hash(), author)
    }

    /// [`Materialiser::put`] with the row's version hash already computed.
    pub(crate) fn put_hashed(
        &mut self,
        row: &Row,
        hash: VersionHash,
        author: Option<i64>,
    ) -> Result<Written> {
        let key = row.key();
        let (conv, conversation_changed) = self.contribute(row, key.is_some())?;
        let outcome = self.put_message(row, key, conv, hash, author)?;
        Ok(Written {
            outcome,
            conversation_changed,
        })
    }

    /// Joins a conversation view that travelled without its row (a
    /// superseded record's). Returns the conversation's id and whether it
    /// changed.
    pub(crate) fn join_conversation(
        &mut self,
        source: String,
        conversation_id: String,
        meta: ConversationMeta,
    ) -> Result<(i64, bool)> {
        let carrier = Row {
            source,
            conversation_id,
            msg_id: None,
            uuid: None,
            role: String::new(),
            sender: None,
            text: String::new(),
            ts: meta.first_ts.unwrap_or(0),
            edited_at: None,
            channel: None,
            metadata: None,
            origin: None,
            conversation: Some(meta),
        };
        self.contribute(&carrier, true)
    }

    fn put_message(
        &mut self,
        row: &Row,
        key: Option<RowKey>,
        conv: i64,
        hash: VersionHash,
        author: Option<i64>,
    ) -> Result<Outcome> {
        // Most rows are new: try the insert first, which probes the unique
        // indexes once, and look at what is held only on a conflict.
        if let Some(id) = self.try_insert(key, conv, hash, row, author)? {
            return Ok(Outcome::Inserted(id));
        }
        let Some(key) = key else {
            // A local-only row already held (same uuid).
            let id = self
                .tx
                .prepare_cached("SELECT id FROM messages WHERE key IS NULL AND uuid = ?1")?
                .query_row(params![row.uuid], |r| r.get(0))?;
            return Ok(Outcome::Unchanged(id));
        };
        let (id, old_hash, old_edited, old_origin) = self
            .tx
            .prepare_cached("SELECT id, hash, edited_at, origin FROM messages WHERE key = ?1")?
            .query_row(params![&key.0[..]], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    crate::unhex_blob::<32>(r.get(1)?),
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })?;
        if old_hash == hash.0 {
            return Ok(Outcome::Unchanged(id));
        }
        let held = Version {
            edited_at: old_edited,
            origin: old_origin.as_deref(),
            hash: VersionHash(old_hash),
        };
        let version = Version {
            edited_at: row.edited_at,
            origin: row.origin.as_deref(),
            hash,
        };
        if version <= held {
            return Ok(Outcome::Stale(id));
        }
        let arrival = self.take_arrival();
        self.tx
            .prepare_cached(
                "UPDATE messages SET conv = ?2, arrival = ?3, hash = ?4, msg_id = ?5, uuid = ?6,
                    role = ?7, sender = ?8, ts = ?9, edited_at = ?10, channel = ?11,
                    origin = ?12, metadata = ?13, text = ?14, via = ?15, author = ?16
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                conv,
                arrival,
                &hash.0[..],
                row.msg_id,
                row.uuid,
                row.role,
                row.sender,
                row.ts,
                row.edited_at,
                row.channel,
                row.origin,
                row.metadata,
                row.text,
                self.via,
                author,
            ])?;
        Ok(Outcome::Updated(id))
    }

    /// Inserts the row unless one with its identity (or, for a local-only
    /// row, its uuid) is held. Returns the new id, or `None` on a conflict.
    fn try_insert(
        &mut self,
        key: Option<RowKey>,
        conv: i64,
        hash: VersionHash,
        row: &Row,
        author: Option<i64>,
    ) -> Result<Option<i64>> {
        let arrival = self.next_arrival;
        let inserted = self.insert.execute(params![
            key.as_ref().map(|k| &k.0[..]),
            conv,
            arrival,
            &hash.0[..],
            row.msg_id,
            row.uuid,
            row.role,
            row.sender,
            row.ts,
            row.edited_at,
            row.channel,
            row.origin,
            row.metadata,
            row.text,
            self.via,
            author,
        ])?;
        if inserted == 0 {
            return Ok(None);
        }
        self.next_arrival += 1;
        Ok(Some(self.tx.last_insert_rowid()))
    }

    fn take_arrival(&mut self) -> i64 {
        let a = self.next_arrival;
        self.next_arrival += 1;
        a
    }

    /// Joins the row's conversation metadata into its conversation; returns
    /// the conversation's id and whether the join changed it. Local-only
    /// rows shape a conversation only until a synced row reaches it. A row
    /// without a `conversation` object says nothing of its conversation (as
    /// in memex, which upserts a conversation only from that object): it
    /// contributes the join's identity, so it can neither rename the
    /// conversation nor move its times. (Deriving times from the row's `ts`
    /// made a title-less view newer than the titled one, and erased the
    /// title everywhere.)
    fn contribute(&mut self, row: &Row, synced: bool) -> Result<(i64, bool)> {
        let nothing = ConversationMeta::default();
        let meta = row.conversation.as_ref().unwrap_or(&nothing);
        let cached = self
            .convs
            .0
            .get(&row.source)
            .is_some_and(|m| m.contains_key(&row.conversation_id));
        if !cached {
            let conv = self.load_conv(&row.source, &row.conversation_id, meta, synced)?;
            self.convs
                .0
                .entry(row.source.clone())
                .or_default()
                .insert(row.conversation_id.clone(), conv);
        }
        let conv = self
            .convs
            .0
            .get_mut(&row.source)
            .and_then(|m| m.get_mut(&row.conversation_id))
            .expect("cached above");
        let mut changed = false;
        if synced && !conv.synced {
            conv.meta = meta.clone();
            conv.synced = true;
            changed = true;
        } else if synced == conv.synced {
            changed = conv.meta.join_from(meta);
        }
        conv.dirty |= changed;
        Ok((conv.id, changed))
    }

    fn load_conv(
        &self,
        source: &str,
        conversation_id: &str,
        meta: &ConversationMeta,
        synced: bool,
    ) -> Result<Conv> {
        let found = self
            .tx
            .prepare_cached(
                "SELECT id, title, first_ts, last_ts, project_path, parent_conversation_id, synced
                 FROM conversations WHERE source = ?1 AND conversation_id = ?2",
            )?
            .query_row(params![source, conversation_id], |r| {
                Ok(Conv {
                    id: r.get(0)?,
                    meta: ConversationMeta {
                        title: r.get(1)?,
                        first_ts: r.get(2)?,
                        last_ts: r.get(3)?,
                        project_path: r.get(4)?,
                        parent_conversation_id: r.get(5)?,
                    },
                    synced: r.get(6)?,
                    dirty: false,
                })
            })
            .optional()?;
        if let Some(conv) = found {
            return Ok(conv);
        }
        // Insert now to get the id; the metadata is written at flush.
        self.tx
            .prepare_cached(
                "INSERT INTO conversations (source, conversation_id, hash, synced)
                 VALUES (?1, ?2, x'', ?3)",
            )?
            .execute(params![source, conversation_id, synced])?;
        Ok(Conv {
            id: self.tx.last_insert_rowid(),
            meta: meta.clone(),
            synced,
            dirty: true,
        })
    }

    /// Writes the conversations this transaction changed.
    pub(crate) fn flush(self) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(
            "UPDATE conversations SET title = ?2, first_ts = ?3, last_ts = ?4, project_path = ?5,
                parent_conversation_id = ?6, hash = ?7, synced = ?8
             WHERE id = ?1",
        )?;
        let all = self
            .convs
            .0
            .iter_mut()
            .flat_map(|(source, m)| m.iter_mut().map(move |(id, conv)| (source, id, conv)));
        for (source, conversation_id, conv) in all {
            if !conv.dirty {
                continue;
            }
            conv.dirty = false;
            let m = &conv.meta;
            stmt.execute(params![
                conv.id,
                m.title,
                m.first_ts,
                m.last_ts,
                m.project_path,
                m.parent_conversation_id,
                &m.hash(source, conversation_id)[..],
                conv.synced,
            ])?;
        }
        Ok(())
    }
}

/// Columns of a row as [`read_row`] expects them, from `messages m` joined
/// with `conversations c`.
pub(crate) const ROW_COLUMNS: &str = "c.source, c.conversation_id, m.msg_id, m.uuid, m.role, \
     m.sender, m.text, m.ts, m.edited_at, m.channel, m.metadata, m.origin, c.title, c.first_ts, \
     c.last_ts, c.project_path, c.parent_conversation_id";

/// Reads a [`Row`] from [`ROW_COLUMNS`] starting at column `at`.
pub(crate) fn read_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Row> {
    Ok(Row {
        source: r.get(at)?,
        conversation_id: r.get(at + 1)?,
        msg_id: r.get(at + 2)?,
        uuid: r.get(at + 3)?,
        role: r.get(at + 4)?,
        sender: r.get(at + 5)?,
        text: r.get(at + 6)?,
        ts: r.get(at + 7)?,
        edited_at: r.get(at + 8)?,
        channel: r.get(at + 9)?,
        metadata: r.get(at + 10)?,
        origin: r.get(at + 11)?,
        conversation: Some(ConversationMeta {
            title: r.get(at + 12)?,
            first_ts: r.get(at + 13)?,
            last_ts: r.get(at + 14)?,
            project_path: r.get(at + 15)?,
            parent_conversation_id: r.get(at + 16)?,
        }),
    })
}

impl Store {
    /// Captures rows written on this node, or handed to it by a memex peer:
    /// each new or winning version of a synced row becomes a record in this
    /// node's own `memory` log, so it relays on to native peers. One
    /// transaction, durable when this returns.
    pub fn capture(&self, rows: Vec<Row>, opts: &CaptureOptions) -> Result<CaptureSummary> {
        let mut summary = CaptureSummary::default();
        self.write_memory(crate::Durability::Full, |tx, convs| {
            let mut own = crate::log::OwnLog::open(tx, self, self.streams.memory)?;
            let mut mat = Materialiser::new(tx, convs, opts.via.clone())?;
            for (i, mut row) in rows.into_iter().enumerate() {
                if row.origin.is_none() {
                    row.origin.clone_from(&opts.stamp_origin);
                }
                normalise(&mut row);
                if let Err(e) = row.validate() {
                    summary.refused.push((i, e.to_string()));
                    continue;
                }
                let synced = row.msg_id.is_some();
                // This node vouches for what it captures, from a memex
                // peer too: the record is in its log, signed by it.
                let written = mat.put(&row, Some(self.me.idx))?;
                match written.outcome {
                    _ if !synced => summary.local_only += 1,
                    Outcome::Inserted(_) => summary.inserted += 1,
                    Outcome::Updated(_) => summary.updated += 1,
                    // A newer conversation title on an unchanged message is
                    // an update of the row as peers see it.
                    _ if written.changed() => summary.updated += 1,
                    Outcome::Unchanged(_) => summary.unchanged += 1,
                    Outcome::Stale(_) => summary.stale += 1,
                }
                // Every change a peer would see travels as a record.
                if synced && written.changed() {
                    let id = written.outcome.id();
                    // The record carries the version held now: this one,
                    // or a newer one it lost to (then it still moved the
                    // conversation, which travels with the row).
                    let hash = selves_wire::VersionHash(
                        tx.prepare_cached("SELECT hash FROM messages WHERE id = ?1")?
                            .query_row([id], |r| r.get::<_, Vec<u8>>(0))
                            .map(crate::unhex_blob::<32>)?,
                    );
                    let d = selves_wire::sign::row_digest(&hash);
                    own.append(tx, Some(id), &d, row.text.len() + 400)?;
                }
            }
            mat.flush()?;
            own.finish(tx)?;
            if let Some((alias, cursor)) = &opts.pulled_to {
                tx.execute(
                    "UPDATE remotes SET pulled_to = MAX(pulled_to, ?2) WHERE alias = ?1",
                    params![alias, cursor],
                )?;
            }
            Ok(())
        })?;
        Ok(summary)
    }

    /// Rows with this `msg_id` (in any conversation, or one source's),
    /// forgotten ones left out.
    pub fn rows_by_msg_id(&self, msg_id: &str, source: Option<&str>) -> Result<Vec<Row>> {
        let r = self.reader()?;
        let mut stmt = r.prepare(&format!(
            "SELECT {ROW_COLUMNS} FROM messages m JOIN conversations c ON c.id = m.conv
             WHERE m.msg_id = ?1 AND (?2 IS NULL OR c.source = ?2) AND m.edited_at IS NOT ?3
             ORDER BY c.source, c.conversation_id"
        ))?;
        let rows = stmt
            .query_map(
                params![msg_id, source, selves_wire::row::FORGOTTEN_AT],
                |row| read_row(row, 0),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Forgets local-only rows (they never synced, so no tombstone needs
    /// to travel): their text is deleted here. Returns how many.
    pub fn forget_local(&self, uuids: &[String]) -> Result<u64> {
        self.write(|tx| {
            let mut n = 0;
            for uuid in uuids {
                n += tx.execute(
                    "UPDATE messages SET text = '', edited_at = ?2,
                        arrival = (SELECT MAX(arrival) FROM messages) + 1
                     WHERE key IS NULL AND uuid = ?1",
                    params![uuid, selves_wire::row::FORGOTTEN_AT],
                )? as u64;
            }
            Ok(n)
        })
    }

    /// The row with this identity, if held.
    pub fn get_row(
        &self,
        source: &str,
        conversation_id: &str,
        msg_id: &str,
    ) -> Result<Option<Row>> {
        let key = selves_wire::row::row_key(source, conversation_id, msg_id);
        let r = self.reader()?;
        Ok(r.query_row(
            &format!(
                "SELECT {ROW_COLUMNS} FROM messages m JOIN conversations c ON c.id = m.conv
                 WHERE m.key = ?1"
            ),
            params![&key.0[..]],
            |row| read_row(row, 0),
        )
        .optional()?)
    }

    /// Calls `sink` with every row, local-only ones included, in a stable
    /// order: by source, conversation, ts, msg_id, uuid. Two converged nodes
    /// export the same synced rows byte for byte. Memory stays bounded: the
    /// sort holds only the small columns (SQLite spills it to disk when
    /// large), and each row is then read by id.
    pub fn export(&self, mut sink: impl FnMut(Row) -> std::io::Result<()>) -> Result<u64> {
        let r = self.reader()?;
        // One read transaction: the order and the rows are one snapshot.
        r.execute_batch("BEGIN")?;
        let result = (|| {
            let mut order = r.prepare(
                "SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conv
                 ORDER BY c.source, c.conversation_id, m.ts, m.msg_id, m.uuid",
            )?;
            let mut by_id = r.prepare(&format!(
                "SELECT {ROW_COLUMNS} FROM messages m JOIN conversations c ON c.id = m.conv
                 WHERE m.id = ?1"
            ))?;
            let mut ids = order.query([])?;
            let mut n = 0;
            while let Some(id) = ids.next()? {
                let id: i64 = id.get(0)?;
                let row = by_id.query_row(params![id], |row| read_row(row, 0))?;
                sink(row).map_err(|e| crate::StoreError::Io {
                    path: "<export>".into(),
                    source: e,
                })?;
                n += 1;
            }
            Ok(n)
        })();
        r.execute_batch("COMMIT")?;
        result
    }
}
