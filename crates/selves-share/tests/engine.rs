//! The share engine on real folders and stores, with records and blobs
//! moved between nodes in-process exactly as the sync client moves them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use selves_share::{Engine, ShareError};
use selves_store::{Layout, Share, ShareMode, Store, StorePaths};
use selves_wire::file::RelPath;
use selves_wire::native::Range;

struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: Arc<Store>,
    engine: Engine,
    share: Share,
}

fn node(n: u8, name: &str) -> Node {
    node_with(n, name, ShareMode::TwoWay, Layout::Flat)
}

fn node_with(n: u8, name: &str, mode: ShareMode, layout: Layout) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let root = dir.path().join("folder");
    std::fs::create_dir_all(&root).unwrap();
    let store = Arc::new(
        Store::open(
            &StorePaths::in_dir(&home),
            &selves_wire::sign::NodeKey::from_seed([n; 32])
                .public()
                .node_id(),
            &name.parse().unwrap(),
            selves_wire::sign::NodeKey::from_seed([n; 32]),
        )
        .unwrap(),
    );
    let share = store
        .add_share(&"notes".parse().unwrap(), root.clone(), mode, layout, 0)
        .unwrap();
    let engine = Engine::new(store.clone(), &home).unwrap();
    Node {
        _dir: dir,
        root,
        store,
        engine,
        share,
    }
}

