//! The native protocol probed with raw HTTPS requests: limits, malformed
//! input, per-record refusal, rate limits, slow clients.

use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{
    Node, Prober, Server, blob_fingerprint, blob_token, read_response, request, tls_stream,
};

struct Hub {
    node: Node,
    server: Server,
    token: String,
    pin: selves_wire::CertFingerprint,
    /// A peer with its own key that has said hello (its token is bound).
    prober: Prober,
}

fn hub(extra: &[&str]) -> Hub {
    let node = Node::new("hub");
    let server = node.serve(extra);
    let blob = node.invite("prober", &server);
    let prober = Prober::new(&blob, server.addr, 42);
    let hello = prober.hello();
    assert_eq!(hello.status, 200, "{hello:?}");
    Hub {
        token: blob_token(&blob),
        pin: blob_fingerprint(&blob),
        node,
        server,
        prober,
    }
}

impl Hub {
    fn post(&self, path: &str, body: &[u8]) -> crate::harness::RawResponse {
        self.prober.post(path, body)
    }

    /// The prober's node id: the writer of what it pushes.
    fn writer(&self) -> String {
        self.prober.id.to_string()
    }

    /// A push of the prober's own memory log from `start`, signed.
    fn push_body(&self, start: u64, records: Vec<serde_json::Value>) -> Vec<u8> {
        self.prober.push_own(start, None, records)
    }
}

fn row(msg: &str, text: &str) -> serde_json::Value {
    json!({"row": {"source": "raw", "conversation_id": "c", "msg_id": msg, "role": "user", "text": text, "ts": 1}})
}

/// An unsigned push body, for requests refused before any record is read.
fn push_body(start: u64, records: Vec<serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"batches": [{"node": "0123456789abcdef0123456789abcdef", "stream": "memory", "start": start, "records": records}]}))
        .unwrap()
}

#[test]
fn missing_malformed_and_unknown_tokens_get_401() {
    let h = hub(&[]);
    let body = push_body(1, vec![row("1", "x")]);
    let none = request(h.server.addr, h.pin, "POST", "/v1/push", None, &[], &body);
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["error"], "unauthorized");
    let bad = request(
        h.server.addr,
        h.pin,
        "POST",
        "/v1/push",
        Some("not-hex"),
        &[],
        &body,
    );
    assert_eq!(bad.status, 401);
    let unknown = request(
        h.server.addr,
        h.pin,
        "POST",
        "/v1/push",
        Some(&"1".repeat(64)),
        &[],
        &body,
    );
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.json()["detail"], "unknown token");
    assert_eq!(h.node.rows(), 0, "a refused request changed the store");
}

