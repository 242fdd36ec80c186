//! Store laws and behaviour, on real SQLite files in temporary directories.
//! Replication here moves record ranges between stores in-process, exactly
//! as the sync client does over HTTPS.

use proptest::prelude::*;
use selves_store::{CaptureOptions, Durability, SearchQuery, Store, StoreError, StorePaths};
use selves_wire::native::{Range, Record, RecordBatch};
use selves_wire::sign::{self, NodeKey};
use selves_wire::{ConversationMeta, Row, StreamName};

struct Node {
    _dir: tempfile::TempDir,
    store: Store,
}

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed([n; 32])
}

fn node(n: u8, name: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &StorePaths::in_dir(dir.path()),
        &key(n).public().node_id(),
        &name.parse().unwrap(),
        key(n),
    )
    .unwrap();
    Node { _dir: dir, store }
}

/// A batch of `records` in `n`'s own log of `stream` from `start`, chained
/// on what `n` holds before `start` and signed at its end with `signer`
/// (normally `n`'s own key).
fn signed(
    n: &Node,
    signer: &NodeKey,
    stream: StreamName,
    start: u64,
    records: Vec<Record>,
) -> RecordBatch {
    let id = n.store.me().id.clone();
    let mut chain = if start == 1 {
        sign::genesis(&id, &stream)
    } else {
        n.store.chain_of(&id, &stream, start - 1).unwrap().unwrap()
    };
    for (i, r) in records.iter().enumerate() {
        chain = sign::link(&chain, start + i as u64, &sign::record_digest(r).unwrap());
    }
    let end = start + records.len() as u64 - 1;
    let mut batch = RecordBatch::new(id.clone(), stream.clone(), start, records);
    batch.key = Some(signer.public());
    batch.sigs = vec![sign::SeqSig {
        seq: end,
        sig: signer.sign(&sign::head_message(&id, &stream, end, &chain)),
    }];
    batch
}

fn row(conv: &str, msg: &str, text: &str) -> Row {
    Row {
        source: "test".into(),
        conversation_id: conv.into(),
        msg_id: Some(msg.into()),
        uuid: None,
        role: "user".into(),
        sender: None,
        text: text.into(),
        ts: 1000,
        edited_at: None,
        channel: None,
        metadata: None,
        origin: None,
        conversation: Some(ConversationMeta {
            title: Some(format!("title of {conv}")),
            first_ts: Some(1000),
            last_ts: Some(1000),
            ..Default::default()
        }),
    }
}

fn capture(n: &Node, rows: Vec<Row>) -> selves_store::CaptureSummary {
    n.store
        .capture(
            rows,
            &CaptureOptions {
                stamp_origin: Some(n.store.me().name.to_string()),
                ..CaptureOptions::default()
            },
        )
        .unwrap()
}

/// Moves everything `from` has and `to` lacks, `batch` records at a time.
fn pull(to: &Store, from: &Store, batch: usize) -> u64 {
    let mut moved = 0;
    loop {
        let mine = to.heads().unwrap();
        let ranges: Vec<Range> = from
            .heads()
            .unwrap()
            .into_iter()
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
            return moved;
        }
        let read = from.read_ranges(&ranges, batch, usize::MAX).unwrap();
        moved += to
            .apply(read.batches, Durability::Deferred, 0)
            .unwrap()
            .accepted;
    }
}

fn sync(a: &Store, b: &Store, batch: usize) {
    pull(a, b, batch);
    pull(b, a, batch);
}

fn export(s: &Store) -> Vec<Row> {
    let mut rows = Vec::new();
    s.export(|r| {
        rows.push(r);
        Ok(())
    })
    .unwrap();
    rows
}

fn assert_converged(nodes: &[&Store]) {
    let (h0, d0) = nodes[0].digest().unwrap();
    let e0 = export(nodes[0]);
    for n in &nodes[1..] {
        let (h, d) = n.digest().unwrap();
        assert_eq!(h, h0, "heads differ");
        assert_eq!(d, d0, "digests differ");
        assert_eq!(export(n), e0, "exports differ");
    }
    for n in nodes {
        assert_eq!(n.check().unwrap(), Vec::<String>::new());
    }
}

#[test]
fn capture_appends_own_records_and_dedups() {
    let a = node(1, "a");
    let s = capture(&a, vec![row("c1", "1", "hello"), row("c1", "2", "world")]);
    assert_eq!((s.inserted, s.unchanged), (2, 0));
    let s = capture(&a, vec![row("c1", "1", "hello")]);
    assert_eq!((s.inserted, s.unchanged), (0, 1));
    let heads = a.store.heads().unwrap();
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0].seq, 2);
    let rows = export(&a.store);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].origin.as_deref(), Some("a"));
    assert!(rows[0].uuid.is_some(), "a uuid is derived when absent");
    assert_eq!(a.store.check().unwrap(), Vec::<String>::new());
}