impl Node {
    fn write(&self, path: &str, content: &[u8]) {
        let p = self.root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        // Let mtime move on even within one clock tick.
        std::thread::sleep(std::time::Duration::from_millis(2));
        std::fs::write(p, content).unwrap();
    }
    /// A scan as after the user confirmed any deletes: the mass-delete
    /// guard has its own test
    /// (`a_missing_or_emptied_folder_deletes_nothing_remotely`), and
    /// a history that removes every file must still converge.
    fn scan(&self) -> selves_share::ScanReport {
        self.engine.scan(&self.share, true, now()).unwrap()
    }
    fn files(&self) -> BTreeMap<String, Vec<u8>> {
        tree(&self.root)
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walk(root) {
        let rel = e.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        out.insert(rel, std::fs::read(&e).unwrap());
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Moves every share record `to` lacks from `from`, fetching blobs first.
fn pull(to: &Node, from: &Node) {
    let mine = to.store.heads().unwrap();
    let ranges: Vec<Range> = from
        .store
        .heads()
        .unwrap()
        .into_iter()
        .filter(|h| h.stream == to.share.stream)
        .filter_map(|h| {
            let have = mine
                .iter()
                .find(|m| m.node == h.node && m.stream == h.stream)
                .map_or(0, |m| m.seq);
            (h.seq > have).then_some(Range {
                node: h.node,
                stream: h.stream,
                after: have,
            })
        })
        .collect();
    if ranges.is_empty() {
        return;
    }
    let read = from.store.read_ranges(&ranges, 3, usize::MAX).unwrap();
    for batch in read.batches {
        for _ in 0..4 {
            for want in to.engine.wants(&to.share, &batch).unwrap() {
                fetch(to, from, want.hash, want.from);
            }
            match to.engine.apply(&to.share, batch.clone(), now()) {
                Ok(_) => break,
                Err(ShareError::MissingBlob(h)) => fetch(to, from, h, 0),
                Err(e) => panic!("{e}"),
            }
        }
    }
    pull(to, from);
}

/// Moves one blob as a frame stream, as `/v1/blobs/get` does.
fn fetch(to: &Node, from: &Node, hash: selves_wire::file::BlobHash, offset: u64) {
    let want = selves_wire::file::BlobWant { hash, from: offset };
    let mut stream = Vec::new();
    let sent = selves_share::frames::write_frames(&from.engine, &from.share, &[want], &mut stream)
        .unwrap();
    assert_eq!(sent.missing, 0, "{hash} is not available at the source");
    let got = selves_share::frames::read_frames(to.engine.blobs(), &mut &stream[..], Some(&[want]))
        .unwrap();
    assert_eq!((got.stored, got.missing.len()), (1, 0));
}

fn sync(a: &Node, b: &Node) {
    a.scan();
    b.scan();
    pull(a, b);
    pull(b, a);
}

fn converged(nodes: &[&Node]) {
    let first = nodes[0].files();
    for n in &nodes[1..] {
        assert_eq!(n.files(), first, "folders differ");
    }
    for n in nodes {
        assert_eq!(n.store.check().unwrap(), Vec::<String>::new());
    }
}

#[test]
fn a_file_travels_and_so_do_its_edits_and_deletion() {
    let (a, b) = (node(1, "a"), node(2, "b"));
    a.write("notes/plan.md", b"# Plan\n");
    a.write("empty.md", b"");
    a.write("bin.dat", &[0, 159, 146, 150, 255]);
    sync(&a, &b);
    converged(&[&a, &b]);
    b.write("notes/plan.md", b"# Plan\n\nedited on b\n");
    sync(&a, &b);
    assert_eq!(
        std::fs::read(a.root.join("notes/plan.md")).unwrap(),
        b"# Plan\n\nedited on b\n"
    );
    std::fs::remove_file(a.root.join("bin.dat")).unwrap();
    sync(&a, &b);
    assert!(!b.root.join("bin.dat").exists());
    converged(&[&a, &b]);
}

#[test]
fn concurrent_edits_of_different_paragraphs_merge_everywhere() {
    let (a, b, c) = (node(1, "a"), node(2, "b"), node(3, "c"));
    let base = "# Notes\n\nalpha\n\nbeta\n\ngamma\n";
    a.write("n.md", base.as_bytes());
    sync(&a, &b);
    sync(&b, &c);
    a.write("n.md", b"# Notes\n\nalpha from a\n\nbeta\n\ngamma\n");
    b.write("n.md", b"# Notes\n\nalpha\n\nbeta from b\n\ngamma\n");
    c.write("n.md", b"# Notes\n\nalpha\n\nbeta\n\ngamma from c\n");
    for _ in 0..2 {
        sync(&a, &b);
        sync(&b, &c);
        sync(&a, &c);
    }
    converged(&[&a, &b, &c]);
    let merged = String::from_utf8(std::fs::read(a.root.join("n.md")).unwrap()).unwrap();
    for part in ["alpha from a", "beta from b", "gamma from c"] {
        assert!(merged.contains(part), "{part} lost: {merged}");
    }
    assert_eq!(
        a.files().len(),
        1,
        "no conflict copies: {:?}",
        a.files().keys()
    );
}

#[test]
fn concurrent_edits_of_the_same_line_keep_both() {
    let (a, b) = (node(1, "a"), node(2, "b"));
    a.write("n.md", b"one\ntwo\nthree\n");
    sync(&a, &b);
    a.write("n.md", b"one\nTWO FROM A\nthree\n");
    b.write("n.md", b"one\ntwo from b\nthree\n");
    sync(&a, &b);
    sync(&a, &b);
    converged(&[&a, &b]);
    let files = a.files();
    assert_eq!(files.len(), 2, "{:?}", files.keys());
    let all: String = files
        .values()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(all.contains("TWO FROM A") && all.contains("two from b"));
    assert!(
        files
            .keys()
            .any(|k| k.starts_with("n.conflict-") && k.ends_with(".md")),
        "{:?}",
        files.keys()
    );
}

#[test]
fn a_modification_beats_a_concurrent_deletion() {
    let (a, b) = (node(1, "a"), node(2, "b"));
    a.write("n.md", b"v1\n");
    sync(&a, &b);
    std::fs::remove_file(a.root.join("n.md")).unwrap();
    b.write("n.md", b"v2 on b\n");
    sync(&a, &b);
    sync(&a, &b);
    converged(&[&a, &b]);
    assert_eq!(std::fs::read(a.root.join("n.md")).unwrap(), b"v2 on b\n");
}

#[test]
fn renames_move_without_sending_content_again() {
    let (a, b) = (node(1, "a"), node(2, "b"));
    a.write("old/name.md", &b"x".repeat(10_000));
    sync(&a, &b);
    std::fs::create_dir_all(a.root.join("new")).unwrap();
    std::fs::rename(a.root.join("old/name.md"), a.root.join("new/name.md")).unwrap();
    a.scan();
    // b already holds the content: nothing to fetch for the new path.
    let heads = a.store.heads().unwrap();
    let h = heads.iter().find(|h| h.stream == a.share.stream).unwrap();
    let read = a
        .store
        .read_ranges(
            &[Range {
                node: h.node.clone(),
                stream: h.stream.clone(),
                after: 1,
            }],
            100,
            usize::MAX,
        )
        .unwrap();
    for batch in &read.batches {
        assert!(b.engine.wants(&b.share, batch).unwrap().is_empty());
    }
    sync(&a, &b);
    converged(&[&a, &b]);
    assert!(b.root.join("new/name.md").exists() && !b.root.join("old/name.md").exists());
}

#[test]
fn appended_logs_send_only_the_new_bytes() {
    let (a, b) = (node(1, "a"), node(2, "b"));
    let mut log = String::new();
    for i in 0..2000 {
        log.push_str(&format!(
            "{{\"turn\":{i},\"text\":\"some session line\"}}\n"
        ));
    }
    a.write("s.jsonl", log.as_bytes());
    sync(&a, &b);
    log.push_str("{\"turn\":2000,\"text\":\"the new line\"}\n");
    a.write("s.jsonl", log.as_bytes());
    let report = a.scan();
    assert_eq!(report.appended, 1);
    let heads = a.store.heads().unwrap();
    let h = heads.iter().find(|h| h.stream == a.share.stream).unwrap();
    let read = a
        .store
        .read_ranges(
            &[Range {
                node: h.node.clone(),
                stream: h.stream.clone(),
                after: h.seq - 1,
            }],
            10,
            usize::MAX,
        )
        .unwrap();
    let wants = b.engine.wants(&b.share, &read.batches[0]).unwrap();
    assert_eq!(wants.len(), 1);
    let old_len = log.len() as u64 - 36;
    assert_eq!(wants[0].from, old_len, "only the bytes past the old end");
    sync(&a, &b);
    converged(&[&a, &b]);

    // A file rewritten (its start changed) is sent whole.
    a.write("s.jsonl", format!("rewritten\n{log}").as_bytes());
    assert_eq!(a.scan().appended, 0);
    sync(&a, &b);
    converged(&[&a, &b]);
}

#[test]
fn symlinks_on_a_remote_path_are_refused_and_nothing_escapes() {
    let (a, b) = (node(1, "a"), node(2, "b"));
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), b.root.join("docs")).unwrap();
    a.write("docs/x.md", b"would land outside");
    a.write("ok.md", b"fine");
    sync(&a, &b);
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing written outside"
    );
    assert_eq!(std::fs::read(b.root.join("ok.md")).unwrap(), b"fine");
    let held = b.store.held(&b.share).unwrap();
    assert!(
        held.iter()
            .any(|h| h.kind == "refused" && h.path == "docs/x.md"),
        "{held:?}"
    );
    assert_eq!(b.store.check().unwrap(), Vec::<String>::new());
}

