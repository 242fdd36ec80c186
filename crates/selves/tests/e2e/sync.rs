//! Sync between real nodes: both directions, relay, edits, concurrency.

use serde_json::json;

use crate::harness::{Node, rows, star};

#[test]
fn two_nodes_sync_both_ways_and_verify() {
    let vps = Node::new("vps");
    let laptop = Node::new("laptop");
    let server = vps.serve(&[]);
    laptop.pair(&vps, &server, "vps");

    vps.import(&rows("v", "on-vps", 300, 200));
    laptop.import(&rows("l", "on-laptop", 500, 2000));
    laptop.ok(&[
        "remember",
        "--source",
        "notes",
        "--conversation",
        "c1",
        "the",
        "deploy",
        "key",
        "rotates",
        "monthly",
    ]);

    let report = laptop.json(&["sync", "vps", "--json"]);
    let r = &report[0];
    assert_eq!(r["ok"], true, "{report}");
    assert_eq!(r["report"]["pulled"], 300);
    assert_eq!(r["report"]["pushed"], 501);

    assert_eq!(vps.rows(), 801);
    assert_eq!(laptop.rows(), 801);
    assert_eq!(vps.export(), laptop.export(), "exports differ after sync");
    let out = laptop.ok(&["verify", "vps"]);
    assert!(out.starts_with("converged with vps: 801 rows"), "{out}");

    // Piped (not a terminal): one summary line, no progress bar.
    let quiet = laptop.run(&["sync", "vps"]);
    assert_eq!(quiet.code, 0, "{quiet:?}");
    assert_eq!(quiet.stderr, "", "progress output when piped: {quiet:?}");
    assert_eq!(quiet.stdout.lines().count(), 1, "{quiet:?}");

    // A second round moves nothing.
    let again = laptop.json(&["sync", "--json"]);
    assert_eq!(again[0]["report"]["pulled"], 0);
    assert_eq!(again[0]["report"]["pushed"], 0);

    // Provenance: rows keep the name of the node that captured them.
    let hits = vps.json(&["search", "deploy", "key", "--json"]);
    assert_eq!(hits[0]["origin"], "laptop");
    let none = vps.run(&["search", "deploy", "--origin", "vps"]);
    assert_eq!(none.code, 1, "{none:?}");
    let by_source = vps.json(&[
        "search", "message", "--source", "e2e", "--limit", "1000", "--json",
    ]);
    assert_eq!(by_source.as_array().unwrap().len(), 800);

    // The hub knows the laptop by name.
    let status = vps.json(&["status", "--json"]);
    let names: Vec<_> = status["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].clone())
        .collect();
    assert!(names.contains(&json!("laptop")), "{status}");
    vps.assert_intact();
    laptop.assert_intact();
}

#[test]
fn verify_reports_divergence_with_exit_code_3() {
    let vps = Node::new("vps");
    let laptop = Node::new("laptop");
    let server = vps.serve(&[]);
    laptop.pair(&vps, &server, "vps");
    laptop.ok(&["sync"]);
    vps.import(&rows("v", "c", 5, 50));
    let run = laptop.fails(&["verify", "vps"], 3);
    assert!(run.stdout.contains("NOT converged"), "{run:?}");
    assert!(
        run.stdout.contains("vps memory: 0 records here, 5 there"),
        "{run:?}"
    );
    let json = laptop.run(&["verify", "--json"]);
    assert_eq!(json.code, 3);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["converged"], false);
    laptop.ok(&["sync"]);
    laptop.ok(&["verify"]);
}

/// A ↔ B ↔ C: B serves A's records to C and C's to A; A and C never talk.
#[test]
fn three_nodes_converge_through_a_relay() {
    let a = Node::new("a");
    let b = Node::new("b");
    let c = Node::new("c");
    let a_server = a.serve(&[]);
    let b_server = b.serve(&[]);
    b.pair(&a, &a_server, "a");
    c.pair(&b, &b_server, "b");

    a.import(&rows("a", "conv-a", 120, 300));
    c.import(&rows("c", "conv-c", 80, 300));

    b.ok(&["sync", "a"]);
    c.ok(&["sync", "b"]);
    assert_eq!(c.rows(), 200, "c got a's rows through b");
    b.ok(&["sync", "a"]);
    assert_eq!(a.rows(), 200, "a got c's rows through b");

    // An edit made on c reaches a.
    c.ok(&[
        "remember",
        "--source",
        "e2e",
        "--conversation",
        "conv-a",
        "--msg-id",
        "a7",
        "edited",
        "on",
        "c",
    ]);
    c.ok(&["sync", "b"]);
    b.ok(&["sync", "a"]);
    let on_a = a.export();
    let row = on_a.iter().find(|r| r["msg_id"] == "a7").unwrap();
    assert_eq!(row["text"], "edited on c");
    assert_eq!(row["origin"], "a", "an edit keeps the row's provenance");
    assert!(row["edited_at"].as_i64().is_some());

    for n in [&a, &c] {
        assert_eq!(n.export(), b.export(), "{} differs from b", n.name);
        n.assert_intact();
    }
    b.ok(&["verify", "a"]);
    c.ok(&["verify", "b"]);
}