#[test]
fn local_only_rows_are_kept_once_and_never_logged() {
    let a = node(1, "a");
    let mut r = row("c1", "x", "ephemeral");
    r.msg_id = None;
    let s = capture(&a, vec![r.clone(), r.clone()]);
    assert_eq!(s.local_only, 2);
    assert_eq!(s.inserted, 0);
    assert!(a.store.heads().unwrap().is_empty());
    assert_eq!(export(&a.store).len(), 1);
    assert_eq!(a.store.counts().unwrap().local_only_rows, 1);
    assert_eq!(a.store.digest().unwrap().1.rows, 0);
}

#[test]
fn refused_rows_do_not_block_the_rest() {
    let a = node(1, "a");
    let mut bad = row("c1", "2", "x");
    bad.source.clear();
    let s = capture(
        &a,
        vec![row("c1", "1", "ok"), bad, row("c1", "3", "nul \0 kept")],
    );
    assert_eq!(s.inserted, 2);
    assert_eq!(s.refused, vec![(1, "source is empty".to_string())]);
    let rows = export(&a.store);
    assert_eq!(rows[1].text, "nul \0 kept");
}

#[test]
fn two_nodes_converge_both_ways() {
    let a = node(1, "a");
    let b = node(2, "b");
    capture(
        &a,
        (0..50)
            .map(|i| row("ca", &i.to_string(), "from a"))
            .collect(),
    );
    capture(
        &b,
        (0..30)
            .map(|i| row("cb", &i.to_string(), "from b"))
            .collect(),
    );
    sync(&a.store, &b.store, 7);
    assert_converged(&[&a.store, &b.store]);
    assert_eq!(a.store.counts().unwrap().rows, 80);
    // A second round moves nothing.
    assert_eq!(pull(&a.store, &b.store, 7) + pull(&b.store, &a.store, 7), 0);
}

#[test]
fn relay_reaches_nodes_that_never_talk() {
    let (a, b, c) = (node(1, "a"), node(2, "b"), node(3, "c"));
    capture(&a, vec![row("c", "1", "written on a")]);
    sync(&a.store, &b.store, 100);
    sync(&b.store, &c.store, 100);
    assert_eq!(export(&c.store)[0].text, "written on a");
    // An edit made on c reaches a through b.
    let mut edit = row("c", "1", "edited on c");
    edit.edited_at = Some(5);
    edit.origin = Some("a".into());
    capture(&c, vec![edit]);
    sync(&b.store, &c.store, 100);
    sync(&a.store, &b.store, 100);
    assert_eq!(export(&a.store)[0].text, "edited on c");
    assert_converged(&[&a.store, &b.store, &c.store]);
}

#[test]
fn concurrent_edits_pick_the_same_winner_everywhere() {
    let a = node(1, "a");
    let b = node(2, "b");
    capture(&a, vec![row("c", "1", "original")]);
    sync(&a.store, &b.store, 100);
    let mut ea = row("c", "1", "edit on a");
    ea.edited_at = Some(2000);
    ea.origin = Some("a".into());
    let mut eb = row("c", "1", "edit on b");
    eb.edited_at = Some(2000);
    eb.origin = Some("a".into());
    // The store derives the uuid before hashing; do the same for the oracle.
    ea.uuid = Some(ea.derived_uuid());
    eb.uuid = Some(eb.derived_uuid());
    capture(&a, vec![ea.clone()]);
    capture(&b, vec![eb.clone()]);
    sync(&a.store, &b.store, 100);
    let winner = if ea.version() > eb.version() {
        &ea.text
    } else {
        &eb.text
    };
    assert_eq!(&export(&a.store)[0].text, winner);
    assert_converged(&[&a.store, &b.store]);
    // A newer edit wins over both.
    let mut later = row("c", "1", "later");
    later.edited_at = Some(3000);
    later.origin = Some("a".into());
    capture(&b, vec![later]);
    sync(&a.store, &b.store, 100);
    assert_eq!(export(&a.store)[0].text, "later");
}

/// Found by `any_history_converges`: the same message captured again with
/// a newer conversation title changed the conversation here but wrote no
/// record, so peers never learned the title.
#[test]
fn a_new_conversation_title_on_an_unchanged_message_propagates() {
    let a = node(1, "a");
    let b = node(2, "b");
    capture(&a, vec![row("c", "1", "same text")]);
    sync(&a.store, &b.store, 10);
    let mut retitled = row("c", "1", "same text");
    let conv = retitled.conversation.as_mut().unwrap();
    conv.title = Some("a better title".into());
    conv.last_ts = Some(2000);
    let s = capture(&a, vec![retitled]);
    assert_eq!(s.updated, 1);
    sync(&a.store, &b.store, 10);
    let title = export(&b.store)[0]
        .conversation
        .as_ref()
        .unwrap()
        .title
        .clone();
    assert_eq!(title.as_deref(), Some("a better title"));
    assert_converged(&[&a.store, &b.store]);
}

