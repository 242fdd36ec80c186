//! Processes killed with SIGKILL in the middle of a sync, then the sync run
//! again: nothing lost, nothing doubled, the database intact, and the two
//! nodes verified equal.

use std::process::Child;

use crate::harness::{Node, rows, star_with, wait_until};

const ROWS: usize = 12_000;

/// The hub answers about 15 requests a second (it tells the client to wait
/// past that), so a transfer of `ROWS` in batches of 150 takes several
/// seconds on any machine and the kills below land in the middle of it.
const SLOW: &[&str] = &["--rate-per-minute", "900", "--rate-burst", "4"];

fn kill(mut child: Child) {
    // Child::kill sends SIGKILL on Unix.
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills `child` once `count` says at least `at` rows arrived (or the
/// child finished first). Returns how many rows had arrived.
fn kill_when(child: Child, at: u64, count: impl Fn() -> u64) -> u64 {
    let mut child = child;
    let mut seen = 0;
    wait_until(120, || {
        seen = count();
        seen >= at || child.try_wait().unwrap().is_some()
    });
    kill(child);
    seen
}

fn assert_complete(a: &Node, b: &Node, alias: &str) {
    assert_eq!(a.rows(), ROWS as u64, "rows lost or doubled on {}", a.name);
    assert_eq!(b.rows(), ROWS as u64, "rows lost or doubled on {}", b.name);
    let ea = a.export();
    assert_eq!(ea.len(), ROWS, "duplicates in the export of {}", a.name);
    assert_eq!(ea, b.export());
    a.assert_intact();
    b.assert_intact();
    b.ok(&["verify", alias]);
}

#[test]
fn client_killed_mid_pull_resumes_without_loss_or_duplicates() {
    let (hub, _server, spokes) = star_with("hub", SLOW, &["spoke"]);
    let spoke = &spokes[0];
    hub.import(&rows("h", "c", ROWS, 400));

    // Kill before anything could commit, early, and late.
    kill(spoke.command(&["sync", "--batch", "150"]).spawn().unwrap());
    let mut seen = Vec::new();
    for at in [1, ROWS as u64 / 3, ROWS as u64 * 5 / 6] {
        let child = spoke.command(&["sync", "--batch", "150"]).spawn().unwrap();
        seen.push(kill_when(child, at, || spoke.rows()));
        spoke.assert_intact();
    }
    assert!(
        seen.iter().any(|&n| n > 0 && n < ROWS as u64),
        "no kill landed mid-transfer: {seen:?}"
    );
    spoke.ok(&["sync"]);
    assert_complete(&hub, spoke, "hub");
    // Search works on what arrived across the interruptions.
    let hits = spoke.json(&["search", "message", "--limit", "5", "--json"]);
    assert_eq!(hits.as_array().unwrap().len(), 5);
}

#[test]
fn client_killed_mid_push_resumes_without_loss_or_duplicates() {
    let (hub, _server, spokes) = star_with("hub", SLOW, &["spoke"]);
    let spoke = &spokes[0];
    spoke.import(&rows("s", "c", ROWS, 400));

    let mut seen = Vec::new();
    for at in [1, ROWS as u64 / 2] {
        let child = spoke.command(&["sync", "--batch", "150"]).spawn().unwrap();
        seen.push(kill_when(child, at, || hub.rows()));
    }
    assert!(
        seen.iter().any(|&n| n > 0 && n < ROWS as u64),
        "no kill landed mid-transfer: {seen:?}"
    );
    hub.assert_intact();
    spoke.ok(&["sync"]);
    assert_complete(&hub, spoke, "hub");
}

#[test]
fn server_killed_mid_push_resumes_without_loss_or_duplicates() {
    let hub = Node::new("hub");
    let spoke = Node::new("spoke");
    let server = hub.serve(SLOW);
    let port = server.port();
    spoke.pair(&hub, &server, "hub");
    spoke.import(&rows("s", "c", ROWS, 400));

    let mut sync = spoke
        .command(&["sync", "--batch", "150", "--attempts", "1"])
        .spawn()
        .unwrap();
    let mut seen = 0;
    wait_until(120, || {
        seen = hub.rows();
        seen >= ROWS as u64 / 3
    });
    server.kill();
    let status = sync.wait().unwrap();
    assert!(seen < ROWS as u64, "the push finished before the kill");
    assert_eq!(
        status.code(),
        Some(5),
        "a dead peer is reported as unreachable"
    );
    hub.assert_intact();
    let kept = hub.rows();
    assert!(kept >= seen, "acknowledged rows were lost: {kept} < {seen}");

    // The server comes back on the same address; the push resumes.
    let _server = hub.serve_on(&format!("127.0.0.1:{port}"), &[]);
    spoke.ok(&["sync"]);
    assert_complete(&hub, &spoke, "hub");
    // The peer's status shows the failure was recovered from.
    let status = spoke.json(&["status", "--json"]);
    assert_eq!(status["peers"][0]["consecutive_failures"], 0);
}
