//! Signed logs (see `selves_wire::sign`): every record keeps its digest and
//! the chain through it, and `sig` where its author signed the chain.
//! Records from a peer are verified here before anything is applied: the
//! batch's key must speak for its node, the chain must continue the one
//! held, and the author's signature must cover the batch's end.
//!
//! What goes wrong is kept, never absorbed:
//! - a batch that is not provably its author's is refused and counted
//!   against the peer that sent it (`refusals`);
//! - two validly signed records for one (node, stream, seq) are a fork:
//!   the second is refused and both chains are kept as evidence (`forks`);
//! - a fork of this node's own log means a restored home (it wrote before
//!   it learnt what it had written before the restore): it is recovered
//!   once, by withdrawing its own branch with a signed statement
//!   (`abandoned`) and writing that content again after the peer's records
//!   (`reissue`). A second one, or someone else's statement for this
//!   node's id, means its key lives in two homes: a clash, loud until
//!   `selves init --new-identity` is run on one of them.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use selves_wire::native::RecordBatch;
use selves_wire::sign::{
    self, Abandon, Digest, NodeKey, PublicKey, SeqSig, Signature, abandon_message, head_message,
};
use selves_wire::{NodeId, StreamName};

use crate::{Millis, Result, Store, StoreError};

/// An author signs its chain at least every this many records…
pub const SIGN_EVERY: u64 = 64;
/// …and whenever this much content was written since the last signature,
/// so any span between two signed seqs fits in one request.
pub const SIGN_BYTES: usize = 256 << 10;
/// A home recovers by itself from at most one fork of its own log per
/// stream in this long; a second one means two homes hold its key.
const REBASE_WINDOW_MS: Millis = 24 * 3600 * 1000;

pub(crate) fn digest_blob(d: &Digest) -> &[u8] {
    &d.0[..]
}

fn to_digest(v: Vec<u8>) -> Option<Digest> {
    (v.len() == 32).then(|| Digest(crate::unhex_blob::<32>(v)))
}

/// The chain of (node, stream) after `seq`: the genesis for 0.
pub(crate) fn chain_at(
    conn: &Connection,
    node: i64,
    stream: i64,
    node_id: &NodeId,
    stream_name: &StreamName,
    seq: u64,
) -> Result<Digest> {
    if seq == 0 {
        return Ok(sign::genesis(node_id, stream_name));
    }
    let chain: Option<Vec<u8>> = conn
        .prepare_cached("SELECT chain FROM records WHERE node = ?1 AND stream = ?2 AND seq = ?3")?
        .query_row(params![node, stream, seq as i64], |r| r.get(0))
        .optional()?
        .flatten();
    chain.and_then(to_digest).ok_or_else(|| {
        StoreError::Integrity(format!(
            "record {seq} of {node_id} {stream_name} has no chain"
        ))
    })
}

/// The key bound to local node index `node`, if any.
pub(crate) fn bound_key(conn: &Connection, node: i64) -> Result<Option<PublicKey>> {
    let key: Option<Vec<u8>> = conn
        .prepare_cached("SELECT key FROM nodes WHERE id = ?1")?
        .query_row([node], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(key
        .filter(|k| k.len() == 32)
        .map(|k| PublicKey(crate::unhex_blob::<32>(k))))
}

/// Checks that `key` may speak for `node_id` and binds it if the id was
/// made before keys and none is bound yet (trust on first use: the only
/// case where a key is taken on its word, documented in docs/protocol.md).
pub(crate) fn bind_key(
    tx: &Connection,
    node: i64,
    node_id: &NodeId,
    key: &PublicKey,
) -> Result<bool> {
    let bound = bound_key(tx, node)?;
    if key.speaks_for(node_id, bound.as_ref()) {
        if bound.is_none() {
            tx.prepare_cached("UPDATE nodes SET key = ?2 WHERE id = ?1")?
                .execute(params![node, &key.0[..]])?;
        }
        return Ok(true);
    }
    if bound.is_none() && !node_id.is_derived() {
        tx.prepare_cached("UPDATE nodes SET key = ?2 WHERE id = ?1")?
            .execute(params![node, &key.0[..]])?;
        return Ok(true);
    }
    Ok(false)
}

/// What checking a batch found.
#[derive(Debug)]
pub(crate) struct Verified {
    pub node: i64,
    pub head: u64,
    /// (digest, chain) of each record of the batch.
    pub links: Vec<(Digest, Digest)>,
    /// The version hash of each row record (as stored: uuid filled in),
    /// computed once here for the digest and reused to store the row.
    pub hashes: Vec<Option<selves_wire::VersionHash>>,
    pub sigs: Vec<SeqSig>,
    /// Records up to this seq are carried from before signing.
    pub legacy: u64,
    /// The first seq at or below the head where the batch's chain differs
    /// from the one held: a fork, since the batch is validly signed. When
    /// the batch starts past the fork (its `prev` differs from ours), this
    /// is `start - 1`: the fork is there or before.
    pub fork_at: Option<u64>,
    /// Whether `fork_at` is the exact first record of the other branch
    /// (false: only known to be at or before it).
    pub fork_exact: bool,
}

/// Why a batch was refused, as the sender is told and status shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    pub node: NodeId,
    pub stream: StreamName,
    pub seq: u64,
    pub kind: RefusalKind,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// Not provably written by its node.
    Forged,
    /// A second, validly signed version of records already held.
    Fork,
}

