//! `selves invite --join` / `selves join`: the whole flow against a hub on
//! loopback, directly and through a real sshd; the marker self-test both
//! ways; a re-run changes nothing; an expired blob is refused.

use std::process::Stdio;

use serde_json::Value;

use crate::harness::{Daemon, Node, Run, wait_until};
use crate::tunnels::sshd;

fn join_blob(hub: &Node, peer: &str, port: u16, extra: &[&str]) -> String {
    let port = port.to_string();
    let mut args = vec!["invite", "--join", "--peer", peer, "--port", &port];
    args.extend_from_slice(extra);
    let out = hub.ok(&args);
    let blob = out.trim().to_owned();
    assert!(blob.starts_with("selves-join:"), "{blob}");
    blob
}

/// The card a node holds for `name`.
fn card(node: &Node, name: &str) -> Value {
    node.json(&["identity", "show", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{} holds no card for {name}", node.name))
        .clone()
}

fn remember(node: &Node, text: &str) {
    node.ok(&["remember", "--source", "s", "--conversation", "c", text]);
}

/// What a re-run must leave as it was.
fn config_of(node: &Node) -> (Value, Value, Value) {
    let mut peers = node.json(&["peer", "list", "--json"]);
    // Times of the last contact are the only things allowed to move.
    for d in peers["dials"].as_array_mut().unwrap() {
        for k in ["last_attempt_at", "last_success_at"] {
            d.as_object_mut().unwrap().remove(k);
        }
    }
    let heads = node.json(&["status", "--json"])["heads"].clone();
    (peers, node.json(&["tunnel", "list", "--json"]), heads)
}

#[test]
fn join_syncs_self_tests_both_ways_and_a_rerun_changes_nothing() {
    let hub = Node::new("hub");
    let server = hub.daemon_serving(&[]);
    let spoke = Node::new("laptop");
    remember(&hub, "known on the hub before the join");
    remember(&spoke, "known on the laptop before the join");
    let blob = join_blob(&hub, "laptop", server.addr.port(), &[]);

    let out = spoke.ok(&["join", &blob]);
    for line in [
        "✓ hub answers at https://127.0.0.1:",
        "with the pinned certificate sha256:",
        "✓ first sync: pulled",
        "✓ marker written here is on hub",
        "✓ marker written on hub is here",
        "round trip",
        "joined hub as laptop",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    // The first sync moved memory both ways.
    assert_eq!(hub.rows(), 2);
    assert_eq!(spoke.rows(), 2);

    // The markers, as each side holds them: the one the laptop wrote is
    // on the hub, the one the hub wrote on request is on the laptop.
    let ours = card(&spoke, "laptop")["marker"].clone();
    let theirs = card(&spoke, "hub")["marker"].clone();
    assert!(ours.is_string() && theirs.is_string() && ours != theirs);
    assert_eq!(card(&hub, "laptop")["marker"], ours);
    assert_eq!(card(&hub, "hub")["marker"], theirs);
    let peers = spoke.json(&["peer", "list", "--json"]);
    assert!(peers["dials"][0]["joined_at"].is_i64(), "{peers}");

    // Again, with the same blob: nothing changes, nothing is sent.
    let before = config_of(&spoke);
    let hub_heads = hub.json(&["status", "--json"])["heads"].clone();
    let again = spoke.ok(&["join", &blob]);
    assert!(again.contains("already joined hub"), "{again}");
    assert!(again.contains("nothing changed"), "{again}");
    assert_eq!(config_of(&spoke), before);
    assert_eq!(hub.json(&["status", "--json"])["heads"], hub_heads);
    // --force runs every step again (the token, already claimed, still works).
    let forced = spoke.ok(&["join", "--force", &blob]);
    assert!(
        forced.contains("✓ marker written on hub is here"),
        "{forced}"
    );
    assert_eq!(
        spoke.json(&["peer", "list", "--json"])["dials"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The schedule: with the daemon running here, a new memory reaches
    // the hub with no `selves sync`.
    let _daemon = spoke.daemon(&[]);
    remember(&spoke, "after the join");
    assert!(
        wait_until(10, || hub.rows() == 3),
        "the daemon did not sync the joined hub\n{}",
        spoke.daemon_log()
    );
}

#[test]
fn an_expired_or_damaged_join_blob_is_refused_and_nothing_is_saved() {
    let hub = Node::new("hub");
    let server = hub.serve(&[]);
    let spoke = Node::new("laptop");
    let blob = join_blob(&hub, "laptop", server.addr.port(), &["--ttl", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let run = spoke.fails(&["join", &blob], 1);
    assert!(run.stderr.contains("expired"), "{run:?}");
    assert!(run.stderr.contains("--join"), "{run:?}");

    let fresh = join_blob(&hub, "laptop", server.addr.port(), &[]);
    let mut damaged = fresh.clone();
    damaged.insert(fresh.len() - 10, 'x');
    let run = spoke.fails(&["join", &damaged], 1);
    assert!(
        run.stderr.contains("damaged") || run.stderr.contains("not a selves"),
        "{run:?}"
    );
    let peers = spoke.json(&["peer", "list", "--json"]);
    assert_eq!(peers["dials"], serde_json::json!([]), "{peers}");
    // The fresh blob still works: the refusals used nothing up.
    spoke.ok(&["join", &fresh]);
}

fn join_via(spoke: &Node, sshd: &crate::tunnels::Sshd, blob: &str) -> Run {
    Run::from(
        spoke
            .command(&["join", blob])
            .env("SELVES_SSH_CONFIG", sshd.client_config())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap(),
    )
}

#[test]
fn join_through_ssh_prints_the_key_to_authorise_then_tunnels() {
    let Some(sshd) = sshd() else { return };
    let hub = Node::new("hub");
    let server = hub.daemon_serving(&[]);
    let spoke = Node::new("laptop");
    remember(&hub, "behind ssh");
    let blob = join_blob(
        &hub,
        "laptop",
        server.addr.port(),
        &["--ssh", &sshd.target()],
    );

    // This node's own key is made on first use and not yet authorised.
    let refused = join_via(&spoke, &sshd, &blob);
    assert_eq!(refused.code, 4, "{refused:?}");
    let line = refused
        .stderr
        .lines()
        .find(|l| l.contains("authorized_keys"))
        .unwrap_or_else(|| panic!("no instructions:\n{refused:?}"));
    assert!(line.contains("ssh-ed25519 "), "{line}");
    assert!(
        line.contains(&format!("permitopen=\"127.0.0.1:{}\"", server.addr.port())),
        "{line}"
    );
    let peers = spoke.json(&["peer", "list", "--json"]);
    assert_eq!(peers["dials"], serde_json::json!([]));

    // Do what it says: the quoted key line goes into authorized_keys.
    let quoted = line.split("echo '").nth(1).unwrap();
    let key_line = &quoted[..quoted.find("' >>").unwrap()];
    let mut keys = std::fs::read_to_string(sshd.authorized_keys()).unwrap();
    keys.push_str(key_line);
    keys.push('\n');
    std::fs::write(sshd.authorized_keys(), &keys).unwrap();

    let joined = join_via(&spoke, &sshd, &blob);
    assert_eq!(joined.code, 0, "{joined:?}");
    for line in [
        "✓ ssh ",
        "✓ tunnel hub: 127.0.0.1:",
        "✓ marker written on hub is here",
        "joined hub as laptop",
    ] {
        assert!(joined.stdout.contains(line), "missing {line:?}\n{joined:?}");
    }
    assert_eq!(spoke.rows(), 1);
    let tunnels = spoke.json(&["tunnel", "list", "--json"]);
    assert_eq!(tunnels.as_array().unwrap().len(), 1, "{tunnels}");
    let local = tunnels[0]["local_port"].as_u64().unwrap();
    let peers = spoke.json(&["peer", "list", "--json"]);
    assert_eq!(
        peers["dials"][0]["url"],
        format!("https://127.0.0.1:{local}")
    );

    let before = config_of(&spoke);
    let again = join_via(&spoke, &sshd, &blob);
    assert!(again.stdout.contains("nothing changed"), "{again:?}");
    assert_eq!(config_of(&spoke), before);

    // The join's own ssh ended with it; the daemon keeps the saved tunnel
    // up and syncs through it.
    let daemon = Daemon {
        child: crate::tunnels::daemon(&spoke, &sshd),
    };
    remember(&spoke, "through the tunnel the join saved");
    assert!(
        wait_until(20, || hub.rows() == 2),
        "{}",
        spoke.json(&["tunnel", "list", "--json"])
    );
    // Its keeper reports it up after the first check through it.
    let state = || spoke.json(&["tunnel", "list", "--json"])[0]["state"].clone();
    assert!(wait_until(15, || state() == "up"), "{}", state());

    // The key is withdrawn on the host: a restarted daemon's keeper stops
    // in auth-failed. Once the key is back, `join --force` (its probe
    // passes) gets that keeper going again.
    drop(daemon);
    std::fs::write(
        sshd.authorized_keys(),
        &keys[..keys.len() - key_line.len() - 1],
    )
    .unwrap();
    let _daemon = Daemon {
        child: crate::tunnels::daemon(&spoke, &sshd),
    };
    assert!(wait_until(20, || state() == "auth-failed"), "{}", state());
    std::fs::write(sshd.authorized_keys(), &keys).unwrap();
    let rejoined = Run::from(
        spoke
            .command(&["join", "--force", &blob])
            .env("SELVES_SSH_CONFIG", sshd.client_config())
            .output()
            .unwrap(),
    );
    assert!(
        rejoined.stdout.contains("joined hub as laptop"),
        "{rejoined:?}"
    );
    // The join used the daemon's tunnel: it started no ssh of its own.
    assert!(
        rejoined.stdout.contains("the daemon here syncs with hub"),
        "{rejoined:?}"
    );
    assert!(wait_until(15, || state() == "up"), "{}", state());
}

#[test]
fn a_join_killed_mid_sync_goes_on_when_run_again() {
    const ROWS: usize = 6_000;
    let hub = Node::new("hub");
    // About 15 requests a second: batches of 100 take seconds to arrive.
    let server = hub.serve(&["--rate-per-minute", "900", "--rate-burst", "4"]);
    hub.import(&crate::harness::rows("h", "c", ROWS, 300));
    let spoke = Node::new("laptop");
    let blob = join_blob(&hub, "laptop", server.addr.port(), &["--ttl", "3s"]);

    let mut child = spoke
        .command(&["join", &blob, "--batch", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = 0;
    wait_until(60, || {
        seen = spoke.rows();
        seen >= 1000 || child.try_wait().unwrap().is_some()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        seen > 0 && seen < ROWS as u64,
        "the kill missed the sync: {seen}"
    );
    spoke.assert_intact();
    let peers = spoke.json(&["peer", "list", "--json"]);
    assert!(peers["dials"][0]["joined_at"].is_null(), "{peers}");

    // The blob expired meanwhile; the token it carried was claimed, so
    // the join goes on from what arrived.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = spoke.ok(&["join", &blob]);
    assert!(out.contains("joined hub as laptop"), "{out}");
    assert_eq!(spoke.rows(), ROWS as u64);
    assert_eq!(spoke.export(), hub.export());
    spoke.assert_intact();
    spoke.ok(&["verify"]);
}