#[test]
fn secrets_and_databases_never_leave() {
    let (a, b) = (node(1, "a"), node(2, "b"));
    a.write(
        "keys.md",
        b"my key:\n-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n",
    );
    a.write("notes.md", b"hello");
    a.write("memory.db", b"SQLite format 3\0");
    a.write(".env", b"TOKEN=x");
    let report = a.scan();
    assert_eq!(report.held, 1);
    sync(&a, &b);
    assert_eq!(b.files().keys().collect::<Vec<_>>(), ["notes.md"]);
    let held = a.store.held(&a.share).unwrap();
    assert_eq!(held[0].kind, "secret");
    // Once the secret is gone from the file, it syncs.
    a.write("keys.md", b"my key: in the password manager");
    sync(&a, &b);
    assert!(b.root.join("keys.md").exists());
    assert!(a.store.held(&a.share).unwrap().is_empty());
}

#[test]
fn ignoring_a_file_later_deletes_nothing() {
    let (a, b) = (node(1, "a"), node(2, "b"));
    a.write("draft.md", b"draft");
    a.write("keep.md", b"keep");
    sync(&a, &b);
    a.write(".selvesignore", b"draft.md\n");
    sync(&a, &b);
    assert!(a.root.join("draft.md").exists() && b.root.join("draft.md").exists());
}