impl RefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Forged => "forged",
            RefusalKind::Fork => "fork",
        }
    }
}

/// Checks `batch` (non-empty) against the log held for its (node, stream).
/// `Ok(Err(refusal))` when the batch is not provably its author's.
pub(crate) fn verify(
    tx: &Transaction<'_>,
    batch: &RecordBatch,
    stream: i64,
) -> Result<std::result::Result<Verified, Refusal>> {
    let refuse = |seq: u64, reason: String| Refusal {
        node: batch.node.clone(),
        stream: batch.stream.clone(),
        seq,
        kind: RefusalKind::Forged,
        reason,
    };
    let node = crate::log::node_index(tx, &batch.node, None)?;
    let end = batch.end();
    let Some(key) = batch.key else {
        return Ok(Err(refuse(batch.start, "the batch carries no key".into())));
    };
    if !bind_key(tx, node, &batch.node, &key)? {
        return Ok(Err(refuse(
            batch.start,
            format!(
                "signed with key {}, which is not the key of node {}",
                &key.to_hex()[..12],
                batch.node
            ),
        )));
    }
    let head = crate::log::head_of(tx, node, stream)?;
    if batch.start > head + 1 {
        return Err(StoreError::Gap {
            node: batch.node.clone(),
            stream: batch.stream.clone(),
            have: head,
            got: batch.start,
        });
    }
    let ours_prev = chain_at(
        tx,
        node,
        stream,
        &batch.node,
        &batch.stream,
        batch.start - 1,
    )?;
    // The sender says where its chain stood before the batch; when that
    // is not where ours stands, the batch (if validly signed) continues
    // another branch: a fork at or before `start - 1`.
    let mut prev = batch.prev.unwrap_or(ours_prev);
    let mut fork_at = (prev != ours_prev).then_some(batch.start - 1);
    let fork_exact = fork_at.is_none();
    let mut links = Vec::with_capacity(batch.records.len());
    let mut hashes = Vec::with_capacity(batch.records.len());
    let mut held = tx
        .prepare_cached("SELECT chain FROM records WHERE node = ?1 AND stream = ?2 AND seq = ?3")?;
    for (i, record) in batch.records.iter().enumerate() {
        let seq = batch.start + i as u64;
        let hash = match record {
            selves_wire::native::Record::Row(row) if row.uuid.is_some() => Some(row.version_hash()),
            _ => None,
        };
        hashes.push(hash);
        let d = if seq <= batch.legacy {
            Digest::LEGACY
        } else if let Some(hash) = &hash {
            sign::row_digest(hash)
        } else {
            match sign::record_digest(record) {
                Some(d) => d,
                None => {
                    return Ok(Err(refuse(seq, format!("record {seq} carries no digest"))));
                }
            }
        };
        let chain = sign::link(&prev, seq, &d);
        if seq <= head && fork_at.is_none() {
            let ours: Option<Vec<u8>> = held
                .query_row(params![node, stream, seq as i64], |r| r.get(0))
                .optional()?
                .flatten();
            if ours.and_then(to_digest) != Some(chain) {
                fork_at = Some(seq);
            }
        }
        links.push((d, chain));
        prev = chain;
    }
    if !batch.sigs.iter().any(|s| s.seq == end) {
        return Ok(Err(refuse(
            end,
            format!("the batch ends at {end}, where its author's signature is missing"),
        )));
    }
    for s in &batch.sigs {
        if s.seq < batch.start || s.seq > end {
            return Ok(Err(refuse(
                s.seq,
                format!("a signature for {} outside the batch", s.seq),
            )));
        }
        let chain = &links[(s.seq - batch.start) as usize].1;
        let msg = head_message(&batch.node, &batch.stream, s.seq, chain);
        if !key.verifies(&msg, &s.sig) {
            return Ok(Err(refuse(
                s.seq,
                format!(
                    "the signature at record {} does not match what the batch carries",
                    s.seq
                ),
            )));
        }
    }
    let legacy = batch.legacy.min(end);
    Ok(Ok(Verified {
        node,
        head,
        links,
        hashes,
        sigs: batch.sigs.clone(),
        legacy,
        fork_at,
        fork_exact,
    }))
}

/// The first seq of a run of links (the first at `start`) whose chain a
/// withdrawal statement held here names: from there on the branch was
/// withdrawn by its author.
pub(crate) fn withdrawn_at(
    tx: &Connection,
    node: i64,
    stream: i64,
    start: u64,
    links: &[(Digest, Digest)],
) -> Result<Option<u64>> {
    let end = start + links.len() as u64;
    let mut stmt = tx.prepare_cached(
        "SELECT seq, chain FROM abandoned WHERE node = ?1 AND stream = ?2 AND seq >= ?3 AND seq < ?4
         ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![node, stream, start as i64, end as i64], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
    })?;
    for row in rows {
        let (seq, chain) = row?;
        if to_digest(chain) == Some(links[(seq - start) as usize].1) {
            return Ok(Some(seq));
        }
    }
    Ok(None)
}

