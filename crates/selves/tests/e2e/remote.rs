//! Remotes: nodes with no network path between them converge through a
//! carried folder or a git repository, end-to-end encrypted.

use std::path::{Path, PathBuf};

use crate::harness::{Node, star};

/// Every file under `dir`, with its content.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn texts(node: &Node) -> Vec<String> {
    let mut t: Vec<String> = node
        .export()
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_owned())
        .collect();
    t.sort();
    t
}

/// An empty bare git repository `memory.git` in `dir`.
fn bare_repository(dir: &Path) -> PathBuf {
    let bare = dir.join("memory.git");
    let ok = std::process::Command::new("git")
        .args(["init", "--quiet", "--bare"])
        .arg(&bare)
        .status()
        .unwrap();
    assert!(ok.success(), "git init --bare failed");
    bare
}

fn invite(node: &Node, name: &str) -> String {
    node.ok(&["remote", "invite", name]).trim().to_owned()
}

/// The Railway case: a phone and a container that can never reach each
/// other share a folder something else carries. Memory goes both ways,
/// node names come with the cards, a third node bootstraps from the folder
/// alone, and nothing in the folder is readable.
#[test]
fn nodes_with_no_path_between_them_converge_through_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let medium = dir.path().join("Sync/selves");
    std::fs::create_dir_all(&medium).unwrap();
    let url = format!("folder:{}", medium.display());
    let phone = Node::new("phone");
    phone.ok(&[
        "remember",
        "PLAINTEXT-MARKER the cabin key is under the stone",
    ]);
    let out = phone.ok(&["remote", "add", "sync", &url]);
    assert!(out.contains("end-to-end encrypted"), "{out}");
    phone.ok(&["sync", "sync"]);
    let line = invite(&phone, "sync");
    assert!(line.starts_with("selves-remote:"), "{line}");

    let container = Node::new("container");
    let out = container.ok(&["remote", "join", &line]);
    assert!(out.contains("joined remote sync"), "{out}");
    let found = container.ok(&["search", "cabin"]);
    assert!(found.contains("[phone]"), "{found}");
    container.ok(&["remember", "PLAINTEXT-MARKER written in the container"]);
    // Not synced yet: verify says so on both sides.
    let r = container.fails(&["verify", "sync"], 3);
    assert!(
        r.stdout.contains("1 records here, 0 there") || r.stdout.contains("records here"),
        "{r:?}"
    );
    container.ok(&["sync", "sync"]);
    let r = phone.fails(&["verify", "sync"], 3);
    assert!(r.stdout.contains("not applied here"), "{r:?}");
    phone.ok(&["sync", "sync"]);
    // Each node's card notes its first sync: one more round each settles.
    container.ok(&["sync", "sync"]);
    phone.ok(&["sync", "sync"]);
    phone.ok(&["verify", "sync"]);
    container.ok(&["verify", "sync"]);
    assert_eq!(texts(&phone), texts(&container));
    assert_eq!(texts(&phone).len(), 2);
    // Joining again at every boot changes nothing.
    let again = container.ok(&["remote", "join", &line]);
    assert!(again.contains("already joined"), "{again}");
    assert!(again.contains("already in sync"), "{again}");
    // A third node, from the folder alone.
    let third = Node::new("laptop");
    third.ok(&["remote", "join", &line]);
    assert_eq!(texts(&third), texts(&phone));
    third.ok(&["check"]);
    // Nothing readable in the medium: no text, no node name.
    for (path, bytes) in files(&medium) {
        let text = String::from_utf8_lossy(&bytes);
        for secret in ["PLAINTEXT-MARKER", "cabin", "container", "phone"] {
            assert!(!text.contains(secret), "{secret} in {}", path.display());
        }
    }
    let listed = phone.json(&["remote", "list", "--json"]);
    assert_eq!(listed[0]["kind"], "folder", "{listed}");
    assert_eq!(phone.run(&["status", "--brief"]).code, 0);
    // The folder goes away (unmounted, not synced here): said, not fatal.
    let away = dir.path().join("away");
    std::fs::rename(&medium, &away).unwrap();
    let run = phone.fails(&["sync", "sync"], 5);
    assert!(run.stderr.contains("the folder is missing"), "{run:?}");
    assert!(
        phone
            .run(&["status", "--brief"])
            .stdout
            .contains("folder is missing")
    );
    std::fs::rename(&away, &medium).unwrap();
    phone.ok(&["sync", "sync"]);
    assert_eq!(phone.run(&["status", "--brief"]).code, 0);
}

