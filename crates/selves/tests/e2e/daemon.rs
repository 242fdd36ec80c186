//! The daemon and loud status, through the real binary: daemons on
//! loopback, files saved and rows remembered with nobody running `sync`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Node, rows, terminate, wait_until};

fn shared(node: &Node, name: &str) -> PathBuf {
    let dir = node.dir.path().join(name);
    node.ok(&["share", "add", name, dir.to_str().unwrap()]);
    dir
}

/// Whether a search finds anything (it exits 1 when it finds nothing).
fn found(node: &Node, words: &str) -> bool {
    let run = node.run(&["search", words, "--json"]);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    !v.as_array().unwrap().is_empty()
}

#[test]
fn saved_files_and_remembered_rows_reach_the_peer_within_seconds_both_ways() {
    let hub = Node::new("hub");
    let hub_notes = shared(&hub, "notes");
    let server = hub.daemon_serving(&[]);
    let spoke = Node::new("laptop");
    spoke.pair(&hub, &server, "hub");
    let spoke_notes = shared(&spoke, "notes");
    let _daemon = spoke.daemon(&[]);

    // A file saved on the spoke: its watcher scans, its schedule pushes.
    std::fs::write(spoke_notes.join("plan.md"), "# Plan\nship the daemon\n").unwrap();
    let t = Instant::now();
    assert!(
        wait_until(30, || hub_notes.join("plan.md").exists()),
        "the file did not reach the hub in 30 s\n{}\n{}",
        spoke.daemon_log(),
        hub.daemon_log()
    );
    eprintln!("spoke → hub file: {:?}", t.elapsed());
    assert_eq!(
        std::fs::read_to_string(hub_notes.join("plan.md")).unwrap(),
        "# Plan\nship the daemon\n"
    );

    // A row remembered by another process on the spoke.
    spoke.ok(&[
        "remember",
        "--source",
        "notes",
        "--conversation",
        "c1",
        "the kettle descaler is in the left drawer",
    ]);
    let t = Instant::now();
    assert!(
        wait_until(30, || found(&hub, "kettle descaler")),
        "the row did not reach the hub in 30 s\n{}",
        spoke.daemon_log()
    );
    eprintln!("spoke → hub row: {:?}", t.elapsed());

    // And the other way: the spoke learns through its long poll.
    std::fs::write(hub_notes.join("from-hub.md"), "written on the hub\n").unwrap();
    hub.ok(&[
        "remember",
        "--source",
        "notes",
        "--conversation",
        "c2",
        "the hub remembers the lighthouse",
    ]);
    let t = Instant::now();
    assert!(
        wait_until(30, || spoke_notes.join("from-hub.md").exists()
            && found(&spoke, "lighthouse")),
        "the hub's file and row did not reach the spoke in 30 s\n{}",
        spoke.daemon_log()
    );
    eprintln!("hub → spoke file and row: {:?}", t.elapsed());

    // The daemon recorded its successes: status is healthy and quiet.
    let brief = spoke.run(&["status", "--brief"]);
    assert_eq!((brief.code, brief.stdout.as_str()), (0, ""), "{brief:?}");
    let status = spoke.json(&["status", "--json"]);
    assert_eq!(status["peers"][0]["health"]["state"], "ok", "{status}");
    assert_eq!(status["peers"][0]["health"]["waiting_memories"], 0);
    assert!(status["daemon"].as_u64().is_some(), "{status}");
    // The daemon logs to its home too.
    let log = std::fs::read_to_string(spoke.home().join("logs/daemon.log")).unwrap();
    assert!(log.contains("daemon started"), "{log}");
}

#[test]
fn one_daemon_per_home_and_sigterm_stops_it_cleanly() {
    let node = Node::new("solo");
    let mut first = node.daemon(&[]);
    assert!(wait_until(
        20,
        || node.json(&["status", "--json"])["daemon"] == first.child.id()
    ));
    let second = node.fails(&["daemon"], 1);
    assert!(
        second.stderr.contains("a daemon is already running"),
        "{second:?}"
    );
    let t = Instant::now();
    let run = terminate(&mut first.child, 15);
    assert_eq!(run.code, 0, "{}", node.daemon_log());
    // Stopped by the signal, not by the 15 s of `terminate`'s patience.
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
    assert!(node.daemon_log().contains("daemon stopped"));
    assert_eq!(node.json(&["status", "--json"])["daemon"], Value::Null);
    // The lock went with it: a new daemon starts.
    let again = node.daemon(&[]);
    assert!(wait_until(
        20,
        || node.json(&["status", "--json"])["daemon"] == again.child.id()
    ));
}

