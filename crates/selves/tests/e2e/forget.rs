//! `selves forget`: a tombstone travels to every node, each purges the
//! words from its files, and no node brings them back.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::harness::{rows, star, wait_until};

/// Files under `dir` whose bytes hold `needle`.
fn holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                out.push(p);
            }
        }
    }
    out
}

/// Forgotten on the laptop: gone from the laptop's files at once, from the
/// hub's and (through the hub) the phone's with their next sync, title
/// included; the phone, offline and editing the row meanwhile, does not
/// bring it back. A dry run changes nothing.
#[test]
fn forgotten_words_leave_every_node_and_do_not_come_back() {
    let (hub, _server, spokes) = star("hub", &["laptop", "phone"]);
    let (laptop, phone) = (&spokes[0], &spokes[1]);
    laptop.import(&[
        json!({"source": "chat", "conversation_id": "trip", "msg_id": "m1", "role": "user",
               "text": "the zanzibar password hint is tulip", "ts": 1796036400,
               "conversation": {"title": "zanzibar plans"}}),
        json!({"source": "chat", "conversation_id": "trip", "msg_id": "m2", "role": "user",
               "text": "book the ferry on monday", "ts": 1796036460}),
        json!({"source": "chat", "conversation_id": "garden", "msg_id": "m3", "role": "user",
               "text": "stake the tomatoes in june", "ts": 1796036520}),
    ]);
    laptop.ok(&["sync"]);
    phone.ok(&["sync"]);
    assert_eq!(phone.export().len(), 3);
    // The phone edits the row while it cannot reach the hub.
    phone.ok(&[
        "remember",
        "--msg-id",
        "chat/trip/m1",
        "the zanzibar hint is now marigold",
    ]);

    let dry = laptop.ok(&["forget", "--match", "zanzibar", "--dry-run"]);
    assert!(dry.starts_with("would forget 1 message"), "{dry}");
    assert!(laptop.ok(&["export"]).contains("tulip"));

    let out = laptop.ok(&["forget", "--match", "zanzibar"]);
    assert!(out.starts_with("forgetting 1 message"), "{out}");
    for word in ["tulip", "zanzibar"] {
        assert_eq!(
            holding(&laptop.home(), word),
            Vec::<PathBuf>::new(),
            "{word}"
        );
    }
    assert!(laptop.ok(&["search", "ferry"]).contains("monday"));
    laptop.fails(&["search", "tulip"], 1);
    let nothing = laptop.fails(&["forget", "--match", "zanzibar"], 1);
    assert!(nothing.stderr.contains("nothing to forget"), "{nothing:?}");

    laptop.ok(&["sync"]);
    hub.fails(&["search", "tulip"], 1);
    assert!(
        wait_until(20, || holding(&hub.home(), "tulip").is_empty()
            && holding(&hub.home(), "zanzibar").is_empty()),
        "{:?}",
        holding(&hub.home(), "tulip")
    );

    // The phone comes back: its edit loses to the tombstone, everywhere.
    phone.ok(&["sync"]);
    laptop.ok(&["sync"]);
    for node in [&hub, laptop, phone] {
        let export = node.ok(&["export"]);
        for word in ["tulip", "zanzibar", "marigold"] {
            assert!(!export.contains(word), "{word} on {}", node.name);
        }
        assert!(export.contains("ferry"), "{}", node.name);
        node.fails(&["search", "marigold"], 1);
        node.assert_intact();
    }
    for word in ["tulip", "marigold"] {
        assert_eq!(
            holding(&phone.home(), word),
            Vec::<PathBuf>::new(),
            "{word}"
        );
    }
    laptop.ok(&["verify"]);
    phone.ok(&["verify"]);
}

/// A conversation forgotten while a sync runs: both finish, and after the
/// next round every node agrees it is gone.
#[test]
fn forgetting_during_a_sync_converges() {
    let (hub, _server, spokes) = star("hub", &["laptop"]);
    let laptop = &spokes[0];
    laptop.import(&rows("bulk", "bulkconv", 4000, 300));
    laptop.import(&rows("keep", "keepconv", 50, 100));
    let mut sync = laptop.command(&["sync"]).spawn().unwrap();
    let out = laptop.ok(&["forget", "--conversation", "bulkconv"]);
    assert!(out.starts_with("forgetting 4000 messages"), "{out}");
    assert!(sync.wait().unwrap().success());
    laptop.ok(&["sync"]);
    laptop.ok(&["verify"]);
    for node in [&hub, laptop] {
        node.fails(&["search", "bulk"], 1);
        assert_eq!(
            node.ok(&["search", "keep", "--limit", "100"])
                .lines()
                .count(),
            50
        );
    }
}
