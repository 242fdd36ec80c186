//! The command line on one node: init, import, search, export, help.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;

use serde_json::json;

use crate::harness::{Node, bin, rows};

#[test]
fn init_makes_private_files_and_is_a_no_op_the_second_time() {
    let n = Node::new("laptop");
    for f in [
        "config.toml",
        "selves.db",
        "search.db",
        "tls/cert.pem",
        "tls/key.pem",
        "node.key",
    ] {
        let mode = std::fs::metadata(n.home().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f} has mode {mode:o}");
    }
    let mode = std::fs::metadata(n.home()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    // SQLite's side files exist while the database is open: they are as
    // private as the database.
    let server = n.serve(&[]);
    for f in [
        "selves.db-wal",
        "selves.db-shm",
        "search.db-wal",
        "search.db-shm",
    ] {
        let mode = std::fs::metadata(n.home().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f} has mode {mode:o}");
    }
    drop(server);
    let before = std::fs::read(n.home().join("tls/key.pem")).unwrap();
    let id = n.json(&["status", "--json"])["node"]["id"].clone();

    let out = n.ok(&["init", "--name", "other"]);
    assert!(out.starts_with("already initialised: node laptop"), "{out}");
    assert_eq!(std::fs::read(n.home().join("tls/key.pem")).unwrap(), before);
    assert_eq!(n.json(&["status", "--json"])["node"]["id"], id);

    let run = n.fails(&["init", "--name", "../evil"], 2);
    assert!(run.stderr.contains("not valid"), "{run:?}");
}

#[test]
fn commands_on_a_missing_home_say_how_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args(["status"])
        .env("SELVES_HOME", dir.path().join("nothing-here"))
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("selves init"), "{err}");
}