/// Raises the legacy mark of a log to `legacy` (records up to it were
/// carried from before signing).
pub(crate) fn note_legacy(tx: &Transaction<'_>, node: i64, stream: i64, legacy: u64) -> Result<()> {
    if legacy > 0 {
        tx.prepare_cached(
            "UPDATE heads SET legacy = MAX(legacy, ?3) WHERE node = ?1 AND stream = ?2",
        )?
        .execute(params![node, stream, legacy as i64])?;
    }
    Ok(())
}

/// The legacy mark of a log.
pub(crate) fn legacy_of(conn: &Connection, node: i64, stream: i64) -> Result<u64> {
    let v: Option<i64> = conn
        .prepare_cached("SELECT legacy FROM heads WHERE node = ?1 AND stream = ?2")?
        .query_row(params![node, stream], |r| r.get(0))
        .optional()?;
    Ok(v.unwrap_or(0) as u64)
}

/// Appends this node's own records, chaining and signing them.
pub(crate) struct Signer<'k> {
    key: &'k NodeKey,
    node_id: NodeId,
    stream_name: StreamName,
    chain: Digest,
    unsigned: u64,
    bytes: usize,
    last: u64,
}

impl<'k> Signer<'k> {
    pub(crate) fn open(
        tx: &Connection,
        key: &'k NodeKey,
        node: i64,
        node_id: &NodeId,
        stream: i64,
        stream_name: &StreamName,
        head: u64,
    ) -> Result<Self> {
        Ok(Signer {
            key,
            node_id: node_id.clone(),
            stream_name: stream_name.clone(),
            chain: chain_at(tx, node, stream, node_id, stream_name, head)?,
            unsigned: 0,
            bytes: 0,
            last: head,
        })
    }

    /// The chain after record `seq` with digest `d`, and a signature when
    /// one is due.
    pub(crate) fn next(
        &mut self,
        seq: u64,
        d: &Digest,
        size: usize,
    ) -> (Digest, Option<Signature>) {
        self.chain = sign::link(&self.chain, seq, d);
        self.last = seq;
        self.unsigned += 1;
        self.bytes += size;
        if self.unsigned >= SIGN_EVERY || self.bytes >= SIGN_BYTES {
            (self.chain, Some(self.sign_now()))
        } else {
            (self.chain, None)
        }
    }

    fn sign_now(&mut self) -> Signature {
        self.unsigned = 0;
        self.bytes = 0;
        self.key.sign(&head_message(
            &self.node_id,
            &self.stream_name,
            self.last,
            &self.chain,
        ))
    }

    /// The signature the last record needs, if it has none yet.
    pub(crate) fn finish(mut self) -> Option<(u64, Signature)> {
        (self.unsigned > 0).then(|| (self.last, self.sign_now()))
    }
}

/// Chains every record stored before signing existed (digest
/// [`Digest::LEGACY`]), marks those logs legacy up to their head, and signs
/// this node's own logs at their heads. Runs once, at the first open after
/// the upgrade.
pub(crate) fn backfill(tx: &Transaction<'_>, key: &NodeKey, me: i64) -> Result<()> {
    let logs: Vec<(i64, i64, String, String, i64)> = {
        let mut stmt = tx.prepare(
            "SELECT h.node, h.stream, n.node_id, s.name, h.seq FROM heads h
             JOIN nodes n ON n.id = h.node JOIN streams s ON s.id = h.stream",
        )?;
        stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<rusqlite::Result<_>>()?
    };
    let mut update = tx.prepare(
        "UPDATE records SET digest = ?4, chain = ?5 WHERE node = ?1 AND stream = ?2 AND seq = ?3",
    )?;
    for (node, stream, node_id, stream_name, head) in logs {
        let (Ok(node_id), Ok(stream_name)) =
            (node_id.parse::<NodeId>(), stream_name.parse::<StreamName>())
        else {
            continue;
        };
        let mut chain = sign::genesis(&node_id, &stream_name);
        for seq in 1..=head as u64 {
            chain = sign::link(&chain, seq, &Digest::LEGACY);
            update.execute(params![
                node,
                stream,
                seq as i64,
                digest_blob(&Digest::LEGACY),
                digest_blob(&chain)
            ])?;
            if node == me && (seq % SIGN_EVERY == 0 || seq == head as u64) {
                let sig = key.sign(&head_message(&node_id, &stream_name, seq, &chain));
                tx.prepare_cached(
                    "UPDATE records SET sig = ?4 WHERE node = ?1 AND stream = ?2 AND seq = ?3",
                )?
                .execute(params![node, stream, seq as i64, &sig.0[..]])?;
            }
        }
        tx.execute(
            "UPDATE heads SET legacy = seq WHERE node = ?1 AND stream = ?2",
            params![node, stream],
        )?;
    }
    Ok(())
}