/// What reaches a remote from any node relays on: A ↔ folder ↔ B ↔ HTTPS
/// ↔ C, and C's memory reaches A, A's reaches C, origins untouched.
#[test]
fn a_remote_relays_to_and_from_peers() {
    let (hub, _server, spokes) = star("hub", &["b"]);
    let b = &spokes[0];
    let dir = tempfile::tempdir().unwrap();
    let url = format!("folder:{}", dir.path().display());
    b.ok(&["remote", "add", "box", &url]);
    let a = Node::new("a");
    b.ok(&["sync", "box"]);
    a.ok(&["remote", "join", &invite(b, "box")]);
    hub.ok(&["remember", "from the hub"]);
    a.ok(&["remember", "from a"]);
    a.ok(&["sync", "box"]);
    b.ok(&["sync", "--all"]);
    b.ok(&["sync", "--all"]);
    a.ok(&["sync", "box"]);
    assert_eq!(texts(&a), ["from a", "from the hub"]);
    assert_eq!(texts(&hub), ["from a", "from the hub"]);
    let rows = hub.export();
    let from_a = rows.iter().find(|r| r["text"] == "from a").unwrap();
    assert_eq!(from_a["origin"], "a");
}

/// A carrier copies files in any order, and partly: a segment shorter
/// than its header says is waited for, a later one waits for the earlier,
/// and nothing is reported as damage. Once all is there, all is applied.
#[test]
fn segments_copied_partly_and_out_of_order_are_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let (here, there) = (dir.path().join("here"), dir.path().join("there"));
    std::fs::create_dir_all(&here).unwrap();
    let writer = Node::new("writer");
    writer.ok(&[
        "remote",
        "add",
        "sync",
        &format!("folder:{}", here.display()),
    ]);
    for i in 0..3 {
        writer.ok(&["remember", &format!("note {i}")]);
        writer.ok(&["sync", "sync"]);
    }
    let line = invite(&writer, "sync");
    // The carrier has brought the manifest and segment 3 first, and half
    // of segment 1.
    let segs: Vec<(PathBuf, Vec<u8>)> = files(&here)
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert!(segs.len() >= 3, "{segs:?}");
    let rel = |p: &Path| p.strip_prefix(&here).unwrap().to_owned();
    let put = |p: &Path, bytes: &[u8]| {
        let to = there.join(rel(p));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, bytes).unwrap();
    };
    put(
        &here.join("selves-remote.json"),
        &std::fs::read(here.join("selves-remote.json")).unwrap(),
    );
    let named = |n: &str| segs.iter().find(|(p, _)| p.ends_with(n)).unwrap();
    let (p3, b3) = named("3.seg");
    put(p3, b3);
    let (p1, b1) = named("1.seg");
    put(p1, &b1[..b1.len() / 2]);
    // A carrier's temporary file beside it.
    put(&p1.with_file_name(".syncthing.2.seg.tmp"), b"partial");

    let reader = Node::new("reader");
    let out = reader.ok(&[
        "remote",
        "join",
        &line,
        "--url",
        &format!("folder:{}", there.display()),
    ]);
    assert!(!out.contains("refused"), "{out}");
    assert!(texts(&reader).is_empty(), "{:?}", texts(&reader));
    assert_eq!(reader.run(&["status", "--brief"]).code, 0);
    // Segment 1 completes: its note arrives; 3 still waits for 2.
    put(p1, b1);
    reader.ok(&["sync", "sync"]);
    assert_eq!(texts(&reader), ["note 0"]);
    let (p2, b2) = named("2.seg");
    put(p2, b2);
    reader.ok(&["sync", "sync"]);
    assert_eq!(texts(&reader), ["note 0", "note 1", "note 2"]);
    reader.ok(&["check"]);
}

