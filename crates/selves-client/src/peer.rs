//! One peer's HTTPS endpoint, spoken to with its pinned certificate and
//! bearer token. Responses are classified into [`SyncError`]s that say
//! whether retrying can help.

use std::time::Duration;

use reqwest::StatusCode;
use selves_wire::file::{BlobsGet, BlobsStored, BlobsWants, BlobsWantsRequest, blob_path};
use selves_wire::native::{
    self, DigestResponse, ErrorBody, Hello, HelloRequest, PullRequest, PushResponse,
};
use selves_wire::{CertFingerprint, Token, memex};

use crate::tls::{PinMismatch, Trust, client_config};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(
        "{url} refused our token ({detail}): token revoked or wrong: re-pair with a new invite"
    )]
    Unauthorized { url: String, detail: String },
    #[error(
        "{url} speaks selves protocol {theirs}, this node speaks {ours}: upgrade selves on the older side"
    )]
    ProtocolMismatch { url: String, theirs: u32, ours: u32 },
    #[error(
        "{url} presented certificate {found}, but this peer is pinned to {expected}: refusing to send anything. If the hub's certificate really changed, pair again with a new invite"
    )]
    PinMismatch {
        url: String,
        expected: CertFingerprint,
        found: CertFingerprint,
    },
    #[error(
        "{url} presented the pinned certificate but could not prove it holds its key: someone else may be answering at this address. Nothing was sent"
    )]
    ForgedCertificate { url: String },
    #[error("TLS with {url} failed: {detail}")]
    Tls { url: String, detail: String },
    #[error("cannot reach {url}: {detail}")]
    Network { url: String, detail: String },
    #[error("{url} failed with {status}: {detail}")]
    Server {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{url} is rate limiting us: retry after {} s", retry_after.as_secs())]
    RateLimited { url: String, retry_after: Duration },
    #[error("{url} refused a body as too large")]
    PayloadTooLarge { url: String },
    #[error(
        "{url} refused the request as malformed ({detail}): this is a bug in one of the two nodes"
    )]
    BadRequest { url: String, detail: String },
    #[error("{url} answered {code}: {detail}")]
    Conflict {
        url: String,
        code: String,
        detail: String,
    },
    #[error("{url} is this node itself (same node id): nothing to sync")]
    SameNode { url: String },
    #[error(
        "{url} is node {found}, not node {expected} this peer was paired with: is the address right?"
    )]
    WrongNode {
        url: String,
        expected: selves_wire::NodeId,
        found: selves_wire::NodeId,
    },
    #[error("{url} has no such endpoint ({detail})")]
    NotFound { url: String, detail: String },
    #[error(
        "{url} speaks memex schema {theirs}, selves speaks schema {ours}: upgrade the older side"
    )]
    SchemaMismatch { url: String, theirs: u32, ours: u32 },
    #[error("{url} sent something this node cannot read: {detail}")]
    Protocol { url: String, detail: String },
    #[error("share {share}: {detail}")]
    Share { share: String, detail: String },
    #[error(transparent)]
    Store(#[from] selves_store::StoreError),
}

impl SyncError {
    /// Whether the same request may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Network { .. }
            | SyncError::Server { .. }
            | SyncError::RateLimited { .. } => true,
            SyncError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// A short class for status and exit codes.
    pub fn class(&self) -> &'static str {
        match self {
            SyncError::Unauthorized { .. } => "auth",
            SyncError::ProtocolMismatch { .. } | SyncError::SchemaMismatch { .. } => "version",
            SyncError::PinMismatch { .. } | SyncError::ForgedCertificate { .. } => "certificate",
            SyncError::Tls { .. } => "tls",
            SyncError::Network { .. } => "network",
            SyncError::Server { .. } => "server",
            SyncError::RateLimited { .. } => "rate-limited",
            SyncError::PayloadTooLarge { .. } => "too-large",
            SyncError::BadRequest { .. }
            | SyncError::Protocol { .. }
            | SyncError::NotFound { .. } => "protocol",
            SyncError::Conflict { .. }
            | SyncError::SameNode { .. }
            | SyncError::WrongNode { .. } => "conflict",
            SyncError::Store(_) => "store",
            SyncError::Share { .. } => "share",
        }
    }
}