/// Parses an abandon statement's fields from the database.
fn read_abandon(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<Abandon>> {
    let node: String = r.get(0)?;
    let key: Vec<u8> = r.get(1)?;
    let stream: String = r.get(2)?;
    let seq: i64 = r.get(3)?;
    let chain: Vec<u8> = r.get(4)?;
    let sig: Vec<u8> = r.get(5)?;
    let (Ok(node), Ok(stream)) = (node.parse(), stream.parse()) else {
        return Ok(None);
    };
    if key.len() != 32 || chain.len() != 32 || sig.len() != 64 {
        return Ok(None);
    }
    Ok(Some(Abandon {
        node,
        key: PublicKey(crate::unhex_blob::<32>(key)),
        stream,
        seq: seq as u64,
        chain: Digest(crate::unhex_blob::<32>(chain)),
        sig: Signature(crate::unhex_blob::<64>(sig)),
    }))
}

/// A fork found by this node, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fork {
    pub node: NodeId,
    pub name: Option<String>,
    pub stream: StreamName,
    pub seq: u64,
    /// The peer that offered the second branch.
    pub peer: String,
    pub seen_at: Millis,
}

/// A peer's batches refused, as status shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RefusalCount {
    pub peer: String,
    pub kind: String,
    pub count: u64,
    pub last_at: Millis,
    pub last_reason: String,
    pub node: String,
}

impl Store {
    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    /// Signs a proof of this node's key for `server` at `at`.
    pub fn prove(&self, server: &NodeId, at: Millis) -> Signature {
        self.key.sign(&sign::proof_message(server, &self.me.id, at))
    }

    /// Whether `key` may speak for `node`, binding it if `node` is a node
    /// made before keys that has none bound yet.
    pub fn bind_node_key(
        &self,
        node: &NodeId,
        name: Option<&str>,
        key: &PublicKey,
    ) -> Result<bool> {
        if node.is_derived() && key.node_id() != *node {
            return Ok(false);
        }
        self.write(|tx| {
            let idx = crate::log::node_index(tx, node, name)?;
            bind_key(tx, idx, node, key)
        })
    }