/// A segment that fails authentication is refused, said, and nothing of
/// its writer after it is applied; a line with another key is refused
/// before anything is read.
#[test]
fn tampered_segments_and_wrong_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("folder:{}", dir.path().display());
    let writer = Node::new("writer");
    writer.ok(&["remote", "add", "sync", &url]);
    writer.ok(&["remember", "first"]);
    writer.ok(&["sync", "sync"]);
    writer.ok(&["remember", "second"]);
    writer.ok(&["sync", "sync"]);
    let line = invite(&writer, "sync");
    let seg = files(dir.path())
        .into_iter()
        .find(|(p, _)| p.ends_with("1.seg"))
        .unwrap();
    let mut bytes = seg.1.clone();
    let at = bytes.len() - 40;
    bytes[at] ^= 0x20;
    std::fs::write(&seg.0, &bytes).unwrap();

    let reader = Node::new("reader");
    let run = reader.run(&["remote", "join", &line]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("fails authentication"), "{run:?}");
    assert!(
        texts(&reader).is_empty(),
        "nothing of a refused segment, nor after it"
    );
    let brief = reader.run(&["status", "--brief"]);
    assert_ne!(brief.code, 0, "{brief:?}");
    assert!(brief.stdout.contains("1.seg refused"), "{brief:?}");
    // Put back as written, it is applied.
    std::fs::write(&seg.0, &seg.1).unwrap();
    reader.ok(&["sync", "sync"]);
    assert_eq!(texts(&reader), ["first", "second"]);

    // Another key: told so, nothing saved.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut v: serde_json::Value = serde_json::from_slice(
        &b64.decode(line.strip_prefix("selves-remote:").unwrap())
            .unwrap(),
    )
    .unwrap();
    v["key"] = serde_json::json!("11".repeat(32));
    let forged = format!(
        "selves-remote:{}",
        b64.encode(serde_json::to_vec(&v).unwrap())
    );
    let other = Node::new("other");
    let run = other.fails(&["remote", "join", &forged], 4);
    assert!(run.stderr.contains("made with another key"), "{run:?}");
    assert_eq!(
        other.json(&["remote", "list", "--json"]),
        serde_json::json!([])
    );
}

/// A git repository (a bare one on disk, `file://`): two nodes write at
/// once; the push that loses the race is replayed on top and pushed again
/// by itself, and both converge.
#[test]
fn two_nodes_converge_through_a_git_repository_pushing_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let bare = bare_repository(dir.path());
    let url = format!("file://{}", bare.display());
    let a = Node::new("a");
    a.ok(&["remote", "add", "mem", &url]);
    a.ok(&["remember", "a's first"]);
    a.ok(&["sync", "mem"]);
    let b = Node::new("b");
    b.ok(&["remote", "join", &invite(&a, "mem")]);
    assert_eq!(texts(&b), ["a's first"]);
    for i in 0..3 {
        a.ok(&["remember", &format!("a {i}")]);
        b.ok(&["remember", &format!("b {i}")]);
        // Both push at once: one is rejected and replays.
        let (ra, rb) = std::thread::scope(|s| {
            let ja = s.spawn(|| a.run(&["sync", "mem"]));
            let jb = s.spawn(|| b.run(&["sync", "mem"]));
            (ja.join().unwrap(), jb.join().unwrap())
        });
        assert_eq!(ra.code, 0, "{ra:?}");
        assert_eq!(rb.code, 0, "{rb:?}");
    }
    a.ok(&["sync", "mem"]);
    b.ok(&["sync", "mem"]);
    assert_eq!(texts(&a), texts(&b));
    assert_eq!(texts(&a).len(), 7);
    // The repository holds ciphertext only.
    let log = std::process::Command::new("git")
        .arg("-C")
        .arg(&bare)
        .args(["log", "--all", "-p", "--format=%s"])
        .output()
        .unwrap();
    assert!(log.status.success());
    let text = String::from_utf8_lossy(&log.stdout);
    assert!(!text.contains("first"), "plaintext in the repository");
    // A URL git cannot reach is said as such.
    let c = Node::new("c");
    let run = c.run(&["remote", "add", "gone", "file:///nonexistent/repo.git"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("nonexistent"), "{run:?}");
}

