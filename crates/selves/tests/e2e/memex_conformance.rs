//! memex v12 conformance of `selves serve`, written from the spec
//! (seeds/memex-sync.md §Wire protocol) alone: every endpoint, the whole
//! error table, pagination, idempotency, the schema handshake and rate
//! limits, probed with raw HTTPS requests.

use std::io::Write as _;

use serde_json::{Value, json};

use crate::harness::{Node, RawResponse, Server, blob_fingerprint, blob_token, request};

struct Hub {
    node: Node,
    server: Server,
    token: String,
    pin: selves_wire::CertFingerprint,
}

fn hub(extra: &[&str]) -> Hub {
    let node = Node::new("hub");
    let server = node.serve(extra);
    let blob = node.invite("memex-client", &server);
    Hub {
        token: blob_token(&blob),
        pin: blob_fingerprint(&blob),
        node,
        server,
    }
}

impl Hub {
    fn get(&self, path: &str) -> RawResponse {
        request(
            self.server.addr,
            self.pin,
            "GET",
            path,
            Some(&self.token),
            &[],
            b"",
        )
    }
    fn push(&self, rows: &[Value]) -> RawResponse {
        let body = serde_json::to_vec(&json!({ "rows": rows })).unwrap();
        self.push_raw(&body)
    }
    fn push_raw(&self, body: &[u8]) -> RawResponse {
        request(
            self.server.addr,
            self.pin,
            "POST",
            "/sync/push",
            Some(&self.token),
            &[("Content-Type", "application/json")],
            body,
        )
    }
}

/// The keys of a JSON object, sorted (JSON gives them no order).
fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

/// A row as a memex node writes it: every field present, nulls included.
fn row(msg: &str, text: &str) -> Value {
    json!({
        "source": "claude-code",
        "conversation_id": "claude-code-c1",
        "msg_id": msg,
        "uuid": null,
        "role": "user",
        "sender": "me",
        "text": text,
        "ts": 1716800000,
        "edited_at": null,
        "channel": null,
        "metadata": "{\"k\":1}",
        "conversation": {
            "title": "a memex conversation",
            "first_ts": 1716700000,
            "last_ts": 1716800000,
            "project_path": "/Users/x/work",
            "parent_conversation_id": null
        }
    })
}

#[test]
fn health_answers_anyone_and_counts_for_token_holders() {
    let h = hub(&[]);
    let open = request(h.server.addr, h.pin, "GET", "/sync/health", None, &[], b"").json();
    assert_eq!(open["schema_version"], 12);
    assert!(open["version"].is_string());
    assert!(open.get("row_count").is_none(), "{open}");

    h.push(&[row("1", "a"), row("2", "b")]);
    let full = h.get("/sync/health").json();
    assert_eq!(
        keys(&full),
        ["last_id", "row_count", "schema_version", "version"]
    );
    assert_eq!(full["row_count"], 2);
    assert!(full["last_id"].as_i64().unwrap() >= 2);

    let wrong = request(
        h.server.addr,
        h.pin,
        "GET",
        "/sync/health",
        Some(&"1".repeat(64)),
        &[],
        b"",
    );
    assert_eq!(wrong.status, 401);
}

#[test]
fn push_then_pull_round_trips_the_row_shape() {
    let h = hub(&[]);
    let resp = h.push(&[row("1", "hello"), row("2", "привет 🙂")]);
    assert_eq!(resp.status, 200, "{resp:?}");
    let v = resp.json();
    assert_eq!(
        (
            v["accepted"].as_u64(),
            v["deduplicated"].as_u64(),
            v["skipped"].as_u64()
        ),
        (Some(2), Some(0), Some(0))
    );
    assert!(v["last_id"].as_i64().unwrap() >= 2);
    assert!(v.get("refused").is_none(), "no refusals, no field: {v}");

    let pull = h.get("/sync/pull?since=0&limit=500");
    assert_eq!(pull.status, 200);
    assert!(
        pull.body.is_ascii(),
        "pull bodies are ASCII (non-ASCII escaped)"
    );
    let p = pull.json();
    assert_eq!(p["has_more"], false);
    assert!(
        p["server_now"].as_i64().unwrap() > 1_700_000_000_000,
        "server_now is ms"
    );
    let rows = p["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        keys(&rows[0]),
        [
            "channel",
            "conversation",
            "conversation_id",
            "edited_at",
            "metadata",
            "msg_id",
            "origin",
            "role",
            "sender",
            "source",
            "text",
            "ts",
            "uuid"
        ],
        "every field, nulls included"
    );
    assert_eq!(
        keys(&rows[0]["conversation"]),
        [
            "first_ts",
            "last_ts",
            "parent_conversation_id",
            "project_path",
            "title"
        ]
    );
    assert_eq!(rows[1]["text"], "привет 🙂");
    assert_eq!(rows[0]["metadata"], "{\"k\":1}");
    assert!(rows[0]["origin"].is_null(), "provenance is never invented");
    assert!(
        rows[0]["uuid"].as_str().unwrap().len() == 36,
        "a uuid is given when absent"
    );
    assert_eq!(rows[0]["conversation"]["title"], "a memex conversation");
    assert_eq!(rows[0]["conversation"]["project_path"], "/Users/x/work");
    assert_eq!(rows[0]["conversation"]["first_ts"], 1716700000);
    assert_eq!(
        p["next_cursor"], v["last_id"],
        "the cursor is the last row's id"
    );
}

