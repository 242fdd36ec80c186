//! Capture: memory filled from what agents write (docs/capture.md).
//!
//! A source is a folder of one format ([`formats`]). A pass walks it and
//! reads only files whose size or modification time changed since the
//! last pass: a session file that grew is read from where the last pass
//! stopped (whole lines only: a line still being written waits for the
//! next pass); one that shrank or whose first bytes changed was rewritten
//! and is read again from the start (rows are keyed by stable ids, so that
//! makes no copies). A file's mark moves only after what was read up to it
//! is captured, so a crash reads again rather than skips.
//!
//! Rows whose text looks secret (the detector shares use) are not
//! captured: they are held on this node (`selves capture held`) until the
//! user releases or drops them.

pub mod formats;
pub mod sqlite;

use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use selves_store::{Capture, CaptureOptions, FileMark, Store};
use selves_wire::Row;
use serde::Serialize;

use formats::{Context, Format};

/// Rows per capture transaction.
const BATCH: usize = 2000;
/// How much of a file's start its mark remembers, to tell a rewrite.
const HEAD: u64 = 4096;

/// What one pass over a source did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pass {
    pub name: String,
    /// Files read (in part or whole).
    pub files: u64,
    pub bytes: u64,
    /// Messages new or changed in memory.
    pub captured: u64,
    /// Messages held back here because they look secret.
    pub held: u64,
    /// Other nodes' messages inserted into a sqlite source's table.
    pub written_back: u64,
    /// Files that could not be read, with why.
    pub errors: Vec<String>,
}

/// Runs one pass over a source; notes it (and its first error) on the
/// source for `capture list` and `status`.
pub fn pass(store: &Store, c: &Capture, me: &str, now: i64) -> anyhow::Result<Pass> {
    let mut out = Pass {
        name: c.name.clone(),
        ..Pass::default()
    };
    let result = run(store, c, me, &mut out);
    let error = match &result {
        Err(e) => Some(format!("{e:#}")),
        Ok(()) => out.errors.first().cloned(),
    };
    // A look that found nothing new writes nothing (the daemon looks twice
    // a second: no commit, no fsync for it).
    let idle = out.files == 0 && out.written_back == 0 && out.held == 0;
    if !idle || error != c.last_error || c.last_run.is_none() {
        store.note_capture_run(&c.name, now, error.as_deref(), out.captured)?;
    }
    result.map(|()| out)
}

fn run(store: &Store, c: &Capture, me: &str, out: &mut Pass) -> anyhow::Result<()> {
    let format = Format::parse(&c.format)
        .with_context(|| format!("capture {}: unknown format {}", c.name, c.format))?;
    if format == Format::Sqlite {
        return sqlite::pass(store, c, me, out);
    }
    let root = PathBuf::from(&c.path);
    if !root.exists() {
        // An agent not run here yet: nothing to read, nothing wrong.
        return Ok(());
    }
    let marks = store.capture_marks(&c.name)?;
    let mut pending = Vec::new();
    let mut marked = Vec::new();
    for path in files(&root, format)? {
        let rel = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => continue, // gone since the walk
        };
        let size = meta.len();
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        let mark = marks.get(&rel);
        if mark.is_some_and(|m| m.size == size && m.mtime == mtime) {
            continue;
        }
        let read = match format {
            Format::Markdown => read_note(&c.name, &path, &rel, size, mtime, mark),
            _ => read_session(format, &path, size, mtime, mark),
        };
        let (rows, new_mark) = match read {
            Ok(r) => r,
            Err(e) => {
                out.errors.push(format!("{rel}: {e}"));
                continue;
            }
        };
        out.files += 1;
        out.bytes += new_mark.offset - mark.map_or(0, |m| m.offset.min(new_mark.offset));
        pending.extend(rows);
        marked.push((rel, new_mark));
        if pending.len() >= BATCH {
            flush(store, c, me, &mut pending, &mut marked, out)?;
        }
    }
    flush(store, c, me, &mut pending, &mut marked, out)
}

/// Captures what was read, then moves the marks of the files it came
/// from: many small files share one commit, and a mark never runs ahead.
fn flush(
    store: &Store,
    c: &Capture,
    me: &str,
    rows: &mut Vec<Row>,
    marks: &mut Vec<(String, FileMark)>,
    out: &mut Pass,
) -> anyhow::Result<()> {
    keep(store, c, me, std::mem::take(rows), out)?;
    if !marks.is_empty() {
        store.set_capture_marks(&c.name, marks)?;
        marks.clear();
    }
    Ok(())
}

/// Captures the rows, holding back those that look secret.
fn keep(
    store: &Store,
    c: &Capture,
    me: &str,
    rows: Vec<Row>,
    out: &mut Pass,
) -> anyhow::Result<()> {
    let mut clean = Vec::with_capacity(rows.len());
    for row in rows {
        match selves_share::secrets::looks_secret(row.text.as_bytes()) {
            Some(rule) => {
                let mut row = row;
                row.origin = Some(me.to_owned());
                if store.hold_row(&c.name, &row, rule, crate::output::now_ms())? {
                    out.held += 1;
                }
            }
            None => {
                // A session's title is its first words: they may be the
                // secret held back.
                let mut row = row;
                if let Some(c) = row.conversation.as_mut()
                    && c.title.as_deref().is_some_and(|t| {
                        selves_share::secrets::looks_secret(t.as_bytes()).is_some()
                    })
                {
                    c.title = None;
                }
                clean.push(row);
            }
        }
    }
    let opts = CaptureOptions {
        stamp_origin: Some(me.to_owned()),
        ..CaptureOptions::default()
    };
    for chunk in chunks(clean) {
        let s = store.capture(chunk, &opts)?;
        out.captured += s.inserted + s.updated;
    }
    Ok(())
}

