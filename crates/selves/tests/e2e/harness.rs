//! Test harness: nodes in temporary homes, driven through the built
//! binary; servers on 127.0.0.1 port 0; a raw HTTPS client for probing the
//! protocol directly. Nothing here touches the real home directory: every
//! command runs with SELVES_HOME and HOME inside a temporary directory.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_selves")
}

pub struct Node {
    pub dir: tempfile::TempDir,
    pub name: String,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Node {
    /// `selves init --name NAME` in a fresh temporary home.
    pub fn new(name: &str) -> Node {
        Node::init(name, &[])
    }

    /// `selves init --name NAME extra…` in a fresh temporary home.
    pub fn init(name: &str, extra: &[&str]) -> Node {
        let dir = tempfile::Builder::new()
            .prefix(&format!("selves-e2e-{name}-"))
            .tempdir()
            .unwrap();
        let node = Node {
            dir,
            name: name.to_owned(),
        };
        let mut args = vec!["init", "--name", name];
        args.extend_from_slice(extra);
        node.ok(&args);
        node
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .env("SELVES_HOME", self.home())
            .env("HOME", self.dir.path())
            .env_remove("SELVES_LOG")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().unwrap())
    }

    /// Runs a command that must succeed; returns its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(
            run.code, 0,
            "selves {args:?} on {} failed:\n{run:?}",
            self.name
        );
        run.stdout
    }

    /// Runs a command that must fail with `code`.
    #[track_caller]
    pub fn fails(&self, args: &[&str], code: i32) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, code, "selves {args:?} on {}:\n{run:?}", self.name);
        run
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    pub fn serve(&self, extra: &[&str]) -> Server {
        self.serve_on("127.0.0.1:0", extra)
    }

    pub fn serve_on(&self, listen: &str, extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--listen", listen];
        args.extend_from_slice(extra);
        self.listening(&args, Stdio::piped())
    }

    /// Where a daemon's stderr goes (a pipe nobody reads would fill up and
    /// block a long-running daemon).
    pub fn daemon_stderr(&self) -> PathBuf {
        self.dir.path().join("daemon.stderr")
    }

    fn daemon_stderr_file(&self) -> Stdio {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon_stderr())
            .unwrap()
            .into()
    }

    /// What the daemons of this node wrote to stderr so far.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.daemon_stderr()).unwrap_or_default()
    }

    /// `selves daemon --listen 127.0.0.1:0 extra…`: a daemon that serves.
    pub fn daemon_serving(&self, extra: &[&str]) -> Server {
        let mut args = vec!["daemon", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        self.listening(&args, self.daemon_stderr_file())
    }

    /// `selves daemon extra…` without a server (a spoke's daemon).
    pub fn daemon(&self, extra: &[&str]) -> Daemon {
        let mut args = vec!["daemon"];
        args.extend_from_slice(extra);
        let child = self
            .command(&args)
            .stdout(Stdio::null())
            .stderr(self.daemon_stderr_file())
            .spawn()
            .unwrap();
        Daemon { child }
    }

    /// Spawns a command that prints `listening on ADDR` first.
    fn listening(&self, args: &[&str], stderr: Stdio) -> Server {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                let mut err = self.daemon_log();
                if let Some(mut e) = child.stderr.take() {
                    e.read_to_string(&mut err).unwrap();
                }
                panic!("{args:?} did not start: {line:?}\n{err}")
            })
            .parse()
            .unwrap();
        Server {
            child,
            addr,
            _stdout: stdout,
        }
    }

    /// Mints an invite for `peer` pointing at `server`.
    pub fn invite(&self, peer: &str, server: &Server) -> String {
        let out = self.ok(&[
            "invite",
            "--peer",
            peer,
            "--host",
            "127.0.0.1",
            "--port",
            &server.addr.port().to_string(),
        ]);
        assert_eq!(out.lines().count(), 1, "invite prints one line: {out:?}");
        out.trim().to_owned()
    }

    /// Pairs this node with `hub` (served by `server`) as `alias`.
    pub fn pair(&self, hub: &Node, server: &Server, alias: &str) {
        let blob = hub.invite(&self.name, server);
        self.ok(&["pair", &blob, "--alias", alias]);
    }

    pub fn import(&self, rows: &[Value]) -> String {
        let path = self
            .dir
            .path()
            .join(format!("import-{}.jsonl", rand_suffix()));
        let mut f = std::fs::File::create(&path).unwrap();
        for r in rows {
            writeln!(f, "{r}").unwrap();
        }
        drop(f);
        self.ok(&["import", path.to_str().unwrap()])
    }

    /// Every row, as `selves export` prints them.
    pub fn export(&self) -> Vec<Value> {
        self.ok(&["export"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn rows(&self) -> u64 {
        self.json(&["status", "--json"])["memory"]["rows"]
            .as_u64()
            .unwrap()
    }

    #[track_caller]
    pub fn assert_intact(&self) {
        let out = self.ok(&["check"]);
        assert!(out.starts_with("ok"), "{out}");
    }

    pub fn fingerprint(&self) -> String {
        self.json(&["status", "--json"])["node"]["certificate"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// A hub serving on loopback with `spokes` paired to it (alias "hub").
pub fn star(hub: &str, spokes: &[&str]) -> (Node, Server, Vec<Node>) {
    star_with(hub, &[], spokes)
}

/// [`star`], the hub's `serve` given `extra` arguments.
pub fn star_with(hub: &str, extra: &[&str], spokes: &[&str]) -> (Node, Server, Vec<Node>) {
    let hub = Node::new(hub);
    let server = hub.serve(extra);
    let spokes = spokes
        .iter()
        .map(|name| {
            let spoke = Node::new(name);
            spoke.pair(&hub, &server, "hub");
            spoke
        })
        .collect();
    (hub, server, spokes)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A running `selves serve`; killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `selves daemon` that does not serve; killed when dropped.
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    /// SIGTERM, then waits (up to `secs`): the exit code and stderr.
    pub fn terminate(mut self, secs: u64) -> Run {
        terminate(&mut self.child, secs)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM to `child` and waits up to `secs` for it to exit.
pub fn terminate(child: &mut Child, secs: u64) -> Run {
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            return Run {
                code: status.code().unwrap_or(-1),
                stdout: String::new(),
                stderr,
            };
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running {secs} s after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `n` rows in conversation `conv`, `msg_id`s `{prefix}{i}`, with texts of
/// about `len` bytes including some Unicode.
pub fn rows(prefix: &str, conv: &str, n: usize, len: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut text = format!("{prefix} message {i}: привет 🙂 ");
            while text.len() < len {
                text.push_str("lorem ipsum dolor sit amet ");
            }
            json!({
                "source": "e2e",
                "conversation_id": conv,
                "msg_id": format!("{prefix}{i}"),
                "role": if i % 2 == 0 { "user" } else { "assistant" },
                "text": text,
                "ts": 1_716_800_000 + i as i64,
                "conversation": { "title": format!("{conv} title"), "first_ts": 1_716_800_000, "last_ts": 1_716_800_000 + n as i64 }
            })
        })
        .collect()
}

/// Polls `f` until it returns true, for up to `secs` seconds.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The token inside a pair blob.
pub fn blob_token(blob: &str) -> String {
    selves_wire::pair::PairBlob::decode(blob, 0)
        .unwrap()
        .token
        .to_hex()
}

pub fn blob_fingerprint(blob: &str) -> selves_wire::CertFingerprint {
    selves_wire::pair::PairBlob::decode(blob, 0)
        .unwrap()
        .cert_fp
}

/// A raw HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A TLS stream to `addr`, trusting the certificate `pin`.
pub fn tls_stream(
    addr: SocketAddr,
    pin: selves_wire::CertFingerprint,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let config = selves_client::tls::client_config(selves_client::Trust::Pinned(pin)).unwrap();
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        rustls::pki_types::ServerName::try_from("selves").unwrap(),
    )
    .unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Sends one request with `body` (and any extra header lines) and reads the
/// response.
pub fn request(
    addr: SocketAddr,
    pin: selves_wire::CertFingerprint,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut stream = tls_stream(addr, pin);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: selves\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body; a failed
    // write after that is expected.
    let _ = stream.write_all(body);
    let _ = stream.flush();
    read_response(&mut stream)
}

pub fn read_response(stream: &mut impl std::io::Read) -> RawResponse {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
}

/// A request as a test server sees it.
pub struct Incoming {
    pub method: String,
    /// Path with query, as sent.
    pub target: String,
    pub authorization: String,
    pub body: Vec<u8>,
}

/// A small HTTPS/1.1 server for test peers written in the suite: a fresh
/// self-signed certificate, keep-alive, JSON answers from `handler`.
/// Returns its address and certificate fingerprint.
pub fn https_server(
    handler: impl Fn(Incoming) -> (u16, serde_json::Value) + Send + Sync + 'static,
) -> (SocketAddr, selves_wire::CertFingerprint) {
    use rustls::pki_types::pem::PemObject as _;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["test-peer".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_der = cert.der().clone();
    let fingerprint = selves_wire::CertFingerprint::of_der(&cert_der);
    let key_der =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            let (config, handler) = (config.clone(), handler.clone());
            std::thread::spawn(move || {
                let mut conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = BufReader::new(rustls::Stream::new(&mut conn, &mut tcp));
                while let Some(req) = read_request(&mut tls) {
                    let (status, resp) = handler(req);
                    let body = serde_json::to_vec(&resp).unwrap();
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let stream = tls.get_mut();
                    if stream.write_all(head.as_bytes()).is_err()
                        || stream.write_all(&body).is_err()
                    {
                        return;
                    }
                    let _ = stream.flush();
                }
            });
        }
    });
    (addr, fingerprint)
}

fn read_request(r: &mut impl BufRead) -> Option<Incoming> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let (mut len, mut authorization) = (0usize, String::new());
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().ok()?,
                "authorization" => authorization = v.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Incoming {
        method,
        target,
        authorization,
        body,
    })
}

/// A peer played by the test itself: its own key (so its own node id), a
/// token from an invite, and raw requests with the proof of its key. Its
/// batches are signed like a real node's, so a test can forge exactly
/// one thing at a time.
pub struct Prober {
    pub key: selves_wire::sign::NodeKey,
    pub id: selves_wire::NodeId,
    pub server: selves_wire::NodeId,
    pub addr: SocketAddr,
    pub pin: selves_wire::CertFingerprint,
    pub token: String,
}

impl Prober {
    /// A prober holding the token of `blob`, for the server at `addr`,
    /// with the key made from `seed`.
    pub fn new(blob: &str, addr: SocketAddr, seed: u8) -> Prober {
        let b = selves_wire::pair::PairBlob::decode(blob, 0).unwrap();
        let key = selves_wire::sign::NodeKey::from_seed([seed; 32]);
        Prober {
            id: key.public().node_id(),
            key,
            server: b.node_id,
            addr,
            pin: b.cert_fp,
            token: b.token.to_hex(),
        }
    }

    fn proof_now(&self, node: &selves_wire::NodeId) -> (i64, selves_wire::sign::Signature) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let sig = self
            .key
            .sign(&selves_wire::sign::proof_message(&self.server, node, at));
        (at, sig)
    }

    /// A hello body claiming node `node` (normally `self.id`).
    pub fn hello_body(&self, node: &selves_wire::NodeId, name: &str) -> Vec<u8> {
        let (at, sig) = self.proof_now(node);
        serde_json::to_vec(&json!({
            "protocol": {"major": 2, "minor": 0},
            "node": {"id": node, "name": name},
            "key": self.key.public(),
            "to": self.server,
            "at": at,
            "proof": sig,
        }))
        .unwrap()
    }

    /// Says hello as itself (which binds the token to its key).
    pub fn hello(&self) -> RawResponse {
        let body = self.hello_body(&self.id, "prober");
        self.post_raw("/v1/hello", &body, &[])
    }

    /// POST with the token and the proof of this prober's key.
    pub fn post(&self, path: &str, body: &[u8]) -> RawResponse {
        let proof = self.proof_header();
        self.post_raw(path, body, &[("selves-proof", &proof)])
    }

    /// A fresh `selves-proof` header value for this prober's key.
    pub fn proof_header(&self) -> String {
        let (at, sig) = self.proof_now(&self.id);
        format!("{at}.{sig}")
    }

    pub fn post_raw(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> RawResponse {
        request(
            self.addr,
            self.pin,
            "POST",
            path,
            Some(&self.token),
            headers,
            body,
        )
    }

    /// A batch of `node`'s log of `stream` from `start`, chained from
    /// `prev` (the genesis when `None` and `start` is 1), signed at its
    /// end by `signer`. Returns the batch and the chain at its end.
    pub fn batch(
        signer: &selves_wire::sign::NodeKey,
        node: &selves_wire::NodeId,
        stream: &str,
        start: u64,
        prev: Option<selves_wire::sign::Digest>,
        records: Vec<Value>,
    ) -> (Value, selves_wire::sign::Digest) {
        use selves_wire::sign;
        let stream: selves_wire::StreamName = stream.parse().unwrap();
        let mut chain = prev.unwrap_or_else(|| sign::genesis(node, &stream));
        for (i, r) in records.iter().enumerate() {
            let record: selves_wire::native::Record = serde_json::from_value(r.clone()).unwrap();
            let d = sign::record_digest(&record).unwrap();
            chain = sign::link(&chain, start + i as u64, &d);
        }
        let end = start + records.len() as u64 - 1;
        let sig = signer.sign(&sign::head_message(node, &stream, end, &chain));
        (
            json!({
                "node": node, "stream": stream, "start": start, "records": records,
                "key": signer.public(), "sigs": [{"seq": end, "sig": sig}],
            }),
            chain,
        )
    }

    /// A push body of this prober's own log of memory from `start`.
    pub fn push_own(
        &self,
        start: u64,
        prev: Option<selves_wire::sign::Digest>,
        records: Vec<Value>,
    ) -> Vec<u8> {
        let (batch, _) = Prober::batch(&self.key, &self.id, "memory", start, prev, records);
        serde_json::to_vec(&json!({ "batches": [batch] })).unwrap()
    }
}
