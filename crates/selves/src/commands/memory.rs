//! `remember`, `import`, `export`, `search`: memory on this node.

use std::io::{BufWriter, Read as _, Write as _};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use selves_store::{CaptureOptions, CaptureSummary, SearchQuery, Store};
use selves_wire::row::format_uuid_v4;
use selves_wire::{ConversationMeta, Row};

use crate::home::Home;
use crate::output::{self, Exit, code, now_ms};

/// Rows per import transaction.
const IMPORT_BATCH: usize = 5000;

#[derive(Args)]
pub struct RememberArgs {
    /// The text; `-` reads it from standard input
    #[arg(required = true, num_args = 1..)]
    text: Vec<String>,
    #[arg(long, default_value = "selves")]
    source: String,
    #[arg(long, default_value = "notes")]
    conversation: String,
    #[arg(long)]
    role: Option<String>,
    #[arg(long)]
    sender: Option<String>,
    #[arg(long)]
    channel: Option<String>,
    /// The conversation's title
    #[arg(long)]
    title: Option<String>,
    /// A stable id for the message; an existing one is edited [default: a new uuid]
    #[arg(long)]
    msg_id: Option<String>,
}

pub fn remember(home: Option<PathBuf>, args: RememberArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    let text = if args.text == ["-"] {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the text from standard input (it must be UTF-8)")?;
        s
    } else {
        args.text.join(" ")
    };
    if text.trim().is_empty() {
        anyhow::bail!("nothing to remember: the text is empty");
    }
    let now = now_ms();
    let mut args = args;
    let previous = match args.msg_id.clone() {
        Some(id) => match store.get_row(&args.source, &args.conversation, &id)? {
            Some(row) => Some(row),
            // What `remember` prints, `SOURCE/CONVERSATION/ID`, names the
            // row it wrote: take it as that row.
            None => match id.splitn(3, '/').collect::<Vec<_>>()[..] {
                [source, conversation, msg] => {
                    let found = store.get_row(source, conversation, msg)?;
                    if found.is_some() {
                        args.source = source.to_owned();
                        args.conversation = conversation.to_owned();
                        args.msg_id = Some(msg.to_owned());
                    }
                    found
                }
                _ => None,
            },
        },
        None => None,
    };
    let msg_id = args.msg_id.clone().unwrap_or_else(new_uuid);
    let row = match previous {
        // An edit: a new version that wins over what this node holds, even
        // if this machine's clock is behind the one that wrote it.
        Some(old) => Row {
            text,
            role: args.role.unwrap_or(old.role),
            sender: args.sender.or(old.sender),
            channel: args.channel.or(old.channel),
            edited_at: Some(now.max(old.edited_at.unwrap_or(0) + 1)),
            conversation: old.conversation.map(|c| ConversationMeta {
                title: args.title.clone().or(c.title),
                ..c
            }),
            ..old
        },
        None => Row {
            source: args.source.clone(),
            conversation_id: args.conversation.clone(),
            msg_id: Some(msg_id.clone()),
            uuid: Some(new_uuid()),
            role: args.role.unwrap_or_else(|| "user".to_owned()),
            sender: args.sender,
            text,
            ts: now / 1000,
            edited_at: None,
            channel: args.channel,
            metadata: None,
            origin: Some(home.name().to_string()),
            conversation: Some(ConversationMeta {
                title: args.title,
                first_ts: Some(now / 1000),
                last_ts: Some(now / 1000),
                project_path: None,
                parent_conversation_id: None,
            }),
        },
    };
    let edit = row.edited_at.is_some();
    let summary = store.capture(
        vec![row],
        &CaptureOptions {
            stamp_origin: Some(home.name().to_string()),
            ..CaptureOptions::default()
        },
    )?;
    if let Some((_, why)) = summary.refused.first() {
        bail!("not remembered: {why}");
    }
    store.catch_up_index(|_| {})?;
    let id = format!("{}/{}/{msg_id}", args.source, args.conversation);
    println!("{} {id}", if edit { "edited" } else { "remembered" });
    if !edit && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        eprintln!("to edit it: selves remember --msg-id {id} NEW TEXT");
    }
    Ok(())
}