#[test]
fn a_missing_or_emptied_folder_deletes_nothing_remotely() {
    let (a, b) = (node(1, "a"), node(2, "b"));
    for i in 0..6 {
        a.write(&format!("f{i}.md"), b"x");
    }
    sync(&a, &b);
    for i in 0..6 {
        std::fs::remove_file(a.root.join(format!("f{i}.md"))).unwrap();
    }
    assert!(matches!(
        a.engine.scan(&a.share, false, now()),
        Err(ShareError::MassDelete {
            gone: 6,
            live: 6,
            ..
        })
    ));
    std::fs::remove_dir(&a.root).unwrap();
    assert!(matches!(
        a.engine.scan(&a.share, false, now()),
        Err(ShareError::RootMissing { .. })
    ));
    pull(&b, &a);
    assert_eq!(b.files().len(), 6, "nothing deleted remotely");
    // Confirmed, the deletions go out.
    std::fs::create_dir(&a.root).unwrap();
    a.engine.scan(&a.share, true, now()).unwrap();
    pull(&b, &a);
    assert_eq!(b.files().len(), 0);
}

#[test]
fn a_local_edit_made_after_the_scan_is_never_overwritten() {
    let (a, b) = (node(1, "a"), node(2, "b"));
    a.write("n.md", b"one\ntwo\n");
    sync(&a, &b);
    b.write("n.md", b"one\ntwo\nthree from b\n");
    b.scan();
    // a edits without scanning, then receives b's version.
    a.write("n.md", b"zero from a\none\ntwo\n");
    pull(&a, &b);
    let text = String::from_utf8(std::fs::read(a.root.join("n.md")).unwrap()).unwrap();
    assert!(
        text.contains("zero from a") && text.contains("three from b"),
        "{text}"
    );
    sync(&a, &b);
    converged(&[&a, &b]);
}

#[test]
fn an_unscanned_local_file_at_an_incoming_path_is_kept() {
    let (a, b) = (node(1, "a"), node(2, "b"));
    a.write("same.md", b"from a\n");
    a.scan();
    // b made a file of the same name, not scanned yet.
    b.write("same.md", b"from b\n");
    pull(&b, &a);
    let texts: Vec<Vec<u8>> = b.files().into_values().collect();
    assert!(
        texts.contains(&b"from a\n".to_vec()) && texts.contains(&b"from b\n".to_vec()),
        "{:?}",
        b.files()
    );
    sync(&a, &b);
    converged(&[&a, &b]);
    assert_eq!(
        a.files().len(),
        2,
        "one file and one conflict copy: {:?}",
        a.files().keys()
    );
}

#[test]
fn a_secret_written_over_a_synced_file_is_moved_aside_not_sent_or_lost() {
    let (a, b) = (node(1, "a"), node(2, "b"));
    a.write("cfg.md", b"plain\n");
    sync(&a, &b);
    a.write("cfg.md", b"new text\n");
    a.scan();
    let secret = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
    b.write("cfg.md", secret);
    pull(&b, &a);
    let files = b.files();
    assert_eq!(
        files.get("cfg.md").map(Vec::as_slice),
        Some(&b"new text\n"[..])
    );
    let aside: Vec<_> = files
        .iter()
        .filter(|(k, _)| k.contains(".conflict-local-"))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", files.keys());
    assert_eq!(aside[0].1.as_slice(), &secret[..]);
    sync(&a, &b);
    assert!(
        a.files().values().all(|v| v.as_slice() != &secret[..]),
        "the secret never reaches a"
    );
}

