//! Full-text search. The FTS5 index lives in `search.db`, apart from the
//! main database: it is derived from `messages` (following `arrival`), so
//! it is caught up in large batches after writes instead of by a trigger per
//! row, and its writes never take the main database's write lock. Sync never
//! waits for indexing; `search` catches the index up before it answers.

use rusqlite::{Connection, OptionalExtension as _, params};
use selves_wire::Row;
use selves_wire::row::FORGOTTEN_AT;

use crate::memory::{ROW_COLUMNS, read_row};
use crate::schema::SEARCH_SCHEMA;
use crate::{Result, Store, StoreError};

/// A query matching more than this many messages ranks only the newest
/// this many (see [`Store::search`]).
pub const RANK_WINDOW: i64 = 5_000;

/// New terms FTS5 holds in memory before it writes them as a segment.
const FTS_HASH_BYTES: i64 = 8 << 20;
/// Segments of one level FTS5 merges at once.
const FTS_AUTOMERGE: i64 = 8;

/// Rows indexed per transaction when catching up.
pub const INDEX_CHUNK: usize = 20_000;

#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// Any user text: every whitespace-separated word must match.
    pub text: String,
    pub origin: Option<String>,
    pub source: Option<String>,
    /// Only rows at or after this time (seconds).
    pub since: Option<i64>,
    pub limit: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Hit {
    #[serde(flatten)]
    pub row: Row,
    /// A short excerpt around the first match.
    pub snippet: String,
    /// FTS5 bm25 rank: lower is better.
    pub rank: f64,
    /// The name of the node whose signed record wrote this version (its
    /// `origin` captured it; an edit or a memex row vouched for by a
    /// node differs). Absent for rows carried from before signing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

fn open_search(store: &Store) -> Result<Connection> {
    crate::create_private(&store.paths.search)?;
    let conn = crate::open_conn(&store.paths.search)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Derived data: losing the last commits on power loss only means
    // re-indexing them.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // A row replaced or forgotten leaves no words behind: FTS5 removes its
    // entries from the index itself, and freed pages are overwritten.
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(conn)
}

/// Creates the index if missing, and empties it if it was built for another
/// database.
pub(crate) fn prepare(store: &Store) -> Result<()> {
    let mut conn = open_search(store)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(SEARCH_SCHEMA)?;
    // Build the index in fewer, larger steps: FTS5 keeps up to 8 MB of
    // new terms in memory before it writes a segment (1 MB by default),
    // and merges 8 segments of a level at once (4). On 143 MB of text
    // that indexes in 2.3-2.5 s instead of 3.2 s, for 5 MB more memory
    // while indexing (measured with `selves search` on a fresh index).
    tx.execute(
        "INSERT INTO fts (fts, rank) VALUES ('hashsize', ?1)",
        [FTS_HASH_BYTES],
    )?;
    tx.execute(
        "INSERT INTO fts (fts, rank) VALUES ('automerge', ?1)",
        [FTS_AUTOMERGE],
    )?;
    tx.execute(
        "INSERT INTO fts (fts, rank) VALUES ('secure-delete', 1)",
        [],
    )?;
    let instance: Option<String> = rusqlite::OptionalExtension::optional(tx.query_row(
        "SELECT instance FROM state WHERE id = 1",
        [],
        |r| r.get(0),
    ))?;
    match instance {
        Some(i) if i == store.instance => {}
        Some(_) => {
            tx.execute_batch("DELETE FROM fts; UPDATE state SET watermark = 0;")?;
            tx.execute(
                "UPDATE state SET instance = ?1 WHERE id = 1",
                [&store.instance],
            )?;
        }
        None => {
            tx.execute(
                "INSERT INTO state (id, instance, watermark) VALUES (1, ?1, 0)",
                [&store.instance],
            )?;
        }
    }
    tx.commit()?;
    *store
        .search_writer
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(conn);
    Ok(())
}

/// Leaves no copy of forgotten words in the files: the write-ahead logs
/// of both databases are copied back and emptied (a log holds every page
/// version written since the last reset, the text before it was
/// forgotten included), and the index's segments are merged so no old
/// segment holds them. Waits for readers, as a TRUNCATE checkpoint does.
fn purge_files(search: &Connection, store: &Store) -> Result<()> {
    search.execute("INSERT INTO fts (fts) VALUES ('optimize')", [])?;
    search.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let w = store.writer.lock().unwrap_or_else(|p| p.into_inner());
    w.conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// FTS5 query text for any user input: each word becomes a quoted string,
/// so `foo-bar`, `c++`, `it's` and `"` are searched as text, never parsed
/// as query syntax.
pub fn fts_query(text: &str) -> Option<String> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    if words.is_empty() {
        None
    } else {
        Some(words.join(" "))
    }
}

impl Store {
    /// Indexes up to `chunk` rows that changed since the index last caught
    /// up, in one transaction. Returns how many it indexed.
    pub fn index_step(&self, chunk: usize) -> Result<usize> {
        if self.read_only() {
            // The disk is full: `search` reads past the index instead.
            return Ok(0);
        }
        let mut guard = self.search_writer.lock().unwrap_or_else(|p| p.into_inner());
        let conn = match guard.as_mut() {
            Some(c) => c,
            None => guard.insert(open_search(self)?),
        };
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let watermark: i64 =
            tx.query_row("SELECT watermark FROM state WHERE id = 1", [], |r| r.get(0))?;
        let reader = self.reader()?;
        let mut select = reader.prepare_cached(
            "SELECT id, arrival, text, edited_at IS ?3 FROM messages WHERE arrival > ?1
             ORDER BY arrival LIMIT ?2",
        )?;
        let mut rows = select.query(params![watermark, chunk as i64, FORGOTTEN_AT])?;
        let mut insert =
            tx.prepare_cached("INSERT OR REPLACE INTO fts (rowid, text) VALUES (?1, ?2)")?;
        let mut delete = tx.prepare_cached("DELETE FROM fts WHERE rowid = ?1")?;
        let mut n = 0;
        let mut forgotten = 0;
        let mut high = watermark;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            high = row.get(1)?;
            if row.get::<_, bool>(3)? {
                delete.execute([id])?;
                forgotten += 1;
            } else {
                // Passed on as SQLite holds it: the text was checked when it
                // was stored, and FTS5 reads it as UTF-8 itself.
                insert.execute(params![
                    id,
                    rusqlite::types::ToSqlOutput::Borrowed(row.get_ref(2)?)
                ])?;
            }
            n += 1;
        }
        drop((insert, delete));
        if n > 0 {
            tx.execute("UPDATE state SET watermark = ?1 WHERE id = 1", [high])?;
        }
        tx.commit()?;
        drop(rows);
        drop(select);
        drop(reader);
        if forgotten > 0 {
            // The words are gone from the tables; now from the files too.
            purge_files(conn, self)?;
        }
        Ok(n)
    }

    /// Indexes everything pending, calling `progress` with the running
    /// total after each chunk.
    pub fn catch_up_index(&self, mut progress: impl FnMut(u64)) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let n = self.index_step(INDEX_CHUNK)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
            progress(total);
        }
    }

    /// Rows written since the index last caught up.
    pub fn index_lag(&self) -> Result<u64> {
        let r = self.reader()?;
        let n: i64 = r.query_row(
            "SELECT COUNT(*) FROM messages
             WHERE arrival > (SELECT watermark FROM search.state WHERE id = 1)",
            [],
            |row| row.get(0),
        )?;
        Ok(n as u64)
    }

    /// Searches memory, best matches first. Catches the index up first, so
    /// every committed row is found.
    pub fn search(&self, q: &SearchQuery) -> Result<Vec<Hit>> {
        let fts = fts_query(&q.text).ok_or(StoreError::EmptyQuery)?;
        self.catch_up_index(|_| {})?;
        let r = self.reader()?;
        // The index ranks first, alone: joining every match to its row
        // before sorting reads every matching text, and a common word
        // matches most of memory. With filters, the best `k` matches may
        // not hold `limit` that pass them: `k` grows until they do or no
        // match is left.
        let mut stmt = r.prepare_cached(&format!(
            "WITH top AS (
                SELECT rowid, rank FROM search.fts WHERE fts MATCH ?1 AND rowid >= ?6
                ORDER BY rank LIMIT ?4
             )
             SELECT {ROW_COLUMNS}, top.rank,
                (SELECT COALESCE(name, node_id) FROM nodes WHERE id = m.author)
             FROM top
             JOIN messages m ON m.id = top.rowid
             JOIN conversations c ON c.id = m.conv
             WHERE (?2 IS NULL OR m.origin = ?2)
               AND (?3 IS NULL OR c.source = ?3)
               AND (?5 IS NULL OR m.ts >= ?5)
             ORDER BY top.rank"
        ))?;
        let words: Vec<&str> = q.text.split_whitespace().collect();
        let limit = q.limit.max(1);
        let filtered = q.origin.is_some() || q.source.is_some() || q.since.is_some();
        let mut k = if filtered {
            limit.saturating_mul(8)
        } else {
            limit
        };
        // Ranking costs a little per match, and a word in most messages
        // matches most of memory: such a query ranks its newest
        // RANK_WINDOW matches (the id of the oldest of them is found by
        // walking the index, which does not rank). A rarer query ranks
        // every match.
        let mut from: i64 = r
            .prepare_cached(
                "SELECT rowid FROM search.fts WHERE fts MATCH ?1
                 ORDER BY rowid DESC LIMIT 1 OFFSET ?2",
            )?
            .query_row(params![fts, RANK_WINDOW - 1], |row| row.get(0))
            .optional()?
            .unwrap_or(i64::MIN);
        let mut found = Vec::new();
        loop {
            found.clear();
            let rows = stmt.query_map(
                params![fts, q.origin, q.source, k as i64, q.since, from],
                |row| {
                    Ok((
                        read_row(row, 0)?,
                        row.get::<_, f64>(17)?,
                        row.get::<_, Option<String>>(18)?,
                    ))
                },
            )?;
            for row in rows {
                found.push(row?);
                if found.len() == limit {
                    break;
                }
            }
            if found.len() >= limit || !filtered {
                break;
            }
            // Fewer than asked for: look further back, then at more.
            if from != i64::MIN {
                from = i64::MIN;
                continue;
            }
            let matches: i64 = r
                .prepare_cached("SELECT count(*) FROM search.fts WHERE fts MATCH ?1")?
                .query_row([&fts], |row| row.get(0))?;
            if k as i64 >= matches {
                break;
            }
            k = k.saturating_mul(8);
        }
        drop(stmt);
        if self.read_only() && (found.len() as u64) < q.limit.max(1) as u64 {
            // The index cannot catch up on a full disk: rows written since
            // it last did are read through, every word a substring.
            let mut stmt = r.prepare(&format!(
                "SELECT {ROW_COLUMNS}, 0.0,
                    (SELECT COALESCE(name, node_id) FROM nodes WHERE id = m.author)
                 FROM messages m JOIN conversations c ON c.id = m.conv
                 WHERE m.arrival > (SELECT watermark FROM search.state WHERE id = 1)
                   AND (?1 IS NULL OR m.origin = ?1)
                   AND (?2 IS NULL OR c.source = ?2)
                   AND (?3 IS NULL OR m.ts >= ?3)
                 ORDER BY m.arrival DESC"
            ))?;
            let lowered: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
            let mut rows = stmt.query(params![q.origin, q.source, q.since])?;
            while let Some(row) = rows.next()? {
                if found.len() >= q.limit.max(1) {
                    break;
                }
                let row = (read_row(row, 0)?, row.get::<_, f64>(17)?, row.get(18)?);
                let text = row.0.text.to_lowercase();
                if lowered.iter().all(|w| text.contains(w.as_str())) {
                    found.push(row);
                }
            }
        }
        let hits = found
            .into_iter()
            .map(|(row, rank, author)| Hit {
                snippet: snippet(&row.text, &words),
                row,
                rank,
                author,
            })
            .collect();
        Ok(hits)
    }
}

