//! `invite`, `pair`, `peer …`, `rotate-token`: who this node trusts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use selves_client::{PeerClient, PeerTarget, SyncError, SyncOptions, Trust};
use selves_store::{Protocol, Remote, Store};
use selves_wire::pair::{BlobKind, PAIR_VERSION, PairBlob};
use selves_wire::{CertFingerprint, Name, Token, memex};

use crate::home::{DEFAULT_PORT, Home};
use crate::output::{self, ago, now_ms};

#[derive(Args)]
pub struct InviteArgs {
    /// The name this node will know the peer by
    #[arg(long)]
    peer: Name,
    /// The host or address the peer dials [default: the listen address, else 127.0.0.1]
    #[arg(long)]
    host: Option<String>,
    /// The port the peer dials [default: the listen port, else 8765]
    #[arg(long)]
    port: Option<u16>,
    /// How long the invite may wait before its first use
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// `memex` prints a `memex-pair:` blob for a memex node to paste
    #[arg(long, value_enum, default_value_t = BlobFormat::Selves, conflicts_with = "join")]
    format: BlobFormat,
    /// Print a `selves-join:` blob for `selves join`, which also sets up
    /// the tunnel, syncs and self-tests
    #[arg(long)]
    join: bool,
    /// The spoke reaches this node through an SSH tunnel to USER@HOST
    /// (this machine), to this node's port on that host's loopback
    #[arg(long, value_name = "USER@HOST[:PORT]", requires = "join")]
    ssh: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BlobFormat {
    Selves,
    Memex,
}

/// `user@host` or `user@host:port`, nothing that ssh could take as an option.
pub fn check_ssh_target(ssh: &str) -> anyhow::Result<()> {
    let ok = !ssh.is_empty()
        && !ssh.starts_with('-')
        && ssh
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@.-_:[]".contains(c));
    if !ok {
        bail!("{ssh:?} is not an SSH target: expected user@host or user@host:port");
    }
    Ok(())
}

fn random_token() -> anyhow::Result<Token> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).context("no randomness available")?;
    Ok(Token::from_bytes(bytes))
}

/// The host and port peers should dial, from flags, else the address the
/// running daemon listens on, else the configured listen address.
fn dial_address(home: &Home, host: Option<String>, port: Option<u16>) -> (String, u16, bool) {
    let listen = home.config.server.listen.as_deref();
    let parsed = crate::daemon::listening(&home.dir)
        .or_else(|| listen.and_then(|l| l.parse::<std::net::SocketAddr>().ok()));
    let port = port.or(parsed.map(|a| a.port())).unwrap_or(DEFAULT_PORT);
    match host {
        Some(h) => (h, port, false),
        None => match parsed {
            Some(a) if !a.ip().is_unspecified() => (a.ip().to_string(), port, false),
            _ => ("127.0.0.1".to_owned(), port, true),
        },
    }
}

fn pair_blob(
    home: &Home,
    peer: &Name,
    host: &str,
    port: u16,
    token: Token,
    ttl: Duration,
) -> anyhow::Result<PairBlob> {
    Ok(PairBlob {
        v: PAIR_VERSION,
        host: host.to_owned(),
        port,
        cert_fp: home.fingerprint()?,
        token,
        exp: (now_ms() / 1000) + ttl.as_secs().max(1) as i64,
        node: home.name().clone(),
        node_id: home.config.node.id.clone(),
        peer: peer.clone(),
        ssh: None,
        check: String::new(),
    })
}