#[test]
fn pagination_at_exact_multiples_of_the_limit() {
    let h = hub(&[]);
    let rows: Vec<Value> = (0..1000).map(|i| row(&i.to_string(), "x")).collect();
    assert_eq!(h.push(&rows).json()["accepted"], 1000);

    let first = h.get("/sync/pull?since=0&limit=500").json();
    assert_eq!(first["rows"].as_array().unwrap().len(), 500);
    assert_eq!(first["has_more"], true);
    let c1 = first["next_cursor"].as_i64().unwrap();
    let second = h.get(&format!("/sync/pull?since={c1}&limit=500")).json();
    assert_eq!(second["rows"].as_array().unwrap().len(), 500);
    assert_eq!(
        second["has_more"], false,
        "exactly 1000 rows: no third page"
    );
    let c2 = second["next_cursor"].as_i64().unwrap();
    let third = h.get(&format!("/sync/pull?since={c2}&limit=500")).json();
    assert_eq!(third["rows"].as_array().unwrap().len(), 0);
    assert_eq!(
        third["next_cursor"].as_i64(),
        Some(c2),
        "an empty page keeps the cursor"
    );
    assert_eq!(third["has_more"], false);

    // Defaults and caps.
    assert_eq!(
        h.get("/sync/pull").json()["rows"].as_array().unwrap().len(),
        500
    );
    assert_eq!(
        h.get("/sync/pull?since=0&limit=5000").json()["rows"]
            .as_array()
            .unwrap()
            .len(),
        1000
    );
    // Every message once across the pages.
    let mut ids: Vec<String> = first["rows"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["rows"].as_array().unwrap())
        .map(|r| r["msg_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1000);
}

#[test]
fn the_error_table() {
    let h = hub(&[]);
    // 400: malformed bodies and parameters.
    for body in [&b"{not json"[..], b"{}", b"{\"rows\": 3}", b"[]"] {
        let r = h.push_raw(body);
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(body));
        assert_eq!(r.json()["error"], "bad_request");
    }
    for q in [
        "since=-1",
        "since=abc",
        "since=1.5",
        "limit=0",
        "limit=-3",
        "limit=ten",
    ] {
        let r = h.get(&format!("/sync/pull?{q}"));
        assert_eq!(r.status, 400, "{q}: {r:?}");
        assert_eq!(r.json()["error"], "bad_request");
    }
    let r = h.get("/sync/pull?since=-1");
    assert_eq!(r.json()["detail"], "since must be a non-negative integer");
    // 400: more than 1000 rows.
    let rows: Vec<Value> = (0..1001).map(|i| row(&i.to_string(), "x")).collect();
    let r = h.push(&rows);
    assert_eq!(r.status, 400);
    assert!(r.json()["detail"].as_str().unwrap().contains("1000"));
    // 401: missing, malformed and unknown tokens.
    let body = serde_json::to_vec(&json!({ "rows": [row("1", "x")] })).unwrap();
    for token in [None, Some("nothex"), Some(&*"2".repeat(64))] {
        let r = request(
            h.server.addr,
            h.pin,
            "POST",
            "/sync/push",
            token,
            &[],
            &body,
        );
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"], "unauthorized");
    }
    // 409: a client of another schema version.
    let r = request(
        h.server.addr,
        h.pin,
        "GET",
        "/sync/pull?since=0&schema_version=13",
        Some(&h.token),
        &[],
        b"",
    );
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"], "schema_mismatch");
    assert!(r.json()["detail"].as_str().unwrap().contains("upgrade"));
    let r = h.push_raw(
        &serde_json::to_vec(&json!({"rows": [row("1", "x")], "schema_version": 11})).unwrap(),
    );
    assert_eq!(r.status, 409);
    let r = h.push_raw(
        &serde_json::to_vec(&json!({"rows": [row("1", "x")], "schema_version": 12})).unwrap(),
    );
    assert_eq!(r.status, 200);
    // 413: over 2 MB, plain or compressed.
    let big = serde_json::to_vec(&json!({ "rows": [row("big", &"x".repeat(2_200_000))] })).unwrap();
    let r = h.push_raw(&big);
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "payload_too_large");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&big).unwrap();
    let r = request(
        h.server.addr,
        h.pin,
        "POST",
        "/sync/push",
        Some(&h.token),
        &[("Content-Encoding", "gzip")],
        &gz.finish().unwrap(),
    );
    assert_eq!(r.status, 413);
    // Nothing refused above changed anything.
    assert_eq!(h.node.rows(), 1);
}

