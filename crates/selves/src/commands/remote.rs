//! `remote`: syncing through a medium instead of with a peer: a git
//! repository (any URL `git` takes) or a folder that Syncthing, Dropbox or
//! rsync carries (`folder:PATH`). What the remote holds is sealed with the
//! remote's key, which only its `selves-remote:` line carries
//! (`selves_client::remote` has the format).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use selves_client::SyncError;
use selves_client::remote::{RemoteLine, folder_of, open_remote};
use selves_store::{Protocol, Remote};
use selves_wire::{Name, Token};

use crate::home::Home;
use crate::output::{self, Exit};

#[derive(Subcommand)]
pub enum RemoteCommand {
    /// Add a remote: `folder:PATH`, or any URL git takes (ssh, https,
    /// file://). An empty one is made a remote with a new key
    Add {
        name: String,
        url: String,
        /// How often the daemon fetches it, and pushes to a git remote at
        /// most [default: the daemon's interval; a git push at most every 30s]
        #[arg(long, value_parser = humantime::parse_duration)]
        every: Option<std::time::Duration>,
        /// Keep the remote's key in the remote itself: whoever can read
        /// the remote reads all it holds, and any node joins it by its URL
        #[arg(long)]
        no_encryption: bool,
    },
    /// Print the one line another node joins this remote with (it carries
    /// the remote's key: hand it over as you would a password)
    Invite { name: String },
    /// Join a remote from its `selves-remote:` line (or, one made with
    /// --no-encryption, from its URL), then sync with it
    Join {
        line: String,
        /// Where the remote is from this node, if not where the line says
        /// (a folder synced to another path, another URL for the repository)
        #[arg(long)]
        url: Option<String>,
        /// The name to know it by here [default: its name in the line]
        #[arg(long)]
        name: Option<String>,
        /// As for `remote add`
        #[arg(long, value_parser = humantime::parse_duration)]
        every: Option<std::time::Duration>,
    },
    /// List the remotes
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Forget a remote (what it holds stays where it is)
    Remove { name: String },
}

pub fn remote(home: Option<PathBuf>, cmd: RemoteCommand) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    match cmd {
        RemoteCommand::Add {
            name,
            url,
            every,
            no_encryption,
        } => add(&home, &name, &url, every, no_encryption),
        RemoteCommand::Invite { name } => invite(&home, &name),
        RemoteCommand::Join {
            line,
            url,
            name,
            every,
        } => join(home, &line, url, name, every),
        RemoteCommand::List { json } => list(&home, json),
        RemoteCommand::Remove { name } => {
            let store = home.open_store()?;
            match store.remote(&name)? {
                Some(r) if r.protocol == Protocol::Medium => {
                    store.remove_remote(&name)?;
                    let _ = std::fs::remove_dir_all(home.dir.join("remotes").join(&name));
                    println!("removed remote {name} (what it holds stays where it is)");
                    Ok(())
                }
                Some(_) => bail!("{name} is a peer, not a remote: `selves peer remove {name}`"),
                None => bail!("no remote named {name} (see `selves remote list`)"),
            }
        }
    }
}

/// A folder URL made absolute (it is used from wherever selves runs).
fn canonical_url(url: &str) -> anyhow::Result<String> {
    let url = url.trim();
    if url.is_empty() {
        bail!("the remote's URL is empty");
    }
    match folder_of(url) {
        Some(path) if path.is_relative() => Ok(format!(
            "folder:{}",
            std::env::current_dir()?.join(path).display()
        )),
        _ => Ok(url.to_owned()),
    }
}

/// A remote's error said plainly ("URL: what git or the folder said"),
/// with the exit code its class has (4 a wrong key, 5 unreachable).
fn plainly(e: SyncError) -> anyhow::Error {
    let (url, detail) = match &e {
        SyncError::Unauthorized { url, detail }
        | SyncError::NotFound { url, detail }
        | SyncError::Network { url, detail }
        | SyncError::Protocol { url, detail } => (url, detail),
        _ => return e.into(),
    };
    eprintln!("error: {url}: {detail}");
    Exit(output::sync_code(&e)).into()
}

/// A remote medium: a peer row whose token is the remote's key.
fn medium(alias: Name, url: String, key: Token) -> Remote {
    Remote {
        protocol: Protocol::Medium,
        insecure: false,
        ..crate::commands::peers::new_remote(alias, url, key, None)
    }
}

/// `--every` as stored: at least a second.
fn every_ms(every: Option<std::time::Duration>) -> Option<i64> {
    every.map(|d| (d.as_millis() as i64).max(1000))
}

