//! Trust in who wrote what (signed logs, node keys, bound tokens), and
//! homes that are restored from a backup or copied: each case through the
//! built binary, as a user or an attacker holding a paired peer's token
//! would meet it.

use std::path::Path;

use serde_json::json;

use crate::harness::{Node, Prober, Server, rows, star, wait_until};

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A copy of `node`'s home in a new temporary directory (a home copied to
/// another machine).
fn copy_of(node: &Node, name: &str) -> Node {
    let dir = tempfile::Builder::new()
        .prefix(&format!("selves-e2e-{name}-"))
        .tempdir()
        .unwrap();
    copy_tree(&node.home(), &dir.path().join("home"));
    Node {
        dir,
        name: name.to_owned(),
    }
}

fn texts(node: &Node) -> Vec<String> {
    let mut t: Vec<String> = node
        .export()
        .into_iter()
        .map(|r| r["text"].as_str().unwrap().to_owned())
        .collect();
    t.sort();
    t
}

fn node_id(node: &Node) -> String {
    node.json(&["status", "--json"])["node"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn brief(node: &Node) -> (i32, String) {
    let r = node.run(&["status", "--brief"]);
    (r.code, r.stdout)
}

fn row(msg: &str, text: &str) -> serde_json::Value {
    json!({"row": {"source": "notes", "conversation_id": "c", "msg_id": msg, "role": "user",
        "text": text, "ts": 1_700_000_000, "origin": "victim"}})
}

/// A peer pushes records into another node's log: refused whole, counted
/// against it in the hub's status, and the real records still arrive. A
/// hello claiming another node's id is refused; so is an edit passed off
/// as the other node's (the row says who wrote it).
#[test]
fn a_peer_cannot_write_as_another_node() {
    let (hub, server, spokes) = star("hub", &["victim"]);
    let victim = &spokes[0];
    victim.ok(&["remember", "--source", "notes", "first words"]);
    victim.ok(&["sync"]);
    let victim_id: selves_wire::NodeId = node_id(victim).parse().unwrap();

    let line = hub.invite("mallory", &server);
    let mallory = Prober::new(&line, server.addr, 77);
    assert_eq!(mallory.hello().status, 200);

    // Record 2 of the victim's log, signed with mallory's own key.
    let (forged, _) = Prober::batch(
        &mallory.key,
        &victim_id,
        "memory",
        2,
        None,
        vec![row("x", "FORGED: transfer approved")],
    );
    let resp = mallory.post(
        "/v1/push",
        &serde_json::to_vec(&json!({ "batches": [forged] })).unwrap(),
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    let refused = &resp.json()["refused"];
    assert_eq!(refused.as_array().unwrap().len(), 1, "{resp:?}");
    assert!(refused[0]["reason"].as_str().unwrap().starts_with("forged"));
    assert!(!hub.ok(&["export"]).contains("FORGED"));
    let (code, lines) = brief(&hub);
    assert_eq!(code, 1, "{lines}");
    assert!(
        lines.contains("refused from mallory") && lines.contains("not written by the node"),
        "{lines}"
    );

    // The victim's real record 2 arrives, and the round says so.
    victim.ok(&["remember", "--source", "notes", "second words"]);
    let out = victim.ok(&["sync"]);
    assert!(out.contains("pushed 1"), "{out}");
    assert_eq!(texts(&hub), ["first words", "second words"]);
    victim.ok(&["verify"]);

    // A hello claiming the victim's id: mallory cannot prove its key.
    let resp = mallory.post_raw("/v1/hello", &mallory.hello_body(&victim_id, "victim"), &[]);
    assert_eq!(resp.status, 401, "{resp:?}");
    // Nor did it rename the victim on the hub.
    let heads = hub.json(&["status", "--json"])["heads"].clone();
    let named: Vec<_> = heads
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["node"] == victim_id.as_str())
        .map(|h| h["name"].clone())
        .collect();
    assert!(!named.is_empty());
    assert!(named.iter().all(|n| n == "victim"), "{heads}");

    // An edit of the victim's row in mallory's own log: stored, but
    // credited to mallory, not to the victim.
    let exported = victim.export();
    let first = exported
        .iter()
        .find(|r| r["text"] == "first words")
        .unwrap();
    let mut edit = first.clone();
    edit["text"] = json!("edited by someone else");
    edit["edited_at"] = json!(4_000_000_000_000i64);
    let body = mallory.push_own(1, None, vec![json!({ "row": edit })]);
    let resp = mallory.post("/v1/push", &body);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["accepted"], 1, "{resp:?}");
    let hit = hub.ok(&["search", "someone"]);
    assert!(hit.starts_with("[victim, edited by "), "{hit}");
    assert!(!hit.starts_with("[victim]"), "{hit}");
    let json = hub.json(&["search", "someone", "--json"]);
    assert_eq!(json[0]["origin"], "victim");
    assert_eq!(json[0]["author"], "prober");
}

/// The issue's backup case: a home restored from a backup, with writes on
/// both sides of the restore, recovers by itself: what it wrote after the
/// backup comes back, what it writes after the restore goes out.
#[test]
fn a_home_restored_from_a_backup_loses_nothing() {
    let (hub, _server, spokes) = star("hub", &["laptop"]);
    let laptop = &spokes[0];
    laptop.ok(&["remember", "--source", "notes", "alpha"]);
    laptop.ok(&["sync"]);
    let backup = laptop.dir.path().join("backup");
    copy_tree(&laptop.home(), &backup);
    laptop.ok(&["remember", "--source", "notes", "golf"]);
    laptop.ok(&["sync"]);

    std::fs::remove_dir_all(laptop.home()).unwrap();
    copy_tree(&backup, &laptop.home());
    laptop.ok(&["remember", "--source", "notes", "hotel"]);
    let out = laptop.ok(&["sync"]);
    assert!(!out.contains("already in sync"), "{out}");
    assert_eq!(texts(laptop), ["alpha", "golf", "hotel"]);
    laptop.ok(&["sync"]);
    assert_eq!(texts(&hub), ["alpha", "golf", "hotel"]);
    laptop.ok(&["verify"]);
    laptop.assert_intact();
    hub.assert_intact();
    // Nothing to worry anyone: no fork, no clash.
    assert_eq!(brief(laptop), (0, String::new()));
    assert_eq!(brief(&hub), (0, String::new()));
    let status = laptop.ok(&["status"]);
    assert!(status.contains("recovered"), "{status}");
}

/// The same through a relay, with the restored node's sync killed with
/// SIGKILL in the middle, more than once.
#[test]
fn a_restore_recovers_through_a_relay_and_under_kill_9() {
    let (hub, server, spokes) = star("hub", &["laptop", "phone"]);
    let (laptop, phone) = (&spokes[0], &spokes[1]);
    laptop.import(&rows("a", "c", 300, 200));
    laptop.ok(&["sync"]);
    let backup = laptop.dir.path().join("backup");
    copy_tree(&laptop.home(), &backup);
    laptop.import(&rows("b", "c", 2_000, 200));
    laptop.ok(&["sync"]);
    phone.ok(&["sync"]);
    assert_eq!(phone.rows(), 2_300);

    std::fs::remove_dir_all(laptop.home()).unwrap();
    copy_tree(&backup, &laptop.home());
    laptop.import(&rows("r", "c", 50, 200));
    for delay in [30, 120] {
        let mut child = laptop.command(&["sync", "--batch", "100"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        laptop.assert_intact();
    }
    laptop.ok(&["sync"]);
    laptop.ok(&["sync"]);
    phone.ok(&["sync"]);
    for n in [laptop, phone, &hub] {
        assert_eq!(n.rows(), 2_350, "on {}", n.name);
        n.assert_intact();
    }
    phone.ok(&["verify"]);
    laptop.ok(&["verify"]);
    drop(server);
}

/// A container restored from a volume snapshot boots its daemon, which
/// brings back what was written after the snapshot before it writes more.
#[test]
fn a_restored_container_bootstraps_with_its_daemon() {
    let (hub, _server, spokes) = star("hub", &["box"]);
    let container = &spokes[0];
    container.ok(&["remember", "--source", "notes", "before the snapshot"]);
    container.ok(&["sync"]);
    let snapshot = container.dir.path().join("snapshot");
    copy_tree(&container.home(), &snapshot);
    container.ok(&["remember", "--source", "notes", "after the snapshot"]);
    container.ok(&["sync"]);
    std::fs::remove_dir_all(container.home()).unwrap();
    copy_tree(&snapshot, &container.home());

    let daemon = container.daemon(&["--interval", "1s"]);
    assert!(
        wait_until(30, || texts(container).len() == 2),
        "the daemon did not bring back what was written after the snapshot"
    );
    container.ok(&["remember", "--source", "notes", "after the restore"]);
    assert!(
        wait_until(30, || texts(&hub).len() == 3),
        "{:?}",
        texts(&hub)
    );
    daemon.terminate(10);
    container.ok(&["verify"]);
    assert_eq!(brief(container), (0, String::new()));
}

/// A home copied to a second machine while the first goes on: both say
/// so loudly, nothing is lost, and `init --new-identity` on the copy
/// settles it.
#[test]
fn a_copied_home_is_loud_and_a_new_identity_resolves_it() {
    let (hub, server, spokes) = star("hub", &["laptop"]);
    let laptop = &spokes[0];
    laptop.ok(&["remember", "--source", "notes", "shared past"]);
    laptop.ok(&["sync"]);
    let copy = copy_of(laptop, "laptop2");

    laptop.ok(&["remember", "--source", "notes", "juliet"]);
    laptop.ok(&["sync"]);
    copy.ok(&["remember", "--source", "notes", "india"]);
    copy.run(&["sync"]);
    laptop.ok(&["remember", "--source", "notes", "kilo"]);
    laptop.run(&["sync"]);
    copy.ok(&["remember", "--source", "notes", "lima"]);
    copy.run(&["sync"]);
    laptop.run(&["sync"]);
    copy.run(&["sync"]);

    // Loud on both homes.
    let (code, lines) = brief(laptop);
    let (ccode, clines) = brief(&copy);
    for (who, code, lines) in [("laptop", code, &lines), ("copy", ccode, &clines)] {
        assert_eq!(code, 2, "{who} is not loud: {lines}");
        assert!(lines.contains("two homes"), "{who}: {lines}");
        assert!(lines.contains("--new-identity"), "{who}: {lines}");
    }

    // The fix, with a new invite for the copy.
    let out = copy.ok(&["init", "--new-identity", "--name", "laptop2"]);
    assert!(out.contains("new invite"), "{out}");
    assert_ne!(node_id(&copy), node_id(laptop));
    copy.ok(&["peer", "remove", "hub"]);
    let line = hub.invite("laptop2", &server);
    copy.ok(&["pair", &line, "--alias", "hub"]);
    // Its first sync as the new identity, killed with SIGKILL once.
    let mut child = copy.command(&["sync"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(40));
    let _ = child.kill();
    let _ = child.wait();
    copy.assert_intact();
    copy.ok(&["sync"]);
    laptop.ok(&["sync"]);
    copy.ok(&["sync"]);
    laptop.ok(&["sync"]);
    let all = ["india", "juliet", "kilo", "lima", "shared past"];
    assert_eq!(texts(&hub), all);
    assert_eq!(texts(laptop), all);
    assert_eq!(texts(&copy), all);
    for n in [laptop, &copy, &hub] {
        assert_eq!(brief(n), (0, String::new()), "{} is still loud", n.name);
        n.assert_intact();
    }
    laptop.ok(&["verify"]);
    copy.ok(&["verify"]);
}

/// A pair line is good once: a second node using it is refused and named
/// on the hub; a token lifted out of a used line is worthless in another
/// home; an unclaimed line dies at its expiry in every form.
#[test]
fn lines_and_tokens_are_single_use_and_bound() {
    let hub = Node::new("hub");
    let server: Server = hub.serve(&[]);
    let line = hub.invite("laptop", &server);
    let laptop = Node::new("laptop");
    laptop.ok(&["pair", &line, "--alias", "hub"]);
    laptop.ok(&["remember", "--source", "notes", "mine"]);
    laptop.ok(&["sync"]);

    // The same line, pasted on another machine.
    let thief = Node::new("thief");
    let r = thief.run(&["pair", &line, "--alias", "hub"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("bound to node"), "{r:?}");
    // The token alone, in `peer add`, from another home.
    let token = crate::harness::blob_token(&line);
    let fp = crate::harness::blob_fingerprint(&line).to_string();
    let url = format!("https://127.0.0.1:{}", server.port());
    let r = thief.run(&["peer", "add", "hub2", &url, &token, "--cert-fp", &fp]);
    assert_ne!(r.code, 0, "{r:?}");
    let r = thief.run(&[
        "peer",
        "add",
        "hub3",
        &url,
        &token,
        "--cert-fp",
        &fp,
        "--no-check",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = thief.run(&["sync", "hub3"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(!thief.ok(&["export"]).contains("mine"));
    // The hub names the claimant, and the laptop goes on.
    let (code, lines) = brief(&hub);
    assert_eq!(code, 1, "{lines}");
    assert!(lines.contains("tried the token of laptop"), "{lines}");
    let list = hub.ok(&["peer", "list"]);
    assert!(list.contains("bound to node"), "{list}");
    assert!(list.contains("refused node"), "{list}");
    assert!(list.contains("from 127.0.0.1"), "{list}");
    laptop.ok(&["sync"]);

    // An unclaimed line past its expiry: refused however it is used.
    let late = hub.ok(&[
        "invite",
        "--peer",
        "tablet",
        "--host",
        "127.0.0.1",
        "--port",
        &server.port(),
        "--ttl",
        "1s",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let tablet = Node::new("tablet");
    assert_ne!(tablet.run(&["pair", late.trim(), "--alias", "hub"]).code, 0);
    let token = crate::harness::blob_token(late.trim());
    let r = tablet.run(&["peer", "add", "hub", &url, &token, "--cert-fp", &fp]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("expired"), "{r:?}");
}
