//! Record logs: one per (node, stream), numbered 1, 2, 3… by the node that
//! wrote them and never rewritten. Applying a remote range stores its
//! records and materialises them in one transaction, and moves the head in
//! that same transaction, so a head never runs ahead of what is applied.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use selves_wire::native::{Head, MemoryDigest, NodeInfo, Range, Record, RecordBatch, Voided};
use selves_wire::sign::{Digest, SeqSig, Signature};
use selves_wire::{NodeId, StreamName};

use crate::chain::{Refusal, RefusalKind};

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
    "INSERT INTO records (node, stream, seq, target, void, digest, chain, sig)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// A memory record received superseded: no row, but its conversation.
const INSERT_SUPERSEDED: &str =
    "INSERT INTO records (node, stream, seq, target, void, digest, chain, sig, conv)
     VALUES (?1, ?2, ?3, NULL, NULL, ?4, ?5, ?6, ?7)";

/// Appends to this node's own log within one transaction, chaining and
/// signing each record (see [`crate::chain`]).
pub(crate) struct OwnLog<'k> {
    node: i64,
    stream: i64,
    start: u64,
    head: u64,
    signer: crate::chain::Signer<'k>,
}

impl<'k> OwnLog<'k> {
    pub(crate) fn open(tx: &Transaction<'_>, store: &'k Store, stream: i64) -> Result<Self> {
        let node = store.me.idx;
        let head = head_of(tx, node, stream)?;
        let name: String = tx
            .prepare_cached("SELECT name FROM streams WHERE id = ?1")?
            .query_row([stream], |r| r.get(0))?;
        let name: StreamName = name
            .parse()
            .map_err(|_| StoreError::Integrity(format!("stream {name} has a bad name")))?;
        let signer =
            crate::chain::Signer::open(tx, &store.key, node, &store.me.id, stream, &name, head)?;
        Ok(OwnLog {
            node,
            stream,
            start: head,
            head,
            signer,
        })
    }

    /// Appends a record that wrote `target` with content digest `d`
    /// (`size`: about how many bytes of content, for signing spans).
    pub(crate) fn append(
        &mut self,
        tx: &Transaction<'_>,
        target: Option<i64>,
        d: &Digest,
        size: usize,
    ) -> Result<u64> {
        self.head += 1;
        let (chain, sig) = self.signer.next(self.head, d, size);
        tx.prepare_cached(INSERT_RECORD)?.execute(params![
            self.node,
            self.stream,
            self.head as i64,
            target,
            None::<&str>,
            &d.0[..],
            &chain.0[..],
            sig.as_ref().map(|s| &s.0[..]),
        ])?;
        Ok(self.head)
    }

    pub(crate) fn finish(self, tx: &Transaction<'_>) -> Result<()> {
        if self.head != self.start {
            set_head(tx, self.node, self.stream, self.head)?;
            if let Some((seq, sig)) = self.signer.finish() {
                tx.prepare_cached(
                    "UPDATE records SET sig = ?4 WHERE node = ?1 AND stream = ?2 AND seq = ?3",
                )?
                .execute(params![
                    self.node,
                    self.stream,
                    seq as i64,
                    &sig.0[..]
                ])?;
            }
        }
        Ok(())
    }
}

/// The digest a memory record of message `id` must carry to be served
/// with its content, when the message's current version was written by
/// `author`; `None` if it was written by another.
pub(crate) fn current_row_digest(
    conn: &Connection,
    id: i64,
    author: i64,
) -> Result<Option<Digest>> {
    let found: Option<(Vec<u8>, Option<i64>)> = conn
        .prepare_cached("SELECT hash, author FROM messages WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(found.and_then(|(hash, by)| {
        (by == Some(author)).then(|| {
            selves_wire::sign::row_digest(&selves_wire::VersionHash(crate::unhex_blob::<32>(hash)))
        })
    }))
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
    /// Batches refused whole: not provably their author's, or a fork.
    pub refused: Vec<Refusal>,
    /// Heads of the (node, stream)s touched, after the commit.
    pub heads: Vec<Head>,
}