pub(crate) fn new_uuid() -> String {
    let mut b = [0u8; 16];
    // Without randomness, fall back to the clock: uniqueness still holds
    // in practice for one node.
    if getrandom::fill(&mut b).is_err() {
        b[..8].copy_from_slice(&now_ms().to_le_bytes());
    }
    format_uuid_v4(b)
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["file", "memex"])))]
pub struct ImportArgs {
    /// A file of rows, one JSON object per line; `-` for standard input
    file: Option<PathBuf>,
    /// A memex store (`~/.memex/data/memex.db`): every message it holds,
    /// its provenance kept (read only; memex may keep running)
    #[arg(long, value_name = "DB")]
    memex: Option<PathBuf>,
    /// Leave `origin` null on rows that have none, instead of stamping this node's name
    /// (for history captured before provenance existed)
    #[arg(long)]
    keep_null_origin: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct ImportReport {
    lines: u64,
    #[serde(flatten)]
    summary: CaptureSummary,
    /// (line number, reason) of lines that were not JSON rows.
    unreadable: Vec<(u64, String)>,
}

/// The longest line `import` reads: a row of the largest text (1 MiB)
/// and metadata (256 KiB), every character escaped six bytes long, fits.
const MAX_IMPORT_LINE: usize = 8 << 20;

/// Reads one line into `line`, keeping at most `cap` bytes of it. Returns
/// `None` at the end of input, `Some(false)` for a line longer than
/// `cap` (the rest of it is read and dropped, never held in memory).
fn read_line_capped(
    reader: &mut impl std::io::BufRead,
    line: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<Option<bool>> {
    let mut whole = true;
    let mut any = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(any.then_some(whole));
        }
        any = true;
        let (chunk, done) = match memchr_newline(buf) {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let n = chunk.len();
        if whole && line.len() + n <= cap {
            line.extend_from_slice(chunk);
        } else {
            whole = false;
            line.clear();
        }
        reader.consume(n);
        if done {
            return Ok(Some(whole));
        }
    }
}

fn memchr_newline(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

pub fn import(home: Option<PathBuf>, args: ImportArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    if let Some(db) = &args.memex {
        return import_memex(&store, db, args.json);
    }
    let file = args.file.clone().expect("clap requires a file or --memex");
    let input: Box<dyn std::io::Read> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?,
        )
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 20, input);
    let opts = CaptureOptions {
        stamp_origin: (!args.keep_null_origin).then(|| home.name().to_string()),
        ..CaptureOptions::default()
    };
    let bar = output::counter("importing rows");
    let mut report = ImportReport {
        lines: 0,
        summary: CaptureSummary::default(),
        unreadable: Vec::new(),
    };
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    // Line numbers of the rows in `batch`, to report refusals by line.
    let mut batch_lines = Vec::with_capacity(IMPORT_BATCH);
    let mut line = Vec::new();
    let flush = |batch: &mut Vec<Row>,
                 lines: &mut Vec<u64>,
                 report: &mut ImportReport|
     -> anyhow::Result<()> {
        let summary = store.capture(std::mem::take(batch), &opts)?;
        // Refusals come back by position in the batch; report them by line.
        let refused = summary
            .refused
            .iter()
            .map(|(i, why)| (lines[*i] as usize, why.clone()))
            .collect();
        report.summary.merge(CaptureSummary { refused, ..summary });
        lines.clear();
        Ok(())
    };
    loop {
        line.clear();
        let read = read_line_capped(&mut reader, &mut line, MAX_IMPORT_LINE)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let Some(whole) = read else {
            break;
        };
        report.lines += 1;
        if !whole {
            report.unreadable.push((
                report.lines,
                format!(
                    "longer than {} MiB, more than any row may be: skipped unread",
                    MAX_IMPORT_LINE >> 20
                ),
            ));
            continue;
        }
        let text = match std::str::from_utf8(&line) {
            Ok(t) => t.trim(),
            Err(e) => {
                report
                    .unreadable
                    .push((report.lines, format!("not UTF-8 ({e})")));
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<Row>(text) {
            Ok(row) => {
                batch.push(row);
                batch_lines.push(report.lines);
            }
            Err(e) => report
                .unreadable
                .push((report.lines, format!("not a row: {e}"))),
        }
        if batch.len() >= IMPORT_BATCH {
            flush(&mut batch, &mut batch_lines, &mut report)?;
            bar.set_position(report.lines);
        }
    }
    if !batch.is_empty() {
        flush(&mut batch, &mut batch_lines, &mut report)?;
    }
    bar.finish_and_clear();
    let indexing = output::counter("indexing for search");
    store.catch_up_index(|n| indexing.set_position(n))?;
    indexing.finish_and_clear();

    let problems = report.unreadable.len() + report.summary.refused.len();
    if args.json {
        output::print_json(&report)?;
    } else {
        let s = &report.summary;
        println!(
            "imported {} new, {} updated, {} unchanged, {} older versions ignored, {} local-only; {} lines refused",
            s.inserted, s.updated, s.unchanged, s.stale, s.local_only, problems
        );
        let mut all: Vec<(u64, &str)> = report
            .unreadable
            .iter()
            .map(|(l, w)| (*l, w.as_str()))
            .chain(s.refused.iter().map(|(l, w)| (*l as u64, w.as_str())))
            .collect();
        all.sort();
        for (l, why) in all.iter().take(20) {
            eprintln!("line {l}: {why}");
        }
        if all.len() > 20 {
            eprintln!("… and {} more", all.len() - 20);
        }
    }
    if problems > 0 {
        return Err(Exit(code::FAILED).into());
    }
    Ok(())
}

#[derive(Args)]
pub struct ExportArgs {
    /// Write to this file instead of standard output
    #[arg(long, short)]
    output: Option<PathBuf>,
}

pub fn export(home: Option<PathBuf>, args: ExportArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    let sink: Box<dyn std::io::Write> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::with_capacity(1 << 20, sink);
    let n = store.export(|row| {
        serde_json::to_writer(&mut out, &row)?;
        out.write_all(b"\n")
    });
    // A closed pipe (`selves export | head`) is not an error.
    match n {
        Err(selves_store::StoreError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            return Ok(());
        }
        other => {
            other?;
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[derive(Args)]
pub struct SearchArgs {
    /// Words to find (all must match); any text is safe
    #[arg(required = true, num_args = 1..)]
    query: Vec<String>,
    /// Only rows captured by this node
    #[arg(long)]
    origin: Option<String>,
    /// Only rows from this source
    #[arg(long)]
    source: Option<String>,
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub fn search(home: Option<PathBuf>, args: SearchArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store: std::sync::Arc<Store> = home.open_store()?;
    let hits = store.search(&SearchQuery {
        text: args.query.join(" "),
        origin: args.origin,
        source: args.source,
        limit: args.limit,
        since: None,
    })?;
    if args.json {
        output::print_json(&hits)?;
    } else {
        for h in &hits {
            let r = &h.row;
            let origin = r.origin.as_deref().unwrap_or("?");
            // Who captured it, and who wrote the text shown if another
            // node did (an edit, or a memex row a node vouched for).
            let by = match h.author.as_deref() {
                Some(a) if a != origin && r.edited_at.is_some() => {
                    format!("{origin}, edited by {a}")
                }
                Some(a) if a != origin => format!("{origin} via {a}"),
                _ => origin.to_owned(),
            };
            println!(
                "[{}] {}/{} {} {}: {}",
                output::printable(&by),
                output::printable(&r.source),
                output::printable(&r.conversation_id),
                output::date(r.ts),
                output::printable(&r.role),
                output::printable(&h.snippet)
            );
        }
    }
    if hits.is_empty() {
        if !args.json {
            eprintln!("no matches");
        }
        return Err(Exit(code::FAILED).into());
    }
    Ok(())
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["msg_id", "conversation", "matching"])))]
pub struct ForgetArgs {
    /// One message: its id, or `SOURCE/CONVERSATION/ID` as `remember` prints it
    #[arg(long)]
    msg_id: Option<String>,
    /// Every message of a conversation
    #[arg(long)]
    conversation: Option<String>,
    /// Every message that matches these words (as `search` matches them)
    #[arg(long = "match", value_name = "TEXT")]
    matching: Option<String>,
    /// Only rows of this source
    #[arg(long)]
    source: Option<String>,
    /// Say what would be forgotten, and forget nothing
    #[arg(long)]
    dry_run: bool,
}

/// Most rows `--match` forgets at once.
const FORGET_MAX: usize = 100_000;

/// `forget`: a tombstone per row, which wins over every version of it on
/// every node (ARCHITECTURE.md, "Forgetting"); the words leave this
/// node's files at once, and every other node's as the tombstone reaches it.
pub fn forget(home: Option<PathBuf>, args: ForgetArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    let source = args.source.as_deref();
    let (rows, what) = if let Some(id) = &args.msg_id {
        let mut rows = store.rows_by_msg_id(id, source)?;
        if rows.is_empty()
            && let [s, c, m] = id.splitn(3, '/').collect::<Vec<_>>()[..]
        {
            rows.extend(store.get_row(s, c, m)?.filter(|r| !r.is_forgotten()));
        }
        (rows, format!("message {id}"))
    } else if let Some(c) = &args.conversation {
        (
            store.conversation(c, source, FORGET_MAX)?,
            format!("conversation {c}"),
        )
    } else {
        let text = args.matching.clone().unwrap_or_default();
        let hits = store.search(&SearchQuery {
            text: text.clone(),
            origin: None,
            source: args.source.clone(),
            since: None,
            limit: FORGET_MAX,
        })?;
        (
            hits.into_iter().map(|h| h.row).collect(),
            format!("messages matching {text:?}"),
        )
    };
    if rows.is_empty() {
        eprintln!("nothing to forget: no {what} in memory");
        return Err(Exit(code::FAILED).into());
    }
    let verb = if args.dry_run {
        "would forget"
    } else {
        "forgetting"
    };
    println!(
        "{verb} {}:",
        output::count(rows.len() as u64, "message", "messages")
    );
    for r in rows.iter().take(20) {
        println!(
            "  {}/{} {} [{}] {}",
            output::printable(&r.source),
            output::printable(&r.conversation_id),
            output::date(r.ts),
            output::printable(r.origin.as_deref().unwrap_or("?")),
            output::printable(&output::one_line(&r.text, 80))
        );
    }
    if rows.len() > 20 {
        println!("  … and {} more", rows.len() - 20);
    }
    if args.dry_run {
        return Ok(());
    }
    let me = home.name().to_string();
    let now = now_ms();
    let whole_conversation = args.conversation.is_some();
    let (synced, local): (Vec<Row>, Vec<Row>) = rows.into_iter().partition(|r| r.msg_id.is_some());
    let tombstones: Vec<Row> = synced
        .iter()
        .map(|r| {
            // A title that carries the forgotten words goes with them.
            let title = r
                .conversation
                .as_ref()
                .and_then(|c| c.title.as_deref())
                .is_some_and(|t| {
                    whole_conversation
                        || carries(t, &r.text)
                        || args.matching.as_deref().is_some_and(|m| holds_words(t, m))
                });
            r.tombstone(&me, now, title)
        })
        .collect();
    for chunk in tombstones.chunks(IMPORT_BATCH) {
        let s = store.capture(
            chunk.to_vec(),
            &CaptureOptions {
                stamp_origin: None,
                ..CaptureOptions::default()
            },
        )?;
        if let Some((_, why)) = s.refused.first() {
            bail!("cannot forget: {why}");
        }
    }
    store.forget_local(
        &local
            .iter()
            .filter_map(|r| r.uuid.clone())
            .collect::<Vec<_>>(),
    )?;
    // Indexing the tombstones takes the words out of the index and the
    // files.
    store.catch_up_index(|_| {})?;
    println!(
        "forgotten here; every other node forgets {} with its next sync",
        if synced.len() == 1 { "it" } else { "them" }
    );
    Ok(())
}

/// Whether a title holds a message's words: it is the message's start
/// (as capture makes titles), or the message holds the title.
fn carries(title: &str, text: &str) -> bool {
    let title = title.trim_end_matches('…').trim();
    !title.is_empty() && (text.trim_start().starts_with(title) || text.contains(title))
}

/// Whether `text` holds every word of `words`, ignoring case.
fn holds_words(text: &str, words: &str) -> bool {
    let text = text.to_lowercase();
    words
        .split_whitespace()
        .all(|w| text.contains(&w.to_lowercase()))
}

/// Imports a memex store: its `messages` joined to their `conversations`,
/// read on a read-only connection (memex may be running). Columns are
/// found by name, so memex versions before `origin` existed import too.
/// Provenance is kept as memex recorded it: a null `origin` stays null
/// (this node did not capture those rows); this node's signed records
/// vouch that it imported them.
fn import_memex(store: &Store, db: &std::path::Path, json: bool) -> anyhow::Result<()> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", db.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let columns = |table: &str| -> anyhow::Result<Vec<String>> {
        let mut s = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .with_context(|| format!("{} is not a SQLite database", db.display()))?;
        let cols = s
            .query_map([], |r| r.get::<_, String>(1))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .with_context(|| format!("{} is not a SQLite database", db.display()))?;
        Ok(cols)
    };
    let m = columns("messages")?;
    let c = columns("conversations")?;
    for need in ["conversation_id", "role", "text", "ts"] {
        if !m.iter().any(|x| x == need) {
            bail!(
                "{} is not a memex store: its messages table has no {need} column",
                db.display()
            );
        }
    }
    let has = |cols: &[String], name: &str| cols.iter().any(|x| x == name);
    let joined = has(&c, "conversation_id");
    let msg = |name: &str| {
        if has(&m, name) {
            format!("m.{name}")
        } else {
            "NULL".to_owned()
        }
    };
    let conv = |name: &str| {
        if joined && has(&c, name) {
            format!("c.{name}")
        } else {
            "NULL".to_owned()
        }
    };
    let source = match (has(&m, "source"), joined && has(&c, "source")) {
        (true, _) => "m.source".to_owned(),
        (false, true) => "c.source".to_owned(),
        (false, false) => bail!("{} is not a memex store: no source column", db.display()),
    };
    let join = if !joined {
        String::new()
    } else if has(&m, "source") && has(&c, "source") {
        "LEFT JOIN conversations c ON c.conversation_id = m.conversation_id AND c.source = m.source"
            .to_owned()
    } else {
        "LEFT JOIN conversations c ON c.conversation_id = m.conversation_id".to_owned()
    };
    let sql = format!(
        "SELECT {source}, m.conversation_id, {}, {}, m.role, {}, m.text, m.ts, {}, {}, {}, {},
                {}, {}, {}, {}, {}
         FROM messages m {join} ORDER BY m.rowid",
        msg("msg_id"),
        msg("uuid"),
        msg("sender"),
        msg("edited_at"),
        msg("channel"),
        msg("metadata"),
        msg("origin"),
        conv("title"),
        conv("first_ts"),
        conv("last_ts"),
        conv("project_path"),
        conv("parent_conversation_id"),
    );
    let mut stmt = conn
        .prepare(&sql)
        .with_context(|| format!("cannot read the messages of {}", db.display()))?;
    let text = |r: &rusqlite::Row, i: usize| -> rusqlite::Result<Option<String>> {
        Ok(match r.get_ref(i)? {
            rusqlite::types::ValueRef::Null => None,
            rusqlite::types::ValueRef::Integer(n) => Some(n.to_string()),
            rusqlite::types::ValueRef::Real(f) => Some(f.to_string()),
            rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                Some(String::from_utf8_lossy(t).into_owned())
            }
        })
    };
    let mut rows = stmt.query([])?;
    let opts = CaptureOptions::default();
    let bar = output::counter("importing from memex");
    let mut summary = CaptureSummary::default();
    let mut read = 0u64;
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    loop {
        let next = rows.next()?;
        if let Some(r) = next {
            read += 1;
            batch.push(Row {
                source: text(r, 0)?.unwrap_or_default(),
                conversation_id: text(r, 1)?.unwrap_or_default(),
                msg_id: text(r, 2)?,
                uuid: text(r, 3)?,
                role: text(r, 4)?.unwrap_or_default(),
                sender: text(r, 5)?,
                text: text(r, 6)?.unwrap_or_default(),
                ts: r.get::<_, Option<i64>>(7)?.unwrap_or(0),
                edited_at: r.get(8)?,
                channel: text(r, 9)?,
                metadata: text(r, 10)?,
                origin: text(r, 11)?,
                conversation: Some(ConversationMeta {
                    title: text(r, 12)?,
                    first_ts: r.get(13)?,
                    last_ts: r.get(14)?,
                    project_path: text(r, 15)?,
                    parent_conversation_id: text(r, 16)?,
                }),
            });
        }
        if batch.len() >= IMPORT_BATCH || (next.is_none() && !batch.is_empty()) {
            let base = read as usize - batch.len();
            let s = store.capture(std::mem::take(&mut batch), &opts)?;
            let refused = s
                .refused
                .iter()
                .map(|(i, w)| (base + i + 1, w.clone()))
                .collect();
            summary.merge(CaptureSummary { refused, ..s });
            bar.set_position(read);
        }
        if next.is_none() {
            break;
        }
    }
    bar.finish_and_clear();
    store.catch_up_index(|_| {})?;
    if json {
        output::print_json(&summary)?;
    } else {
        println!(
            "imported {} messages from memex: {} new, {} updated, {} unchanged, {} older versions ignored, {} local-only; {} refused",
            read,
            summary.inserted,
            summary.updated,
            summary.unchanged,
            summary.stale,
            summary.local_only,
            summary.refused.len()
        );
        for (n, why) in summary.refused.iter().take(20) {
            eprintln!("message {n}: {why}");
        }
    }
    if !summary.refused.is_empty() {
        return Err(Exit(code::FAILED).into());
    }
    Ok(())
}
