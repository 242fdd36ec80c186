//! Tunnels through the real `ssh` and `sshd` (installed by `.ci/run`): an
//! sshd on a loopback port with its own host key and authorized key, the
//! daemon keeping `ssh -N -L` up to it. These tests fail, not skip, when
//! sshd is missing: `apt-get install openssh-server openssh-client`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Node, blob_fingerprint, blob_token, wait_until};

pub(crate) struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    user: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    /// The authorised client key.
    pub(crate) fn key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }
    pub(crate) fn target(&self) -> String {
        format!("{}@127.0.0.1:{}", self.user, self.port)
    }
    /// The file sshd reads authorised keys from.
    pub(crate) fn authorized_keys(&self) -> PathBuf {
        self.dir.path().join("authorized_keys")
    }
    /// An empty ssh config, so the user's own is never read.
    pub(crate) fn client_config(&self) -> PathBuf {
        self.dir.path().join("ssh_config")
    }
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (install openssh-client)");
    assert!(ok.success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real sshd on a loopback port, or `None` (with a visible line) on a
/// developer's machine that has none. CI always has one (`.ci/run`
/// installs it): there a missing sshd fails the test.
pub(crate) fn sshd() -> Option<Sshd> {
    let Some(sshd) = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "sshd is not installed: apt-get install openssh-server (see .ci/run)"
        );
        eprintln!("skipping: sshd is not installed (apt-get install openssh-server)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(&d.join("host_key"));
    keygen(&d.join("client_key"));
    std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
    std::fs::write(d.join("ssh_config"), "").unwrap();
    let port = free_port();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
         StrictModes no\nPidFile none\nUsePAM no\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nAllowTcpForwarding yes\nGatewayPorts no\n\
         PermitRootLogin prohibit-password\nLogLevel ERROR\n",
        d.join("host_key").display(),
        d.join("authorized_keys").display()
    );
    std::fs::write(d.join("sshd_config"), config).unwrap();
    // sshd run by root wants its privilege-separation folder.
    let _ = std::fs::create_dir_all("/run/sshd");
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(10, || std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()),
        "sshd did not start"
    );
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    Some(Sshd {
        child,
        port,
        dir,
        user,
    })
}

/// The ssh processes whose parent is `pid`.
fn ssh_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let ppid: u32 = rest
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if ppid == pid && comm.ends_with("(ssh") {
            out.push(child);
        }
    }
    out
}

fn tunnel(node: &Node) -> Value {
    node.json(&["tunnel", "list", "--json"])[0].clone()
}

/// A spoke that reaches `hub` only through a forward tunnel: its peer URL
/// is the tunnel's local port.
fn spoke_behind_tunnel(hub: &Node, hub_port: u16, sshd: &Sshd, key: &Path) -> (Node, u16) {
    let spoke = Node::new("laptop");
    let local = add_hub_behind_tunnel(&spoke, "hub", hub, hub_port, sshd, key);
    (spoke, local)
}

/// Pairs `spoke` with `hub` as `alias` through a new forward tunnel of
/// that name; returns the tunnel's local port.
fn add_hub_behind_tunnel(
    spoke: &Node,
    alias: &str,
    hub: &Node,
    hub_port: u16,
    sshd: &Sshd,
    key: &Path,
) -> u16 {
    let local = free_port();
    let blob = hub.ok(&[
        "invite",
        "--peer",
        &spoke.name,
        "--host",
        "127.0.0.1",
        "--port",
        &hub_port.to_string(),
    ]);
    let fp = blob_fingerprint(blob.trim()).to_string();
    spoke.ok(&[
        "peer",
        "add",
        alias,
        &format!("https://127.0.0.1:{local}"),
        &blob_token(blob.trim()),
        "--cert-fp",
        &fp,
        "--no-check",
    ]);
    spoke.ok(&[
        "tunnel",
        "add",
        alias,
        "--ssh",
        &sshd.target(),
        "--forward",
        &format!("{local}:{hub_port}"),
        "--identity",
        key.to_str().unwrap(),
    ]);
    local
}

/// `selves daemon` on `spoke`, its ssh reading the test's empty config.
pub(crate) fn daemon(spoke: &Node, sshd: &Sshd) -> Child {
    spoke
        .command(&["daemon"])
        .env("SELVES_SSH_CONFIG", sshd.client_config())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(spoke.daemon_stderr())
                .unwrap(),
        )
        .spawn()
        .unwrap()
}

fn hub_has(hub: &Node, n: u64) -> bool {
    hub.rows() >= n
}