fn chunks(mut rows: Vec<Row>) -> Vec<Vec<Row>> {
    let mut out = Vec::new();
    while rows.len() > BATCH {
        let rest = rows.split_off(BATCH);
        out.push(rows);
        rows = rest;
    }
    if !rows.is_empty() {
        out.push(rows);
    }
    out
}

/// Reads a session file from its mark (or from the start, if it was
/// rewritten) up to its last whole line.
fn read_session(
    format: Format,
    path: &Path,
    size: u64,
    mtime: i64,
    mark: Option<&FileMark>,
) -> std::io::Result<(Vec<Row>, FileMark)> {
    let mut file = std::fs::File::open(path)?;
    let resume = match mark {
        Some(m) if m.offset <= size && head(&mut file, m.offset.min(HEAD))? == m.head => Some(m),
        _ => None,
    };
    let (start, mut ctx) = match resume {
        Some(m) => (
            m.offset,
            m.context
                .as_deref()
                .and_then(|c| serde_json::from_str(c).ok())
                .unwrap_or_default(),
        ),
        None => (0, Context::default()),
    };
    file.seek(SeekFrom::Start(start))?;
    let mut reader = BufReader::with_capacity(256 << 10, file);
    let mut rows = Vec::new();
    let mut offset = start;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break; // the end, or a line still being written
        }
        offset += n as u64;
        if let Some(row) = formats::session_line(format, trim(&line), path, &mut ctx) {
            rows.push(row);
        }
    }
    let mut file = reader.into_inner();
    let head = head(&mut file, offset.min(HEAD))?;
    let context = (ctx != Context::default()).then(|| serde_json::to_string(&ctx).expect("json"));
    Ok((
        rows,
        FileMark {
            size,
            mtime,
            offset,
            head,
            context,
        },
    ))
}

/// Reads a note whole; one whose bytes did not change makes no row.
fn read_note(
    source: &str,
    path: &Path,
    rel: &str,
    size: u64,
    mtime: i64,
    mark: Option<&FileMark>,
) -> std::io::Result<(Vec<Row>, FileMark)> {
    let bytes = std::fs::read(path)?;
    let hash = *blake3::hash(&bytes).as_bytes();
    let new = FileMark {
        size: bytes.len() as u64,
        mtime,
        offset: bytes.len() as u64,
        head: hash,
        context: None,
    };
    let _ = size;
    if mark.is_some_and(|m| m.head == hash) {
        return Ok((Vec::new(), new));
    }
    let text = String::from_utf8_lossy(&bytes);
    Ok((
        formats::note(source, rel, &text, mtime)
            .into_iter()
            .collect(),
        new,
    ))
}

fn head(file: &mut std::fs::File, len: u64) -> std::io::Result<[u8; 32]> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = Vec::with_capacity(len as usize);
    (&mut *file).take(len).read_to_end(&mut buf)?;
    Ok(*blake3::hash(&buf).as_bytes())
}

fn trim(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The files of `root` the format reads, in a stable order; symbolic
/// links are not followed, hidden folders are skipped.
fn files(root: &Path, format: Format) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if root.is_file() {
        out.push(root.to_owned());
        return Ok(out);
    }
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if dir == root => return Err(e),
            Err(_) => continue,
        };
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            let path = e.path();
            let hidden = e.file_name().to_string_lossy().starts_with('.');
            if kind.is_dir() && !hidden {
                stack.push(path);
            } else if kind.is_file() && format.reads(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// How often the daemon looks at its sources. A look that finds nothing
/// new costs one `stat` per file.
pub const LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The daemon's capture task: every source, every [`LOOK_EVERY`]; what it
/// captures is indexed at once and goes out with the next sync round (the
/// change feed sees the log grow). A failing source is logged once per
/// new error, and shows in `capture list` and `status`.
pub(crate) async fn watch(ctx: std::sync::Arc<crate::daemon::Ctx>) {
    let mut stop = ctx.stop.clone();
    let mut failing: std::collections::HashMap<String, String> = Default::default();
    loop {
        let store = ctx.store.clone();
        let done = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Pass>> {
            let me = store.me().name.to_string();
            let mut passes = Vec::new();
            for c in store.captures()? {
                match pass(&store, &c, &me, crate::output::now_ms()) {
                    Ok(p) => passes.push(p),
                    Err(e) => passes.push(Pass {
                        name: c.name.clone(),
                        errors: vec![format!("{e:#}")],
                        ..Pass::default()
                    }),
                }
            }
            if passes.iter().any(|p| p.captured > 0) {
                store.catch_up_index(|_| {})?;
            }
            Ok(passes)
        })
        .await;
        match done {
            Ok(Ok(passes)) => {
                for p in passes {
                    if p.captured > 0 || p.held > 0 {
                        tracing::info!(source = %p.name, files = p.files, captured = p.captured, held = p.held, "captured");
                    }
                    match p.errors.first() {
                        Some(e) if failing.get(&p.name) != Some(e) => {
                            tracing::warn!(source = %p.name, error = %e, "capture");
                            failing.insert(p.name.clone(), e.clone());
                        }
                        Some(_) => {}
                        None => {
                            failing.remove(&p.name);
                        }
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "capture"),
            Err(e) => tracing::warn!(error = %e, "capture"),
        }
        tokio::select! {
            () = tokio::time::sleep(LOOK_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
