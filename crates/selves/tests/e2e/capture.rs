//! Capture: agent sessions and notes read into memory, incrementally,
//! with secrets held on the node that captured them.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Node, star, wait_until};

/// A Claude Code session file under the node's `HOME`, as Claude Code lays
/// them out: `~/.claude/projects/<project slug>/<session id>.jsonl`.
fn claude_session(node: &Node, session: &str) -> PathBuf {
    let dir = node.dir.path().join(".claude/projects/-home-ana-parser");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{session}.jsonl"))
}

fn claude_line(session: &str, n: u32, role: &str, text: &str) -> String {
    let message = if role == "user" {
        json!({"role": "user", "content": text})
    } else {
        json!({"id": format!("msg_{n}"), "role": "assistant", "model": "claude-sonnet-4-5",
               "content": [{"type": "thinking", "thinking": "let me see"},
                           {"type": "text", "text": text},
                           {"type": "tool_use", "id": format!("toolu_{n}"), "name": "Read", "input": {"file_path": "/home/ana/parser/src/lib.rs"}}]})
    };
    json!({"parentUuid": null, "isSidechain": false, "userType": "external",
           "cwd": "/home/ana/parser", "sessionId": session, "version": "2.0.14",
           "gitBranch": "main", "type": role, "message": message,
           "uuid": format!("{session}-{n}"), "timestamp": format!("2026-11-30T10:{:02}:00.000Z", n % 60)})
    .to_string()
}

fn tool_result_line(session: &str, n: u32) -> String {
    json!({"parentUuid": format!("{session}-{}", n - 1), "sessionId": session, "cwd": "/home/ana/parser",
           "type": "user", "message": {"role": "user", "content": [{"tool_use_id": format!("toolu_{}", n - 1), "type": "tool_result", "content": "fn parse(input: &str) -> Vec<Line> { TOOLNOISE }"}]},
           "uuid": format!("{session}-{n}"), "timestamp": "2026-11-30T10:59:00.000Z"})
    .to_string()
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn hits(node: &Node, words: &str) -> Vec<Value> {
    // `search` exits 1 when nothing matches, as grep does.
    let run = node.run(&["search", words, "--json"]);
    assert!(run.code == 0 || run.code == 1, "{run:?}");
    serde_json::from_str::<Vec<Value>>(&run.stdout).unwrap()
}

/// Claude Code sessions: what was said is captured with the session, the
/// project and this node as origin; tool noise is not; reading again
/// makes no copies; a file that grew is read from where it stopped (a
/// half-written line waits); a rewritten file is read again safely.
#[test]
fn claude_code_sessions_are_captured_incrementally() {
    let node = Node::new("laptop");
    let s = "0b7c5f0e-7d5a-4a53-9f62-2f1d2c3b4a59";
    let file = claude_session(&node, s);
    let mut text = String::new();
    text.push_str(&format!(
        "{}\n",
        claude_line(s, 1, "user", "why does the tokenizer drop the last line")
    ));
    text.push_str(&format!(
        "{}\n",
        claude_line(
            s,
            2,
            "assistant",
            "It stops at EOF without a trailing newline"
        )
    ));
    text.push_str(&format!("{}\n", tool_result_line(s, 3)));
    std::fs::write(&file, &text).unwrap();

    let out = node.ok(&["capture", "add", "claude-code"]);
    assert!(
        out.contains("claude-code: 1 file read, 2 messages captured"),
        "{out}"
    );
    let rows = node.export();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r["source"], "claude-code");
    assert_eq!(r["conversation_id"], format!("claude-code-{s}"));
    assert_eq!(r["origin"], "laptop");
    assert_eq!(r["conversation"]["project_path"], "/home/ana/parser");
    assert_eq!(hits(&node, "tokenizer").len(), 1);
    assert!(
        hits(&node, "TOOLNOISE").is_empty(),
        "tool output is not captured"
    );

    // Nothing new: nothing read, nothing added, nothing written (the
    // daemon looks twice a second).
    let last_run = || node.json(&["capture", "list", "--json"])[0]["last_run"].clone();
    let before = last_run();
    std::thread::sleep(Duration::from_millis(5));
    let out = node.ok(&["capture", "run"]);
    assert!(out.contains("0 files read, 0 messages captured"), "{out}");
    assert_eq!(last_run(), before);

    // A line still being written waits for its end.
    let line4 = claude_line(s, 4, "user", "now make the lexer stream");
    append(
        &file,
        &format!(
            "{}\n{}",
            claude_line(s, 3, "user", "thanks, and the parser"),
            &line4[..30]
        ),
    );
    let out = node.ok(&["capture", "run"]);
    assert!(out.contains("1 message captured"), "{out}");
    append(&file, &format!("{}\n", &line4[30..]));
    let out = node.ok(&["capture", "run"]);
    assert!(out.contains("1 message captured"), "{out}");
    assert_eq!(hits(&node, "lexer stream").len(), 1);
    assert_eq!(node.export().len(), 4);

    // Rewritten shorter, with a new start: read again, nothing doubled.
    std::fs::write(
        &file,
        format!(
            "{}\n{}\n",
            claude_line(s, 1, "user", "why does the tokenizer drop the last line"),
            claude_line(
                s,
                9,
                "assistant",
                "Rewritten session answer about buffering"
            )
        ),
    )
    .unwrap();
    let out = node.ok(&["capture", "run"]);
    assert!(out.contains("1 message captured"), "{out}");
    assert_eq!(node.export().len(), 5);
    let list = node.json(&["capture", "list", "--json"]);
    assert_eq!(list[0]["name"], "claude-code");
    assert_eq!(list[0]["rows"], 5);
    assert_eq!(list[0]["last_error"], Value::Null);
    node.assert_intact();
}