#[test]
fn sync_runs_through_the_tunnel_and_a_killed_ssh_is_replaced() {
    let Some(sshd) = sshd() else { return };
    let hub = Node::new("hub");
    let server = hub.serve(&[]);
    let (spoke, _) = spoke_behind_tunnel(&hub, server.addr.port(), &sshd, &sshd.key());
    let mut daemon = daemon(&spoke, &sshd);
    let pid = daemon.id();

    spoke.ok(&[
        "remember",
        "--source",
        "s",
        "--conversation",
        "c",
        "through the tunnel",
    ]);
    assert!(
        wait_until(20, || hub_has(&hub, 1)),
        "nothing arrived through the tunnel\n{}\n{}",
        spoke.daemon_log(),
        tunnel(&spoke)
    );
    assert!(
        wait_until(15, || tunnel(&spoke)["state"] == "up"),
        "{}",
        tunnel(&spoke)
    );
    let first = ssh_children(pid);
    assert_eq!(first.len(), 1, "one ssh per tunnel: {first:?}");

    // SIGKILL the ssh child: a new one within seconds, and sync goes on.
    Command::new("kill")
        .args(["-9", &first[0].to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    assert!(
        wait_until(10, || {
            let now = ssh_children(pid);
            assert!(now.len() <= 1, "two ssh children for one tunnel: {now:?}");
            now.len() == 1 && now[0] != first[0]
        }),
        "no new ssh after the kill\n{}",
        spoke.daemon_log()
    );
    eprintln!("ssh replaced in {:?}", t.elapsed());
    assert_eq!(tunnel(&spoke)["spawns"], 2);
    spoke.ok(&[
        "remember",
        "--source",
        "s",
        "--conversation",
        "c",
        "after the kill",
    ]);
    assert!(
        wait_until(20, || hub_has(&hub, 2)),
        "sync did not resume\n{}",
        spoke.daemon_log()
    );
    let brief = spoke.run(&["status", "--brief"]);
    assert_eq!(brief.stdout, "", "{brief:?}");

    // Stopping the daemon takes its ssh with it.
    let run = crate::harness::terminate(&mut daemon, 20);
    assert_eq!(run.code, 0);
    assert!(wait_until(5, || ssh_children(pid).is_empty()));
}

#[test]
fn a_frozen_ssh_is_found_by_the_health_check_and_recycled() {
    let Some(sshd) = sshd() else { return };
    let hub = Node::new("hub");
    let server = hub.serve(&[]);
    let (spoke, _) = spoke_behind_tunnel(&hub, server.addr.port(), &sshd, &sshd.key());
    let _daemon = KillOnDrop(daemon(&spoke, &sshd));
    let pid = _daemon.0.id();
    assert!(
        wait_until(20, || tunnel(&spoke)["state"] == "up"),
        "{}",
        tunnel(&spoke)
    );
    let frozen = ssh_children(pid);
    assert_eq!(frozen.len(), 1);
    // SIGSTOP: the port still accepts, nothing answers.
    Command::new("kill")
        .args(["-STOP", &frozen[0].to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    assert!(
        wait_until(35, || {
            let now = ssh_children(pid);
            now.len() == 1 && now[0] != frozen[0]
        }),
        "the frozen ssh was not recycled in 35 s\n{}",
        spoke.daemon_log()
    );
    eprintln!("frozen ssh recycled in {:?}", t.elapsed());
    spoke.ok(&[
        "remember",
        "--source",
        "s",
        "--conversation",
        "c",
        "after the freeze",
    ]);
    assert!(
        wait_until(20, || hub_has(&hub, 1)),
        "{}",
        spoke.daemon_log()
    );
}

#[test]
fn a_refused_key_stops_the_tunnel_and_says_so_without_retrying() {
    let Some(sshd) = sshd() else { return };
    let hub = Node::new("hub");
    let server = hub.serve(&[]);
    let wrong = sshd.dir.path().join("wrong_key");
    keygen(&wrong);
    let (spoke, _) = spoke_behind_tunnel(&hub, server.addr.port(), &sshd, &wrong);
    let _daemon = KillOnDrop(daemon(&spoke, &sshd));
    assert!(
        wait_until(15, || tunnel(&spoke)["state"] == "auth-failed"),
        "{}\n{}",
        tunnel(&spoke),
        spoke.daemon_log()
    );
    assert!(
        tunnel(&spoke)["detail"]
            .as_str()
            .unwrap()
            .contains("Permission denied"),
        "{}",
        tunnel(&spoke)
    );
    // No retry loop on a dead key.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(tunnel(&spoke)["spawns"], 1, "{}", tunnel(&spoke));
    let brief = spoke.fails(&["status", "--brief"], 1);
    assert!(
        brief
            .stdout
            .contains("⚠ tunnel hub stopped: ssh was refused"),
        "{brief:?}"
    );
}

#[test]
fn two_tunnels_to_two_hubs_stay_independent() {
    let Some(sshd) = sshd() else { return };
    let a = Node::new("hub-a");
    let server_a = a.serve(&[]);
    let b = Node::new("hub-b");
    let server_b = b.serve(&[]);
    let (spoke, _) = spoke_behind_tunnel(&a, server_a.addr.port(), &sshd, &sshd.key());
    // A second peer and tunnel on the same spoke, to hub b.
    add_hub_behind_tunnel(
        &spoke,
        "hub-b",
        &b,
        server_b.addr.port(),
        &sshd,
        &sshd.key(),
    );
    let daemon = KillOnDrop(daemon(&spoke, &sshd));
    let pid = daemon.0.id();
    spoke.ok(&[
        "remember",
        "--source",
        "s",
        "--conversation",
        "c",
        "to both hubs",
    ]);
    assert!(
        wait_until(20, || hub_has(&a, 1) && hub_has(&b, 1)),
        "{}",
        spoke.daemon_log()
    );
    assert!(wait_until(10, || ssh_children(pid).len() == 2));
    // Killing hub b's server does not disturb the tunnel to a.
    let before: Vec<Value> = spoke
        .json(&["tunnel", "list", "--json"])
        .as_array()
        .unwrap()
        .clone();
    drop(server_b);
    spoke.ok(&[
        "remember",
        "--source",
        "s",
        "--conversation",
        "c",
        "only a hears this",
    ]);
    assert!(wait_until(20, || hub_has(&a, 2)), "{}", spoke.daemon_log());
    let after = spoke.json(&["tunnel", "list", "--json"]);
    assert_eq!(
        after[0]["spawns"], before[0]["spawns"],
        "tunnel a was restarted: {after}"
    );
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
