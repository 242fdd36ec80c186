//! `bench/run capture [--mb N]`: capture of agent sessions, and MCP search.
//!
//! 1. A tree of Claude Code sessions as Claude Code lays them out (N MB,
//!    default 200: projects, sessions of a few hundred lines; user and
//!    assistant turns, tool calls, and large tool results, which are most
//!    of the bytes and are not captured) is captured from cold with
//!    `selves capture add claude-code DIR`: MB/s of session files read.
//! 2. Two daemons (a hub, and a laptop capturing that tree): one line
//!    appended to a session on the laptop, until `selves search` on the
//!    hub finds it (five times).
//! 3. `selves mcp` on a node holding 100 000 rows, driven by the official
//!    MCP Python SDK's client (`crates/selves/tests/mcp/client.py`; a
//!    Python with `mcp` from `SELVES_MCP_PYTHON` or `target/mcp-venv`,
//!    which `.ci/run` makes): 300 searches for different words, p50/p99.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Node, Rng, WORDS, mb};

/// Between `lo` and `hi` words.
fn words(rng: &mut Rng, lo: usize, hi: usize) -> String {
    let n = rng.range(lo, hi);
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.range(0, WORDS.len())]);
    }
    s
}

/// One session line as Claude Code writes it.
fn line(session: &str, n: usize, kind: usize, rng: &mut Rng) -> String {
    let uuid = format!("{session}-{n}");
    let ts = format!(
        "2026-11-{:02}T{:02}:{:02}:00.000Z",
        1 + n % 28,
        n % 24,
        n % 60
    );
    let v = match kind {
        0 => serde_json::json!({"parentUuid": null, "isSidechain": false, "userType": "external",
            "cwd": "/home/ana/project", "sessionId": session, "version": "2.0.14", "gitBranch": "main",
            "type": "user", "message": {"role": "user", "content": words(rng, 8, 80)},
            "uuid": uuid, "timestamp": ts}),
        1 => {
            serde_json::json!({"parentUuid": null, "cwd": "/home/ana/project", "sessionId": session,
            "type": "assistant", "message": {"id": format!("msg_{n}"), "role": "assistant", "model": "claude-sonnet-4-5",
                "content": [{"type": "thinking", "thinking": words(rng, 30, 50)},
                            {"type": "text", "text": words(rng, 20, 300)},
                            {"type": "tool_use", "id": format!("toolu_{n}"), "name": "Bash", "input": {"command": "cargo test"}}]},
            "uuid": uuid, "timestamp": ts})
        }
        _ => {
            serde_json::json!({"parentUuid": null, "cwd": "/home/ana/project", "sessionId": session,
            "type": "user", "message": {"role": "user", "content": [{"tool_use_id": format!("toolu_{n}"),
                "type": "tool_result", "content": words(rng, 100, 1500)}]},
            "uuid": uuid, "timestamp": ts})
        }
    };
    v.to_string()
}

/// Writes about `bytes` of sessions under `dir`; returns (bytes, files,
/// lines that become rows).
fn generate(dir: &Path, bytes: u64) -> (u64, usize, usize) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut total, mut files, mut kept) = (0u64, 0usize, 0usize);
    while total < bytes {
        let project = dir.join(format!("-home-ana-project-{}", files % 40));
        std::fs::create_dir_all(&project).expect("mkdir");
        let session = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            files,
            rng.range(0, 1 << 40)
        );
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(project.join(format!("{session}.jsonl"))).expect("create"),
        );
        for n in 0..rng.range(100, 600) {
            let kind = n % 3;
            let l = line(&session, n, kind, &mut rng);
            total += l.len() as u64 + 1;
            kept += usize::from(kind < 2);
            writeln!(f, "{l}").expect("write");
        }
        files += 1;
    }
    (total, files, kept)
}

