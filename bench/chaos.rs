//! `bench/run chaos [--cycles N] [--seed N] [--skip WHAT,…] [--restore-with-folder]`:
//! faults injected into real `selves` processes, and what must hold after
//! each one. Nothing is mocked: real processes, real SIGKILL, a real
//! network namespace, a real full disk.
//!
//! Three nodes: a hub serving (`selves serve`) and two spokes `a` and `b`
//! paired to it, each with a two-way share `notes` of a few tens of
//! markdown files. The run:
//!
//! 1. **Kill -9 loop** (`--cycles`, default 1000). Each cycle, on a random
//!    spoke: write memory (`remember`, or `import` of a few rows) and
//!    create, edit or delete a few files; spawn `selves sync hub`, sleep
//!    0–300 ms and SIGKILL it (sometimes with the other spoke syncing at
//!    the same time; one cycle in ten SIGKILLs and restarts the hub's
//!    server instead, or as well). Then `selves check` on the killed node
//!    must pass, every row acknowledged there (exit 0) must be in its
//!    `export`, nothing it exported before may be gone, and no `msg_id` may
//!    appear twice. Every 50 cycles, and after every other part, the nodes
//!    settle (`sync` a, b, a… until `verify` passes on both spokes) and
//!    must agree: the same rows everywhere, exactly the rows ever
//!    acknowledged (less those a restore legitimately took back), each
//!    with the text it was written with; the same files in the three
//!    folders (`SELVES.md` and `.selves-tmp-*` aside; conflict copies
//!    count); and every line a spoke wrote still in a file at its path or
//!    in a conflict copy of it, unless a later edit that had seen it
//!    replaced it, or a deletion that had seen it removed it.
//! 2. **Partitions** (root and iproute2): the hub runs inside a network
//!    namespace reached through a veth pair; a partition is an nftables
//!    drop rule inside the namespace, or, without `nft`, the namespace's
//!    end of the veth set down. During one, local writes must succeed,
//!    `selves sync` must fail (non-zero) within a bounded time and
//!    `selves status --brief` must not be silent; then heal and converge.
//! 3. **Disk full** (root): spoke `b`'s home lives on a 32 MiB tmpfs,
//!    filled up with a filler file: `remember` must fail saying the disk is
//!    full, `status`, `search`, `export` and `check` must still work, a sync
//!    that would pull rows must fail cleanly (no panic); then the filler
//!    goes and everything converges.
//! 4. **Restores**: copies of a spoke's home (`cp -a`, right after a
//!    SIGKILL, so crash-consistent) are put back later (`rm -rf` the home,
//!    `cp -a` the copy), new rows written, synced: every row the hub held
//!    before the restore must still be on the hub and come back to the
//!    spoke, the new rows must reach the hub. Rows written on the spoke
//!    after the copy that never reached the hub are legitimately gone.
//!    ARCHITECTURE.md: a home recovers by itself from one fork of its own
//!    log per stream a day, a second is a clash; so each spoke's first
//!    restore writes before it syncs (the README's sequence, which forks),
//!    and later ones sync first. `--restore-with-folder` puts the spoke's
//!    share folder back from the same moment too (a machine snapshot).
//! 5. **Hostile peer**: a peer with a token of its own sends a few hundred
//!    malformed and hostile requests to the hub (bad JSON, wrong types,
//!    huge declared lengths, oversized bodies, garbage, forged batches,
//!    wrong sequence numbers, unknown paths, hellos with wrong keys,
//!    unknown tokens…). No answer may be a 5xx, the hub must stay up and
//!    answering, the spokes must still converge, and nothing it sent may
//!    appear in any node's memory or folder.
//!
//! Exit status 0 when everything held; 1, with what was found, otherwise.
//! Parts 2 and 3 need root (`ip netns`, `mount`) and iproute2 (and
//! nftables for the drop rule: `apt-get install iproute2 nftables`); without
//! them they are skipped, saying so. The run installs nothing. Namespaces,
//! veths, nft tables and mounts are removed when it ends, however it ends
//! (also on a panic or Ctrl-C), and any left by a run that was killed are
//! removed by the next one.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use selves_wire::sign::{self, Digest, NodeKey};
use selves_wire::{NodeId, StreamName};
use serde_json::{Value, json};

use crate::{Node, Rng, Server, WORDS};

/// The parts `--skip` takes.
pub(crate) const PARTS: &[&str] = &["partitions", "disk-full", "restores", "hostile"];

pub(crate) struct Options {
    pub(crate) cycles: usize,
    pub(crate) seed: Option<u64>,
    pub(crate) skip: Vec<String>,
    pub(crate) restore_folder: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            cycles: 1000,
            seed: None,
            skip: Vec::new(),
            restore_folder: false,
        }
    }
}

/// A failed expectation: what was found, in words.
type Check<T = ()> = Result<T, String>;

/// Longest a `selves` command may take before the run calls it hung.
/// The hostile probe whose rows are taken by design (see its use).
const LEGACY_PROBE: &str = "records of a made-up legacy node";
const HUNG: Duration = Duration::from_secs(180);
/// Settle every this many cycles.
const SETTLE_EVERY: usize = 50;
/// The share's files: a spoke creates, edits and deletes only these.
const DIRS: &[&str] = &["", "proj/", "proj/deep/"];
const PER_DIR: usize = 8;
const HUB: usize = 2;

pub(crate) fn run(selves: &Path, dir: &Path, opts: &Options) -> i32 {
    install_cleanup();
    sweep_stale();
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!(
        "chaos: {} cycles, seed {seed} (`--seed {seed}` repeats the choices)",
        opts.cycles
    );
    let started = Instant::now();
    let mut chaos = match Chaos::setup(selves, dir, opts, seed) {
        Ok(c) => c,
        Err(e) => {
            println!("chaos: FAIL during setup: {e}");
            return 1;
        }
    };
    let result = chaos.run_all();
    let code = chaos.report(started, result);
    drop(chaos);
    code
}

// ---------------------------------------------------------------------------
// Cleanup that runs however the run ends: the release profile aborts on
// panic (no unwinding, so no Drop), hence a registry the panic hook and the
// signal handler run too.

enum Undo {
    Kill(i32),
    Cmd(Vec<String>),
}

static UNDO: Mutex<Vec<(u64, Undo)>> = Mutex::new(Vec::new());
static UNDO_IDS: AtomicU64 = AtomicU64::new(1);
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

fn undo_push(u: Undo) -> u64 {
    let id = UNDO_IDS.fetch_add(1, Ordering::Relaxed);
    UNDO.lock().unwrap().push((id, u));
    id
}

/// Runs and forgets the undo `id`.
fn undo_now(id: u64) {
    let u = {
        let mut list = UNDO.lock().unwrap();
        list.iter()
            .position(|(i, _)| *i == id)
            .map(|p| list.remove(p).1)
    };
    if let Some(u) = u {
        undo_run(&u);
    }
}

/// Forgets the undo `id` without running it.
fn undo_forget(id: u64) {
    UNDO.lock().unwrap().retain(|(i, _)| *i != id);
}

fn undo_run(u: &Undo) {
    match u {
        Undo::Kill(pid) => {
            // SAFETY: kill(2) on a process this run started.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        Undo::Cmd(argv) => {
            let _ = Command::new(&argv[0])
                .args(&argv[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Everything registered, newest first (processes before the namespace
/// they run in, the namespace before the mount).
fn undo_all() {
    let list = match UNDO.try_lock() {
        Ok(mut l) => std::mem::take(&mut *l),
        Err(_) => return,
    };
    for (_, u) in list.iter().rev() {
        undo_run(u);
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the buffer is static.
        unsafe {
            libc::write(fd, b"x".as_ptr().cast(), 1);
        }
    }
}

fn install_cleanup() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        eprintln!("chaos: panicked; cleaning up namespaces and mounts");
        undo_all();
    }));
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
    let read_end = fds[0];
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        // SAFETY: reading one byte into a local buffer.
        let n = unsafe { libc::read(read_end, b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            eprintln!("chaos: interrupted; cleaning up namespaces and mounts");
            undo_all();
            std::process::exit(130);
        }
    });
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installing a handler that only writes to a pipe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Namespaces and mounts left by chaos runs that were SIGKILLed.
fn sweep_stale() {
    let alive = |pid: &str| Path::new(&format!("/proc/{pid}")).exists();
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if let Some(pid) = name.strip_prefix("selves-chaos-")
                && !alive(pid)
            {
                if let Ok(p) = Command::new("ip").args(["netns", "pids", name]).output() {
                    for pid in String::from_utf8_lossy(&p.stdout).split_whitespace() {
                        if let Ok(pid) = pid.parse::<i32>() {
                            undo_run(&Undo::Kill(pid));
                        }
                    }
                }
                println!("chaos: removing network namespace {name} left by an earlier run");
                undo_run(&Undo::Cmd(vec![
                    "ip".into(),
                    "netns".into(),
                    "del".into(),
                    name.into(),
                ]));
            }
        }
    }
    if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
        for line in mounts.lines() {
            let Some(point) = line.split_whitespace().nth(1) else {
                continue;
            };
            if let Some((_, rest)) = point.split_once("/selves-bench-")
                && let Some(pid) = rest.split('/').next()
                && point.ends_with("/b-fs")
                && !alive(pid)
            {
                println!("chaos: unmounting {point} left by an earlier run");
                undo_run(&Undo::Cmd(vec!["umount".into(), "-l".into(), point.into()]));
            }
        }
    }
}

fn sh(argv: &[&str]) -> Check<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", argv.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "`{}` failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The hub's network namespace and the veth pair to it.
struct Netns {
    name: String,
    ns_if: String,
    host_ip: String,
    ns_ip: String,
    nft: bool,
    /// While cut off: whether by drop rules (else the link is down).
    partitioned: Option<bool>,
    undo: Vec<u64>,
}

impl Netns {
    fn create() -> Check<Netns> {
        let pid = std::process::id();
        let octet = 20 + pid % 200;
        let mut ns = Netns {
            name: format!("selves-chaos-{pid}"),
            ns_if: format!("vch{}n", pid % 10_000_000),
            host_ip: format!("10.77.{octet}.1"),
            ns_ip: format!("10.77.{octet}.2"),
            nft: false,
            partitioned: None,
            undo: Vec::new(),
        };
        let host_if = format!("vch{}h", pid % 10_000_000);
        // Undone newest first: the veth (if it is still on this side), then
        // the namespace (which takes its end of the veth and any nft table
        // with it).
        ns.undo.push(undo_push(Undo::Cmd(vec![
            "ip".into(),
            "netns".into(),
            "del".into(),
            ns.name.clone(),
        ])));
        ns.undo.push(undo_push(Undo::Cmd(vec![
            "ip".into(),
            "link".into(),
            "del".into(),
            host_if.clone(),
        ])));
        let (n, hi, ni) = (ns.name.clone(), host_if.clone(), ns.ns_if.clone());
        let host_cidr = format!("{}/24", ns.host_ip);
        let ns_cidr = format!("{}/24", ns.ns_ip);
        for argv in [
            vec!["ip", "netns", "add", &n],
            vec![
                "ip", "link", "add", &hi, "type", "veth", "peer", "name", &ni,
            ],
            vec!["ip", "link", "set", &ni, "netns", &n],
            vec!["ip", "addr", "add", &host_cidr, "dev", &hi],
            vec!["ip", "link", "set", &hi, "up"],
            vec![
                "ip", "netns", "exec", &n, "ip", "addr", "add", &ns_cidr, "dev", &ni,
            ],
            vec!["ip", "netns", "exec", &n, "ip", "link", "set", &ni, "up"],
            vec!["ip", "netns", "exec", &n, "ip", "link", "set", "lo", "up"],
        ] {
            sh(&argv)?;
        }
        ns.nft = sh(&["ip", "netns", "exec", &n, "nft", "--version"]).is_ok();
        Ok(ns)
    }

    fn how(&self) -> &'static str {
        if self.nft {
            "nftables drop rules in the hub's namespace, and its end of the veth set down, in turn"
        } else {
            "the hub's end of the veth set down (no nft here for drop rules)"
        }
    }

    /// Cuts the hub off: with `drop`, an nftables rule in the hub's
    /// namespace silently drops everything on its veth (a firewall; peers
    /// time out); otherwise its end of the veth goes down (a cable pulled;
    /// peers find no route).
    fn partition(&mut self, drop: bool) -> Check {
        if self.partitioned.is_some() {
            return Ok(());
        }
        let n = self.name.clone();
        let iface = self.ns_if.clone();
        let drop = drop && self.nft;
        if drop {
            for rule in [
                "add table inet chaos",
                "add chain inet chaos input { type filter hook input priority 0 ; policy accept ; }",
                "add chain inet chaos output { type filter hook output priority 0 ; policy accept ; }",
            ] {
                let mut argv = vec!["ip", "netns", "exec", &n, "nft"];
                argv.extend(rule.split(' '));
                sh(&argv)?;
            }
            sh(&[
                "ip", "netns", "exec", &n, "nft", "add", "rule", "inet", "chaos", "input",
                "iifname", &iface, "drop",
            ])?;
            sh(&[
                "ip", "netns", "exec", &n, "nft", "add", "rule", "inet", "chaos", "output",
                "oifname", &iface, "drop",
            ])?;
        } else {
            sh(&[
                "ip", "netns", "exec", &n, "ip", "link", "set", &iface, "down",
            ])?;
        }
        self.partitioned = Some(drop);
        Ok(())
    }

    fn heal(&mut self) -> Check {
        let Some(drop) = self.partitioned else {
            return Ok(());
        };
        let n = self.name.clone();
        if drop {
            sh(&[
                "ip", "netns", "exec", &n, "nft", "delete", "table", "inet", "chaos",
            ])?;
        } else {
            let iface = self.ns_if.clone();
            sh(&["ip", "netns", "exec", &n, "ip", "link", "set", &iface, "up"])?;
        }
        self.partitioned = None;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for id in self.undo.drain(..).rev() {
            undo_now(id);
        }
    }
}

/// A tmpfs mounted for the run.
struct Tmpfs {
    dir: PathBuf,
    undo: u64,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Check<Tmpfs> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let d = dir.to_str().unwrap();
        let undo = undo_push(Undo::Cmd(vec!["umount".into(), "-l".into(), d.into()]));
        if let Err(e) = sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            d,
        ]) {
            undo_forget(undo);
            return Err(e);
        }
        Ok(Tmpfs {
            dir: dir.to_owned(),
            undo,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        undo_now(self.undo);
    }
}

// ---------------------------------------------------------------------------
// The nodes.

struct Hub {
    node: Node,
    folder: PathBuf,
    server: Option<Server>,
    undo: u64,
    netns: Option<String>,
    /// The address spokes dial (and the server listens on).
    ip: String,
    port: u16,
    stderr: PathBuf,
}