/// Where a peer is and how it is trusted.
#[derive(Clone)]
pub struct PeerTarget {
    /// `https://host:port`, no trailing slash.
    pub url: String,
    pub token: Token,
    pub trust: Trust,
    /// The peer's node id, when known: this node's proof of its key is
    /// made for it alone.
    pub node: Option<selves_wire::NodeId>,
    /// Makes this node's proof of its key for a server at a time (the
    /// store holds the key), for requests made without a hello first.
    pub prover: Option<Prover>,
}

impl std::fmt::Debug for PeerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTarget")
            .field("url", &self.url)
            .field("trust", &self.trust)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Signs this node's proof of its key for server `node` at `at_ms`.
pub type Prover =
    std::sync::Arc<dyn Fn(&selves_wire::NodeId, i64) -> selves_wire::sign::Signature + Send + Sync>;

/// The prover of the node whose store holds the key.
pub fn prover(store: &std::sync::Arc<selves_store::Store>) -> Prover {
    let store = store.clone();
    std::sync::Arc::new(move |server, at| store.prove(server, at))
}

/// How long a proof is reused before a fresh one is made (the server
/// takes proofs up to ten minutes old).
const PROOF_REUSE_MS: i64 = 4 * 60 * 1000;

pub struct PeerClient {
    http: reqwest::Client,
    target: PeerTarget,
    traffic: std::sync::atomic::AtomicU64,
    /// The `selves-proof` header sent with every request, and when it
    /// was made.
    proof: std::sync::Mutex<Option<(i64, String)>>,
    /// The peer's node id, as configured or as its hello said.
    server: std::sync::Mutex<Option<selves_wire::NodeId>>,
}

impl PeerClient {
    pub fn new(target: PeerTarget) -> Result<Self, SyncError> {
        let tls = client_config(target.trust).map_err(|e| SyncError::Tls {
            url: target.url.clone(),
            detail: e.to_string(),
        })?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .user_agent(concat!("selves/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SyncError::Tls {
                url: target.url.clone(),
                detail: e.to_string(),
            })?;
        Ok(PeerClient {
            http,
            traffic: Default::default(),
            proof: Default::default(),
            server: std::sync::Mutex::new(target.node.clone()),
            target,
        })
    }

    pub fn url(&self) -> &str {
        &self.target.url
    }

    /// The peer's node id, when known before hello.
    pub fn node(&self) -> Option<&selves_wire::NodeId> {
        self.target.node.as_ref()
    }

    /// Notes who the peer is (learnt since this client was made), so its
    /// requests can carry a proof made for it.
    pub fn set_server(&self, server: &selves_wire::NodeId) {
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(server.clone());
    }