/// A push killed at any moment (SIGKILL) loses nothing and reuses no
/// segment number: run again, it finishes, and a reader gets every row once.
#[test]
fn a_push_killed_midway_resumes_and_a_reader_gets_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("folder:{}", dir.path().display());
    let writer = Node::new("writer");
    writer.import(&crate::harness::rows("bulk", "c1", 20_000, 400));
    writer.ok(&["remote", "add", "sync", &url]);
    for delay in [30, 120, 300] {
        let mut child = writer.command(&["sync", "sync"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        child.kill().unwrap();
        child.wait().unwrap();
        writer.ok(&["check"]);
    }
    writer.ok(&["sync", "sync"]);
    writer.ok(&["verify", "sync"]);
    // Numbers are contiguous from 1: none skipped, none written twice.
    let mut numbers: Vec<u64> = files(dir.path())
        .iter()
        .filter_map(|(p, _)| p.file_name()?.to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    numbers.sort();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
    let reader = Node::new("reader");
    reader.ok(&["remote", "join", &invite(&writer, "sync")]);
    assert_eq!(reader.rows(), 20_000);
    let mut ids: Vec<String> = reader
        .export()
        .iter()
        .map(|r| r["msg_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20_000);
    reader.ok(&["verify", "sync"]);
}

/// A git repository reached over the real `ssh` and `sshd`: a node with
/// the key converges through it; a node whose key sshd refuses is told it
/// was refused (exit 4), not that the remote is missing.
#[test]
fn a_git_remote_over_ssh_and_a_refused_key() {
    let Some(sshd) = crate::tunnels::sshd() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bare = bare_repository(dir.path());
    let (user, port) = sshd
        .target()
        .rsplit_once(':')
        .map(|(u, p)| (u.to_owned(), p.to_owned()))
        .unwrap();
    let url = format!("ssh://{user}:{port}{}", bare.display());
    // An ssh config of the test's own: the key, and trust on first use.
    let config = dir.path().join("ssh_config");
    let config_for = |key: &Path| {
        std::fs::write(
            &config,
            format!(
                "Host 127.0.0.1\n  IdentityFile {}\n  IdentitiesOnly yes\n  StrictHostKeyChecking accept-new\n  UserKnownHostsFile {}\n",
                key.display(),
                dir.path().join("known_hosts").display()
            ),
        )
        .unwrap();
    };
    config_for(&sshd.key());
    let run = |node: &Node, args: &[&str]| {
        crate::harness::Run::from(
            node.command(args)
                .env("SELVES_SSH_CONFIG", &config)
                .output()
                .unwrap(),
        )
    };
    let a = Node::new("a");
    a.ok(&["remember", "over ssh"]);
    let r = run(&a, &["remote", "add", "mem", &url]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = run(&a, &["sync", "mem"]);
    assert_eq!(r.code, 0, "{r:?}");
    let line = run(&a, &["remote", "invite", "mem"])
        .stdout
        .trim()
        .to_owned();
    let b = Node::new("b");
    let r = run(&b, &["remote", "join", &line]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(texts(&b), ["over ssh"]);

    // A key sshd does not know.
    let stranger_key = dir.path().join("stranger_key");
    assert!(
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&stranger_key)
            .status()
            .unwrap()
            .success()
    );
    config_for(&stranger_key);
    let c = Node::new("c");
    let r = run(&c, &["remote", "join", &line]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("Permission denied"), "{r:?}");
}

/// Shares through a folder remote: a knowledge folder both ways, with a
/// conflict kept on both sides; session logs one way, appends included;
/// a share added after the first round still gets everything; and no
/// file name or content is readable in the medium.
#[test]
fn shares_travel_through_a_remote_conflicts_included() {
    let dir = tempfile::tempdir().unwrap();
    let medium = dir.path().join("medium");
    std::fs::create_dir_all(&medium).unwrap();
    let folder = |node: &Node, name: &str| {
        let d = node.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let phone = Node::new("phone");
    let container = Node::new("container");
    let (pk, ck) = (folder(&phone, "knowledge"), folder(&container, "knowledge"));
    phone.ok(&["share", "add", "knowledge", pk.to_str().unwrap()]);
    container.ok(&["share", "add", "knowledge", ck.to_str().unwrap()]);
    std::fs::write(pk.join("plan.md"), "# Plan\nline one\nline two\n").unwrap();
    std::fs::create_dir_all(pk.join("deep/er")).unwrap();
    std::fs::write(pk.join("deep/er/SECRET-NAME.md"), "SECRET-CONTENT\n").unwrap();
    phone.ok(&[
        "remote",
        "add",
        "sync",
        &format!("folder:{}", medium.display()),
    ]);
    phone.ok(&["sync", "sync"]);
    container.ok(&["remote", "join", &invite(&phone, "sync")]);
    assert_eq!(
        std::fs::read_to_string(ck.join("plan.md")).unwrap(),
        "# Plan\nline one\nline two\n"
    );
    assert!(ck.join("deep/er/SECRET-NAME.md").exists());

    // Both edit the same line: both keep both versions.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(pk.join("plan.md"), "# Plan\nline one, phone\nline two\n").unwrap();
    std::fs::write(
        ck.join("plan.md"),
        "# Plan\nline one, container\nline two\n",
    )
    .unwrap();
    std::fs::write(ck.join("new.md"), "from the container\n").unwrap();
    for _ in 0..2 {
        phone.ok(&["sync", "sync"]);
        container.ok(&["sync", "sync"]);
    }
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = files(d)
            .into_iter()
            .map(|(p, _)| p.strip_prefix(d).unwrap().display().to_string())
            .filter(|p| p != "SELVES.md")
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&pk), names(&ck));
    assert!(
        names(&pk).iter().any(|n| n.contains(".conflict-")),
        "{:?}",
        names(&pk)
    );
    assert_eq!(
        std::fs::read_to_string(pk.join("new.md")).unwrap(),
        "from the container\n"
    );

    // Session logs, one way, added after the first rounds.
    let (ps, cs) = (folder(&phone, "sessions"), folder(&container, "sessions"));
    std::fs::write(ps.join("s1.jsonl"), "{\"turn\":1}\n".repeat(1000)).unwrap();
    phone.ok(&[
        "share",
        "add",
        "sessions",
        ps.to_str().unwrap(),
        "--mode",
        "send-only",
    ]);
    phone.ok(&["sync", "sync"]);
    container.ok(&[
        "share",
        "add",
        "sessions",
        cs.to_str().unwrap(),
        "--mode",
        "receive-only",
        "--layout",
        "per-origin",
    ]);
    container.ok(&["sync", "sync"]);
    let log = cs.join("phone/s1.jsonl");
    assert_eq!(std::fs::read(&log).unwrap().len(), 11 * 1000);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(ps.join("s1.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"turn\":2}\n").unwrap();
    drop(f);
    phone.ok(&["sync", "sync"]);
    container.ok(&["sync", "sync"]);
    assert_eq!(
        std::fs::read(&log).unwrap(),
        std::fs::read(ps.join("s1.jsonl")).unwrap()
    );
    phone.ok(&["verify", "sync"]);

    for (path, bytes) in files(&medium) {
        let text = String::from_utf8_lossy(&bytes);
        let shown = path.display().to_string();
        for secret in ["SECRET-NAME", "SECRET-CONTENT", "plan", "line one", "turn"] {
            assert!(!text.contains(secret), "{secret} in {shown}");
            assert!(!shown.contains(secret), "{secret} in the name {shown}");
        }
    }
}

/// A session log that only grows sends only its new bytes through a
/// remote: the remote grows by the appended lines, not by the whole file
/// each time. A node that held the start gets the tails; a node that holds
/// nothing gets the whole file, assembled from the chain.
#[test]
fn a_grown_log_sends_only_its_new_bytes_through_a_remote() {
    let dir = tempfile::tempdir().unwrap();
    let medium = dir.path().join("medium");
    std::fs::create_dir_all(&medium).unwrap();
    let contents = || -> u64 {
        files(&medium)
            .iter()
            .filter(|(p, _)| p.parent().is_some_and(|d| d.ends_with("b")))
            .map(|(_, b)| b.len() as u64)
            .sum()
    };
    let sessions = |node: &Node, mode: &[&str]| {
        let d = node.dir.path().join("sessions");
        std::fs::create_dir_all(&d).unwrap();
        let mut args = vec!["share", "add", "sessions", d.to_str().unwrap(), "--mode"];
        args.extend_from_slice(mode);
        node.ok(&args);
        d
    };
    let phone = Node::new("phone");
    let ps = sessions(&phone, &["send-only"]);
    // A megabyte that does not compress away: hex of a simple generator.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut log = String::new();
    while log.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        log.push_str(&format!(
            "{{\"turn\":\"{x:016x}{:016x}\"}}\n",
            x.rotate_left(29)
        ));
    }
    std::fs::write(ps.join("s1.jsonl"), &log).unwrap();
    phone.ok(&[
        "remote",
        "add",
        "sync",
        &format!("folder:{}", medium.display()),
    ]);
    phone.ok(&["sync", "sync"]);
    let whole = contents();
    assert!(whole > 400_000, "{whole}");

    let container = Node::new("container");
    let cs = sessions(&container, &["receive-only"]);
    container.ok(&["remote", "join", &invite(&phone, "sync")]);
    assert_eq!(std::fs::read(cs.join("s1.jsonl")).unwrap(), log.as_bytes());

    for turn in 0..3 {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(ps.join("s1.jsonl"))
            .unwrap();
        let line = format!(
            "{{\"turn\":\"appended {turn}, a line of about a hundred bytes as agents write them\"}}\n"
        );
        std::io::Write::write_all(&mut f, line.as_bytes()).unwrap();
        log.push_str(&line);
        drop(f);
        phone.ok(&["sync", "sync"]);
        container.ok(&["sync", "sync"]);
        assert_eq!(std::fs::read(cs.join("s1.jsonl")).unwrap(), log.as_bytes());
    }
    let grown = contents() - whole;
    eprintln!(
        "the remote grew by {grown} bytes for 3 appended lines ({whole} for the first megabyte)"
    );
    assert!(
        grown < 3 * 1024,
        "the remote grew by {grown} bytes for 3 lines"
    );
    let tails = files(&medium)
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "tail"))
        .count();
    assert_eq!(tails, 3);

    // A node that holds nothing gets the whole log, assembled.
    let laptop = Node::new("laptop");
    let ls = sessions(&laptop, &["receive-only"]);
    laptop.ok(&["remote", "join", &invite(&phone, "sync")]);
    assert_eq!(std::fs::read(ls.join("s1.jsonl")).unwrap(), log.as_bytes());
    laptop.assert_intact();
    // The laptop's card went into the remote as it joined.
    phone.ok(&["sync", "sync"]);
    phone.ok(&["verify", "sync"]);
}

/// The daemon treats a remote as a peer: a row remembered on one node
/// reaches another through a folder, with no `selves sync` typed anywhere
/// (the writer pushes after the change; the reader sees the new file).
#[test]
fn daemons_sync_through_a_folder_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("folder:{}", dir.path().display());
    let a = Node::new("a");
    a.ok(&["remote", "add", "sync", &url]);
    let b = Node::new("b");
    b.ok(&["remote", "join", &invite(&a, "sync")]);
    let _da = a.daemon(&[]);
    let _db = b.daemon(&[]);
    a.ok(&["remember", "the daemon carried this"]);
    assert!(
        crate::harness::wait_until(30, || texts(&b)
            .contains(&"the daemon carried this".to_owned())),
        "{}\n{}",
        a.daemon_log(),
        b.daemon_log()
    );
    let status = b.json(&["status", "--json"]);
    assert_eq!(status["peers"][0]["health"]["state"], "ok", "{status}");
}

/// A home restored from a backup, syncing only through a remote: it takes
/// back what it wrote after the backup, writes again what it wrote since
/// the restore, and every node ends with all of it.
#[test]
fn a_restored_home_recovers_through_a_remote() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("folder:{}", dir.path().display());
    let a = Node::new("a");
    a.ok(&["remote", "add", "sync", &url]);
    a.ok(&["remember", "before the backup"]);
    a.ok(&["sync", "sync"]);
    let backup = a.dir.path().join("backup");
    let copy = |from: &Path, to: &Path| {
        let _ = std::fs::remove_dir_all(to);
        assert!(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(from)
                .arg(to)
                .status()
                .unwrap()
                .success()
        );
    };
    copy(&a.home(), &backup);
    a.ok(&["remember", "after the backup"]);
    a.ok(&["sync", "sync"]);
    copy(&backup, &a.home());
    a.ok(&["remember", "after the restore"]);
    a.ok(&["sync", "sync"]);
    a.ok(&["sync", "sync"]);
    let all = ["after the backup", "after the restore", "before the backup"];
    assert_eq!(texts(&a), all);
    a.ok(&["check"]);
    a.ok(&["verify", "sync"]);
    let b = Node::new("b");
    b.ok(&["remote", "join", &invite(&a, "sync")]);
    assert_eq!(texts(&b), all);
}

