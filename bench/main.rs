//! selves-bench: measures the release `selves` binary on loopback.
//!
//! `bench/run sync [--rows N]` generates N realistic rows (100 B – 16 KB
//! texts, Unicode, thousands of conversations), then measures two
//! scenarios: *pull*, an empty node syncing everything from a serving node,
//! and *push*, a node pushing everything into an empty serving node.
//!
//! For each: rows/s and MB/s until the data is durable on the receiver,
//! the time until it is also searchable, the peak RSS of both processes,
//! and the time of a no-op sync round.
//!
//! `bench/run shares [--files N]`: shares (see `shares.rs`).
//! `bench/run join [--rows N]`: `selves join` end to end (see `join.rs`).
//! `bench/run remote [--rows N]`: through a git remote (see `remote.rs`).
//! `bench/run capture [--mb N]`: capture of agent sessions, an append
//! searchable on a second node, MCP search latency (see `capture.rs`).
//! `bench/run chaos [--cycles N] [--seed N] [--skip WHAT,…]
//! [--restore-with-folder]`: not a measurement but a fault-injection run
//! (see `chaos.rs`): three nodes under SIGKILL, partitions, a full disk,
//! restored backups and a hostile peer; it checks that nothing acknowledged
//! is lost or duplicated and that everything converges, and exits 1 if not.
//!
//! Everything runs in a temporary directory on 127.0.0.1 (chaos: its hub in
//! a network namespace when it can make one).

mod capture;
mod chaos;
mod join;
mod remote;
mod shares;

