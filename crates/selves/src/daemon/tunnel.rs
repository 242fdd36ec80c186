//! A tunnel keeper: exactly one `ssh -N` child per tunnel, restarted by
//! how it failed.
//!
//! - authentication (the key refused, the host key changed): stop and say
//!   so; retrying a dead key only locks accounts and hides the problem;
//! - the remote port still bound (a previous connection's listener not yet
//!   gone): retry fast;
//! - network (refused, unreachable, timed out): back off, 2 s doubling up
//!   to [`MAX_BACKOFF`];
//! - a clean drop of a connection that had been up: reconnect now.
//!
//! While ssh runs, a forward tunnel is checked *through* the tunnel every
//! [`HEALTH_EVERY`]: a request to the peer behind it. A tunnel whose port
//! accepts but does not answer (ssh frozen, the far side gone without a
//! FIN) fails [`STRIKES`] checks in a row and its ssh is killed and
//! started again.
//!
//! The child gets `PR_SET_PDEATHSIG`, so it dies with the daemon however
//! the daemon ends: no orphaned ssh keeps a port bound.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use selves_client::PeerClient;
use selves_store::Tunnel;
use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, Command};

use super::Ctx;
use crate::commands::peers::target;
use crate::output::now_ms;

pub const HEALTH_EVERY: Duration = Duration::from_secs(10);
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
pub const STRIKES: u32 = 2;
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
pub const MAX_BACKOFF: Duration = Duration::from_secs(120);
/// A connection up this long that drops is a clean drop, not a failure.
const STABLE: Duration = Duration::from_secs(30);

/// Why ssh ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Auth,
    PortBound,
    Network,
    Dropped,
}

/// Classifies ssh's stderr (OpenSSH's messages).
pub fn classify(stderr: &str) -> Failure {
    let has = |s: &str| stderr.contains(s);
    if has("Permission denied")
        || has("Host key verification failed")
        || has("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || has("Too many authentication failures")
        || has("no such identity")
        || has("Load key")
    {
        Failure::Auth
    } else if has("remote port forwarding failed")
        || has("Address already in use")
        || has("cannot listen to port")
        || has("Could not request local forwarding")
    {
        Failure::PortBound
    } else if has("Connection refused")
        || has("Connection timed out")
        || has("No route to host")
        || has("Network is unreachable")
        || has("Could not resolve hostname")
        || has("Name or service not known")
        || has("Connection reset")
        || has("kex_exchange_identification")
    {
        Failure::Network
    } else {
        Failure::Dropped
    }
}

/// `user@host[:port]` → (`user@host`, port).
fn split_target(ssh: &str) -> (String, Option<String>) {
    match ssh.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') && port.chars().all(|c| c.is_ascii_digit()) => {
            (host.to_owned(), Some(port.to_owned()))
        }
        _ => (ssh.to_owned(), None),
    }
}

/// The ssh command line for a tunnel (also shown by `tunnel list`).
pub fn ssh_args(t: &Tunnel, known_hosts: &std::path::Path) -> Vec<String> {
    let (mut args, host) = base_args(&t.ssh, t.identity.as_deref(), known_hosts);
    args.insert(0, "-N".into());
    // Loopback binds only, on both ends.
    match t.kind.as_str() {
        "reverse" => args.extend([
            "-R".into(),
            format!("127.0.0.1:{}:127.0.0.1:{}", t.remote_port, t.local_port),
        ]),
        _ => args.extend([
            "-L".into(),
            format!("127.0.0.1:{}:127.0.0.1:{}", t.local_port, t.remote_port),
        ]),
    }
    args.push(host);
    args
}

/// The ssh command line that checks a target accepts us: it runs `true`
/// there with the same options a tunnel uses.
pub fn probe_args(ssh: &str, identity: Option<&str>, known_hosts: &std::path::Path) -> Vec<String> {
    let (mut args, host) = base_args(ssh, identity, known_hosts);
    args.extend([host, "true".into()]);
    args
}

