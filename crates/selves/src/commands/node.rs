//! `init`, `status`, `check`: the node itself.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use selves_wire::Name;
use serde::Serialize;

use crate::health;
use crate::home::{self, Home};
use crate::output::{self, Exit, ago, code};

#[derive(Args)]
pub struct InitArgs {
    /// The node's name: its `origin` label on what it captures [default: the host name]
    #[arg(long)]
    name: Option<Name>,
    /// Give this home a new identity (key, id and certificate), keeping
    /// all its memory: for a home copied to another machine, or the copy
    /// of a home whose key `status` says is in two homes. With --name it
    /// is renamed too.
    #[arg(long)]
    new_identity: bool,
    #[command(flatten)]
    card: crate::commands::identity::CardArgs,
}

pub fn init(home: Option<PathBuf>, args: InitArgs) -> anyhow::Result<()> {
    let dir = Home::locate(home)?;
    if args.new_identity {
        return new_identity(dir, args.name);
    }
    if Home::is_initialised(&dir) {
        let existing = Home::load(dir.clone())?;
        println!(
            "already initialised: node {} ({}) in {}; nothing changed",
            existing.name(),
            existing.config.node.id,
            dir.display()
        );
        if let Some(name) = args.name.filter(|n| n != existing.name()) {
            eprintln!(
                "note: --name {name} was ignored; this node keeps its name (edit config.toml to rename it)"
            );
        }
        if !args.card.is_empty() {
            eprintln!("note: to change role, location or interface: selves identity set");
        }
        return Ok(());
    }
    args.card.check()?;
    let name = args.name.unwrap_or_else(home::default_name);
    let home = home::init(&dir, name)?;
    crate::commands::identity::write_card(&*home.open_store()?, args.card)?;
    println!(
        "initialised node {} ({}) in {}",
        home.name(),
        home.config.node.id,
        dir.display()
    );
    println!("certificate {}", home.fingerprint()?);
    Ok(())
}