#[test]
fn gaps_and_identity_clashes_are_refused_and_change_nothing() {
    let a = node(1, "a");
    let b = node(2, "b");
    capture(&a, (0..5).map(|i| row("c", &i.to_string(), "x")).collect());
    let ranges = [Range {
        node: a.store.me().id.clone(),
        stream: StreamName::memory(),
        after: 2,
    }];
    let read = a.store.read_ranges(&ranges, 100, usize::MAX).unwrap();
    let batch = read.batches[0].clone();
    let err = b
        .store
        .apply(vec![batch.clone()], Durability::Full, 0)
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Gap {
                have: 0,
                got: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(b.store.heads().unwrap().is_empty());

    // Records under b's own id signed by a: refused, nothing applied.
    let mut forged = batch.clone();
    forged.node = b.store.me().id.clone();
    forged.start = 1;
    let summary = b.store.apply(vec![forged], Durability::Full, 0).unwrap();
    assert_eq!(summary.refused.len(), 1, "{summary:?}");
    assert_eq!(summary.refused[0].kind, selves_store::RefusalKind::Forged);
    assert_eq!(summary.accepted, 0);
    assert_eq!(b.store.counts().unwrap().rows, 0);
}

#[test]
fn void_records_hold_their_place() {
    let a = node(1, "a");
    let b = node(2, "b");
    let batch = signed(
        &a,
        &key(1),
        StreamName::memory(),
        1,
        vec![
            Record::Row(Box::new(row("c", "1", "good"))),
            Record::Refused {
                why: "bad upstream".into(),
                d: sign::Digest([7; 32]),
            },
            Record::Row(Box::new({
                let mut r = row("c", "3", "no source");
                r.source.clear();
                r
            })),
            Record::Row(Box::new(row("c", "4", "good too"))),
        ],
    );
    let summary = b.store.apply(vec![batch], Durability::Full, 0).unwrap();
    assert_eq!(summary.accepted, 4);
    assert_eq!(summary.voided.len(), 2);
    assert_eq!(summary.heads[0].seq, 4);
    assert_eq!(b.store.counts().unwrap().rows, 2);
    // Relaying keeps the void in place.
    let c = node(3, "c");
    sync(&b.store, &c.store, 100);
    assert_converged(&[&b.store, &c.store]);
    assert_eq!(b.store.check().unwrap(), Vec::<String>::new());
}

#[test]
fn node_cards_relay_newest_wins_and_forged_cards_are_void() {
    let (a, b, c) = (node(1, "a"), node(2, "b"), node(3, "c"));
    a.store
        .write_own_card(100, |card| card.role = "hub".into())
        .unwrap();
    let (second, seq) = a
        .store
        .write_own_card(50, |card| card.location = "VPS".into())
        .unwrap();
    // Stamped past the card it replaces, whatever the clock said.
    assert_eq!((second.updated_at, seq), (101, 2));
    assert_eq!(second.role, "hub");
    // A relays to C through B: C holds A's newest card.
    sync(&a.store, &b.store, 1);
    sync(&b.store, &c.store, 1);
    let held = c.store.card(&a.store.me().id).unwrap().unwrap();
    assert_eq!(held, second);
    assert_eq!(
        c.store
            .head(&a.store.me().id, &StreamName::nodes())
            .unwrap(),
        2
    );
    assert!(c.store.check().unwrap().is_empty());

    // B may not speak for C: a card for C in B's log is void, and C's
    // card held elsewhere is untouched.
    let forged =
        // Stamped past any real card, so only the rule keeps it out.
        selves_wire::card::NodeCard::new(c.store.me().id.clone(), "c".parse().unwrap(), selves_wire::row::MAX_MS);
    let batch = signed(
        &b,
        &key(2),
        StreamName::nodes(),
        1,
        vec![Record::Node(Box::new(forged))],
    );
    let summary = a.store.apply(vec![batch], Durability::Full, 0).unwrap();
    assert_eq!(summary.voided.len(), 1, "{summary:?}");
    assert!(summary.voided[0].reason.contains("another"));
    assert!(a.store.card(&c.store.me().id).unwrap().is_none());
    // A row in the nodes stream, or a card in the memory stream, is void.
    let batch = signed(
        &c,
        &key(3),
        StreamName::memory(),
        1,
        vec![Record::Node(Box::new(selves_wire::card::NodeCard::new(
            c.store.me().id.clone(),
            "c".parse().unwrap(),
            1,
        )))],
    );
    let summary = a.store.apply(vec![batch], Durability::Full, 0).unwrap();
    assert_eq!(summary.voided.len(), 1);
    assert_eq!(a.store.cards().unwrap().len(), 1);
}

/// A word in more messages than the rank window ranks the newest of them;
/// a filter that the newest do not pass looks further back.
#[test]
fn a_common_word_ranks_the_newest_and_filters_look_further_back() {
    let a = node(1, "a");
    let mut first = row("old", "0", "common word from long ago");
    first.origin = Some("vps".into());
    let mut rows = vec![first];
    for i in 1..=selves_store::search::RANK_WINDOW + 100 {
        rows.push(row("new", &i.to_string(), "common word again"));
    }
    capture(&a, rows);
    let q = |origin: Option<&str>, since: Option<i64>| SearchQuery {
        text: "common".into(),
        origin: origin.map(Into::into),
        since,
        limit: 10,
        ..Default::default()
    };
    let hits = a.store.search(&q(None, None)).unwrap();
    assert_eq!(hits.len(), 10);
    assert!(hits.iter().all(|h| h.row.conversation_id == "new"));
    let hits = a.store.search(&q(Some("vps"), None)).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].row.conversation_id, "old");
    assert!(
        a.store
            .search(&q(Some("vps"), Some(1001)))
            .unwrap()
            .is_empty()
    );
    assert_eq!(a.store.search(&q(None, Some(1000))).unwrap().len(), 10);
}