#[test]
fn blob_streams_refuse_damage_and_surprises() {
    let a = node(1, "a");
    a.write("x.md", b"hello\n");
    a.scan();
    let hash = selves_wire::file::BlobHash::of(b"hello\n");
    let want = selves_wire::file::BlobWant { hash, from: 0 };
    let other = selves_wire::file::BlobWant {
        hash: selves_wire::file::BlobHash::of(b"nope"),
        from: 0,
    };
    let mut stream = Vec::new();
    let sent = selves_share::frames::write_frames(&a.engine, &a.share, &[want, other], &mut stream)
        .unwrap();
    assert_eq!((sent.frames, sent.missing), (1, 1));
    let b = node(2, "b");
    // Whole: stored, and the unknown one reported missing.
    let got = selves_share::frames::read_frames(b.engine.blobs(), &mut &stream[..], None).unwrap();
    assert_eq!((got.stored, got.missing.clone()), (1, vec![other]));
    // Damaged content is not stored.
    let c = node(3, "c");
    let mut damaged = stream.clone();
    let at = damaged.iter().position(|&x| x == b'\n').unwrap() + 1;
    damaged[at] ^= 1;
    let got = selves_share::frames::read_frames(c.engine.blobs(), &mut &damaged[..], None).unwrap();
    assert_eq!((got.stored, got.missing.len()), (0, 2));
    assert!(!c.engine.blobs().has(&hash, 0));
    // Cut short: an error, nothing stored.
    let cut = &stream[..at + 3];
    assert!(selves_share::frames::read_frames(c.engine.blobs(), &mut &cut[..], None).is_err());
    assert!(!c.engine.blobs().has(&hash, 0));
    // Not asked for, or not a header: refused.
    let err = selves_share::frames::read_frames(c.engine.blobs(), &mut &stream[..], Some(&[other]))
        .unwrap_err();
    assert!(err.to_string().contains("not asked for"), "{err}");
    let err = selves_share::frames::read_frames(c.engine.blobs(), &mut &b"{nonsense\n"[..], None)
        .unwrap_err();
    assert!(err.to_string().contains("not valid"), "{err}");
    let long = vec![b'x'; 5000];
    assert!(selves_share::frames::read_frames(c.engine.blobs(), &mut &long[..], None).is_err());
    // A node serves only what its share references.
    let mut s2 = Vec::new();
    let sent = selves_share::frames::write_frames(&c.engine, &c.share, &[want], &mut s2).unwrap();
    assert_eq!(sent.missing, 1);
}

#[test]
fn per_origin_layout_keeps_senders_apart() {
    let hub = node_with(9, "hub", ShareMode::ReceiveOnly, Layout::PerOrigin);
    let laptop = node_with(1, "laptop", ShareMode::SendOnly, Layout::Flat);
    let phone = node_with(2, "phone", ShareMode::SendOnly, Layout::Flat);
    for n in [&laptop, &phone] {
        hub.store
            .learn_nodes(&[selves_wire::native::NodeInfo {
                id: n.store.me().id.clone(),
                name: n.store.me().name.clone(),
            }])
            .unwrap();
    }
    laptop.write("s/1.jsonl", b"laptop session\n");
    phone.write("s/1.jsonl", b"phone session\n");
    laptop.scan();
    phone.scan();
    pull(&hub, &laptop);
    pull(&hub, &phone);
    let files = hub.files();
    assert_eq!(
        files.get("laptop/s/1.jsonl").map(Vec::as_slice),
        Some(&b"laptop session\n"[..])
    );
    assert_eq!(
        files.get("phone/s/1.jsonl").map(Vec::as_slice),
        Some(&b"phone session\n"[..])
    );
    // A send-only share never applies what others send.
    let err = laptop.engine.apply(
        &laptop.share,
        selves_wire::native::RecordBatch::new(
            phone.store.me().id.clone(),
            laptop.share.stream.clone(),
            1,
            vec![],
        ),
        now(),
    );
    assert!(matches!(err, Err(ShareError::SendOnly { .. })));
}

