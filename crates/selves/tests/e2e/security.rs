//! Trust: certificate pinning, pair blobs, tokens.

use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;

use crate::harness::{Node, blob_token, rows, star};

#[test]
fn a_wrong_fingerprint_is_refused_before_any_request() {
    let hub = Node::new("hub");
    let spoke = Node::new("spoke");
    let server = hub.serve(&[]);
    let blob = hub.invite("spoke", &server);
    let token = blob_token(&blob);
    let url = format!("https://127.0.0.1:{}", server.port());
    let wrong = format!("sha256:{}", ["AB"; 32].join(":"));

    let run = spoke.fails(
        &["peer", "add", "hub", &url, &token, "--cert-fp", &wrong],
        6,
    );
    assert!(run.stderr.contains("but this peer is pinned to"), "{run:?}");
    assert!(
        spoke.json(&["peer", "list", "--json"])["dials"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Saved without a check, the sync refuses the same way.
    spoke.ok(&[
        "peer",
        "add",
        "hub",
        &url,
        &token,
        "--cert-fp",
        &wrong,
        "--no-check",
    ]);
    let run = spoke.fails(&["sync"], 6);
    assert!(run.stderr.contains("refusing to send anything"), "{run:?}");
    // The hub never saw an authenticated request: the invite is unused.
    let tokens = hub.json(&["status", "--json"])["tokens"].clone();
    assert_eq!(tokens[0]["state"], "invited", "{tokens}");
    assert!(tokens[0]["last_seen_at"].is_null());

    // The right fingerprint works with the very same token.
    spoke.ok(&[
        "peer",
        "add",
        "hub",
        &url,
        &token,
        "--cert-fp",
        &hub.fingerprint(),
        "--force",
    ]);
    spoke.ok(&["sync"]);
}

/// An impostor that holds the hub's (public) certificate but not its key.
/// It counts the bytes of HTTP it manages to receive.
fn impostor(cert_pem: &str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let other_key = rcgen::KeyPair::generate().unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(other_key.serialize_pem().as_bytes())
            .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signing = provider.key_provider.load_private_key(key).unwrap();
    // CertifiedKey::new does not check that the key matches: exactly the
    // lie an attacker would tell.
    let certified = Arc::new(rustls::sign::CertifiedKey::new(vec![cert], signing));
    #[derive(Debug)]
    struct Fixed(Arc<rustls::sign::CertifiedKey>);
    impl rustls::server::ResolvesServerCert for Fixed {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(certified))),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            let config = config.clone();
            let counter = counter.clone();
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                let mut conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
                let mut buf = [0u8; 4096];
                while let Ok(n) = tls.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, received)
}

#[test]
fn a_server_with_the_pinned_certificate_but_another_key_gets_nothing() {
    let hub = Node::new("hub");
    let spoke = Node::new("spoke");
    let cert = std::fs::read_to_string(hub.home().join("tls/cert.pem")).unwrap();
    let (addr, received) = impostor(&cert);
    let token = "ab".repeat(32);
    let url = format!("https://{addr}");
    let fp = hub.fingerprint();

    let run = spoke.fails(&["peer", "add", "hub", &url, &token, "--cert-fp", &fp], 6);
    assert!(
        run.stderr.contains("could not prove it holds its key"),
        "{run:?}"
    );
    spoke.ok(&[
        "peer",
        "add",
        "hub",
        &url,
        &token,
        "--cert-fp",
        &fp,
        "--no-check",
    ]);
    let run = spoke.fails(&["sync"], 6);
    assert!(run.stderr.contains("Nothing was sent"), "{run:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "the impostor received request bytes"
    );
}

fn edit_blob(blob: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let b64 = blob.strip_prefix("selves-pair:").unwrap();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut v: serde_json::Value = serde_json::from_slice(&engine.decode(b64).unwrap()).unwrap();
    edit(&mut v);
    format!(
        "selves-pair:{}",
        engine.encode(serde_json::to_vec(&v).unwrap())
    )
}