#[test]
fn search_accepts_any_text_and_follows_edits() {
    let a = node(1, "a");
    let mut other = row("c", "3", "zebra from elsewhere");
    other.origin = Some("vps".into());
    capture(
        &a,
        vec![
            row("c", "1", "the quick-brown fox likes c++ and it's fine"),
            row("c", "2", "lazy dog"),
            other,
        ],
    );
    let q = |text: &str| SearchQuery {
        text: text.into(),
        limit: 10,
        since: None,
        ..Default::default()
    };
    for hostile in [
        "quick-brown",
        "c++",
        "it's",
        "\"fox",
        "fox)",
        "NEAR(fox",
        "AND",
        "*",
    ] {
        a.store.search(&q(hostile)).unwrap();
    }
    assert_eq!(a.store.search(&q("quick-brown")).unwrap().len(), 1);
    assert_eq!(a.store.search(&q("DOG")).unwrap().len(), 1);
    assert!(matches!(
        a.store.search(&q("  ")),
        Err(StoreError::EmptyQuery)
    ));

    // Filters.
    let mut by_origin = q("zebra");
    by_origin.origin = Some("a".into());
    assert_eq!(a.store.search(&by_origin).unwrap().len(), 0);
    by_origin.origin = Some("vps".into());
    assert_eq!(a.store.search(&by_origin).unwrap().len(), 1);
    let mut by_source = q("dog");
    by_source.source = Some("elsewhere".into());
    assert_eq!(a.store.search(&by_source).unwrap().len(), 0);

    // An edit replaces the indexed words.
    let mut edit = row("c", "2", "sleepy cat");
    edit.edited_at = Some(9);
    capture(&a, vec![edit]);
    assert_eq!(a.store.search(&q("dog")).unwrap().len(), 0);
    assert_eq!(a.store.search(&q("cat")).unwrap().len(), 1);
    assert_eq!(a.store.index_lag().unwrap(), 0);
    assert_eq!(a.store.check().unwrap(), Vec::<String>::new());
}

#[test]
fn search_index_is_rebuilt_when_it_belongs_to_another_database() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StorePaths::in_dir(dir.path());
    let id = key(1).public().node_id();
    {
        let s = Store::open(&paths, &id, &"a".parse().unwrap(), key(1)).unwrap();
        s.capture(vec![row("c", "1", "apple")], &CaptureOptions::default())
            .unwrap();
        assert_eq!(
            s.search(&SearchQuery {
                text: "apple".into(),
                limit: 5,
                since: None,
                ..Default::default()
            })
            .unwrap()
            .len(),
            1
        );
    }
    // Replace the main database; the old index must not be trusted.
    std::fs::remove_file(&paths.db).unwrap();
    let _ = std::fs::remove_file(dir.path().join("selves.db-wal"));
    let _ = std::fs::remove_file(dir.path().join("selves.db-shm"));
    let s = Store::open(&paths, &id, &"a".parse().unwrap(), key(1)).unwrap();
    s.capture(vec![row("c", "9", "banana")], &CaptureOptions::default())
        .unwrap();
    let hits = s
        .search(&SearchQuery {
            text: "apple".into(),
            limit: 5,
            since: None,
            ..Default::default()
        })
        .unwrap();
    assert!(hits.is_empty(), "stale index entries were served");
}

#[test]
fn a_database_of_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StorePaths::in_dir(dir.path());
    Store::open(
        &paths,
        &key(1).public().node_id(),
        &"a".parse().unwrap(),
        key(1),
    )
    .unwrap();
    let err = Store::open(
        &paths,
        &key(2).public().node_id(),
        &"a".parse().unwrap(),
        key(2),
    )
    .err()
    .unwrap();
    assert!(matches!(err, StoreError::WrongNode { .. }), "{err}");
    // A key that cannot speak for the node's id is refused.
    let err = Store::open(
        &paths,
        &key(1).public().node_id(),
        &"a".parse().unwrap(),
        key(2),
    )
    .err()
    .unwrap();
    assert!(matches!(err, StoreError::WrongKey(_)), "{err}");
}

