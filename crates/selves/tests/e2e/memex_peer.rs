//! A minimal memex v12 node, written here from the spec alone
//! (seeds/memex-sync.md §Wire protocol): a store of rows with local ids and
//! `UNIQUE(source, conversation_id, msg_id)`, a server for its three
//! endpoints and a client for the pull-then-push flow with per-direction
//! cursors. selves syncs with it both ways.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::harness::{Node, https_server, request, rows, wait_until};

/// A memex database: rows by local id, deduplicated by identity.
#[derive(Default)]
pub struct MemexDb {
    rows: Vec<(i64, Value)>,
    keys: HashMap<(String, String, String), i64>,
    conversations: HashMap<String, Value>,
    /// Rows received through pushes, duplicates included.
    pub received: usize,
}

impl MemexDb {
    /// INSERT OR IGNORE plus the conversation upsert. Rows without msg_id
    /// are not synced (refused here).
    fn insert(&mut self, mut row: Value) -> Option<bool> {
        let key = (
            row["source"].as_str()?.to_owned(),
            row["conversation_id"].as_str()?.to_owned(),
            row["msg_id"].as_str()?.to_owned(),
        );
        // §Conversation upsert: latest values win on title and last_ts.
        let conv = row["conversation"].clone();
        let entry = self
            .conversations
            .entry(key.1.clone())
            .or_insert_with(|| conv.clone());
        if !conv["title"].is_null() {
            entry["title"] = conv["title"].clone();
        }
        if conv["last_ts"].as_i64() > entry["last_ts"].as_i64() {
            entry["last_ts"] = conv["last_ts"].clone();
        }
        if self.keys.contains_key(&key) {
            return Some(false);
        }
        if row["uuid"].is_null() {
            row["uuid"] = json!(format!("memex-{}", self.rows.len()));
        }
        let id = self.rows.last().map_or(0, |(id, _)| *id) + 1;
        self.keys.insert(key, id);
        self.rows.push((id, row));
        Some(true)
    }