impl Hub {
    fn start(&mut self) -> Check {
        let listen = format!("{}:{}", self.ip, self.port);
        let mut last = String::new();
        // After a SIGKILL the port is free at once (SO_REUSEADDR); retry a
        // little in case it is not.
        for _ in 0..20 {
            let stderr = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.stderr)
                .map_err(|e| e.to_string())?;
            match self
                .node
                .serve_at(self.netns.as_deref(), &listen, stderr.into())
            {
                Ok(server) => {
                    self.port = server.port;
                    self.undo = undo_push(Undo::Kill(server.child.id() as i32));
                    self.server = Some(server);
                    return Ok(());
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!("the hub's server does not start again: {last}"))
    }

    /// SIGKILL, and wait for it.
    fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe {
                libc::kill(server.child.id() as i32, libc::SIGKILL);
            }
            let _ = server.child.wait();
            undo_forget(self.undo);
        }
    }

    /// Err if the server ended by itself.
    fn alive(&mut self) -> Check {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        if let Ok(Some(status)) = server.child.try_wait() {
            let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            self.server = None;
            return Err(format!(
                "the hub's server ended by itself ({status}); the end of its stderr:\n{tail}"
            ));
        }
        Ok(())
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Backup {
    home: PathBuf,
    folder: Option<PathBuf>,
    /// What the home's export held when it was copied.
    keys: BTreeSet<String>,
    cycle: usize,
}

struct Spoke {
    node: Node,
    folder: PathBuf,
    backups: Vec<Backup>,
    /// Whether this home already recovered from a fork of its own log.
    recovered: bool,
}

/// One command's outcome.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    secs: f64,
}

impl Out {
    fn show(&self) -> String {
        let code = self
            .code
            .map_or_else(|| "a signal".to_owned(), |c| c.to_string());
        format!(
            "exit {code} after {:.1} s; stdout: {}; stderr: {}",
            self.secs,
            clip(self.stdout.trim(), 600),
            clip(self.stderr.trim(), 600)
        )
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_owned();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What was written and must be found.
struct RowSpec {
    source: String,
    conversation: String,
    text: String,
}

/// Lines a node wrote into a file that must survive somewhere.
struct Obligation {
    who: String,
    cycle: usize,
    lines: Vec<String>,
}

#[derive(Default)]
struct Model {
    rows: BTreeMap<String, RowSpec>,
    /// Rows that must be on every node once settled.
    expected: BTreeSet<String>,
    /// Rows a restore may have taken back (written on a spoke after its
    /// backup, not seen on the hub before the restore).
    maybe: BTreeSet<String>,
    /// Per node (a, b, hub): rows acknowledged there.
    acked: [BTreeSet<String>; 3],
    /// Per node: rows its last export held (an export only grows).
    seen: [BTreeSet<String>; 3],
    obligations: BTreeMap<String, Vec<Obligation>>,
}

#[derive(Default)]
struct Counts {
    cycles: usize,
    syncs_killed: usize,
    killed_mid_run: usize,
    killed_after_exit: usize,
    concurrent_syncs: usize,
    hub_kills: usize,
    hub_kill_syncs_waited: usize,
    hub_kill_syncs_failed: usize,
    partitions: usize,
    partition_cut_mid_sync: usize,
    partition_codes: BTreeMap<i32, usize>,
    partition_fail_secs: Vec<f64>,
    disk_full: usize,
    disk_full_notes: Vec<String>,
    backups: usize,
    restores: usize,
    restore_notes: Vec<String>,
    rows_gone_with_restores: usize,
    hostile_requests: usize,
    hostile_statuses: BTreeMap<String, usize>,
    hostile_5xx: usize,
    hostile_notes: Vec<String>,
    remembers: usize,
    imports: usize,
    rows_written: usize,
    row_checks: u64,
    file_ops: BTreeMap<&'static str, usize>,
    file_checks: u64,
    conflict_copies: usize,
    settles: usize,
    settle_syncs: usize,
    settle_syncs_max: usize,
    checks: usize,
    final_rows: usize,
    final_files: usize,
    losses: usize,
    duplicates: usize,
    notes: Vec<String>,
}

enum Event {
    Partition(usize),
    DiskFull,
    Restore(usize),
    Hostile,
}

struct Chaos {
    // Dropped in this order: the hub's server, then the namespace it ran
    // in, then the tmpfs.
    hub: Hub,
    spokes: Vec<Spoke>,
    netns: Option<Netns>,
    tmpfs: Option<Tmpfs>,
    dir: PathBuf,
    rng: Rng,
    seed: u64,
    cycles: usize,
    restore_folder: bool,
    events: Vec<(usize, Event)>,
    skipped: Vec<String>,
    m: Model,
    c: Counts,
    log: std::fs::File,
    cycle: usize,
    phase: &'static str,
    next_id: u64,
    pool: Vec<String>,
    /// Failures that did not stop the run (a restore that broke a spoke,
    /// hostile rows taken in): each makes the run fail at its end.
    findings: Vec<String>,
    restores_stopped: bool,
    replaced: usize,
}

fn pool() -> Vec<String> {
    DIRS.iter()
        .flat_map(|d| (0..PER_DIR).map(move |i| format!("{d}n{i}.md")))
        .collect()
}

/// `proj/n3.conflict-a-20261122-103500.md` → `proj/n3.md`.
fn conflict_base(path: &str) -> Option<String> {
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (format!("{d}/"), n),
        None => (String::new(), path),
    };
    let at = name.find(".conflict-")?;
    let ext = name.rsplit_once('.').map(|(_, e)| e)?;
    Some(format!("{dir}{}.{ext}", &name[..at]))
}

impl Chaos {
    fn setup(selves: &Path, dir: &Path, opts: &Options, seed: u64) -> Check<Chaos> {
        let skip = |p: &str| opts.skip.iter().any(|s| s == p);
        let mut skipped = Vec::new();
        let netns = if skip("partitions") {
            skipped.push("partitions: skipped (--skip)".to_owned());
            None
        } else if !is_root() {
            skipped.push("partitions: skipped (needs root and ip netns)".to_owned());
            None
        } else {
            match Netns::create() {
                Ok(n) => Some(n),
                Err(e) => {
                    skipped.push(format!(
                        "partitions: skipped (needs root and ip netns): {e}"
                    ));
                    None
                }
            }
        };
        let tmpfs = if skip("disk-full") {
            skipped.push("disk full: skipped (--skip)".to_owned());
            None
        } else if !is_root() {
            skipped.push("disk full: skipped (needs root to mount a tmpfs)".to_owned());
            None
        } else {
            match Tmpfs::mount(&dir.join("b-fs"), "32m") {
                Ok(t) => Some(t),
                Err(e) => {
                    skipped.push(format!("disk full: skipped (cannot mount a tmpfs): {e}"));
                    None
                }
            }
        };
        if skip("restores") {
            skipped.push("restores: skipped (--skip)".to_owned());
        }
        if skip("hostile") {
            skipped.push("hostile peer: skipped (--skip)".to_owned());
        }
        for s in &skipped {
            println!("{s}");
        }
        if let Some(n) = &netns {
            println!(
                "hub in network namespace {} at {} (partitions: {})",
                n.name,
                n.ns_ip,
                n.how()
            );
        }
        if let Some(t) = &tmpfs {
            println!("spoke b's home on a 32 MiB tmpfs at {}", t.dir.display());
        }

        let log = std::fs::File::create(dir.join("chaos.log")).map_err(|e| e.to_string())?;
        let hub_node = Node::new(selves, dir, "hub");
        let hub_folder = dir.join("hub-notes");
        let mut chaos = Chaos {
            hub: Hub {
                node: hub_node,
                folder: hub_folder.clone(),
                server: None,
                undo: 0,
                netns: netns.as_ref().map(|n| n.name.clone()),
                ip: netns
                    .as_ref()
                    .map_or_else(|| "127.0.0.1".to_owned(), |n| n.ns_ip.clone()),
                port: 0,
                stderr: dir.join("hub.stderr"),
            },
            spokes: Vec::new(),
            netns,
            tmpfs,
            dir: dir.to_owned(),
            rng: Rng(seed | 1),
            seed,
            cycles: opts.cycles,
            restore_folder: opts.restore_folder,
            events: Vec::new(),
            skipped,
            m: Model::default(),
            c: Counts::default(),
            log,
            cycle: 0,
            phase: "setup",
            next_id: 0,
            pool: pool(),
            findings: Vec::new(),
            restores_stopped: false,
            replaced: 0,
        };
        // The hub's folder starts with a dozen notes.
        std::fs::create_dir_all(&hub_folder).map_err(|e| e.to_string())?;
        for p in chaos.pool.clone().iter().step_by(2) {
            let text = chaos.fresh_content(p, "hub");
            chaos.write_file(&hub_folder, p, Some(&text))?;
            chaos.obliged(p, None, Some(&text), "hub");
        }
        chaos
            .hub
            .node
            .ok(&["share", "add", "notes", hub_folder.to_str().unwrap()]);
        chaos.hub.start()?;
        let b_dir = chaos
            .tmpfs
            .as_ref()
            .map_or_else(|| dir.to_owned(), |t| t.dir.clone());
        for (name, base) in [("a", dir), ("b", b_dir.as_path())] {
            let node = Node::new(selves, base, name);
            node.pair_at(&chaos.hub.node, &chaos.hub.ip, chaos.hub.port);
            let folder = dir.join(format!("{name}-notes"));
            std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
            node.ok(&["share", "add", "notes", folder.to_str().unwrap()]);
            chaos.spokes.push(Spoke {
                node,
                folder,
                backups: Vec::new(),
                recovered: false,
            });
        }

        // When the other parts happen.
        let n = opts.cycles.max(1);
        if chaos.netns.is_some() {
            let rounds = (n / 100).clamp(1, 10);
            for r in 0..rounds {
                chaos
                    .events
                    .push((n * (2 * r + 1) / (2 * rounds), Event::Partition(r + 1)));
            }
        }
        if chaos.tmpfs.is_some() {
            chaos.events.push((n * 35 / 100, Event::DiskFull));
        }
        if !skip("restores") {
            let restores = (n / 100).clamp(2, 6);
            for r in 0..restores {
                chaos.events.push((
                    n * (15 + 75 * r / restores) / 100 + 3,
                    Event::Restore(r + 1),
                ));
            }
        }
        if !skip("hostile") {
            chaos.events.push((n * 55 / 100, Event::Hostile));
        }
        chaos.events.sort_by_key(|(at, _)| *at);
        Ok(chaos)
    }

    fn name(&self, who: usize) -> &str {
        if who == HUB {
            "hub"
        } else {
            &self.spokes[who].node.name
        }
    }

    fn node(&self, who: usize) -> &Node {
        if who == HUB {
            &self.hub.node
        } else {
            &self.spokes[who].node
        }
    }

    fn logln(&mut self, line: &str) {
        let _ = writeln!(
            self.log,
            "[{:7.1}s {} {}] {line}",
            self.started().elapsed().as_secs_f64(),
            self.cycle,
            self.phase
        );
    }

    fn note(&mut self, line: String) {
        self.logln(&format!("NOTE {line}"));
        self.c.notes.push(format!("cycle {}: {line}", self.cycle));
    }

    // -----------------------------------------------------------------------
    // Commands.