/// Codex and pi sessions and a folder of notes, each as those tools
/// write them today.
#[test]
fn codex_pi_and_notes_are_captured() {
    let node = Node::new("laptop");
    let home = node.dir.path();
    let codex = home.join(".codex/sessions/2026/11/30");
    std::fs::create_dir_all(&codex).unwrap();
    let id = "0199a0b1-2c3d-7e4f-8a9b-0c1d2e3f4a5b";
    let lines = [
        json!({"timestamp":"2026-11-30T10:00:00.000Z","type":"session_meta","payload":{"id":id,"timestamp":"2026-11-30T10:00:00.000Z","cwd":"/srv/app","originator":"codex_cli_rs","cli_version":"0.63.0"}}),
        json!({"timestamp":"2026-11-30T10:00:01.000Z","type":"response_item","payload":{"type":"message","role":"user","content":[{"type":"input_text","text":"<environment_context>\n<cwd>/srv/app</cwd>\n</environment_context>"}]}}),
        json!({"timestamp":"2026-11-30T10:00:02.000Z","type":"response_item","payload":{"type":"message","role":"user","content":[{"type":"input_text","text":"add a healthz endpoint to the gateway"}]}}),
        json!({"timestamp":"2026-11-30T10:00:02.000Z","type":"event_msg","payload":{"type":"user_message","message":"add a healthz endpoint to the gateway","images":[]}}),
        json!({"timestamp":"2026-11-30T10:00:04.000Z","type":"response_item","payload":{"type":"function_call","name":"shell","arguments":"{\"command\":[\"ls\"]}","call_id":"c1"}}),
        json!({"timestamp":"2026-11-30T10:00:06.000Z","type":"response_item","payload":{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Added GET /healthz to the gateway router."}]}}),
    ];
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(
        codex.join(format!("rollout-2026-11-30T10-00-00-{id}.jsonl")),
        body,
    )
    .unwrap();

    let pi = home.join(".pi/agent/sessions/--home-ana-site--");
    std::fs::create_dir_all(&pi).unwrap();
    let pid = "5f2c1a9e-3b7d-4c8e-9a1f-6d2e8b4c0a71";
    let lines = [
        json!({"type":"session","version":3,"id":pid,"timestamp":"2026-11-30T11:00:00.000Z","cwd":"/home/ana/site"}),
        json!({"type":"message","id":"a1","parentId":null,"timestamp":"2026-11-30T11:00:01.000Z","message":{"role":"user","content":[{"type":"text","text":"make the masthead sticky"}],"timestamp":1796036401000i64}}),
        json!({"type":"message","id":"a2","parentId":"a1","timestamp":"2026-11-30T11:00:02.000Z","message":{"role":"assistant","content":[{"type":"toolCall","id":"t","name":"edit","arguments":{}},{"type":"text","text":"The masthead is position: sticky now."}]}}),
        json!({"type":"message","id":"a3","parentId":"a2","timestamp":"2026-11-30T11:00:03.000Z","message":{"role":"toolResult","toolCallId":"t","content":[{"type":"text","text":"edited"}]}}),
    ];
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(
        pi.join(format!("2026-11-30T11-00-00-000Z_{pid}.jsonl")),
        body,
    )
    .unwrap();

    let notes = home.join("notes");
    std::fs::create_dir_all(notes.join("garden")).unwrap();
    std::fs::write(
        notes.join("garden/tomatoes.md"),
        "# Tomatoes\n\nStake them in May.\n",
    )
    .unwrap();

    node.ok(&["capture", "add", "codex"]);
    node.ok(&["capture", "add", "pi"]);
    let out = node.ok(&[
        "capture",
        "add",
        "notes",
        "--format",
        "markdown",
        notes.to_str().unwrap(),
    ]);
    assert!(
        out.contains("notes: 1 file read, 1 message captured"),
        "{out}"
    );
    let codex_hits = hits(&node, "healthz gateway");
    assert_eq!(codex_hits.len(), 2, "{codex_hits:?}");
    assert_eq!(codex_hits[0]["conversation_id"], format!("codex-{id}"));
    assert!(hits(&node, "environment_context").is_empty());
    assert_eq!(hits(&node, "masthead").len(), 2);
    assert!(hits(&node, "edited").is_empty());
    assert_eq!(hits(&node, "Stake").len(), 1);

    // A note edited is the same row, changed.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(
        notes.join("garden/tomatoes.md"),
        "# Tomatoes\n\nStake them in June.\n",
    )
    .unwrap();
    let out = node.ok(&["capture", "run", "notes"]);
    assert!(out.contains("1 message captured"), "{out}");
    assert!(hits(&node, "May").is_empty());
    assert_eq!(hits(&node, "June").len(), 1);
    assert_eq!(node.export().len(), 5);

    // Unknown formats and missing names are refused.
    let bad = node.fails(&["capture", "add", "mystery"], 1);
    assert!(bad.stderr.contains("unknown format"), "{bad:?}");
    let bad = node.fails(&["capture", "add", "codex"], 1);
    assert!(bad.stderr.contains("exists"), "{bad:?}");
    let bad = node.fails(&["capture", "run", "nope"], 1);
    assert!(bad.stderr.contains("no source named nope"), "{bad:?}");
}

/// A pasted key in a session never leaves the node: it is held, listed,
/// and synced only once released; a dropped one is gone and stays gone.
#[test]
fn secrets_in_sessions_are_held_until_released() {
    let (hub, _server, spokes) = star("hub", &["laptop"]);
    let laptop = &spokes[0];
    let s = "9d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6";
    let file = claude_session(laptop, s);
    let key = format!("ghp_{}", "Ab3".repeat(12));
    let aws = "AKIAIOSFODNN7EXAMPLE";
    std::fs::write(
        &file,
        format!(
            "{}\n{}\n{}\n",
            claude_line(s, 1, "user", &format!("deploy with token {key} please")),
            claude_line(
                s,
                2,
                "user",
                &format!("and the aws id is {aws} for staging")
            ),
            claude_line(s, 3, "assistant", "Deploying the staging cluster now"),
        ),
    )
    .unwrap();
    let out = laptop.ok(&["capture", "add", "claude-code"]);
    assert!(out.contains("1 message captured, 2 held back"), "{out}");
    laptop.ok(&["sync"]);
    assert_eq!(hub.export().len(), 1);
    for secret in [key.as_str(), aws] {
        assert!(!hub.ok(&["export"]).contains(secret));
        assert!(
            !laptop.ok(&["export"]).contains(secret),
            "held rows are not in memory"
        );
    }
    let held = laptop.json(&["capture", "held", "--json"]);
    assert_eq!(held.as_array().unwrap().len(), 2, "{held}");
    let shown = laptop.ok(&["capture", "held"]);
    assert!(shown.contains("looks like"), "{shown}");

    let id_of = |needle: &str| -> String {
        held.as_array()
            .unwrap()
            .iter()
            .find(|h| h["row"]["text"].as_str().unwrap().contains(needle))
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let out = laptop.ok(&["capture", "release", &id_of("staging")]);
    assert!(out.contains("released 1 message"), "{out}");
    let out = laptop.ok(&["capture", "drop", &id_of("deploy")]);
    assert!(out.contains("dropped 1 message"), "{out}");
    laptop.ok(&["sync"]);
    assert!(hub.ok(&["export"]).contains(aws));
    assert!(!hub.ok(&["export"]).contains(&key));
    assert!(
        laptop
            .json(&["capture", "held", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Read again from the start (the file rewritten): the dropped message
    // is not held again, the released one not captured twice.
    let body = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        format!("{body}{}\n", claude_line(s, 4, "user", "done?")),
    )
    .unwrap();
    std::fs::write(&file, format!("\n{body}")).unwrap();
    laptop.ok(&["capture", "run"]);
    assert!(
        laptop
            .json(&["capture", "held", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(laptop.export().len(), 2);
    laptop.ok(&["capture", "remove", "claude-code"]);
    assert!(
        laptop
            .json(&["capture", "list", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// Through two daemons: what an agent writes on the laptop is found on
/// the hub within seconds, with no command typed.
#[test]
fn a_daemon_captures_as_the_agent_writes() {
    let hub = Node::new("hub");
    let server = hub.daemon_serving(&[]);
    let laptop = Node::new("laptop");
    laptop.pair(&hub, &server, "hub");
    laptop.ok(&["capture", "add", "claude-code"]);
    let _daemon = laptop.daemon(&[]);
    let s = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f";
    let file = claude_session(&laptop, s);
    let t = Instant::now();
    append(
        &file,
        &format!(
            "{}\n",
            claude_line(s, 1, "user", "remember the octarine deadline")
        ),
    );
    assert!(
        wait_until(30, || !hits(&hub, "octarine").is_empty()),
        "{}",
        laptop.daemon_log()
    );
    eprintln!(
        "captured on the laptop and found on the hub after {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    append(
        &file,
        &format!(
            "{}\n",
            claude_line(s, 2, "assistant", "The octarine deadline is Friday")
        ),
    );
    assert!(wait_until(30, || hits(&hub, "Friday").len() == 1));
    eprintln!("an appended line reached the hub after {:?}", t.elapsed());
}

/// An application's database, as Selesta keeps `resonance.sqlite3`.
fn resonance_db(node: &Node, entries: &[(&str, &str, i64)]) -> PathBuf {
    let path = node.dir.path().join("resonance.sqlite3");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE resonance (
             id INTEGER PRIMARY KEY,
             uid TEXT NOT NULL UNIQUE,
             entry TEXT NOT NULL,
             created_at INTEGER NOT NULL,
             mood TEXT DEFAULT 'calm'
         );",
    )
    .unwrap();
    for (uid, entry, at) in entries {
        db.execute(
            "INSERT INTO resonance (uid, entry, created_at, mood) VALUES (?1, ?2, ?3, 'bright')",
            rusqlite::params![uid, entry, at],
        )
        .unwrap();
    }
    path
}

fn table(path: &Path) -> Vec<(i64, String, String, i64, String)> {
    let db = rusqlite::Connection::open(path).unwrap();
    let mut s = db
        .prepare("SELECT id, uid, entry, created_at, mood FROM resonance ORDER BY uid")
        .unwrap();
    s.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Two Selesta instances exchange their resonance entries through selves
/// without syncing the file: each table gains the other's rows by INSERT,
/// its own rows are never touched, reading again changes nothing, and the
/// application holding its write lock only delays a pass.
#[test]
fn two_applications_exchange_rows_of_their_sqlite_tables() {
    let (_hub, _server, spokes) = star("hub", &["railway", "phone"]);
    let (a, b) = (&spokes[0], &spokes[1]);
    let da = resonance_db(
        a,
        &[
            ("a1", "the sea remembers", 1796036400),
            ("a2", "quiet morning", 1796036460),
        ],
    );
    let db = resonance_db(
        b,
        &[("b1", "a bright resonance from the phone", 1796036520)],
    );
    let add = |node: &Node, path: &Path| {
        node.ok(&[
            "capture",
            "add",
            "resonance",
            path.to_str().unwrap(),
            "--format",
            "sqlite",
            "--table",
            "resonance",
            "--key",
            "uid",
            "--text",
            "entry",
            "--ts",
            "created_at",
            "--write-back",
        ])
    };
    let before_a = table(&da);
    assert!(add(a, &da).contains("2 messages captured"));
    assert!(add(b, &db).contains("1 message captured"));
    a.ok(&["sync"]);
    b.ok(&["sync"]);
    a.ok(&["sync"]);
    let out = b.ok(&["capture", "run"]);
    assert!(out.contains("2 messages written back"), "{out}");
    let out = a.ok(&["capture", "run"]);
    assert!(out.contains("1 message written back"), "{out}");

    let (ta, tb) = (table(&da), table(&db));
    assert_eq!(ta.len(), 3);
    assert_eq!(tb.len(), 3);
    // The application's own rows are untouched; rows written back carry
    // the other application's time as it wrote it.
    assert_eq!(&ta[..2], &before_a[..]);
    let b1 = ta.iter().find(|r| r.1 == "b1").unwrap();
    assert_eq!(
        (b1.2.as_str(), b1.3, b1.4.as_str()),
        ("a bright resonance from the phone", 1796036520, "calm")
    );

    // Reading again: nothing new, nothing doubled, provenance kept.
    for node in [a, b] {
        let out = node.ok(&["capture", "run"]);
        assert!(
            out.contains("0 messages captured") && !out.contains("written back"),
            "{out}"
        );
        let rows = node.export();
        assert_eq!(rows.len(), 3);
        let b1 = rows.iter().find(|r| r["msg_id"] == "b1").unwrap();
        assert_eq!(b1["origin"], "phone");
        assert_eq!(b1["source"], "resonance");
    }
    assert_eq!(table(&da).len(), 3);
    assert_eq!(table(&db).len(), 3);

    // The application holds its write lock while a pass runs: the pass
    // reads what is committed without waiting (a WAL reader), and the row
    // written under the lock is captured once it is committed.
    let holder = {
        let path = da.clone();
        std::thread::spawn(move || {
            let mut db = rusqlite::Connection::open(path).unwrap();
            let tx = db
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            tx.execute(
                "INSERT INTO resonance (uid, entry, created_at) VALUES ('a3', 'written under the lock', 1796036600)",
                [],
            )
            .unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            tx.commit().unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    a.ok(&["capture", "run"]);
    holder.join().unwrap();
    let out = a.ok(&["capture", "run"]);
    assert!(out.contains("1 message captured"), "{out}");
    assert_eq!(hits(a, "lock").len(), 1);

    // A write-back waits for the application's write lock, and goes in
    // once the application commits.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO resonance (uid, entry, created_at) VALUES ('b2', 'second from the phone', 1796036700)",
            [],
        )
        .unwrap();
    b.ok(&["capture", "run"]);
    b.ok(&["sync"]);
    a.ok(&["sync"]);
    let (locked, held) = std::sync::mpsc::channel();
    let holder = {
        let path = da.clone();
        std::thread::spawn(move || {
            let mut db = rusqlite::Connection::open(path).unwrap();
            let tx = db
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            tx.execute("UPDATE resonance SET mood = 'busy' WHERE uid = 'a1'", [])
                .unwrap();
            locked.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            tx.commit().unwrap();
        })
    };
    held.recv().unwrap();
    let t = Instant::now();
    let out = a.ok(&["capture", "run"]);
    assert!(out.contains("1 message written back"), "{out}");
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "it did not wait: {:?}",
        t.elapsed()
    );
    holder.join().unwrap();
    let ta = table(&da);
    assert_eq!(ta.iter().find(|r| r.1 == "a1").unwrap().4, "busy");
    assert!(ta.iter().any(|r| r.1 == "b2"));

    // Bad input is refused before anything is saved; a database that
    // goes away is loud.
    let bad = a.fails(
        &[
            "capture",
            "add",
            "evil",
            da.to_str().unwrap(),
            "--format",
            "sqlite",
            "--table",
            "resonance\"; DROP TABLE resonance; --",
            "--key",
            "uid",
            "--text",
            "entry",
        ],
        1,
    );
    assert!(
        bad.stderr.contains("not a plain table or column name"),
        "{bad:?}"
    );
    let bad = a.fails(
        &[
            "capture",
            "add",
            "evil",
            da.to_str().unwrap(),
            "--format",
            "sqlite",
            "--table",
            "resonance",
            "--key",
            "uid",
            "--text",
            "no_such_column",
        ],
        1,
    );
    assert!(
        bad.stderr
            .contains("has no table resonance with those columns"),
        "{bad:?}"
    );
    let notes = a.dir.path().to_str().unwrap().to_owned();
    let bad = a.fails(
        &[
            "capture", "add", "evil", &notes, "--format", "markdown", "--table", "t",
        ],
        1,
    );
    assert!(bad.stderr.contains("are for --format sqlite"), "{bad:?}");
    assert_eq!(
        a.json(&["capture", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(table(&da).len(), 5);

    std::fs::rename(&da, a.dir.path().join("moved.sqlite3")).unwrap();
    a.fails(&["capture", "run"], 1);
    let brief = a.fails(&["status", "--brief"], 1);
    assert!(
        brief.stdout.contains("⚠ capture resonance failing"),
        "{brief:?}"
    );
    let list = a.ok(&["capture", "list"]);
    assert!(
        list.contains("error:") && list.contains("is gone"),
        "{list}"
    );
}

/// `import --memex`: a memex store comes in whole, provenance as memex
/// kept it (a null origin stays null), conversations with their titles
/// and projects; again, nothing doubles; it relays on with its origins.
#[test]
fn a_memex_store_is_imported_with_its_provenance() {
    let (hub, _server, spokes) = star("hub", &["mac"]);
    let mac = &spokes[0];
    let path = mac.dir.path().join("memex.db");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE conversations (
             id INTEGER PRIMARY KEY, source TEXT NOT NULL, conversation_id TEXT NOT NULL,
             title TEXT, first_ts INTEGER, last_ts INTEGER, project_path TEXT,
             parent_conversation_id TEXT, message_count INTEGER DEFAULT 0,
             UNIQUE (source, conversation_id));
         CREATE TABLE messages (
             id INTEGER PRIMARY KEY, source TEXT NOT NULL, conversation_id TEXT NOT NULL,
             msg_id TEXT, uuid TEXT, role TEXT NOT NULL, sender TEXT, text TEXT NOT NULL,
             ts INTEGER NOT NULL, edited_at INTEGER, channel TEXT, metadata TEXT, origin TEXT,
             UNIQUE (source, conversation_id, msg_id));
         INSERT INTO conversations (source, conversation_id, title, first_ts, last_ts, project_path)
             VALUES ('claude-code', 'claude-code-s9', 'vps firewall', 1716800000, 1716800100, '/Users/ana/infra'),
                    ('openclaw', 'openclaw-tg-42', 'telegram chat', 1716800000, 1716800200, NULL);
         INSERT INTO messages (source, conversation_id, msg_id, uuid, role, sender, text, ts, origin)
             VALUES ('claude-code', 'claude-code-s9', 'u1', '2f1e0c2a-1b3c-4d5e-8f90-0a1b2c3d4e5f', 'user', 'me',
                     'open port 8766 on the vps firewall', 1716800000, 'mac'),
                    ('openclaw', 'openclaw-tg-42', 't1', NULL, 'assistant', 'openclaw',
                     'good morning from the telegram bot', 1716800200, NULL),
                    ('openclaw', 'openclaw-tg-42', NULL, NULL, 'system', NULL,
                     'an ephemeral boundary row', 1716800201, NULL);",
    )
    .unwrap();
    drop(db);
    let out = mac.ok(&["import", "--memex", path.to_str().unwrap()]);
    assert!(
        out.contains("imported 3 messages from memex: 2 new"),
        "{out}"
    );
    assert!(out.contains("1 local-only"), "{out}");
    let again = mac.ok(&["import", "--memex", path.to_str().unwrap()]);
    assert!(
        again.contains("0 new") && again.contains("2 unchanged"),
        "{again}"
    );
    mac.ok(&["sync"]);
    let rows = hub.export();
    assert_eq!(rows.len(), 2, "local-only rows stay on the mac");
    let firewall = rows.iter().find(|r| r["msg_id"] == "u1").unwrap();
    assert_eq!(firewall["origin"], "mac");
    assert_eq!(firewall["conversation"]["title"], "vps firewall");
    assert_eq!(firewall["conversation"]["project_path"], "/Users/ana/infra");
    let bot = rows.iter().find(|r| r["msg_id"] == "t1").unwrap();
    assert_eq!(bot["origin"], Value::Null, "provenance is never invented");

    let bad = mac.fails(
        &[
            "import",
            "--memex",
            mac.home().join("config.toml").to_str().unwrap(),
        ],
        1,
    );
    assert!(bad.stderr.contains("is not a SQLite database"), "{bad:?}");
    let empty = mac.dir.path().join("empty.db");
    rusqlite::Connection::open(&empty)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let bad = mac.fails(&["import", "--memex", empty.to_str().unwrap()], 1);
    assert!(bad.stderr.contains("is not a memex store"), "{bad:?}");
}
