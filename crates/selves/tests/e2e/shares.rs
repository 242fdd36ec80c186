//! Shares through the real binary: folders on disk in temporary homes,
//! synced over pinned HTTPS on loopback (docs/shares.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::harness::{
    Node, Server, blob_fingerprint, blob_token, request, star, star_with, wait_until,
};

/// A share folder of `node`, outside its home.
fn folder(node: &Node, name: &str) -> PathBuf {
    node.dir.path().join(name)
}

fn put(dir: &Path, rel: &str, content: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    // Let mtimes differ even within one clock tick.
    std::thread::sleep(std::time::Duration::from_millis(3));
    std::fs::write(p, content).unwrap();
}

/// Every file under `dir` (relative path → content), symlinks not followed.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let Ok(e) = e else { continue };
            let Ok(ty) = e.file_type() else { continue };
            let p = e.path();
            if ty.is_dir() {
                walk(root, &p, out);
            } else if ty.is_file() {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                // A temporary file may be renamed away meanwhile.
                if let Ok(content) = std::fs::read(&p) {
                    out.insert(rel, content);
                }
            }
        }
    }
    if dir.exists() {
        walk(dir, dir, &mut out);
        // The identity page is generated on each node, for that node: it is
        // never a file of the share (tests/e2e/identity.rs tests it).
        out.remove("SELVES.md");
    }
    out
}

fn text(dir: &Path, rel: &str) -> String {
    String::from_utf8(std::fs::read(dir.join(rel)).unwrap()).unwrap()
}

/// `share add NAME <its folder named NAME> extra…`; returns the folder.
fn share(node: &Node, name: &str, extra: &[&str]) -> PathBuf {
    let dir = folder(node, name);
    let mut args = vec!["share", "add", name, dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    node.ok(&args);
    dir
}

fn sync(node: &Node) -> Value {
    let out = node.json(&["sync", "--json"]);
    assert_eq!(out[0]["ok"], true, "{out}");
    out[0]["report"].clone()
}

/// The report of share `name` in a sync report.
fn share_report<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["shares"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["share"] == name))
        .unwrap_or_else(|| panic!("no share {name} in {report}"))
}

/// Syncs the spokes with the hub until every change reached everyone.
fn settle(hub: &Node, spokes: &[&Node]) {
    hub.ok(&["share", "scan"]);
    for _ in 0..2 {
        for s in spokes {
            sync(s);
        }
    }
}

#[track_caller]
fn assert_same(dirs: &[&Path]) {
    let first = tree(dirs[0]);
    for d in &dirs[1..] {
        let other = tree(d);
        assert_eq!(
            first.keys().collect::<Vec<_>>(),
            other.keys().collect::<Vec<_>>(),
            "{} and {} hold different files",
            dirs[0].display(),
            d.display()
        );
        assert!(
            first == other,
            "{} and {} differ in content",
            dirs[0].display(),
            d.display()
        );
    }
}

