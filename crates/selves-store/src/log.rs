//! Record logs: one per (node, stream), numbered 1, 2, 3… by the node that
//! wrote them and never rewritten. Applying a remote range stores its
//! records and materialises them in one transaction, and moves the head in
//! that same transaction, so a head never runs ahead of what is applied.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use selves_wire::native::{Head, MemoryDigest, NodeInfo, Range, Record, RecordBatch, Voided};
use selves_wire::{NodeId, StreamName};

use crate::memory::{Materialiser, ROW_COLUMNS, normalise, read_row};
use crate::{Durability, Result, Store, StoreError};

/// The local index of node `id`, adding it (and noting its name) if new.
pub(crate) fn node_index(conn: &Connection, id: &NodeId, name: Option<&str>) -> Result<i64> {
    let found: Option<(i64, Option<String>)> = conn
        .prepare_cached("SELECT id, name FROM nodes WHERE node_id = ?1")?
        .query_row([id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match found {
        Some((idx, old)) => {
            if name.is_some() && old.as_deref() != name {
                conn.prepare_cached("UPDATE nodes SET name = ?2 WHERE id = ?1")?
                    .execute(params![idx, name])?;
            }
            Ok(idx)
        }
        None => {
            conn.prepare_cached("INSERT INTO nodes (node_id, name) VALUES (?1, ?2)")?
                .execute(params![id.as_str(), name])?;
            Ok(conn.last_insert_rowid())
        }
    }
}

/// The local index of a stream, adding it if new.
pub(crate) fn stream_index(conn: &Connection, stream: &StreamName) -> Result<i64> {
    let found: Option<i64> = conn
        .prepare_cached("SELECT id FROM streams WHERE name = ?1")?
        .query_row([stream.as_str()], |r| r.get(0))
        .optional()?;
    match found {
        Some(idx) => Ok(idx),
        None => {
            conn.prepare_cached("INSERT INTO streams (name) VALUES (?1)")?
                .execute([stream.as_str()])?;
            Ok(conn.last_insert_rowid())
        }
    }
}

pub(crate) fn head_of(conn: &Connection, node: i64, stream: i64) -> Result<u64> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM heads WHERE node = ?1 AND stream = ?2")?
        .query_row(params![node, stream], |r| r.get(0))
        .optional()?;
    Ok(seq.unwrap_or(0) as u64)
}

pub(crate) fn set_head(conn: &Connection, node: i64, stream: i64, seq: u64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO heads (node, stream, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (node, stream) DO UPDATE SET seq = excluded.seq",
    )?
    .execute(params![node, stream, seq as i64])?;
    Ok(())
}

pub(crate) const INSERT_RECORD: &str =
    "INSERT INTO records (node, stream, seq, target, void) VALUES (?1, ?2, ?3, ?4, ?5)";

/// Appends to this node's own log within one transaction.
pub(crate) struct OwnLog {
    node: i64,
    stream: i64,
    start: u64,
    head: u64,
}

impl OwnLog {
    pub(crate) fn open(tx: &Transaction<'_>, node: i64, stream: i64) -> Result<Self> {
        let head = head_of(tx, node, stream)?;
        Ok(OwnLog {
            node,
            stream,
            start: head,
            head,
        })
    }

    pub(crate) fn append(&mut self, tx: &Transaction<'_>, target: Option<i64>) -> Result<u64> {
        self.head += 1;
        tx.prepare_cached(INSERT_RECORD)?.execute(params![
            self.node,
            self.stream,
            self.head as i64,
            target,
            None::<&str>
        ])?;
        Ok(self.head)
    }

    pub(crate) fn finish(self, tx: &Transaction<'_>) -> Result<()> {
        if self.head != self.start {
            set_head(tx, self.node, self.stream, self.head)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplySummary {
    /// Records newly stored.
    pub accepted: u64,
    /// Records already held.
    pub duplicates: u64,
    /// Rows whose materialised state changed (inserted or replaced).
    pub changed_rows: u64,
    pub voided: Vec<Voided>,
    /// Heads of the (node, stream)s touched, after the commit.
    pub heads: Vec<Head>,
}

/// The result of reading record ranges for a peer.
#[derive(Debug, Clone, Default)]
pub struct RangeRead {
    pub batches: Vec<RecordBatch>,
    /// A limit stopped the read before the ranges were exhausted.
    pub more: bool,
    pub records: usize,
}

/// Rough JSON size of a record, for batch sizing.
pub fn approx_record_bytes(rec: &Record) -> usize {
    match rec {
        Record::Row(r) => {
            400 + r.text.len()
                + r.metadata.as_ref().map_or(0, String::len)
                + r.conversation_id.len()
                + r.conversation
                    .as_ref()
                    .and_then(|c| c.title.as_ref())
                    .map_or(0, String::len)
        }
        Record::File(f) => 300 + f.path.as_str().len() + 40 * f.vv.0.len(),
        Record::Node(c) => 300 + c.role.len() + c.location.len() + c.interface.len(),
        Record::Void(why) => 16 + why.len(),
    }
}

impl Store {
    /// The streams this node carries: memory, node cards and one per share.
    pub fn streams(&self) -> Result<Vec<StreamName>> {
        let mut out = vec![StreamName::memory(), StreamName::nodes()];
        out.extend(self.shares()?.into_iter().map(|s| s.stream));
        Ok(out)
    }

    /// The local index of a carried stream.
    fn carried(&self, stream: &StreamName) -> Result<i64> {
        if stream.is_memory() {
            return Ok(self.streams.memory);
        }
        if stream.is_nodes() {
            return Ok(self.streams.nodes);
        }
        match self.share_of(stream)? {
            Some(share) => Ok(share.stream_idx),
            None => Err(StoreError::UnknownStream(stream.clone())),
        }
    }

    /// The head of one (node, stream): 0 when nothing is held.
    pub fn head(&self, node: &NodeId, stream: &StreamName) -> Result<u64> {
        let r = self.reader()?;
        let seq: Option<i64> = r
            .prepare_cached(
                "SELECT h.seq FROM heads h JOIN nodes n ON n.id = h.node
                 JOIN streams s ON s.id = h.stream WHERE n.node_id = ?1 AND s.name = ?2",
            )?
            .query_row(params![node.as_str(), stream.as_str()], |r| r.get(0))
            .optional()?;
        Ok(seq.unwrap_or(0) as u64)
    }

    /// The log version: the sum of every head. It grows whenever a record
    /// is stored here, by this process or another, and never otherwise.
    pub fn log_version(&self) -> Result<u64> {
        let r = self.reader()?;
        let v: i64 = r
            .prepare_cached("SELECT coalesce(sum(seq), 0) FROM heads")?
            .query_row([], |r| r.get(0))?;
        Ok(v as u64)
    }

    /// Every head this node holds, sorted.
    pub fn heads(&self) -> Result<Vec<Head>> {
        let r = self.reader()?;
        read_heads(&r)
    }

    /// The names this node knows for node ids.
    pub fn known_nodes(&self) -> Result<Vec<NodeInfo>> {
        let r = self.reader()?;
        let mut stmt =
            r.prepare("SELECT node_id, name FROM nodes WHERE name IS NOT NULL ORDER BY node_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name) = row?;
            if let (Ok(id), Ok(name)) = (id.parse(), name.parse()) {
                out.push(NodeInfo { id, name });
            }
        }
        Ok(out)
    }

    /// Notes names a peer told us (never our own, which config decides).
    pub fn learn_nodes(&self, nodes: &[NodeInfo]) -> Result<()> {
        let news: Vec<&NodeInfo> = {
            let known = self.known_nodes()?;
            nodes
                .iter()
                .filter(|n| n.id != self.me.id && !known.contains(n))
                .collect()
        };
        if news.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            for n in news {
                node_index(tx, &n.id, Some(n.name.as_str()))?;
            }
            Ok(())
        })
    }

    /// Stores and materialises records received from a peer, all in one
    /// transaction committed before this returns, as durably as asked: with
    /// [`Durability::Full`] what it reports is on disk. Records already held are skipped, so a
    /// repeated or overlapping range is harmless; a range that starts past
    /// the head (a gap) is refused whole.
    pub fn apply(&self, batches: Vec<RecordBatch>, durability: Durability) -> Result<ApplySummary> {
        self.write_memory(durability, |tx, convs| {
            let mut summary = ApplySummary::default();
            let mut mat = Materialiser::new(tx, convs, None)?;
            let mut insert_record = tx.prepare_cached(INSERT_RECORD)?;
            let mut touched = BTreeMap::new();
            for batch in batches {
                let stream = if batch.stream.is_memory() {
                    self.streams.memory
                } else if batch.stream.is_nodes() {
                    self.streams.nodes
                } else {
                    // Share records are resolved against the folder by the
                    // share engine, which commits them with commit_share.
                    return Err(StoreError::UnknownStream(batch.stream));
                };
                let cards = stream == self.streams.nodes;
                let len = batch.records.len() as u64;
                if len == 0 {
                    continue;
                }
                let end = batch.start + len - 1;
                if batch.node == self.me.id {
                    let head = head_of(tx, self.me.idx, stream)?;
                    if end > head {
                        return Err(StoreError::IdentityClash {
                            stream: batch.stream,
                            have: head,
                            got: end,
                        });
                    }
                    summary.duplicates += len;
                    continue;
                }
                let node = node_index(tx, &batch.node, None)?;
                let head = head_of(tx, node, stream)?;
                if batch.start > head + 1 {
                    return Err(StoreError::Gap {
                        node: batch.node,
                        stream: batch.stream,
                        have: head,
                        got: batch.start,
                    });
                }
                for (i, record) in batch.records.into_iter().enumerate() {
                    let seq = batch.start + i as u64;
                    if seq <= head {
                        summary.duplicates += 1;
                        continue;
                    }
                    let (target, void) = match record {
                        Record::File(_) => (None, Some("a file version outside a share".into())),
                        Record::Node(_) if !cards => {
                            (None, Some("a node card in the memory stream".into()))
                        }
                        Record::Row(_) if cards => {
                            (None, Some("a memory row in the nodes stream".into()))
                        }
                        Record::Node(card) => match card.check() {
                            Err(e) => (None, Some(e)),
                            // A node writes only its own card.
                            Ok(()) if card.id != batch.node => (
                                None,
                                Some(format!("a card for node {} in the log of another", card.id)),
                            ),
                            Ok(()) => {
                                crate::cards::put_card(tx, node, &card)?;
                                (Some(node), None)
                            }
                        },
                        Record::Row(mut row) => {
                            normalise(&mut row);
                            match row.validate() {
                                Err(e) => (None, Some(e.to_string())),
                                Ok(()) if row.msg_id.is_none() => (
                                    None,
                                    Some("row has no msg_id: local-only rows never sync".into()),
                                ),
                                Ok(()) => {
                                    let written = mat.put(&row)?;
                                    if written.changed() {
                                        summary.changed_rows += 1;
                                    }
                                    (Some(written.outcome.id()), None)
                                }
                            }
                        }
                        Record::Void(why) => (None, Some(why)),
                    };
                    if let Some(why) = &void {
                        summary.voided.push(Voided {
                            node: batch.node.clone(),
                            stream: batch.stream.clone(),
                            seq,
                            reason: why.clone(),
                        });
                    }
                    insert_record.execute(params![node, stream, seq as i64, target, void])?;
                    summary.accepted += 1;
                }
                if end > head {
                    set_head(tx, node, stream, end)?;
                }
                touched.insert((batch.node.clone(), batch.stream.clone()), (node, stream));
            }
            mat.flush()?;
            for ((node_id, stream_name), (node, stream)) in touched {
                summary.heads.push(Head {
                    node: node_id,
                    stream: stream_name,
                    seq: head_of(tx, node, stream)?,
                });
            }
            Ok(summary)
        })
    }

    /// Reads records after each range's `after`, in range order, until
    /// `max_records` or about `max_bytes` (at least one record is always
    /// returned when any is due). Each record carries its row as it stands
    /// now: the newest version this node holds, which is never older than
    /// the version the record first carried.
    pub fn read_ranges(
        &self,
        ranges: &[Range],
        max_records: usize,
        max_bytes: usize,
    ) -> Result<RangeRead> {
        let r = self.reader()?;
        let mut out = RangeRead::default();
        let mut bytes = 0usize;
        let mut stmt = r.prepare_cached(&format!(
            "SELECT r.seq, r.void, {ROW_COLUMNS}
             FROM records r
             LEFT JOIN messages m ON m.id = r.target
             LEFT JOIN conversations c ON c.id = m.conv
             WHERE r.node = ?1 AND r.stream = ?2 AND r.seq > ?3
             ORDER BY r.seq LIMIT ?4"
        ))?;
        let mut files_stmt = r.prepare_cached(
            "SELECT r.seq, r.void, r.target FROM records r
             WHERE r.node = ?1 AND r.stream = ?2 AND r.seq > ?3 ORDER BY r.seq LIMIT ?4",
        )?;
        'ranges: for range in ranges {
            let stream = self.carried(&range.stream)?;
            let node: Option<i64> = r
                .prepare_cached("SELECT id FROM nodes WHERE node_id = ?1")?
                .query_row([range.node.as_str()], |row| row.get(0))
                .optional()?;
            let Some(node) = node else { continue };
            let budget = max_records - out.records;
            let memory = range.stream.is_memory();
            let cards = range.stream.is_nodes();
            let query = params![node, stream, range.after as i64, budget as i64 + 1];
            let mut rows = if memory {
                stmt.query(query)?
            } else {
                files_stmt.query(query)?
            };
            let mut batch: Option<RecordBatch> = None;
            while let Some(row) = rows.next()? {
                let seq = row.get::<_, i64>(0)? as u64;
                let void: Option<String> = row.get(1)?;
                let record = match void {
                    Some(why) => Record::Void(why),
                    None if memory => Record::Row(Box::new(read_row(row, 2)?)),
                    // A card record serves its node's newest card.
                    None if cards => crate::cards::card_of(&r, row.get(2)?)?.map_or_else(
                        || Record::Void("the node card is missing".into()),
                        |c| Record::Node(Box::new(c)),
                    ),
                    // A share record serves its path's current version.
                    None => Store::served_file(&r, row.get(2)?)?
                        .unwrap_or_else(|| Record::Void("the file entry is missing".into())),
                };
                let size = approx_record_bytes(&record);
                if out.records >= max_records || (out.records > 0 && bytes + size > max_bytes) {
                    out.more = true;
                    if let Some(b) = batch.take() {
                        out.batches.push(b);
                    }
                    break 'ranges;
                }
                bytes += size;
                out.records += 1;
                batch
                    .get_or_insert_with(|| RecordBatch {
                        node: range.node.clone(),
                        stream: range.stream.clone(),
                        start: seq,
                        records: Vec::new(),
                    })
                    .records
                    .push(record);
            }
            if let Some(b) = batch {
                out.batches.push(b);
            }
        }
        Ok(out)
    }

    /// Heads plus an order-independent digest of the materialised memory:
    /// the XOR of the hashes of every synced row and conversation. Equal on
    /// two nodes exactly when they hold the same synced state.
    pub fn digest(&self) -> Result<(Vec<Head>, MemoryDigest)> {
        let r = self.reader()?;
        // One read transaction, so heads and state are one snapshot.
        r.execute_batch("BEGIN")?;
        let result = (|| {
            let heads = read_heads(&r)?;
            let (rows, row_xor) =
                xor_hashes(&r, "SELECT hash FROM messages WHERE key IS NOT NULL")?;
            let (conversations, conv_xor) =
                xor_hashes(&r, "SELECT hash FROM conversations WHERE synced = 1")?;
            let mut h = selves_wire::domain_hasher!("selves memory digest v1");
            h.update(&row_xor);
            h.update(&conv_xor);
            h.update(&rows.to_le_bytes());
            h.update(&conversations.to_le_bytes());
            Ok((
                heads,
                MemoryDigest {
                    rows,
                    conversations,
                    digest: selves_wire::hex(h.finalize().as_bytes()),
                },
            ))
        })();
        r.execute_batch("COMMIT")?;
        result
    }
}

fn read_heads(conn: &Connection) -> Result<Vec<Head>> {
    let mut stmt = conn.prepare_cached(
        "SELECT n.node_id, s.name, h.seq FROM heads h
         JOIN nodes n ON n.id = h.node JOIN streams s ON s.id = h.stream
         WHERE h.seq > 0",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut heads = Vec::new();
    for row in rows {
        let (node, stream, seq) = row?;
        // Ids in the database were validated when they were stored.
        if let (Ok(node), Ok(stream)) = (node.parse(), stream.parse()) {
            heads.push(Head {
                node,
                stream,
                seq: seq as u64,
            });
        }
    }
    heads.sort();
    Ok(heads)
}

fn xor_hashes(conn: &Connection, sql: &str) -> Result<(u64, [u8; 32])> {
    let mut acc = [0u8; 32];
    let mut n = 0u64;
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let bytes = row.get_ref(0)?.as_blob()?;
        for (a, b) in acc.iter_mut().zip(bytes) {
            *a ^= b;
        }
        n += 1;
    }
    Ok((n, acc))
}