/// Options every ssh run by selves gets, and the host to give last.
fn base_args(
    ssh: &str,
    identity: Option<&str>,
    known_hosts: &std::path::Path,
) -> (Vec<String>, String) {
    let (host, port) = split_target(ssh);
    let mut args: Vec<String> = [
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ServerAliveInterval=10",
        "-o",
        "ServerAliveCountMax=3",
        "-o",
        "ConnectTimeout=15",
        "-o",
        "StrictHostKeyChecking=accept-new",
    ]
    .map(str::to_owned)
    .to_vec();
    args.push("-o".into());
    args.push(format!("UserKnownHostsFile={}", known_hosts.display()));
    if let Ok(config) = std::env::var("SELVES_SSH_CONFIG") {
        args.extend(["-F".into(), config]);
    }
    if let Some(id) = identity {
        args.extend([
            "-i".into(),
            id.to_owned(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
        ]);
    }
    if let Some(port) = port {
        args.extend(["-p".into(), port]);
    }
    (args, host)
}

/// The ssh program: `SELVES_SSH`, else `ssh` on the PATH.
pub fn ssh_program() -> String {
    std::env::var("SELVES_SSH").unwrap_or_else(|_| "ssh".to_owned())
}

/// Where selves keeps the SSH host keys it trusts.
pub fn known_hosts(home: &std::path::Path) -> PathBuf {
    home.join("ssh/known_hosts")
}

pub async fn run(ctx: Arc<Ctx>, name: String, home: PathBuf) {
    let mut stop = ctx.stop.clone();
    let mut backoff = FIRST_BACKOFF;
    let known_hosts = known_hosts(&home);
    if let Some(dir) = known_hosts.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    loop {
        let Some(tunnel) = load(&ctx, &name).await else {
            return;
        };
        let started = Instant::now();
        record(&ctx, &name, "starting", None, true).await;
        let child = spawn(&tunnel, &known_hosts);
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                record(
                    &ctx,
                    &name,
                    "healing",
                    Some(&format!("cannot run ssh: {e}")),
                    false,
                )
                .await;
                tokio::select! {
                    () = tokio::time::sleep(MAX_BACKOFF) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let collect = tokio::spawn(async move {
            let mut text = String::new();
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf).await;
            text.push_str(&String::from_utf8_lossy(&buf));
            text
        });
        let ended = watch_child(&ctx, &tunnel, &mut child, &mut stop).await;
        let stderr = collect.await.unwrap_or_default();
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let (failure, detail) = match ended {
            Ended::Stop => {
                record(&ctx, &name, "stopped", None, false).await;
                return;
            }
            Ended::Zombie => (
                Failure::Dropped,
                "no answer through the tunnel: ssh recycled".to_owned(),
            ),
            Ended::Exited(status) => (classify(&stderr), format!("ssh exited ({status}): {last}")),
        };
        let wait = match failure {
            Failure::Auth => {
                tracing::error!(tunnel = %name, "{detail}");
                record(&ctx, &name, "auth-failed", Some(&detail), false).await;
                // Retrying cannot help: wait for the tunnel to change
                // (the supervisor restarts this task) or the daemon to stop.
                let _ = stop.wait_for(|s| *s).await;
                return;
            }
            Failure::PortBound => Duration::from_secs(1),
            Failure::Dropped if started.elapsed() >= STABLE => {
                backoff = FIRST_BACKOFF;
                Duration::from_millis(200)
            }
            Failure::Dropped | Failure::Network => {
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        tracing::warn!(tunnel = %name, ?failure, retry_in = ?wait, "{detail}");
        record(&ctx, &name, "healing", Some(&detail), false).await;
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

enum Ended {
    Exited(std::process::ExitStatus),
    Zombie,
    Stop,
}

/// Starts `ssh -N` for a tunnel; it dies with this process.
pub(crate) fn spawn(t: &Tunnel, known_hosts: &std::path::Path) -> std::io::Result<Child> {
    let mut cmd = Command::new(ssh_program());
    cmd.args(ssh_args(t, known_hosts))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to send
    // SIGKILL to the child when this process dies.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Waits for the child to exit, checking the tunnel while it runs.
async fn watch_child(
    ctx: &Ctx,
    t: &Tunnel,
    child: &mut Child,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Ended {
    let probe = prober(ctx, t).await;
    let mut strikes = 0;
    let mut up = false;
    let mut next = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let stopping = tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(s) => Ended::Exited(s),
                    Err(_) => Ended::Zombie,
                };
            }
            _ = stop.wait_for(|s| *s) => true,
            () = tokio::time::sleep_until(next) => false,
        };
        if stopping {
            let _ = child.kill().await;
            return Ended::Stop;
        }
        next = tokio::time::Instant::now() + HEALTH_EVERY;
        let healthy = match &probe {
            // Any answer from the peer means the tunnel carries traffic;
            // only silence or a broken connection is a miss.
            Some(client) => {
                match tokio::time::timeout(HEALTH_TIMEOUT, client.changes(u64::MAX)).await {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => e.class() != "network",
                    Err(_) => false,
                }
            }
            // Nothing to ask through it (a reverse tunnel, or no peer on
            // its port): ssh's own keepalives are the check.
            None => true,
        };
        if healthy {
            strikes = 0;
            if !up {
                up = true;
                record(ctx, &t.name, "up", None, false).await;
            }
        } else {
            strikes += 1;
            tracing::warn!(tunnel = %t.name, strikes, "no answer through the tunnel");
            if strikes >= STRIKES {
                let _ = child.kill().await;
                return Ended::Zombie;
            }
        }
    }
}

/// A client for the peer behind a forward tunnel: the remote whose URL is
/// this tunnel's local port on loopback.
async fn prober(ctx: &Ctx, t: &Tunnel) -> Option<PeerClient> {
    if t.kind == "reverse" {
        return None;
    }
    let store = ctx.store.clone();
    let remotes = tokio::task::spawn_blocking(move || store.remotes())
        .await
        .ok()?
        .ok()?;
    let port = format!(":{}", t.local_port);
    let remote = remotes.into_iter().find(|r| {
        (r.url.starts_with("https://127.0.0.1:") || r.url.starts_with("https://localhost:"))
            && r.url.ends_with(&port)
    })?;
    PeerClient::new(target(&remote, &ctx.store)).ok()
}

async fn load(ctx: &Ctx, name: &str) -> Option<Tunnel> {
    let store = ctx.store.clone();
    let name = name.to_owned();
    match tokio::task::spawn_blocking(move || store.tunnels()).await {
        Ok(Ok(all)) => all.into_iter().find(|t| t.name == name),
        _ => None,
    }
}

async fn record(ctx: &Ctx, name: &str, state: &str, detail: Option<&str>, spawned: bool) {
    let store = ctx.store.clone();
    let (name, state, detail) = (name.to_owned(), state.to_owned(), detail.map(str::to_owned));
    let done = tokio::task::spawn_blocking(move || {
        store.tunnel_state(&name, &state, detail.as_deref(), spawned, now_ms())
    })
    .await;
    if let Ok(Err(e)) = done {
        tracing::warn!(error = %e, "cannot record a tunnel's state");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_failures_are_classified_by_what_ssh_says() {
        assert_eq!(
            classify("user@127.0.0.1: Permission denied (publickey)."),
            Failure::Auth
        );
        assert_eq!(classify("Host key verification failed."), Failure::Auth);
        assert_eq!(
            classify("Error: remote port forwarding failed for listen port 8765"),
            Failure::PortBound
        );
        assert_eq!(
            classify(
                "bind [127.0.0.1]:8765: Address already in use\nchannel_setup_fwd_listener_tcpip: cannot listen to port: 8765\nCould not request local forwarding."
            ),
            Failure::PortBound
        );
        assert_eq!(
            classify("ssh: connect to host 127.0.0.1 port 2222: Connection refused"),
            Failure::Network
        );
        assert_eq!(
            classify("ssh: Could not resolve hostname vps: Name or service not known"),
            Failure::Network
        );
        assert_eq!(
            classify("Connection to 127.0.0.1 closed by remote host."),
            Failure::Dropped
        );
        assert_eq!(classify(""), Failure::Dropped);
    }

    #[test]
    fn targets_split_their_port() {
        assert_eq!(
            split_target("me@vps:2222"),
            ("me@vps".into(), Some("2222".into()))
        );
        assert_eq!(split_target("me@vps"), ("me@vps".into(), None));
        assert_eq!(split_target("vps"), ("vps".into(), None));
    }
}
