//! A table of an application's SQLite database as a source (Selesta's
//! `resonance.sqlite3`): each row of the table is a message, and, with
//! `--write-back`, messages other nodes captured from the same table are
//! inserted into it here. The application keeps its database: it is read
//! on a read-only connection (WAL readers never block its writer), and the
//! only write is an INSERT of rows its table lacks, never an UPDATE or a
//! DELETE, under a busy timeout so the application's own writes go first.
//!
//! Identity: `source` = the source's name, `conversation_id` = the table,
//! `msg_id` = the key column's value. Two nodes exchange a table's rows
//! when their sources have the same name (as shares do).

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, params};
use selves_store::{Capture, FileMark, Store};
use selves_wire::{ConversationMeta, Row};
use serde::{Deserialize, Serialize};

use super::Pass;

/// How long a read or the write-back waits for the application's lock.
const BUSY: Duration = Duration::from_secs(5);
/// Rows read per query.
const PAGE: i64 = 5000;
/// The mark that remembers which version of the table's messages the last
/// write-back saw (table names cannot hold `#`).
const WRITE_BACK_MARK: &str = "#write-back";

/// What `capture add --format sqlite` is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    pub table: String,
    pub key: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
    #[serde(default)]
    pub write_back: bool,
}

/// A name SQLite takes as an identifier, nothing else (it is put between
/// double quotes in every statement, but a name is never more than this).
fn identifier(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        bail!("--{what} {name:?} is not a plain table or column name (letters, digits, _)");
    }
    Ok(())
}

impl Options {
    /// Checks the names, then that the database has that table and those
    /// columns (reading only).
    pub fn check(&self, path: &Path) -> anyhow::Result<()> {
        identifier("table", &self.table)?;
        identifier("key", &self.key)?;
        identifier("text", &self.text)?;
        if let Some(ts) = &self.ts {
            identifier("ts", ts)?;
        }
        let conn = open(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.prepare(&self.select()).with_context(|| {
            format!(
                "{} has no table {} with those columns",
                path.display(),
                self.table
            )
        })?;
        Ok(())
    }

    fn select(&self) -> String {
        format!(
            "SELECT rowid, \"{}\", \"{}\", {} FROM \"{}\" WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            self.key,
            self.text,
            self.ts
                .as_ref()
                .map_or("NULL".to_owned(), |t| format!("\"{t}\"")),
            self.table
        )
    }
}

fn open(path: &Path, flags: OpenFlags) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_context(|| format!("cannot open {}", path.display()))?;
    conn.busy_timeout(BUSY)?;
    // A double-quoted name that is no column must be an error, not the
    // string it spells (SQLite's old leniency).
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DQS_DML, false)?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DQS_DDL, false)?;
    Ok(conn)
}