/// A record with content, sent as it is if the content is still what the
/// record wrote (its digest matches), else as its digest alone.
fn served(record: Record, digest: Digest, legacy: bool) -> Record {
    if legacy || selves_wire::sign::record_digest(&record) == Some(digest) {
        record
    } else {
        Record::Omitted(digest)
    }
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
        Record::Refused { why, .. } => 100 + why.len(),
        Record::Omitted(_) => 80,
        Record::Superseded {
            source,
            conversation_id,
            conversation,
            ..
        } => {
            200 + source.len()
                + conversation_id.len()
                + conversation.title.as_ref().map_or(0, String::len)
        }
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
    /// [`Durability::Full`] what it reports is on disk. Records already
    /// held are skipped, so a repeated or overlapping range is harmless; a
    /// range that starts past the head (a gap) is refused whole. Every
    /// batch is verified first (see [`crate::chain`]): one that is not
    /// provably its author's, or that forks a log held here, is refused
    /// alone and reported in [`ApplySummary::refused`].
    pub fn apply(
        &self,
        batches: Vec<RecordBatch>,
        durability: Durability,
        now: crate::Millis,
    ) -> Result<ApplySummary> {
        self.write_memory(durability, |tx, convs| {
            let mut summary = ApplySummary::default();
            let mut mat = Materialiser::new(tx, convs, None)?;
            let mut touched = BTreeMap::new();
            for mut batch in batches {
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
                if batch.records.is_empty() {
                    continue;
                }
                let Some(v) = self.admit(tx, &mut batch, stream, now, &mut summary)? else {
                    continue;
                };
                let end = batch.end();
                let node = v.node;
                let sigs: BTreeMap<u64, Signature> =
                    v.sigs.iter().map(|s| (s.seq, s.sig)).collect();
                let mut insert_record = tx.prepare_cached(INSERT_RECORD)?;
                for (i, record) in batch.records.into_iter().enumerate() {
                    let seq = batch.start + i as u64;
                    if seq <= v.head {
                        summary.duplicates += 1;
                        continue;
                    }
                    // What a record carried from before signing says is
                    // taken on the word of the peer, as it always was; it
                    // is credited to no author.
                    let author = (seq > v.legacy).then_some(node);
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
                            Ok(()) if card.key.is_some() && card.key != batch.key => (
                                None,
                                Some("a card naming a key other than its signer's".into()),
                            ),
                            Ok(()) => {
                                crate::cards::put_card(tx, node, &card)?;
                                (Some(node), None)
                            }
                        },
                        Record::Row(mut row) => {
                            let hash = if row.uuid.is_none() {
                                normalise(&mut row);
                                row.version_hash()
                            } else {
                                v.hashes[i].unwrap_or_else(|| row.version_hash())
                            };
                            match row.validate() {
                                Err(e) => (None, Some(e.to_string())),
                                Ok(()) if row.msg_id.is_none() => (
                                    None,
                                    Some("row has no msg_id: local-only rows never sync".into()),
                                ),
                                Ok(()) => {
                                    let written = mat.put_hashed(&row, hash, author)?;
                                    if written.changed() {
                                        summary.changed_rows += 1;
                                    }
                                    (Some(written.outcome.id()), None)
                                }
                            }
                        }
                        Record::Void(why) | Record::Refused { why, .. } => (None, Some(why)),
                        // Superseded: its content travels with a newer record.
                        Record::Omitted(_) => (None, None),
                        Record::Superseded {
                            source,
                            conversation_id,
                            conversation,
                            ..
                        } if !cards => {
                            let (conv, changed) =
                                mat.join_conversation(source, conversation_id, conversation)?;
                            if changed {
                                summary.changed_rows += 1;
                            }
                            let (d, chain) = &v.links[i];
                            tx.prepare_cached(INSERT_SUPERSEDED)?.execute(params![
                                node,
                                stream,
                                seq as i64,
                                &d.0[..],
                                &chain.0[..],
                                sigs.get(&seq).map(|s| &s.0[..]),
                                conv,
                            ])?;
                            summary.accepted += 1;
                            continue;
                        }
                        Record::Superseded { .. } => (None, None),
                    };
                    if let Some(why) = &void {
                        summary.voided.push(Voided {
                            node: batch.node.clone(),
                            stream: batch.stream.clone(),
                            seq,
                            reason: why.clone(),
                        });
                    }
                    let (d, chain) = &v.links[i];
                    insert_record.execute(params![
                        node,
                        stream,
                        seq as i64,
                        target,
                        void,
                        &d.0[..],
                        &chain.0[..],
                        sigs.get(&seq).map(|s| &s.0[..]),
                    ])?;
                    summary.accepted += 1;
                }
                if end > v.head {
                    set_head(tx, node, stream, end)?;
                    crate::chain::note_legacy(tx, node, stream, v.legacy)?;
                }
                touched.insert((batch.node.clone(), batch.stream.clone()), (node, stream));
            }
            mat.flush()?;
            for ((node_id, stream_name), (node, stream)) in touched {
                let seq = head_of(tx, node, stream)?;
                let chain = crate::chain::chain_at(tx, node, stream, &node_id, &stream_name, seq)?;
                summary.heads.push(Head {
                    node: node_id,
                    stream: stream_name,
                    seq,
                    chain: Some(chain),
                });
            }
            Ok(summary)
        })
    }

    /// Verifies one received batch and settles what it means for the log
    /// held here: a fork of this node's own log recovered (a restore), a
    /// branch held here that its author withdrew cut off, a withdrawn
    /// branch offered by a peer left out. Returns the verified batch to
    /// apply (records past its `head` are new), or `None` when nothing of
    /// it is to be applied (refusals are added to `summary`).
    pub(crate) fn admit(
        &self,
        tx: &Transaction<'_>,
        batch: &mut RecordBatch,
        stream: i64,
        now: crate::Millis,
        summary: &mut ApplySummary,
    ) -> Result<Option<crate::chain::Verified>> {
        let mut v = match crate::chain::verify(tx, batch, stream)? {
            Ok(v) => v,
            Err(refusal) => {
                summary.refused.push(refusal);
                return Ok(None);
            }
        };
        // A peer still offering a branch its author withdrew: keep what
        // comes before it, up to the last signed record.
        if let Some(cut) = crate::chain::withdrawn_at(tx, v.node, stream, batch.start, &v.links)? {
            let keep = v
                .sigs
                .iter()
                .map(|s| s.seq)
                .filter(|&seq| seq < cut)
                .max()
                .unwrap_or(0);
            if keep < batch.start {
                summary.duplicates += batch.records.len() as u64;
                return Ok(None);
            }
            let n = (keep - batch.start + 1) as usize;
            batch.records.truncate(n);
            v.links.truncate(n);
            v.sigs.retain(|s| s.seq <= keep);
            if v.fork_at.is_some_and(|f| f > keep) {
                v.fork_at = None;
            }
        }
        let Some(at) = v.fork_at else {
            return Ok(Some(v));
        };
        let ours = crate::chain::chain_at(tx, v.node, stream, &batch.node, &batch.stream, at)?;
        let mine = batch.node == self.me.id;
        let recovered = if !v.fork_exact {
            // Only known to be at or before `at`: nothing to recover from
            // yet (a round that sees its own log diverge pulls it again
            // from before the fork).
            false
        } else if mine {
            let theirs = v.links[(at - batch.start) as usize].1;
            crate::chain::own_fork(tx, self, stream, &batch.stream, at, &theirs, now)?
        } else {
            crate::chain::withdrawn_at(tx, v.node, stream, at, &[(Digest::LEGACY, ours)])?.is_some()
                && crate::chain::cut_branch(
                    tx,
                    self,
                    v.node,
                    stream,
                    &batch.node,
                    &batch.stream,
                    at,
                    &ours,
                    now,
                )?
        };
        if recovered {
            v.head = at - 1;
            return Ok(Some(v));
        }
        let theirs = match at.checked_sub(batch.start) {
            Some(i) => v.links[i as usize].1,
            None => batch.prev.unwrap_or(ours),
        };
        crate::chain::note_fork(tx, v.node, stream, at, &ours, &theirs, now)?;
        summary.refused.push(Refusal {
            node: batch.node.clone(),
            stream: batch.stream.clone(),
            seq: at,
            kind: RefusalKind::Fork,
            reason: format!(
                "two records {} {at} both signed by node {}: its key is in two homes",
                batch.stream, batch.node
            ),
        });
        Ok(None)
    }

    /// Reads records after each range's `after`, in range order, until
    /// about `max_records` or `max_bytes` (at least one record is always
    /// returned when any is due), each batch ending where its author
    /// signed (see [`crate::chain`]), with the author's key and every
    /// signature it covers. A record carries its content as it stands now
    /// when that is still the version it wrote, and only its digest
    /// ([`Record::Omitted`]) when a newer record superseded it; records
    /// carried from before signing carry their content as it stands now.
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
            "SELECT r.seq, r.void, r.digest, r.sig, m.hash, {ROW_COLUMNS},
                    k.source, k.conversation_id, k.title, k.first_ts, k.last_ts,
                    k.project_path, k.parent_conversation_id
             FROM records r
             LEFT JOIN messages m ON m.id = r.target
             LEFT JOIN conversations c ON c.id = m.conv
             LEFT JOIN conversations k ON k.id = r.conv
             WHERE r.node = ?1 AND r.stream = ?2 AND r.seq > ?3
             ORDER BY r.seq LIMIT ?4"
        ))?;
        let mut files_stmt = r.prepare_cached(
            "SELECT r.seq, r.void, r.digest, r.sig, r.target FROM records r
             WHERE r.node = ?1 AND r.stream = ?2 AND r.seq > ?3 ORDER BY r.seq LIMIT ?4",
        )?;
        for range in ranges {
            if out.records >= max_records {
                out.more = true;
                break;
            }
            let stream = self.carried(&range.stream)?;
            let node: Option<i64> = r
                .prepare_cached("SELECT id FROM nodes WHERE node_id = ?1")?
                .query_row([range.node.as_str()], |row| row.get(0))
                .optional()?;
            let Some(node) = node else { continue };
            let key = if node == self.me.idx {
                Some(self.key.public())
            } else {
                crate::chain::bound_key(&r, node)?
            };
            // Without its author's key nothing of a log can be proven.
            let Some(key) = key else { continue };
            let legacy = crate::chain::legacy_of(&r, node, stream)?;
            let budget = max_records - out.records;
            let memory = range.stream.is_memory();
            let cards = range.stream.is_nodes();
            let limit = budget as u64 + crate::chain::SIGN_EVERY + 1;
            let query = params![node, stream, range.after as i64, limit as i64];
            let mut rows = if memory {
                stmt.query(query)?
            } else {
                files_stmt.query(query)?
            };
            // (seq, record, signature, size) up to where the limits say
            // stop, then on to the next signed record.
            let mut taken: Vec<(u64, Record, Option<Signature>)> = Vec::new();
            let mut stop_at: Option<usize> = None;
            let mut range_bytes = 0usize;
            while let Some(row) = rows.next()? {
                let seq = row.get::<_, i64>(0)? as u64;
                let void: Option<String> = row.get(1)?;
                let digest = row
                    .get::<_, Option<Vec<u8>>>(2)?
                    .filter(|d| d.len() == 32)
                    .map(|d| Digest(crate::unhex_blob::<32>(d)));
                let sig = row
                    .get::<_, Option<Vec<u8>>>(3)?
                    .filter(|s| s.len() == 64)
                    .map(|s| Signature(crate::unhex_blob::<64>(s)));
                let Some(digest) = digest else { break };
                let is_legacy = seq <= legacy;
                let record = match void {
                    Some(why) if is_legacy => Record::Void(why),
                    Some(why) => Record::Refused { why, d: digest },
                    None if memory => match row.get::<_, Option<Vec<u8>>>(4)? {
                        Some(hash)
                            if is_legacy
                                || selves_wire::sign::row_digest(&selves_wire::VersionHash(
                                    crate::unhex_blob::<32>(hash.clone()),
                                )) == digest =>
                        {
                            Record::Row(Box::new(read_row(row, 5)?))
                        }
                        Some(_) => {
                            let row = read_row(row, 5)?;
                            Record::Superseded {
                                d: digest,
                                source: row.source,
                                conversation_id: row.conversation_id,
                                conversation: row.conversation.unwrap_or_default(),
                            }
                        }
                        None if is_legacy => Record::Void("the row is missing".into()),
                        // Received superseded: its conversation travels on.
                        None => match row.get::<_, Option<String>>(22)? {
                            Some(source) => Record::Superseded {
                                d: digest,
                                source,
                                conversation_id: row.get(23)?,
                                conversation: selves_wire::ConversationMeta {
                                    title: row.get(24)?,
                                    first_ts: row.get(25)?,
                                    last_ts: row.get(26)?,
                                    project_path: row.get(27)?,
                                    parent_conversation_id: row.get(28)?,
                                },
                            },
                            None => Record::Omitted(digest),
                        },
                    },
                    // A card record serves its node's newest card.
                    None if cards => {
                        match row
                            .get::<_, Option<i64>>(4)?
                            .map(|t| crate::cards::card_of(&r, t))
                            .transpose()?
                            .flatten()
                        {
                            Some(c) => served(Record::Node(Box::new(c)), digest, is_legacy),
                            None if is_legacy => Record::Void("the node card is missing".into()),
                            None => Record::Omitted(digest),
                        }
                    }
                    // A share record serves its path's current version.
                    None => match row.get::<_, Option<i64>>(4)? {
                        Some(t) => match Store::served_file(&r, t)? {
                            Some(f) => served(f, digest, is_legacy),
                            None if is_legacy => Record::Void("the file entry is missing".into()),
                            None => Record::Omitted(digest),
                        },
                        None if is_legacy => Record::Void("the record carries nothing".into()),
                        None => Record::Omitted(digest),
                    },
                };
                let size = approx_record_bytes(&record);
                let over = out.records + taken.len() >= max_records
                    || (out.records + taken.len() > 0 && bytes + range_bytes + size > max_bytes);
                if over && stop_at.is_none() {
                    stop_at = Some(taken.len());
                }
                range_bytes += size;
                let signed = sig.is_some();
                taken.push((seq, record, sig));
                if stop_at.is_some() && signed {
                    break;
                }
            }
            drop(rows);
            // End the batch at a signed record: the last one within the
            // limits if there is one, else the first past them (none at
            // all from a range that starts past the limits).
            let signed = |t: &(u64, Record, Option<Signature>)| t.2.is_some();
            let within = stop_at.unwrap_or(taken.len());
            let keep = if within == 0 && out.records > 0 {
                0
            } else {
                taken[..within]
                    .iter()
                    .rposition(signed)
                    .or_else(|| taken.iter().rposition(signed))
                    .map_or(0, |i| i + 1)
            };
            taken.truncate(keep);
            if stop_at.is_some() {
                out.more = true;
            }
            if let Some(first) = taken.first() {
                let mut batch = RecordBatch::new(
                    range.node.clone(),
                    range.stream.clone(),
                    first.0,
                    Vec::new(),
                );
                batch.key = Some(key);
                batch.prev = Some(crate::chain::chain_at(
                    &r,
                    node,
                    stream,
                    &range.node,
                    &range.stream,
                    first.0 - 1,
                )?);
                batch.legacy = legacy.min(taken.last().map_or(0, |t| t.0));
                if batch.legacy < batch.start {
                    batch.legacy = 0;
                }
                for (seq, record, sig) in taken {
                    bytes += approx_record_bytes(&record);
                    if let Some(sig) = sig {
                        batch.sigs.push(SeqSig { seq, sig });
                    }
                    batch.records.push(record);
                }
                out.records += batch.records.len();
                out.batches.push(batch);
            }
            if out.more {
                break;
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
        "SELECT n.node_id, s.name, h.seq, r.chain FROM heads h
         JOIN nodes n ON n.id = h.node JOIN streams s ON s.id = h.stream
         LEFT JOIN records r ON r.node = h.node AND r.stream = h.stream AND r.seq = h.seq
         WHERE h.seq > 0",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<Vec<u8>>>(3)?,
        ))
    })?;
    let mut heads = Vec::new();
    for row in rows {
        let (node, stream, seq, chain) = row?;
        // Ids in the database were validated when they were stored.
        if let (Ok(node), Ok(stream)) = (node.parse(), stream.parse()) {
            heads.push(Head {
                node,
                stream,
                seq: seq as u64,
                chain: chain
                    .filter(|c| c.len() == 32)
                    .map(|c| Digest(crate::unhex_blob::<32>(c))),
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
