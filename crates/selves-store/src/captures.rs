//! Capture sources (`selves capture add`): where this node reads agent
//! sessions and notes from, how far it has read each file, and the
//! messages it read but holds back because they look secret.

use std::collections::HashMap;

use rusqlite::{OptionalExtension as _, params};
use selves_wire::Row;
use serde::Serialize;

use crate::{Millis, Result, Store};

/// One source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capture {
    pub name: String,
    /// `claude-code`, `codex`, `pi`, `markdown`, `sqlite`.
    pub format: String,
    /// The folder (or file) read.
    pub path: String,
    /// Format options, as JSON (for `sqlite`: table and columns).
    pub options: String,
    pub added_at: Millis,
    pub last_run: Option<Millis>,
    pub last_error: Option<String>,
    /// Messages captured from it so far (new or changed).
    pub rows: u64,
}

/// How far one file of a source was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMark {
    pub size: u64,
    pub mtime: i64,
    /// Bytes read and captured (whole lines).
    pub offset: u64,
    /// BLAKE3 of the file's first bytes as read (up to 4 KiB): a file
    /// rewritten under the same name differs here and is read again.
    pub head: [u8; 32],
    /// What the format carries from earlier lines (a session's id, title).
    pub context: Option<String>,
}

/// What became of a message held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeldState {
    Held,
    Released,
    Dropped,
}

/// A captured message kept on this node only.
#[derive(Debug, Clone, Serialize)]
pub struct HeldRow {
    /// The row key, hex: what `capture release` / `capture drop` take.
    pub id: String,
    pub capture: String,
    pub row: Row,
    /// Which secret rule it matched.
    pub reason: String,
    pub since: Millis,
}