#[test]
fn expired_tampered_and_unknown_blobs_are_refused() {
    let hub = Node::new("hub");
    let spoke = Node::new("spoke");
    let server = hub.serve(&[]);
    let blob = hub.invite("spoke", &server);

    let run = spoke.fails(
        &[
            "pair",
            &edit_blob(&blob, |v| v["exp"] = 4_000_000_000i64.into()),
        ],
        1,
    );
    assert!(run.stderr.contains("changed or damaged"), "{run:?}");
    let run = spoke.fails(
        &["pair", &edit_blob(&blob, |v| v["host"] = "10.0.0.9".into())],
        1,
    );
    assert!(run.stderr.contains("changed or damaged"), "{run:?}");
    let run = spoke.fails(&["pair", &edit_blob(&blob, |v| v["v"] = 2.into())], 1);
    assert!(run.stderr.contains("upgrade selves here"), "{run:?}");
    let run = spoke.fails(&["pair", &blob[..blob.len() / 2]], 1);
    assert!(
        run.stderr.contains("not a selves pair or join blob"),
        "{run:?}"
    );
    let run = spoke.fails(&["pair", "memex-pair:eyJ2IjoxfQ"], 1);
    assert!(
        run.stderr.contains("memex pair blob is missing host"),
        "{run:?}"
    );
    let run = spoke.fails(&["pair", "nonsense"], 1);
    assert!(
        run.stderr.contains("not a selves pair or join blob"),
        "{run:?}"
    );

    // Expiry, checked by the spoke…
    let short = hub.ok(&[
        "invite",
        "--peer",
        "late",
        "--port",
        &server.port(),
        "--ttl",
        "1s",
    ]);
    let late = Node::new("late");
    std::thread::sleep(Duration::from_millis(2100));
    let run = late.fails(&["pair", short.trim()], 1);
    assert!(run.stderr.contains("expired"), "{run:?}");
    // …and by the hub, whatever the blob says: an invite unused in time
    // stops working.
    let short = hub.ok(&[
        "invite",
        "--peer",
        "late",
        "--port",
        &server.port(),
        "--ttl",
        "1s",
    ]);
    late.ok(&["pair", short.trim(), "--no-check"]);
    std::thread::sleep(Duration::from_millis(2100));
    let run = late.fails(&["sync"], 4);
    assert!(run.stderr.contains("expired before it was used"), "{run:?}");
    assert!(
        spoke.json(&["peer", "list", "--json"])["dials"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn wrong_revoked_and_rotated_tokens() {
    let (hub, server, spokes) = star("hub", &["laptop", "phone"]);
    let [laptop, phone] = &spokes[..] else {
        unreachable!()
    };
    laptop.ok(&["sync"]);

    // A wrong token: 401, and nothing changes.
    let url = format!("https://127.0.0.1:{}", server.port());
    let stranger = Node::new("stranger");
    stranger.import(&rows("x", "c", 3, 10));
    let run = stranger.fails(
        &[
            "peer",
            "add",
            "hub",
            &url,
            &"0".repeat(64),
            "--cert-fp",
            &hub.fingerprint(),
        ],
        4,
    );
    assert!(
        run.stderr.contains("token revoked or wrong: re-pair"),
        "{run:?}"
    );

    // Revoking the laptop leaves the phone working.
    hub.ok(&["peer", "revoke", "laptop"]);
    laptop.import(&rows("l", "c", 3, 10));
    let run = laptop.fails(&["sync"], 4);
    assert!(
        run.stderr.contains("token revoked or wrong: re-pair"),
        "{run:?}"
    );
    assert_eq!(hub.rows(), 0, "a revoked peer changed the hub");
    phone.ok(&["sync"]);
    let status = laptop.json(&["status", "--json"]);
    assert_eq!(status["peers"][0]["last_error_class"], "auth");
    assert_eq!(status["peers"][0]["consecutive_failures"], 1);

    // Rotation prints a fresh blob; re-pairing with it works.
    let blob = hub.ok(&["rotate-token", "laptop"]);
    laptop.ok(&["pair", blob.trim(), "--alias", "hub", "--force"]);
    laptop.ok(&["sync"]);
    assert_eq!(hub.rows(), 3);
    // Inviting a name whose token is in use is refused with a hint.
    let run = hub.fails(&["invite", "--peer", "laptop", "--port", &server.port()], 1);
    assert!(run.stderr.contains("rotate-token"), "{run:?}");
}

#[test]
fn insecure_peers_are_allowed_only_with_a_loud_warning() {
    let hub = Node::new("hub");
    let spoke = Node::new("spoke");
    let server = hub.serve(&[]);
    let token = blob_token(&hub.invite("spoke", &server));
    let url = format!("https://127.0.0.1:{}", server.port());
    let run = spoke.fails(&["peer", "add", "hub", &url, &token], 2);
    assert!(run.stderr.contains("--cert-fp"), "{run:?}");
    let run = spoke.run(&["peer", "add", "hub", &url, &token, "--insecure"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("WARNING: --insecure"), "{run:?}");
    spoke.ok(&["sync"]);
    let list = spoke.ok(&["peer", "list"]);
    assert!(list.contains("INSECURE"), "{list}");
}

/// Guessing tokens is throttled per address and shows in the hub's
/// status; a peer with its own token goes on meanwhile.
#[test]
fn failed_logins_are_throttled_and_reported() {
    let hub = crate::harness::Node::new("hub");
    let server = hub.serve(&[]);
    let laptop = crate::harness::Node::new("laptop");
    laptop.pair(&hub, &server, "hub");
    let line = hub.invite("x", &server);
    let pin = crate::harness::blob_fingerprint(&line);
    let mut statuses = Vec::new();
    for i in 0..60u32 {
        let guess = format!("{i:064x}");
        let r = crate::harness::request(
            server.addr,
            pin,
            "POST",
            "/v1/hello",
            Some(&guess),
            &[],
            b"{}",
        );
        statuses.push(r.status);
    }
    assert!(statuses[..30].iter().all(|&s| s == 401), "{statuses:?}");
    assert!(statuses.contains(&429), "never throttled: {statuses:?}");
    laptop.ok(&["sync"]);
    let brief = hub.fails(&["status", "--brief"], 1);
    assert!(
        brief
            .stdout
            .contains("requests with unknown tokens from 127.0.0.1"),
        "{brief:?}"
    );
    assert!(brief.stdout.contains("(throttled)"), "{brief:?}");
}