#[test]
fn import_refuses_bad_lines_alone_and_keeps_the_rest() {
    let n = Node::new("laptop");
    let path = n.dir.path().join("mixed.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "{}", json!({"source": "s", "conversation_id": "c", "msg_id": "1", "role": "user", "text": "good one", "ts": 1})).unwrap();
    f.write_all(b"{\"source\": \"s\", \"conversation_id\": \"c\", \"msg_id\": \"2\", \"role\": \"user\", \"text\": \"bad \xff\xfe bytes\", \"ts\": 2}\n").unwrap();
    writeln!(f, "{{not json").unwrap();
    writeln!(f).unwrap();
    writeln!(f, "{}", json!({"source": "", "conversation_id": "c", "msg_id": "3", "role": "user", "text": "no source", "ts": 3})).unwrap();
    writeln!(f, "{}", json!({"source": "s", "conversation_id": "c", "msg_id": "4", "role": "user", "text": "x".repeat(2 << 20), "ts": 4})).unwrap();
    writeln!(f, "{}", json!({"source": "s", "conversation_id": "c", "msg_id": "5", "role": "user", "text": "nul \u{0} and émoji 🙂", "ts": 5, "metadata": {"k": [1, 2]}})).unwrap();
    drop(f);

    let run = n.fails(&["import", path.to_str().unwrap()], 1);
    assert!(run.stdout.contains("imported 2 new"), "{run:?}");
    assert!(run.stdout.contains("4 lines refused"), "{run:?}");
    for line in [
        "line 2: not UTF-8",
        "line 3: not a row",
        "line 5: source is empty",
        "line 6: text is",
    ] {
        assert!(run.stderr.contains(line), "missing {line:?} in {run:?}");
    }
    let rows = n.export();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["text"], "nul \u{0} and émoji 🙂");
    assert_eq!(rows[1]["metadata"], r#"{"k":[1,2]}"#);
    assert_eq!(
        rows[0]["origin"], "laptop",
        "import stamps this node's name"
    );

    // Importing the same file again changes nothing.
    let run = n.fails(&["import", path.to_str().unwrap()], 1);
    assert!(
        run.stdout
            .contains("imported 0 new, 0 updated, 2 unchanged"),
        "{run:?}"
    );

    // --keep-null-origin never invents provenance.
    let old = n.dir.path().join("old.jsonl");
    std::fs::write(&old, format!("{}\n", json!({"source": "s", "conversation_id": "old", "msg_id": "1", "role": "user", "text": "from before", "ts": 1}))).unwrap();
    n.ok(&["import", old.to_str().unwrap(), "--keep-null-origin"]);
    let row = n
        .export()
        .into_iter()
        .find(|r| r["conversation_id"] == "old")
        .unwrap();
    assert!(row["origin"].is_null());
    n.assert_intact();
}

#[test]
fn search_takes_any_text() {
    let n = Node::new("laptop");
    n.import(&[
        json!({"source": "s", "conversation_id": "c", "msg_id": "1", "role": "user", "text": "we use c++ and foo-bar; it's fine", "ts": 1}),
        json!({"source": "s", "conversation_id": "c", "msg_id": "2", "role": "user", "text": "Ünïcödé wörds and 東京 too", "ts": 2}),
    ]);
    for q in [
        "c++",
        "foo-bar",
        "it's",
        "\"",
        "(",
        "AND",
        "NOT",
        "*",
        "NEAR(",
        "'; DROP TABLE messages; --",
        "\\",
    ] {
        let run = n.run(&["search", q]);
        assert!(
            run.code == 0 || run.code == 1,
            "search {q:?} crashed: {run:?}"
        );
        assert!(!run.stderr.contains("error"), "search {q:?}: {run:?}");
    }
    assert!(n.ok(&["search", "foo-bar"]).contains("c++ and foo-bar"));
    assert!(
        n.ok(&["search", "unicode"]).contains("Ünïcödé"),
        "diacritics are folded"
    );
    assert!(n.ok(&["search", "東京"]).contains("東京"));
    let run = n.fails(&["search", " "], 1);
    assert!(run.stderr.contains("empty"), "{run:?}");
}

#[test]
fn export_is_stable_and_pipes_cleanly() {
    let n = Node::new("laptop");
    n.import(&rows("b", "conv-b", 50, 30));
    n.import(&rows("a", "conv-a", 50, 30));
    let first = n.ok(&["export"]);
    assert_eq!(first, n.ok(&["export"]));
    let convs: Vec<String> = first
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["conversation_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut sorted = convs.clone();
    sorted.sort();
    assert_eq!(convs, sorted, "export is ordered by conversation");
    // Reading only the head of the output is not an error.
    let mut child = n
        .command(&["export"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "export into a closed pipe: {status:?}");
    // `-o FILE` writes the same bytes.
    let file = n.dir.path().join("out.jsonl");
    n.ok(&["export", "-o", file.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(file).unwrap(), first);
}

#[test]
fn help_lists_the_commands() {
    let out = std::process::Command::new(bin())
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    expect_test::expect![[r#"
        Keeps an AI assistant's memory converged across every machine it runs on.

        Each node keeps a full local copy of memory in SQLite and syncs it, and the folders it
        shares, with its peers over pinned HTTPS, or through a git repository or a carried folder.
        The node lives in SELVES_HOME (default ~/.selves).

        Usage: selves [OPTIONS] <COMMAND>

        Commands:
          init          Create this node: id, name, TLS certificate, config and store
          serve         Serve this node to its peers over HTTPS (foreground)
          daemon        Keep this node in sync by itself: serve, watch, sync on every change (foreground)
          invite        Mint a token for a peer and print a one-line pair (or join) blob for it
          join          Join a hub from a join blob: tunnel, first sync, self-test, all in one
          pair          Register a hub from a pair blob (and check it answers)
          peer          Manage peers: the ones this node dials and the ones it let in
          remote        Sync through a git repository or a carried folder, end-to-end encrypted
          rotate-token  Replace a peer's token (the old one stops working) and print a new pair blob
          capture       Fill memory from agent sessions and notes: sources, and messages held as secret
          mcp           Serve memory to an agent over MCP (stdio); `mcp install` adds it to a client
          remember      Write one message into memory
          import        Import rows (JSON lines, the memex Row shape) into memory
          forget        Remove messages from memory here and on every node (a tombstone travels)
          export        Print every row as JSON lines, in a stable order
          search        Full-text search over memory
          sync          Sync with a peer (or all peers), both directions: memory and shares
          share         Folders this node syncs with its peers
          conflicts     Conflict copies and files held back, with their paths
          verify        Check that this node and a peer hold the same memory
          status        This node, its memory, heads and peers
          identity      What each node says of itself (role, location, interface); `set` for this one
          check         Check the database and the record logs for damage
          tunnel        SSH tunnels the daemon keeps up
          service       Run the daemon as a service: systemd, launchd, termux-services
          demo          Run a local demo: three nodes syncing real data on loopback
          help          Print this message or the help of the given subcommand(s)

        Options:
              --home <DIR>
                  The node's home directory [default: $SELVES_HOME or ~/.selves]

          -v, --verbose...
                  More log output on stderr (repeat for more)

          -h, --help
                  Print help (see a summary with '-h')

          -V, --version
                  Print version

        Exit codes: 0 ok, 1 failed, 2 usage, 3 diverged (verify), 4 token refused, 5 peer unreachable, 6
        certificate refused, 7 protocol version mismatch. `status --brief`: 0 healthy, 1 degraded, 2 a peer
        down.
    "#]]
    .assert_eq(&text);
}

#[test]
fn the_demo_runs_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args(["demo", "--rows", "300", "--dir"])
        .arg(dir.path().join("demo"))
        .env("HOME", dir.path())
        .env_remove("SELVES_HOME")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all three nodes converged"), "{stdout}");
    // The kept nodes are real homes.
    let laptop = dir.path().join("demo/laptop");
    let status = std::process::Command::new(bin())
        .args(["status", "--json", "--home"])
        .arg(&laptop)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["memory"]["rows"], 304);
    // The knowledge folders hold the merge and one conflict copy, alike.
    let vps = dir.path().join("demo/vps-knowledge");
    let merged = std::fs::read_to_string(vps.join("infra.md")).unwrap();
    assert!(merged.contains("staging db: port 6543"), "{merged}");
    assert!(merged.contains("read replica on 5434"), "{merged}");
    let mut names: Vec<String> = std::fs::read_dir(&vps)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "SELVES.md")
        .collect();
    // Each node renders the identity page into its folder, from the cards.
    let page = std::fs::read_to_string(vps.join("SELVES.md")).unwrap();
    for node in ["## vps (this node)", "## laptop", "## phone"] {
        assert!(page.contains(node), "{page}");
    }
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with("infra.conflict-"), "{names:?}");
    let copy = std::fs::read_to_string(vps.join(&names[0])).unwrap();
    let both = format!("{merged}{copy}");
    assert!(both.contains("backups: hourly"), "{both}");
    assert!(both.contains("backups: nightly, kept 30 days"), "{both}");
}

/// `selves search … | head -1`: the reader goes away after one line, and
/// the command ends quietly instead of panicking on the broken pipe.
#[test]
fn a_closed_pipe_ends_a_report_quietly() {
    let n = Node::new("laptop");
    n.import(&rows("p", "c", 3000, 200));
    // Both print far more than a pipe holds (64 KiB), so the writes meet
    // the closed pipe.
    for args in [&["search", "lorem", "--limit", "3000"][..], &["export"]] {
        let mut child = n
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut first = [0u8; 1];
        // Read one byte (or nothing, for a short report), then close.
        let _ = std::io::Read::read(&mut out, &mut first);
        drop(out);
        let done = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            done.status.success(),
            "{args:?}: {:?} {stderr}",
            done.status
        );
    }
}

/// Text from a row is shown, never obeyed: escape sequences in it (which
/// could recolour the terminal or, through OSC 52, write the clipboard)
/// print as escapes; `--json` keeps the text exactly.
#[test]
fn control_characters_in_memory_are_escaped_on_a_terminal_and_kept_in_json() {
    let n = Node::new("laptop");
    let hostile = "clip \u{1b}]52;c;ZXZpbA==\u{7} red \u{1b}[31m done";
    n.import(&[
        json!({"source": "s", "conversation_id": "c\u{1b}[2J", "msg_id": "1",
        "role": "user", "text": hostile, "ts": 1}),
    ]);
    let out = n.ok(&["search", "clip"]);
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(out.contains("\\u{1b}]52"), "{out:?}");
    let json = n.json(&["search", "clip", "--json"]);
    assert!(json[0]["text"].as_str().unwrap().contains("\u{1b}]52;c;"));
}

#[test]
fn an_empty_memory_is_refused_and_counts_read_naturally() {
    let hub = Node::new("hub");
    let server = hub.serve(&[]);
    let n = Node::new("laptop");
    n.pair(&hub, &server, "hub");
    for empty in ["", "   "] {
        let r = n.run(&["remember", empty]);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stderr.contains("nothing to remember"), "{r:?}");
    }
    assert_eq!(n.rows(), 0);
    hub.ok(&["remember", "one"]);
    let out = n.ok(&["sync"]);
    assert!(out.contains("pulled 1 record,"), "{out}");
    assert!(out.contains("(1 row changed here)"), "{out}");
}