/// A git remote's own schedule: with `--every 1s` the daemon fetches what
/// another node pushed within seconds (its interval is a minute).
#[test]
fn a_git_remote_is_fetched_on_its_own_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let bare = bare_repository(dir.path());
    let url = format!("file://{}", bare.display());
    let a = Node::new("a");
    a.ok(&["remote", "add", "mem", &url]);
    a.ok(&["sync", "mem"]);
    let b = Node::new("b");
    b.ok(&["remote", "join", &invite(&a, "mem"), "--every", "1s"]);
    assert_eq!(b.json(&["remote", "list", "--json"])[0]["every_ms"], 1000);
    let _daemon = b.daemon(&["--interval", "60s"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    a.ok(&["remember", "fetched on schedule"]);
    a.ok(&["sync", "mem"]);
    assert!(
        crate::harness::wait_until(20, || texts(&b).contains(&"fetched on schedule".to_owned())),
        "{}",
        b.daemon_log()
    );
}

/// `--no-encryption`, asked for by name: said loudly, the key kept in the
/// remote itself, and another node joins by the URL alone. An encrypted
/// remote cannot be joined that way.
#[test]
fn a_remote_without_encryption_is_asked_for_and_joined_by_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("folder:{}", dir.path().display());
    let a = Node::new("a");
    let run = a.run(&["remote", "add", "open", &url, "--no-encryption"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("WARNING: --no-encryption"), "{run:?}");
    a.ok(&["remember", "not secret"]);
    a.ok(&["sync", "open"]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("selves-remote.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["key"].as_str().map(str::len),
        Some(64),
        "{manifest}"
    );
    let b = Node::new("b");
    b.ok(&["remote", "join", &url, "--name", "open"]);
    assert_eq!(texts(&b), ["not secret"]);
    // An encrypted one keeps its key out of the remote: no join by URL.
    let sealed = tempfile::tempdir().unwrap();
    let sealed_url = format!("folder:{}", sealed.path().display());
    a.ok(&["remote", "add", "sealed", &sealed_url]);
    let manifest = std::fs::read_to_string(sealed.path().join("selves-remote.json")).unwrap();
    assert!(!manifest.contains("\"key\""), "{manifest}");
    let run = b.fails(&["remote", "join", &sealed_url, "--name", "sealed"], 1);
    assert!(run.stderr.contains("is encrypted"), "{run:?}");
}