pub fn invite(home: Option<PathBuf>, args: InviteArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    if let Some(ssh) = &args.ssh {
        check_ssh_target(ssh)?;
    }
    // Through a tunnel the spoke reaches this node on the SSH host's loopback.
    let host = args
        .host
        .or_else(|| args.ssh.as_ref().map(|_| "127.0.0.1".to_owned()));
    let (host, port, guessed) = dial_address(&home, host, args.port);
    if args.join && home.config.server.listen.is_none() {
        eprintln!(
            "note: this node has no listen address in config.toml: the spoke can join only while `selves serve` or `selves daemon --listen` runs here (`selves service install --listen ADDR` keeps it running)"
        );
    }
    let line = match args.format {
        BlobFormat::Selves if args.join => {
            let token = mint_token(&store, &args.peer, &host, port, args.ttl)?;
            let mut blob = pair_blob(&home, &args.peer, &host, port, token, args.ttl)?;
            blob.ssh = args.ssh.clone();
            blob.encode_as(BlobKind::Join)
        }
        BlobFormat::Selves => mint_invite(&home, &store, &args.peer, &host, port, args.ttl)?,
        BlobFormat::Memex => {
            let token = mint_token(&store, &args.peer, &host, port, args.ttl)?;
            memex::PairBlob {
                v: memex::PAIR_VERSION,
                host: host.clone(),
                port,
                cert_fp: Some(home.fingerprint()?),
                token,
                exp: now_ms() / 1000 + args.ttl.as_secs().max(1) as i64,
            }
            .encode()
        }
    };
    println!("{line}");
    if guessed && args.ssh.is_none() {
        eprintln!(
            "note: the blob points at {host}:{port}; the peer must reach this node there (say, through an SSH tunnel). Pass --host to give another address."
        );
    }
    let how = match args.format {
        BlobFormat::Selves if args.join => "selves join",
        BlobFormat::Selves => "selves pair",
        BlobFormat::Memex => "memex-sync sync-pair",
    };
    eprintln!(
        "on {}, within {}: {how} <the line above>",
        args.peer,
        humantime::format_duration(args.ttl)
    );
    if let Some(ssh) = &args.ssh {
        eprintln!(
            "{} will reach this node through ssh {ssh}: if that refuses its key, `selves join` prints the line to add to authorized_keys there",
            args.peer
        );
    }
    Ok(())
}

/// Mints a token for `peer` and returns the pair blob that carries it.
pub fn mint_invite(
    home: &Home,
    store: &Store,
    peer: &Name,
    host: &str,
    port: u16,
    ttl: Duration,
) -> anyhow::Result<String> {
    let token = mint_token(store, peer, host, port, ttl)?;
    Ok(pair_blob(home, peer, host, port, token, ttl)?.encode())
}

/// Mints a fresh token for `peer` that must be used within `ttl`.
fn mint_token(
    store: &Store,
    peer: &Name,
    host: &str,
    port: u16,
    ttl: Duration,
) -> anyhow::Result<Token> {
    let token = random_token()?;
    let now = now_ms();
    store.mint_token(
        peer,
        &token,
        now + ttl.as_millis() as i64,
        host,
        port,
        false,
        now,
    )?;
    Ok(token)
}

#[derive(Args)]
pub struct PairArgs {
    /// The `selves-pair:` line printed by `selves invite` on the hub (or a
    /// `memex-pair:` line from a memex node)
    blob: String,
    /// The name to call the hub here [default: the hub's own name]
    #[arg(long)]
    alias: Option<Name>,
    /// Replace an existing peer of the same alias
    #[arg(long)]
    force: bool,
    /// Save without contacting the hub (its invite must still be used before it expires)
    #[arg(long)]
    no_check: bool,
    /// Accept a memex blob without a certificate fingerprint (only through
    /// a transport that authenticates the far end, such as an SSH tunnel)
    #[arg(long)]
    insecure: bool,
}

pub fn pair(home: Option<PathBuf>, args: PairArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    if args.blob.trim().starts_with(memex::PAIR_PREFIX) {
        return pair_memex(&store, args);
    }
    let blob = PairBlob::decode(&args.blob, now_ms() / 1000)?;
    if blob.ssh.is_some() {
        bail!(
            "this join blob reaches the hub through SSH ({}): run `selves join` with it, which sets up the tunnel",
            blob.ssh.as_deref().unwrap_or_default()
        );
    }
    let alias = args.alias.unwrap_or_else(|| blob.node.clone());
    if !args.force && store.remote(alias.as_str())?.is_some() {
        bail!(
            "a peer named {alias} already exists: pass --force to replace it, or --alias to name this one differently"
        );
    }
    let remote = remote_from_blob(&blob, alias.clone());
    if !args.no_check {
        let PeerKind::Selves(hello) = check_peer(&store, &remote)? else {
            bail!(
                "{} answered as a memex node, but the blob is for a selves node",
                remote.url
            );
        };
        answered_as_blob(&hello.node, &blob, &remote.url, "pairing")?;
    }
    store.add_remote(&remote, true)?;
    println!(
        "paired with {} at {} (certificate {}); this node is {} there",
        alias, remote.url, blob.cert_fp, blob.peer
    );
    eprintln!("next: selves sync {alias}");
    Ok(())
}