/// One pass: rows past the last rowid read become messages; then, with
/// write-back, messages of other nodes the table lacks are inserted.
pub(super) fn pass(store: &Store, c: &Capture, me: &str, out: &mut Pass) -> anyhow::Result<()> {
    let o: Options = serde_json::from_str(&c.options)
        .with_context(|| format!("capture {}: its options are damaged", c.name))?;
    let path = Path::new(&c.path);
    if !path.exists() {
        bail!("{} is gone", path.display());
    }
    let written = store.capture_written(&c.name)?;
    let conn = open(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let marks = store.capture_marks(&c.name)?;
    let mut after = marks.get(&o.table).map_or(0, |m| m.offset as i64);
    let mut stmt = conn.prepare(&o.select())?;
    loop {
        let mut rows = Vec::new();
        let mut last = after;
        let mut q = stmt.query(params![after, PAGE])?;
        let mut n = 0;
        while let Some(r) = q.next()? {
            n += 1;
            last = r.get(0)?;
            let Some(key) = text_of(r.get_ref(1)?) else {
                continue;
            };
            if written.contains(&key) {
                continue;
            }
            let Some(text) = text_of(r.get_ref(2)?).filter(|t| !t.trim().is_empty()) else {
                continue;
            };
            let ts_raw = json_of(r.get_ref(3)?);
            rows.push(row(c, &o, key, text, ts_raw));
        }
        drop(q);
        if n == 0 {
            break;
        }
        out.bytes += rows.iter().map(|r| r.text.len() as u64).sum::<u64>();
        super::keep(store, c, me, rows, out)?;
        let mark = FileMark {
            size: 0,
            mtime: 0,
            offset: last as u64,
            head: [0; 32],
            context: None,
        };
        store.set_capture_marks(&c.name, &[(o.table.clone(), mark)])?;
        after = last;
        out.files = 1;
    }
    drop(stmt);
    drop(conn);
    if o.write_back {
        write_back(store, c, &o, me, &written, out)?;
    }
    Ok(())
}

fn row(c: &Capture, o: &Options, key: String, text: String, ts_raw: serde_json::Value) -> Row {
    let ts = match &ts_raw {
        serde_json::Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map(|t| if t > 100_000_000_000 { t / 1000 } else { t }),
        serde_json::Value::String(s) => super::formats::seconds(s).or_else(|| s.parse().ok()),
        _ => None,
    }
    .unwrap_or_else(|| crate::output::now_ms() / 1000);
    Row {
        source: c.name.clone(),
        conversation_id: o.table.clone(),
        msg_id: Some(key),
        uuid: None,
        role: "note".into(),
        sender: None,
        text,
        ts,
        edited_at: None,
        channel: None,
        // The timestamp as the application wrote it, so a node writing
        // the row back writes what the application would have.
        metadata: Some(serde_json::json!({ "sqlite": { "ts": ts_raw } }).to_string()),
        origin: None,
        conversation: Some(ConversationMeta {
            title: Some(o.table.clone()),
            ..ConversationMeta::default()
        }),
    }
}

/// Inserts into the application's table the messages of this source that
/// other nodes captured and the table lacks. Each key is written back at
/// most once: a row the application deleted afterwards stays deleted.
fn write_back(
    store: &Store,
    c: &Capture,
    o: &Options,
    me: &str,
    written: &HashSet<String>,
    out: &mut Pass,
) -> anyhow::Result<()> {
    // Read the table's messages only when they changed since the last
    // write-back (the daemon looks twice a second).
    let version = store.conversation_version(&c.name, &o.table)?;
    let seen = store
        .capture_marks(&c.name)?
        .get(WRITE_BACK_MARK)
        .map(|m| (m.size, m.offset));
    if seen == Some(version) {
        return Ok(());
    }
    let done = |store: &Store| {
        let mark = FileMark {
            size: version.0,
            mtime: 0,
            offset: version.1,
            head: [0; 32],
            context: None,
        };
        store.set_capture_marks(&c.name, &[(WRITE_BACK_MARK.to_owned(), mark)])
    };
    let theirs: Vec<Row> = store
        .conversation(&o.table, Some(&c.name), usize::MAX / 2)?
        .into_iter()
        .filter(|r| r.origin.as_deref() != Some(me))
        .filter(|r| r.msg_id.as_ref().is_some_and(|k| !written.contains(k)))
        .collect();
    if theirs.is_empty() {
        done(store)?;
        return Ok(());
    }
    let mut conn = open(Path::new(&c.path), OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut keys = Vec::new();
    {
        let mut has = tx.prepare(&format!(
            "SELECT 1 FROM \"{}\" WHERE \"{}\" = ?1",
            o.table, o.key
        ))?;
        let insert = match &o.ts {
            Some(ts) => format!(
                "INSERT INTO \"{}\" (\"{}\", \"{}\", \"{ts}\") VALUES (?1, ?2, ?3)",
                o.table, o.key, o.text
            ),
            None => format!(
                "INSERT INTO \"{}\" (\"{}\", \"{}\") VALUES (?1, ?2)",
                o.table, o.key, o.text
            ),
        };
        let mut insert = tx.prepare(&insert)?;
        for r in &theirs {
            let key = r.msg_id.clone().expect("filtered");
            if has.exists([&key])? {
                keys.push(key);
                continue;
            }
            let ts = r
                .metadata
                .as_deref()
                .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
                .map(|m| m["sqlite"]["ts"].clone())
                .filter(|v| !v.is_null())
                .unwrap_or_else(|| serde_json::json!(r.ts));
            let ts = match ts {
                serde_json::Value::Number(n) => n
                    .as_i64()
                    .map(rusqlite::types::Value::Integer)
                    .unwrap_or_else(|| rusqlite::types::Value::Real(n.as_f64().unwrap_or(0.0))),
                serde_json::Value::String(s) => rusqlite::types::Value::Text(s),
                other => rusqlite::types::Value::Text(other.to_string()),
            };
            if o.ts.is_some() {
                insert.execute(params![key, r.text, ts])
            } else {
                insert.execute(params![key, r.text])
            }
            .with_context(|| format!("cannot write back into {}", o.table))?;
            out.written_back += 1;
            keys.push(key);
        }
    }
    tx.commit()
        .with_context(|| format!("cannot write back into {}", o.table))?;
    store.note_written(&c.name, &keys)?;
    done(store)?;
    Ok(())
}

fn text_of(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
    }
}

fn json_of(v: ValueRef<'_>) -> serde_json::Value {
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => serde_json::json!(i),
        ValueRef::Real(f) => serde_json::json!(f),
        ValueRef::Text(t) => serde_json::json!(String::from_utf8_lossy(t)),
        ValueRef::Blob(_) => serde_json::Value::Null,
    }
}