    fn since(&self, since: i64, limit: usize) -> (Vec<Value>, i64, bool) {
        let newer: Vec<&(i64, Value)> = self.rows.iter().filter(|(id, _)| *id > since).collect();
        let page: Vec<Value> = newer
            .iter()
            .take(limit)
            .map(|(_, r)| {
                let mut r = r.clone();
                r["conversation"] =
                    self.conversations[r["conversation_id"].as_str().unwrap()].clone();
                r
            })
            .collect();
        let next = newer
            .iter()
            .take(limit)
            .next_back()
            .map_or(since, |(id, _)| *id);
        (page, next, newer.len() > limit)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn last_id(&self) -> i64 {
        self.rows.last().map_or(0, |(id, _)| *id)
    }

    pub fn title_of(&self, conversation_id: &str) -> Option<String> {
        self.conversations.get(conversation_id)?["title"]
            .as_str()
            .map(str::to_owned)
    }
}

/// Misbehaviour a test asks of the memex node.
#[derive(Default, Clone)]
pub struct Faults {
    /// The schema version its health reports (12 when 0).
    pub schema_version: u32,
    /// Refuse push bodies larger than this with 413 (2 MiB when 0).
    pub max_body: usize,
    /// Answer this many pulls with 500 first.
    pub failing_pulls: usize,
    /// Answer this many pushes with 429 (Retry-After: 1) first.
    pub limited_pushes: usize,
    /// Answer every push with this conflict (409) detail.
    pub push_conflict: Option<String>,
    /// Take this long over each pull page (so a test can kill mid-pull).
    pub pull_delay: std::time::Duration,
}

/// A memex node serving its database on loopback.
pub struct MemexServer {
    pub faults: Arc<Mutex<Faults>>,
    pub db: Arc<Mutex<MemexDb>>,
    pub url: String,
    pub fingerprint: selves_wire::CertFingerprint,
    pub token: String,
}

impl MemexServer {
    pub fn start() -> MemexServer {
        let db = Arc::new(Mutex::new(MemexDb::default()));
        let faults = Arc::new(Mutex::new(Faults::default()));
        let token = "a1".repeat(32);
        let expected = format!("Bearer {token}");
        let (state, scripted) = (db.clone(), faults.clone());
        let (addr, fingerprint) = https_server(move |req| {
            if req.authorization != expected {
                return (401, json!({"error": "unauthorized"}));
            }
            let mut f = scripted.lock().unwrap();
            let mut db = state.lock().unwrap();
            let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
            match (req.method.as_str(), path) {
                ("GET", "/sync/health") => {
                    let schema = if f.schema_version == 0 {
                        12
                    } else {
                        f.schema_version
                    };
                    (
                        200,
                        json!({"version": "0.11.11", "schema_version": schema, "row_count": db.len(), "last_id": db.last_id()}),
                    )
                }
                ("POST", "/sync/push") => {
                    let max = if f.max_body == 0 {
                        2 * 1024 * 1024
                    } else {
                        f.max_body
                    };
                    if req.body.len() > max {
                        return (413, json!({"error": "payload_too_large"}));
                    }
                    if f.limited_pushes > 0 {
                        f.limited_pushes -= 1;
                        return (429, json!({"error": "rate_limited"}));
                    }
                    if let Some(detail) = &f.push_conflict {
                        return (409, json!({"error": "schema_mismatch", "detail": detail}));
                    }
                    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
                        return (
                            400,
                            json!({"error": "bad_request", "detail": "invalid JSON"}),
                        );
                    };
                    let Some(rows) = body["rows"].as_array() else {
                        return (
                            400,
                            json!({"error": "bad_request", "detail": "rows[] required"}),
                        );
                    };
                    if rows.len() > 1000 {
                        return (
                            400,
                            json!({"error": "bad_request", "detail": "rows[] max 1000"}),
                        );
                    }
                    let (mut accepted, mut deduplicated) = (0, 0);
                    for row in rows {
                        db.received += 1;
                        match db.insert(row.clone()) {
                            Some(true) => accepted += 1,
                            Some(false) => deduplicated += 1,
                            None => {}
                        }
                    }
                    (
                        200,
                        json!({"accepted": accepted, "deduplicated": deduplicated, "last_id": db.last_id()}),
                    )
                }
                ("GET", "/sync/pull") => {
                    std::thread::sleep(f.pull_delay);
                    if f.failing_pulls > 0 {
                        f.failing_pulls -= 1;
                        return (
                            500,
                            json!({"error": "internal", "detail": "scripted failure"}),
                        );
                    }
                    let param = |name: &str| {
                        query
                            .split('&')
                            .find_map(|p| p.strip_prefix(&format!("{name}=")).map(str::to_owned))
                    };
                    let Some(since) = param("since")
                        .unwrap_or_else(|| "0".into())
                        .parse::<i64>()
                        .ok()
                        .filter(|s| *s >= 0)
                    else {
                        return (
                            400,
                            json!({"error": "bad_request", "detail": "since must be a non-negative integer"}),
                        );
                    };
                    let limit = param("limit")
                        .and_then(|l| l.parse::<usize>().ok())
                        .unwrap_or(500)
                        .clamp(1, 1000);
                    let (rows, next_cursor, has_more) = db.since(since, limit);
                    (
                        200,
                        json!({"rows": rows, "next_cursor": next_cursor, "has_more": has_more, "server_now": 0}),
                    )
                }
                _ => (404, json!({"error": "not_found"})),
            }
        });
        MemexServer {
            faults,
            db,
            url: format!("https://{addr}"),
            fingerprint,
            token,
        }
    }

    /// The `memex-pair:` line this node would print.
    pub fn pair_blob(&self) -> String {
        let port = self.url.rsplit(':').next().unwrap().parse().unwrap();
        selves_wire::memex::PairBlob {
            v: 1,
            host: "127.0.0.1".into(),
            port,
            cert_fp: Some(self.fingerprint),
            token: self.token.parse().unwrap(),
            exp: 4_000_000_000,
        }
        .encode()
    }
}