use std::io::{BufRead as _, BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut rows = 100_000usize;
    let mut files = 10_000usize;
    let mut megabytes = 200u64;
    let mut chaos_opts = chaos::Options::default();
    let mut i = 0;
    let mut scenario = "sync".to_owned();
    let usage = |what: &str| -> ! {
        eprintln!(
            "usage: selves-bench sync [--rows N] | shares [--files N] | capture [--mb N] | join [--rows N] | remote [--rows N] | chaos [--cycles N] [--seed N] [--skip partitions,disk-full,restores,hostile] [--restore-with-folder]  ({what})"
        );
        std::process::exit(2);
    };
    let value = |i: usize| -> &str {
        args.get(i + 1)
            .map(String::as_str)
            .unwrap_or_else(|| usage(&format!("{} takes a value", args[i])))
    };
    while i < args.len() {
        match args[i].as_str() {
            "--rows" => {
                rows = value(i).parse().expect("--rows takes a number");
                i += 1;
            }
            "--mb" => {
                megabytes = value(i).parse().expect("--mb takes a number");
                i += 1;
            }
            "--files" => {
                files = value(i).parse().expect("--files takes a number");
                i += 1;
            }
            "--cycles" => {
                chaos_opts.cycles = value(i).parse().expect("--cycles takes a number");
                i += 1;
            }
            "--seed" => {
                chaos_opts.seed = Some(value(i).parse().expect("--seed takes a number"));
                i += 1;
            }
            "--skip" => {
                for what in value(i).split(',') {
                    if !chaos::PARTS.contains(&what) {
                        usage(&format!("--skip takes some of {}", chaos::PARTS.join(",")));
                    }
                    chaos_opts.skip.push(what.to_owned());
                }
                i += 1;
            }
            "--restore-with-folder" => chaos_opts.restore_folder = true,
            "sync" | "shares" | "join" | "chaos" | "remote" | "capture" => {
                scenario = args[i].clone()
            }
            other => usage(&format!("unknown: {other}")),
        }
        i += 1;
    }
    let selves = locate_selves();
    let dir = tempdir();
    if scenario == "chaos" {
        println!(
            "selves-bench chaos: binary {}, dir {}",
            selves.display(),
            dir.display()
        );
        let code = chaos::run(&selves, &dir, &chaos_opts);
        if code == 0 && std::env::var_os("SELVES_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            println!("homes, folders and chaos.log kept in {}", dir.display());
        }
        std::process::exit(code);
    }
    if scenario == "capture" {
        println!(
            "selves-bench capture: binary {}, dir {}",
            selves.display(),
            dir.display()
        );
        capture::run(&selves, &dir, megabytes);
        if std::env::var_os("SELVES_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        return;
    }
    if scenario == "remote" {
        println!(
            "selves-bench remote: binary {}, dir {}",
            selves.display(),
            dir.display()
        );
        remote::run(&selves, &dir, rows);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    if scenario == "join" {
        println!(
            "selves-bench join: binary {}, dir {}",
            selves.display(),
            dir.display()
        );
        join::run(&selves, &dir, rows);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    if scenario == "shares" {
        println!(
            "selves-bench shares: binary {}, dir {}",
            selves.display(),
            dir.display()
        );
        shares::run(&selves, &dir, files);
        if std::env::var_os("SELVES_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        return;
    }
    println!(
        "selves-bench: {rows} rows, binary {}, dir {}",
        selves.display(),
        dir.display()
    );

    let data = dir.join("rows.jsonl");
    let (bytes, text_bytes, convs) = generate(&data, rows);
    println!(
        "generated {rows} rows in {convs} conversations: {:.1} MB of text, {:.1} MB of JSON",
        mb(text_bytes),
        mb(bytes)
    );

    let full = Node::new(&selves, &dir, "full");
    let started = Instant::now();
    let (code, rss) = full.run_measured(&["import", data.to_str().unwrap()]);
    assert_eq!(code, 0, "import failed");
    let import_s = started.elapsed().as_secs_f64();
    println!(
        "import (capture + search index): {import_s:.2} s, {:.0} rows/s, peak RSS {} MB\n",
        rows as f64 / import_s,
        rss / 1024
    );

    // Pull: an empty node syncs from the full one.
    let server = full.serve();
    let empty = Node::new(&selves, &dir, "pull-dst");
    empty.pair(&full, &server);
    let pull = measure_sync(&empty, &server, rows, text_bytes, Receiver::Client);
    drop(server);

    // Push: the full node pushes into an empty server.
    let sink = Node::new(&selves, &dir, "push-dst");
    let server = sink.serve();
    full.pair(&sink, &server);
    let push = measure_sync(&full, &server, rows, text_bytes, Receiver::Server(&sink));
    drop(server);

    println!(
        "| scenario | rows/s to durable | MB/s (text) | durable after | searchable after | peak RSS client | peak RSS server | no-op round (process / in-round) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, m) in [
        ("pull into empty node", &pull),
        ("push into empty server", &push),
    ] {
        println!(
            "| {name} | {:.0} | {:.1} | {:.2} s | {:.2} s | {} MB | {} MB | {:.1} ms / {} ms |",
            rows as f64 / m.durable_s,
            mb(text_bytes) / m.durable_s,
            m.durable_s,
            m.searchable_s,
            m.client_rss_kb / 1024,
            m.server_rss_kb / 1024,
            m.noop_process_ms,
            m.noop_round_ms,
        );
    }
    if std::env::var_os("SELVES_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("homes kept in {}", dir.display());
    }
}

pub(crate) fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn locate_selves() -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    let candidate = me.with_file_name("selves");
    if candidate.exists() {
        return candidate;
    }
    eprintln!(
        "no selves binary beside {}: build it with `cargo build --release -p selves` (bench/run does)",
        me.display()
    );
    std::process::exit(2);
}

fn tempdir() -> PathBuf {
    let base = std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let dir = base.join(format!("selves-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A tiny deterministic generator (xorshift).
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

pub(crate) const WORDS: &[&str] = &[
    "the",
    "memory",
    "agent",
    "deploy",
    "server",
    "laptop",
    "tunnel",
    "sync",
    "conversation",
    "database",
    "config",
    "knowledge",
    "remember",
    "telegram",
    "message",
    "function",
    "error",
    "rust",
    "sqlite",
    "index",
    "search",
    "token",
    "certificate",
    "merge",
    "conflict",
    "record",
    "and",
    "of",
    "to",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "by",
    "привет",
    "память",
    "сервер",
    "синхронизация",
    "東京",
    "記憶",
    "同期",
    "🙂",
    "🚀",
    "naïve",
    "café",
    "Ünïcödé",
    "λ",
    "ok",
    "v1.2.3",
    "foo-bar",
    "c++",
    "it's",
    "(x)",
    "{\"k\": 1}",
];

/// Writes `n` rows; returns (JSON bytes, text bytes, conversations).
pub(crate) fn generate(path: &Path, n: usize) -> (u64, u64, usize) {
    let mut out = BufWriter::new(std::fs::File::create(path).expect("create data file"));
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let convs = (n / 30).clamp(1, 5000);
    let mut bytes = 0u64;
    let mut text_bytes = 0u64;
    for i in 0..n {
        // 60% short, 30% medium, 8% long, 2% very long: about 1.4 KB mean.
        let target = match rng.range(0, 100) {
            0..60 => rng.range(100, 600),
            60..90 => rng.range(600, 3000),
            90..98 => rng.range(3000, 8000),
            _ => rng.range(8000, 16384),
        };
        let mut text = String::with_capacity(target + 16);
        while text.len() < target {
            text.push_str(WORDS[rng.range(0, WORDS.len())]);
            text.push(if rng.range(0, 12) == 0 { '\n' } else { ' ' });
        }
        text_bytes += text.len() as u64;
        let conv = rng.range(0, convs);
        let row = serde_json::json!({
            "source": if conv.is_multiple_of(3) { "telegram" } else { "claude-code" },
            "conversation_id": format!("conv-{conv}"),
            "msg_id": format!("m{i}"),
            "role": if i % 2 == 0 { "user" } else { "assistant" },
            "sender": "me",
            "text": text,
            "ts": 1_716_800_000 + i as i64,
            "channel": null,
            "metadata": "{\"model\":\"bench\"}",
            "conversation": {"title": format!("conversation {conv}"), "first_ts": 1_716_800_000, "last_ts": 1_716_800_000 + n as i64},
        });
        let line = serde_json::to_string(&row).unwrap();
        bytes += line.len() as u64 + 1;
        writeln!(out, "{line}").unwrap();
    }
    out.flush().unwrap();
    (bytes, text_bytes, convs)
}

pub(crate) struct Node {
    bin: PathBuf,
    pub(crate) home: PathBuf,
    name: String,
}

pub(crate) struct Server {
    child: std::process::Child,
    pub(crate) port: u16,
}

impl Server {
    /// Peak RSS so far (VmHWM), in KB.
    fn peak_rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    pub(crate) fn new(bin: &Path, dir: &Path, name: &str) -> Node {
        let node = Node {
            bin: bin.to_owned(),
            home: dir.join(name),
            name: name.to_owned(),
        };
        node.ok(&["init", "--name", name]);
        node
    }

    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("SELVES_HOME", &self.home)
            .env_remove("SELVES_LOG");
        c
    }

    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run selves");
        assert!(
            out.status.success(),
            "selves {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command; returns its exit code and peak RSS (KB).
    fn run_measured(&self, args: &[&str]) -> (i32, u64) {
        let child = self.cmd(args).stdout(Stdio::null()).spawn().expect("spawn");
        wait_rusage(child)
    }

    pub(crate) fn serve(&self) -> Server {
        self.serve_at(None, "127.0.0.1:0", Stdio::null())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `selves serve --listen ADDR`, inside the network namespace `netns`
    /// when given (`ip netns exec`, which execs the binary: the child is
    /// the server itself), its stderr to `stderr`. Fails when the server
    /// does not say where it listens.
    pub(crate) fn serve_at(
        &self,
        netns: Option<&str>,
        listen: &str,
        stderr: Stdio,
    ) -> Result<Server, String> {
        let args = [
            "serve",
            "--listen",
            listen,
            "--rate-per-minute",
            "100000",
            "--rate-burst",
            "10000",
        ];
        let mut cmd = match netns {
            None => self.cmd(&args),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns])
                    .arg(&self.bin)
                    .args(args)
                    .env("SELVES_HOME", &self.home)
                    .env_remove("SELVES_LOG");
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot spawn selves serve: {e}"))?;
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        match line.trim().rsplit(':').next().and_then(|p| p.parse().ok()) {
            Some(port) => Ok(Server { child, port }),
            None => {
                let _ = child.kill();
                let status = child.wait();
                Err(format!(
                    "selves serve --listen {listen} did not start: it printed {line:?} and ended with {status:?}"
                ))
            }
        }
    }

    /// `sync hub --json`, which must succeed; its one peer result.
    pub(crate) fn sync_json(&self) -> serde_json::Value {
        let out = self.ok(&["sync", "hub", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("sync --json");
        v[0].clone()
    }

    pub(crate) fn pair(&self, hub: &Node, server: &Server) {
        self.pair_at(hub, "127.0.0.1", server.port);
    }

    /// Pairs with `hub` served at `host:port`, as alias `hub`.
    pub(crate) fn pair_at(&self, hub: &Node, host: &str, port: u16) {
        let blob = hub.ok(&[
            "invite",
            "--peer",
            &self.name,
            "--host",
            host,
            "--port",
            &port.to_string(),
        ]);
        self.ok(&["pair", blob.trim(), "--alias", "hub", "--force"]);
    }
}

fn wait_rusage(child: std::process::Child) -> (i32, u64) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child; `status` and `usage` are valid
    // for writes.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, usage.ru_maxrss as u64)
}

enum Receiver<'a> {
    Client,
    Server(&'a Node),
}

struct Measured {
    durable_s: f64,
    searchable_s: f64,
    client_rss_kb: u64,
    server_rss_kb: u64,
    noop_process_ms: f64,
    noop_round_ms: u64,
}

fn measure_sync(
    client: &Node,
    server: &Server,
    rows: usize,
    _text: u64,
    receiver: Receiver<'_>,
) -> Measured {
    let started = Instant::now();
    let child = client
        .cmd(&["sync", "hub", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sync");
    // Read the report while waiting (wait4) for the process and its RSS.
    let out_pipe = {
        let mut child = child;
        let pipe = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut BufReader::new(pipe), &mut s).unwrap();
            s
        });
        let (code, rss) = wait_rusage(child);
        assert_eq!(code, 0, "sync failed");
        (reader.join().unwrap(), rss)
    };
    let wall = started.elapsed();
    let (json, client_rss_kb) = out_pipe;
    let report: serde_json::Value = serde_json::from_str(&json).expect("sync --json");
    let r = &report[0];
    let moved = r["report"]["pulled"].as_u64().unwrap() + r["report"]["pushed"].as_u64().unwrap();
    assert_eq!(moved, rows as u64, "not every row moved: {r}");
    // The round reports when the last record was durable, on its own clock
    // (started just after the process opened its store). What follows it in
    // the process (catching up the search index, exiting) is subtracted from
    // the wall time measured here; the start-up before it stays counted.
    let durable_ms = r["report"]["durable_ms"].as_f64().unwrap();
    let end_ms = r["searchable_ms"]
        .as_f64()
        .unwrap_or(r["report"]["elapsed_ms"].as_f64().unwrap());
    let durable_s = wall.as_secs_f64() - (end_ms - durable_ms) / 1e3;
    let searchable_s = match receiver {
        // The client catches the index up before it exits.
        Receiver::Client => wall.as_secs_f64(),
        Receiver::Server(node) => {
            // The server indexes in the background; poll until it is done.
            loop {
                let status: serde_json::Value =
                    serde_json::from_str(&node.ok(&["status", "--json"])).unwrap();
                if status["search"]["pending"] == 0 && status["memory"]["rows"] == rows as u64 {
                    break started.elapsed().as_secs_f64();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let server_rss_kb = server.peak_rss_kb();
    // No-op rounds.
    let mut process_ms = Vec::new();
    let mut round_ms = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        let out = client.ok(&["sync", "hub", "--json"]);
        process_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        round_ms.push(v[0]["report"]["elapsed_ms"].as_u64().unwrap());
    }
    process_ms.sort_by(f64::total_cmp);
    round_ms.sort();
    Measured {
        durable_s,
        searchable_s,
        client_rss_kb,
        server_rss_kb,
        noop_process_ms: process_ms[5],
        noop_round_ms: round_ms[5],
    }
}