/// Refuses a hub that answered as another node than its blob names.
pub fn answered_as_blob(
    node: &selves_wire::native::NodeInfo,
    blob: &PairBlob,
    url: &str,
    doing: &str,
) -> anyhow::Result<()> {
    if node.id != blob.node_id {
        bail!(
            "{url} answered as node {} ({}), but the blob is for {} ({}): not {doing}",
            node.name,
            node.id,
            blob.node,
            blob.node_id
        );
    }
    Ok(())
}

/// Pairs with a memex node from its `memex-pair:` blob.
fn pair_memex(store: &std::sync::Arc<Store>, args: PairArgs) -> anyhow::Result<()> {
    let blob = memex::PairBlob::decode(&args.blob, now_ms() / 1000)?;
    let alias = args
        .alias
        .unwrap_or_else(|| "memex".parse().expect("valid name"));
    if !args.force && store.remote(alias.as_str())?.is_some() {
        bail!(
            "a peer named {alias} already exists: pass --force to replace it, or --alias to name this one differently"
        );
    }
    if blob.cert_fp.is_none() {
        if !args.insecure {
            bail!(
                "this memex blob has no certificate fingerprint: pass --insecure only if {} is reached through a transport that authenticates it (an SSH tunnel)",
                blob.url()
            );
        }
        warn_insecure(&blob.url());
    }
    let mut remote = new_remote(alias.clone(), blob.url(), blob.token.clone(), blob.cert_fp);
    remote.protocol = Protocol::Memex;
    let mut version = String::new();
    if !args.no_check {
        match check_peer(store, &remote)? {
            PeerKind::Memex(health) => version = format!(" (memex {})", health.version),
            PeerKind::Selves(hello) => bail!(
                "{} is a selves node ({}), not memex: ask it for a selves-pair blob",
                remote.url,
                hello.node.name
            ),
        }
    }
    store.add_remote(&remote, true)?;
    println!("paired with memex node {alias}{version} at {}", remote.url);
    eprintln!("next: selves sync {alias}");
    Ok(())
}

fn warn_insecure(url: &str) {
    eprintln!(
        "WARNING: --insecure: the certificate of {url} will not be checked, so whoever answers there receives this token.\n\
         Use it only through a transport that authenticates the far end itself, such as an SSH tunnel to localhost."
    );
}

/// A remote not yet synced with.
pub(crate) fn new_remote(
    alias: Name,
    url: String,
    token: Token,
    cert_fp: Option<CertFingerprint>,
) -> Remote {
    Remote {
        alias,
        url,
        protocol: Protocol::Selves,
        pulled_to: 0,
        pushed_to: 0,
        token,
        insecure: cert_fp.is_none(),
        cert_fp,
        node_id: None,
        node_name: None,
        added_at: now_ms(),
        last_attempt_at: None,
        last_success_at: None,
        consecutive_failures: 0,
        last_error: None,
        last_error_class: None,
        down_after_ms: None,
        joined_at: None,
        every_ms: None,
    }
}

/// The remote a pair blob describes, dialled at `url` (the blob's own
/// address, or a tunnel's local end).
pub fn remote_at(blob: &PairBlob, alias: Name, url: String) -> Remote {
    Remote {
        url,
        ..remote_from_blob(blob, alias)
    }
}

/// The remote a pair blob describes.
pub fn remote_from_blob(blob: &PairBlob, alias: Name) -> Remote {
    Remote {
        node_id: Some(blob.node_id.clone()),
        node_name: Some(blob.node.to_string()),
        ..new_remote(alias, blob.url(), blob.token.clone(), Some(blob.cert_fp))
    }
}

/// What answered at a peer's address.
enum PeerKind {
    Selves(selves_wire::native::Hello),
    Memex(memex::Health),
}

/// Contacts a peer once: checks its certificate, claims the token, learns
/// what it is. A node without the native endpoints is asked whether it
/// speaks memex v12.
fn check_peer(store: &std::sync::Arc<Store>, remote: &Remote) -> anyhow::Result<PeerKind> {
    let client = PeerClient::new(target(remote, store))?;
    let rt = crate::runtime()?;
    let opts = SyncOptions {
        attempts: 2,
        ..SyncOptions::default()
    };
    let native = rt.block_on(selves_client::handshake(
        store,
        &client,
        &opts,
        &selves_client::NoProgress,
    ));
    match native {
        Ok(hello) => Ok(PeerKind::Selves(hello)),
        Err(SyncError::NotFound { .. }) => {
            let health = rt.block_on(client.memex_health())?;
            if health.schema_version != memex::SCHEMA_VERSION {
                return Err(SyncError::SchemaMismatch {
                    url: remote.url.clone(),
                    theirs: health.schema_version,
                    ours: memex::SCHEMA_VERSION,
                }
                .into());
            }
            Ok(PeerKind::Memex(health))
        }
        Err(e) => Err(e.into()),
    }
}

