//! `tunnel add|list|remove`: SSH tunnels the daemon keeps up.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use selves_store::Tunnel;

use crate::home::Home;
use crate::output::{self, ago, now_ms};

#[derive(Subcommand)]
pub enum TunnelCommand {
    /// Keep an SSH tunnel up (the daemon runs `ssh -N` and restarts it)
    Add(AddArgs),
    /// The tunnels and what their keepers last saw
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Stop keeping a tunnel
    Remove { name: String },
}

#[derive(Args)]
pub struct AddArgs {
    /// The tunnel's name: usually the peer it carries
    name: String,
    /// Where to ssh: user@host or user@host:port
    #[arg(long, value_name = "USER@HOST[:PORT]")]
    ssh: String,
    /// Forward LOCAL:REMOTE: this node reaches the peer's port REMOTE (on
    /// the host's loopback) at 127.0.0.1:LOCAL
    #[arg(
        long,
        value_name = "LOCAL:REMOTE",
        conflicts_with = "reverse",
        required_unless_present = "reverse"
    )]
    forward: Option<String>,
    /// Reverse REMOTE:LOCAL: the host reaches this node's port LOCAL at its
    /// own 127.0.0.1:REMOTE (a laptop as a hub behind NAT)
    #[arg(long, value_name = "REMOTE:LOCAL")]
    reverse: Option<String>,
    /// The SSH private key to use (default: ssh's own choice)
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
}

fn ports(spec: &str) -> anyhow::Result<(u16, u16)> {
    let (a, b) = spec
        .split_once(':')
        .with_context(|| format!("expected two ports as A:B, got {spec:?}"))?;
    let port = |p: &str| -> anyhow::Result<u16> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{p:?} is not a port (1-65535)"),
        }
    };
    Ok((port(a)?, port(b)?))
}

pub fn tunnel(home: Option<PathBuf>, cmd: TunnelCommand) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    match cmd {
        TunnelCommand::Add(a) => {
            if a.name.is_empty() || a.name.len() > 64 || a.name.contains(['/', '\0']) {
                bail!("a tunnel name is 1-64 characters, without / or NUL");
            }
            crate::commands::peers::check_ssh_target(&a.ssh)?;
            let (kind, local_port, remote_port) = match (&a.forward, &a.reverse) {
                (Some(f), _) => {
                    let (l, r) = ports(f)?;
                    ("forward", l, r)
                }
                (None, Some(r)) => {
                    let (remote, local) = ports(r)?;
                    ("reverse", local, remote)
                }
                (None, None) => bail!("pass --forward LOCAL:REMOTE or --reverse REMOTE:LOCAL"),
            };
            let identity = match a.identity {
                Some(p) => Some(
                    std::fs::canonicalize(&p)
                        .with_context(|| format!("cannot find the key {}", p.display()))?
                        .to_string_lossy()
                        .into_owned(),
                ),
                None => None,
            };
            store.put_tunnel(&Tunnel::new(
                a.name.clone(),
                a.ssh.clone(),
                kind,
                (local_port, remote_port),
                identity,
                now_ms(),
            ))?;
            match kind {
                "forward" => println!(
                    "tunnel {}: 127.0.0.1:{local_port} here → 127.0.0.1:{remote_port} on {} (kept up by `selves daemon`)",
                    a.name, a.ssh
                ),
                _ => println!(
                    "tunnel {}: 127.0.0.1:{remote_port} on {} → 127.0.0.1:{local_port} here (kept up by `selves daemon`)",
                    a.name, a.ssh
                ),
            }
            Ok(())
        }
        TunnelCommand::List { json } => {
            let tunnels = store.tunnels()?;
            if json {
                return output::print_json(&tunnels);
            }
            if tunnels.is_empty() {
                println!("no tunnels (`selves tunnel add PEER --ssh user@host --forward L:R`)");
            }
            for t in &tunnels {
                let arrow = match t.kind.as_str() {
                    "reverse" => format!("{}:{} ← :{}", t.ssh, t.remote_port, t.local_port),
                    _ => format!(":{} → {}:{}", t.local_port, t.ssh, t.remote_port),
                };
                let since = t
                    .since
                    .map(|s| format!(" since {}", ago(s)))
                    .unwrap_or_default();
                let detail = t
                    .detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                println!(
                    "{:<12} {arrow}  {}{since}, {} ssh started{detail}",
                    t.name, t.state, t.spawns
                );
            }
            Ok(())
        }
        TunnelCommand::Remove { name } => {
            if store.remove_tunnel(&name)? {
                println!("removed tunnel {name} (a running daemon stops its ssh within seconds)");
                Ok(())
            } else {
                bail!("no tunnel named {name} (see `selves tunnel list`)")
            }
        }
    }
}