    /// Whether the peer's node id is known (configured or learnt).
    pub fn knows_server(&self) -> bool {
        self.server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Notes who the peer is (its hello said) and the proof of this
    /// node's key made for it, sent with every later request.
    pub fn set_proof(
        &self,
        server: &selves_wire::NodeId,
        at_ms: i64,
        sig: &selves_wire::sign::Signature,
    ) {
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(server.clone());
        *self.proof.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((at_ms, format!("{at_ms}.{sig}")));
    }

    fn with_proof(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let now = crate::replicate::now_ms();
        let mut proof = self.proof.lock().unwrap_or_else(|p| p.into_inner());
        let stale = proof
            .as_ref()
            .is_none_or(|(at, _)| now - at > PROOF_REUSE_MS);
        if stale
            && let Some(prover) = &self.target.prover
            && let Some(server) = self
                .server
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        {
            let sig = prover(&server, now);
            *proof = Some((now, format!("{now}.{sig}")));
        }
        match proof.as_ref() {
            Some((_, p)) => req.header(native::PROOF_HEADER, p),
            None => req,
        }
    }

    pub async fn hello(&self, req: &HelloRequest) -> Result<Hello, SyncError> {
        let body = serde_json::to_vec(req).map_err(|e| self.protocol(e))?;
        let bytes = self.send(self.post(native::path::HELLO, body)).await?;
        self.parse(&bytes)
    }

    pub async fn digest(&self) -> Result<DigestResponse, SyncError> {
        let bytes = self.send(self.get(native::path::DIGEST)).await?;
        self.parse(&bytes)
    }

    /// `GET /v1/changes?after=N`: waits (up to the server's limit) for the
    /// peer's log version to differ from `after`, and returns it.
    pub async fn changes(&self, after: u64) -> Result<u64, SyncError> {
        let path = format!("{}?after={after}", native::path::CHANGES);
        let bytes = self.send(self.get(&path)).await?;
        Ok(self.parse::<native::Changes>(&bytes)?.version)
    }

    /// `POST /v1/marker`: the join self-test.
    pub async fn marker(
        &self,
        req: &native::MarkerRequest,
    ) -> Result<native::MarkerResponse, SyncError> {
        let body = serde_json::to_vec(req).map_err(|e| self.protocol(e))?;
        let bytes = self.send(self.post(native::path::MARKER, body)).await?;
        self.parse(&bytes)
    }

    /// The raw pull response, parsed by the caller off the async threads.
    pub async fn pull(&self, req: &PullRequest) -> Result<bytes::Bytes, SyncError> {
        let body = serde_json::to_vec(req).map_err(|e| self.protocol(e))?;
        self.send(self.post(native::path::PULL, body)).await
    }

    /// Pushes a serialised [`native::PushRequest`].
    pub async fn push(&self, body: Vec<u8>) -> Result<PushResponse, SyncError> {
        let bytes = self.send(self.post(native::path::PUSH, body)).await?;
        self.parse(&bytes)
    }

    /// memex v12 `GET /sync/health`.
    pub async fn memex_health(&self) -> Result<memex::Health, SyncError> {
        let bytes = self.send(self.get(memex::path::HEALTH)).await?;
        self.parse(&bytes)
    }

    /// memex v12 `GET /sync/pull`; the body is parsed by the caller.
    pub async fn memex_pull(&self, since: i64, limit: u32) -> Result<bytes::Bytes, SyncError> {
        let path = format!("{}?since={since}&limit={limit}", memex::path::PULL);
        self.send(self.get(&path)).await
    }

    /// memex v12 `POST /sync/push` of a serialised `{"rows": [...]}`.
    pub async fn memex_push(&self, body: Vec<u8>) -> Result<memex::PushResponse, SyncError> {
        let bytes = self.send(self.post(memex::path::PUSH, body)).await?;
        self.parse(&bytes)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.with_proof(
            self.http
                .get(format!("{}{path}", self.target.url))
                .bearer_auth(self.target.token.to_hex()),
        )
    }

    fn post(&self, path: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        self.with_proof(
            self.http
                .post(format!("{}{path}", self.target.url))
                .bearer_auth(self.target.token.to_hex())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        )
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, SyncError> {
        serde_json::from_slice(bytes).map_err(|e| self.protocol(e))
    }

    fn protocol(&self, e: impl std::fmt::Display) -> SyncError {
        SyncError::Protocol {
            url: self.target.url.clone(),
            detail: e.to_string(),
        }
    }

    /// `POST /v1/blobs/wants`.
    pub async fn blobs_wants(&self, req: &BlobsWantsRequest) -> Result<BlobsWants, SyncError> {
        let body = serde_json::to_vec(req).map_err(|e| self.protocol(e))?;
        let bytes = self.send(self.post(blob_path::WANTS, body)).await?;
        self.parse(&bytes)
    }

    /// `POST /v1/blobs/get`: the response, whose body is a blob stream.
    pub async fn blobs_get(&self, req: &BlobsGet) -> Result<reqwest::Response, SyncError> {
        let body = serde_json::to_vec(req).map_err(|e| self.protocol(e))?;
        self.count(body.len());
        self.respond(self.post(blob_path::GET, body)).await
    }

    /// `POST /v1/blobs/put?share=NAME` with a streamed body of frames.
    pub async fn blobs_put(
        &self,
        share: &selves_wire::Name,
        body: reqwest::Body,
    ) -> Result<BlobsStored, SyncError> {
        // A name is URL-safe as it is.
        let req = self
            .http
            .post(format!(
                "{}{}?share={share}",
                self.target.url,
                blob_path::PUT
            ))
            .bearer_auth(self.target.token.to_hex())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        let bytes = self.send(self.with_proof(req)).await?;
        self.parse(&bytes)
    }

    /// Bytes of request and response bodies so far (blob streams counted
    /// by their callers).
    pub fn traffic(&self) -> u64 {
        self.traffic.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts body bytes moved.
    pub fn count(&self, n: usize) {
        self.traffic
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<bytes::Bytes, SyncError> {
        let url = self.target.url.clone();
        if let Some(n) = req
            .try_clone()
            .and_then(|r| r.build().ok())
            .and_then(|r| r.body().and_then(|b| b.as_bytes()).map(<[u8]>::len))
        {
            self.count(n);
        }
        let resp = self.respond(req).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| classify_transport(&url, &e))?;
        self.count(body.len());
        Ok(body)
    }

    /// Sends `req`; a response that is not a success becomes the error it
    /// says.
    async fn respond(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, SyncError> {
        let url = self.target.url.clone();
        let resp = req.send().await.map_err(|e| classify_transport(&url, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = resp
            .bytes()
            .await
            .map_err(|e| classify_transport(&url, &e))?;
        let detail = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.detail.unwrap_or(b.error))
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
        Err(match status {
            StatusCode::UNAUTHORIZED => SyncError::Unauthorized { url, detail },
            StatusCode::BAD_REQUEST => SyncError::BadRequest { url, detail },
            StatusCode::NOT_FOUND => SyncError::NotFound { url, detail },
            StatusCode::PAYLOAD_TOO_LARGE => SyncError::PayloadTooLarge { url },
            StatusCode::TOO_MANY_REQUESTS => SyncError::RateLimited {
                url,
                retry_after: Duration::from_secs(retry_after.unwrap_or(1)),
            },
            StatusCode::CONFLICT => {
                let code = serde_json::from_slice::<ErrorBody>(&body)
                    .map(|b| b.error)
                    .unwrap_or_default();
                SyncError::Conflict { url, code, detail }
            }
            s if s.is_server_error() => SyncError::Server {
                url,
                status: s.as_u16(),
                detail,
            },
            s => SyncError::Protocol {
                url,
                detail: format!("unexpected status {s}: {detail}"),
            },
        })
    }
}

/// Tells certificate refusals (never retried) from network trouble.
fn classify_transport(url: &str, e: &reqwest::Error) -> SyncError {
    match find_tls_error(e) {
        Some(tls) => classify_tls(url, tls),
        None => SyncError::Network {
            url: url.to_owned(),
            detail: error_chain(e),
        },
    }
}

/// The rustls error somewhere in `e`'s chain. An `io::Error` hides the
/// error it wraps from `source()`, so look inside it too.
fn find_tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        if let Some(tls) = inner.and_then(|inner| find_tls_error(inner)) {
            return Some(tls);
        }
        source = err.source();
    }
    None
}

fn classify_tls(url: &str, tls: &rustls::Error) -> SyncError {
    match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            match other.0.downcast_ref::<PinMismatch>() {
                Some(m) => SyncError::PinMismatch {
                    url: url.to_owned(),
                    expected: m.expected,
                    found: m.found,
                },
                None => SyncError::Tls {
                    url: url.to_owned(),
                    detail: tls.to_string(),
                },
            }
        }
        // The key that signed the handshake is not the pinned certificate's.
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadSignature
            | rustls::CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. },
        ) => SyncError::ForgedCertificate {
            url: url.to_owned(),
        },
        other => SyncError::Tls {
            url: url.to_owned(),
            detail: other.to_string(),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
