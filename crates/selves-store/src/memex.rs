//! What the memex v12 adapter needs from the store: rows in arrival order
//! (memex's `since` cursor is a local arrival number) and the cursors of
//! memex remotes. Rows a memex peer sends are captured like local writes
//! (`capture` with `via`), so they become records in this node's own log.

use rusqlite::params;
use selves_wire::Row;

use crate::memory::{ROW_COLUMNS, read_row};
use crate::{Result, Store};

/// A page of rows in arrival order.
#[derive(Debug, Clone, Default)]
pub struct ArrivalPage {
    pub rows: Vec<Row>,
    /// The last arrival looked at (`since` when none was), whether returned
    /// or skipped: the next page starts after it.
    pub next_cursor: i64,
    /// More rows may follow.
    pub has_more: bool,
}

/// Rows looked at per page at most, as a multiple of the limit, so a long
/// run of skipped rows cannot make one request unbounded.
const EXAMINE_FACTOR: usize = 20;

impl Store {
    /// Synced rows (never local-only ones) that arrived after `since`,
    /// oldest first: at most `limit` of them and, past the first, about
    /// `max_bytes`. Rows whose current version came from `skip_via` are
    /// passed over (that peer has them). Anything deferred is made durable
    /// first: an arrival number, once shown to a peer, must never be
    /// handed out again after a power loss.
    pub fn rows_since(
        &self,
        since: i64,
        limit: usize,
        max_bytes: usize,
        skip_via: Option<&str>,
    ) -> Result<ArrivalPage> {
        self.flush_deferred()?;
        let r = self.reader()?;
        let mut stmt = r.prepare_cached(&format!(
            "SELECT m.arrival, m.via, {ROW_COLUMNS} FROM messages m
             JOIN conversations c ON c.id = m.conv
             WHERE m.arrival > ?1 AND m.key IS NOT NULL
             ORDER BY m.arrival"
        ))?;
        let mut rows = stmt.query(params![since])?;
        let mut page = ArrivalPage {
            next_cursor: since,
            ..ArrivalPage::default()
        };
        let mut bytes = 0usize;
        let mut examined = 0usize;
        while let Some(row) = rows.next()? {
            if page.rows.len() >= limit
                || examined >= limit.max(1) * EXAMINE_FACTOR
                || (!page.rows.is_empty() && bytes >= max_bytes)
            {
                page.has_more = true;
                break;
            }
            examined += 1;
            page.next_cursor = row.get(0)?;
            let via: Option<String> = row.get(1)?;
            if via.is_some() && via.as_deref() == skip_via {
                continue;
            }
            let r = read_row(row, 2)?;
            bytes += 400 + r.text.len() + r.metadata.as_ref().map_or(0, String::len);
            page.rows.push(r);
        }
        Ok(page)
    }

    /// The newest arrival number (0 when empty).
    pub fn last_arrival(&self) -> Result<i64> {
        let r = self.reader()?;
        Ok(
            r.query_row("SELECT COALESCE(MAX(arrival), 0) FROM messages", [], |r| {
                r.get(0)
            })?,
        )
    }

    /// Moves a memex remote's push cursor (never backwards).
    pub fn set_pushed_to(&self, alias: &str, cursor: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE remotes SET pushed_to = MAX(pushed_to, ?2) WHERE alias = ?1",
                params![alias, cursor],
            )?;
            Ok(())
        })
    }
}