    /// Notes batches refused from `peer`, for status.
    pub fn note_refusals(&self, peer: &str, refused: &[Refusal], now: Millis) -> Result<()> {
        if refused.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            for r in refused {
                tx.execute(
                    "INSERT INTO refusals (peer, kind, count, last_at, last_reason, node)
                     VALUES (?1, ?2, 1, ?3, ?4, ?5)
                     ON CONFLICT (peer, kind) DO UPDATE SET count = count + 1,
                        last_at = excluded.last_at, last_reason = excluded.last_reason,
                        node = excluded.node",
                    params![peer, r.kind.as_str(), now, r.reason, r.node.as_str()],
                )?;
                if r.kind == RefusalKind::Fork {
                    tx.execute(
                        "UPDATE forks SET peer = ?4 WHERE node = (SELECT id FROM nodes WHERE node_id = ?1)
                         AND stream = (SELECT id FROM streams WHERE name = ?2) AND seq = ?3",
                        params![r.node.as_str(), r.stream.as_str(), r.seq as i64, peer],
                    )?;
                }
            }
            Ok(())
        })
    }

    /// Batches refused per peer.
    pub fn refusals(&self) -> Result<Vec<RefusalCount>> {
        let r = self.reader()?;
        let mut stmt = r.prepare(
            "SELECT peer, kind, count, last_at, last_reason, node FROM refusals ORDER BY peer, kind",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RefusalCount {
                peer: r.get(0)?,
                kind: r.get(1)?,
                count: r.get::<_, i64>(2)? as u64,
                last_at: r.get(3)?,
                last_reason: r.get(4)?,
                node: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forks this node holds evidence of and that no signed withdrawal
    /// has resolved.
    pub fn forks(&self) -> Result<Vec<Fork>> {
        let r = self.reader()?;
        let mut stmt = r.prepare(
            "SELECT n.node_id, n.name, s.name, f.seq, f.peer, f.seen_at FROM forks f
             JOIN nodes n ON n.id = f.node JOIN streams s ON s.id = f.stream
             WHERE f.resolved_at IS NULL ORDER BY f.seen_at",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (node, name, stream, seq, peer, seen_at) = row?;
            if let (Ok(node), Ok(stream)) = (node.parse(), stream.parse()) {
                out.push(Fork {
                    node,
                    name,
                    stream,
                    seq: seq as u64,
                    peer,
                    seen_at,
                });
            }
        }
        Ok(out)
    }

    /// Notes a fork seen in a peer's heads: it holds `theirs` at `seq` of
    /// (node, stream) where this node holds another chain. Returns whether
    /// it was new.
    pub fn note_fork_seen(
        &self,
        node: &NodeId,
        stream: &StreamName,
        seq: u64,
        theirs: &Digest,
        peer: &str,
        now: Millis,
    ) -> Result<bool> {
        let Some(ours) = self.chain_of(node, stream, seq)? else {
            return Ok(false);
        };
        if ours == *theirs {
            return Ok(false);
        }
        self.write(|tx| {
            let n = crate::log::node_index(tx, node, None)?;
            let Some(s) = self.stream_index_of(tx, stream)? else {
                return Ok(false);
            };
            // A branch its author withdrew is no fork.
            if withdrawn_at(tx, n, s, seq, &[(Digest::LEGACY, *theirs)])?.is_some() {
                return Ok(false);
            }
            let known: Option<Option<i64>> = tx
                .query_row(
                    "SELECT resolved_at FROM forks WHERE node = ?1 AND stream = ?2 AND seq = ?3 AND theirs = ?4",
                    params![n, s, seq as i64, &theirs.0[..]],
                    |r| r.get(0),
                )
                .optional()?;
            if known.is_some() {
                return Ok(false);
            }
            note_fork(tx, n, s, seq, &ours, theirs, now)?;
            tx.execute(
                "UPDATE forks SET peer = ?4 WHERE node = ?1 AND stream = ?2 AND seq = ?3",
                params![n, s, seq as i64, peer],
            )?;
            Ok(true)
        })
    }

    /// The chain of (node, stream) at `seq`, if held.
    pub fn chain_of(&self, node: &NodeId, stream: &StreamName, seq: u64) -> Result<Option<Digest>> {
        let r = self.reader()?;
        let chain: Option<Option<Vec<u8>>> = r
            .prepare_cached(
                "SELECT r.chain FROM records r JOIN nodes n ON n.id = r.node
                 JOIN streams s ON s.id = r.stream
                 WHERE n.node_id = ?1 AND s.name = ?2 AND r.seq = ?3",
            )?
            .query_row(params![node.as_str(), stream.as_str(), seq as i64], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(chain.flatten().and_then(to_digest))
    }

    /// A peer holds another branch of one of this node's own share logs
    /// (or more of it than this home does): this home was restored, or
    /// copied, after that share changed. Share versions cannot be written
    /// again safely, so it is a clash, said by `status` until `init
    /// --new-identity` (memory and cards recover on their own). Returns
    /// whether it was new.
    pub fn note_own_share_fork(&self, stream: &StreamName, seq: u64, peer: &str) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "INSERT INTO meta (key, value) VALUES ('clash', ?1) ON CONFLICT (key) DO NOTHING",
                [format!(
                    "{peer} holds other records {stream} {seq} signed with this node's key (this home was restored or copied after that share changed)"
                )],
            )? > 0)
        })
    }

    /// Whether this node's own key was found in another home.
    pub fn clash(&self) -> Result<Option<String>> {
        let r = self.reader()?;
        Ok(
            r.query_row("SELECT value FROM meta WHERE key = 'clash'", [], |r| {
                r.get(0)
            })
            .optional()?,
        )
    }

    /// When this home last recovered its own log from a peer (a restore),
    /// and how many of its records it wrote again.
    pub fn recovered(&self) -> Result<Option<(Millis, u64)>> {
        let r = self.reader()?;
        let v: Option<String> = r
            .query_row("SELECT value FROM meta WHERE key = 'recovered'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(v.and_then(|v| {
            let (at, n) = v.split_once(' ')?;
            Some((at.parse().ok()?, n.parse().ok()?))
        }))
    }

    /// Every withdrawal statement this node holds, for its peers.
    pub fn abandoned(&self) -> Result<Vec<Abandon>> {
        let r = self.reader()?;
        let mut stmt = r.prepare(
            "SELECT n.node_id, a.key, s.name, a.seq, a.chain, a.sig FROM abandoned a
             JOIN nodes n ON n.id = a.node JOIN streams s ON s.id = a.stream ORDER BY a.rowid",
        )?;
        let rows = stmt.query_map([], read_abandon)?;
        let mut out = Vec::new();
        for row in rows {
            out.extend(row?);
        }
        Ok(out)
    }

    /// Takes withdrawal statements a peer holds: each one validly signed
    /// by the node's key is kept and passed on, and a branch held here
    /// that it withdraws is cut off (its records are written again by
    /// their author after the records it kept). A statement for this
    /// node's own id that it did not make means another home holds its
    /// key: a clash. Returns how many logs were cut.
    pub fn take_abandoned(&self, statements: &[Abandon], now: Millis) -> Result<u64> {
        let known = self.abandoned()?;
        let mut news: Vec<&Abandon> = statements
            .iter()
            .filter(|a| !known.contains(a) && a.signed())
            .collect();
        // A retirement (seq 0) is taken after the withdrawals it ends.
        news.sort_by_key(|a| a.seq == 0);
        if news.is_empty() {
            return Ok(0);
        }
        self.write(|tx| {
            let mut cut = 0;
            for a in news {
                let node = crate::log::node_index(tx, &a.node, None)?;
                // A withdrawal binds no key: it counts only from the key
                // the node's id derives from, or the one already bound.
                if !a.key.speaks_for(&a.node, bound_key(tx, node)?.as_ref()) {
                    continue;
                }
                let Some(stream) = self.stream_index_of(tx, &a.stream)? else {
                    continue;
                };
                tx.execute(
                    "INSERT OR IGNORE INTO abandoned (node, stream, seq, chain, key, sig)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![node, stream, a.seq as i64, &a.chain.0[..], &a.key.0[..], &a.sig.0[..]],
                )?;
                if a.node == self.me.id && a.seq == 0 {
                    // The other home holding this key took a new identity:
                    // the clash is over.
                    tx.execute("DELETE FROM meta WHERE key = 'clash' OR key LIKE 'rebased:%'", [])?;
                    continue;
                }
                if a.seq == 0 {
                    continue;
                }
                if a.node == self.me.id {
                    tx.execute(
                        "INSERT INTO meta (key, value) VALUES ('clash', ?1)
                         ON CONFLICT (key) DO NOTHING",
                        [format!(
                            "another home holding this node's key withdrew its {} records from {} on",
                            a.stream, a.seq
                        )],
                    )?;
                    continue;
                }
                if cut_branch(tx, self, node, stream, &a.node, &a.stream, a.seq, &a.chain, now)? {
                    cut += 1;
                }
            }
            Ok(cut)
        })
    }

    pub(crate) fn stream_index_of(
        &self,
        conn: &Connection,
        stream: &StreamName,
    ) -> Result<Option<i64>> {
        Ok(conn
            .prepare_cached("SELECT id FROM streams WHERE name = ?1")?
            .query_row([stream.as_str()], |r| r.get(0))
            .optional()?)
    }

    /// Writes again, as new records of this node, the content its own
    /// records carried before they were withdrawn (a restore recovered, or
    /// a new identity), where that content is still the current version
    /// written here. Returns how many.
    pub fn reissue_pending(&self, now: Millis) -> Result<u64> {
        let pending: i64 = {
            let r = self.reader()?;
            r.query_row("SELECT COUNT(*) FROM reissue", [], |r| r.get(0))?
        };
        // While another home holds this key, what this one wrote waits
        // for `init --new-identity` (or the other's retirement).
        if pending == 0 || self.clash()?.is_some() {
            return Ok(0);
        }
        self.write(|tx| {
            let targets: Vec<i64> = {
                let mut stmt =
                    tx.prepare("SELECT target FROM reissue WHERE stream = ?1 ORDER BY target")?;
                stmt.query_map([self.streams.memory], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let mut n = 0;
            if !targets.is_empty() {
                let mut own = crate::log::OwnLog::open(tx, self, self.streams.memory)?;
                for target in targets {
                    if let Some(d) = crate::log::current_row_digest(tx, target, self.me.idx)? {
                        own.append(tx, Some(target), &d, 512)?;
                        n += 1;
                    }
                }
                own.finish(tx)?;
            }
            let card_due: i64 = tx.query_row(
                "SELECT COUNT(*) FROM reissue WHERE stream = ?1",
                [self.streams.nodes],
                |r| r.get(0),
            )?;
            if card_due > 0 {
                let former: Option<String> = tx
                    .query_row("SELECT value FROM meta WHERE key = 'former_id'", [], |r| {
                        r.get(0)
                    })
                    .optional()?;
                let former_idx: Option<i64> = match former {
                    Some(f) => tx
                        .query_row("SELECT id FROM nodes WHERE node_id = ?1", [f], |r| r.get(0))
                        .optional()?,
                    None => None,
                };
                let base = match crate::cards::card_of(tx, self.me.idx)? {
                    Some(c) => Some(c),
                    None => match former_idx {
                        Some(i) => crate::cards::card_of(tx, i)?,
                        None => None,
                    },
                };
                self.write_card_in(tx, now, base, |_| {})?;
                n += 1;
            }
            tx.execute("DELETE FROM reissue", [])?;
            let at_n: Option<String> = tx
                .query_row("SELECT value FROM meta WHERE key = 'recovered'", [], |r| {
                    r.get(0)
                })
                .optional()?;
            if let Some(v) = at_n
                && let Some((at, before)) = v.split_once(' ')
            {
                let total = before.parse::<u64>().unwrap_or(0) + n;
                tx.execute(
                    "UPDATE meta SET value = ?1 WHERE key = 'recovered'",
                    [format!("{at} {total}")],
                )?;
            }
            Ok(n)
        })
    }
}

/// Cuts the branch of (node, stream) held here if its chain at `seq` is
/// `chain`: records from `seq` on are removed and the head set before
/// them; the rows they wrote stay (their author writes them again). Clears
/// a fork that this resolves. Returns whether anything was cut.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cut_branch(
    tx: &Transaction<'_>,
    store: &Store,
    node: i64,
    stream: i64,
    node_id: &NodeId,
    stream_name: &StreamName,
    seq: u64,
    chain: &Digest,
    now: Millis,
) -> Result<bool> {
    let head = crate::log::head_of(tx, node, stream)?;
    // Whatever the outcome, a fork whose second branch was withdrawn is over.
    tx.execute(
        "UPDATE forks SET resolved_at = ?4 WHERE node = ?1 AND stream = ?2 AND seq >= ?3
         AND resolved_at IS NULL",
        params![node, stream, seq as i64, now],
    )?;
    if seq == 0 || seq > head || chain_at(tx, node, stream, node_id, stream_name, seq)? != *chain {
        return Ok(false);
    }
    if node == store.me.idx {
        queue_reissue(tx, store, stream, seq)?;
    }
    if stream != store.streams.memory && stream != store.streams.nodes {
        // Share records: the engine's entries stay; the records go.
    }
    tx.execute(
        "DELETE FROM records WHERE node = ?1 AND stream = ?2 AND seq >= ?3",
        params![node, stream, seq as i64],
    )?;
    crate::log::set_head(tx, node, stream, seq - 1)?;
    Ok(true)
}