#[test]
fn bodies_over_the_limit_get_413_even_when_compressed() {
    let h = hub(&["--max-body-bytes", "100000"]);
    let big = push_body(1, vec![row("1", &"x".repeat(150_000))]);
    let resp = h.post("/v1/push", &big);
    assert_eq!(resp.status, 413, "{resp:?}");
    assert_eq!(resp.json()["error"], "payload_too_large");

    // 4 MB of JSON that gzips to a few KB: the limit counts what it
    // inflates to.
    let bomb = push_body(1, vec![row("1", &" ".repeat(4 << 20))]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&bomb).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 100_000);
    let proof = h.prober.proof_header();
    let resp = request(
        h.server.addr,
        h.pin,
        "POST",
        "/v1/push",
        Some(&h.token),
        &[("Content-Encoding", "gzip"), ("selves-proof", &proof)],
        &gz,
    );
    assert_eq!(resp.status, 413, "{resp:?}");

    // A small compressed body is accepted.
    let small = h.push_body(1, vec![row("1", "compressed")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&small).unwrap();
    let proof = h.prober.proof_header();
    let resp = request(
        h.server.addr,
        h.pin,
        "POST",
        "/v1/push",
        Some(&h.token),
        &[("Content-Encoding", "gzip"), ("selves-proof", &proof)],
        &gz.finish().unwrap(),
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(h.node.rows(), 1);
}

#[test]
fn too_many_records_and_malformed_bodies_get_400_and_change_nothing() {
    // The least a server may set: an author's signed span (64 records).
    let h = hub(&["--max-push-records", "64"]);
    let too_many = (0..65).map(|i| row(&i.to_string(), "x")).collect();
    let resp = h.post("/v1/push", &push_body(1, too_many));
    assert_eq!(resp.status, 400, "{resp:?}");
    assert!(
        resp.json()["detail"]
            .as_str()
            .unwrap()
            .contains("at most 64")
    );

    for body in [
        &b"{not json"[..],
        b"",
        b"[]",
        br#"{"batches": [{"node": "nope", "stream": "memory", "start": 1, "records": []}]}"#,
        br#"{"batches": [{"node": "0123456789abcdef0123456789abcdef", "stream": "../x", "start": 1, "records": []}]}"#,
        // A body that is not UTF-8 at all is not JSON.
        b"{\"batches\": [\xff\xfe]}",
    ] {
        let resp = h.post("/v1/push", body);
        assert_eq!(resp.status, 400, "{:?} → {resp:?}", String::from_utf8_lossy(body));
        assert_eq!(resp.json()["error"], "bad_request");
    }
    let resp = h.post("/v1/pull", b"{\"ranges\": 5}");
    assert_eq!(resp.status, 400);
    let resp = h.post("/v1/push", &push_body(0, vec![row("1", "x")]));
    assert_eq!(resp.status, 400, "seq 0 is refused: {resp:?}");
    let proof = h.prober.proof_header();
    let resp = request(
        h.server.addr,
        h.pin,
        "GET",
        "/v1/nowhere",
        Some(&h.token),
        &[("selves-proof", &proof)],
        b"",
    );
    assert_eq!(resp.status, 404);
    assert_eq!(h.node.rows(), 0);
}

#[test]
fn bad_records_are_refused_alone_and_nul_is_kept_exactly() {
    let h = hub(&[]);
    // A row that parses but is not valid is kept as void (its digest
    // holds its place in the signed chain); the rest go on.
    let mut no_source = row("2", "no source");
    no_source["row"]["source"] = json!("");
    let body = h.push_body(
        1,
        vec![row("1", "first"), no_source, row("3", "nul \u{0} inside")],
    );
    let resp = h.post("/v1/push", &body);
    assert_eq!(resp.status, 200, "{resp:?}");
    let v = resp.json();
    assert_eq!(v["accepted"], 3);
    let voided: Vec<u64> = v["voided"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(voided, vec![2]);
    assert_eq!(v["heads"][0]["seq"], 3);

    let rows = h.node.export();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[1]["text"], "nul \u{0} inside",
        "NUL must be stored exactly"
    );
    h.node.assert_intact();

    // The same push again: all duplicates, nothing changes.
    let again = h.post("/v1/push", &body).json();
    assert_eq!(again["accepted"], 0);
    assert_eq!(again["duplicates"], 3);

    // A record that is not even text (a lone surrogate) has no digest: the
    // batch cannot be proven, and is refused whole, naming why.
    let (batch, _) = Prober::batch(
        &h.prober.key,
        &h.prober.id,
        "memory",
        1,
        None,
        vec![row("1", "first"), row("9", "lone PLACEHOLDER surrogate")],
    );
    let broken = serde_json::to_string(&json!({ "batches": [batch] }))
        .unwrap()
        .replace("PLACEHOLDER", "\\ud800");
    let resp = h.post("/v1/push", broken.as_bytes());
    assert_eq!(resp.status, 200, "{resp:?}");
    let v = resp.json();
    assert_eq!(v["refused"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["accepted"], 0);
    assert_eq!(h.node.rows(), 2);

    // A push that skips ahead is refused as a gap.
    let resp = h.post("/v1/push", &h.push_body(9, vec![row("9", "x")]));
    assert_eq!(resp.status, 409, "{resp:?}");
    assert_eq!(resp.json()["error"], "gap");

    // A relay of the voids keeps their places: a spoke pulls all three.
    let spoke = Node::new("spoke");
    spoke.pair(&h.node, &h.server, "hub");
    let r = spoke.json(&["sync", "--json"]);
    assert_eq!(r[0]["report"]["pulled"], 3, "{r}");
    spoke.ok(&["verify"]);
}

#[test]
fn the_rate_limit_answers_429_with_retry_after_and_the_client_waits() {
    let h = hub(&["--rate-per-minute", "60", "--rate-burst", "3"]);
    let hello = h.prober.hello_body(&h.prober.id, "prober");
    let statuses: Vec<_> = (0..5).map(|_| h.post("/v1/hello", &hello)).collect();
    let limited = statuses
        .iter()
        .find(|r| r.status == 429)
        .expect("no 429 after the burst");
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(limited.json()["error"], "rate_limited");

    // A spoke with its own token syncs through the limit by waiting.
    let spoke = Node::new("spoke");
    spoke.pair(&h.node, &h.server, "hub");
    spoke.import(&crate::harness::rows("r", "c", 8, 20));
    let started = Instant::now();
    let r = spoke.json(&["sync", "--batch", "2", "--json"]);
    assert_eq!(r[0]["ok"], true, "{r}");
    assert_eq!(r[0]["report"]["pushed"], 8);
    assert!(r[0]["report"]["rate_limited"].as_u64().unwrap() > 0, "{r}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the client did not wait"
    );
    assert_eq!(h.node.rows(), 8);
    // `verify` right after, with the spoke's bucket empty, waits too.
    for _ in 0..4 {
        spoke.run(&["verify"]);
    }
    let run = spoke.run(&["verify"]);
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let h = hub(&["--header-timeout-secs", "1"]);
    let mut stream = tls_stream(h.server.addr, h.pin);
    stream
        .write_all(b"POST /v1/hello HTTP/1.1\r\nHost: selves\r\nX-Slow: ")
        .unwrap();
    stream.flush().unwrap();
    let started = Instant::now();
    // The server either answers 408 or just closes; either way the
    // connection ends instead of being held open.
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    loop {
        match std::io::Read::read(&mut stream, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the connection was held open"
    );
    if !got.is_empty() {
        let resp = read_response(&mut &got[..]);
        assert_eq!(resp.status, 408);
    }
    // The server still serves others.
    h.node.ok(&["status"]);
    let spoke = Node::new("spoke");
    spoke.pair(&h.node, &h.server, "hub");
    spoke.ok(&["sync"]);
}

#[test]
fn the_marker_endpoint_refuses_bad_input_and_writes_only_after_seeing() {
    let h = hub(&[]);
    let ask = |seen: &str, write: &str| {
        h.post(
            "/v1/marker",
            &serde_json::to_vec(&json!({"node": h.writer(), "seen": seen, "write": write}))
                .unwrap(),
        )
    };
    let heads = |n: &Node| n.json(&["status", "--json"])["heads"].clone();
    let before = heads(&h.node);

    // Nothing pushed yet: not seen, nothing written.
    let r = ask("m-1", "m-2");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"seen": false, "seq": 0}));
    assert_eq!(heads(&h.node), before);

    for bad in [
        b"{not json".to_vec(),
        serde_json::to_vec(&json!({"node": h.writer(), "seen": "../x", "write": "ok"})).unwrap(),
        serde_json::to_vec(&json!({"node": h.writer(), "seen": "ok", "write": "a b"})).unwrap(),
        serde_json::to_vec(&json!({"node": "nope", "seen": "ok", "write": "ok"})).unwrap(),
        vec![b' '; 5000],
    ] {
        let r = h.post("/v1/marker", &bad);
        assert!(r.status == 400 || r.status == 413, "{r:?}");
    }
    let r = request(
        h.server.addr,
        h.pin,
        "POST",
        "/v1/marker",
        Some(&"0".repeat(64)),
        &[],
        b"{}",
    );
    assert_eq!(r.status, 401, "{r:?}");

    // A card that cannot be rendered on one line, or that speaks for
    // another node, is kept as void and changes no card.
    let (bad, chain) = Prober::batch(
        &h.prober.key,
        &h.prober.id,
        "nodes",
        1,
        None,
        vec![
            json!({"node": {"id": h.writer(), "name": "prober", "updated_at": 1, "role": "a\nb"}}),
            json!({"node": {"id": "fedcba9876543210fedcba9876543210", "name": "other", "updated_at": 1}}),
        ],
    );
    let r = h.post(
        "/v1/push",
        &serde_json::to_vec(&json!({ "batches": [bad] })).unwrap(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["voided"].as_array().unwrap().len(), 2, "{r:?}");
    let card = |marker: &str| {
        let (batch, _) = Prober::batch(
            &h.prober.key,
            &h.prober.id,
            "nodes",
            3,
            Some(chain),
            vec![
                json!({"node": {"id": h.writer(), "name": "prober", "updated_at": 1, "marker": marker}}),
            ],
        );
        serde_json::to_vec(&json!({ "batches": [batch] })).unwrap()
    };

    // Push the card with the marker: now seen, and the hub's own card
    // carries the marker asked for, in its nodes log.
    let pushed = h.post("/v1/push", &card("m-1"));
    assert_eq!(pushed.status, 200, "{pushed:?}");
    let r = ask("m-1", "m-2");
    assert_eq!(r.json()["seen"], true, "{r:?}");
    assert!(r.json()["seq"].as_u64().unwrap() >= 1);
    let cards = h.node.json(&["identity", "show", "--json"]);
    let own = cards
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "hub")
        .unwrap();
    assert_eq!(own["marker"], "m-2", "{cards}");
    h.node.ok(&["check"]);
}