#[test]
fn sigterm_mid_sync_loses_nothing() {
    let hub = Node::new("hub");
    // Tiny pushes, each one durable before its answer: the round is
    // hundreds of requests long, so the SIGTERM lands in the middle of it.
    let server = hub.serve(&[
        "--max-push-records",
        "10",
        "--rate-per-minute",
        "100000",
        "--rate-burst",
        "10000",
    ]);
    let spoke = Node::new("laptop");
    spoke.pair(&hub, &server, "hub");
    spoke.import(&rows("m", "big", 6000, 400));
    let daemon = spoke.daemon(&[]);
    // Stop it once the round is under way. The hub's row count is read
    // straight from its database: `status` takes long enough that a fast
    // machine could finish the whole push between two looks.
    let db = rusqlite::Connection::open_with_flags(
        hub.home().join("selves.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let count = || -> i64 {
        db.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap()
    };
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        seen = count();
        if seen > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        seen > 0 && seen < 6000,
        "the push never got under way, or was over before a look: {seen} rows"
    );
    drop(db);
    let run = daemon.terminate(20);
    assert_eq!(run.code, 0, "{}", spoke.daemon_log());
    let partial = hub.rows();
    eprintln!("the hub held {partial} of 6000 rows at SIGTERM");
    hub.assert_intact();
    spoke.assert_intact();
    // What was acknowledged stays; the rest follows with the next round.
    spoke.ok(&["sync"]);
    assert_eq!(hub.rows(), 6000);
    spoke.ok(&["verify"]);
}

#[test]
fn status_brief_is_quiet_when_well_and_loud_when_a_peer_is_down() {
    let hub = Node::new("hub");
    let server = hub.serve(&[]);
    let spoke = Node::new("laptop");
    spoke.pair(&hub, &server, "hub");

    // Paired but never synced: worth a line.
    let brief = spoke.fails(&["status", "--brief"], 1);
    assert!(brief.stdout.contains("hub has never synced"), "{brief:?}");

    spoke.ok(&["sync"]);
    let brief = spoke.run(&["status", "--brief"]);
    assert_eq!((brief.code, brief.stdout.as_str()), (0, ""), "{brief:?}");

    // The hub goes away; memories pile up.
    server.kill();
    for i in 0..3 {
        spoke.ok(&[
            "remember",
            "--source",
            "s",
            "--conversation",
            "c",
            &format!("note {i}"),
        ]);
    }
    spoke.fails(&["sync", "--attempts", "1"], 5);
    let brief = spoke.fails(&["status", "--brief"], 1);
    assert_eq!(brief.stdout.lines().count(), 1, "{brief:?}");
    assert!(
        brief
            .stdout
            .starts_with("⚠ sync to hub failing (1 in a row")
            && brief.stdout.contains("3 memories not backed up")
            && brief.stdout.contains("(network: "),
        "{brief:?}"
    );

    // Past its threshold the peer is down: exit 2.
    spoke.ok(&["peer", "set", "hub", "--down-after", "1s"]);
    std::thread::sleep(Duration::from_millis(1100));
    let brief = spoke.fails(&["status", "--brief"], 2);
    assert!(
        brief.stdout.starts_with("⚠ sync to hub down ")
            && brief.stdout.contains(" — 3 memories not backed up"),
        "{brief:?}"
    );
    let status = spoke.json(&["status", "--json"]);
    assert_eq!(status["health"], "down");
    assert_eq!(status["peers"][0]["health"]["state"], "down");
    assert_eq!(status["peers"][0]["health"]["waiting_memories"], 3);
    assert_eq!(status["peers"][0]["health"]["consecutive_failures"], 1);

    // Bad settings are refused.
    spoke.fails(&["peer", "set", "nobody", "--down-after", "1h"], 1);
    spoke.fails(&["peer", "set", "hub", "--down-after", "soon"], 2);
}