/// Queues the content of this node's own records from `seq` on to be
/// written again later ([`Store::reissue_pending`]).
fn queue_reissue(tx: &Transaction<'_>, store: &Store, stream: i64, seq: u64) -> Result<()> {
    if stream == store.streams.nodes {
        tx.execute(
            "INSERT OR IGNORE INTO reissue (stream, target) VALUES (?1, ?2)",
            params![stream, store.me.idx],
        )?;
        return Ok(());
    }
    tx.execute(
        "INSERT OR IGNORE INTO reissue (stream, target)
         SELECT stream, target FROM records
         WHERE node = ?1 AND stream = ?2 AND seq >= ?3 AND target IS NOT NULL",
        params![store.me.idx, stream, seq as i64],
    )?;
    Ok(())
}

/// A fork of this node's own log, found in a batch signed with its key at
/// `seq` (`theirs` is the batch's chain there). Recovered once a day per
/// stream (a restore): this home withdraws its branch, takes the peer's,
/// and writes its content again after it. A second one, or one while its
/// key is known to be in two homes, is a clash: it withdraws its branch
/// all the same (so the other home learns of it, and every node holding
/// that branch lets it go) but keeps its content unwritten until `init
/// --new-identity`. Returns whether the batch may be applied (false only
/// for share streams, whose versions cannot be written again safely).
#[allow(clippy::too_many_arguments)]
pub(crate) fn own_fork(
    tx: &Transaction<'_>,
    store: &Store,
    stream: i64,
    stream_name: &StreamName,
    seq: u64,
    theirs: &Digest,
    now: Millis,
) -> Result<bool> {
    let clash: Option<String> = tx
        .query_row("SELECT value FROM meta WHERE key = 'clash'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let key = format!("rebased:{stream_name}");
    let last: Option<String> = tx
        .query_row("SELECT value FROM meta WHERE key = ?1", [&key], |r| {
            r.get(0)
        })
        .optional()?;
    let recent = last
        .and_then(|v| v.parse::<Millis>().ok())
        .is_some_and(|at| now - at < REBASE_WINDOW_MS);
    let memory_or_cards = stream == store.streams.memory || stream == store.streams.nodes;
    let two_homes = clash.is_some() || recent || !memory_or_cards;
    if two_homes {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('clash', ?1) ON CONFLICT (key) DO NOTHING",
            [format!(
                "a peer holds other records {stream_name} {seq} signed with this node's key"
            )],
        )?;
        if !memory_or_cards {
            return Ok(false);
        }
    }
    let me = &store.me;
    let ours = chain_at(tx, me.idx, stream, &me.id, stream_name, seq)?;
    let sig = store
        .key
        .sign(&abandon_message(&me.id, stream_name, seq, &ours));
    tx.execute(
        "INSERT OR IGNORE INTO abandoned (node, stream, seq, chain, key, sig)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            me.idx,
            stream,
            seq as i64,
            &ours.0[..],
            &store.key.public().0[..],
            &sig.0[..]
        ],
    )?;
    cut_branch(
        tx,
        store,
        me.idx,
        stream,
        &me.id,
        stream_name,
        seq,
        &ours,
        now,
    )?;
    if two_homes {
        // Evidence for `init --new-identity`: where this home's branch
        // left the other's.
        note_fork(tx, me.idx, stream, seq, &ours, theirs, now)?;
        return Ok(true);
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, now.to_string()],
    )?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('recovered', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [format!("{now} 0")],
    )?;
    Ok(true)
}

