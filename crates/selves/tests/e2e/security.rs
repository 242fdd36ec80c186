//! Trust: certificate pinning, pair blobs, tokens.

use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

/// A TCP connection to `to` from the loopback address `from` (any of
/// 127.0.0.0/8 on Linux), standing for a host of its own.
fn connect_from(from: &str, to: std::net::SocketAddr) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let stream = socket.connect(to).await.unwrap();
        stream.into_std().unwrap()
    })
}

/// Whether the server still holds `s` open (not closed nor reset).
fn still_open(s: &std::net::TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let open = matches!(
        std::io::Read::read(&mut &*s, &mut buf),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    );
    s.set_nonblocking(false).unwrap();
    open
}

/// Strangers holding sockets open cannot lock a node's peers out: one
/// address holds at most 1/16 of the places, strangers from many addresses
/// fill only 3/4, and the peers' addresses keep room of their own.
#[test]
fn idle_sockets_from_strangers_cannot_lock_peers_out() {
    let hub = crate::harness::Node::new("hub");
    // 32 places: 2 per stranger address, 24 for strangers in all.
    let config = hub.home().join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("max_connections = 32\n");
    std::fs::write(&config, text).unwrap();
    let server = hub.serve(&[]);
    let laptop = crate::harness::Node::new("laptop");
    laptop.pair(&hub, &server, "hub");
    laptop.ok(&["sync"]);
    // 20 idle sockets from one address, then 3 from each of 12 more.
    let one: Vec<_> = (0..20)
        .map(|_| connect_from("127.0.0.2", server.addr))
        .collect();
    let many: Vec<_> = (3..15)
        .flat_map(|a| (0..3).map(move |_| a))
        .map(|a| connect_from(&format!("127.0.0.{a}"), server.addr))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let open_one = one.iter().filter(|s| still_open(s)).count();
    let open_many = many.iter().filter(|s| still_open(s)).count();
    assert_eq!(open_one, 2, "one address holds at most 2 of 32");
    assert_eq!(open_many, 24 - 2, "strangers fill 3/4 of the places");
    // While they hold on, the laptop still gets through, twice over.
    laptop.ok(&["remember", "written during the flood"]);
    let out = laptop.ok(&["sync"]);
    assert!(out.contains("pushed 1"), "{out}");
    assert_eq!(hub.rows(), 1);
    drop((one, many));
}

/// Idle connections close fast: a TLS connection that sends no request
/// within the header timeout, and one whose token was refused, at once.
#[test]
fn idle_and_refused_connections_are_closed() {
    let hub = crate::harness::Node::new("hub");
    let server = hub.serve(&["--header-timeout-secs", "2"]);
    let line = hub.invite("x", &server);
    let pin = crate::harness::blob_fingerprint(&line);
    // A handshake, then nothing.
    let mut idle = crate::harness::tls_stream(server.addr, pin);
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut idle, &mut buf);
    // Closed by the server (EOF or reset), not timed out by the reader's
    // 20 s.
    let timed_out = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    assert!(
        matches!(&n, Ok(0)) || n.as_ref().is_err_and(|e| !timed_out(e)),
        "an idle connection was not closed: {n:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    // A refused token on a keep-alive connection: answered, then closed.
    let mut s = crate::harness::tls_stream(server.addr, pin);
    let head = format!(
        "POST /v1/hello HTTP/1.1\r\nHost: selves\r\nAuthorization: Bearer {:064x}\r\nContent-Length: 2\r\n\r\n{{}}",
        7
    );
    std::io::Write::write_all(&mut s, head.as_bytes()).unwrap();
    let r = crate::harness::read_response(&mut s);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("connection"), Some("close"));
}

/// A client with a good token cannot hold a connection with a body that
/// never comes (a large Content-Length and silence), nor with one that
/// trickles: the first ends when the body pauses, the second when the
/// request's time is up, and the node keeps serving.
#[test]
fn bodies_that_never_come_or_trickle_are_cut_off() {
    let hub = crate::harness::Node::new("hub");
    let config = hub.home().join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("body_timeout_secs = 1\nrequest_timeout_secs = 4\n");
    std::fs::write(&config, text).unwrap();
    let server = hub.serve(&[]);
    let line = hub.invite("prober", &server);
    let prober = crate::harness::Prober::new(&line, server.addr, 9);
    assert_eq!(prober.hello().status, 200);
    let pin = crate::harness::blob_fingerprint(&line);
    let token = crate::harness::blob_token(&line);
    let open = |len: &str| {
        let mut s = crate::harness::tls_stream(server.addr, pin);
        let head = format!(
            "POST /v1/push HTTP/1.1\r\nHost: selves\r\nAuthorization: Bearer {token}\r\nselves-proof: {}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
            prober.proof_header()
        );
        std::io::Write::write_all(&mut s, head.as_bytes()).unwrap();
        s
    };
    // Silence after the headers.
    let started = Instant::now();
    let mut silent = open("1000000");
    let r = crate::harness::read_response(&mut silent);
    assert!(r.status == 400 || r.status == 408, "{}", r.status);
    // Cut off (a held connection would time the read out at 20 s).
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // A byte every half second: never a pause of a second, but never done.
    let started = Instant::now();
    let mut slow = open("100000");
    let mut answered = None;
    for _ in 0..40 {
        if std::io::Write::write_all(&mut slow, b" ").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        slow.get_ref().set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        let got = std::io::Read::read(&mut slow, &mut buf);
        slow.get_ref().set_nonblocking(false).unwrap();
        match got {
            Ok(n) if n > 0 => {
                answered = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                break;
            }
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    let took = started.elapsed();
    // Cut off, where a held connection would trickle for 20 s.
    assert!(took < Duration::from_secs(15), "held for {took:?}");
    if let Some(a) = answered {
        assert!(a.starts_with("HTTP/1.1 408"), "{a}");
    }
    assert_eq!(prober.hello().status, 200, "still serving");
}
