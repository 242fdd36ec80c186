//! `capture`: the sources this node fills memory from (agent sessions,
//! notes), and the captured messages it holds back as secret.

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;
use selves_store::{Capture, CaptureOptions, HeldState};

use crate::capture::{self, formats::Format};
use crate::home::Home;
use crate::output::{self, now_ms};

#[derive(Subcommand)]
pub enum CaptureCommand {
    /// Capture a source from now on (and read it once now): `claude-code`,
    /// `codex` and `pi` need no path; any other name needs --format and a
    /// path
    Add {
        name: String,
        /// The folder to read [default: where the agent keeps its sessions]
        path: Option<PathBuf>,
        /// claude-code, codex, pi, markdown or sqlite [default: the name]
        #[arg(long)]
        format: Option<String>,
        /// sqlite: the table whose rows are messages
        #[arg(long)]
        table: Option<String>,
        /// sqlite: the column that identifies a row (unique across nodes)
        #[arg(long)]
        key: Option<String>,
        /// sqlite: the column holding the text
        #[arg(long)]
        text: Option<String>,
        /// sqlite: the column holding the time (seconds, milliseconds or RFC 3339)
        #[arg(long)]
        ts: Option<String>,
        /// sqlite: insert rows other nodes captured from this table into it
        /// (never an update or a delete of the application's rows)
        #[arg(long)]
        write_back: bool,
    },
    /// Read every source (or one) for what is new since the last pass
    Run { name: Option<String> },
    /// List the sources
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop capturing a source (what it captured stays in memory)
    Remove { name: String },
    /// Messages captured but kept on this node because they look secret
    Held {
        #[arg(long)]
        json: bool,
    },
    /// Let held messages sync as any other
    Release {
        /// An id from `capture held`
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Forget held messages here (their text is deleted; they are never
    /// captured again)
    Drop {
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

pub fn capture(home: Option<PathBuf>, cmd: CaptureCommand) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    let me = home.name().to_string();
    match cmd {
        CaptureCommand::Add {
            name,
            path,
            format,
            table,
            key,
            text,
            ts,
            write_back,
        } => {
            let format_name = format.as_deref().unwrap_or(&name);
            let Some(fmt) = Format::parse(format_name) else {
                bail!(
                    "unknown format {format_name:?}: say --format claude-code, codex, pi, markdown or sqlite"
                );
            };
            let path = match (path, fmt.default_path()) {
                (Some(p), _) => std::path::absolute(p)?,
                (None, Some(rel)) => user_home()?.join(rel),
                (None, None) => bail!("a {} source needs a path", fmt.name()),
            };
            if name.is_empty() || name.chars().any(|c| c.is_control() || c == '/') {
                bail!("a source's name must be non-empty, without '/' or control characters");
            }
            let options = if fmt == Format::Sqlite {
                let (Some(table), Some(key), Some(text)) = (table, key, text) else {
                    bail!("a sqlite source needs --table, --key and --text");
                };
                let o = capture::sqlite::Options {
                    table,
                    key,
                    text,
                    ts,
                    write_back,
                };
                o.check(&path)?;
                serde_json::to_string(&o)?
            } else {
                if table.is_some() || key.is_some() || text.is_some() || ts.is_some() || write_back
                {
                    bail!("--table, --key, --text, --ts and --write-back are for --format sqlite");
                }
                "{}".to_owned()
            };
            let c = Capture {
                name: name.clone(),
                format: fmt.name().to_owned(),
                path: path.to_string_lossy().into_owned(),
                options,
                added_at: now_ms(),
                last_run: None,
                last_error: None,
                rows: 0,
            };
            if !store.add_capture(&c)? {
                bail!("a source named {name} exists (capture remove {name} first)");
            }
            println!("capturing {name} ({}) from {}", c.format, path.display());
            if !path.exists() {
                println!("  (nothing there yet: it is read once it exists)");
            }
            let p = capture::pass(&store, &c, &me, now_ms())?;
            print_pass(&p);
            store.catch_up_index(|_| {})?;
        }
        CaptureCommand::Run { name } => {
            let all = store.captures()?;
            let chosen: Vec<&Capture> = all
                .iter()
                .filter(|c| name.as_ref().is_none_or(|n| *n == c.name))
                .collect();
            if chosen.is_empty() {
                match name {
                    Some(n) => bail!("no source named {n} (see `selves capture list`)"),
                    None => println!("no sources: add one with `selves capture add claude-code`"),
                }
            }
            let mut failed = false;
            for c in chosen {
                match capture::pass(&store, c, &me, now_ms()) {
                    Ok(p) => {
                        failed |= !p.errors.is_empty();
                        print_pass(&p);
                    }
                    Err(e) => {
                        failed = true;
                        eprintln!("{}: {e:#}", c.name);
                    }
                }
            }
            store.catch_up_index(|_| {})?;
            if failed {
                return Err(output::Exit(1).into());
            }
        }
        CaptureCommand::List { json } => {
            let all = store.captures()?;
            if json {
                return output::print_json(&all);
            }
            if all.is_empty() {
                println!("no sources: add one with `selves capture add claude-code`");
            }
            for c in all {
                let last = c.last_run.map_or("never read".to_owned(), |t| {
                    format!("read {}", output::ago(t))
                });
                println!(
                    "{}  {}  {}  {}, {last}",
                    c.name,
                    c.format,
                    c.path,
                    output::count(c.rows, "message", "messages")
                );
                if let Some(e) = c.last_error {
                    println!("  error: {}", output::printable(&e));
                }
            }
        }
        CaptureCommand::Remove { name } => {
            if !store.remove_capture(&name)? {
                bail!("no source named {name}");
            }
            println!("stopped capturing {name} (what it captured stays in memory)");
        }
        CaptureCommand::Held { json } => {
            let held = store.held_rows()?;
            if json {
                return output::print_json(&held);
            }
            if held.is_empty() {
                println!("no messages held back");
            }
            for h in held {
                println!(
                    "{}  {}  {}/{}  looks like {}",
                    h.id, h.capture, h.row.source, h.row.conversation_id, h.reason
                );
                println!(
                    "  {}",
                    output::printable(&output::one_line(&h.row.text, 100))
                );
            }
        }
        CaptureCommand::Release { id, all } => settle(&store, &me, id, all, HeldState::Released)?,
        CaptureCommand::Drop { id, all } => settle(&store, &me, id, all, HeldState::Dropped)?,
    }
    Ok(())
}

fn settle(
    store: &selves_store::Store,
    me: &str,
    id: Option<String>,
    all: bool,
    state: HeldState,
) -> anyhow::Result<()> {
    let ids: Vec<String> = if all {
        store.held_rows()?.into_iter().map(|h| h.id).collect()
    } else {
        id.into_iter().collect()
    };
    let mut n = 0;
    for id in &ids {
        let Some(row) = store.settle_held_row(id, state)? else {
            bail!("no held message {id} (see `selves capture held`)");
        };
        n += 1;
        if state == HeldState::Released {
            store.capture(
                vec![row],
                &CaptureOptions {
                    stamp_origin: Some(me.to_owned()),
                    ..CaptureOptions::default()
                },
            )?;
        }
    }
    if state == HeldState::Released {
        store.catch_up_index(|_| {})?;
        println!(
            "released {} (they sync now)",
            output::count(n, "message", "messages")
        );
    } else {
        println!("dropped {}", output::count(n, "message", "messages"));
    }
    Ok(())
}

fn print_pass(p: &capture::Pass) {
    let mut line = format!(
        "{}: {} read, {} captured",
        p.name,
        output::count(p.files, "file", "files"),
        output::count(p.captured, "message", "messages"),
    );
    if p.written_back > 0 {
        line.push_str(&format!(
            ", {} written back",
            output::count(p.written_back, "message", "messages")
        ));
    }
    if p.held > 0 {
        line.push_str(&format!(
            ", {} held back (they look secret: `selves capture held`)",
            p.held
        ));
    }
    println!("{line}");
    for e in &p.errors {
        eprintln!("  cannot read {}", output::printable(e));
    }
}

/// The user's home folder (where agents keep their sessions).
fn user_home() -> anyhow::Result<PathBuf> {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Ok(PathBuf::from(h)),
        _ => bail!("HOME is not set: give the source's path"),
    }
}