#[test]
fn tokens_claim_expire_revoke_and_rotate() {
    use selves_store::AuthOutcome;
    use selves_wire::Token;
    let a = node(1, "a");
    let peer = "laptop".parse().unwrap();
    let t1 = Token::from_bytes([1; 32]);
    a.store
        .mint_token(&peer, &t1, 1_000, "h", 1, false, 0)
        .unwrap();
    // Unused past its deadline: expired.
    assert_eq!(
        a.store.authenticate(&t1, 2_000).unwrap(),
        AuthOutcome::Expired("laptop".into())
    );
    // Re-inviting an unused grant is allowed; the first hello claims it,
    // bound to the caller's key.
    let t2 = Token::from_bytes([2; 32]);
    a.store
        .mint_token(&peer, &t2, 5_000, "h", 1, false, 2_000)
        .unwrap();
    assert_eq!(
        a.store.authenticate(&t1, 2_000).unwrap(),
        AuthOutcome::Unknown
    );
    assert_eq!(
        a.store.authenticate(&t2, 3_000).unwrap(),
        AuthOutcome::Ok(peer.clone())
    );
    let (b, c) = (key(2).public(), key(3).public());
    assert_eq!(
        a.store
            .claim_token(&peer, &b.node_id(), &b, Some("10.0.0.2"), 3_000)
            .unwrap(),
        selves_store::Claim::Bound
    );
    // Another node with the same token is refused, and noted.
    assert!(matches!(
        a.store
            .claim_token(&peer, &c.node_id(), &c, Some("10.0.0.3"), 3_500)
            .unwrap(),
        selves_store::Claim::Taken(_)
    ));
    let grant = &a.store.token_grants().unwrap()[0];
    assert!(grant.bound);
    assert_eq!(grant.refused.len(), 1);
    assert_eq!(grant.refused[0].1.as_deref(), Some("10.0.0.3"));
    // Claimed tokens do not expire.
    assert_eq!(
        a.store.authenticate(&t2, 9_000).unwrap(),
        AuthOutcome::Ok(peer.clone())
    );
    // A token in use is not replaced by a second invite…
    let t3 = Token::from_bytes([3; 32]);
    assert!(matches!(
        a.store.mint_token(&peer, &t3, 20_000, "h", 1, false, 9_000),
        Err(StoreError::TokenInUse(_))
    ));
    // …but rotation replaces it and cuts the old one off.
    a.store
        .mint_token(&peer, &t3, 20_000, "h", 1, true, 9_000)
        .unwrap();
    assert_eq!(
        a.store.authenticate(&t2, 9_500).unwrap(),
        AuthOutcome::Unknown
    );
    assert_eq!(
        a.store.authenticate(&t3, 9_500).unwrap(),
        AuthOutcome::Ok(peer.clone())
    );
    // Revocation is per peer.
    let other = "phone".parse().unwrap();
    let t4 = Token::from_bytes([4; 32]);
    a.store
        .mint_token(&other, &t4, 20_000, "h", 1, false, 9_000)
        .unwrap();
    assert!(a.store.revoke_token("laptop", 10_000).unwrap());
    assert_eq!(
        a.store.authenticate(&t3, 10_001).unwrap(),
        AuthOutcome::Revoked("laptop".into())
    );
    assert_eq!(
        a.store.authenticate(&t4, 10_001).unwrap(),
        AuthOutcome::Ok(other)
    );
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Op {
    /// Node `at` captures a new row or a new version of one.
    Write {
        at: usize,
        msg: u8,
        edited_at: Option<u8>,
        text: u8,
        title: u8,
    },
    /// Nodes `a` and `b` sync, moving `batch` records per request.
    Sync { a: usize, b: usize, batch: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0..3usize,
            0..6u8,
            proptest::option::of(0..4u8),
            0..4u8,
            0..3u8
        )
            .prop_map(|(at, msg, edited_at, text, title)| Op::Write {
                at,
                msg,
                edited_at,
                text,
                title
            }),
        (0..3usize, 0..3usize, 1..5usize).prop_map(|(a, b, batch)| Op::Sync { a, b, batch }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever happens in whatever order, once every pair has synced all
    /// nodes hold the same heads, digest and rows: replication is
    /// commutative, idempotent and loses nothing.
    #[test]
    fn any_history_converges(ops in proptest::collection::vec(op(), 1..40)) {
        let nodes = [node(1, "a"), node(2, "b"), node(3, "c")];
        let mut written = std::collections::BTreeSet::new();
        for op in ops {
            match op {
                Op::Write { at, msg, edited_at, text, title } => {
                    let mut r = row("conv", &msg.to_string(), &format!("text {text}"));
                    r.edited_at = edited_at.map(i64::from);
                    r.conversation.as_mut().unwrap().title = Some(format!("t{title}"));
                    r.conversation.as_mut().unwrap().last_ts = Some(1000 + i64::from(title));
                    capture(&nodes[at], vec![r]);
                    written.insert(msg);
                }
                Op::Sync { a, b, batch } if a != b => {
                    sync(&nodes[a].store, &nodes[b].store, batch);
                }
                Op::Sync { .. } => {}
            }
        }
        for _ in 0..2 {
            sync(&nodes[0].store, &nodes[1].store, 3);
            sync(&nodes[1].store, &nodes[2].store, 3);
        }
        let stores: Vec<&Store> = nodes.iter().map(|n| &n.store).collect();
        assert_converged(&stores);
        prop_assert_eq!(export(&nodes[0].store).len(), written.len());
    }
}

fn open_at(dir: &std::path::Path, seed: [u8; 32], name: &str) -> Store {
    let k = NodeKey::from_seed(seed);
    Store::open(
        &StorePaths::in_dir(dir),
        &k.public().node_id(),
        &name.parse().unwrap(),
        k,
    )
    .unwrap()
}

fn texts(s: &Store) -> Vec<String> {
    let mut t: Vec<String> = export(s).into_iter().map(|r| r.text).collect();
    t.sort();
    t
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn tampered_or_forged_records_are_refused_and_the_real_ones_still_arrive() {
    let (a, b, c) = (node(1, "a"), node(2, "b"), node(3, "c"));
    capture(
        &a,
        vec![row("c", "1", "real one"), row("c", "2", "real two")],
    );
    pull(&b.store, &a.store, 100);
    // B relays A's records with one text changed: the signature fails.
    let ranges = [Range {
        node: a.store.me().id.clone(),
        stream: StreamName::memory(),
        after: 0,
    }];
    let mut read = b.store.read_ranges(&ranges, 100, usize::MAX).unwrap();
    if let Record::Row(r) = &mut read.batches[0].records[1] {
        r.text = "FORGED: transfer approved".into();
    }
    let summary = c.store.apply(read.batches, Durability::Full, 0).unwrap();
    assert_eq!(summary.refused.len(), 1, "{summary:?}");
    assert_eq!(summary.refused[0].kind, selves_store::RefusalKind::Forged);
    assert_eq!(c.store.counts().unwrap().rows, 0);
    // B writes into A's log with its own key: refused too.
    let mut forged = row("c", "9", "FORGED");
    forged.origin = Some("a".into());
    let batch = signed(
        &a,
        &key(2),
        StreamName::memory(),
        1,
        vec![Record::Row(Box::new(forged))],
    );
    let summary = c.store.apply(vec![batch], Durability::Full, 0).unwrap();
    assert_eq!(summary.refused.len(), 1);
    assert!(
        summary.refused[0].reason.contains("not the key"),
        "{summary:?}"
    );
    // The real records still arrive, whole.
    pull(&c.store, &b.store, 1);
    assert_eq!(texts(&c.store), ["real one", "real two"]);
    assert_converged(&[&a.store, &b.store, &c.store]);
    assert!(c.store.check().unwrap().is_empty());
}

#[test]
fn an_edit_is_credited_to_the_node_that_wrote_it() {
    let (a, b) = (node(1, "a"), node(2, "b"));
    capture(&a, vec![row("c", "1", "original")]);
    sync(&a.store, &b.store, 10);
    let mut edit = row("c", "1", "edited on b");
    edit.edited_at = Some(5);
    edit.origin = Some("a".into());
    capture(&b, vec![edit]);
    sync(&a.store, &b.store, 10);
    let q = SearchQuery {
        text: "edited".into(),
        limit: 5,
        since: None,
        ..Default::default()
    };
    let hit = &a.store.search(&q).unwrap()[0];
    assert_eq!(hit.row.origin.as_deref(), Some("a"));
    let author = hit.author.as_deref().unwrap();
    assert!(
        author == "b" || author == b.store.me().id.as_str(),
        "{author}"
    );
}

#[test]
fn a_restored_home_recovers_its_own_log_and_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (home, backup) = (root.path().join("home"), root.path().join("backup"));
    std::fs::create_dir_all(&home).unwrap();
    let hub = node(9, "hub");
    let seed = [4; 32];
    {
        let a = open_at(&home, seed, "a");
        a.capture(vec![row("c", "1", "alpha")], &CaptureOptions::default())
            .unwrap();
        sync(&a, &hub.store, 10);
    }
    copy_dir(&home, &backup);
    {
        let a = open_at(&home, seed, "a");
        a.capture(vec![row("c", "2", "golf")], &CaptureOptions::default())
            .unwrap();
        sync(&a, &hub.store, 10);
    }
    std::fs::remove_dir_all(&home).unwrap();
    copy_dir(&backup, &home);
    let a = open_at(&home, seed, "a");
    a.capture(vec![row("c", "3", "hotel")], &CaptureOptions::default())
        .unwrap();
    // The restored home pulls its own log from the start (as a round that
    // sees it diverge does), finds the fork, and recovers.
    let ranges = [Range {
        node: a.me().id.clone(),
        stream: StreamName::memory(),
        after: 0,
    }];
    let read = hub.store.read_ranges(&ranges, 100, usize::MAX).unwrap();
    let summary = a.apply(read.batches, Durability::Full, 0).unwrap();
    assert!(summary.refused.is_empty(), "{summary:?}");
    assert_eq!(a.reissue_pending(0).unwrap(), 1);
    assert!(a.recovered().unwrap().is_some());
    assert!(a.clash().unwrap().is_none());
    sync(&a, &hub.store, 10);
    assert_eq!(texts(&a), ["alpha", "golf", "hotel"]);
    assert_converged(&[&a, &hub.store]);
    assert!(a.check().unwrap().is_empty(), "{:?}", a.check());
    assert!(hub.store.forks().unwrap().is_empty());
}

#[test]
fn a_key_in_two_homes_is_a_fork_until_the_copy_takes_a_new_identity() {
    let root = tempfile::tempdir().unwrap();
    let (one, two) = (root.path().join("one"), root.path().join("two"));
    std::fs::create_dir_all(&one).unwrap();
    let hub = node(9, "hub");
    let seed = [5; 32];
    {
        let a = open_at(&one, seed, "a");
        a.capture(
            vec![row("c", "1", "shared past")],
            &CaptureOptions::default(),
        )
        .unwrap();
        sync(&a, &hub.store, 10);
    }
    copy_dir(&one, &two);
    let original = open_at(&one, seed, "a");
    let copy = open_at(&two, seed, "a");
    original
        .capture(vec![row("c", "2", "juliet")], &CaptureOptions::default())
        .unwrap();
    copy.capture(vec![row("c", "3", "india")], &CaptureOptions::default())
        .unwrap();
    pull(&hub.store, &original, 10);
    // The copy's record 2 is signed with the same key: a fork, refused.
    let ranges = [Range {
        node: copy.me().id.clone(),
        stream: StreamName::memory(),
        after: 1,
    }];
    let read = copy.read_ranges(&ranges, 100, usize::MAX).unwrap();
    let summary = hub.store.apply(read.batches, Durability::Full, 0).unwrap();
    assert_eq!(summary.refused.len(), 1);
    assert_eq!(summary.refused[0].kind, selves_store::RefusalKind::Fork);
    assert_eq!(hub.store.forks().unwrap().len(), 1);
    assert_eq!(texts(&hub.store), ["juliet", "shared past"]);
    // The copy learns of the fork (as its next round would) and takes a
    // new identity: its branch is withdrawn, its content written again.
    let read = hub.store.read_ranges(&ranges, 100, usize::MAX).unwrap();
    let mut batch = read.batches;
    batch[0].prev = None;
    let summary = copy.apply(batch.clone(), Durability::Full, 0).unwrap();
    assert!(summary.refused.is_empty(), "a first own fork is recovered");
    drop(copy);
    // A second home writing again is a clash: the copy writes, the
    // original's next record forks it again.
    let copy = open_at(&two, seed, "a");
    copy.reissue_pending(0).unwrap();
    original
        .capture(vec![row("c", "4", "kilo")], &CaptureOptions::default())
        .unwrap();
    pull(&hub.store, &original, 10);
    let ranges0 = [Range {
        node: copy.me().id.clone(),
        stream: StreamName::memory(),
        after: 0,
    }];
    let read = hub.store.read_ranges(&ranges0, 100, usize::MAX).unwrap();
    let summary = copy.apply(read.batches, Durability::Full, 0).unwrap();
    // A clash: the copy withdraws its branch (so the original hears of
    // it) and takes the original's, but keeps its own content unwritten.
    assert!(summary.refused.is_empty(), "{summary:?}");
    assert!(copy.clash().unwrap().is_some());
    assert_eq!(copy.reissue_pending(0).unwrap(), 0);
    original
        .take_abandoned(&copy.abandoned().unwrap(), 0)
        .unwrap();
    assert!(original.clash().unwrap().is_some(), "the original is told");
    let new_id = copy
        .adopt_identity(&NodeKey::from_seed([6; 32]), 0)
        .unwrap();
    drop(copy);
    let copy = open_at(&two, [6; 32], "a");
    assert_eq!(copy.me().id, new_id);
    copy.reissue_pending(0).unwrap();
    hub.store
        .take_abandoned(&copy.abandoned().unwrap(), 0)
        .unwrap();
    sync(&copy, &hub.store, 10);
    pull(&original, &hub.store, 10);
    original
        .take_abandoned(&hub.store.abandoned().unwrap(), 0)
        .unwrap();
    for s in [&copy, &hub.store, &original] {
        assert_eq!(texts(s), ["india", "juliet", "kilo", "shared past"]);
    }
    assert!(
        hub.store.forks().unwrap().is_empty(),
        "{:?}",
        hub.store.forks()
    );
    assert!(original.clash().unwrap().is_none());
    assert!(copy.clash().unwrap().is_none());
}

#[test]
fn a_home_from_before_keys_is_migrated_in_place_and_its_history_relays() {
    // A node made before keys: a random id (not derived from a key) and
    // records with no digest, chain or signature, as version 1 left them.
    let dir = tempfile::tempdir().unwrap();
    let legacy_id = selves_wire::NodeId::from_bytes([7; 16]);
    assert!(!legacy_id.is_derived());
    {
        let s = Store::open(
            &StorePaths::in_dir(dir.path()),
            &legacy_id,
            &"old".parse().unwrap(),
            key(7),
        )
        .unwrap();
        s.capture(
            (0..100)
                .map(|i| row("c", &i.to_string(), "old words"))
                .collect(),
            &CaptureOptions::default(),
        )
        .unwrap();
    }
    {
        let conn = rusqlite::Connection::open(dir.path().join("selves.db")).unwrap();
        conn.execute_batch(
            "UPDATE records SET digest = NULL, chain = NULL, sig = NULL;
             UPDATE heads SET legacy = 0;
             UPDATE nodes SET key = NULL;
             UPDATE messages SET author = NULL;
             DELETE FROM meta WHERE key = 'chained';",
        )
        .unwrap();
    }
    // The upgrade: the same id, now bound to its key; its history is
    // chained as carried from before and signed at its head.
    let old = Store::open(
        &StorePaths::in_dir(dir.path()),
        &legacy_id,
        &"old".parse().unwrap(),
        key(7),
    )
    .unwrap();
    assert!(old.check().unwrap().is_empty());
    let (b, c) = (node(2, "b"), node(3, "c"));
    sync(&old, &b.store, 30);
    sync(&b.store, &c.store, 30);
    assert_eq!(c.store.counts().unwrap().rows, 100);
    // What it writes now is signed like any node's, and relays the same.
    old.capture(
        vec![row("c", "new", "new words")],
        &CaptureOptions::default(),
    )
    .unwrap();
    sync(&old, &b.store, 30);
    sync(&b.store, &c.store, 30);
    assert_converged(&[&old, &b.store, &c.store]);
    // Another key cannot speak for the old id once it is bound.
    let forged = RecordBatch {
        key: Some(key(9).public()),
        ..c.store
            .read_ranges(
                &[Range {
                    node: legacy_id.clone(),
                    stream: StreamName::memory(),
                    after: 100,
                }],
                10,
                usize::MAX,
            )
            .unwrap()
            .batches[0]
            .clone()
    };
    let d = node(4, "d");
    pull(&d.store, &c.store, 200);
    let mut forged = forged;
    forged.start = 102;
    let summary = d.store.apply(vec![forged], Durability::Full, 0).unwrap();
    assert_eq!(summary.refused.len(), 1, "{summary:?}");
}

/// A store opened read-only (as on a full disk) reads everything, finds
/// rows the search index never caught up with, refuses every write with
/// the reason, and creates no file beside the database.
#[test]
fn a_read_only_store_reads_all_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StorePaths::in_dir(dir.path());
    let id = key(1).public().node_id();
    {
        let store = Store::open(&paths, &id, &"a".parse().unwrap(), key(1)).unwrap();
        store
            .capture(
                vec![
                    row("c", "1", "indexed walrus"),
                    row("c", "2", "lazy walrus"),
                ],
                &CaptureOptions::default(),
            )
            .unwrap();
        store.catch_up_index(|_| {}).unwrap();
        // Written after the index last caught up.
        store
            .capture(
                vec![row("c", "3", "late walrus")],
                &CaptureOptions::default(),
            )
            .unwrap();
    }
    let files = |d: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = files(dir.path());
    let ro = Store::open_read_only(&paths, &id, key(1)).unwrap();
    assert!(ro.read_only());
    let hits = ro
        .search(&SearchQuery {
            text: "walrus".into(),
            limit: 10,
            since: None,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert!(hits.iter().any(|h| h.row.text == "late walrus"));
    assert_eq!(export(&ro).len(), 3);
    assert!(ro.check().unwrap().is_empty());
    let err = ro
        .capture(vec![row("c", "4", "refused")], &CaptureOptions::default())
        .unwrap_err();
    assert!(matches!(err, StoreError::DiskFull(_)), "{err}");
    drop(ro);
    assert_eq!(files(dir.path()), before, "nothing created or removed");
    // Another node's id is refused, as by an ordinary open.
    assert!(Store::open_read_only(&paths, &key(2).public().node_id(), key(2)).is_err());
}