/// The memex client side: one sync run against a server (health, pull
/// since `pulled_to`, push rows after `pushed_to`), cursors kept by the
/// caller.
pub struct MemexClient {
    pub db: MemexDb,
    pub pulled_to: i64,
    pub pushed_to: i64,
}

impl MemexClient {
    pub fn sync(
        &mut self,
        addr: std::net::SocketAddr,
        pin: selves_wire::CertFingerprint,
        token: &str,
    ) {
        let health = request(addr, pin, "GET", "/sync/health", Some(token), &[], b"").json();
        assert_eq!(health["schema_version"], 12);
        loop {
            let page = request(
                addr,
                pin,
                "GET",
                &format!("/sync/pull?since={}&limit=500", self.pulled_to),
                Some(token),
                &[],
                b"",
            );
            assert_eq!(page.status, 200, "{page:?}");
            let page = page.json();
            let rows = page["rows"].as_array().unwrap();
            if rows.is_empty() {
                break;
            }
            for r in rows {
                self.db.insert(r.clone());
            }
            self.pulled_to = page["next_cursor"].as_i64().unwrap();
            if page["has_more"] == false {
                break;
            }
        }
        let mine: Vec<(i64, Value)> = self
            .db
            .rows
            .iter()
            .filter(|(id, _)| *id > self.pushed_to)
            .cloned()
            .collect();
        for chunk in mine.chunks(400) {
            let rows: Vec<Value> = chunk.iter().map(|(_, r)| r.clone()).collect();
            let body = serde_json::to_vec(&json!({ "rows": rows })).unwrap();
            let resp = request(addr, pin, "POST", "/sync/push", Some(token), &[], &body);
            assert_eq!(resp.status, 200, "{resp:?}");
            self.pushed_to = chunk.last().unwrap().0;
        }
    }
}

fn memex_rows(prefix: &str, conv: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "source": "openclaw", "conversation_id": conv, "msg_id": format!("{prefix}{i}"),
                "uuid": null, "role": "assistant", "sender": "openclaw",
                "text": format!("{prefix} memex row {i} ✓"), "ts": 1716800000 + i as i64,
                "edited_at": null, "channel": "telegram", "metadata": null,
                "conversation": {"title": format!("{conv} in memex"), "first_ts": 1716800000,
                                 "last_ts": 1716800000 + n as i64, "project_path": null,
                                 "parent_conversation_id": null}
            })
        })
        .collect()
}

#[test]
fn a_memex_client_syncs_with_selves_both_ways() {
    let hub = Node::new("hub");
    let server = hub.serve(&[]);
    hub.import(&rows("h", "on-selves", 300, 100));
    let blob = hub.ok(&[
        "invite",
        "--peer",
        "mac",
        "--format",
        "memex",
        "--port",
        &server.port(),
    ]);
    let pair = selves_wire::memex::PairBlob::decode(blob.trim(), 0).unwrap();
    let token = pair.token.to_hex();
    let pin = pair.cert_fp.unwrap();

    let mut client = MemexClient {
        db: MemexDb::default(),
        pulled_to: 0,
        pushed_to: 0,
    };
    for r in memex_rows("m", "on-memex", 200) {
        client.db.insert(r);
    }
    client.sync(server.addr, pin, &token);
    assert_eq!(
        client.db.len(),
        500,
        "the memex client got every selves row once"
    );
    assert_eq!(hub.rows(), 500, "selves got every memex row once");
    assert_eq!(
        client.db.title_of("on-selves").as_deref(),
        Some("on-selves title"),
        "conversation metadata survives"
    );
    let exported = hub.export();
    let from_memex = exported
        .iter()
        .find(|r| r["conversation_id"] == "on-memex")
        .unwrap();
    assert_eq!(from_memex["conversation"]["title"], "on-memex in memex");
    assert_eq!(from_memex["channel"], "telegram");
    assert!(
        from_memex["origin"].is_null(),
        "provenance is never invented"
    );

    // Again: nothing new either way, no duplicates.
    client.sync(server.addr, pin, &token);
    assert_eq!(client.db.len(), 500);
    assert_eq!(hub.rows(), 500);

    // The memex rows relay on to a native peer.
    let native = Node::new("native");
    native.pair(&hub, &server, "hub");
    native.ok(&["sync"]);
    assert_eq!(native.rows(), 500);
    native.ok(&["verify"]);
}

