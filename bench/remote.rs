//! `bench/run remote [--rows N]`: syncing through a git remote, into a bare
//! repository on disk (`file://`). A node holding N rows pushes them all
//! (`selves sync mem` after `remote add`); an empty node joins and pulls
//! them all (`selves remote join LINE`, whose first sync it is); then one
//! remembered row goes from one to the other, one `selves sync` each side;
//! and the repository's size is compared with the rows' text.
//!
//! The same N rows over loopback HTTPS, for comparison, come from `bench/run
//! sync --rows N`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::Node;

/// Bytes under `dir`, as `du -sb` counts them.
fn size_of(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read the repository") {
            let e = e.expect("an entry");
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

pub(crate) fn run(selves: &Path, dir: &Path, rows: usize) {
    let bare = dir.join("memory.git");
    let ok = Command::new("git")
        .args(["init", "--quiet", "--bare"])
        .arg(&bare)
        .status()
        .expect("git");
    assert!(ok.success(), "git init --bare failed");
    let url = format!("file://{}", bare.display());

    let full = Node::new(selves, dir, "full");
    let data = dir.join("rows.jsonl");
    let (_, text_bytes, _) = crate::generate(&data, rows);
    full.ok(&["import", data.to_str().unwrap()]);
    full.ok(&["remote", "add", "mem", &url]);

    let started = Instant::now();
    full.ok(&["sync", "mem"]);
    let push_s = started.elapsed().as_secs_f64();
    let repo = size_of(&bare);

    let line = full.ok(&["remote", "invite", "mem"]);
    let empty = Node::new(selves, dir, "empty");
    let started = Instant::now();
    empty.ok(&["remote", "join", line.trim()]);
    let pull_s = started.elapsed().as_secs_f64();
    let status: serde_json::Value =
        serde_json::from_str(&empty.ok(&["status", "--json"])).expect("status --json");
    assert_eq!(
        status["memory"]["rows"], rows as u64,
        "not every row arrived"
    );
    // Settle the cards both ways before timing one row.
    full.ok(&["sync", "mem"]);
    empty.ok(&["sync", "mem"]);

    let mut one_ms = Vec::new();
    for i in 0..5 {
        full.ok(&["remember", &format!("one more thing, number {i}")]);
        let started = Instant::now();
        full.ok(&["sync", "mem"]);
        empty.ok(&["sync", "mem"]);
        one_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let found = empty.ok(&["search", &format!("number {i}")]);
        assert!(found.contains("one more thing"), "the row did not arrive");
    }
    one_ms.sort_by(f64::total_cmp);

    println!(
        "{rows} rows, {:.1} MB of text; repository {}",
        crate::mb(text_bytes),
        bare.display()
    );
    println!("| step | figure |");
    println!("|---|---|");
    println!("| push everything into an empty repository (`selves sync mem`) | {push_s:.2} s |");
    println!("| pull everything into an empty node (`selves remote join LINE`) | {pull_s:.2} s |");
    println!(
        "| one row: `selves sync` on the writer, then on the reader (median of 5) | {:.0} ms |",
        one_ms[2]
    );
    println!(
        "| repository size | {:.1} MB, {:.0}% of the rows' text |",
        crate::mb(repo),
        repo as f64 * 100.0 / text_bytes as f64
    );
}