/// A hub and two spokes, each with share "knowledge" holding `base`.
fn three(base: &[(&str, &[u8])]) -> (Node, Server, Vec<Node>, Vec<PathBuf>) {
    let (hub, server, spokes) = star("hub", &["a", "b"]);
    let hd = share(&hub, "knowledge", &[]);
    for (rel, content) in base {
        put(&hd, rel, content);
    }
    hub.ok(&["share", "scan"]);
    let dirs: Vec<PathBuf> = spokes.iter().map(|s| share(s, "knowledge", &[])).collect();
    for s in &spokes {
        sync(s);
    }
    let mut all = vec![hd];
    all.extend(dirs);
    assert_same(&all.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    (hub, server, spokes, all)
}

const PLAN: &str = "# Plan\n\nIntro paragraph.\n\n## Hub\n\nthe hub line\n\n## A\n\nthe alpha line\n\n## B\n\nthe beta line\n";

#[test]
fn three_nodes_editing_different_paragraphs_end_with_one_merged_file() {
    let (hub, _server, spokes, dirs) = three(&[("plan.md", PLAN.as_bytes())]);
    let (a, b) = (&spokes[0], &spokes[1]);
    put(
        &dirs[0],
        "plan.md",
        PLAN.replace("the hub line", "the hub line, edited on the hub")
            .as_bytes(),
    );
    put(
        &dirs[1],
        "plan.md",
        PLAN.replace("the alpha line", "the alpha line, edited on a")
            .as_bytes(),
    );
    put(
        &dirs[2],
        "plan.md",
        PLAN.replace("the beta line", "the beta line, edited on b")
            .as_bytes(),
    );
    settle(&hub, &[a, b]);
    assert_same(&dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    let merged = text(&dirs[0], "plan.md");
    for edit in ["edited on the hub", "edited on a", "edited on b"] {
        assert!(merged.contains(edit), "{edit:?} missing from\n{merged}");
    }
    assert_eq!(
        tree(&dirs[0]).len(),
        1,
        "no conflict copy: {:?}",
        tree(&dirs[0]).keys()
    );
    let c = a.json(&["conflicts", "--json"]);
    assert_eq!(c, json!([]));
}

#[test]
fn three_nodes_editing_one_line_keep_every_text_as_winner_and_conflict_copies() {
    let (hub, _server, spokes, dirs) = three(&[("plan.md", PLAN.as_bytes())]);
    let (a, b) = (&spokes[0], &spokes[1]);
    for (dir, who) in dirs.iter().zip(["HUB", "AAA", "BBB"]) {
        put(
            dir,
            "plan.md",
            PLAN.replace("Intro paragraph.", &format!("Intro by {who}."))
                .as_bytes(),
        );
    }
    settle(&hub, &[a, b]);
    assert_same(&dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    let files = tree(&dirs[1]);
    assert_eq!(
        files.len(),
        3,
        "the file and two conflict copies: {:?}",
        files.keys()
    );
    let copies: Vec<&String> = files.keys().filter(|k| k.contains(".conflict-")).collect();
    assert_eq!(copies.len(), 2);
    for name in &copies {
        // NAME.conflict-<node>-<YYYYMMDD-HHMMSS>-<content>.EXT
        let rest = name
            .strip_prefix("plan.conflict-")
            .unwrap()
            .strip_suffix(".md")
            .unwrap();
        let (node, stamp) = rest.split_once('-').unwrap();
        assert!(["hub", "a", "b"].contains(&node), "{name}");
        assert_eq!(stamp.len(), 15 + 9, "{name}");
        assert!(
            stamp.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
            "{name}"
        );
    }
    let all: String = files
        .values()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    for who in ["HUB", "AAA", "BBB"] {
        assert!(
            all.contains(&format!("Intro by {who}.")),
            "{who}'s text was lost"
        );
    }
    let listed = b.json(&["conflicts", "--json"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(
        listed.iter().filter(|c| c["kind"] == "conflict").count(),
        2,
        "{listed:?}"
    );
    assert!(
        listed
            .iter()
            .all(|c| Path::new(c["path"].as_str().unwrap()).exists())
    );
}

#[test]
fn a_modification_beats_a_concurrent_deletion() {
    let (hub, _server, spokes, dirs) = three(&[("n.md", b"v1\n"), ("other.md", b"o\n")]);
    std::fs::remove_file(dirs[1].join("n.md")).unwrap();
    put(&dirs[2], "n.md", b"v1\nedited on b\n");
    settle(&hub, &[&spokes[0], &spokes[1]]);
    assert_same(&dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    assert_eq!(text(&dirs[1], "n.md"), "v1\nedited on b\n");
    // A plain deletion propagates.
    std::fs::remove_file(dirs[2].join("other.md")).unwrap();
    settle(&hub, &[&spokes[0], &spokes[1]]);
    assert!(!dirs[0].join("other.md").exists() && !dirs[1].join("other.md").exists());
}

#[test]
fn renames_empty_files_binary_files_and_case_twins_travel() {
    let (hub, server, spokes) = star("hub", &["a"]);
    let a = &spokes[0];
    let (hd, ad) = (share(&hub, "knowledge", &[]), share(a, "knowledge", &[]));
    let binary: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    put(&ad, "big.bin", &binary);
    put(&ad, "empty.md", b"");
    put(&ad, "docs/Readme.md", b"title case\n");
    put(&ad, "docs/README.md", b"upper case\n");
    put(&ad, "move-me.md", b"content that moves\n");
    sync(a);
    assert_same(&[&hd, &ad]);
    assert_eq!(std::fs::metadata(hd.join("empty.md")).unwrap().len(), 0);

    // A rename sends no content again.
    std::fs::create_dir_all(ad.join("moved")).unwrap();
    std::fs::rename(ad.join("move-me.md"), ad.join("moved/here.md")).unwrap();
    let r = sync(a);
    assert_eq!(share_report(&r, "knowledge")["blob_bytes_out"], 0, "{r}");
    assert_same(&[&hd, &ad]);
    assert!(!hd.join("move-me.md").exists());

    // Concurrent edits of a binary file: a winner and a conflict copy.
    let mut theirs = binary.clone();
    theirs[10] ^= 0xff;
    let mut mine = binary.clone();
    mine[20] ^= 0xff;
    put(&hd, "big.bin", &theirs);
    hub.ok(&["share", "scan"]);
    put(&ad, "big.bin", &mine);
    sync(a);
    assert_same(&[&hd, &ad]);
    let files = tree(&ad);
    let bins: Vec<&Vec<u8>> = files
        .iter()
        .filter(|(k, _)| k.starts_with("big"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(bins.len(), 2, "{:?}", files.keys());
    assert!(bins.contains(&&theirs) && bins.contains(&&mine));
    drop(server);
}

#[test]
fn unicode_twins_sync_the_nfc_name_and_hold_the_other_back() {
    let (hub, _server, spokes) = star("hub", &["a"]);
    let a = &spokes[0];
    let (hd, ad) = (share(&hub, "knowledge", &[]), share(a, "knowledge", &[]));
    put(&ad, "caf\u{e9}.md", b"nfc\n");
    put(&ad, "cafe\u{301}.md", b"nfd\n");
    put(&ad, "\u{6771}\u{4eac}/\u{1f600}.md", b"emoji\n");
    sync(a);
    let got = tree(&hd);
    assert_eq!(
        got.get("caf\u{e9}.md").map(Vec::as_slice),
        Some(&b"nfc\n"[..])
    );
    assert!(got.contains_key("\u{6771}\u{4eac}/\u{1f600}.md"));
    assert!(!got.contains_key("cafe\u{301}.md"));
    // The NFD twin is kept where it is and reported.
    assert_eq!(std::fs::read(ad.join("cafe\u{301}.md")).unwrap(), b"nfd\n");
    let held = a.json(&["conflicts", "--json"]);
    let held = held.as_array().unwrap();
    assert!(
        held.iter().any(|h| h["kind"] == "name" && h["path"].as_str().unwrap().ends_with("cafe\u{301}.md")),
        "{held:?}"
    );
}

/// Forty-odd names a peer must never be able to write, and records that
/// are not valid file versions at all.
fn hostile_records(escape: &str) -> Vec<Value> {
    let long = "x".repeat(256);
    let deep = format!("{}x", "d/".repeat(2100));
    let names: Vec<String> = [
        "../x",
        "../../x",
        "a/../../x",
        "a/b/../../../x",
        "..",
        ".",
        "./x",
        "a/./b",
        "a/..",
        "../",
        "x/../..",
        "..//x",
        "",
        "/",
        "///",
        "a//b",
        "a/",
        "//x",
        escape,
        "/tmp",
        "/root/.bashrc",
        "\\\\server\\share",
        "..\\x",
        "C:\\x",
        "a\\b",
        "a\u{0}b",
        "\u{0}",
        "x\n",
        "a\rb",
        "tab\tname",
        "\u{1b}[31mred",
        "del\u{7f}",
        "next\u{85}line",
        "csi\u{9b}",
        ".selves-tmp-evil",
        "d/.selves-tmp-x",
        &long,
        &deep,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let vv = json!({"abababababababababababababababab": 1});
    let blob = "0".repeat(64);
    let mut records: Vec<Value> = names
        .iter()
        .map(|n| json!({"file": {"path": n, "vv": vv, "blob": blob, "size": 1, "mtime": 0, "author": "evil"}}))
        .collect();
    // Not file versions at all, or broken ones.
    records.extend([
        json!({"file": {"path": 7, "vv": vv, "size": 0, "mtime": 0, "author": "evil", "deleted": true}}),
        json!({"file": {"path": null, "vv": vv, "size": 0, "mtime": 0, "author": "evil", "deleted": true}}),
        json!({"file": {"vv": vv, "size": 0, "mtime": 0, "author": "evil", "deleted": true}}),
        json!({"file": {"path": "ok-name.md", "vv": {}, "size": 0, "mtime": 0, "author": "evil", "deleted": true}}),
        json!({"file": {"path": "ok-name.md", "vv": {"abababababababababababababababab": 0}, "size": 0, "mtime": 0, "author": "evil", "deleted": true}}),
        json!({"file": {"path": "ok-name.md", "vv": vv, "size": 3, "mtime": 0, "author": "evil"}}),
        json!({"file": {"path": "ok-name.md", "vv": vv, "blob": "zz", "size": 3, "mtime": 0, "author": "evil"}}),
        json!({"nonsense": true}),
        json!("just a string"),
    ]);
    records
}

#[test]
fn hostile_names_from_a_peer_are_refused_and_nothing_lands_outside_the_root() {
    let hub = Node::new("hub");
    let server = hub.serve(&[]);
    let hd = share(&hub, "knowledge", &[]);
    let blob = hub.invite("mallory", &server);
    let (token, pin) = (blob_token(&blob), blob_fingerprint(&blob));
    let mallory = crate::harness::Prober::new(&blob, server.addr, 44);
    assert_eq!(mallory.hello().status, 200);
    let proof = mallory.proof_header();
    let escape = hub.dir.path().join("escaped.md");
    let escape = escape.to_str().unwrap();
    let mut records = hostile_records(escape);
    let hostile = records.len();
    assert!(hostile >= 40, "{hostile}");

    // One good record after them still applies: its content first.
    let content = b"a fine file\n";
    let hash = selves_wire::file::BlobHash::of(content).to_hex();
    let mut frames = format!("{{\"hash\":\"{hash}\",\"size\":{}}}\n", content.len()).into_bytes();
    frames.extend_from_slice(content);
    let put = request(
        server.addr,
        pin,
        "POST",
        "/v1/blobs/put?share=knowledge",
        Some(&token),
        &[("selves-proof", &proof)],
        &frames,
    );
    assert_eq!(put.status, 200, "{:?}", String::from_utf8_lossy(&put.body));
    let fine = json!({"file": {"path": "fine.md", "vv": {mallory.id.as_str(): 1}, "blob": hash, "size": content.len(), "mtime": 1, "author": "mallory"}});
    records.push(fine.clone());

    let before_outside = tree(hub.dir.path())
        .into_keys()
        .filter(|k| !k.starts_with("home/") && !k.starts_with("knowledge/"))
        .collect::<Vec<_>>();
    // Signed by mallory in its own log, but records that are not even
    // file versions cannot be proven: the batch is refused whole, and
    // nothing is written.
    let (batch, _) = hostile_batch(&mallory.key, &mallory.id, 1, &records);
    let resp = mallory.post(
        "/v1/push",
        json!({ "batches": [batch] }).to_string().as_bytes(),
    );
    assert_eq!(
        resp.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    let answer = resp.json();
    assert_eq!(answer["accepted"], 0, "{answer}");
    assert_eq!(answer["refused"].as_array().unwrap().len(), 1, "{answer}");
    assert!(tree(&hd).is_empty());
    // The good record alone applies.
    let (batch, _) = crate::harness::Prober::batch(
        &mallory.key,
        &mallory.id,
        "share:knowledge",
        1,
        None,
        vec![fine],
    );
    let resp = mallory.post(
        "/v1/push",
        json!({ "batches": [batch] }).to_string().as_bytes(),
    );
    assert_eq!(resp.json()["accepted"], 1, "{resp:?}");
    assert_eq!(tree(&hd).into_keys().collect::<Vec<_>>(), ["fine.md"]);
    let after_outside = tree(hub.dir.path())
        .into_keys()
        .filter(|k| !k.starts_with("home/") && !k.starts_with("knowledge/"))
        .collect::<Vec<_>>();
    assert_eq!(before_outside, after_outside);
    assert!(!Path::new(escape).exists());
    // The refusal is reported, naming the peer.
    let brief = hub.run(&["status", "--brief"]);
    assert!(brief.stdout.contains("refused from mallory"), "{brief:?}");
    hub.assert_intact();
    let _ = token;
}

/// A batch of share records in `node`'s log from `start`, signed by
/// `key`, where records that are not file versions at all get the digest
/// of their JSON text (no honest node can make such a record; a
/// receiver cannot check it, and must refuse the batch).
fn hostile_batch(
    key: &selves_wire::sign::NodeKey,
    node: &selves_wire::NodeId,
    start: u64,
    records: &[Value],
) -> (Value, selves_wire::sign::Digest) {
    use selves_wire::sign;
    let stream: selves_wire::StreamName = "share:knowledge".parse().unwrap();
    let mut chain = sign::genesis(node, &stream);
    for (i, r) in records.iter().enumerate() {
        let d = serde_json::from_value::<selves_wire::native::Record>(r.clone())
            .ok()
            .and_then(|rec| sign::record_digest(&rec))
            .unwrap_or(sign::Digest([0xee; 32]));
        chain = sign::link(&chain, start + i as u64, &d);
    }
    let end = start + records.len() as u64 - 1;
    let sig = key.sign(&sign::head_message(node, &stream, end, &chain));
    (
        json!({"node": node, "stream": stream, "start": start, "records": records,
            "key": key.public(), "sigs": [{"seq": end, "sig": sig}]}),
        chain,
    )
}

#[test]
fn a_symlink_on_the_way_is_refused_and_nothing_escapes() {
    let (hub, _server, spokes) = star("hub", &["a"]);
    let a = &spokes[0];
    let (hd, ad) = (share(&hub, "knowledge", &[]), share(a, "knowledge", &[]));
    let outside = hub.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, hd.join("link")).unwrap();
    put(&ad, "link/evil.md", b"should never leave the root\n");
    put(&ad, "fine.md", b"fine\n");
    sync(a);
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "written through the symlink"
    );
    assert_eq!(text(&hd, "fine.md"), "fine\n");
    let held = hub.json(&["conflicts", "--json"]);
    assert!(
        held.as_array()
            .unwrap()
            .iter()
            .any(|h| h["kind"] == "refused" && h["path"] == "link/evil.md"),
        "{held}"
    );
    // The hub's own symlink is not synced either.
    assert!(!ad.join("link").is_symlink());
}

#[test]
fn secrets_and_databases_never_leave_the_node() {
    let (hub, _server, spokes) = star("hub", &["a"]);
    let a = &spokes[0];
    let (hd, ad) = (share(&hub, "knowledge", &[]), share(a, "knowledge", &[]));
    let never = [
        ".env",
        ".env.production",
        "deploy.pem",
        "server.key",
        "id_rsa",
        "id_ed25519.pub",
        ".ssh/config",
        ".credentials/gcloud.json",
        "vault.kdbx",
        "memory.db",
        "chat.sqlite3",
        "memory.db-wal",
        "x-shm",
        ".git/config",
        ".DS_Store",
        "notes.md.swp",
    ];
    for name in never {
        put(&ad, name, b"SECRET-BYTES do not sync\n");
    }
    put(&ad, "creds.md", b"my key:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n");
    put(
        &ad,
        "aws.md",
        b"export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n",
    );
    put(
        &ad,
        "token.md",
        b"github: ghp_abcdefghijklmnopqrstuvwxyz0123456789\n",
    );
    put(&ad, "notes.md", b"ordinary notes about keys and tokens\n");
    let run = a.run(&["sync"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("held back"), "{run:?}");
    assert_eq!(tree(&hd).into_keys().collect::<Vec<_>>(), ["notes.md"]);
    let on_hub: Vec<u8> = tree(&hd).into_values().flatten().collect();
    assert!(!String::from_utf8_lossy(&on_hub).contains("SECRET-BYTES"));
    let held = a.json(&["conflicts", "--json"]);
    let secrets: Vec<&str> = held
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["kind"] == "secret")
        .map(|h| h["path"].as_str().unwrap())
        .collect();
    assert_eq!(secrets.len(), 3, "{held}");
    // Nothing about them is in the hub's blob store either.
    let blobs = tree(&hub.home().join("blobs"));
    assert!(
        blobs
            .values()
            .all(|b| !String::from_utf8_lossy(b).contains("PRIVATE KEY"))
    );
}

/// The whole of a file is looked at, however large, and a credential
/// appended to a log in two halves is caught when the second half lands.
#[test]
fn secrets_past_the_first_megabytes_and_split_across_appends_are_held() {
    let (hub, _server, spokes) = star("hub", &["a"]);
    let a = &spokes[0];
    let hd = share(
        &hub,
        "sessions",
        &["--mode", "receive-only", "--layout", "per-origin"],
    );
    let ad = share(a, "sessions", &["--mode", "send-only"]);
    let line = |i: usize| format!("{{\"i\":{i},\"text\":\"{}\"}}\n", "y".repeat(300));
    let filler: String = (0..30_000).map(line).collect();
    assert!(filler.len() > 9 << 20);
    // A private key at the very end of a 9 MB note.
    let mut note = filler.clone().into_bytes();
    note.extend_from_slice(b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n");
    put(&ad, "big-note.md", &note);
    // A 9 MB session log, clean so far.
    put(&ad, "s1.jsonl", filler.as_bytes());
    sync(a);
    assert!(!hd.join("a/big-note.md").exists(), "the key left the node");
    assert_eq!(
        std::fs::metadata(hd.join("a/s1.jsonl")).unwrap().len(),
        filler.len() as u64
    );
    // A token appended in two halves, a sync between them.
    let token = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
    let append = |bytes: &str| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(ad.join("s1.jsonl"))
            .unwrap();
        std::io::Write::write_all(&mut f, bytes.as_bytes()).unwrap();
    };
    append(&format!("{{\"key\":\"{}", &token[..20]));
    sync(a);
    append(&format!("{}\"}}\n", &token[20..]));
    let run = a.run(&["sync"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("held back"), "{run:?}");
    let on_hub = std::fs::read(hd.join("a/s1.jsonl")).unwrap();
    assert!(
        !String::from_utf8_lossy(&on_hub).contains(&token[20..]),
        "the second half of the key reached the hub"
    );
    let held = a.json(&["conflicts", "--json"]);
    let held: Vec<(&str, &str)> = held
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["kind"] == "secret")
        .map(|h| (h["path"].as_str().unwrap(), h["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(
        held.iter()
            .any(|(p, r)| p.ends_with("/big-note.md") && r.contains("private key")),
        "{held:?}"
    );
    assert!(
        held.iter()
            .any(|(p, r)| p.ends_with("/s1.jsonl") && r.contains("Anthropic"))
    );
}

/// A file that becomes a folder of the same name, and a folder that
/// becomes a file, sync both ways; later edits still flow.
#[test]
fn a_file_replaced_by_a_folder_and_a_folder_by_a_file_sync_both_ways() {
    let (hub, _server, spokes) = star("hub", &["a"]);
    let a = &spokes[0];
    let (hd, ad) = (share(&hub, "knowledge", &[]), share(a, "knowledge", &[]));
    for (p, t) in [("a.md", "a file\n"), ("dir/x.md", "in a folder\n")] {
        put(&ad, p, t.as_bytes());
    }
    for i in 0..4 {
        put(&ad, &format!("n{i}.md"), b"other notes\n");
    }
    sync(a);
    assert_same(&[&hd, &ad]);

    std::fs::remove_file(ad.join("a.md")).unwrap();
    put(&ad, "a.md/inner.md", b"now a folder\n");
    std::fs::remove_dir_all(ad.join("dir")).unwrap();
    put(&ad, "dir", b"now a file\n");
    sync(a);
    assert_same(&[&hd, &ad]);
    assert_eq!(text(&hd, "a.md/inner.md"), "now a folder\n");
    assert_eq!(text(&hd, "dir"), "now a file\n");

    // And back again, changed on the hub this time.
    std::fs::remove_dir_all(hd.join("a.md")).unwrap();
    put(&hd, "a.md", b"a file again\n");
    std::fs::remove_file(hd.join("dir")).unwrap();
    put(&hd, "dir/y.md", b"a folder again\n");
    hub.ok(&["share", "scan"]);
    sync(a);
    assert_same(&[&hd, &ad]);
    assert_eq!(text(&ad, "a.md"), "a file again\n");
    assert_eq!(text(&ad, "dir/y.md"), "a folder again\n");

    // Nothing is wedged: an edit still reaches the hub, and both agree.
    put(&ad, "n0.md", b"edited after it all\n");
    sync(a);
    assert_eq!(text(&hd, "n0.md"), "edited after it all\n");
    let run = a.run(&["verify", "hub"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        a.json(&["conflicts", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// A folder a peer turned into a file, while this node's copy of the
/// folder still holds something of its own: nothing is lost, the file
/// lands beside it as a conflict copy, and the share keeps syncing.
#[test]
fn a_file_arriving_where_a_folder_still_holds_local_files_lands_beside_it() {
    let (hub, _server, spokes) = star("hub", &["a"]);
    let a = &spokes[0];
    let (hd, ad) = (share(&hub, "knowledge", &[]), share(a, "knowledge", &[]));
    put(&ad, "dir/x.md", b"synced\n");
    put(&ad, "other.md", b"other\n");
    sync(a);
    // Ignored on the hub, so it stays in its folder there.
    put(&hd, "dir/.DS_Store", b"finder junk\n");
    std::fs::remove_dir_all(ad.join("dir")).unwrap();
    put(&ad, "dir", b"the file that replaced the folder\n");
    sync(a);
    assert_eq!(text(&hd, "dir/.DS_Store"), "finder junk\n");
    let beside: Vec<String> = tree(&hd)
        .into_keys()
        .filter(|k| k.starts_with("dir.conflict-a-"))
        .collect();
    assert_eq!(beside.len(), 1, "{:?}", tree(&hd).keys());
    assert_eq!(text(&hd, &beside[0]), "the file that replaced the folder\n");
    // The hub's next round settles it: the copy reaches a, everywhere.
    hub.ok(&["share", "scan"]);
    sync(a);
    assert_eq!(text(&ad, &beside[0]), "the file that replaced the folder\n");
    put(&ad, "other.md", b"still syncing\n");
    sync(a);
    assert_eq!(text(&hd, "other.md"), "still syncing\n");
}

#[test]
fn changing_ignore_rules_deletes_nothing_anywhere() {
    let (hub, _server, spokes) = star("hub", &["a"]);
    let a = &spokes[0];
    let (hd, ad) = (share(&hub, "knowledge", &[]), share(a, "knowledge", &[]));
    put(&ad, "drafts/one.md", b"one\n");
    put(&ad, "keep.md", b"keep\n");
    sync(a);
    assert_same(&[&hd, &ad]);
    put(&ad, ".selvesignore", b"drafts/\n");
    sync(a);
    assert_eq!(
        text(&hd, "drafts/one.md"),
        "one\n",
        "ignoring must not delete on the peer"
    );
    assert_eq!(text(&ad, "drafts/one.md"), "one\n");
    // Ignored files do not travel; un-ignored, they do again.
    put(&ad, "drafts/one.md", b"one, edited while ignored\n");
    sync(a);
    assert_eq!(text(&hd, "drafts/one.md"), "one\n");
    std::fs::remove_file(ad.join(".selvesignore")).unwrap();
    sync(a);
    assert_same(&[&hd, &ad]);
    assert_eq!(text(&hd, "drafts/one.md"), "one, edited while ignored\n");
}

#[test]
fn a_removed_or_emptied_folder_deletes_nothing_remotely_until_confirmed() {
    let (hub, _server, spokes) = star("hub", &["a"]);
    let a = &spokes[0];
    let (hd, ad) = (share(&hub, "knowledge", &[]), share(a, "knowledge", &[]));
    for i in 0..6 {
        put(&ad, &format!("n{i}.md"), format!("note {i}\n").as_bytes());
    }
    sync(a);
    std::fs::rename(&ad, a.dir.path().join("moved-away")).unwrap();
    let run = a.fails(&["sync"], 1);
    assert!(run.stderr.contains("missing"), "{run:?}");
    assert_eq!(tree(&hd).len(), 6);

    std::fs::rename(a.dir.path().join("moved-away"), &ad).unwrap();
    for i in 0..5 {
        std::fs::remove_file(ad.join(format!("n{i}.md"))).unwrap();
    }
    let run = a.fails(&["sync"], 1);
    assert!(run.stderr.contains("--allow-mass-delete"), "{run:?}");
    assert_eq!(tree(&hd).len(), 6, "nothing deleted on the hub");
    a.ok(&["sync", "--allow-mass-delete"]);
    assert_eq!(tree(&hd).into_keys().collect::<Vec<_>>(), ["n5.md"]);
}

#[test]
fn session_logs_flow_one_way_into_per_origin_folders_and_appends_send_only_the_tail() {
    let (hub, _server, spokes) = star("hub", &["laptop", "phone"]);
    let (laptop, phone) = (&spokes[0], &spokes[1]);
    let hd = share(
        &hub,
        "sessions",
        &["--mode", "receive-only", "--layout", "per-origin"],
    );
    let ld = share(laptop, "sessions", &["--mode", "send-only"]);
    let pd = share(phone, "sessions", &["--mode", "send-only"]);
    let line = |i: usize| format!("{{\"i\":{i},\"text\":\"{}\"}}\n", "x".repeat(200));
    let big: String = (0..5000).map(line).collect();
    put(&ld, "2026/s1.jsonl", big.as_bytes());
    put(&pd, "2026/s1.jsonl", b"{\"phone\":1}\n");
    sync(laptop);
    sync(phone);
    assert_eq!(
        std::fs::read(hd.join("laptop/2026/s1.jsonl")).unwrap(),
        big.as_bytes()
    );
    assert_eq!(text(&hd, "phone/2026/s1.jsonl"), "{\"phone\":1}\n");
    // Send-only: the laptop never takes the phone's files.
    assert_eq!(tree(&ld).len(), 1);
    // Receive-only: what changes on the hub is not sent back.
    put(&hd, "laptop/2026/hub-note.md", b"hub only\n");
    sync(laptop);
    assert_eq!(tree(&ld).len(), 1);

    // One line appended: only the tail travels.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(ld.join("2026/s1.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut f, line(5000).as_bytes()).unwrap();
    drop(f);
    let r = sync(laptop);
    let sent = share_report(&r, "sessions")["blob_bytes_out"]
        .as_u64()
        .unwrap();
    assert!(
        sent > 0 && sent <= 8 << 10,
        "{sent} bytes sent for a one-line append: {r}"
    );
    assert_eq!(
        std::fs::read(ld.join("2026/s1.jsonl")).unwrap(),
        std::fs::read(hd.join("laptop/2026/s1.jsonl")).unwrap()
    );

    // A rewritten log is sent whole, and said so.
    put(&ld, "2026/s1.jsonl", b"{\"rewritten\":true}\n");
    let run = laptop.run(&["sync"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("sent whole"), "{run:?}");
    assert_eq!(text(&hd, "laptop/2026/s1.jsonl"), "{\"rewritten\":true}\n");
    let listed = hub.json(&["share", "list", "--origin", "phone", "--json"]);
    let entries = listed[0]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(entries[0]["path"], "phone/2026/s1.jsonl");
}

fn files_in(dir: &Path) -> usize {
    tree(dir)
        .keys()
        .filter(|k| !k.contains(".selves-tmp-"))
        .count()
}

/// Every file in `partial` that is not a temporary file equals the one in
/// `full`: no partial file is ever visible.
#[track_caller]
fn assert_no_partial_file(partial: &Path, full: &BTreeMap<String, Vec<u8>>) {
    for (name, content) in tree(partial) {
        if name.contains(".selves-tmp-") {
            continue;
        }
        assert!(
            full.get(&name) == Some(&content),
            "{name} is partial or unknown"
        );
    }
}

const SLOW: &[&str] = &["--rate-per-minute", "1200", "--rate-burst", "2"];

#[test]
fn a_client_killed_mid_transfer_leaves_no_partial_file_and_resumes() {
    let (hub, _server, spokes) = star_with("hub", SLOW, &["a"]);
    let a = &spokes[0];
    let (hd, ad) = (share(&hub, "knowledge", &[]), share(a, "knowledge", &[]));
    for i in 0..200 {
        let body: String = format!("file {i}\n").repeat(6000);
        put(&hd, &format!("d{}/f{i}.md", i % 7), body.as_bytes());
    }
    hub.ok(&["share", "scan"]);
    let full = tree(&hd);
    let mut seen = Vec::new();
    for at in [1, 100] {
        let mut child = a.command(&["sync", "--batch", "5"]).spawn().unwrap();
        wait_until(120, || {
            files_in(&ad) >= at || child.try_wait().unwrap().is_some()
        });
        let _ = child.kill();
        let _ = child.wait();
        seen.push(files_in(&ad));
        assert_no_partial_file(&ad, &full);
        a.assert_intact();
    }
    assert!(
        seen.iter().any(|&n| n > 0 && n < 200),
        "no kill landed mid-transfer: {seen:?}"
    );
    sync(a);
    assert_eq!(
        tree(&ad),
        full,
        "resumed to the full folder, no temporary file left"
    );
}

#[test]
fn a_hub_killed_mid_push_leaves_no_partial_file_and_the_push_resumes() {
    let (hub, server, spokes) = star_with("hub", SLOW, &["a"]);
    let a = &spokes[0];
    let (hd, ad) = (share(&hub, "knowledge", &[]), share(a, "knowledge", &[]));
    for i in 0..200 {
        let body: String = format!("file {i}\n").repeat(6000);
        put(&ad, &format!("f{i}.md"), body.as_bytes());
    }
    let full = tree(&ad);
    let addr = server.addr;
    let mut child = a.command(&["sync", "--batch", "5"]).spawn().unwrap();
    wait_until(120, || {
        files_in(&hd) >= 50 || child.try_wait().unwrap().is_some()
    });
    server.kill();
    let _ = child.wait();
    let landed = files_in(&hd);
    assert!(
        landed > 0 && landed < 200,
        "the kill did not land mid-transfer: {landed}"
    );
    assert_no_partial_file(&hd, &full);
    hub.assert_intact();
    let _server = hub.serve_on(&addr.to_string(), SLOW);
    sync(a);
    assert_eq!(tree(&hd), full);
}

#[test]
fn hostile_records_pulled_from_a_peer_touch_nothing_outside_the_root() {
    let evil_key = selves_wire::sign::NodeKey::from_seed([66; 32]);
    let evil_id = evil_key.public().node_id();
    let evil: &'static str = evil_id.as_str().to_owned().leak();
    let client = Node::new("client");
    let root = share(&client, "knowledge", &[]);
    let victim = client.dir.path().join("victim.txt");
    std::fs::write(&victim, b"must survive").unwrap();
    put(&root, "inside.md", b"an unsynced local file\n");
    let escape = victim.to_str().unwrap().to_owned();
    let mut records: Vec<Value> = hostile_records(&escape)
        .into_iter()
        .map(|mut r| {
            // Deletions need no content: a hostile one would remove a file.
            if let Some(f) = r.get_mut("file").and_then(Value::as_object_mut) {
                f.remove("blob");
                f.insert("deleted".into(), json!(true));
            }
            r
        })
        .collect();
    records.push(json!({"file": {"path": "../victim.txt", "vv": {evil: 1}, "deleted": true, "size": 0, "mtime": 0, "author": "evil"}}));
    records.push(json!({"file": {"path": "inside.md", "vv": {evil: 1}, "deleted": true, "size": 0, "mtime": 0, "author": "evil"}}));
    let n = records.len();
    let (batch, _) = hostile_batch(&evil_key, &evil_id, 1, &records);
    let evil_pub = evil_key.public();
    let token = "c0".repeat(32);
    let expected = format!("Bearer {token}");
    let (addr, fingerprint) = crate::harness::https_server(move |req| {
        if req.authorization != expected {
            return (401, json!({"error": "unauthorized"}));
        }
        match req.target.as_str() {
            "/v1/hello" => (
                200,
                json!({
                    "protocol": {"major": 2, "minor": 0}, "software": "evil", "you": "client",
                    "node": {"id": evil, "name": "evil"}, "key": evil_pub, "streams": [],
                    "heads": [{"node": evil, "stream": "share:knowledge", "seq": n}], "nodes": [],
                    "limits": {"max_body_bytes": 8388608, "max_push_records": 5000, "max_pull_records": 5000, "max_pull_bytes": 4194304},
                    "server_now_ms": 0
                }),
            ),
            "/v1/pull" => (200, json!({"batches": [batch], "more": false})),
            _ => (404, json!({"error": "not_found"})),
        }
    });
    client.ok(&[
        "peer",
        "add",
        "evil",
        &format!("https://{addr}"),
        &token,
        "--cert-fp",
        &fingerprint.to_string(),
        "--no-check",
    ]);
    // The batch cannot be proven (records that are not file versions have
    // no digest): refused whole, reported, and nothing is touched.
    let out = client.run(&["sync", "--json"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("refused"), "{out:?}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"must survive");
    assert_eq!(text(&root, "inside.md"), "an unsynced local file\n");
    assert!(n > 40);
    client.assert_intact();
}

#[test]
fn blob_endpoints_refuse_bad_input_clearly() {
    let hub = Node::new("hub");
    let server = hub.serve(&[]);
    share(&hub, "knowledge", &[]);
    share(&hub, "outbox", &["--mode", "send-only"]);
    let blob = hub.invite("peer", &server);
    let (token, pin) = (blob_token(&blob), blob_fingerprint(&blob));
    let prober = crate::harness::Prober::new(&blob, server.addr, 43);
    assert_eq!(prober.hello().status, 200);
    let post = |path: &str, body: &[u8], token: &str| {
        let proof = prober.proof_header();
        request(
            server.addr,
            pin,
            "POST",
            path,
            Some(token),
            &[("selves-proof", &proof)],
            body,
        )
    };
    let blobs_dir = hub.home().join("blobs");
    // Nothing of what was refused is anywhere in the blob store (small
    // blobs live in its database, larger ones in files).
    let stored = |needle: &[u8]| {
        tree(&blobs_dir)
            .values()
            .filter(|v| v.windows(needle.len()).any(|w| w == needle))
            .count()
    };

    let wrong = "ab".repeat(32);
    assert_eq!(
        post("/v1/blobs/put?share=knowledge", b"", &wrong).status,
        401
    );
    assert_eq!(post("/v1/blobs/get", b"{}", &wrong).status, 401);
    let r = post("/v1/blobs/put?share=knowledge", b"{not json\n", &token);
    assert_eq!(r.status, 400, "{:?}", r.json());
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("frame header"),
        "{:?}",
        r.json()
    );
    // A frame whose bytes do not hash to its name is not kept.
    let real = b"REAL-CONTENT-0123456789";
    let hash = selves_wire::file::BlobHash::of(real).to_hex();
    let r = post(
        "/v1/blobs/put?share=knowledge",
        format!("{{\"hash\":\"{hash}\",\"size\":23}}\nFAKE-CONTENT-0123456789").as_bytes(),
        &token,
    );
    assert_eq!(
        (r.status, r.json()["stored"].as_u64()),
        (200, Some(0)),
        "{:?}",
        r.json()
    );
    // Cut short.
    let r = post(
        "/v1/blobs/put?share=knowledge",
        format!("{{\"hash\":\"{hash}\",\"size\":400}}\nREAL-CONTENT-0123456789").as_bytes(),
        &token,
    );
    assert_eq!(r.status, 400, "{:?}", r.json());
    assert_eq!(stored(b"FAKE-CONTENT"), 0);
    assert_eq!(stored(b"REAL-CONTENT"), 0);
    // Shares that do not exist or do not take changes.
    let r = post("/v1/blobs/put?share=nope", b"", &token);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (409, Some("no_share"))
    );
    let r = post("/v1/blobs/put?share=outbox", b"", &token);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (409, Some("share_unavailable"))
    );
    let r = post(
        "/v1/blobs/get",
        br#"{"share":"knowledge","want":[{"hash":"zz"}]}"#,
        &token,
    );
    assert_eq!(r.status, 400);
    let too_many: Vec<Value> = (0..10_001).map(|_| json!({"hash": hash})).collect();
    let r = post(
        "/v1/blobs/get",
        json!({"share": "knowledge", "want": too_many})
            .to_string()
            .as_bytes(),
        &token,
    );
    assert_eq!(r.status, 400, "{:?}", r.json());
    // Content the share does not reference is never served.
    let r = post(
        "/v1/blobs/get",
        json!({"share": "knowledge", "want": [{"hash": hash}]})
            .to_string()
            .as_bytes(),
        &token,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&r.body).trim(),
        format!("{{\"hash\":\"{hash}\",\"from\":0,\"size\":0,\"missing\":true}}")
    );
    // A push to a share it does not take is refused, not half-applied.
    let body = json!({"batches": [{"node": "abababababababababababababababab", "stream": "share:outbox", "start": 1,
        "records": [{"file": {"path": "x.md", "vv": {"abababababababababababababababab": 1}, "deleted": true, "size": 0, "mtime": 0, "author": "x"}}]}]});
    let r = post("/v1/push", body.to_string().as_bytes(), &token);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (409, Some("share_unavailable")),
        "{:?}",
        r.json()
    );
    hub.assert_intact();
}

/// A share that stopped itself (its folder gone) is never called in sync:
/// `sync` says it stopped, `status --brief` says so until it syncs again.
#[test]
fn a_stopped_share_is_loud_until_it_syncs_again() {
    let (hub, _server, spokes) = star("hub", &["a"]);
    let a = &spokes[0];
    share(&hub, "knowledge", &[]);
    let ad = share(a, "knowledge", &[]);
    put(&ad, "note.md", b"hello\n");
    sync(a);
    let moved = a.dir.path().join("moved-away");
    std::fs::rename(&ad, &moved).unwrap();
    let r = a.run(&["sync"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("share stopped"), "{r:?}");
    assert!(!r.stdout.contains("already in sync"), "{r:?}");
    let brief = a.fails(&["status", "--brief"], 1);
    assert!(
        brief.stdout.contains("share knowledge stopped"),
        "{brief:?}"
    );
    assert!(brief.stdout.contains("missing"), "{brief:?}");
    std::fs::rename(&moved, &ad).unwrap();
    sync(a);
    let brief = a.run(&["status", "--brief"]);
    assert_eq!((brief.code, brief.stdout.as_str()), (0, ""), "{brief:?}");
    hub.assert_intact();
}

/// `verify` between nodes that do not carry the same shares compares what
/// both carry, says what it skipped, and never asks for a sync that
/// cannot help.
#[test]
fn verify_compares_what_both_carry_and_says_what_it_skipped() {
    let (hub, _server, spokes) = star("hub", &["a", "b"]);
    let (a, b) = (&spokes[0], &spokes[1]);
    share(&hub, "notes", &[]);
    let ad = share(a, "notes", &[]);
    put(&ad, "one.md", b"shared\n");
    let extra = share(a, "extra", &[]);
    put(&extra, "mine.md", b"only on a\n");
    a.ok(&["remember", "a memory"]);
    sync(a);
    sync(b);
    // b carries no share `notes`: all it carries agrees with the hub.
    let out = b.ok(&["verify"]);
    assert!(out.contains("converged with hub"), "{out}");
    assert!(
        out.contains("skipped (not carried here): share:notes"),
        "{out}"
    );
    // a's share `extra` is a difference only a share on the hub can
    // settle, and it says so instead of asking for a sync.
    let r = a.fails(&["verify"], 3);
    assert!(r.stdout.contains("share:extra"), "{r:?}");
    assert!(r.stdout.contains("if hub has no such share"), "{r:?}");
    assert!(!r.stdout.contains("run `selves sync"), "{r:?}");
}

/// `verify` compares the trees of the shares, not only their logs: a
/// tree that differs while the logs agree is reported, never "converged".
#[test]
fn verify_compares_share_trees_not_only_logs() {
    let (hub, _server, spokes) = star("hub", &["a"]);
    let a = &spokes[0];
    share(&hub, "notes", &[]);
    let ad = share(a, "notes", &[]);
    put(&ad, "one.md", b"one\n");
    put(&ad, "two.md", b"two\n");
    sync(a);
    let out = a.ok(&["verify"]);
    assert!(out.contains("share:notes: the same 2 files"), "{out}");
    let json = a.json(&["verify", "--json"]);
    assert_eq!(json["shares"][0]["same"], true, "{json}");
    // The hub's store loses a file's entry behind selves' back (as a bug
    // or a damaged disk would): the logs still agree, the trees do not.
    let db = rusqlite::Connection::open(hub.home().join("selves.db")).unwrap();
    let n = db
        .execute("DELETE FROM files WHERE path = 'two.md'", [])
        .unwrap();
    assert_eq!(n, 1);
    drop(db);
    let r = a.fails(&["verify"], 3);
    assert!(
        r.stdout
            .contains("share:notes: the trees differ (2 files here, 1 file there)"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("the same records gave different state"),
        "{r:?}"
    );
}

/// A folder whose last file a peer deleted goes too; one that still holds
/// a file of this node's own (untracked here) stays.
#[test]
fn folders_emptied_by_a_remote_delete_go_with_their_files() {
    let (hub, _server, spokes) = star("hub", &["a", "b"]);
    let (a, b) = (&spokes[0], &spokes[1]);
    share(&hub, "knowledge", &[]);
    let ad = share(a, "knowledge", &[]);
    let bd = share(b, "knowledge", &[]);
    put(&ad, "projects/old/plan.md", b"a plan\n");
    put(&ad, "projects/keep/list.md", b"a list\n");
    sync(a);
    sync(b);
    assert!(bd.join("projects/old/plan.md").exists());
    // b has a file of its own, ignored, in the other folder.
    put(&bd, "projects/keep/.selvesignore", b"");
    std::fs::remove_dir_all(ad.join("projects")).unwrap();
    sync(a);
    sync(b);
    assert!(!bd.join("projects/old").exists(), "{:?}", tree(&bd));
    assert!(!bd.join("projects/keep/list.md").exists());
    assert!(bd.join("projects/keep").exists(), "its own file keeps it");
    assert!(!ad.join("projects").exists());
}

/// A home restored from a backup after its shared folder changed and
/// synced: that share's log cannot be written again safely, so the node
/// says so, loudly and for as long as it lasts, and never "all well".
#[test]
fn a_restored_home_whose_share_moved_on_is_loud_not_silent() {
    let (hub, _server, spokes) = star("hub", &["a"]);
    let a = &spokes[0];
    share(&hub, "notes", &[]);
    let ad = share(a, "notes", &[]);
    put(&ad, "a1.md", b"one\n");
    sync(a);
    let backup = a.dir.path().join("backup");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(a.home())
            .arg(&backup)
            .status()
            .unwrap()
            .success()
    );
    put(&ad, "a1.md", b"one\ntwo\n");
    sync(a);
    put(&ad, "a1.md", b"one\ntwo\nthree\n");
    sync(a);
    std::fs::remove_dir_all(a.home()).unwrap();
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&backup)
            .arg(a.home())
            .status()
            .unwrap()
            .success()
    );
    let _ = a.run(&["sync"]);
    let brief = a.run(&["status", "--brief"]);
    assert_eq!(brief.code, 2, "{brief:?}");
    assert!(brief.stdout.contains("two homes"), "{brief:?}");
    assert!(brief.stdout.contains("--new-identity"), "{brief:?}");
    // One more edit and sync: still loud, never "all well".
    put(&ad, "a1.md", b"one\ntwo\nthree\nfour\n");
    let _ = a.run(&["sync"]);
    assert_eq!(a.run(&["status", "--brief"]).code, 2);
}