#[test]
fn concurrent_edits_of_one_row_pick_the_same_winner_everywhere() {
    let (hub, _server, spokes) = star("hub", &["b", "c"]);
    let [b, c] = &spokes[..] else { unreachable!() };

    b.ok(&[
        "remember",
        "--source",
        "s",
        "--conversation",
        "k",
        "--msg-id",
        "m1",
        "original",
    ]);
    b.ok(&["sync"]);
    c.ok(&["sync"]);
    // Both edit the same row before hearing of the other's edit.
    b.ok(&[
        "remember",
        "--source",
        "s",
        "--conversation",
        "k",
        "--msg-id",
        "m1",
        "edit",
        "from",
        "b",
    ]);
    c.ok(&[
        "remember",
        "--source",
        "s",
        "--conversation",
        "k",
        "--msg-id",
        "m1",
        "edit",
        "from",
        "c",
    ]);
    // And two rows imported with the same edited_at: the tie is broken
    // the same way everywhere too.
    let tie = |text: &str| {
        json!({"source": "s", "conversation_id": "k", "msg_id": "m2", "role": "user",
               "text": text, "ts": 1, "edited_at": 5000, "origin": "hub"})
    };
    b.import(&[tie("tie from b")]);
    c.import(&[tie("tie from c")]);

    for _ in 0..2 {
        b.ok(&["sync"]);
        c.ok(&["sync"]);
    }
    let exported = hub.export();
    assert_eq!(b.export(), exported);
    assert_eq!(c.export(), exported);
    let text = |msg: &str| {
        exported.iter().find(|r| r["msg_id"] == msg).unwrap()["text"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(["edit from b", "edit from c"].contains(&text("m1").as_str()));
    assert!(["tie from b", "tie from c"].contains(&text("m2").as_str()));
    b.ok(&["verify"]);
    c.ok(&["verify"]);
}

#[test]
fn two_clients_syncing_into_one_server_at_once_lose_nothing() {
    let (hub, _server, spokes) = star("hub", &["b", "c"]);
    let [b, c] = &spokes[..] else { unreachable!() };
    b.import(&rows("b", "from-b", 3000, 500));
    c.import(&rows("c", "from-c", 3000, 500));
    // Small batches, so the two pushes interleave at the server.
    let mut cb = b.command(&["sync", "--batch", "100"]).spawn().unwrap();
    let mut cc = c.command(&["sync", "--batch", "100"]).spawn().unwrap();
    assert!(cb.wait().unwrap().success());
    assert!(cc.wait().unwrap().success());
    assert_eq!(hub.rows(), 6000);
    b.ok(&["sync"]);
    c.ok(&["sync"]);
    assert_eq!(b.rows(), 6000);
    assert_eq!(c.rows(), 6000);
    assert_eq!(b.export(), c.export());
    hub.assert_intact();
    b.ok(&["verify"]);
    c.ok(&["verify"]);
}

#[test]
fn local_only_rows_stay_home() {
    let (hub, _server, spokes) = star("hub", &["b"]);
    let b = &spokes[0];
    b.import(&[
        json!({"source": "s", "conversation_id": "k", "role": "user", "text": "ephemeral, no msg_id", "ts": 1}),
        json!({"source": "s", "conversation_id": "k", "msg_id": "1", "role": "user", "text": "synced", "ts": 2}),
    ]);
    b.ok(&["sync"]);
    assert_eq!(b.export().len(), 2);
    let on_hub = hub.export();
    assert_eq!(on_hub.len(), 1);
    assert_eq!(on_hub[0]["text"], "synced");
    b.ok(&["verify"]);
}

/// A row without a `conversation` object (a memex client that sends none,
/// an import of bare rows) says nothing of its conversation: the title and
/// times a titled row gave stay, here and on every peer, in either order.
#[test]
fn rows_without_conversation_metadata_never_erase_a_title() {
    let (hub, _server, spokes) = star("hub", &["a"]);
    let a = &spokes[0];
    let titled = json!({
        "source": "cli", "conversation_id": "c1", "msg_id": "m1", "role": "user",
        "text": "first", "ts": 1_716_800_000,
        "conversation": {"title": "Trip plans", "first_ts": 1_716_800_000, "last_ts": 1_716_800_000}
    });
    let bare = |id: &str, ts: i64| {
        json!({"source": "cli", "conversation_id": "c1", "msg_id": id, "role": "user",
               "text": "a later message", "ts": ts})
    };
    // The bare row first on the hub, the titled one first on a.
    hub.import(&[bare("m0", 1_716_700_000)]);
    a.import(&[titled]);
    a.import(&[bare("m2", 1_716_900_000)]);
    a.ok(&["sync"]);
    a.ok(&["sync"]);
    for node in [&hub, a] {
        let rows = node.export();
        assert_eq!(rows.len(), 3, "{rows:?}");
        for r in &rows {
            assert_eq!(r["conversation"]["title"], "Trip plans", "{r}");
            assert_eq!(r["conversation"]["first_ts"], 1_716_800_000, "{r}");
        }
    }
    a.ok(&["verify"]);
}