#[test]
fn selves_syncs_with_a_memex_server_both_ways() {
    let memex = MemexServer::start();
    for r in memex_rows("m", "vps-chat", 250) {
        memex.db.lock().unwrap().insert(r);
    }
    let laptop = Node::new("laptop");
    laptop.import(&rows("l", "laptop-chat", 150, 100));
    let out = laptop.ok(&["pair", &memex.pair_blob(), "--alias", "vps"]);
    assert!(
        out.contains("paired with memex node vps (memex 0.11.11)"),
        "{out}"
    );

    let r = laptop.json(&["sync", "vps", "--json"]);
    assert_eq!(r[0]["ok"], true, "{r}");
    assert_eq!(r[0]["report"]["protocol"], "memex");
    assert_eq!(r[0]["report"]["pulled"], 250);
    assert_eq!(r[0]["report"]["pushed"], 150);
    assert_eq!(laptop.rows(), 400);
    assert_eq!(memex.db.lock().unwrap().len(), 400);
    let received = memex.db.lock().unwrap().received;
    assert_eq!(received, 150, "only the laptop's own rows were pushed");

    // A second round moves nothing new, and what the memex node sent is
    // never pushed back to it.
    let r = laptop.json(&["sync", "vps", "--json"]);
    assert_eq!(r[0]["report"]["pushed"], 0, "{r}");
    assert_eq!(memex.db.lock().unwrap().received, 150);
    assert_eq!(laptop.rows(), 400);

    // Conversation metadata and provenance survive; the rows relay on.
    let exported = laptop.export();
    let row = exported
        .iter()
        .find(|r| r["conversation_id"] == "vps-chat")
        .unwrap();
    assert_eq!(row["conversation"]["title"], "vps-chat in memex");
    assert!(row["origin"].is_null());
    assert_eq!(
        memex.db.lock().unwrap().title_of("laptop-chat").as_deref(),
        Some("laptop-chat title")
    );
    let server = laptop.serve(&[]);
    let phone = Node::new("phone");
    phone.pair(&laptop, &server, "laptop");
    phone.ok(&["sync"]);
    assert_eq!(phone.rows(), 400, "memex rows relay to native peers");

    // status shows the peer and its cursors.
    let status = laptop.json(&["status", "--json"]);
    let peer = &status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["alias"] == "vps")
        .unwrap()
        .clone();
    assert_eq!(peer["protocol"], "memex");
    assert_eq!(
        peer["pulled_to"].as_i64(),
        Some(memex.db.lock().unwrap().last_id())
    );
    // memex has no digest to verify against.
    let run = laptop.fails(&["verify", "vps"], 1);
    assert!(run.stderr.contains("memex node"), "{run:?}");
}