#[derive(Debug, Clone)]
enum Op {
    Write { at: usize, file: u8, line: u8 },
    Delete { at: usize, file: u8 },
    Sync { a: usize, b: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..3u8, 0..6u8).prop_map(|(at, file, line)| Op::Write { at, file, line }),
        1 => (0..3usize, 0..3u8).prop_map(|(at, file)| Op::Delete { at, file }),
        3 => (0..3usize, 0..3usize).prop_map(|(a, b)| Op::Sync { a, b }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever edits and syncs happen in whatever order, once every pair
    /// has synced all folders hold the same files.
    #[test]
    fn any_history_of_edits_converges(ops in proptest::collection::vec(op(), 1..25)) {
        let nodes = [node(1, "a"), node(2, "b"), node(3, "c")];
        for op in ops {
            match op {
                Op::Write { at, file, line } => {
                    let path = nodes[at].root.join(format!("f{file}.md"));
                    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
                    text.push_str(&format!("line {line} from node {at}\n"));
                    nodes[at].write(&format!("f{file}.md"), text.as_bytes());
                }
                Op::Delete { at, file } => {
                    let _ = std::fs::remove_file(nodes[at].root.join(format!("f{file}.md")));
                }
                Op::Sync { a, b } if a != b => sync(&nodes[a], &nodes[b]),
                Op::Sync { .. } => {}
            }
        }
        for _ in 0..3 {
            sync(&nodes[0], &nodes[1]);
            sync(&nodes[1], &nodes[2]);
            sync(&nodes[0], &nodes[2]);
        }
        converged(&[&nodes[0], &nodes[1], &nodes[2]]);
    }
}

/// A generated page never replaces someone's own file while it may be half
/// written (changed in the last two seconds, as by an editor that
/// truncates, then writes): it waits, then keeps the file aside whole.
#[test]
fn a_generated_page_waits_for_a_file_being_written() {
    let a = node(1, "a");
    let page = RelPath::parse("SELVES.md").unwrap();
    let keep = RelPath::parse("SELVES.user.md").unwrap();
    let header = b"<!-- generated -->";
    let content = b"<!-- generated -->\nthe page\n";
    a.write("SELVES.md", b"my own no");
    let r = a
        .engine
        .write_generated(&a.share, &page, content, header, &keep)
        .unwrap();
    assert!(matches!(r, selves_share::Generated::Later), "{r:?}");
    assert_eq!(
        std::fs::read(a.root.join("SELVES.md")).unwrap(),
        b"my own no"
    );
    // The editor finished a while ago.
    a.write("SELVES.md", b"my own notes\n");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(a.root.join("SELVES.md"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let r = a
        .engine
        .write_generated(&a.share, &page, content, header, &keep)
        .unwrap();
    assert!(
        matches!(r, selves_share::Generated::Written { kept: Some(_) }),
        "{r:?}"
    );
    assert_eq!(std::fs::read(a.root.join("SELVES.md")).unwrap(), content);
    assert_eq!(
        std::fs::read(a.root.join("SELVES.user.md")).unwrap(),
        b"my own notes\n"
    );
}

/// Two versions of one author that lose a conflict in the same second
/// are two conflict copies, not one copy written over the other (each
/// copy is named by its content too), on every node alike.
#[test]
fn two_losing_versions_of_one_author_in_one_second_are_both_kept() {
    let (a, b, hub) = (node(1, "a"), node(2, "b"), node(3, "hub"));
    b.write("f.md", b"B1\n");
    sync(&b, &hub);
    a.write("f.md", b"A1\n");
    sync(&a, &hub);
    sync(&b, &hub);
    b.write("f.md", b"B2\n");
    sync(&b, &hub);
    a.write("f.md", b"A2\n");
    sync(&a, &hub);
    for _ in 0..2 {
        sync(&a, &hub);
        sync(&b, &hub);
    }
    converged(&[&a, &b, &hub]);
    let contents: Vec<Vec<u8>> = hub.files().into_values().collect();
    for kept in ["B1\n", "B2\n", "A2\n"] {
        assert!(
            contents.iter().any(|c| c == kept.as_bytes()),
            "{kept:?} is in no file: {:?}",
            hub.files().keys().collect::<Vec<_>>()
        );
    }
}