/// Keeps the evidence of a fork of (node, stream) at `seq`: the chain held
/// and the other one, with its signature.
pub(crate) fn note_fork(
    tx: &Transaction<'_>,
    node: i64,
    stream: i64,
    seq: u64,
    ours: &Digest,
    theirs: &Digest,
    now: Millis,
) -> Result<()> {
    tx.execute(
        "INSERT INTO forks (node, stream, seq, ours, theirs, peer, seen_at)
         VALUES (?1, ?2, ?3, ?4, ?5, '', ?6)
         ON CONFLICT (node, stream, seq) DO UPDATE SET theirs = excluded.theirs,
            seen_at = excluded.seen_at, resolved_at = NULL",
        params![node, stream, seq as i64, &ours.0[..], &theirs.0[..], now],
    )?;
    Ok(())
}

impl Store {
    /// Moves this home to a new identity (`selves init --new-identity`):
    /// the node id derived from `key`, keeping every memory held. With the
    /// old key, for the last time, it withdraws its branch of the old
    /// logs wherever a fork showed another home holding that key, and
    /// signs a retirement, so peers cut what the old id wrote here and the
    /// other home's clash ends. Everything the old id wrote that is still
    /// current is written again under the new id, so nothing is lost. The
    /// caller reopens the store with the new id afterwards.
    pub fn adopt_identity(&self, key: &NodeKey, now: Millis) -> Result<NodeId> {
        let new_id = key.public().node_id();
        let old = self.me.clone();
        self.write(|tx| {
            let forks: Vec<(i64, String, i64, Vec<u8>)> = {
                let mut stmt = tx.prepare(
                    "SELECT f.stream, s.name, f.seq, f.ours FROM forks f JOIN streams s ON s.id = f.stream
                     WHERE f.node = ?1 AND f.resolved_at IS NULL",
                )?;
                stmt.query_map([old.idx], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let mut from_seq = i64::MAX;
            let mut cuts = Vec::new();
            for (stream, name, seq, ours) in &forks {
                let Ok(name) = name.parse::<StreamName>() else { continue };
                if *stream == self.streams.memory {
                    from_seq = from_seq.min(*seq);
                }
                // Only a branch still held here is withdrawn: one already
                // withdrawn (a clash) was replaced by the other home's.
                let chain = chain_at(tx, old.idx, *stream, &old.id, &name, *seq as u64)?;
                if to_digest(ours.clone()) != Some(chain) {
                    continue;
                }
                let sig = self.key.sign(&abandon_message(&old.id, &name, *seq as u64, &chain));
                tx.execute(
                    "INSERT OR IGNORE INTO abandoned (node, stream, seq, chain, key, sig)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![old.idx, stream, seq, &chain.0[..], &self.key.public().0[..], &sig.0[..]],
                )?;
                cuts.push((*stream, name, *seq as u64, chain));
            }
            // The retirement: seq 0 of the nodes stream.
            let nodes = StreamName::nodes();
            let zero = sign::genesis(&old.id, &nodes);
            let sig = self.key.sign(&abandon_message(&old.id, &nodes, 0, &zero));
            tx.execute(
                "INSERT OR IGNORE INTO abandoned (node, stream, seq, chain, key, sig)
                 VALUES (?1, ?2, 0, ?3, ?4, ?5)",
                params![
                    old.idx,
                    self.streams.nodes,
                    &zero.0[..],
                    &self.key.public().0[..],
                    &sig.0[..]
                ],
            )?;
            tx.execute(
                "UPDATE forks SET resolved_at = ?2 WHERE node = ?1 AND resolved_at IS NULL",
                params![old.idx, now],
            )?;
            // Forks of its own log it refused are settled by this too.
            tx.execute(
                "DELETE FROM refusals WHERE kind = 'fork' AND node = ?1",
                [old.id.as_str()],
            )?;
            // The content the old id wrote from the first fork on (all of
            // it when nothing says where this home's writing began) is
            // written again by the new id, with what already waits.
            let queued: i64 = tx.query_row("SELECT COUNT(*) FROM reissue", [], |r| r.get(0))?;
            let from_seq = match from_seq {
                i64::MAX if queued == 0 => 1,
                s => s,
            };
            tx.execute(
                "INSERT OR IGNORE INTO reissue (stream, target)
                 SELECT DISTINCT ?2, r.target FROM records r JOIN messages m ON m.id = r.target
                 WHERE r.node = ?1 AND r.stream = ?2 AND r.seq >= ?3 AND m.author = ?1",
                params![old.idx, self.streams.memory, from_seq],
            )?;
            // This home's branch of the old logs goes too, so the other
            // home's records there can arrive.
            for (stream, name, seq, chain) in cuts {
                cut_branch(tx, self, old.idx, stream, &old.id, &name, seq, &chain, now)?;
            }
            // Rows of the old id are credited to the new one as they are
            // written again; the card moves with the id.
            let new_idx = crate::log::node_index(tx, &new_id, Some(old.name.as_str()))?;
            bind_key(tx, new_idx, &new_id, &key.public())?;
            tx.execute(
                "UPDATE messages SET author = ?2 WHERE author = ?1 AND id IN
                    (SELECT target FROM reissue WHERE stream = ?3)",
                params![old.idx, new_idx, self.streams.memory],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO reissue (stream, target) VALUES (?1, ?2)",
                params![self.streams.nodes, new_idx],
            )?;
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'node_id'",
                [new_id.as_str()],
            )?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('former_id', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [old.id.as_str()],
            )?;
            tx.execute(
                "DELETE FROM meta WHERE key = 'clash' OR key LIKE 'rebased:%' OR key = 'recovered'",
                [],
            )?;
            Ok(())
        })?;
        Ok(new_id)
    }
}