fn add(
    home: &Home,
    name: &str,
    url: &str,
    every: Option<std::time::Duration>,
    no_encryption: bool,
) -> anyhow::Result<()> {
    let alias: Name = name.parse().context("a remote's name")?;
    let url = canonical_url(url)?;
    let store = home.open_store()?;
    if store.remote(alias.as_str())?.is_some() {
        bail!("a peer or remote named {alias} already exists (see `selves peer list`)");
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).context("the system's random source")?;
    if no_encryption {
        eprintln!(
            "WARNING: --no-encryption: the remote keeps its own key, so whoever can read {url} reads everything this node writes to it"
        );
    }
    let opened = match open_remote(&url, &key, &home.dir, alias.as_str(), true, no_encryption) {
        Err(SyncError::Unauthorized { .. }) => bail!(
            "{url} already holds a selves remote: join it with its line (`selves remote invite NAME` on a node that has it, then `selves remote join LINE`)"
        ),
        other => other.map_err(plainly)?,
    };
    store.add_remote(
        &medium(alias.clone(), url.clone(), Token::from_bytes(key)),
        false,
    )?;
    store.set_every(alias.as_str(), every_ms(every))?;
    println!(
        "added remote {alias} at {url}{}",
        if opened.created {
            " (a new remote, end-to-end encrypted)"
        } else {
            ""
        }
    );
    println!(
        "  `selves sync {alias}` syncs through it; `selves remote invite {alias}` prints the line other nodes join it with"
    );
    Ok(())
}

fn invite(home: &Home, name: &str) -> anyhow::Result<()> {
    let store = home.open_store()?;
    let Some(r) = store
        .remote(name)?
        .filter(|r| r.protocol == Protocol::Medium)
    else {
        bail!("no remote named {name} (see `selves remote list`)");
    };
    let opened =
        open_remote(&r.url, r.token.as_bytes(), &home.dir, name, false, false).map_err(plainly)?;
    let line = RemoteLine {
        v: 1,
        name: name.to_owned(),
        url: r.url.clone(),
        key: r.token.to_hex(),
        group: opened.group,
    };
    println!("{}", line.encode());
    eprintln!(
        "on another node: selves remote join <this line> [--url URL if the remote is elsewhere there]\nthe line holds the remote's key: whoever has it reads everything the remote holds"
    );
    Ok(())
}

fn join(
    home: Home,
    text: &str,
    url: Option<String>,
    name: Option<String>,
    every: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let line = if text.trim().starts_with(selves_client::remote::LINE_PREFIX) {
        RemoteLine::decode(text).map_err(anyhow::Error::msg)?
    } else {
        // A URL: only a remote that keeps its key in the clear.
        let url = canonical_url(text)?;
        let Some(name) = name.clone() else {
            bail!("joining by URL: name the remote with --name");
        };
        let opened = selves_client::remote::peek_remote(&url, &home.dir, &name).map_err(plainly)?;
        let Some(key) = opened.public_key else {
            bail!(
                "{url} is encrypted: join it with its `selves-remote:` line (`selves remote invite NAME` on a node that has it)"
            );
        };
        RemoteLine {
            v: 1,
            name,
            url,
            key: selves_wire::hex(&key),
            group: opened.group,
        }
    };
    let alias: Name = name
        .as_deref()
        .unwrap_or(&line.name)
        .parse()
        .context("a remote's name")?;
    let url = canonical_url(url.as_deref().unwrap_or(&line.url))?;
    let key: Token = line
        .key
        .parse()
        .map_err(|_| anyhow::anyhow!("the line is damaged (its key): copy it whole"))?;
    let store = home.open_store()?;
    match store.remote(alias.as_str())? {
        Some(r) if r.protocol == Protocol::Medium && r.token == key && r.url == url => {
            println!("already joined remote {alias}");
        }
        Some(_) => bail!(
            "a peer or remote named {alias} already exists: pass --name to know this one by another"
        ),
        None => {
            let opened = open_remote(
                &url,
                key.as_bytes(),
                &home.dir,
                alias.as_str(),
                false,
                false,
            )
            .map_err(plainly)?;
            if opened.group != line.group {
                bail!("{url} holds another remote than the line's: is --url right?");
            }
            store.add_remote(&medium(alias.clone(), url.clone(), key), false)?;
            println!("joined remote {alias} at {url}");
        }
    }
    if every.is_some() {
        store.set_every(alias.as_str(), every_ms(every))?;
    }
    drop(store);
    crate::commands::sync::sync_named(Some(home.dir), alias.as_str())
}

fn list(home: &Home, json: bool) -> anyhow::Result<()> {
    let store = home.open_store()?;
    let remotes: Vec<Remote> = store
        .remotes()?
        .into_iter()
        .filter(|r| r.protocol == Protocol::Medium)
        .collect();
    if json {
        let out: Vec<_> = remotes
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.alias,
                    "url": r.url,
                    "kind": if folder_of(&r.url).is_some() { "folder" } else { "git" },
                    "every_ms": r.every_ms,
                    "last_success_at": r.last_success_at,
                    "last_error": r.last_error,
                    "consecutive_failures": r.consecutive_failures,
                })
            })
            .collect();
        return output::print_json(&out);
    }
    if remotes.is_empty() {
        println!("no remotes (`selves remote add NAME URL` adds one)");
    }
    for r in &remotes {
        let state = match (&r.last_error, r.last_success_at) {
            (Some(e), _) if r.consecutive_failures > 0 => format!("failing: {e}"),
            (_, Some(t)) => format!("ok, last sync {}", output::ago(t)),
            _ => "never synced".to_owned(),
        };
        println!("{:<16} {:<40} {state}", r.alias, r.url);
    }
    Ok(())
}