/// Times outside years 1–9999 (a card stamped in the year 10000, a row's
/// `ts` of 253402300800, `edited_at` of i64::MAX or MIN) are refused at the
/// wire as void records, and nothing that displays times can fail.
#[test]
fn times_outside_the_documented_range_are_refused_and_never_crash_a_display() {
    let h = hub(&[]);
    let mut far = row("1", "far future");
    far["row"]["ts"] = json!(253_402_300_800i64);
    let mut max_edit = row("2", "edited at the end of time");
    max_edit["row"]["edited_at"] = json!(i64::MAX);
    let mut min_edit = row("3", "edited before time");
    min_edit["row"]["edited_at"] = json!(i64::MIN);
    let fine = row("4", "an ordinary row");
    let resp = h.post(
        "/v1/push",
        &h.push_body(1, vec![far, max_edit, min_edit, fine]),
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    let voided = resp.json()["voided"].as_array().unwrap().clone();
    assert_eq!(voided.len(), 3, "{resp:?}");
    assert!(
        voided
            .iter()
            .all(|v| v["reason"].as_str().unwrap().contains("outside"))
    );
    let (card, _) = Prober::batch(
        &h.prober.key,
        &h.prober.id,
        "nodes",
        1,
        None,
        vec![
            json!({"node": {"id": h.writer(), "name": "prober", "updated_at": 253_402_300_800_000i64}}),
        ],
    );
    let resp = h.post(
        "/v1/push",
        &serde_json::to_vec(&json!({ "batches": [card] })).unwrap(),
    );
    assert_eq!(
        resp.json()["voided"].as_array().unwrap().len(),
        1,
        "{resp:?}"
    );
    // What displays times works.
    h.node.ok(&["identity", "page"]);
    h.node.ok(&["search", "ordinary"]);
    h.node.ok(&["status"]);
    assert_eq!(h.node.rows(), 1);
    // The same limits hold for what is captured here.
    let file = h.node.dir.path().join("late.jsonl");
    std::fs::write(
        &file,
        json!({"source": "s", "conversation_id": "c", "msg_id": "x", "role": "user",
            "text": "late", "ts": 253_402_300_800i64})
        .to_string(),
    )
    .unwrap();
    let r = h.node.run(&["import", file.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("ts is 253402300800, outside"), "{r:?}");
    assert_eq!(h.node.rows(), 1);
}
