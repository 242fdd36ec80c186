//! Node cards (stream `nodes`): the newest card of every node, and this
//! node's own card, which only it writes.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use selves_wire::card::NodeCard;

use crate::log::OwnLog;
use crate::{Result, Store, StoreError};

/// Reads the card held for local node index `node`.
pub(crate) fn card_of(conn: &Connection, node: i64) -> Result<Option<NodeCard>> {
    let json: Option<String> = conn
        .prepare_cached("SELECT card FROM cards WHERE node = ?1")?
        .query_row([node], |r| r.get(0))
        .optional()?;
    // Cards were checked when stored; one that no longer parses is absent.
    Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
}

/// Keeps `card` for local node index `node` if it is newer than the one
/// held. Returns whether it was kept.
pub(crate) fn put_card(tx: &Transaction<'_>, node: i64, card: &NodeCard) -> Result<bool> {
    if let Some(held) = card_of(tx, node)?
        && !card.newer_than(&held)
    {
        return Ok(false);
    }
    let json = serde_json::to_string(card).map_err(|e| StoreError::BadCard(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO cards (node, updated_at, card) VALUES (?1, ?2, ?3)
         ON CONFLICT (node) DO UPDATE SET updated_at = excluded.updated_at, card = excluded.card",
    )?
    .execute(params![node, card.updated_at, json])?;
    Ok(true)
}

impl Store {
    /// This node's card, if it has written one.
    pub fn own_card(&self) -> Result<Option<NodeCard>> {
        let r = self.reader()?;
        card_of(&r, self.me.idx)
    }

    /// The newest card held for node `id`.
    pub fn card(&self, id: &selves_wire::NodeId) -> Result<Option<NodeCard>> {
        let r = self.reader()?;
        let node: Option<i64> = r
            .prepare_cached("SELECT id FROM nodes WHERE node_id = ?1")?
            .query_row([id.as_str()], |row| row.get(0))
            .optional()?;
        match node {
            Some(node) => card_of(&r, node),
            None => Ok(None),
        }
    }

    /// The newest card of every node this node holds one for, by name.
    pub fn cards(&self) -> Result<Vec<NodeCard>> {
        let r = self.reader()?;
        let mut stmt = r.prepare("SELECT card FROM cards")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for json in rows {
            out.extend(serde_json::from_str::<NodeCard>(&json?).ok());
        }
        out.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        Ok(out)
    }

    /// Writes a new version of this node's card: the one held (or a blank
    /// one) changed by `edit`, stamped past the one held so it wins
    /// everywhere, appended to this node's `nodes` log and committed
    /// durably. Returns the card and its seq.
    pub fn write_own_card(
        &self,
        now: i64,
        edit: impl FnOnce(&mut NodeCard),
    ) -> Result<(NodeCard, u64)> {
        self.write(|tx| {
            let held = card_of(tx, self.me.idx)?;
            self.write_card_in(tx, now, held, edit)
        })
    }

    /// Writes this node's card within `tx`: `base` (or a blank card)
    /// changed by `edit`, with this node's id, name and key, stamped past
    /// `base`.
    pub(crate) fn write_card_in(
        &self,
        tx: &Transaction<'_>,
        now: i64,
        base: Option<NodeCard>,
        edit: impl FnOnce(&mut NodeCard),
    ) -> Result<(NodeCard, u64)> {
        let mut card = base
            .clone()
            .unwrap_or_else(|| NodeCard::new(self.me.id.clone(), self.me.name.clone(), now));
        edit(&mut card);
        card.id = self.me.id.clone();
        card.name = self.me.name.clone();
        card.key = Some(self.key.public());
        card.updated_at = now.max(base.map_or(i64::MIN, |h| h.updated_at + 1));
        card.check().map_err(StoreError::BadCard)?;
        put_card(tx, self.me.idx, &card)?;
        let mut own = OwnLog::open(tx, self, self.streams.nodes)?;
        let d = selves_wire::sign::record_digest(&selves_wire::native::Record::Node(Box::new(
            card.clone(),
        )))
        .expect("a card has a digest");
        let seq = own.append(tx, Some(self.me.idx), &d, 512)?;
        own.finish(tx)?;
        Ok((card, seq))
    }
}
