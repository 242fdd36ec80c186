//! `selves join BLOB`: everything a spoke needs, in one command.
//!
//! 1. the blob is checked (damage, expiry);
//! 2. with an SSH target: ssh is probed with this node's key (made if
//!    missing; printed with exact instructions when the host refuses it),
//!    and a forward tunnel is set up (kept by the daemon afterwards);
//! 3. the hub is asked who it is, through the pinned certificate; the
//!    token is claimed and the hub saved as a peer;
//! 4. the first sync (resumable: what arrived is committed batch by batch);
//! 5. the marker self-test: a marker written here is seen on the hub, and a
//!    marker the hub writes on request arrives here, with the times;
//! 6. only then "joined", noted on the peer. Running it again changes
//!    nothing; after a failure it goes on from where it stopped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use selves_client::{PeerClient, SyncError, SyncOptions, SyncReport};
use selves_store::{Remote, Store, Tunnel};
use selves_wire::Name;
use selves_wire::native::MarkerRequest;
use selves_wire::pair::PairBlob;

use crate::commands::peers::{answered_as_blob, check_ssh_target, remote_at, target};
use crate::daemon::tunnel as keeper;
use crate::home::Home;
use crate::output::{self, Exit, SyncBar, code, now_ms};

#[derive(Args)]
pub struct JoinArgs {
    /// The `selves-join:` line printed by `selves invite --join` on the hub
    /// (a `selves-pair:` line works too)
    blob: String,
    /// The name to call the hub here [default: the hub's own name]
    #[arg(long)]
    alias: Option<Name>,
    /// The SSH private key for the tunnel [default: this node's own key,
    /// SELVES_HOME/ssh/id_ed25519, made on first use]
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// The local port of the tunnel [default: a free one]
    #[arg(long)]
    local_port: Option<u16>,
    /// Join again: with this blob though the hub was joined with another,
    /// or every step again though this one already joined
    #[arg(long)]
    force: bool,
    /// Tries per request when a failure may pass (network, server errors)
    #[arg(long, default_value_t = 5, value_name = "N")]
    attempts: u32,
    /// Most records per request [default: the hub's limits]
    #[arg(long, value_name = "N")]
    batch: Option<u32>,
}

/// How long the hub may take to answer through a fresh tunnel.
const TUNNEL_UP: Duration = Duration::from_secs(20);