impl Store {
    /// Adds a source; `false` if one of that name exists.
    pub fn add_capture(&self, c: &Capture) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "INSERT OR IGNORE INTO captures (name, format, path, options, added_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![c.name, c.format, c.path, c.options, c.added_at],
            )? > 0)
        })
    }

    /// Removes a source and its read marks (what it captured stays).
    pub fn remove_capture(&self, name: &str) -> Result<bool> {
        self.write(|tx| {
            tx.execute("DELETE FROM capture_files WHERE capture = ?1", [name])?;
            tx.execute("DELETE FROM capture_written WHERE capture = ?1", [name])?;
            Ok(tx.execute("DELETE FROM captures WHERE name = ?1", [name])? > 0)
        })
    }

    pub fn captures(&self) -> Result<Vec<Capture>> {
        let r = self.reader()?;
        let mut s = r.prepare(
            "SELECT name, format, path, options, added_at, last_run, last_error, rows
             FROM captures ORDER BY name",
        )?;
        let out = s
            .query_map([], |r| {
                Ok(Capture {
                    name: r.get(0)?,
                    format: r.get(1)?,
                    path: r.get(2)?,
                    options: r.get(3)?,
                    added_at: r.get(4)?,
                    last_run: r.get(5)?,
                    last_error: r.get(6)?,
                    rows: r.get::<_, i64>(7)? as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(out)
    }

    /// Every file of a source read so far, by path.
    pub fn capture_marks(&self, capture: &str) -> Result<HashMap<String, FileMark>> {
        let r = self.reader()?;
        let mut s = r.prepare(
            "SELECT path, size, mtime, offset, head, context FROM capture_files
             WHERE capture = ?1",
        )?;
        let out = s
            .query_map([capture], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    FileMark {
                        size: r.get::<_, i64>(1)? as u64,
                        mtime: r.get(2)?,
                        offset: r.get::<_, i64>(3)? as u64,
                        head: crate::unhex_blob::<32>(r.get(4)?),
                        context: r.get(5)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<HashMap<_, _>>>()?;
        Ok(out)
    }

    /// Records how far files were read: called only after what was read
    /// up to there is captured, so a mark never runs ahead of memory. Not
    /// fsynced on its own: a mark lost to a power cut only means reading
    /// again, which makes no copies.
    pub fn set_capture_marks(&self, capture: &str, marks: &[(String, FileMark)]) -> Result<()> {
        self.write_memory(crate::Durability::Deferred, |tx, _| {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO capture_files
                   (capture, path, size, mtime, offset, head, context)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (path, m) in marks {
                stmt.execute(params![
                    capture,
                    path,
                    m.size as i64,
                    m.mtime,
                    m.offset as i64,
                    &m.head[..],
                    m.context
                ])?;
            }
            Ok(())
        })
    }

    /// Keys a sqlite source wrote back into its application's table.
    pub fn capture_written(&self, capture: &str) -> Result<std::collections::HashSet<String>> {
        let r = self.reader()?;
        let mut s = r.prepare("SELECT key FROM capture_written WHERE capture = ?1")?;
        let out = s
            .query_map([capture], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(out)
    }

    /// Notes keys written back (after the application's table committed
    /// them: a crash between the two makes the next pass read them back
    /// as rows it already holds, which changes nothing).
    pub fn note_written(&self, capture: &str, keys: &[String]) -> Result<()> {
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO capture_written (capture, key) VALUES (?1, ?2)",
            )?;
            for k in keys {
                stmt.execute(params![capture, k])?;
            }
            Ok(())
        })
    }

    /// Notes a run of a source: when, how it ended, how many messages it
    /// captured.
    pub fn note_capture_run(
        &self,
        capture: &str,
        at: Millis,
        error: Option<&str>,
        rows: u64,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE captures SET last_run = ?2, last_error = ?3, rows = rows + ?4
                 WHERE name = ?1",
                params![capture, at, error, rows as i64],
            )?;
            Ok(())
        })
    }

    /// Holds a captured row back; `false` if it was held (or released, or
    /// dropped) before: a row is decided on once.
    pub fn hold_row(&self, capture: &str, row: &Row, reason: &str, now: Millis) -> Result<bool> {
        let key = held_key(row);
        let json = serde_json::to_string(row).expect("serialisable");
        self.write(|tx| {
            Ok(tx.execute(
                "INSERT OR IGNORE INTO held_rows (key, capture, row, reason, since)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![&key[..], capture, json, reason, now],
            )? > 0)
        })
    }

    /// Rows held back and not yet released or dropped.
    pub fn held_rows(&self) -> Result<Vec<HeldRow>> {
        let r = self.reader()?;
        let mut s = r.prepare(
            "SELECT key, capture, row, reason, since FROM held_rows
             WHERE dropped = 0 ORDER BY since, key",
        )?;
        let rows = s
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, capture, row, reason, since)| {
                Some(HeldRow {
                    id: hex(&key),
                    capture,
                    row: serde_json::from_str(&row).ok()?,
                    reason,
                    since,
                })
            })
            .collect())
    }

    /// Ends holding a row: `Released` hands it back (the caller captures
    /// it), `Dropped` forgets its text here. `None` if no such row is held.
    pub fn settle_held_row(&self, id: &str, state: HeldState) -> Result<Option<Row>> {
        let Some(key) = unhex(id) else {
            return Ok(None);
        };
        let code = match state {
            HeldState::Held => return Ok(None),
            HeldState::Dropped => 1,
            HeldState::Released => 2,
        };
        self.write(|tx| {
            let row: Option<String> = tx
                .query_row(
                    "SELECT row FROM held_rows WHERE key = ?1 AND dropped = 0",
                    [&key[..]],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(row) = row else { return Ok(None) };
            // The text goes; the key stays, so reading the source again
            // does not hold (or capture) the same message again.
            tx.execute(
                "UPDATE held_rows SET dropped = ?2, row = '' WHERE key = ?1",
                params![&key[..], code],
            )?;
            Ok(serde_json::from_str(&row).ok())
        })
    }
}

/// What a held row is known by: its row key (source, conversation,
/// message id), or for a row without a message id its text's hash.
fn held_key(row: &Row) -> [u8; 16] {
    match &row.msg_id {
        Some(id) => selves_wire::row::row_key(&row.source, &row.conversation_id, id).0,
        None => {
            let h = blake3::hash(row.text.as_bytes());
            h.as_bytes()[..16].try_into().expect("16 bytes")
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