fn python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SELVES_MCP_PYTHON").map(PathBuf::from),
        Some(PathBuf::from("target/mcp-venv/bin/python")),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import mcp"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) fn run(selves: &Path, dir: &Path, megabytes: u64) {
    // 1. Capture from cold.
    let tree = dir.join("claude-projects");
    let (bytes, files, kept) = generate(&tree, megabytes * 1_000_000);
    println!(
        "generated {files} Claude Code sessions, {:.0} MB, {kept} messages to keep",
        mb(bytes)
    );
    let laptop = Node::new(selves, dir, "laptop");
    let started = Instant::now();
    let out = laptop.ok(&["capture", "add", "claude-code", tree.to_str().unwrap()]);
    let cold = started.elapsed().as_secs_f64();
    println!("{}", out.trim());
    println!(
        "capture from cold (read, parse, store, index): {cold:.2} s, {:.0} MB/s of session files",
        mb(bytes) / cold
    );
    let started = Instant::now();
    laptop.ok(&["capture", "run"]);
    println!(
        "a pass with nothing new: {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );

    // 2. An appended line, searchable on the hub through two daemons.
    let hub = Node::new(selves, dir, "hub");
    let mut hub_daemon = hub
        .cmd(&["daemon", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("hub daemon");
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hub_daemon.stdout.take().unwrap()),
        &mut first,
    )
    .expect("listening line");
    let port: u16 = first.trim().rsplit(':').next().unwrap().parse().unwrap();
    laptop.pair_at(&hub, "127.0.0.1", port);
    laptop.ok(&["sync", "hub"]);
    let mut laptop_daemon = laptop
        .cmd(&["daemon"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("laptop daemon");
    std::thread::sleep(Duration::from_secs(2));
    let session = std::fs::read_dir(tree.join("-home-ana-project-0"))
        .expect("a project")
        .next()
        .unwrap()
        .unwrap()
        .path();
    let sid = session.file_stem().unwrap().to_str().unwrap().to_owned();
    let mut waits = Vec::new();
    for i in 0..5 {
        let word = format!("xylophone{i}quartz");
        let mut rng = Rng(7 + i);
        let mut l: serde_json::Value =
            serde_json::from_str(&line(&sid, 100_000 + i as usize, 0, &mut rng)).unwrap();
        l["message"]["content"] = serde_json::json!(format!("remember the {word} for later"));
        let started = Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&session)
            .expect("open session");
        writeln!(f, "{l}").expect("append");
        drop(f);
        loop {
            let out = hub.cmd(&["search", &word]).output().expect("search");
            if out.status.success() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the appended line never reached the hub"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        waits.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let _ = laptop_daemon.kill();
    let _ = hub_daemon.kill();
    let _ = laptop_daemon.wait();
    let _ = hub_daemon.wait();
    println!(
        "an appended line searchable on the hub through two daemons: {} ms",
        waits
            .iter()
            .map(|w| format!("{w:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // 3. MCP search latency on 100 000 rows.
    let Some(python) = python() else {
        println!(
            "MCP search: skipped (no Python with the mcp SDK: run .ci/run or set SELVES_MCP_PYTHON)"
        );
        return;
    };
    let big = Node::new(selves, dir, "mcp");
    let data = dir.join("rows.jsonl");
    crate::generate(&data, 100_000);
    big.ok(&["import", data.to_str().unwrap()]);
    let mut rng = Rng(42);
    let calls: Vec<serde_json::Value> = (0..300)
        .map(|i| {
            let query = match i % 3 {
                0 => WORDS[rng.range(0, WORDS.len())].to_owned(),
                1 => format!(
                    "{} {}",
                    WORDS[rng.range(0, WORDS.len())],
                    WORDS[rng.range(0, WORDS.len())]
                ),
                _ => format!("message {}", rng.range(0, 100_000)),
            };
            serde_json::json!(["search", {"query": query}])
        })
        .collect();
    let out = Command::new(&python)
        .arg("crates/selves/tests/mcp/client.py")
        .arg(selves)
        .arg(serde_json::Value::Array(calls).to_string())
        .env("SELVES_HOME", &big.home)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "the MCP client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    let mut ms: Vec<f64> = report["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ms"][0].as_f64().unwrap())
        .collect();
    ms.sort_by(f64::total_cmp);
    println!(
        "MCP search on 100 000 rows, 300 queries through the Python SDK client: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms[ms.len() - 1]
    );
}