/// Everything a daemon leaves in the home (locks, logs, the blob store's
/// marker, the share's lock) is as private as the rest: files 0600,
/// folders 0700.
#[test]
fn every_file_the_daemon_leaves_in_the_home_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let hub = Node::new("hub");
    let server = hub.serve(&[]);
    let node = Node::new("laptop");
    node.pair(&hub, &server, "hub");
    let dir = shared(&node, "notes");
    std::fs::write(dir.join("a.md"), "hello\n").unwrap();
    let daemon = node.daemon(&[]);
    assert!(wait_until(20, || node.daemon_log().contains("synced")
        || hub.rows() > 0
        || node.home().join("locks").join("share-notes.lock").exists()));
    node.ok(&["sync"]);
    daemon.terminate(10);
    let mut seen = 0;
    let mut stack = vec![node.home()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                assert_eq!(mode, 0o700, "{} has mode {mode:o}", path.display());
                stack.push(path);
            } else {
                assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
                seen += 1;
            }
        }
    }
    for f in [
        "locks/daemon.lock",
        "logs/daemon.log",
        "locks/share-notes.lock",
    ] {
        assert!(node.home().join(f).exists(), "{f} was not made");
    }
    assert!(seen > 8, "{seen} files");
}

/// `invite` puts in its line the port the running daemon listens on, not
/// a default nobody serves on.
#[test]
fn invite_dials_the_port_the_daemon_listens_on() {
    let hub = Node::new("hub");
    let server = hub.daemon_serving(&[]);
    let line = hub.ok(&["invite", "--peer", "laptop"]);
    let blob = selves_wire::pair::PairBlob::decode(line.trim(), 0).unwrap();
    assert_eq!(blob.port, server.addr.port(), "{line}");
    let laptop = Node::new("laptop");
    laptop.ok(&["pair", line.trim()]);
    laptop.ok(&["sync"]);
}

/// A daemon killed with SIGKILL (its lock left behind, released by the
/// kernel) shows as dead, with when it was last alive, and status is not
/// "all well"; a clean stop leaves nothing to warn about.
#[test]
fn a_daemon_killed_with_sigkill_is_reported_dead() {
    let node = Node::new("laptop");
    let mut daemon = node.daemon(&[]);
    assert!(wait_until(
        10,
        || node.json(&["status", "--json"])["daemon"] == daemon.child.id()
    ));
    assert!(wait_until(10, || node
        .home()
        .join("locks/daemon.alive")
        .exists()));
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let brief = node.fails(&["status", "--brief"], 1);
    assert!(
        brief.stdout.contains("the daemon died without stopping"),
        "{brief:?}"
    );
    let full = node.ok(&["status"]);
    assert!(full.contains("NOT RUNNING"), "{full}");
    assert!(!full.contains("all well"), "{full}");
    // Started again and stopped cleanly: quiet.
    let again = node.daemon(&[]);
    assert!(wait_until(
        10,
        || node.json(&["status", "--json"])["daemon"] == again.child.id()
    ));
    assert_eq!(again.terminate(10).code, 0);
    let brief = node.run(&["status", "--brief"]);
    assert_eq!((brief.code, brief.stdout.as_str()), (0, ""), "{brief:?}");
}

/// A hub is as loud about a spoke that stopped calling it as a spoke is
/// about a hub it cannot reach: `--down-after` applies to both.
#[test]
fn a_hub_warns_about_a_spoke_that_stopped_calling() {
    let hub = Node::new("hub");
    let server = hub.serve(&[]);
    let phone = Node::new("phone");
    phone.pair(&hub, &server, "hub");
    phone.ok(&["sync"]);
    let brief = hub.run(&["status", "--brief"]);
    assert_eq!((brief.code, brief.stdout.as_str()), (0, ""), "{brief:?}");
    hub.ok(&["peer", "set", "phone", "--down-after", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let brief = hub.fails(&["status", "--brief"], 2);
    assert!(
        brief.stdout.contains("phone has not called this node for"),
        "{brief:?}"
    );
    // Back within its (restored) threshold, it is quiet again.
    phone.ok(&["sync"]);
    hub.ok(&["peer", "set", "phone", "--down-after", "1h"]);
    let brief = hub.run(&["status", "--brief"]);
    assert_eq!((brief.code, brief.stdout.as_str()), (0, ""), "{brief:?}");
}
