//! `bench/run shares [--files N]`: a knowledge folder of N markdown files
//! (1–50 KB, in nested folders) and a 50 MB session log, synced between
//! two nodes on loopback.
//!
//! Measures (issue 4's targets in brackets):
//! - initial sync of the folder into an empty node [≤ 5 s for 10,000];
//! - a no-op scan of the folder [≤ 300 ms];
//! - one changed file reaching the peer in one `sync` [≤ 100 ms];
//! - bytes sent for a one-line append to a 50 MB `.jsonl` [≤ 8 KB].

use std::path::Path;
use std::time::Instant;

use crate::{Node, Rng, WORDS, mb};

pub fn run(selves: &Path, dir: &Path, files: usize) {
    let src = dir.join("knowledge-src");
    let (bytes, folders) = generate(&src, files);
    println!(
        "generated {files} markdown files in {folders} folders: {:.1} MB",
        mb(bytes)
    );
    let hub = Node::new(selves, dir, "hub");
    let t = Instant::now();
    hub.ok(&["share", "add", "knowledge", src.to_str().unwrap()]);
    let first_scan = t.elapsed().as_secs_f64();
    let server = hub.serve();
    let spoke = Node::new(selves, dir, "spoke");
    spoke.pair(&hub, &server);
    let dst = dir.join("knowledge-dst");
    spoke.ok(&["share", "add", "knowledge", dst.to_str().unwrap()]);

    // Initial sync into the empty node.
    let t = Instant::now();
    let report = spoke.sync_json();
    let initial = t.elapsed().as_secs_f64();
    let sh = share(&report, "knowledge");
    assert_eq!(
        sh["pulled"].as_u64(),
        Some(files as u64),
        "not every file arrived: {report}"
    );
    println!("initial sync: {initial:.2} s");
    let got = folder_bytes(&dst);
    assert_eq!(
        got,
        (files as u64, bytes),
        "the copy differs from the source"
    );

    // No-op scans, on the node that received everything.
    let mut scans = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        spoke.ok(&["share", "scan"]);
        scans.push(t.elapsed().as_secs_f64() * 1e3);
    }
    scans.sort_by(f64::total_cmp);

    // One changed file, one sync: the round's own time and the process's.
    let mut rounds = Vec::new();
    let mut processes = Vec::new();
    for i in 0..11 {
        let j = i * 7 % files;
        let path = dst.join(format!("d{:02}/note-{j:05}.md", j % 100.min(files)));
        let mut text = std::fs::read_to_string(&path).expect("a generated file");
        text.push_str(&format!("\nedit {i} on the spoke\n"));
        std::fs::write(&path, &text).unwrap();
        let t = Instant::now();
        let r = spoke.sync_json();
        processes.push(t.elapsed().as_secs_f64() * 1e3);
        rounds.push(r["report"]["elapsed_ms"].as_f64().unwrap());
        assert_eq!(share(&r, "knowledge")["pushed"], 1, "{r}");
        let there = src.join(path.strip_prefix(&dst).unwrap());
        assert_eq!(
            std::fs::read_to_string(there).unwrap(),
            text,
            "the edit did not arrive"
        );
    }
    rounds.sort_by(f64::total_cmp);
    processes.sort_by(f64::total_cmp);

    // A 50 MB session log, then one line appended.
    let logs = dir.join("sessions-src");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join("session.jsonl");
    let mut rng = Rng(7);
    let mut content = String::with_capacity(51 << 20);
    let mut n = 0;
    while content.len() < 50_000_000 {
        content.push_str(&log_line(&mut rng, n));
        n += 1;
    }
    std::fs::write(&log, &content).unwrap();
    spoke.ok(&[
        "share",
        "add",
        "sessions",
        logs.to_str().unwrap(),
        "--mode",
        "send-only",
    ]);
    let sink = dir.join("sessions-dst");
    hub.ok(&[
        "share",
        "add",
        "sessions",
        sink.to_str().unwrap(),
        "--mode",
        "receive-only",
        "--layout",
        "per-origin",
    ]);
    let t = Instant::now();
    spoke.sync_json();
    let log_initial = t.elapsed().as_secs_f64();
    let line = log_line(&mut rng, n);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()))
        .unwrap();
    let r = spoke.sync_json();
    let log_share = share(&r, "sessions");
    let blob_bytes = log_share["blob_bytes_out"].as_u64().unwrap();
    let round_bytes = r["report"]["bytes"].as_u64().unwrap();
    let arrived = std::fs::read(sink.join("spoke/session.jsonl")).unwrap();
    assert_eq!(
        arrived.len(),
        content.len() + line.len(),
        "the append did not arrive whole"
    );
    drop(server);

    println!("first scan of the source folder (share add): {first_scan:.2} s");
    println!("| measurement | target | result |");
    println!("|---|---|---|");
    println!(
        "| initial sync of {files} files ({:.0} MB) into an empty node | ≤ 5 s | {initial:.2} s ({:.0} files/s, {:.0} MB/s) |",
        mb(bytes),
        files as f64 / initial,
        mb(bytes) / initial
    );
    println!(
        "| no-op scan of {files} files (`selves share scan`, median of 11) | ≤ 300 ms | {:.0} ms |",
        scans[5]
    );
    println!(
        "| one changed file to the peer (`selves sync`, median of 11) | ≤ 100 ms | {:.0} ms round, {:.0} ms process |",
        rounds[5], processes[5]
    );
    println!(
        "| one-line append ({} B) to a {:.0} MB .jsonl | ≤ 8 KB | {} B of content, {} B of bodies in the round |",
        line.len(),
        mb(content.len() as u64),
        blob_bytes,
        round_bytes
    );
    println!("(initial sync of the 50 MB log: {log_initial:.2} s)");
}

fn share<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["report"]["shares"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["share"] == name))
        .unwrap_or_else(|| panic!("no share {name} in {report}"))
}

fn log_line(rng: &mut Rng, n: usize) -> String {
    let mut text = String::new();
    while text.len() < rng.range(80, 900) {
        text.push_str(WORDS[rng.range(0, WORDS.len())]);
        text.push(' ');
    }
    format!(
        "{}\n",
        serde_json::json!({"type": "message", "n": n, "role": "assistant", "text": text})
    )
}

/// Writes `n` markdown files of 1–50 KB in 100 folders; returns (bytes,
/// folders).
fn generate(root: &Path, n: usize) -> (u64, usize) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let folders = 100.min(n.max(1));
    let mut total = 0u64;
    for i in 0..n {
        let target = rng.range(1_000, 50_000);
        let mut text = format!("# Note {i}\n\n");
        while text.len() < target {
            for _ in 0..rng.range(5, 40) {
                text.push_str(WORDS[rng.range(0, WORDS.len())]);
                text.push(' ');
            }
            text.push_str(if rng.range(0, 4) == 0 {
                "\n\n## Section\n\n"
            } else {
                "\n"
            });
        }
        let path = root.join(format!("d{:02}/note-{i:05}.md", i % folders));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        total += text.len() as u64;
    }
    (total, folders)
}

/// (files, bytes) under `root`.
/// Files and bytes under `root`, but for the `SELVES.md` page each node
/// renders for itself into a two-way share (never synced).
fn folder_bytes(root: &Path) -> (u64, u64) {
    let mut out = (0, 0);
    for e in std::fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        if e.file_name() == "SELVES.md" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            let (f, b) = folder_bytes(&e.path());
            out = (out.0 + f, out.1 + b);
        } else {
            out = (out.0 + 1, out.1 + e.metadata().unwrap().len());
        }
    }
    out
}