pub fn target(remote: &Remote, store: &std::sync::Arc<Store>) -> PeerTarget {
    PeerTarget {
        node: remote.node_id.clone(),
        prover: Some(selves_client::prover(store)),
        url: remote.url.clone(),
        token: remote.token.clone(),
        trust: match (remote.insecure, remote.cert_fp) {
            (false, Some(fp)) => Trust::Pinned(fp),
            // A remote saved without a pin is only ever an insecure one.
            _ => Trust::Insecure,
        },
    }
}

#[derive(Subcommand)]
pub enum PeerCommand {
    /// Add a peer by hand (the manual form of `pair`)
    Add(AddArgs),
    /// List peers: the ones this node dials and the ones allowed to call it
    List(ListArgs),
    /// Stop dialing a peer
    Remove { alias: String },
    /// Revoke the token of one peer allowed to call this node
    Revoke { name: String },
    /// Change a peer's settings
    Set(SetArgs),
}

#[derive(Args)]
pub struct SetArgs {
    alias: String,
    /// After how long without a successful sync (or, for a peer that
    /// calls this node, without a call) the peer counts as down
    /// (`status --brief` exits 2): e.g. 10m, 6h, 2d [default: 1h]
    #[arg(long, value_parser = humantime::parse_duration)]
    down_after: Option<std::time::Duration>,
}

#[derive(Args)]
pub struct AddArgs {
    alias: Name,
    /// https://host:port
    url: String,
    /// The bearer token (64 hex characters)
    token: String,
    /// The peer's certificate fingerprint, sha256:AA:BB:…
    #[arg(
        long,
        required_unless_present = "insecure",
        conflicts_with = "insecure"
    )]
    cert_fp: Option<CertFingerprint>,
    /// Do not check the peer's certificate. Only for a transport that
    /// already authenticates the far end, such as an SSH tunnel to localhost
    #[arg(long)]
    insecure: bool,
    /// Replace an existing peer of the same alias
    #[arg(long)]
    force: bool,
    /// Save without contacting the peer
    #[arg(long)]
    no_check: bool,
}

#[derive(Args)]
pub struct ListArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub fn peer(home: Option<PathBuf>, cmd: PeerCommand) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    match cmd {
        PeerCommand::Add(a) => add(&store, a),
        PeerCommand::List(a) => list(&store, a),
        PeerCommand::Remove { alias } => {
            if store.remove_remote(&alias)? {
                println!("removed peer {alias}");
                Ok(())
            } else {
                bail!("no peer named {alias} (see `selves peer list`)")
            }
        }
        PeerCommand::Revoke { name } => {
            if store.revoke_token(&name, now_ms())? {
                println!("revoked the token of {name}; other peers are unaffected");
                Ok(())
            } else {
                bail!("no active token for {name} (see `selves peer list`)")
            }
        }
        PeerCommand::Set(a) => {
            let Some(after) = a.down_after else {
                bail!("nothing to set: pass --down-after DURATION");
            };
            if after.is_zero() {
                bail!("--down-after must be longer than zero");
            }
            let ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
            if !store.set_down_after(&a.alias, Some(ms))? {
                bail!("no peer named {} (see `selves peer list`)", a.alias);
            }
            println!(
                "{} counts as down after {} without a successful sync",
                a.alias,
                humantime::format_duration(after)
            );
            Ok(())
        }
    }
}