#[test]
fn empty_duplicate_and_reordered_pushes() {
    let h = hub(&[]);
    let empty = h.push(&[]).json();
    assert_eq!(
        empty,
        json!({"accepted": 0, "deduplicated": 0, "last_id": 0, "skipped": 0})
    );

    let (a, b, c) = (row("a", "1"), row("b", "2"), row("c", "3"));
    assert_eq!(
        h.push(&[a.clone(), b.clone(), c.clone()]).json()["accepted"],
        3
    );
    let again = h.push(&[c.clone(), b.clone(), a.clone()]).json();
    assert_eq!(
        (again["accepted"].as_u64(), again["deduplicated"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(h.push(&[b]).json()["deduplicated"], 1);
    assert_eq!(h.node.rows(), 3);
    h.node.assert_intact();
}

#[test]
fn rows_without_msg_id_are_refused_alone_and_reported() {
    let h = hub(&[]);
    let mut no_id = row("x", "ephemeral");
    no_id.as_object_mut().unwrap().remove("msg_id");
    let mut no_source = row("y", "x");
    no_source["source"] = json!("");
    let v = h
        .push(&[row("1", "kept"), no_id, no_source, row("2", "kept too")])
        .json();
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["skipped"], 2);
    let refused: Vec<u64> = v["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(refused, vec![1, 2]);
    assert!(
        v["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("msg_id")
    );
    assert_eq!(h.node.rows(), 2);
}

#[test]
fn since_sees_later_arrivals_by_any_path_and_winning_edits() {
    let h = hub(&[]);
    h.push(&[row("1", "one")]);
    let cursor = h.get("/sync/pull?since=0").json()["next_cursor"]
        .as_i64()
        .unwrap();

    // A row captured locally, and one arriving by native sync.
    h.node.ok(&[
        "remember",
        "--source",
        "notes",
        "--conversation",
        "n",
        "local note",
    ]);
    let spoke = Node::new("spoke");
    spoke.pair(&h.node, &h.server, "hub");
    spoke.import(&crate::harness::rows("s", "from-spoke", 2, 20));
    spoke.ok(&["sync"]);
    // An edit that wins here.
    let mut edited = row("1", "one, edited");
    edited["edited_at"] = json!(1716900000000i64);
    assert_eq!(h.push(&[edited]).json()["accepted"], 1);

    let page = h.get(&format!("/sync/pull?since={cursor}")).json();
    let texts: Vec<&str> = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 4, "{texts:?}");
    assert!(texts.contains(&"local note"));
    assert!(texts.contains(&"one, edited"));
    // A memex peer's token is a memex peer's: a selves node that holds
    // it is refused (tokens are bound to one peer), and pairs with an
    // invite of its own instead.
    let native = Node::new("native");
    let r = native.run(&[
        "peer",
        "add",
        "hub",
        &format!("https://{}", h.server.addr),
        &h.token,
        "--cert-fp",
        &h.pin.to_string(),
    ]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("memex peer"), "{r:?}");
    native.pair(&h.node, &h.server, "hub");
    native.ok(&["sync"]);
    assert_eq!(
        native.rows(),
        4,
        "one memex row (edited in place), one local, two from the spoke"
    );
}

#[test]
fn rate_limits_answer_429_with_retry_after() {
    let h = hub(&[
        "--memex-pushes-per-minute",
        "2",
        "--memex-pulls-per-minute",
        "3",
    ]);
    let statuses: Vec<u16> = (0..4)
        .map(|i| h.push(&[row(&i.to_string(), "x")]).status)
        .collect();
    assert_eq!(&statuses[..2], [200, 200]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    let r = h.push(&[row("z", "x")]);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let pulls: Vec<u16> = (0..5).map(|_| h.get("/sync/pull").status).collect();
    assert!(pulls.contains(&429), "{pulls:?}");
}

#[test]
fn invite_prints_a_memex_pair_blob() {
    let h = hub(&[]);
    let out = h.node.ok(&[
        "invite",
        "--peer",
        "mac",
        "--format",
        "memex",
        "--host",
        "127.0.0.1",
        "--port",
        &h.server.port(),
    ]);
    let line = out.trim();
    assert!(line.starts_with("memex-pair:"), "{line}");
    use base64::Engine as _;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(line.trim_start_matches("memex-pair:"))
        .unwrap();
    let v: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(keys(&v), ["cert_fp", "exp", "host", "port", "token", "v"]);
    assert_eq!(v["v"], 1);
    assert_eq!(v["cert_fp"], h.pin.to_string());
    let token = v["token"].as_str().unwrap();
    assert!(
        token.len() == 64
            && token
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now + 500..=now + 700).contains(&v["exp"].as_i64().unwrap()),
        "exp is Unix seconds, 10 min ahead"
    );
    // The token works.
    let r = request(
        h.server.addr,
        h.pin,
        "GET",
        "/sync/health",
        Some(token),
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(r.json().get("row_count").is_some());
}