    fn command(&self, who: usize, args: &[&str]) -> Command {
        let mut c = self.node(who).cmd(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs a command to its end (HUNG at most); Err if it panicked, died
    /// of a signal or hung. Its exit code is the caller's to judge.
    fn exec(&mut self, who: usize, args: &[&str]) -> Check<Out> {
        let child = self
            .command(who, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot spawn selves: {e}"))?;
        let out = finish(child, Instant::now(), HUNG)
            .map_err(|e| format!("`selves {}` on {}: {e}", args.join(" "), self.name(who)))?;
        self.sane(who, args, &out, false)?;
        Ok(out)
    }

    /// Runs a command that must exit 0.
    fn ok(&mut self, who: usize, args: &[&str]) -> Check<Out> {
        let out = self.exec(who, args)?;
        if out.code != Some(0) {
            return Err(format!(
                "`selves {}` on {} failed: {}",
                args.join(" "),
                self.name(who),
                out.show()
            ));
        }
        Ok(out)
    }

    /// No panic, and no signal unless this run sent it.
    fn sane(&mut self, who: usize, args: &[&str], out: &Out, killed: bool) -> Check {
        if out.stderr.contains("panicked") || (out.code.is_none() && !killed) {
            return Err(format!(
                "`selves {}` on {} crashed: {}",
                args.join(" "),
                self.name(who),
                out.show()
            ));
        }
        Ok(())
    }

    fn spawn(&self, who: usize, args: &[&str]) -> Check<Child> {
        self.command(who, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot spawn selves: {e}"))
    }

    fn check(&mut self, who: usize) -> Check {
        let out = self.exec(who, &["check"])?;
        self.c.checks += 1;
        if out.code != Some(0) || !out.stdout.starts_with("ok") {
            return Err(format!(
                "integrity: `selves check` on {} failed: {}",
                self.name(who),
                out.show()
            ));
        }
        Ok(())
    }

    /// `export` on `who`, checked against the model: no duplicate, no row
    /// nobody wrote, each row as written, nothing it exported before gone,
    /// every row acknowledged on it present.
    fn export(&mut self, who: usize) -> Check<BTreeSet<String>> {
        let out = self.ok(who, &["export"])?;
        let name = self.name(who).to_owned();
        let mut keys = BTreeSet::new();
        for line in out.stdout.lines() {
            let v: Value = serde_json::from_str(line).map_err(|e| {
                format!(
                    "{name}'s export printed a line that is not JSON ({e}): {}",
                    clip(line, 300)
                )
            })?;
            let id = v["msg_id"].as_str().unwrap_or("").to_owned();
            let Some(spec) = self.m.rows.get(&id) else {
                if line.contains("MALLORY") {
                    return Err(format!(
                        "the hostile peer's text is in {name}'s memory: {}",
                        clip(line, 300)
                    ));
                }
                return Err(format!(
                    "a row nobody wrote is in {name}'s export: {}",
                    clip(line, 300)
                ));
            };
            if v["source"] != spec.source.as_str()
                || v["conversation_id"] != spec.conversation.as_str()
                || v["text"] != spec.text.as_str()
            {
                return Err(format!(
                    "row {id} on {name} is not what was written ({:?} in {}/{}): {}",
                    spec.text,
                    spec.source,
                    spec.conversation,
                    clip(line, 400)
                ));
            }
            if !keys.insert(id.clone()) {
                self.c.duplicates += 1;
                return Err(format!(
                    "duplicate: msg_id {id} appears twice in {name}'s export"
                ));
            }
        }
        self.c.row_checks += keys.len() as u64;
        let gone: Vec<&String> = self.m.seen[who].difference(&keys).collect();
        if !gone.is_empty() {
            self.c.losses += gone.len();
            return Err(format!(
                "loss: {} rows {name} exported before are gone from its export (first: {})",
                gone.len(),
                show_ids(&gone)
            ));
        }
        let missing: Vec<&String> = self.m.acked[who].difference(&keys).collect();
        if !missing.is_empty() {
            self.c.losses += missing.len();
            return Err(format!(
                "loss: {} rows acknowledged on {name} are not in its export (first: {})",
                missing.len(),
                show_ids(&missing)
            ));
        }
        self.m.seen[who] = keys.clone();
        Ok(keys)
    }

    // -----------------------------------------------------------------------
    // Writing.

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn words(&mut self, lo: usize, hi: usize) -> String {
        let n = self.rng.range(lo, hi);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(WORDS[self.rng.range(0, WORDS.len())]);
        }
        out.join(" ")
    }

    /// Writes memory on `who`: one `remember`, or an `import` of 1–5 rows.
    /// Returns the rows acknowledged. A refusal is a failure.
    fn write_memory(&mut self, who: usize) -> Check<Vec<String>> {
        let me = self.name(who).to_owned();
        let mut ids = Vec::new();
        if self.rng.range(0, 10) < 7 {
            let id = format!("{me}-{}", self.fresh_id());
            let conv = format!("conv-{}", self.rng.range(0, 7));
            let text = format!("chaos {id} {}", self.words(2, 18));
            self.ok(
                who,
                &[
                    "remember",
                    "--source",
                    "chaos",
                    "--conversation",
                    &conv,
                    "--msg-id",
                    &id,
                    &text,
                ],
            )?;
            self.c.remembers += 1;
            self.m.rows.insert(
                id.clone(),
                RowSpec {
                    source: "chaos".into(),
                    conversation: conv,
                    text,
                },
            );
            ids.push(id);
            self.acked_rows(who, &ids);
            Ok(ids)
        } else {
            let n = self.rng.range(1, 6);
            self.import_rows(who, n, 40)
        }
    }

    /// `import` of `n` new rows of up to `words` words on `who`.
    fn import_rows(&mut self, who: usize, n: usize, words: usize) -> Check<Vec<String>> {
        let me = self.name(who).to_owned();
        let mut ids = Vec::new();
        {
            let mut lines = String::new();
            let mut specs = Vec::new();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            for k in 0..n {
                let id = format!("{me}-{}", self.fresh_id());
                let conv = format!("imp-{}", self.rng.range(0, 5));
                let text = format!("imported {id} {}", self.words(3, words));
                let row = json!({
                    "source": "chaos-import",
                    "conversation_id": conv,
                    "msg_id": id,
                    "role": if k % 2 == 0 { "user" } else { "assistant" },
                    "sender": "me",
                    "text": text,
                    "ts": now,
                    "metadata": "{\"bench\":\"chaos\"}",
                    "conversation": {"title": format!("imported {conv}"), "first_ts": now - 100, "last_ts": now},
                });
                lines.push_str(&row.to_string());
                lines.push('\n');
                specs.push((id, conv, text));
            }
            let file = self.dir.join(format!("import-{me}.jsonl"));
            std::fs::write(&file, lines).map_err(|e| e.to_string())?;
            self.ok(who, &["import", file.to_str().unwrap()])?;
            self.c.imports += 1;
            for (id, conv, text) in specs {
                self.m.rows.insert(
                    id.clone(),
                    RowSpec {
                        source: "chaos-import".into(),
                        conversation: conv,
                        text,
                    },
                );
                ids.push(id);
            }
        }
        self.acked_rows(who, &ids);
        Ok(ids)
    }

    /// Rows `who` acknowledged: they must never be lost.
    fn acked_rows(&mut self, who: usize, ids: &[String]) {
        self.c.rows_written += ids.len();
        for id in ids {
            self.m.acked[who].insert(id.clone());
            self.m.expected.insert(id.clone());
        }
        let me = self.name(who).to_owned();
        self.logln(&format!("{me}: wrote rows {}", ids.join(" ")));
    }

    fn fresh_line(&mut self, who: &str) -> String {
        let id = self.fresh_id();
        let words = self.words(1, 10);
        format!("- {who} c{} L{id}: {words}", self.cycle)
    }

    fn fresh_content(&mut self, path: &str, who: &str) -> String {
        let id = self.fresh_id();
        let mut text = format!("# {path} by {who} (L{id})\n\n");
        for _ in 0..self.rng.range(1, 5) {
            text.push_str(&self.fresh_line(who));
            text.push('\n');
        }
        text
    }

    fn write_file(&self, folder: &Path, path: &str, content: Option<&str>) -> Check {
        let full = folder.join(path);
        match content {
            Some(c) => {
                std::fs::create_dir_all(full.parent().unwrap()).map_err(|e| e.to_string())?;
                std::fs::write(&full, c)
                    .map_err(|e| format!("cannot write {}: {e}", full.display()))
            }
            None => std::fs::remove_file(&full)
                .map_err(|e| format!("cannot delete {}: {e}", full.display())),
        }
    }

    /// Notes that `who` changed `path` from `before` to `after` (None:
    /// absent). What it had on disk it has seen: obligations whose lines
    /// it held there are settled by this change; the new content is one.
    fn obliged(&mut self, path: &str, before: Option<&str>, after: Option<&str>, who: &str) {
        let had: HashSet<&str> = before.map(|b| b.lines().collect()).unwrap_or_default();
        let list = self.m.obligations.entry(path.to_owned()).or_default();
        list.retain(|o| !o.lines.iter().all(|l| had.contains(l.as_str())));
        if let Some(c) = after {
            list.push(Obligation {
                who: who.to_owned(),
                cycle: self.cycle,
                lines: c
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect(),
            });
        }
    }

    /// 1–3 creations, edits or deletions in spoke `s`'s folder, and now
    /// and then a conflict copy read and deleted (tidying up).
    fn file_ops(&mut self, s: usize) -> Check {
        let folder = self.spokes[s].folder.clone();
        let me = self.name(s).to_owned();
        if self.rng.range(0, 6) == 0 {
            let files = tree(&folder)?;
            let copies: Vec<&String> = files
                .keys()
                .filter(|p| conflict_base(p).is_some())
                .collect();
            if !copies.is_empty() {
                let copy = copies[self.rng.range(0, copies.len())].clone();
                let base = conflict_base(&copy).unwrap();
                self.write_file(&folder, &copy, None)?;
                // What it held was seen, and let go: an obligation with
                // lines that were only there is settled.
                let gone: HashSet<&str> = files[&copy].lines().collect();
                let left: HashSet<&str> = files
                    .iter()
                    .filter(|(p, _)| {
                        **p != copy && (**p == base || conflict_base(p).as_deref() == Some(&base))
                    })
                    .flat_map(|(_, c)| c.lines())
                    .collect();
                if let Some(list) = self.m.obligations.get_mut(&base) {
                    list.retain(|o| {
                        o.lines.iter().all(|l| left.contains(l.as_str()))
                            || !o
                                .lines
                                .iter()
                                .any(|l| gone.contains(l.as_str()) && !left.contains(l.as_str()))
                    });
                }
                *self.c.file_ops.entry("delete a conflict copy").or_default() += 1;
                self.logln(&format!("{me}: delete {copy}"));
            }
        }
        for _ in 0..self.rng.range(1, 4) {
            let present: Vec<String> = self
                .pool
                .iter()
                .filter(|p| folder.join(p).is_file())
                .cloned()
                .collect();
            let absent: Vec<String> = self
                .pool
                .iter()
                .filter(|p| !folder.join(p).exists())
                .cloned()
                .collect();
            let roll = self.rng.range(0, 100);
            let op = if present.len() < 6 || (roll < 20 && !absent.is_empty()) {
                "create"
            } else if roll < 50 {
                "append"
            } else if roll < 65 {
                "insert"
            } else if roll < 85 {
                "rewrite"
            } else if present.len() > 8 {
                "delete"
            } else {
                "append"
            };
            let pick = |rng: &mut Rng, v: &[String]| v[rng.range(0, v.len())].clone();
            let (path, before) = if op == "create" {
                if absent.is_empty() {
                    continue;
                }
                (pick(&mut self.rng, &absent), None)
            } else {
                let p = pick(&mut self.rng, &present);
                let text = std::fs::read_to_string(folder.join(&p))
                    .map_err(|e| format!("cannot read {p} on {me}: {e}"))?;
                (p, Some(text))
            };
            let after = match op {
                "create" | "rewrite" => Some(self.fresh_content(&path, &me)),
                "append" => {
                    let mut t = before.clone().unwrap();
                    if !t.is_empty() && !t.ends_with('\n') {
                        t.push('\n');
                    }
                    t.push_str(&self.fresh_line(&me));
                    t.push('\n');
                    Some(t)
                }
                "insert" => {
                    let b = before.clone().unwrap();
                    let line = self.fresh_line(&me);
                    Some(match b.split_once('\n') {
                        Some((first, rest)) => format!("{first}\n{line}\n{rest}"),
                        None => format!("{b}\n{line}\n"),
                    })
                }
                _ => None,
            };
            self.write_file(&folder, &path, after.as_deref())?;
            self.obliged(&path, before.as_deref(), after.as_deref(), &me);
            *self.c.file_ops.entry(op).or_default() += 1;
            self.logln(&format!("{me}: {op} {path}"));
        }
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Settling and convergence.

    fn sync_until_ok(&mut self, s: usize) -> Check {
        let mut last = String::new();
        for attempt in 1..=3 {
            let out = self.exec(s, &["sync", "hub"])?;
            self.c.settle_syncs += 1;
            if out.code == Some(0) {
                return Ok(());
            }
            last = out.show();
            let name = self.name(s).to_owned();
            self.note(format!(
                "settle: `selves sync hub` on {name} failed (try {attempt}): {last}"
            ));
            std::thread::sleep(Duration::from_secs(1));
        }
        Err(format!(
            "`selves sync hub` on {} fails three times in a row: {last}",
            self.name(s)
        ))
    }

    /// Syncs the spokes (a, b, a, then b, a… as needed) until `verify`
    /// passes on both, then requires the three nodes to agree with each
    /// other and with the model.
    fn settle(&mut self, why: &str) -> Check {
        let phase = self.phase;
        self.phase = "settle";
        self.logln(&format!("settling ({why})"));
        self.hub.alive()?;
        let mut order = vec![0, 1, 0];
        let mut syncs = 0;
        let mut said = String::new();
        let mut converged = false;
        for _ in 0..4 {
            for &s in &order {
                self.sync_until_ok(s)?;
                syncs += 1;
            }
            let va = self.exec(0, &["verify"])?;
            let vb = self.exec(1, &["verify"])?;
            if va.code == Some(0) && vb.code == Some(0) {
                converged = true;
                break;
            }
            said = format!("a: {}\nb: {}", va.show(), vb.show());
            order = vec![1, 0];
        }
        if !converged {
            return Err(format!(
                "non-convergence ({why}): `selves verify` still fails after {syncs} syncs:\n{said}"
            ));
        }
        self.c.settle_syncs_max = self.c.settle_syncs_max.max(syncs);

        // Memory: the same rows everywhere, and the model's.
        let ka = self.export(0)?;
        let kb = self.export(1)?;
        let kh = self.export(HUB)?;
        for (who, k) in [(0, &ka), (1, &kb)] {
            if *k != kh {
                let only_here: Vec<&String> = k.difference(&kh).collect();
                let only_hub: Vec<&String> = kh.difference(k).collect();
                return Err(format!(
                    "non-convergence ({why}): verify passed but {} and the hub export different rows: only on {}: {}; only on the hub: {}",
                    self.name(who),
                    self.name(who),
                    show_ids(&only_here),
                    show_ids(&only_hub)
                ));
            }
        }
        let missing: Vec<&String> = self.m.expected.difference(&kh).collect();
        if !missing.is_empty() {
            self.c.losses += missing.len();
            return Err(format!(
                "loss ({why}): {} acknowledged rows are on no node (first: {})",
                missing.len(),
                show_ids(&missing)
            ));
        }
        let extra: Vec<&String> = kh
            .iter()
            .filter(|k| !self.m.expected.contains(*k) && !self.m.maybe.contains(*k))
            .collect();
        if !extra.is_empty() {
            return Err(format!(
                "rows that a restore had taken back are back ({why}): {}",
                show_ids(&extra)
            ));
        }
        let back: Vec<String> = self.m.maybe.intersection(&kh).cloned().collect();
        for k in back {
            self.m.maybe.remove(&k);
            self.m.expected.insert(k);
        }
        let gone = std::mem::take(&mut self.m.maybe);
        self.c.rows_gone_with_restores += gone.len();
        for k in &gone {
            self.m.rows.remove(k);
        }
        self.c.final_rows = kh.len();

        // Files: the same tree in the three folders, nothing written lost.
        let th = tree(&self.hub.folder)?;
        for s in 0..2 {
            let t = tree(&self.spokes[s].folder)?;
            if t != th {
                return Err(format!(
                    "non-convergence ({why}): verify passed but {}'s folder differs from the hub's: {}",
                    self.name(s),
                    tree_diff(&t, &th)
                ));
            }
        }
        self.check_files(&th, why)?;
        for who in [0, 1, HUB] {
            self.check(who)?;
        }
        self.c.settles += 1;
        self.phase = phase;
        self.logln(&format!(
            "settled ({why}) after {syncs} syncs: {} rows, {} files",
            kh.len(),
            th.len()
        ));
        Ok(())
    }

    fn check_files(&mut self, t: &BTreeMap<String, String>, why: &str) -> Check {
        let pool: HashSet<&str> = self.pool.iter().map(String::as_str).collect();
        let mut copies: BTreeMap<String, Vec<&String>> = BTreeMap::new();
        for (path, content) in t {
            if content.contains("MALLORY") || path.contains("MALLORY") {
                return Err(format!("the hostile peer's file is in the share: {path}"));
            }
            if pool.contains(path.as_str()) {
                continue;
            }
            match conflict_base(path) {
                Some(base) if pool.contains(base.as_str()) => {
                    copies.entry(base).or_default().push(path)
                }
                _ => {
                    return Err(format!(
                        "a file nobody wrote is in the share ({why}): {path}"
                    ));
                }
            }
        }
        self.c.conflict_copies = copies.values().map(Vec::len).sum();
        self.c.final_files = t.len();
        // Lines written and lost: a finding each (with what the folder
        // holds for that path), and the run goes on without them.
        let mut lost = Vec::new();
        for (path, obligations) in self.m.obligations.iter_mut() {
            let mut lines: HashSet<&str> = HashSet::new();
            let here: Vec<&String> = copies.get(path).into_iter().flatten().copied().collect();
            for f in t
                .get(path)
                .into_iter()
                .chain(here.iter().filter_map(|c| t.get(*c)))
            {
                lines.extend(f.lines());
            }
            obligations.retain(|o| {
                let missing: Vec<&String> =
                    o.lines.iter().filter(|l| !lines.contains(l.as_str())).collect();
                if missing.is_empty() {
                    return true;
                }
                lost.push(format!(
                    "lines {} wrote into {path} at cycle {} are in no file, neither at that path nor in a conflict copy of it (the copies of {path}: {}); missing: {:?}",
                    o.who,
                    o.cycle,
                    if here.is_empty() { "none".to_owned() } else { here.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ") },
                    missing
                ));
                false
            });
        }
        self.c.file_checks += self.m.obligations.values().map(Vec::len).sum::<usize>() as u64;
        self.c.losses += lost.len();
        for l in lost {
            self.finding(format!("loss of file content ({why}): {l}"));
        }
        Ok(())
    }

    // -----------------------------------------------------------------------
    // The kill -9 loop.

    fn run_all(&mut self) -> Check {
        self.phase = "start";
        self.settle("at the start")?;
        for i in 1..=self.cycles {
            self.cycle = i;
            while self.events.first().is_some_and(|(at, _)| *at <= i) {
                let (_, event) = self.events.remove(0);
                match event {
                    Event::Partition(r) => {
                        self.phase = "partition";
                        self.partition_round(r)?;
                    }
                    Event::DiskFull => {
                        self.phase = "disk-full";
                        self.disk_full()?;
                    }
                    Event::Restore(r) => {
                        self.phase = "restore";
                        if !self.restore_or_repair(r)? {
                            // No backup yet: take one now, restore later.
                            self.events.push((i + 12, Event::Restore(r)));
                            self.events.sort_by_key(|(at, _)| *at);
                        }
                    }
                    Event::Hostile => {
                        self.phase = "hostile";
                        self.hostile()?;
                    }
                }
            }
            self.phase = "kill";
            self.kill_cycle()?;
            self.c.cycles = i;
            if i % SETTLE_EVERY == 0 || i == self.cycles {
                self.settle(&format!("after cycle {i}"))?;
            }
            if i % 100 == 0 {
                println!(
                    "  cycle {i}/{}: {} rows, {} files, {} conflict copies, {} s",
                    self.cycles,
                    self.c.final_rows,
                    self.c.final_files,
                    self.c.conflict_copies,
                    self.c_elapsed()
                );
            }
        }
        // Events scheduled past the end (a restore put off).
        while !self.events.is_empty() {
            let (_, event) = self.events.remove(0);
            if let Event::Restore(r) = event {
                self.phase = "restore";
                if !self.restore_or_repair(r)? {
                    return Err(format!("restore {r}: no backup to restore"));
                }
            }
        }
        self.phase = "end";
        self.settle("at the end")
    }

    fn c_elapsed(&self) -> u64 {
        self.started().elapsed().as_secs()
    }

    fn started(&self) -> Instant {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *START.get_or_init(Instant::now)
    }

    fn kill_delay(&mut self) -> Duration {
        let ms = match self.rng.range(0, 10) {
            0..=4 => self.rng.range(0, 60),
            5..=7 => self.rng.range(60, 150),
            _ => self.rng.range(150, 301),
        };
        Duration::from_millis(ms as u64)
    }

    fn kill_cycle(&mut self) -> Check {
        let _ = self.started();
        self.hub.alive()?;
        let s = self.rng.range(0, 2);
        let other = 1 - s;
        self.write_memory(s)?;
        self.file_ops(s)?;
        let concurrent = self.rng.range(0, 6) == 0;
        let hub_kill = self.rng.range(0, 10) == 0;
        let delay = self.kill_delay();
        let t0 = Instant::now();
        let child = self.spawn(s, &["sync", "hub"])?;
        let other_child = if concurrent {
            self.c.concurrent_syncs += 1;
            Some((self.spawn(other, &["sync", "hub"])?, Instant::now()))
        } else {
            None
        };
        std::thread::sleep(delay);
        let name = self.name(s).to_owned();
        // Whether the sync got through (so the folder was scanned).
        let mut synced = false;
        if hub_kill {
            let also = self.rng.range(0, 2) == 0;
            self.hub.kill();
            self.c.hub_kills += 1;
            let mut left = Some(child);
            if also && let Some(child) = left.take() {
                let out = kill9(child, t0);
                self.c.syncs_killed += 1;
                self.sane(s, &["sync", "hub"], &out, true)?;
            }
            self.hub.start()?;
            self.logln(&format!(
                "hub SIGKILLed {} ms into {name}'s sync and restarted ({})",
                delay.as_millis(),
                if also {
                    "the sync killed too"
                } else {
                    "the sync left to finish"
                }
            ));
            if let Some(child) = left {
                let out = finish(child, t0, HUNG)
                    .map_err(|e| format!("{name}'s sync while the hub was killed: {e}"))?;
                self.sane(s, &["sync", "hub"], &out, false)?;
                self.c.hub_kill_syncs_waited += 1;
                synced = out.code == Some(0);
                if out.code != Some(0) {
                    self.c.hub_kill_syncs_failed += 1;
                    self.logln(&format!(
                        "{name}'s sync across the hub's restart failed: {}",
                        out.show()
                    ));
                }
            }
            self.check(HUB)?;
            self.export(HUB)?;
        } else {
            let out = kill9(child, t0);
            self.c.syncs_killed += 1;
            synced = out.code == Some(0);
            if out.code.is_some() {
                self.c.killed_after_exit += 1;
            } else {
                self.c.killed_mid_run += 1;
            }
            self.sane(s, &["sync", "hub"], &out, true)?;
            self.logln(&format!(
                "{name}'s sync SIGKILLed after {} ms ({})",
                delay.as_millis(),
                match out.code {
                    Some(c) => format!("it had already exited {c}"),
                    None => "mid-run".to_owned(),
                }
            ));
        }
        if let Some((c, t)) = other_child {
            let out = finish(c, t, HUNG)
                .map_err(|e| format!("{}'s sync at the same time: {e}", self.name(other)))?;
            self.sane(other, &["sync", "hub"], &out, false)?;
            if out.code != Some(0) && !hub_kill {
                let n = self.name(other).to_owned();
                self.logln(&format!(
                    "{n}'s concurrent sync failed (the other's was killed): {}",
                    out.show()
                ));
            }
            self.check(other)?;
            self.export(other)?;
        }
        self.check(s)?;
        let keys = self.export(s)?;
        // Now and then a crash-consistent copy of the home. A snapshot
        // with the folder is taken only when the sync had got through: a
        // folder holding edits the home has not scanned yet forks the
        // share's log on restore (see the report of restores).
        if self.rng.range(0, 20) == 0 && (synced || !self.restore_folder) {
            self.backup(s, keys)?;
        }
        Ok(())
    }

    fn backup(&mut self, s: usize, keys: BTreeSet<String>) -> Check {
        let n = self.c.backups + 1;
        let name = self.name(s).to_owned();
        let home = self.dir.join(format!("backups/{name}-{n}-home"));
        std::fs::create_dir_all(home.parent().unwrap()).map_err(|e| e.to_string())?;
        sh(&[
            "cp",
            "-a",
            self.spokes[s].node.home.to_str().unwrap(),
            home.to_str().unwrap(),
        ])?;
        let folder = if self.restore_folder {
            let f = self.dir.join(format!("backups/{name}-{n}-notes"));
            sh(&[
                "cp",
                "-a",
                self.spokes[s].folder.to_str().unwrap(),
                f.to_str().unwrap(),
            ])?;
            Some(f)
        } else {
            None
        };
        self.spokes[s].backups.push(Backup {
            home,
            folder,
            keys,
            cycle: self.cycle,
        });
        self.c.backups += 1;
        self.logln(&format!("{name}: backup {n} taken"));
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Partitions.

    fn partition_round(&mut self, r: usize) -> Check {
        let drop = r.is_multiple_of(2);
        let s = self.rng.range(0, 2);
        let name = self.name(s).to_owned();
        self.logln(&format!(
            "partition round {r} ({})",
            if drop && self.netns.as_ref().unwrap().nft {
                "drop rules"
            } else {
                "link down"
            }
        ));
        // Half the rounds cut the link in the middle of a sync.
        let mut running = Vec::new();
        if self.rng.range(0, 2) == 0 {
            // Enough to make the sync last a while.
            self.import_rows(s, 600, 80)?;
            self.file_ops(s)?;
            let t0 = Instant::now();
            running.push((s, self.spawn(s, &["sync", "hub"])?, t0, true));
            std::thread::sleep(Duration::from_millis(self.rng.range(0, 120) as u64));
            self.c.partition_cut_mid_sync += 1;
        }
        self.netns.as_mut().unwrap().partition(drop)?;
        self.c.partitions += 1;
        // Local writes work, on both spokes; then both sync, at once.
        for who in [0, 1] {
            self.write_memory(who)
                .map_err(|e| format!("partition {r}: a local write failed: {e}"))?;
            self.file_ops(who)?;
        }
        for who in [0, 1] {
            running.push((
                who,
                self.spawn(who, &["sync", "hub"])?,
                Instant::now(),
                false,
            ));
        }
        // `verify` fails too (run beside the syncs: a dropped link makes
        // each wait out its timeouts).
        let verify = self.spawn(s, &["verify"])?;
        let verify_t0 = Instant::now();
        for (who, child, t0, cut) in running {
            let n = self.name(who).to_owned();
            let out = finish(child, t0, HUNG)
                .map_err(|e| format!("partition {r}: `selves sync hub` on {n}: {e}"))?;
            self.sane(who, &["sync", "hub"], &out, false)?;
            self.logln(&format!(
                "{n}'s sync {}: {}",
                if cut {
                    "cut off mid-way"
                } else {
                    "during the partition"
                },
                out.show()
            ));
            if cut {
                // It may have finished before the cut.
                continue;
            }
            let Some(code) = out.code.filter(|c| *c != 0) else {
                return Err(format!(
                    "partition {r}: `selves sync hub` on {n} succeeded while the hub was cut off: {}",
                    out.show()
                ));
            };
            *self.c.partition_codes.entry(code).or_default() += 1;
            self.c.partition_fail_secs.push(out.secs);
        }
        // And status says so.
        for who in [0, 1] {
            let n = self.name(who).to_owned();
            let brief = self.exec(who, &["status", "--brief"])?;
            if brief.code == Some(0) || brief.stdout.trim().is_empty() {
                return Err(format!(
                    "partition {r}: `selves status --brief` on {n} says all is well after a failed sync: {}",
                    brief.show()
                ));
            }
            self.check(who)?;
            self.export(who)?;
        }
        let verify = finish(verify, verify_t0, HUNG)
            .map_err(|e| format!("partition {r}: `selves verify` on {name}: {e}"))?;
        self.sane(s, &["verify"], &verify, false)?;
        if verify.code == Some(0) {
            return Err(format!(
                "partition {r}: `selves verify` on {name} passed while the hub was cut off"
            ));
        }
        self.netns.as_mut().unwrap().heal()?;
        self.settle(&format!("after partition {r}"))
    }

    // -----------------------------------------------------------------------
    // A full disk (spoke b's home on the tmpfs).

    fn disk_full(&mut self) -> Check {
        let b = 1;
        let dir = self.tmpfs.as_ref().unwrap().dir.clone();
        self.settle("before the disk fills")?;
        let filler = dir.join("filler");
        fill(&filler)?;
        let free = free_bytes(&dir);
        self.logln(&format!("tmpfs filled; {free} bytes free"));
        self.c.disk_full += 1;
        let r = (|| -> Check {
            // Writing says the disk is full.
            let text = format!("chaos disk-full write {}", self.fresh_id());
            let out = self.exec(b, &["remember", "--source", "chaos", &text])?;
            if out.code == Some(0) || !out.stderr.to_lowercase().contains("full") {
                return Err(format!(
                    "disk full: `selves remember` on b did not fail saying the disk is full: {}",
                    out.show()
                ));
            }
            self.c
                .disk_full_notes
                .push(format!("remember: {}", clip(out.stderr.trim(), 200)));
            // Reading works.
            for args in [
                &["status"][..],
                &["search", "memory"],
                &["export"],
                &["check"],
                &["conflicts"],
            ] {
                let out = self.exec(b, args)?;
                if out.code != Some(0) {
                    return Err(format!(
                        "disk full: `selves {}` on b failed: {}",
                        args.join(" "),
                        out.show()
                    ));
                }
            }
            let brief = self.exec(b, &["status", "--brief"])?;
            if brief.code != Some(2) || !brief.stdout.contains("full") {
                return Err(format!(
                    "disk full: `selves status --brief` on b does not say the disk is full with exit 2 (README): {}",
                    brief.show()
                ));
            }
            self.export(b)?;
            // A sync that would pull rows fails cleanly.
            self.write_memory(0)?;
            self.ok(0, &["sync", "hub"])?;
            let out = self.exec(b, &["sync", "hub"])?;
            if out.code == Some(0) {
                return Err(format!(
                    "disk full: `selves sync hub` on b succeeded with rows to pull and no room: {}",
                    out.show()
                ));
            }
            self.c.disk_full_notes.push(format!(
                "sync: exit {:?}: {}",
                out.code,
                clip(out.stderr.trim(), 200)
            ));
            // A SIGKILL on top of it.
            let t0 = Instant::now();
            let child = self.spawn(b, &["sync", "hub"])?;
            std::thread::sleep(Duration::from_millis(self.rng.range(0, 40) as u64));
            let out = kill9(child, t0);
            self.sane(b, &["sync", "hub"], &out, true)?;
            self.check(b)?;
            self.export(b)?;
            Ok(())
        })();
        std::fs::remove_file(&filler).map_err(|e| e.to_string())?;
        r?;
        self.logln("filler removed");
        self.ok(b, &["sync", "hub"])?;
        self.check(b)?;
        self.settle("after the disk was full")
    }

    // -----------------------------------------------------------------------
    // Restores.

    /// Restore `r`, unless an earlier one failed. A failed restore is a
    /// finding: the run goes on with the spoke replaced by a fresh node
    /// (its folder kept), and restores stop.
    fn restore_or_repair(&mut self, r: usize) -> Check<bool> {
        if self.restores_stopped {
            self.logln(&format!(
                "restore {r}: not done (an earlier restore failed)"
            ));
            return Ok(true);
        }
        match self.restore(r) {
            Ok(done) => Ok(done),
            Err(e) => {
                let s = (r + 1) % 2;
                let name = self.name(s).to_owned();
                self.finding(format!("restore {r} of {name}: {e}"));
                self.restores_stopped = true;
                self.replace_spoke(s)?;
                self.settle(&format!("after replacing {name}, whose restore failed"))?;
                Ok(true)
            }
        }
    }

    fn finding(&mut self, what: String) {
        println!("  FINDING (cycle {}): {}", self.cycle, clip(&what, 1500));
        self.logln(&format!("FINDING {what}"));
        self.findings.push(format!("cycle {}: {what}", self.cycle));
    }

    /// Puts a fresh node (a new home, a new name, paired again, the same
    /// folder) in the place of spoke `s`, whose home is kept aside. Rows only
    /// that home held go with it.
    fn replace_spoke(&mut self, s: usize) -> Check {
        let old = self.name(s).to_owned();
        let hub_keys = self.export(HUB)?;
        let only_there: Vec<String> = self.m.seen[s]
            .union(&self.m.acked[s])
            .filter(|k| !hub_keys.contains(*k))
            .cloned()
            .collect();
        for k in &only_there {
            self.m.expected.remove(k);
            self.m.maybe.insert(k.clone());
        }
        self.m.seen[s].clear();
        self.m.acked[s].clear();
        let old_home = self.spokes[s].node.home.clone();
        let base = old_home.parent().unwrap().to_owned();
        let kept = self.dir.join(format!("broken-{old}-home"));
        sh(&["mv", old_home.to_str().unwrap(), kept.to_str().unwrap()])?;
        self.replaced += 1;
        let new = format!("{}{}", &old[..1], self.replaced + 1);
        let bin = self.hub.node.bin.clone();
        let node = Node::new(&bin, &base, &new);
        node.pair_at(&self.hub.node, &self.hub.ip, self.hub.port);
        let folder = self.spokes[s].folder.clone();
        node.ok(&["share", "add", "notes", folder.to_str().unwrap()]);
        self.spokes[s] = Spoke {
            node,
            folder,
            backups: Vec::new(),
            recovered: false,
        };
        self.logln(&format!(
            "{old} replaced by {new} (home kept in {}); {} rows only it held",
            kept.display(),
            only_there.len()
        ));
        println!(
            "  {old} replaced by a fresh node {new} (its home kept in {}); restores stop here",
            kept.display()
        );
        Ok(())
    }

    /// Restore `r`; false when the spoke has no backup yet (one is taken).
    fn restore(&mut self, r: usize) -> Check<bool> {
        let s = (r + 1) % 2;
        let name = self.name(s).to_owned();
        if self.spokes[s].backups.is_empty() {
            let keys = self.export(s)?;
            self.backup(s, keys)?;
            return Ok(false);
        }
        let k = self.rng.range(0, self.spokes[s].backups.len());
        let backup = self.spokes[s].backups.remove(k);
        let first = !self.spokes[s].recovered;
        self.logln(&format!(
            "restore {r}: {name} from its backup of cycle {} ({})",
            backup.cycle,
            if first {
                "write, then sync"
            } else {
                "sync, then write"
            }
        ));
        let hub_before = self.export(HUB)?;
        let spoke_before = self.export(s)?;
        let hub_tree = tree(&self.hub.folder)?;
        // Stop the spoke's processes: none runs between cycles. Then put
        // the copy back.
        let home = self.spokes[s].node.home.clone();
        std::fs::remove_dir_all(&home).map_err(|e| e.to_string())?;
        sh(&[
            "cp",
            "-a",
            backup.home.to_str().unwrap(),
            home.to_str().unwrap(),
        ])?;
        if let Some(f) = &backup.folder {
            let folder = self.spokes[s].folder.clone();
            std::fs::remove_dir_all(&folder).map_err(|e| e.to_string())?;
            sh(&["cp", "-a", f.to_str().unwrap(), folder.to_str().unwrap()])?;
            // Lines written after the copy that the hub does not hold are
            // legitimately gone with the folder.
            let mut dropped = 0;
            let cycle = backup.cycle;
            for (path, list) in self.m.obligations.iter_mut() {
                let mut held: HashSet<&str> = HashSet::new();
                for (p, c) in &hub_tree {
                    if p == path || conflict_base(p).as_deref() == Some(path.as_str()) {
                        held.extend(c.lines());
                    }
                }
                list.retain(|o| {
                    let keep = o.who != name
                        || o.cycle <= cycle
                        || o.lines.iter().all(|l| held.contains(l.as_str()));
                    if !keep {
                        dropped += 1;
                    }
                    keep
                });
            }
            self.logln(&format!("{dropped} file obligations went with the folder"));
        }
        // Rows written here after the copy that never reached the hub are
        // legitimately gone.
        let lost: Vec<String> = spoke_before
            .iter()
            .filter(|k| !hub_before.contains(*k) && !backup.keys.contains(*k))
            .cloned()
            .collect();
        for k in &lost {
            self.m.expected.remove(k);
            self.m.acked[s].remove(k);
            self.m.maybe.insert(k.clone());
        }
        self.m.seen[s] = backup.keys.clone();
        let acked_now: BTreeSet<String> = self.m.acked[s]
            .iter()
            .filter(|k| backup.keys.contains(*k))
            .cloned()
            .collect();
        let acked_later = std::mem::replace(&mut self.m.acked[s], acked_now);
        self.logln(&format!(
            "restore {r}: {} rows written on {name} after the copy never reached the hub",
            lost.len()
        ));
        self.check(s)?;

        let mut new_rows = Vec::new();
        if first {
            for _ in 0..2 {
                new_rows.extend(self.write_memory(s)?);
            }
            self.ok(s, &["sync", "hub"])
                .map_err(|e| format!("restore {r} (write, then sync): {e}"))?;
        } else {
            self.ok(s, &["sync", "hub"])
                .map_err(|e| format!("restore {r} (sync first): {e}"))?;
            for _ in 0..2 {
                new_rows.extend(self.write_memory(s)?);
            }
        }
        self.ok(s, &["sync", "hub"])
            .map_err(|e| format!("restore {r}: the sync after the new rows: {e}"))?;
        // Rows acknowledged here before, and on the hub, are back.
        self.m.acked[s].extend(acked_later.into_iter().filter(|k| hub_before.contains(k)));
        let hub_after = self.export(HUB)?;
        let spoke_after = self.export(s)?;
        let gone: Vec<&String> = hub_before.difference(&hub_after).collect();
        if !gone.is_empty() {
            self.c.losses += gone.len();
            return Err(format!(
                "loss: restore {r}: rows the hub held before the restore are gone from it: {}",
                show_ids(&gone)
            ));
        }
        let not_back: Vec<&String> = hub_before.difference(&spoke_after).collect();
        if !not_back.is_empty() {
            return Err(format!(
                "restore {r}: rows the hub held did not come back to the restored {name}: {}",
                show_ids(&not_back)
            ));
        }
        let not_out: Vec<&String> = new_rows
            .iter()
            .filter(|k| !hub_after.contains(*k))
            .collect();
        if !not_out.is_empty() {
            return Err(format!(
                "restore {r}: rows written on {name} after the restore did not reach the hub: {}",
                show_ids(&not_out)
            ));
        }
        self.check(s)?;
        self.check(HUB)?;
        let brief = self.exec(s, &["status", "--brief"])?;
        if brief.code == Some(2) {
            return Err(format!(
                "restore {r}: {name} now says its key is in two homes (or a peer is down): {}",
                brief.show()
            ));
        }
        self.c.restores += 1;
        self.c.restore_notes.push(format!(
            "{name} from cycle {} at cycle {} ({}): {} rows gone with it",
            backup.cycle,
            self.cycle,
            if first {
                "write, then sync"
            } else {
                "sync, then write"
            },
            lost.len()
        ));
        self.spokes[s].recovered = true;
        // Copies older than this restore would bring back a branch the
        // spoke has since withdrawn: a clash by design. Keep none.
        self.spokes[s].backups.clear();
        self.settle(&format!("after restore {r}"))?;
        Ok(true)
    }

    // -----------------------------------------------------------------------
    // The hostile peer.

    fn hostile(&mut self) -> Check {
        self.settle("before the hostile peer")?;
        let port = self.hub.port.to_string();
        let host = self.hub.ip.clone();
        let blob = self
            .ok(
                HUB,
                &[
                    "invite", "--peer", "mallory", "--host", &host, "--port", &port,
                ],
            )?
            .stdout
            .trim()
            .to_owned();
        let addr: SocketAddr = format!("{host}:{port}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let mut ids = Vec::new();
        for s in 0..2 {
            let v: Value = serde_json::from_str(&self.ok(s, &["status", "--json"])?.stdout)
                .map_err(|e| e.to_string())?;
            ids.push(v["node"]["id"].as_str().unwrap_or("").to_owned());
        }
        let seed = self.rng.range(0, 1 << 30) as u64;
        let mut m = Mallory::new(&blob, addr, seed)?;
        let result = m.battery(&ids[0], &ids[1], self);
        self.c.hostile_requests = m.sent;
        self.c.hostile_statuses = m.statuses.clone();
        self.c.hostile_5xx = m.five_xx.len();
        self.c.hostile_notes = m.notes.clone();
        self.c.hostile_notes.push(format!(
            "slowest answers: {}",
            m.slowest
                .iter()
                .map(|(t, l, s)| format!("{l} {s} in {t:.1} s"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
        result?;
        // Rows the hub took in from it: a finding; the run goes on with
        // them in the model (they relay like any row).
        for (label, rows) in std::mem::take(&mut m.accepted) {
            let ids: Vec<String> = rows
                .iter()
                .map(|r| r["row"]["msg_id"].as_str().unwrap_or("").to_owned())
                .collect();
            if label == LEGACY_PROBE {
                let line = format!(
                    "  hostile: {label}: {} rows taken (an id from before keys is trusted on first use)",
                    ids.len()
                );
                println!("{line}");
                self.logln(&line);
            } else {
                self.finding(format!(
                    "the hub accepted rows from the hostile peer ({label}): {}",
                    ids.join(" ")
                ));
            }
            for r in rows {
                let r = &r["row"];
                let id = r["msg_id"].as_str().unwrap_or("").to_owned();
                self.m.rows.insert(
                    id.clone(),
                    RowSpec {
                        source: r["source"].as_str().unwrap_or("").to_owned(),
                        conversation: r["conversation_id"].as_str().unwrap_or("").to_owned(),
                        text: r["text"].as_str().unwrap_or("").to_owned(),
                    },
                );
                self.m.expected.insert(id);
            }
        }
        if !m.five_xx.is_empty() {
            return Err(format!(
                "the hub answered the hostile peer with 5xx {} times: {}",
                m.five_xx.len(),
                m.five_xx.join("; ")
            ));
        }
        self.hub.alive()?;
        let digest = m.post("after: digest", "GET", "/v1/digest", b"");
        if digest.status != Some(200) {
            return Err(format!(
                "the hub does not answer its peer after the hostile requests: {:?}",
                digest.status
            ));
        }
        self.settle("after the hostile peer")
    }

    // -----------------------------------------------------------------------

    fn report(&mut self, started: Instant, result: Check) -> i32 {
        let secs = started.elapsed().as_secs_f64();
        let c = &self.c;
        println!();
        println!("chaos: seed {}, {:.0} s", self.seed, secs);
        println!(
            "  cycles: {} (kill -9 loop), settled and compared {} times ({} syncs, at most {} at once)",
            c.cycles, c.settles, c.settle_syncs, c.settle_syncs_max
        );
        println!(
            "  faults: syncs SIGKILLed {} ({} mid-run, {} already done), {} of them beside a second sync; hub servers SIGKILLed {} ({} syncs left running across it, {} of those failed)",
            c.syncs_killed,
            c.killed_mid_run,
            c.killed_after_exit,
            c.concurrent_syncs,
            c.hub_kills,
            c.hub_kill_syncs_waited,
            c.hub_kill_syncs_failed
        );
        if let Some(n) = &self.netns {
            let max = c.partition_fail_secs.iter().copied().fold(0.0, f64::max);
            println!(
                "  partitions: {} ({}; {} cutting a sync mid-way); failed syncs by exit code {:?}, slowest failure {:.1} s",
                c.partitions,
                n.how(),
                c.partition_cut_mid_sync,
                c.partition_codes,
                max
            );
        } else {
            println!("  partitions: 0 (skipped)");
        }
        println!(
            "  disk full: {}{}",
            c.disk_full,
            if c.disk_full_notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.disk_full_notes.join("; "))
            }
        );
        println!(
            "  restores: {} (backups taken {}; rows legitimately gone with them {})",
            c.restores, c.backups, c.rows_gone_with_restores
        );
        for n in &c.restore_notes {
            println!("    {n}");
        }
        println!(
            "  hostile requests: {}, answers {:?}, 5xx: {}",
            c.hostile_requests, c.hostile_statuses, c.hostile_5xx
        );
        for n in &c.hostile_notes {
            println!("    {n}");
        }
        println!(
            "  rows: {} written ({} remember, {} import), {} row checks, {} rows on every node at the end",
            c.rows_written, c.remembers, c.imports, c.row_checks, c.final_rows
        );
        println!(
            "  files: operations {:?}; {} obligation checks; {} files ({} conflict copies) in every folder at the end",
            c.file_ops, c.file_checks, c.final_files, c.conflict_copies
        );
        println!("  selves check: {} runs", c.checks);
        println!("  losses: {}, duplicates: {}", c.losses, c.duplicates);
        for s in &self.skipped {
            println!("  {s}");
        }
        if !c.notes.is_empty() {
            println!("  notes ({}):", c.notes.len());
            for n in c.notes.iter().take(20) {
                println!("    {}", clip(n, 400));
            }
        }
        let hub_log = std::fs::read_to_string(&self.hub.stderr).unwrap_or_default();
        let panicked = hub_log.contains("panicked");
        let held = format!(
            "{} cycles in {:.0} s: {} syncs and {} hub servers SIGKILLed, {} partitions, {} disk full, {} restores, {} hostile requests ({} 5xx); {} rows and {} files identical on 3 nodes; losses: {}, duplicates: {}",
            c.cycles,
            secs,
            c.syncs_killed,
            c.hub_kills,
            c.partitions,
            c.disk_full,
            c.restores,
            c.hostile_requests,
            c.hostile_5xx,
            c.final_rows,
            c.final_files,
            c.losses,
            c.duplicates
        );
        if panicked {
            self.findings.push(format!(
                "the hub's server panicked (see {})",
                self.hub.stderr.display()
            ));
        }
        match result {
            Ok(()) if self.findings.is_empty() => {
                println!("chaos: PASS — {held}");
                0
            }
            Ok(()) => {
                println!("chaos: FAIL — {} findings:", self.findings.len());
                for f in self.findings.iter().take(30) {
                    println!("  - {}", clip(f, 2000));
                }
                if self.findings.len() > 30 {
                    println!("  … {} more in chaos.log", self.findings.len() - 30);
                }
                println!("chaos: the rest held — {held}");
                1
            }
            Err(e) => {
                for f in &self.findings {
                    println!("  earlier finding: {}", clip(f, 2000));
                }
                println!(
                    "chaos: FAIL at cycle {} ({}) after {:.0} s — {e}",
                    self.cycle, self.phase, secs
                );
                1
            }
        }
    }
}

fn show_ids<S: AsRef<str>>(ids: &[S]) -> String {
    let mut s: Vec<&str> = ids.iter().take(8).map(AsRef::as_ref).collect();
    if ids.len() > 8 {
        s.push("…");
    }
    format!("{} ({} in all)", s.join(" "), ids.len())
}

/// Waits for `child` (up to `limit` from `t0`), then reads its output.
fn finish(mut child: Child, t0: Instant, limit: Duration) -> Check<Out> {
    // Read the pipes on threads, so a chatty child never blocks.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let ro = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = so.read_to_end(&mut s);
        s
    });
    let re = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {} s (hung)", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&ro.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&re.join().unwrap_or_default()).into_owned();
    Ok(Out {
        code: status.code(),
        stdout,
        stderr,
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// SIGKILL (if it still runs) and reap.
fn kill9(mut child: Child, t0: Instant) -> Out {
    let done = matches!(child.try_wait(), Ok(Some(_)));
    if !done {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
    }
    finish(child, t0, HUNG).unwrap_or(Out {
        code: None,
        stdout: String::new(),
        stderr: String::new(),
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// Every file under `root` (relative path → content), but `SELVES.md` at
/// the root (each node writes its own) and selves' temporary files.
fn tree(root: &Path) -> Check<BTreeMap<String, String>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Check {
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for e in entries {
            let e = e.map_err(|e| e.to_string())?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".selves-tmp-") {
                continue;
            }
            let path = e.path();
            let ft = e.file_type().map_err(|e| e.to_string())?;
            if ft.is_dir() {
                walk(root, &path, out)?;
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if rel == "SELVES.md" {
                    continue;
                }
                let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {rel}: {e}"))?;
                out.insert(rel, String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn tree_diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> String {
    let mut out = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("{k} only here")),
            Some(w) if w != v => out.push(format!(
                "{k} differs ({:?} vs {:?})",
                clip(v, 120),
                clip(w, 120)
            )),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        out.push(format!("{k} only on the hub"));
    }
    out.truncate(8);
    out.join("; ")
}

/// Writes `path` until the file system is full.
fn fill(path: &Path) -> Check {
    let mut f = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let big = vec![0x5a_u8; 1 << 20];
    while f.write_all(&big).is_ok() {}
    let small = [0x5a_u8; 4096];
    while f.write_all(&small).is_ok() {}
    let _ = f.write_all(&small[..512]);
    let _ = f.write_all(&small[..1]);
    Ok(())
}

fn free_bytes(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: statvfs writes into a zeroed struct we own.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return 0;
        }
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

// ---------------------------------------------------------------------------
// The hostile peer: raw HTTP/1.1 over the pinned TLS client config, signed
// with a key of its own (as the e2e tests' `Prober`).

struct Resp {
    status: Option<u16>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

struct Mallory {
    key: NodeKey,
    id: NodeId,
    server: NodeId,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    token: String,
    rng: Rng,
    sent: usize,
    statuses: BTreeMap<String, usize>,
    five_xx: Vec<String>,
    notes: Vec<String>,
    n: u64,
    /// Batches of rows the hub accepted (label, the rows not voided).
    accepted: Vec<(String, Vec<Value>)>,
    /// The slowest answers: (seconds, label, status).
    slowest: Vec<(f64, String, String)>,
    first_byte: Option<Instant>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

impl Mallory {
    fn new(blob: &str, addr: SocketAddr, seed: u64) -> Check<Mallory> {
        let b = selves_wire::pair::PairBlob::decode(blob, 0)
            .map_err(|e| format!("the hub's invite does not decode: {e}"))?;
        let key = NodeKey::from_seed([0x6d; 32]);
        let config = selves_client::tls::client_config(selves_client::Trust::Pinned(b.cert_fp))
            .map_err(|e| e.to_string())?;
        Ok(Mallory {
            id: key.public().node_id(),
            key,
            server: b.node_id,
            addr,
            config: Arc::new(config),
            token: b.token.to_hex(),
            rng: Rng(seed | 1),
            sent: 0,
            statuses: BTreeMap::new(),
            five_xx: Vec::new(),
            notes: Vec::new(),
            n: 0,
            accepted: Vec::new(),
            slowest: Vec::new(),
            first_byte: None,
        })
    }

    fn marker(&mut self) -> String {
        self.n += 1;
        format!("MALLORY-{}", self.n)
    }

    /// `at.sig` for this key, as `selves-proof` wants it.
    fn proof_for(&self, key: &NodeKey, node: &NodeId, server: &NodeId, at: i64) -> String {
        let sig = key.sign(&sign::proof_message(server, node, at));
        format!("{at}.{}", sig.to_hex())
    }

    fn proof(&self) -> String {
        self.proof_for(&self.key, &self.id, &self.server, now_ms())
    }

    fn hello_body(&self, key: &NodeKey, node: &str, to: &NodeId, at: i64, major: Value) -> Vec<u8> {
        let node_id: Option<NodeId> = node.parse().ok();
        let sig = node_id
            .map(|n| key.sign(&sign::proof_message(to, &n, at)).to_hex())
            .unwrap_or_else(|| "00".repeat(64));
        serde_json::to_vec(&json!({
            "protocol": {"major": major, "minor": 0},
            "node": {"id": node, "name": "mallory"},
            "key": key.public(),
            "to": to,
            "at": at,
            "proof": sig,
        }))
        .unwrap()
    }

    /// Sends `head` and `body` over a fresh TLS connection (or plain TCP
    /// when `tls` is false), half-closes, and reads what comes back.
    fn send_raw(
        &mut self,
        label: &str,
        head: &[u8],
        body: &[u8],
        tls: bool,
        wait: Duration,
    ) -> Resp {
        let t0 = Instant::now();
        self.first_byte = None;
        let r = self.send_raw_inner(label, head, body, tls, wait);
        // How long the answer took to begin (the connection may stay open
        // longer).
        let secs = self
            .first_byte
            .unwrap_or_else(Instant::now)
            .duration_since(t0)
            .as_secs_f64();
        let status = r
            .status
            .map_or_else(|| "closed".to_owned(), |s| s.to_string());
        self.slowest.push((secs, label.to_owned(), status));
        self.slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
        self.slowest.truncate(5);
        r
    }

    fn send_raw_inner(
        &mut self,
        label: &str,
        head: &[u8],
        body: &[u8],
        tls: bool,
        wait: Duration,
    ) -> Resp {
        self.sent += 1;
        let tcp = match TcpStream::connect_timeout(&self.addr, Duration::from_secs(10)) {
            Ok(t) => t,
            Err(e) => {
                self.count(label, "no connection", &format!("{e}"));
                return Resp {
                    status: None,
                    body: Vec::new(),
                };
            }
        };
        let _ = tcp.set_read_timeout(Some(wait));
        let _ = tcp.set_write_timeout(Some(Duration::from_secs(20)));
        let mut raw = Vec::new();
        if tls {
            let conn = match rustls::ClientConnection::new(
                self.config.clone(),
                rustls::pki_types::ServerName::try_from("selves").unwrap(),
            ) {
                Ok(c) => c,
                Err(e) => {
                    self.count(label, "tls error", &e.to_string());
                    return Resp {
                        status: None,
                        body: Vec::new(),
                    };
                }
            };
            let mut s = rustls::StreamOwned::new(conn, tcp);
            let _ = s
                .write_all(head)
                .and_then(|_| s.write_all(body))
                .and_then(|_| s.flush());
            let mut buf = [0u8; 16384];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if raw.is_empty() {
                            self.first_byte = Some(Instant::now());
                        }
                        raw.extend_from_slice(&buf[..n]);
                    }
                }
                if raw.len() > (8 << 20) {
                    break;
                }
            }
        } else {
            let mut t = tcp;
            let _ = t.write_all(head).and_then(|_| t.write_all(body));
            let _ = t.shutdown(Shutdown::Write);
            let _ = t.read_to_end(&mut raw);
        }
        let status = raw
            .split(|b| *b == b'\n')
            .next()
            .and_then(|l| std::str::from_utf8(l).ok())
            .and_then(|l| {
                l.strip_prefix("HTTP/1.1 ")
                    .or_else(|| l.strip_prefix("HTTP/1.0 "))
            })
            .and_then(|l| l.get(..3))
            .and_then(|c| c.parse::<u16>().ok());
        let body = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| raw[p + 4..].to_vec())
            .unwrap_or_default();
        let key = status.map_or_else(|| "closed".to_owned(), |s| s.to_string());
        let detail = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        self.count(label, &key, &detail);
        Resp { status, body }
    }

    /// Keeps the rows of `batch` the hub accepted (not voided), if any.
    fn note_accepted(&mut self, label: &str, batch: &Value, r: &Resp) {
        let v = r.json();
        if r.status != Some(200) || v["accepted"].as_u64().unwrap_or(0) == 0 {
            return;
        }
        let voided: HashSet<u64> = v["voided"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["seq"].as_u64())
            .collect();
        let start = batch["start"].as_u64().unwrap_or(0);
        let rows: Vec<Value> = batch["records"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .filter(|(i, rec)| !voided.contains(&(start + *i as u64)) && rec.get("row").is_some())
            .map(|(_, rec)| rec.clone())
            .collect();
        if !rows.is_empty() {
            self.notes.push(format!("{label}: the hub answered {v}"));
            self.accepted.push((label.to_owned(), rows));
        }
    }

    fn count(&mut self, label: &str, status: &str, detail: &str) {
        *self.statuses.entry(status.to_owned()).or_default() += 1;
        if status.starts_with('5') {
            self.five_xx
                .push(format!("{label} → {status} {}", clip(detail, 200)));
        }
        if status == "no connection" || status == "tls error" {
            self.five_xx
                .push(format!("{label} → {status}: {}", clip(detail, 200)));
        }
    }

    /// A request with this peer's token and the proof of its key.
    fn post(&mut self, label: &str, method: &str, path: &str, body: &[u8]) -> Resp {
        let proof = self.proof();
        let token = self.token.clone();
        self.request(
            label,
            method,
            path,
            Some(&token),
            &[("selves-proof", proof.as_str())],
            body,
        )
    }

    fn request(
        &mut self,
        label: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: selves\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.send_raw(label, head.as_bytes(), body, true, Duration::from_secs(45))
    }

    /// A batch of `node`'s log of `stream` from `start`, chained from the
    /// genesis (or `prev`), carrying `key_json` as its key and signed at
    /// its end by `signer`. Records that are not records get a made-up
    /// digest.
    #[allow(clippy::too_many_arguments)]
    fn batch(
        signer: &NodeKey,
        key_json: Value,
        node: &NodeId,
        stream: &str,
        start: u64,
        prev: Option<Digest>,
        records: &[Value],
        sig_seq: Option<u64>,
    ) -> Value {
        let stream_name: StreamName = stream.parse().unwrap_or_else(|_| "memory".parse().unwrap());
        let mut chain = prev.unwrap_or_else(|| sign::genesis(node, &stream_name));
        for (i, r) in records.iter().enumerate() {
            let d = serde_json::from_value::<selves_wire::native::Record>(r.clone())
                .ok()
                .and_then(|rec| sign::record_digest(&rec))
                .unwrap_or(Digest([0xee; 32]));
            chain = sign::link(&chain, start.wrapping_add(i as u64), &d);
        }
        let end = sig_seq.unwrap_or_else(|| start.wrapping_add(records.len().max(1) as u64 - 1));
        let sig = signer.sign(&sign::head_message(node, &stream_name, end, &chain));
        json!({"node": node, "stream": stream, "start": start, "records": records,
               "key": key_json, "sigs": [{"seq": end, "sig": sig}]})
    }

    fn row(&mut self, msg: Option<&str>) -> Value {
        let marker = self.marker();
        let mut r = json!({"source": "chaos", "conversation_id": "c-mallory",
            "role": "user", "text": format!("{marker} text the hub must never keep"), "ts": 1_700_000_000});
        if let Some(m) = msg {
            r["msg_id"] = json!(m);
        } else {
            r["msg_id"] = json!(marker);
        }
        json!({ "row": r })
    }

    fn push_of(batches: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({ "batches": batches })).unwrap()
    }

    fn garbage(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.range(0, 256) as u8).collect()
    }

    /// Random damage to a body: flipped bytes, a cut, or an inserted run.
    fn mangle(&mut self, body: &[u8]) -> Vec<u8> {
        let mut b = body.to_vec();
        if b.is_empty() {
            return self.garbage(10);
        }
        match self.rng.range(0, 4) {
            0 => {
                for _ in 0..self.rng.range(1, 6) {
                    let i = self.rng.range(0, b.len());
                    b[i] = self.rng.range(0, 256) as u8;
                }
            }
            1 => b.truncate(self.rng.range(0, b.len())),
            2 => {
                let i = self.rng.range(0, b.len());
                let junk = {
                    let n = self.rng.range(1, 40);
                    self.garbage(n)
                };
                b.splice(i..i, junk);
            }
            _ => {
                let i = self.rng.range(0, b.len());
                b.splice(i..i, *b"{\"x\":[[[[[[1e999999,-0,\"\\ud800\"]]]]]]}");
            }
        }
        b
    }

    /// The few hundred requests. `a` and `b` are the spokes' node ids.
    fn battery(&mut self, a: &str, b: &str, chaos: &mut Chaos) -> Check {
        let a_id: NodeId = a.parse().map_err(|e| format!("spoke id {a}: {e:?}"))?;
        let b_id: NodeId = b.parse().map_err(|e| format!("spoke id {b}: {e:?}"))?;
        let hub_id = self.server.clone();
        let me = self.id.clone();
        let endpoints = [
            ("POST", "/v1/hello"),
            ("POST", "/v1/pull"),
            ("POST", "/v1/push"),
            ("GET", "/v1/digest"),
            ("GET", "/v1/changes?after=1"),
            ("POST", "/v1/marker"),
            ("POST", "/v1/blobs/wants"),
            ("POST", "/v1/blobs/get"),
            ("POST", "/v1/blobs/put?share=notes"),
        ];

        // Hello as itself first (binds the token to its key), as any peer.
        let body = self.hello_body(
            &self.key.clone_key(),
            me.as_str(),
            &hub_id,
            now_ms(),
            json!(2),
        );
        let token = self.token.clone();
        let hello = self.request(
            "hello as itself",
            "POST",
            "/v1/hello",
            Some(&token),
            &[],
            &body,
        );
        if hello.status != Some(200) {
            return Err(format!(
                "the hostile peer's own hello was refused: {:?} {}",
                hello.status,
                String::from_utf8_lossy(&hello.body)
            ));
        }
        let heads = hello.json()["heads"].clone();
        let head_of = |node: &NodeId, stream: &str| -> u64 {
            heads
                .as_array()
                .into_iter()
                .flatten()
                .find(|h| h["node"] == node.as_str() && h["stream"] == stream)
                .and_then(|h| h["seq"].as_u64())
                .unwrap_or(0)
        };
        let a_head = head_of(&a_id, "memory");
        let b_head = head_of(&b_id, "memory");
        let a_share = head_of(&a_id, "share:notes");
        let hub_cards = head_of(&hub_id, "nodes");

        // -- Tokens and proofs.
        for i in 0..40 {
            let t: String = (0..64)
                .map(|_| char::from_digit(self.rng.range(0, 16) as u32, 16).unwrap())
                .collect();
            let (m, p) = endpoints[i % endpoints.len()];
            self.request("unknown token", m, p, Some(&t), &[], b"{}");
        }
        for (m, p) in endpoints {
            self.request("no token", m, p, None, &[], b"{}");
            self.request("token, no proof", m, p, Some(&token), &[], b"{}");
        }
        for bad in [
            "Basic bWFsbG9yeTp4",
            "Bearer",
            "Bearer ",
            "bearer 00",
            "Bearer zzzz",
        ] {
            self.send_raw(
                "bad authorization",
                format!("POST /v1/pull HTTP/1.1\r\nHost: selves\r\nConnection: close\r\nAuthorization: {bad}\r\nContent-Length: 2\r\n\r\n").as_bytes(),
                b"{}",
                true,
                Duration::from_secs(20),
            );
        }
        let short = token[..63].to_owned();
        let long = format!("{token}0");
        self.request("63-hex token", "POST", "/v1/pull", Some(&short), &[], b"{}");
        self.request("65-hex token", "POST", "/v1/pull", Some(&long), &[], b"{}");
        let other = NodeKey::from_seed([0x42; 32]);
        for (label, proof) in [
            (
                "stale proof",
                self.proof_for(&self.key.clone_key(), &me, &hub_id, 0),
            ),
            (
                "future proof",
                self.proof_for(&self.key.clone_key(), &me, &hub_id, now_ms() + 3_600_000),
            ),
            (
                "proof of another key",
                self.proof_for(&other, &me, &hub_id, now_ms()),
            ),
            (
                "proof for another server",
                self.proof_for(&self.key.clone_key(), &me, &a_id, now_ms()),
            ),
            ("garbage proof", "x.y".to_owned()),
            ("empty proof", String::new()),
            (
                "overflowing proof time",
                format!("99999999999999999999999.{}", "00".repeat(64)),
            ),
        ] {
            self.request(
                label,
                "POST",
                "/v1/pull",
                Some(&token),
                &[("selves-proof", proof.as_str())],
                br#"{"ranges": []}"#,
            );
        }

        // -- Hellos with the wrong keys or claims.
        for seed in 1..=5u8 {
            let k = NodeKey::from_seed([seed; 32]);
            let id = k.public().node_id();
            let body = self.hello_body(&k, id.as_str(), &hub_id, now_ms(), json!(2));
            self.request(
                "hello with another key",
                "POST",
                "/v1/hello",
                Some(&token),
                &[],
                &body,
            );
        }
        for claim in [&a_id, &b_id, &hub_id] {
            let body = self.hello_body(
                &self.key.clone_key(),
                claim.as_str(),
                &hub_id,
                now_ms(),
                json!(2),
            );
            self.request(
                "hello claiming another node",
                "POST",
                "/v1/hello",
                Some(&token),
                &[],
                &body,
            );
        }
        let body = self.hello_body(
            &self.key.clone_key(),
            me.as_str(),
            &a_id,
            now_ms(),
            json!(2),
        );
        self.request(
            "hello to another server",
            "POST",
            "/v1/hello",
            Some(&token),
            &[],
            &body,
        );
        for major in [
            json!(1),
            json!(3),
            json!(999),
            json!(-1),
            json!("two"),
            json!(null),
            json!(1e300),
        ] {
            let body =
                self.hello_body(&self.key.clone_key(), me.as_str(), &hub_id, now_ms(), major);
            self.request(
                "hello with a wrong protocol",
                "POST",
                "/v1/hello",
                Some(&token),
                &[],
                &body,
            );
        }
        let body = self.hello_body(&self.key.clone_key(), me.as_str(), &hub_id, 0, json!(2));
        self.request(
            "hello from 1970",
            "POST",
            "/v1/hello",
            Some(&token),
            &[],
            &body,
        );
        let body = self.hello_body(
            &self.key.clone_key(),
            "not-an-id",
            &hub_id,
            now_ms(),
            json!(2),
        );
        self.request(
            "hello with a bad id",
            "POST",
            "/v1/hello",
            Some(&token),
            &[],
            &body,
        );
        for body in [
            &b"null"[..],
            b"{}",
            b"[]",
            br#"{"protocol": "2"}"#,
            br#"{"protocol": {"major": 2}, "node": 5}"#,
            br#"{"protocol": {"major": 2, "minor": 0}, "node": {"id": "00", "name": ""}, "key": "zz", "to": [], "at": "now", "proof": 1}"#,
        ] {
            self.request("hello with wrong types", "POST", "/v1/hello", Some(&token), &[], body);
        }
        // Withdrawals it has no right to make: of spoke a's log, signed by
        // itself (with its own key, and with a's id derived key claimed).
        let a_stream: StreamName = "memory".parse().unwrap();
        let fake_chain = Digest([0x11; 32]);
        let fake_sig = self
            .key
            .sign(&sign::abandon_message(&a_id, &a_stream, 1, &fake_chain));
        let mut hello = serde_json::from_slice::<Value>(&self.hello_body(
            &self.key.clone_key(),
            me.as_str(),
            &hub_id,
            now_ms(),
            json!(2),
        ))
        .unwrap();
        hello["abandoned"] = json!([
            {"node": a_id, "key": self.key.public(), "stream": "memory", "seq": 1, "chain": fake_chain, "sig": fake_sig},
            {"node": a_id, "key": self.key.public(), "stream": "memory", "seq": 0, "chain": fake_chain, "sig": fake_sig},
            {"node": hub_id, "key": self.key.public(), "stream": "nodes", "seq": 1, "chain": fake_chain, "sig": fake_sig},
        ]);
        let body = serde_json::to_vec(&hello).unwrap();
        self.request(
            "hello withdrawing a's log",
            "POST",
            "/v1/hello",
            Some(&token),
            &[],
            &body,
        );
        hello["abandoned"] = Value::Array(
            (0..5000)
                .map(|i| json!({"node": "zz", "key": i, "stream": "memory", "seq": -1, "chain": "", "sig": null}))
                .collect(),
        );
        let body = serde_json::to_vec(&hello).unwrap();
        self.request(
            "hello with 5000 garbage withdrawals",
            "POST",
            "/v1/hello",
            Some(&token),
            &[],
            &body,
        );
        // Its own hello again, so it stays a peer in good standing.
        let body = self.hello_body(
            &self.key.clone_key(),
            me.as_str(),
            &hub_id,
            now_ms(),
            json!(2),
        );
        self.request(
            "hello as itself again",
            "POST",
            "/v1/hello",
            Some(&token),
            &[],
            &body,
        );

        // -- Pushes.
        for body in [
            &b"{not json"[..],
            b"",
            b"[]",
            b"null",
            b"\"batches\"",
            b"{\"batches\": [\xff\xfe]}",
            b"{\"batches\": 5}",
            b"{\"batches\": [5]}",
            b"{\"batches\": [{}]}",
            br#"{"batches": [{"node": "nope", "stream": "memory", "start": 1, "records": []}]}"#,
            br#"{"batches": [{"node": "0123456789abcdef0123456789abcdef", "stream": "../x", "start": 1, "records": []}]}"#,
            br#"{"batches": [{"node": "0123456789abcdef0123456789abcdef", "stream": "memory", "start": "1", "records": {}}]}"#,
            br#"{"batches": [{"node": "0123456789abcdef0123456789abcdef", "stream": "memory", "start": 1.5, "records": [null]}]}"#,
            br#"{"batches": [{"node": "0123456789abcdef0123456789abcdef", "stream": "memory", "start": -1, "records": [1, "x", []]}]}"#,
        ] {
            self.post("push: malformed", "POST", "/v1/push", body);
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        self.post(
            "push: nested 100000 deep",
            "POST",
            "/v1/push",
            deep.as_bytes(),
        );

        // Forged: another node's records, signed by this peer.
        let my_pub = json!(self.key.public());
        let mut forged = Vec::new();
        for (node, start, stream) in [
            (&a_id, a_head + 1, "memory"),
            (&b_id, b_head + 1, "memory"),
            (&a_id, 1, "memory"),
            (&hub_id, 1, "memory"),
            (&a_id, a_share + 1, "share:notes"),
        ] {
            let records: Vec<Value> = if stream == "memory" {
                (0..3).map(|_| self.row(None)).collect()
            } else {
                let m = self.marker();
                vec![
                    json!({"file": {"path": format!("{m}.md"), "vv": {node.as_str(): 999}, "blob": "00".repeat(32), "size": 5, "mtime": 1, "author": "a"}}),
                ]
            };
            forged.push((
                format!(
                    "forged {stream} of {}",
                    if *node == a_id {
                        "a"
                    } else if *node == b_id {
                        "b"
                    } else {
                        "the hub"
                    }
                ),
                Self::batch(
                    &self.key.clone_key(),
                    my_pub.clone(),
                    node,
                    stream,
                    start,
                    None,
                    &records,
                    None,
                ),
            ));
        }
        // The hub's own card, forged.
        let card = json!({"node": {"id": hub_id, "name": "hub", "role": "MALLORY owns this hub", "updated_at": now_ms()}});
        forged.push((
            "forged hub card".to_owned(),
            Self::batch(
                &self.key.clone_key(),
                my_pub.clone(),
                &hub_id,
                "nodes",
                hub_cards + 1,
                None,
                &[card],
                None,
            ),
        ));
        // With a's real key in the batch but this peer's signature.
        let pulled = self.post(
            "pull of a's log",
            "POST",
            "/v1/pull",
            &serde_json::to_vec(&json!({"ranges": [{"node": a_id, "stream": "memory", "after": 0}], "max_records": 1})).unwrap(),
        );
        let a_key = pulled.json()["batches"][0]["key"].clone();
        if !a_key.is_null() {
            let records: Vec<Value> = (0..2).map(|_| self.row(None)).collect();
            forged.push((
                "forged with a's key".to_owned(),
                Self::batch(
                    &self.key.clone_key(),
                    a_key.clone(),
                    &a_id,
                    "memory",
                    a_head + 1,
                    None,
                    &records,
                    None,
                ),
            ));
        }
        // A node nobody knows, with an id not derived from any key (as
        // ids were before protocol 2). Such an id is bound to the first
        // key that signs for it (docs/protocol.md, "Signed logs"): taken,
        // by design, and counted apart, not as a finding.
        let legacy: NodeId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let records: Vec<Value> = (0..2).map(|_| self.row(None)).collect();
        forged.push((
            LEGACY_PROBE.to_owned(),
            Self::batch(
                &self.key.clone_key(),
                my_pub.clone(),
                &legacy,
                "memory",
                1,
                None,
                &records,
                None,
            ),
        ));
        for (label, batch) in &forged {
            let r = self.post(
                label,
                "POST",
                "/v1/push",
                &Self::push_of(vec![batch.clone()]),
            );
            self.note_accepted(label, batch, &r);
        }
        // Its own log, with wrong sequence numbers.
        for start in [0u64, u64::MAX, i64::MAX as u64, 1 << 63, (1 << 53) + 1] {
            let records: Vec<Value> = (0..2).map(|_| self.row(Some(""))).collect();
            let batch = Self::batch(
                &self.key.clone_key(),
                my_pub.clone(),
                &me,
                "memory",
                start,
                None,
                &records,
                None,
            );
            self.post(
                "own log, absurd start",
                "POST",
                "/v1/push",
                &Self::push_of(vec![batch]),
            );
        }
        for _ in 0..2 {
            let records: Vec<Value> = (0..2).map(|_| self.row(Some(""))).collect();
            let batch = Self::batch(
                &self.key.clone_key(),
                my_pub.clone(),
                &me,
                "memory",
                7,
                None,
                &records,
                None,
            );
            self.post(
                "own log, a gap",
                "POST",
                "/v1/push",
                &Self::push_of(vec![batch]),
            );
        }
        let records: Vec<Value> = (0..3).map(|_| self.row(Some(""))).collect();
        for (label, sig_seq) in [
            ("own log, signed past its end", Some(4)),
            ("own log, signed at 0", Some(0)),
            ("own log, signed at u64::MAX", Some(u64::MAX)),
        ] {
            let batch = Self::batch(
                &self.key.clone_key(),
                my_pub.clone(),
                &me,
                "memory",
                1,
                None,
                &records,
                sig_seq,
            );
            self.post(label, "POST", "/v1/push", &Self::push_of(vec![batch]));
        }
        let mut no_sigs = Self::batch(
            &self.key.clone_key(),
            my_pub.clone(),
            &me,
            "memory",
            1,
            None,
            &records,
            None,
        );
        no_sigs["sigs"] = json!([]);
        self.post(
            "own log, unsigned",
            "POST",
            "/v1/push",
            &Self::push_of(vec![no_sigs]),
        );
        let mut bad_sig = Self::batch(
            &self.key.clone_key(),
            my_pub.clone(),
            &me,
            "memory",
            1,
            None,
            &records,
            None,
        );
        bad_sig["sigs"][0]["sig"] = json!("zz");
        self.post(
            "own log, bad signature hex",
            "POST",
            "/v1/push",
            &Self::push_of(vec![bad_sig]),
        );
        let mut swapped = Self::batch(
            &self.key.clone_key(),
            my_pub.clone(),
            &me,
            "memory",
            1,
            None,
            &records,
            None,
        );
        swapped["records"][0] = self.row(Some(""));
        self.post(
            "own log, a record changed after signing",
            "POST",
            "/v1/push",
            &Self::push_of(vec![swapped]),
        );
        let surrogate = Self::batch(
            &self.key.clone_key(),
            my_pub.clone(),
            &me,
            "memory",
            1,
            None,
            &[self.row(Some("PLACEHOLDER"))],
            None,
        );
        let text = serde_json::to_string(&json!({ "batches": [surrogate] }))
            .unwrap()
            .replace("PLACEHOLDER", "\\ud800");
        self.post(
            "own log, a lone surrogate",
            "POST",
            "/v1/push",
            text.as_bytes(),
        );
        // Its own log: rows that are all refused (void), then the same
        // again (duplicates), then an overlapping span.
        let voids: Vec<Value> = {
            let mut v = Vec::new();
            let mut r = self.row(None);
            r["row"]["source"] = json!("");
            v.push(r);
            let mut r = self.row(None);
            r["row"]["ts"] = json!(253_402_300_800i64);
            v.push(r);
            let mut r = self.row(None);
            r["row"]["edited_at"] = json!(i64::MAX);
            v.push(r);
            let mut r = self.row(None);
            r["row"]["msg_id"] = json!("");
            v.push(r);
            let mut r = self.row(None);
            r["row"]["role"] = json!("x".repeat(300));
            v.push(r);
            v
        };
        let voids_batch = Self::batch(
            &self.key.clone_key(),
            my_pub.clone(),
            &me,
            "memory",
            1,
            None,
            &voids,
            None,
        );
        for label in ["own log, void rows", "own log, void rows again"] {
            let r = self.post(
                label,
                "POST",
                "/v1/push",
                &Self::push_of(vec![voids_batch.clone()]),
            );
            let v = r.json();
            let voided = v["voided"].as_array().map_or(0, Vec::len) as u64;
            if v["accepted"].as_u64().unwrap_or(0) > voided {
                self.notes
                    .push(format!("{label}: rows accepted that should be void: {v}"));
            }
        }
        // Share records of its own, none of them a valid path.
        let files: Vec<Value> = ["../escape.md", "/abs.md", ".selves-tmp-x/y.md", "a/./b.md", "a\\b.md", "", "x\u{1}.md"]
            .iter()
            .map(|p| json!({"file": {"path": format!("{p}MALLORY"), "vv": {me.as_str(): 1}, "blob": "11".repeat(32), "size": 3, "mtime": 1, "author": "mallory"}}))
            .collect();
        let share_batch = Self::batch(
            &self.key.clone_key(),
            my_pub.clone(),
            &me,
            "share:notes",
            1,
            None,
            &files,
            None,
        );
        self.post(
            "own share log, hostile paths",
            "POST",
            "/v1/push",
            &Self::push_of(vec![share_batch]),
        );
        // Too many records, too large bodies, lying lengths.
        let many: Vec<Value> = (0..5001).map(|_| json!({"void": "x"})).collect();
        self.post(
            "push of 5001 records",
            "POST",
            "/v1/push",
            &serde_json::to_vec(&json!({"batches": [{"node": me, "stream": "memory", "start": 100, "records": many}]})).unwrap(),
        );
        let huge = format!(
            "{{\"batches\": [{{\"node\": \"{me}\", \"stream\": \"memory\", \"start\": 100, \"records\": [{{\"void\": \"{}\"}}]}}]}}",
            "MALLORY".repeat(9 << 17)
        );
        self.post("push of 9 MiB", "POST", "/v1/push", huge.as_bytes());
        self.post("hello of 9 MiB", "POST", "/v1/hello", huge.as_bytes());
        let proof = self.proof();
        for (label, length) in [
            ("declared 1 TB", "1000000000000"),
            ("declared 2^64+", "99999999999999999999999"),
            ("declared -1", "-1"),
            ("declared abc", "abc"),
        ] {
            let head = format!(
                "POST /v1/push HTTP/1.1\r\nHost: selves\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nselves-proof: {proof}\r\nContent-Length: {length}\r\n\r\n"
            );
            self.send_raw(
                label,
                head.as_bytes(),
                b"{\"batches\": [",
                true,
                Duration::from_secs(45),
            );
        }
        let head = format!(
            "POST /v1/push HTTP/1.1\r\nHost: selves\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nselves-proof: {proof}\r\nContent-Length: 2\r\nContent-Length: 200\r\n\r\n"
        );
        self.send_raw(
            "two lengths",
            head.as_bytes(),
            b"{}",
            true,
            Duration::from_secs(45),
        );
        for (label, te, body) in [
            (
                "chunked, bad size",
                "chunked",
                &b"zz\r\n{}\r\n0\r\n\r\n"[..],
            ),
            (
                "chunked, huge size",
                "chunked",
                b"ffffffffffffffff\r\n{}\r\n",
            ),
            ("chunked, cut", "chunked", b"10\r\n{\"batc"),
            ("gzip transfer", "gzip, chunked", b"5\r\nhello\r\n0\r\n\r\n"),
        ] {
            let head = format!(
                "POST /v1/push HTTP/1.1\r\nHost: selves\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nselves-proof: {proof}\r\nTransfer-Encoding: {te}\r\n\r\n"
            );
            self.send_raw(label, head.as_bytes(), body, true, Duration::from_secs(45));
        }
        for enc in ["gzip", "br", "deflate", "gzip, gzip", "x-unknown"] {
            let junk = self.garbage(300);
            let proof = self.proof();
            self.request(
                "compressed garbage",
                "POST",
                "/v1/push",
                Some(&token),
                &[("selves-proof", proof.as_str()), ("Content-Encoding", enc)],
                &junk,
            );
        }
        let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        gz.extend(self.garbage(64));
        let proof = self.proof();
        self.request(
            "a gzip header on garbage",
            "POST",
            "/v1/push",
            Some(&token),
            &[
                ("selves-proof", proof.as_str()),
                ("Content-Encoding", "gzip"),
            ],
            &gz,
        );

        // -- Pulls, changes, markers, blobs.
        let many_ranges: Vec<Value> = (0..10_001)
            .map(|_| json!({"node": a_id, "stream": "memory", "after": 0}))
            .collect();
        for body in [
            serde_json::to_vec(&json!({"ranges": many_ranges})).unwrap(),
            br#"{"ranges": 5}"#.to_vec(),
            br#"{"ranges": [{"node": "zz", "stream": "memory", "after": 0}]}"#.to_vec(),
            serde_json::to_vec(&json!({"ranges": [{"node": a_id, "stream": "memory", "after": u64::MAX}]})).unwrap(),
            serde_json::to_vec(&json!({"ranges": [{"node": a_id, "stream": "memory", "after": -1}]})).unwrap(),
            serde_json::to_vec(&json!({"ranges": [{"node": a_id, "stream": "share:../../etc", "after": 0}]})).unwrap(),
            serde_json::to_vec(&json!({"ranges": [{"node": a_id, "stream": "share:nope", "after": 0}]})).unwrap(),
            serde_json::to_vec(&json!({"ranges": [{"node": a_id, "stream": "memory", "after": 0}], "max_records": 0, "max_bytes": 0})).unwrap(),
            serde_json::to_vec(&json!({"ranges": [{"node": a_id, "stream": "memory", "after": 0}], "max_records": u64::MAX, "max_bytes": -5})).unwrap(),
            serde_json::to_vec(&json!({"ranges": [{"node": legacy, "stream": "memory", "after": 0}]})).unwrap(),
            b"{\"ranges\": [".to_vec(),
        ] {
            self.post("pull: hostile", "POST", "/v1/pull", &body);
        }
        for q in [
            "abc",
            "-1",
            "1e99",
            "18446744073709551616",
            "",
            "1&after=2",
            "%00",
        ] {
            self.post(
                "changes: hostile",
                "GET",
                &format!("/v1/changes?after={q}"),
                b"",
            );
        }
        self.post("changes: POST", "POST", "/v1/changes?after=1", b"{}");
        for body in [
            b"{not json".to_vec(),
            serde_json::to_vec(&json!({"node": me, "seen": "../x", "write": "ok"})).unwrap(),
            serde_json::to_vec(&json!({"node": me, "seen": "ok", "write": "a b"})).unwrap(),
            serde_json::to_vec(&json!({"node": a_id, "seen": "ok", "write": "MALLORY"})).unwrap(),
            serde_json::to_vec(&json!({"node": hub_id, "seen": "ok", "write": "MALLORY"})).unwrap(),
            serde_json::to_vec(&json!({"node": "nope", "seen": "ok", "write": "ok"})).unwrap(),
            serde_json::to_vec(&json!({"node": me, "seen": "x".repeat(65), "write": "ok"}))
                .unwrap(),
            vec![b' '; 5000],
        ] {
            self.post("marker: hostile", "POST", "/v1/marker", &body);
        }
        let forged_share = forged
            .iter()
            .find(|(l, _)| l.contains("share"))
            .map(|(_, b)| b.clone())
            .unwrap_or(Value::Null);
        let many_wants: Vec<Value> = (0..10_001)
            .map(|_| json!({"hash": "00".repeat(32), "from": 0}))
            .collect();
        for (path, body) in [
            ("/v1/blobs/wants", serde_json::to_vec(&json!({"share": "nope", "batches": []})).unwrap()),
            ("/v1/blobs/wants", serde_json::to_vec(&json!({"share": "notes", "batches": [forged_share]})).unwrap()),
            ("/v1/blobs/wants", b"{\"share\": 5}".to_vec()),
            ("/v1/blobs/wants", serde_json::to_vec(&json!({"share": "../../etc", "batches": []})).unwrap()),
            ("/v1/blobs/get", serde_json::to_vec(&json!({"share": "notes", "want": many_wants})).unwrap()),
            ("/v1/blobs/get", serde_json::to_vec(&json!({"share": "notes", "want": [{"hash": "zz", "from": 0}]})).unwrap()),
            ("/v1/blobs/get", serde_json::to_vec(&json!({"share": "notes", "want": [{"hash": "ab".repeat(32), "from": u64::MAX}]})).unwrap()),
            ("/v1/blobs/get", serde_json::to_vec(&json!({"share": "nope", "want": [{"hash": "ab".repeat(32), "from": 0}]})).unwrap()),
            ("/v1/blobs/get", b"[]".to_vec()),
        ] {
            self.post("blobs: hostile", "POST", path, &body);
        }
        let frame = |hash: &str, from: u64, size: u64, bytes: &[u8]| -> Vec<u8> {
            let mut f =
                serde_json::to_vec(&json!({"hash": hash, "from": from, "size": size})).unwrap();
            f.push(b'\n');
            f.extend_from_slice(bytes);
            f
        };
        for (label, path, body) in [
            (
                "put: no share",
                "/v1/blobs/put",
                frame(&"ab".repeat(32), 0, 3, b"abc"),
            ),
            (
                "put: unknown share",
                "/v1/blobs/put?share=nope",
                frame(&"ab".repeat(32), 0, 3, b"abc"),
            ),
            (
                "put: share path",
                "/v1/blobs/put?share=../../x",
                frame(&"ab".repeat(32), 0, 3, b"abc"),
            ),
            (
                "put: wrong hash",
                "/v1/blobs/put?share=notes",
                frame(&"ab".repeat(32), 0, 7, b"MALLORY"),
            ),
            (
                "put: huge size",
                "/v1/blobs/put?share=notes",
                frame(&"ab".repeat(32), 0, 1 << 62, b"abc"),
            ),
            (
                "put: cut",
                "/v1/blobs/put?share=notes",
                frame(&"ab".repeat(32), 0, 100, b"abc"),
            ),
            (
                "put: bad header",
                "/v1/blobs/put?share=notes",
                b"{hash\n123".to_vec(),
            ),
            (
                "put: tail past zero",
                "/v1/blobs/put?share=notes",
                frame(&"ab".repeat(32), u64::MAX, 3, b"abc"),
            ),
            (
                "put: missing",
                "/v1/blobs/put?share=notes",
                b"{\"hash\": \"00\", \"missing\": true}\n".to_vec(),
            ),
        ] {
            self.post(label, "POST", path, &body);
        }

        // -- Paths, methods, framing.
        let long_path = format!("/v1/{}", "a".repeat(20_000));
        for path in [
            "/",
            "/v1",
            "/v1/",
            "/v1/hello/x",
            "/v2/pull",
            "/v1/../../etc/passwd",
            "/v1/%2e%2e/%2e%2e/etc/passwd",
            "/v1/push%00",
            "/v1/nowhere",
            "/memex/v1/rows",
            "/api/rows",
            "*",
            "http://evil.example/v1/hello",
            long_path.as_str(),
            "/v1/digest?x=%zz",
        ] {
            for method in ["GET", "POST"] {
                self.post("unknown path", method, path, b"{}");
            }
        }
        for method in [
            "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "FOO", "G\u{e9}T",
        ] {
            self.post("unknown method", method, "/v1/push", b"{}");
        }
        let many_headers: String = (0..300).map(|i| format!("X-H{i}: {i}\r\n")).collect();
        let head = format!(
            "POST /v1/pull HTTP/1.1\r\nHost: selves\r\n{many_headers}Content-Length: 2\r\n\r\n"
        );
        self.send_raw(
            "300 headers",
            head.as_bytes(),
            b"{}",
            true,
            Duration::from_secs(30),
        );
        let head = format!(
            "POST /v1/pull HTTP/1.1\r\nHost: selves\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\n",
            "a".repeat(200_000)
        );
        self.send_raw(
            "a 200 KB header",
            head.as_bytes(),
            b"{}",
            true,
            Duration::from_secs(30),
        );
        self.send_raw(
            "HTTP/2 preface over TLS",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            &[0, 0, 0, 4, 0, 0, 0, 0, 0],
            true,
            Duration::from_secs(20),
        );
        self.send_raw(
            "HTTP/1.0",
            b"GET /v1/digest HTTP/1.0\r\n\r\n",
            b"",
            true,
            Duration::from_secs(20),
        );
        self.send_raw(
            "headers never finished",
            b"POST /v1/hello HTTP/1.1\r\nHost: selves\r\nX-Slow: ",
            b"",
            true,
            Duration::from_secs(30),
        );
        for _ in 0..10 {
            let junk = {
                let n = self.rng.range(1, 4000);
                self.garbage(n)
            };
            self.send_raw(
                "garbage over TLS",
                &junk,
                b"",
                true,
                Duration::from_secs(20),
            );
        }
        for _ in 0..6 {
            let junk = {
                let n = self.rng.range(1, 4000);
                self.garbage(n)
            };
            self.send_raw(
                "garbage without TLS",
                &junk,
                b"",
                false,
                Duration::from_secs(20),
            );
        }
        self.send_raw(
            "plain HTTP",
            b"GET /v1/digest HTTP/1.1\r\nHost: selves\r\n\r\n",
            b"",
            false,
            Duration::from_secs(20),
        );

        // -- Random damage to real requests (bodies that cannot be proven:
        // forged batches, pulls, hellos).
        let seeds: Vec<(&str, &str, Vec<u8>)> = vec![
            ("POST", "/v1/push", Self::push_of(forged.iter().map(|(_, b)| b.clone()).collect())),
            (
                "POST",
                "/v1/pull",
                serde_json::to_vec(&json!({"ranges": [{"node": a_id, "stream": "memory", "after": 0}, {"node": b_id, "stream": "share:notes", "after": 0}]})).unwrap(),
            ),
            ("POST", "/v1/hello", self.hello_body(&other, other.public().node_id().as_str(), &hub_id, now_ms(), json!(2))),
            (
                "POST",
                "/v1/blobs/wants",
                serde_json::to_vec(&json!({"share": "notes", "batches": [forged_share]})).unwrap(),
            ),
            ("POST", "/v1/marker", serde_json::to_vec(&json!({"node": me, "seen": "ok", "write": "ok"})).unwrap()),
        ];
        for i in 0..120 {
            let (method, path, body) = &seeds[i % seeds.len()];
            let damaged = self.mangle(body);
            self.post("damaged request", method, path, &damaged);
        }

        chaos.logln(&format!(
            "hostile peer: {} requests, answers {:?}",
            self.sent, self.statuses
        ));
        Ok(())
    }
}

trait CloneKey {
    fn clone_key(&self) -> NodeKey;
}

impl CloneKey for NodeKey {
    fn clone_key(&self) -> NodeKey {
        NodeKey::from_seed(*self.seed())
    }
}