#[test]
fn memex_cursors_resume_after_a_kill() {
    const N: usize = 8000;
    let memex = MemexServer::start();
    for r in memex_rows("m", "big", N) {
        memex.db.lock().unwrap().insert(r);
    }
    let laptop = Node::new("laptop");
    laptop.ok(&["pair", &memex.pair_blob(), "--alias", "vps"]);
    memex.faults.lock().unwrap().pull_delay = std::time::Duration::from_millis(150);

    // Killed part-way through the pull: the cursor resumes, nothing lost
    // or doubled.
    let mut child = laptop.command(&["sync", "vps"]).spawn().unwrap();
    let mut seen = 0;
    wait_until(120, || {
        seen = laptop.rows();
        seen >= 2000 || child.try_wait().unwrap().is_some()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen < N as u64, "the pull finished before the kill");
    memex.faults.lock().unwrap().pull_delay = std::time::Duration::ZERO;
    laptop.assert_intact();
    let cursor = laptop.json(&["status", "--json"])["peers"][0]["pulled_to"]
        .as_i64()
        .unwrap();
    assert!(
        cursor > 0 && cursor as u64 <= laptop.rows(),
        "the cursor never runs ahead: {cursor}"
    );
    laptop.ok(&["sync", "vps"]);
    assert_eq!(laptop.rows(), N as u64);
    assert_eq!(laptop.export().len(), N);

    // Killed part-way through a push of its own rows.
    laptop.import(&rows("l", "mine", N, 50));
    let before = memex.db.lock().unwrap().received;
    let mut child = laptop
        .command(&["sync", "vps", "--batch", "200"])
        .spawn()
        .unwrap();
    wait_until(120, || {
        memex.db.lock().unwrap().received - before >= 2000 || child.try_wait().unwrap().is_some()
    });
    let _ = child.kill();
    let _ = child.wait();
    laptop.ok(&["sync", "vps"]);
    let db = memex.db.lock().unwrap();
    assert_eq!(db.len(), 2 * N, "every row arrived");
    let sent = db.received - before;
    assert!(
        sent <= N + 200,
        "the push cursor resumed: {sent} rows sent for {N} (at most one batch again)"
    );
}

#[test]
fn the_client_side_of_the_error_table() {
    let memex = MemexServer::start();
    for r in memex_rows("m", "c", 30) {
        memex.db.lock().unwrap().insert(r);
    }
    let laptop = Node::new("laptop");
    laptop.ok(&["pair", &memex.pair_blob(), "--alias", "vps"]);
    laptop.import(&rows("l", "mine", 60, 3000));

    // 5xx: backed off and retried; 413: the batch halves until it fits;
    // 429: the client waits as long as it is told (the test server's
    // Retry-After is absent, so the spec's default of 1 s).
    *memex.faults.lock().unwrap() = Faults {
        failing_pulls: 2,
        max_body: 60_000,
        limited_pushes: 1,
        ..Faults::default()
    };
    let r = laptop.json(&["sync", "vps", "--json"]);
    assert_eq!(r[0]["ok"], true, "{r}");
    assert!(r[0]["report"]["retries"].as_u64().unwrap() >= 2, "{r}");
    assert!(r[0]["report"]["rate_limited"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r[0]["report"]["pushed"], 60);
    assert_eq!(memex.db.lock().unwrap().len(), 90);

    // 409 on push: stop with the server's message.
    laptop.import(&rows("x", "more", 1, 10));
    memex.faults.lock().unwrap().push_conflict = Some("upgrade memex on the client side".into());
    let run = laptop.fails(&["sync", "vps"], 1);
    assert!(run.stderr.contains("upgrade memex"), "{run:?}");

    // Another schema version: refused before anything moves.
    *memex.faults.lock().unwrap() = Faults {
        schema_version: 13,
        ..Faults::default()
    };
    let run = laptop.fails(&["sync", "vps"], 7);
    assert!(run.stderr.contains("memex schema 13"), "{run:?}");
    assert!(run.stderr.contains("upgrade the older side"), "{run:?}");

    // 401: stop and say to re-pair.
    *memex.faults.lock().unwrap() = Faults::default();
    let stranger = Node::new("stranger");
    let url = memex.url.clone();
    let run = stranger.fails(
        &[
            "peer",
            "add",
            "vps",
            &url,
            &"0".repeat(64),
            "--cert-fp",
            &memex.fingerprint.to_string(),
        ],
        4,
    );
    assert!(run.stderr.contains("re-pair"), "{run:?}");
}

#[test]
fn a_memex_blob_without_a_fingerprint_needs_insecure() {
    let memex = MemexServer::start();
    let port: u16 = memex.url.rsplit(':').next().unwrap().parse().unwrap();
    let blob = selves_wire::memex::PairBlob {
        v: 1,
        host: "127.0.0.1".into(),
        port,
        cert_fp: None,
        token: memex.token.parse().unwrap(),
        exp: 4_000_000_000,
    }
    .encode();
    let laptop = Node::new("laptop");
    let run = laptop.fails(&["pair", &blob], 1);
    assert!(run.stderr.contains("--insecure"), "{run:?}");
    let run = laptop.run(&["pair", &blob, "--insecure", "--alias", "vps"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("WARNING: --insecure"), "{run:?}");
    laptop.ok(&["sync", "vps"]);
}