pub fn join(home: Option<PathBuf>, args: JoinArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    let (blob, _) = PairBlob::parse(&args.blob)?;
    let alias = args.alias.clone().unwrap_or_else(|| blob.node.clone());
    if blob.node_id == store.me().id {
        bail!("this blob was made by this node: paste it on the node that joins");
    }
    let existing = store.remote(alias.as_str())?;
    let resuming = match &existing {
        Some(r) if r.node_id.as_ref().is_some_and(|id| id != &blob.node_id) => bail!(
            "a peer named {alias} already exists and is another node: pass --alias to name this hub differently"
        ),
        Some(r) if r.token != blob.token && !args.force => bail!(
            "{alias} was joined with another invite: pass --force to join again with this one"
        ),
        Some(r) if r.token == blob.token && r.joined_at.is_some() && !args.force => {
            let since = r.joined_at.map(output::ago).unwrap_or_default();
            let last = r
                .last_success_at
                .map_or("never synced since".to_owned(), |t| {
                    format!("last sync {}", output::ago(t))
                });
            println!(
                "already joined {alias} at {} ({since}; {last}); nothing changed",
                r.url
            );
            eprintln!("`selves status` shows how it is doing");
            return Ok(());
        }
        // The token was claimed by an earlier run that stopped part way:
        // go on from there, whatever the blob's expiry.
        Some(r) => r.token == blob.token,
        None => false,
    };
    if !resuming {
        blob.unexpired(now_ms() / 1000)?;
    }
    let rt = crate::runtime()?;

    // 2. The tunnel, if the hub is reached through SSH.
    let mut temporary_ssh = None;
    let url = match &blob.ssh {
        None => blob.url(),
        Some(ssh) => {
            check_ssh_target(ssh)?;
            let key = match &args.identity {
                Some(k) => std::fs::canonicalize(k)
                    .with_context(|| format!("cannot find the key {}", k.display()))?,
                None => own_key(&home)?,
            };
            probe_ssh(&home, ssh, &key, &blob)?;
            println!("✓ ssh {ssh} accepts this node's key");
            let tunnel = ensure_tunnel(&store, &alias, ssh, &key, blob.port, args.local_port)?;
            if crate::daemon::running(&home.dir).ok().flatten().is_none() {
                // No daemon yet to keep it: hold one up for this command.
                temporary_ssh =
                    Some(rt.block_on(async {
                        keeper::spawn(&tunnel, &keeper::known_hosts(&home.dir))
                    })?);
            }
            let local = format!("127.0.0.1:{}", tunnel.local_port);
            if !wait_for_port(&local, TUNNEL_UP) {
                bail!(
                    "the tunnel to {ssh} did not open 127.0.0.1:{} here within {} s (see `selves tunnel list`)",
                    tunnel.local_port,
                    TUNNEL_UP.as_secs()
                );
            }
            println!(
                "✓ tunnel {alias}: 127.0.0.1:{} here → 127.0.0.1:{} on {ssh}",
                tunnel.local_port, blob.port
            );
            format!("https://{local}")
        }
    };

    // 3. Who answers, through the pinned certificate.
    let remote = match existing.filter(|_| resuming && !args.force) {
        Some(r) if r.url == url => r,
        _ => remote_at(&blob, alias.clone(), url),
    };
    let opts = SyncOptions {
        attempts: args.attempts.max(1),
        batch_records: args.batch,
        ..SyncOptions::default()
    };
    let client = PeerClient::new(target(&remote, &store))?;
    let started = Instant::now();
    let hello = rt
        .block_on(selves_client::handshake(
            &store,
            &client,
            &opts,
            &selves_client::NoProgress,
        ))
        .map_err(|e| refused(e, &alias))?;
    answered_as_blob(&hello.node, &blob, &remote.url, "joining")?;
    store.add_remote(&remote, true)?;
    println!(
        "✓ {alias} answers at {} with the pinned certificate {} ({} ms); this node is {} there",
        remote.url,
        blob.cert_fp,
        started.elapsed().as_millis(),
        hello.you
    );

    // 4. The first sync.
    let engine = home.open_engine(&store)?;
    if !crate::commands::shares::scan_all(&engine, &store, false)? {
        eprintln!("note: a share could not be scanned; see above");
    }
    let report = sync(&rt, &store, &engine, &remote, &opts)?;
    let pulled =
        report.pulled + report.cards_pulled + report.shares.iter().map(|s| s.pulled).sum::<u64>();
    let pushed =
        report.pushed + report.cards_pushed + report.shares.iter().map(|s| s.pushed).sum::<u64>();
    println!(
        "✓ first sync: pulled {pulled} record{}, pushed {pushed} ({} ms)",
        if pulled == 1 { "" } else { "s" },
        report.elapsed_ms
    );
    if report.changed_rows > 0 {
        let indexing = Instant::now();
        store.catch_up_index(|_| {})?;
        println!("✓ searchable here ({} ms)", indexing.elapsed().as_millis());
    }

    // 5. The marker self-test.
    self_test(&rt, &store, &engine, &remote, &client, &opts, &blob)?;

    // 6. Done.
    store.set_joined(alias.as_str(), now_ms())?;
    drop(temporary_ssh);
    println!("joined {} as {}", blob.node, hello.you);
    if crate::daemon::running(&home.dir).ok().flatten().is_some() {
        println!("the daemon here syncs with {alias} on every change from now on");
    } else {
        eprintln!(
            "nothing keeps this node in sync yet: `selves service install` (or `selves daemon`) syncs with {alias} on every change{}",
            if blob.ssh.is_some() {
                " and keeps the tunnel up"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// A refusal worth more words than the error alone.
fn refused(e: SyncError, alias: &Name) -> anyhow::Error {
    if matches!(e, SyncError::Unauthorized { .. }) {
        eprintln!(
            "the hub refused the token: an invite works once and only before it expires. Ask the hub for a new one: `selves invite --join --peer NAME` there (or `selves rotate-token NAME`), then `selves join --force …` here ({alias})"
        );
    }
    e.into()
}

fn sync(
    rt: &tokio::runtime::Runtime,
    store: &Arc<Store>,
    engine: &Arc<selves_share::Engine>,
    remote: &Remote,
    opts: &SyncOptions,
) -> anyhow::Result<SyncReport> {
    let bar = SyncBar::new(remote.alias.as_str());
    let outcome = rt.block_on(crate::commands::sync::sync_peer(
        store, engine, remote, opts, &bar,
    ));
    bar.finish();
    outcome.map_err(|e| {
        let code = output::sync_code(&e);
        eprintln!(
            "error: the sync with {} stopped: {e}\nwhat arrived is kept; run the same `selves join` again to go on",
            remote.alias
        );
        Exit(code).into()
    })
}

/// A marker written here must be seen on the hub, and a marker the hub
/// writes on request must arrive here.
fn self_test(
    rt: &tokio::runtime::Runtime,
    store: &Arc<Store>,
    engine: &Arc<selves_share::Engine>,
    remote: &Remote,
    client: &PeerClient,
    opts: &SyncOptions,
    blob: &PairBlob,
) -> anyhow::Result<()> {
    let (ours, theirs) = (marker()?, marker()?);
    let started = Instant::now();
    crate::identity::write_own(store, |card| card.marker = Some(ours.clone()))?;
    sync(rt, store, engine, remote, opts)?;
    let req = MarkerRequest {
        node: store.me().id.clone(),
        seen: ours,
        write: theirs.clone(),
    };
    let answer = match rt.block_on(selves_client::marker(
        client,
        &req,
        opts,
        &selves_client::NoProgress,
    )) {
        Ok(a) => a,
        Err(SyncError::NotFound { .. }) => {
            println!(
                "✓ {} is an older selves without the marker self-test: the sync above is the test",
                remote.alias
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if !answer.seen {
        bail!(
            "self-test failed: {} does not hold the marker this node just pushed to it",
            remote.alias
        );
    }
    let there = started.elapsed();
    println!(
        "✓ marker written here is on {} ({} ms)",
        remote.alias,
        there.as_millis()
    );
    sync(rt, store, engine, remote, opts)?;
    let back = store.card(&blob.node_id)?.and_then(|c| c.marker);
    if back.as_deref() != Some(theirs.as_str()) {
        bail!(
            "self-test failed: {} wrote a marker (its record {}), but it did not arrive here",
            remote.alias,
            answer.seq
        );
    }
    let round = started.elapsed();
    println!(
        "✓ marker written on {} is here ({} ms); round trip {} ms",
        remote.alias,
        (round - there).as_millis(),
        round.as_millis()
    );
    Ok(())
}

fn marker() -> anyhow::Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).context("no randomness available")?;
    Ok(selves_wire::hex(&bytes))
}

/// This node's SSH key, made on first use.
fn own_key(home: &Home) -> anyhow::Result<PathBuf> {
    let dir = home.dir.join("ssh");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = dir.join("id_ed25519");
    if !key.exists() {
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("selves@{}", home.name()))
            .arg("-f")
            .arg(&key)
            .stdin(Stdio::null())
            .status()
            .context("cannot run ssh-keygen: install OpenSSH (openssh-client)")?;
        if !status.success() {
            bail!("ssh-keygen could not make {}", key.display());
        }
    }
    Ok(key)
}

/// Checks that ssh lets this node in; when the host refuses the key,
/// prints the key and exactly how to authorise it.
fn probe_ssh(home: &Home, ssh: &str, key: &Path, blob: &PairBlob) -> anyhow::Result<()> {
    let known_hosts = keeper::known_hosts(&home.dir);
    if let Some(dir) = known_hosts.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let key_text = key.to_string_lossy();
    let out = std::process::Command::new(keeper::ssh_program())
        .args(keeper::probe_args(ssh, Some(&key_text), &known_hosts))
        .stdin(Stdio::null())
        .output()
        .context("cannot run ssh: install OpenSSH (openssh-client)")?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    match keeper::classify(&stderr) {
        keeper::Failure::Auth if stderr.contains("Permission denied") => {
            let public = std::fs::read_to_string(key.with_extension("pub"))
                .map(|k| k.trim().to_owned())
                .unwrap_or_else(|_| format!("(the public half of {})", key.display()));
            let host = ssh.split_once('@').map_or(ssh, |(_, h)| h);
            let user = ssh.split_once('@').map_or("you", |(u, _)| u);
            let until = output::date(blob.exp);
            eprintln!(
                "{ssh} refused this node's SSH key. Authorise it once: on {host}, as {user}, run\n\n\
                 \x20 mkdir -p ~/.ssh && chmod 700 ~/.ssh && echo 'restrict,port-forwarding,permitopen=\"127.0.0.1:{port}\" {public}' >> ~/.ssh/authorized_keys && chmod 600 ~/.ssh/authorized_keys\n\n\
                 (the key may then only forward to the hub's port {port}), and run the same `selves join …` here again; the invite is good until {until}.",
                port = blob.port
            );
            Err(Exit(code::AUTH).into())
        }
        keeper::Failure::Auth => bail!(
            "ssh to {ssh} failed on authentication: {last}\n(the host key is kept in {}; a changed host key is refused)",
            known_hosts.display()
        ),
        _ => {
            eprintln!("error: cannot reach {ssh} by ssh: {last}");
            Err(Exit(code::UNREACHABLE).into())
        }
    }
}

/// The forward tunnel to the hub, added (or kept, if already there).
fn ensure_tunnel(
    store: &Store,
    name: &Name,
    ssh: &str,
    key: &Path,
    remote_port: u16,
    local_port: Option<u16>,
) -> anyhow::Result<Tunnel> {
    let identity = Some(key.to_string_lossy().into_owned());
    if let Some(t) = store
        .tunnels()?
        .into_iter()
        .find(|t| t.name == name.as_str())
        && t.ssh == ssh
        && t.kind == "forward"
        && t.remote_port == remote_port
        && t.identity == identity
        && local_port.is_none_or(|p| p == t.local_port)
    {
        if t.state != "auth-failed" {
            return Ok(t);
        }
        // ssh accepts the key now (the probe said so); a new `added_at`
        // makes a running daemon start this tunnel's keeper afresh.
        let fresh = Tunnel {
            added_at: now_ms(),
            ..t
        };
        store.put_tunnel(&fresh)?;
        return Ok(fresh);
    }
    let local_port = match local_port {
        Some(p) => p,
        None => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free local port for the tunnel")?
            .port(),
    };
    let tunnel = Tunnel::new(
        name.to_string(),
        ssh.to_owned(),
        "forward",
        (local_port, remote_port),
        identity,
        now_ms(),
    );
    store.put_tunnel(&tunnel)?;
    Ok(tunnel)
}

/// Waits until something accepts connections at `addr`.
fn wait_for_port(addr: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let addr: std::net::SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) => return false,
    };
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
