//! A scripted peer: a small HTTPS server written here, speaking just
//! enough of the protocol to misbehave on purpose (another protocol
//! version, a smaller body limit than it announced, server errors), so the
//! real client's reactions can be tested through the binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::harness::{Node, https_server, rows};

#[derive(Clone, Copy)]
struct Script {
    major: u32,
    /// The body limit announced in hello.
    announced_max_body: u64,
    /// The body limit really enforced (413 above it).
    enforced_max_body: usize,
    /// Answer this many pushes with 500 before accepting.
    failing_pushes: usize,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            major: 2,
            announced_max_body: 8 << 20,
            enforced_max_body: 8 << 20,
            failing_pushes: 0,
        }
    }
}

struct Peer {
    addr: SocketAddr,
    fingerprint: String,
    token: String,
    /// Records accepted per node id.
    heads: Arc<Mutex<HashMap<String, u64>>>,
    /// Push requests seen (including refused ones), and their body sizes.
    pushes: Arc<Mutex<Vec<usize>>>,
}

fn start(script: Script) -> Peer {
    let token = "c0".repeat(32);
    let heads = Arc::new(Mutex::new(HashMap::new()));
    let pushes = Arc::new(Mutex::new(Vec::new()));
    let failures = AtomicUsize::new(0);
    let (h, p) = (heads.clone(), pushes.clone());
    let expected = format!("Bearer {token}");
    let (addr, fingerprint) = https_server(move |req| {
        if req.authorization != expected {
            return (
                401,
                json!({"error": "unauthorized", "detail": "unknown token"}),
            );
        }
        answer(&script, &req.target, &req.body, &h, &p, &failures)
    });
    Peer {
        addr,
        fingerprint: fingerprint.to_string(),
        token,
        heads,
        pushes,
    }
}

fn answer(
    script: &Script,
    path: &str,
    body: &[u8],
    heads: &Mutex<HashMap<String, u64>>,
    pushes: &Mutex<Vec<usize>>,
    failures: &AtomicUsize,
) -> (u16, Value) {
    match path {
        "/v1/hello" => (
            200,
            json!({
                "protocol": {"major": script.major, "minor": 0},
                "software": "scripted peer",
                "node": {"id": "5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c", "name": "scripted"},
                "key": "11".repeat(32),
                "you": "tester",
                "streams": ["memory"],
                "heads": [],
                "nodes": [],
                "limits": {"max_body_bytes": script.announced_max_body, "max_push_records": 5000,
                           "max_pull_records": 5000, "max_pull_bytes": 4194304},
                "server_now_ms": 0
            }),
        ),
        "/v1/push" => {
            pushes.lock().unwrap().push(body.len());
            if failures.fetch_add(1, Ordering::SeqCst) < script.failing_pushes {
                return (
                    500,
                    json!({"error": "internal", "detail": "scripted failure"}),
                );
            }
            if body.len() > script.enforced_max_body {
                return (413, json!({"error": "payload_too_large"}));
            }
            let req: Value = serde_json::from_slice(body).unwrap();
            let mut heads = heads.lock().unwrap();
            let mut accepted = 0;
            let mut out = Vec::new();
            for b in req["batches"].as_array().unwrap() {
                let node = b["node"].as_str().unwrap().to_owned();
                let start = b["start"].as_u64().unwrap();
                let n = b["records"].as_array().unwrap().len() as u64;
                let head = heads.entry(node.clone()).or_insert(0);
                if start > *head + 1 {
                    return (409, json!({"error": "gap", "detail": "gap"}));
                }
                let end = start + n - 1;
                if end > *head {
                    accepted += end - *head;
                    *head = end;
                }
                out.push(json!({"node": node, "stream": "memory", "seq": *head}));
            }
            (
                200,
                json!({"accepted": accepted, "duplicates": 0, "voided": [], "heads": out}),
            )
        }
        _ => (404, json!({"error": "not_found"})),
    }
}

fn client_of(peer: &Peer) -> Node {
    let n = Node::new("client");
    n.ok(&[
        "peer",
        "add",
        "scripted",
        &format!("https://{}", peer.addr),
        &peer.token,
        "--cert-fp",
        &peer.fingerprint,
        "--no-check",
    ]);
    n
}

#[test]
fn a_peer_of_another_major_version_is_refused_with_an_upgrade_message() {
    let peer = start(Script {
        major: 3,
        ..Script::default()
    });
    let client = client_of(&peer);
    client.import(&rows("x", "c", 3, 10));
    let run = client.fails(&["sync"], 7);
    assert!(run.stderr.contains("speaks selves protocol 3"), "{run:?}");
    assert!(run.stderr.contains("upgrade selves"), "{run:?}");
    assert!(
        peer.pushes.lock().unwrap().is_empty(),
        "nothing may be pushed"
    );
}

#[test]
fn a_batch_refused_as_too_large_is_halved_until_it_fits() {
    let peer = start(Script {
        // Above one signed span (64 records here), below what is sent
        // at first: halving stops at a span, never splits one.
        enforced_max_body: 200_000,
        ..Script::default()
    });
    let client = client_of(&peer);
    client.import(&rows("x", "c", 600, 2000));
    let r = client.json(&["sync", "--json"]);
    assert_eq!(r[0]["ok"], true, "{r}");
    assert_eq!(r[0]["report"]["pushed"], 600);
    let pushes = peer.pushes.lock().unwrap().clone();
    assert!(
        pushes.iter().any(|&n| n > 200_000),
        "no 413 was provoked: {pushes:?}"
    );
    assert_eq!(
        peer.heads.lock().unwrap().values().copied().max(),
        Some(600)
    );
}

#[test]
fn server_errors_are_retried_with_backoff_and_then_reported() {
    // Two failures, then success: the client retries.
    let peer = start(Script {
        failing_pushes: 2,
        ..Script::default()
    });
    let client = client_of(&peer);
    client.import(&rows("x", "c", 5, 10));
    let r = client.json(&["sync", "--json"]);
    assert_eq!(r[0]["ok"], true, "{r}");
    assert!(r[0]["report"]["retries"].as_u64().unwrap() >= 2, "{r}");
    assert_eq!(r[0]["report"]["pushed"], 5);

    // Failing every time: the client gives up after its attempts and says so.
    let peer = start(Script {
        failing_pushes: usize::MAX,
        ..Script::default()
    });
    let client = client_of(&peer);
    client.import(&rows("x", "c", 5, 10));
    let run = client.fails(&["sync", "--attempts", "3"], 1);
    assert!(run.stderr.contains("failed with 500"), "{run:?}");
    assert_eq!(peer.pushes.lock().unwrap().len(), 3, "three attempts");
    let status = client.json(&["status", "--json"]);
    assert_eq!(status["peers"][0]["last_error_class"], "server");
}