fn add(store: &std::sync::Arc<Store>, a: AddArgs) -> anyhow::Result<()> {
    let url = a.url.trim_end_matches('/').to_owned();
    if !url.starts_with("https://") {
        bail!("the URL must start with https:// (selves always speaks TLS), got {url}");
    }
    let token: Token = a.token.parse()?;
    if !a.force && store.remote(a.alias.as_str())?.is_some() {
        bail!(
            "a peer named {} already exists: pass --force to replace it",
            a.alias
        );
    }
    if a.insecure {
        warn_insecure(&url);
    }
    let mut remote = new_remote(
        a.alias.clone(),
        url,
        token,
        if a.insecure { None } else { a.cert_fp },
    );
    if !a.no_check {
        match check_peer(store, &remote)? {
            PeerKind::Selves(hello) => {
                remote.node_id = Some(hello.node.id);
                remote.node_name = Some(hello.node.name.to_string());
            }
            PeerKind::Memex(health) => {
                remote.protocol = Protocol::Memex;
                remote.node_name = Some(format!("memex {}", health.version));
            }
        }
    }
    store.add_remote(&remote, true)?;
    let kind = match remote.protocol {
        Protocol::Selves => "peer",
        Protocol::Memex => "memex peer",
        Protocol::Medium => "remote",
    };
    println!("added {kind} {} at {}", remote.alias, remote.url);
    Ok(())
}

fn list(store: &std::sync::Arc<Store>, a: ListArgs) -> anyhow::Result<()> {
    let remotes = store.remotes()?;
    let grants = store.token_grants()?;
    let now = now_ms();
    if a.json {
        let tokens: Vec<_> = grants
            .iter()
            .map(|g| serde_json::json!({ "peer": g.peer, "state": g.state(now), "grant": g }))
            .collect();
        return output::print_json(&serde_json::json!({ "dials": remotes, "allowed": tokens }));
    }
    println!("peers this node dials:");
    if remotes.is_empty() {
        println!("  (none)");
    }
    for r in &remotes {
        let trust = match (r.insecure, r.cert_fp) {
            (true, _) | (false, None) => "INSECURE (no certificate check)".to_owned(),
            (false, Some(fp)) => fp.to_string(),
        };
        let last = r.last_success_at.map_or("never synced".to_owned(), |t| {
            format!("last sync {}", ago(t))
        });
        println!(
            "  {:<16} {:<30} {last}\n  {:<16} {trust}",
            r.alias, r.url, ""
        );
    }
    println!("peers allowed to call this node:");
    if grants.is_empty() {
        println!("  (none)");
    }
    for g in &grants {
        let seen = g.last_seen_at.map_or("never seen".to_owned(), |t| {
            format!(
                "last used {}{}",
                ago(t),
                g.last_addr
                    .as_deref()
                    .map(|a| format!(" from {a}"))
                    .unwrap_or_default()
            )
        });
        let bound = match (&g.node_id, g.bound) {
            (Some(n), true) => format!("bound to node {n}"),
            (Some(n), false) => format!("used by node {n}, bound at its next hello"),
            (None, _) => "not claimed yet".to_owned(),
        };
        println!(
            "  {:<16} {:<8} {seen}\n  {:<16} {bound}",
            g.peer,
            g.state(now),
            ""
        );
        for (node, addr, at) in &g.refused {
            println!(
                "  {:<16} refused node {node} from {} {}",
                "",
                addr.as_deref().unwrap_or("?"),
                ago(*at)
            );
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct RotateArgs {
    /// The peer whose token is replaced
    name: Name,
    /// The host the peer dials [default: as in its last invite]
    #[arg(long)]
    host: Option<String>,
    /// The port the peer dials [default: as in its last invite]
    #[arg(long)]
    port: Option<u16>,
    /// How long the new blob may wait before its first use
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

pub fn rotate(home: Option<PathBuf>, args: RotateArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    let grant = store
        .token_grants()?
        .into_iter()
        .find(|g| g.peer == args.name.as_str())
        .with_context(|| {
            format!(
                "no peer named {} was ever invited (see `selves peer list`)",
                args.name
            )
        })?;
    let (default_host, default_port, _) = dial_address(&home, None, None);
    let host = args.host.or(grant.invite_host).unwrap_or(default_host);
    let port = args.port.or(grant.invite_port).unwrap_or(default_port);
    let token = random_token()?;
    let now = now_ms();
    store.mint_token(
        &args.name,
        &token,
        now + args.ttl.as_millis() as i64,
        &host,
        port,
        true,
        now,
    )?;
    println!(
        "{}",
        pair_blob(&home, &args.name, &host, port, token, args.ttl)?.encode()
    );
    eprintln!(
        "the old token of {} no longer works; on {}: selves pair --force <the line above>",
        args.name, args.name
    );
    Ok(())
}