/// `selves init --new-identity`.
fn new_identity(dir: PathBuf, name: Option<Name>) -> anyhow::Result<()> {
    let mut home = Home::load(dir)?;
    if crate::daemon::running(&home.dir)?.is_some() {
        anyhow::bail!(
            "a daemon runs in {}: stop it first (`selves service stop` or kill it), then run this again",
            home.dir.display()
        );
    }
    let remotes = home.open_store()?.remotes()?;
    let (old, new) = home.new_identity()?;
    if let Some(name) = name {
        home.config.node.name = name;
        home.write_config()?;
    }
    home::new_certificate(&home.dir, home.name())?;
    let store = home.open_store()?;
    let counts = store.counts()?;
    println!(
        "node {} is now {} (was {}); its {} memories are kept",
        home.name(),
        new,
        old,
        counts.rows
    );
    println!("certificate {}", home.fingerprint()?);
    if !remotes.is_empty() {
        let names: Vec<String> = remotes.iter().map(|r| r.alias.to_string()).collect();
        println!(
            "its peers ({}) gave their tokens to the old identity: ask each for a new invite \
             (`selves invite --peer {}` there), then `selves peer remove ALIAS` and `selves pair LINE` here. \
             The first sync tells them the old identity's records from this home are withdrawn \
             and written again under the new one.",
            names.join(", "),
            home.name()
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct StatusArgs {
    /// Print JSON
    #[arg(long, conflicts_with = "brief")]
    json: bool,
    /// Print nothing when all is well, one line per problem otherwise (for
    /// a session-start hook). Exit 0 healthy, 1 degraded, 2 a peer down
    #[arg(long)]
    brief: bool,
}

#[derive(Serialize)]
pub struct Status {
    pub node: NodeStatus,
    home: PathBuf,
    pub memory: selves_store::Counts,
    search: SearchStatus,
    heads: Vec<HeadStatus>,
    pub peers: Vec<PeerStatus>,
    tokens: Vec<TokenStatus>,
    shares: Vec<health::ShareHealth>,
    tunnels: Vec<health::TunnelHealth>,
    /// The pid of the daemon running for this home, if one is.
    pub daemon: Option<u32>,
    /// One line per problem; empty when all is well.
    pub problems: Vec<health::Problem>,
    /// `healthy`, `degraded` or `down` (as the exit status of `--brief`).
    pub health: &'static str,
}

#[derive(Serialize)]
pub struct PeerStatus {
    #[serde(flatten)]
    pub remote: selves_store::Remote,
    pub health: health::PeerHealth,
}

#[derive(Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub name: String,
    certificate: String,
    listen: Option<String>,
}

#[derive(Serialize)]
struct SearchStatus {
    /// Rows not yet in the search index (they are indexed before any search).
    pending: u64,
}

#[derive(Serialize)]
struct HeadStatus {
    node: String,
    name: Option<String>,
    stream: String,
    seq: u64,
}

#[derive(Serialize)]
struct TokenStatus {
    #[serde(flatten)]
    grant: selves_store::TokenGrant,
    state: &'static str,
}

/// What status shows about trust (see [`health::TrustHealth`]).
pub fn trust_health(
    store: &selves_store::Store,
    home: &std::path::Path,
) -> anyhow::Result<health::TrustHealth> {
    let me = store.me().id.clone();
    let now = output::now_ms();
    let grants = store.token_grants()?;
    Ok(health::TrustHealth {
        disk_full: store.read_only().then(|| home.to_owned()),
        daemon_died_at: crate::daemon::died_at(home),
        login_failures: store.login_failures()?,
        // A peer that calls in (claimed, not revoked) and went quiet past
        // its down-after time, as a remote that stopped answering would.
        quiet_callers: grants
            .iter()
            .filter(|g| g.revoked_at.is_none() && g.claim_by.is_none())
            .filter_map(|g| {
                let seen = g.last_seen_at?;
                let after = g.down_after_ms.unwrap_or(health::DEFAULT_DOWN_AFTER_MS);
                (now - seen > after).then(|| (g.peer.clone(), seen, after))
            })
            .collect(),
        clash: store.clash()?,
        // A fork of this node's own log is the clash above, or a restore
        // being recovered: not a line of its own.
        forks: store
            .forks()?
            .into_iter()
            .filter(|f| f.node != me)
            .collect(),
        refusals: store.refusals()?,
        token_claims: grants
            .into_iter()
            .flat_map(|g| {
                let peer = g.peer.clone();
                g.refused
                    .into_iter()
                    .map(move |(node, addr, at)| (peer.clone(), node, addr, at))
            })
            .collect(),
    })
}

/// Everything `status` reports, as the store recorded it.
pub fn gather(home: &Home, store: &selves_store::Store) -> anyhow::Result<Status> {
    let names = store.known_nodes()?;
    let now = output::now_ms();
    let mut peers = Vec::new();
    for remote in store.remotes()? {
        let waiting = store.memory_waiting(remote.alias.as_str())?;
        peers.push(PeerStatus {
            health: health::assess(&remote, waiting, now),
            remote,
        });
    }
    let shares = crate::commands::shares::share_health(store)?;
    let tunnels: Vec<health::TunnelHealth> = store
        .tunnels()?
        .into_iter()
        .map(|t| health::TunnelHealth {
            tunnel: t.name,
            state: t.state,
            detail: t.detail,
        })
        .collect();
    let trust = trust_health(store, &home.dir)?;
    let mut problems = health::problems(
        &peers.iter().map(|p| p.health.clone()).collect::<Vec<_>>(),
        &shares,
        &tunnels,
        &trust,
        now,
    );
    // A source that cannot be read is memory not being filled.
    for c in store.captures()? {
        if let Some(e) = &c.last_error {
            problems.push(health::Problem {
                severity: health::Severity::Degraded,
                line: format!("⚠ capture {} failing: {}", c.name, output::printable(e)),
            });
        }
    }
    let worst = problems.iter().map(|p| p.severity).max();
    let status = Status {
        node: NodeStatus {
            id: home.config.node.id.to_string(),
            name: home.name().to_string(),
            certificate: home.fingerprint()?.to_string(),
            listen: home.config.server.listen.clone(),
        },
        home: home.dir.clone(),
        memory: store.counts()?,
        search: SearchStatus {
            pending: store.index_lag()?,
        },
        heads: store
            .heads()?
            .into_iter()
            .map(|h| HeadStatus {
                name: names
                    .iter()
                    .find(|n| n.id == h.node)
                    .map(|n| n.name.to_string()),
                node: h.node.to_string(),
                stream: h.stream.to_string(),
                seq: h.seq,
            })
            .collect(),
        peers,
        shares,
        tunnels,
        daemon: crate::daemon::running(&home.dir)?,
        health: match worst {
            None => "healthy",
            Some(health::Severity::Degraded) => "degraded",
            Some(health::Severity::Down) => "down",
        },
        problems,
        tokens: store
            .token_grants()?
            .into_iter()
            .map(|g| TokenStatus {
                state: g.state(now),
                grant: g,
            })
            .collect(),
    };
    Ok(status)
}

pub fn status(home: Option<PathBuf>, args: StatusArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    let status = gather(&home, &store)?;
    let worst = status.problems.iter().map(|p| p.severity).max();
    // Only --brief answers with its exit status: the full forms are
    // reports, and succeed whenever they could be read.
    let exit = match worst {
        None => Ok(()),
        Some(health::Severity::Degraded) => Err(Exit(code::FAILED).into()),
        Some(health::Severity::Down) => Err(Exit(code::DOWN).into()),
    };
    if args.brief {
        for p in &status.problems {
            println!("{}", p.line);
        }
        return exit;
    }
    if args.json {
        return output::print_json(&status);
    }
    println!("node {} ({})", status.node.name, status.node.id);
    println!("  home        {}", status.home.display());
    println!("  certificate {}", status.node.certificate);
    println!(
        "memory: {} rows in {} conversations ({} local-only rows)",
        status.memory.rows, status.memory.conversations, status.memory.local_only_rows
    );
    if status.search.pending > 0 {
        println!("  search index: {} rows pending", status.search.pending);
    }
    if !status.heads.is_empty() {
        println!("heads:");
        for h in &status.heads {
            println!(
                "  {:<16} {:<8} {}",
                h.name.as_deref().unwrap_or(&h.node[..8]),
                h.stream,
                h.seq
            );
        }
    }
    println!("peers this node dials:");
    if status.peers.is_empty() {
        println!("  (none: `selves pair BLOB` adds one)");
    }
    for p in status.peers.iter().map(|p| &p.remote) {
        let state = match (&p.last_success_at, &p.last_error) {
            (_, Some(err)) if p.consecutive_failures > 0 => format!(
                "failing ({} in a row, {}): {err}",
                p.consecutive_failures,
                p.last_error_class.as_deref().unwrap_or("error")
            ),
            (Some(t), _) => format!("ok, last sync {}", ago(*t)),
            (None, _) => "never synced".to_owned(),
        };
        let kind = match p.protocol {
            selves_store::Protocol::Selves => String::new(),
            selves_store::Protocol::Memex => {
                format!(
                    " [memex; pulled to {}, pushed to {}]",
                    p.pulled_to, p.pushed_to
                )
            }
            selves_store::Protocol::Medium => " [remote]".to_owned(),
        };
        println!("  {:<16} {:<32} {state}{kind}", p.alias, p.url);
    }
    println!("peers allowed to call this node:");
    if status.tokens.is_empty() {
        println!("  (none: `selves invite --peer NAME` adds one)");
    }
    for t in &status.tokens {
        let seen = t
            .grant
            .last_seen_at
            .map_or("never seen".to_owned(), |s| format!("last seen {}", ago(s)));
        println!("  {:<16} {:<8} {seen}", t.grant.peer, t.state);
    }
    if let Some((at, n)) = store.recovered()? {
        println!(
            "recovered: this home found its own records further on at a peer {} (a restored backup) and wrote {n} of its own again after them",
            ago(at)
        );
    }
    match (status.daemon, crate::daemon::died_at(&home.dir)) {
        (Some(pid), _) => println!("daemon: running (pid {pid})"),
        (None, Some(at)) => println!(
            "daemon: NOT RUNNING: it died without stopping, last alive {}",
            ago(at)
        ),
        (None, None) => {
            println!("daemon: not running (`selves daemon`, or `selves service install`)")
        }
    }
    if status.problems.is_empty() {
        println!("health: all well");
    } else {
        println!("health: {}", status.health);
        for p in &status.problems {
            println!("  {}", p.line);
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct CheckArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub fn check(home: Option<PathBuf>, args: CheckArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    let problems = store.check().context("cannot check the store")?;
    if args.json {
        output::print_json(
            &serde_json::json!({ "ok": problems.is_empty(), "problems": problems }),
        )?;
    } else if problems.is_empty() {
        println!("ok: database intact, record logs contiguous");
    } else {
        for p in &problems {
            println!("problem: {p}");
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Exit(code::FAILED).into())
    }
}