impl Store {
    /// The newest rows (by their own time), newest first.
    pub fn recent(
        &self,
        origin: Option<&str>,
        source: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Row>> {
        let r = self.reader()?;
        let mut stmt = r.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM messages m JOIN conversations c ON c.id = m.conv
             WHERE (?1 IS NULL OR m.origin = ?1) AND (?2 IS NULL OR c.source = ?2)
               AND m.edited_at IS NOT ?4
             ORDER BY m.ts DESC, m.id DESC LIMIT ?3"
        ))?;
        let rows = stmt
            .query_map(
                params![origin, source, limit.max(1) as i64, FORGOTTEN_AT],
                |row| read_row(row, 0),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// (rows, highest arrival) of a conversation: changes whenever a row of
    /// it is added, replaced or forgotten.
    pub fn conversation_version(&self, source: &str, conversation_id: &str) -> Result<(u64, u64)> {
        let r = self.reader()?;
        let v = r.query_row(
            "SELECT count(*), COALESCE(MAX(m.arrival), 0)
             FROM conversations c JOIN messages m ON m.conv = c.id
             WHERE c.source = ?1 AND c.conversation_id = ?2",
            params![source, conversation_id],
            |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
        )?;
        Ok(v)
    }

    /// A conversation's rows in order (of every source that uses the id,
    /// unless one is named), at most `limit` from its start.
    pub fn conversation(
        &self,
        conversation_id: &str,
        source: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Row>> {
        let r = self.reader()?;
        let mut stmt = r.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM conversations c JOIN messages m ON m.conv = c.id
             WHERE c.conversation_id = ?1 AND (?2 IS NULL OR c.source = ?2)
               AND m.edited_at IS NOT ?4
             ORDER BY m.ts, m.msg_id, m.id LIMIT ?3"
        ))?;
        let rows = stmt
            .query_map(
                params![conversation_id, source, limit.max(1) as i64, FORGOTTEN_AT],
                |row| read_row(row, 0),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

/// About 160 characters of `text` around the first word found
/// (case-insensitively), on one line.
pub fn snippet(text: &str, words: &[&str]) -> String {
    const BEFORE: usize = 60;
    const AFTER: usize = 100;
    // Lowercase char by char, remembering where each lowered byte came from.
    let mut lowered = String::with_capacity(text.len());
    let mut origin_of = Vec::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        for l in c.to_lowercase() {
            lowered.push(l);
            origin_of.resize(lowered.len(), i);
        }
    }
    let found = words
        .iter()
        .filter_map(|w| lowered.find(&w.to_lowercase()))
        .min()
        .map(|at| origin_of[at]);
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let center = found
        .map(|at| chars.partition_point(|(i, _)| *i < at))
        .unwrap_or(0);
    let from = center.saturating_sub(BEFORE);
    let to = (center + AFTER).min(chars.len());
    let mut out = String::new();
    if from > 0 {
        out.push('…');
    }
    out.extend(chars[from..to].iter().map(|(_, c)| match c {
        '\n' | '\r' | '\t' => ' ',
        c => *c,
    }));
    if to < chars.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_becomes_quoted_words() {
        assert_eq!(fts_query("  "), None);
        assert_eq!(
            fts_query(r#"foo-bar c++ it's "quoted" AND NEAR("#).unwrap(),
            r#""foo-bar" "c++" "it's" """quoted""" "AND" "NEAR(""#
        );
    }

    #[test]
    fn snippet_centres_on_the_match() {
        let text = format!("{}Needle here{}", "a".repeat(200), "b".repeat(200));
        let s = snippet(&text, &["needle"]);
        assert!(s.starts_with('…') && s.ends_with('…'));
        assert!(s.contains("Needle here"));
        assert_eq!(snippet("short\ntext", &["zzz"]), "short text");
        // Lowercasing that changes byte lengths must not misplace the match.
        let s = snippet("İİİİ target", &["target"]);
        assert!(s.contains("target"));
    }
}