/// Logs carry no colour codes when stderr is not a terminal.
#[test]
fn logs_into_a_pipe_have_no_colours() {
    let n = Node::new("laptop");
    let r = n
        .command(&["-vv", "status"])
        .env("SELVES_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    // And something was logged at all, so the check means something.
    let r = n
        .command(&["sync", "nowhere"])
        .env("SELVES_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!stderr.is_empty());
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

#[test]
fn identity_takes_json_as_every_read_command_does() {
    let n = Node::init("laptop", &["--role", "the laptop"]);
    let a = n.json(&["identity", "--json"]);
    assert_eq!(a, n.json(&["identity", "show", "--json"]));
    assert_eq!(a[0]["role"], "the laptop");
}

/// The id `remember` prints is the one `--msg-id` takes: passing it back
/// edits that row instead of making a second one.
#[test]
fn the_id_remember_prints_edits_the_row() {
    let n = Node::new("laptop");
    let out = n.ok(&[
        "remember",
        "--source",
        "notes",
        "--conversation",
        "infra",
        "first text",
    ]);
    let id = out.trim().strip_prefix("remembered ").unwrap().to_owned();
    assert!(id.starts_with("notes/infra/"), "{id}");
    let out = n.ok(&["remember", "--msg-id", &id, "second text"]);
    assert_eq!(out.trim(), format!("edited {id}"));
    let rows = n.export();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["text"], "second text");
    assert_eq!(rows[0]["conversation_id"], "infra");
}

/// A line far longer than any row is refused without ever being held in
/// memory whole, and the lines around it are imported.
#[test]
// The child is reaped by wait4 (which also gives its peak memory).
#[allow(clippy::zombie_processes)]
fn an_oversized_import_line_is_refused_while_streaming() {
    let n = Node::new("laptop");
    let path = n.dir.path().join("huge.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let row = |id: &str| {
            json!({"source": "s", "conversation_id": "c", "msg_id": id, "role": "user",
                "text": format!("row {id}"), "ts": 1})
            .to_string()
        };
        writeln!(f, "{}", row("1")).unwrap();
        f.write_all(br#"{"source": "s", "conversation_id": "c", "msg_id": "big", "role": "user", "ts": 1, "text": ""#)
            .unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..150 {
            f.write_all(&chunk).unwrap();
        }
        writeln!(f, "\"}}").unwrap();
        writeln!(f, "{}", row("3")).unwrap();
    }
    let child = n
        .command(&["import", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child spawned above, whose pid we own.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    let peak_mb = usage.ru_maxrss / 1024;
    assert!(peak_mb < 100, "import held the line: peak RSS {peak_mb} MB");
    assert_eq!(libc::WEXITSTATUS(status), 1, "one line refused");
    let texts: Vec<_> = n.export().iter().map(|r| r["text"].clone()).collect();
    assert_eq!(texts, [json!("row 1"), json!("row 3")]);
}
