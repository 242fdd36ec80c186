//! The HTTP API: routes, bearer authentication, per-token rate limits and
//! the native sync handlers. Handlers hand store work to blocking threads.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};
use selves_store::{AuthOutcome, Store};
use selves_wire::file::blob_path;
use selves_wire::native::{
    self, DigestResponse, Hello, HelloRequest, Limits, NodeInfo, PROTOCOL, PullRequest,
    PullResponse, PushResponse, RecordBatch,
};
use selves_wire::sign::{PROOF_SKEW_MS, PublicKey, Signature, proof_message};
use selves_wire::{Name, StreamName, Token};
use tokio::sync::Notify;

use crate::error::ApiError;

/// Requests per minute and burst allowed per token.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_minute: NonZeroU32,
    pub burst: NonZeroU32,
}

pub(crate) struct App {
    pub store: Arc<Store>,
    pub limits: Limits,
    pub software: String,
    pub limiter: DefaultKeyedRateLimiter<String>,
    pub index_kick: Arc<Notify>,
    /// When each peer's `last_seen_at` was last written, so it is written
    /// at most once a minute.
    pub seen: Mutex<HashMap<String, Instant>>,
    pub reorder: Arc<Reorder>,
    /// Per-token limits of the memex endpoints.
    pub memex_pushes: DefaultKeyedRateLimiter<String>,
    pub memex_pulls: DefaultKeyedRateLimiter<String>,
    pub engine: Arc<selves_share::Engine>,
    pub scans: crate::shares::Scans,
    pub changes: crate::ChangeFeed,
    /// Turns true when the server stops (long polls answer at once).
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Requests with an unknown token, per address: past this rate they
    /// are answered 429, and noted for status.
    pub failed_logins: DefaultKeyedRateLimiter<String>,
    /// Failures not yet written to the store, per address, and when the
    /// address's count was last written.
    pub failures_pending: Mutex<HashMap<String, Pending>>,
    /// Open connections per address, and the addresses known to be peers.
    pub conns: Arc<crate::conns::Conns>,
}

/// Failed logins of one address not yet written to the store.
pub(crate) struct Pending {
    count: u64,
    written: Instant,
    throttle_noted: bool,
}

/// Unknown tokens an address may present a minute before it is throttled.
const FAILED_LOGINS_PER_MINUTE: u32 = 30;

/// The memex endpoints' own rates (seeds/memex-sync.md §Rate limits).
#[derive(Debug, Clone, Copy)]
pub struct MemexRates {
    pub pushes: RateLimit,
    pub pulls: RateLimit,
}

fn keyed(rate: RateLimit) -> DefaultKeyedRateLimiter<String> {
    RateLimiter::keyed(Quota::per_minute(rate.per_minute).allow_burst(rate.burst))
}

/// Lets a client keep two pushes in flight: a push whose records start
/// past the head waits a little for the push before it (likely still being
/// applied) instead of being refused at once as a gap.
#[derive(Default)]
pub(crate) struct Reorder {
    commits: Mutex<u64>,
    committed: std::sync::Condvar,
}

/// How long a push waits for the records before its own.
const REORDER_WINDOW: Duration = Duration::from_secs(5);

impl Reorder {
    fn wait_for_predecessors(
        &self,
        store: &Store,
        batches: &[RecordBatch],
    ) -> Result<(), ApiError> {
        let deadline = Instant::now() + REORDER_WINDOW;
        let mut commits = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let mut ready = true;
            for b in batches.iter().filter(|b| !b.records.is_empty()) {
                if b.start > store.head(&b.node, &b.stream)? + 1 {
                    ready = false;
                    break;
                }
            }
            let now = Instant::now();
            if ready || now >= deadline {
                // Past the window the apply refuses the gap itself.
                return Ok(());
            }
            commits = self
                .committed
                .wait_timeout(commits, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn applied(&self) {
        *self.commits.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.committed.notify_all();
    }
}

impl App {
    pub fn new(
        store: Arc<Store>,
        engine: Arc<selves_share::Engine>,
        config: &crate::ServerConfig,
        index_kick: Arc<Notify>,
        changes: crate::ChangeFeed,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        App {
            store,
            limits: config.limits,
            software: config.software.clone(),
            limiter: keyed(config.rate),
            memex_pushes: keyed(config.memex.pushes),
            memex_pulls: keyed(config.memex.pulls),
            index_kick,
            seen: Mutex::new(HashMap::new()),
            reorder: Arc::new(Reorder::default()),
            engine,
            scans: crate::shares::Scans::default(),
            changes,
            stopping,
            failed_logins: keyed(RateLimit {
                per_minute: NonZeroU32::new(FAILED_LOGINS_PER_MINUTE).expect("nonzero"),
                burst: NonZeroU32::new(FAILED_LOGINS_PER_MINUTE).expect("nonzero"),
            }),
            failures_pending: Mutex::new(HashMap::new()),
            conns: crate::conns::Conns::new(config.max_connections),
        }
    }
}

/// A request with an unknown (or malformed) token from `addr`: counted,
/// written for status at most every 5 s per address, and past the rate
/// answered 429 instead of 401.
async fn failed_login(app: &Arc<App>, addr: Option<String>, why: ApiError) -> ApiError {
    let addr = addr.unwrap_or_else(|| "an unknown address".into());
    let throttled = app.failed_logins.check_key(&addr).err();
    // Written at most once a second per address (every 5 s while few),
    // and at once when the address starts being throttled: a flood of
    // guesses never becomes a flood of disk writes.
    let flush = {
        let mut pending = app
            .failures_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let entry = pending.entry(addr.clone()).or_insert(Pending {
            count: 0,
            written: Instant::now() - Duration::from_secs(60),
            throttle_noted: false,
        });
        entry.count += 1;
        let since = entry.written.elapsed();
        let newly_throttled = throttled.is_some() && !entry.throttle_noted;
        if since >= Duration::from_secs(5)
            || (entry.count >= 10 && since >= Duration::from_secs(1))
            || newly_throttled
        {
            let n = entry.count;
            entry.count = 0;
            entry.written = Instant::now();
            entry.throttle_noted = throttled.is_some();
            Some(n)
        } else {
            None
        }
    };
    if let Some(n) = flush {
        let store = app.store.clone();
        let (a, t) = (addr.clone(), throttled.is_some());
        let _ = blocking(move || Ok(store.note_login_failures(&a, n, t, now_ms())?)).await;
    }
    match throttled {
        Some(not_until) => {
            tracing::warn!(%addr, "unknown tokens from one address: throttled");
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            ApiError::RateLimited {
                retry_after: wait.max(Duration::from_secs(1)),
            }
        }
        None => why,
    }
}

/// The caller, as authenticated by its token.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub Name);

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RemoteAddr(pub std::net::SocketAddr);

fn remote_addr(req: &Request) -> Option<String> {
    req.extensions()
        .get::<RemoteAddr>()
        .map(|a| a.0.ip().to_string())
}

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(native::path::HELLO, post(hello))
        .route(native::path::PULL, post(pull))
        .route(native::path::PUSH, post(push))
        .route(native::path::DIGEST, get(digest))
        .route(native::path::CHANGES, get(changes))
        .route(native::path::MARKER, post(marker))
        .route(blob_path::WANTS, post(crate::shares::wants))
        .route(blob_path::GET, post(crate::shares::get))
        .route(blob_path::PUT, post(crate::shares::put))
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .merge(crate::memex::router())
        .fallback(|| async { ApiError::NotFound })
        .with_state(app)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("worker failed: {e}")))?
}

fn bearer(headers: &HeaderMap) -> Result<Token, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
    let text = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::Unauthorized("malformed Authorization header".into()))?;
    text.parse()
        .map_err(|_| ApiError::Unauthorized("malformed bearer token".into()))
}

/// The peer a request's bearer token was minted for, or why not.
pub(crate) async fn authorize(
    app: &Arc<App>,
    headers: &HeaderMap,
    addr: Option<String>,
) -> Result<Name, ApiError> {
    let token = match bearer(headers) {
        Ok(t) => t,
        Err(e) => return Err(failed_login(app, addr, e).await),
    };
    let store = app.store.clone();
    let outcome = blocking(move || Ok(store.authenticate(&token, now_ms())?)).await?;
    let peer = match outcome {
        AuthOutcome::Ok(peer) => peer,
        AuthOutcome::Unknown => {
            let why = ApiError::Unauthorized("unknown token".into());
            return Err(failed_login(app, addr, why).await);
        }
        AuthOutcome::Revoked(p) => {
            return Err(ApiError::Unauthorized(format!(
                "the token of {p} was revoked"
            )));
        }
        AuthOutcome::Expired(p) => {
            return Err(ApiError::Unauthorized(format!(
                "the invite for {p} expired before it was used"
            )));
        }
    };
    note_seen(app, &peer, addr).await;
    Ok(peer)
}

/// [`authorize`] for the memex endpoints: a memex peer has no key, so only
/// a token no selves node has bound is good there (and is then a memex
/// peer's for good).
pub(crate) async fn authorize_memex(
    app: &Arc<App>,
    headers: &HeaderMap,
    addr: Option<String>,
) -> Result<Name, ApiError> {
    let peer = authorize(app, headers, addr).await?;
    let store = app.store.clone();
    let p = peer.clone();
    if !blocking(move || Ok(store.claim_memex_token(&p, now_ms())?)).await? {
        return Err(ApiError::Unauthorized(format!(
            "the token of {peer} belongs to a selves node, not a memex peer"
        )));
    }
    Ok(peer)
}

/// Checks the caller's proof that it holds the key its token is bound to
/// (the `selves-proof` header: `<at_ms>.<signature hex>`).
async fn check_proof(app: &Arc<App>, peer: &Name, headers: &HeaderMap) -> Result<(), ApiError> {
    let store = app.store.clone();
    let p = peer.clone();
    let Some((node, key)) = blocking(move || Ok(store.token_binding(&p)?)).await? else {
        return Err(ApiError::Unauthorized(format!(
            "the token of {peer} is not bound to a node yet: start with a hello"
        )));
    };
    let proof = headers
        .get(native::PROOF_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::Unauthorized("missing proof of the node's key (selves-proof)".into())
        })?;
    let (at, sig) = proof
        .split_once('.')
        .and_then(|(at, sig)| Some((at.parse::<i64>().ok()?, sig.parse::<Signature>().ok()?)))
        .ok_or_else(|| ApiError::Unauthorized("malformed selves-proof header".into()))?;
    check_signed_proof(app, &node, &key, at, &sig)
}

fn check_signed_proof(
    app: &Arc<App>,
    node: &selves_wire::NodeId,
    key: &PublicKey,
    at: i64,
    sig: &Signature,
) -> Result<(), ApiError> {
    if (now_ms() - at).abs() > PROOF_SKEW_MS {
        return Err(ApiError::Unauthorized(
            "the proof of the node's key is too old (or the clocks differ by over 10 minutes)"
                .into(),
        ));
    }
    if !key.verifies(&proof_message(&app.store.me().id, node, at), sig) {
        return Err(ApiError::Unauthorized(format!(
            "the caller does not hold the key of node {node}, to which this token is bound"
        )));
    }
    Ok(())
}

/// Answers 429 with the wait when `peer` is over `limiter`'s rate.
pub(crate) fn limit(
    limiter: &DefaultKeyedRateLimiter<String>,
    peer: &Name,
) -> Result<(), ApiError> {
    limiter.check_key(&peer.to_string()).map_err(|not_until| {
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        ApiError::RateLimited {
            retry_after: wait.max(Duration::from_secs(1)),
        }
    })
}

/// Checks the bearer token, then the caller's rate limit.
async fn authenticate(
    State(app): State<Arc<App>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let addr = remote_addr(&req);
    let peer = authorize(&app, req.headers(), addr).await?;
    limit(&app.limiter, &peer)?;
    // Hello proves the key itself (and binds the token); every other
    // request carries a proof for the key the token is bound to.
    if req.uri().path() != native::path::HELLO {
        check_proof(&app, &peer, req.headers()).await?;
    }
    req.extensions_mut().insert(Caller(peer));
    Ok(next.run(req).await)
}

async fn note_seen(app: &Arc<App>, peer: &Name, addr: Option<String>) {
    if let Some(ip) = addr.as_deref().and_then(|a| a.parse().ok()) {
        app.conns.known(ip);
    }
    let due = {
        let mut seen = app.seen.lock().unwrap_or_else(|p| p.into_inner());
        let last = seen.get(peer.as_str());
        let due = last.is_none_or(|t| t.elapsed() > Duration::from_secs(60));
        if due {
            seen.insert(peer.to_string(), Instant::now());
        }
        due
    };
    if due {
        let store = app.store.clone();
        let peer = peer.clone();
        // Best effort: a status timestamp is not worth failing a request.
        let _ = blocking(move || Ok(store.touch_token(&peer, addr.as_deref(), now_ms())?)).await;
    }
}

/// Reads a body of at most `limit` bytes (after decompression).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let compressed = headers.contains_key(header::CONTENT_ENCODING);
    if !compressed && declared.is_some_and(|n| n > limit) {
        drain(body).await;
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = body;
    let mut out = Vec::new();
    loop {
        match http_body_util::BodyExt::frame(&mut body).await {
            None => return Ok(out.into()),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if out.len() as u64 + data.len() as u64 > limit {
                        drain(body).await;
                        return Err(ApiError::PayloadTooLarge { limit });
                    }
                    out.extend_from_slice(data);
                }
            }
            Some(Err(e)) => {
                return Err(ApiError::BadRequest(format!(
                    "could not read the body: {e}"
                )));
            }
        }
    }
}

/// Reads and discards what is left of a refused body (up to 16 MiB), so
/// the client, which usually sends its whole body before it reads, gets
/// the answer instead of a reset from a socket closed with data unread.
async fn drain(mut body: Body) {
    const DRAIN_MAX: usize = 16 << 20;
    let mut seen = 0usize;
    while seen < DRAIN_MAX {
        match http_body_util::BodyExt::frame(&mut body).await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

fn json_bytes(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

async fn hello(
    State(app): State<Arc<App>>,
    Extension(Caller(you)): Extension<Caller>,
    addr: Option<Extension<RemoteAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Hello>, ApiError> {
    let bytes = read_body(&headers, body, app.limits.max_body_bytes).await?;
    let req: HelloRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "malformed hello (a selves older than protocol 2 speaks without a key: upgrade it): {e}"
        ))
    })?;
    if req.protocol.major != PROTOCOL.major {
        return Err(ApiError::Conflict {
            code: "protocol_mismatch",
            detail: format!(
                "this node speaks protocol {}, the caller {}: upgrade the older one",
                PROTOCOL.major, req.protocol.major
            ),
        });
    }
    if req.to != app.store.me().id {
        return Err(ApiError::Conflict {
            code: "wrong_server",
            detail: app.store.me().id.to_string(),
        });
    }
    // The caller proves it holds the key its id derives from (or is bound
    // to), for this server and about now.
    check_signed_proof(&app, &req.node.id, &req.key, req.at, &req.proof)?;
    let a = app.clone();
    let caller = you.clone();
    let addr = addr.map(|a| a.0.0.ip().to_string());
    let (heads, nodes, streams, abandoned) = blocking(move || {
        let store = &a.store;
        if req.node.id == store.me().id {
            return Err(ApiError::Conflict {
                code: "same_node",
                detail: "the caller is this node itself (same node id)".into(),
            });
        }
        if !store.bind_node_key(&req.node.id, None, &req.key)? {
            return Err(ApiError::Unauthorized(format!(
                "node {} is bound to another key here: the caller is not that node",
                req.node.id
            )));
        }
        match store.claim_token(&caller, &req.node.id, &req.key, addr.as_deref(), now_ms())? {
            selves_store::Claim::Bound => {}
            selves_store::Claim::Taken(by) => {
                tracing::warn!(peer = %caller, node = %req.node.id, ?addr, "token bound to another node; refused");
                return Err(ApiError::Unauthorized(format!(
                    "the token of {caller} is bound to node {by}; a token works for one node only (ask for a new invite)"
                )));
            }
            selves_store::Claim::Expired => {
                return Err(ApiError::Unauthorized(format!(
                    "the invite for {caller} expired before it was used"
                )));
            }
        }
        store.learn_nodes(std::slice::from_ref(&req.node))?;
        store.take_abandoned(&req.abandoned, now_ms())?;
        // A peer about to pull sees what changed in the folders.
        crate::shares::scan_for_peer(&a.engine, store, &a.scans)?;
        let carried = store.streams()?;
        let heads = store
            .heads()?
            .into_iter()
            .filter(|h| carried.contains(&h.stream))
            .collect();
        // What this node takes pushes for: memory, and shares it receives.
        let mut accepts = vec![StreamName::memory(), StreamName::nodes()];
        accepts.extend(
            store
                .shares()?
                .into_iter()
                .filter(|s| s.mode.receives())
                .map(|s| s.stream),
        );
        Ok((heads, store.known_nodes()?, accepts, store.abandoned()?))
    })
    .await?;
    let me = app.store.me();
    Ok(Json(Hello {
        protocol: PROTOCOL,
        software: app.software.clone(),
        node: NodeInfo {
            id: me.id.clone(),
            name: me.name.clone(),
        },
        key: app.store.public_key(),
        you,
        streams,
        heads,
        nodes,
        limits: app.limits,
        server_now_ms: now_ms(),
        abandoned,
    }))
}

async fn pull(
    State(app): State<Arc<App>>,
    Extension(Caller(peer)): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, app.limits.max_body_bytes).await?;
    let limits = app.limits;
    let store = app.store.clone();
    let started = Instant::now();
    let (json, records) = blocking(move || {
        let req: PullRequest = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("malformed pull request: {e}")))?;
        if req.ranges.len() > 10_000 {
            return Err(ApiError::BadRequest("more than 10000 ranges".into()));
        }
        let max_records = req
            .max_records
            .unwrap_or(limits.max_pull_records)
            .clamp(1, limits.max_pull_records) as usize;
        let max_bytes = req
            .max_bytes
            .unwrap_or(limits.max_pull_bytes)
            .clamp(1, limits.max_pull_bytes) as usize;
        let read = store.read_ranges(&req.ranges, max_records, max_bytes)?;
        let resp = PullResponse {
            batches: read.batches,
            more: read.more,
        };
        let json = serde_json::to_vec(&resp).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok((json, read.records))
    })
    .await?;
    tracing::debug!(%peer, records, bytes = json.len(), ms = started.elapsed().as_millis() as u64, "pull");
    Ok(json_bytes(json))
}

async fn push(
    State(app): State<Arc<App>>,
    Extension(Caller(peer)): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PushResponse>, ApiError> {
    let bytes = read_body(&headers, body, app.limits.max_body_bytes).await?;
    let max_records = app.limits.max_push_records as usize;
    let store = app.store.clone();
    let engine = app.engine.clone();
    let started = Instant::now();
    let reorder = app.reorder.clone();
    let (summary, shared) = blocking(move || {
        let (batches, _) = native::parse_batches(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("malformed push request: {e}")))?;
        let n: usize = batches.iter().map(|b| b.records.len()).sum();
        if n > max_records {
            return Err(ApiError::BadRequest(format!(
                "{n} records in one push; this server takes at most {max_records}"
            )));
        }
        if batches.iter().any(|b| b.start == 0) {
            return Err(ApiError::BadRequest("records are numbered from 1".into()));
        }
        reorder.wait_for_predecessors(&store, &batches)?;
        let (memory, shared): (Vec<_>, Vec<_>) =
            batches.into_iter().partition(|b| !b.stream.is_share());
        // The answer acknowledges these records: they must be on disk first.
        let summary = store.apply(memory, selves_store::Durability::Full, now_ms());
        let shared = summary
            .as_ref()
            .ok()
            .map(|_| crate::shares::apply_pushed(&engine, &store, shared));
        reorder.applied();
        let summary = summary?;
        Ok((
            summary,
            shared.expect("set when the memory batches applied")?,
        ))
    })
    .await?;
    app.changes.poke();
    if summary.changed_rows > 0 {
        app.index_kick.notify_one();
    }
    let mut refused = summary.refused.clone();
    refused.extend(shared.refused.iter().cloned());
    if !refused.is_empty() {
        tracing::warn!(%peer, refused = refused.len(), first = %refused[0].reason, "push batches refused");
        let store = app.store.clone();
        let p = peer.to_string();
        let r = refused.clone();
        blocking(move || Ok(store.note_refusals(&p, &r, now_ms())?)).await?;
    }
    tracing::info!(
        %peer,
        accepted = summary.accepted,
        duplicates = summary.duplicates,
        voided = summary.voided.len(),
        ms = started.elapsed().as_millis() as u64,
        "push applied"
    );
    let mut voided = summary.voided;
    voided.extend(shared.voided);
    let mut heads = summary.heads;
    heads.extend(shared.heads);
    Ok(Json(PushResponse {
        accepted: summary.accepted + shared.accepted,
        duplicates: summary.duplicates + shared.duplicates,
        voided,
        refused: refused
            .into_iter()
            .map(|r| native::Voided {
                node: r.node,
                stream: r.stream,
                seq: r.seq,
                reason: format!("{}: {}", r.kind.as_str(), r.reason),
            })
            .collect(),
        heads,
    }))
}

#[derive(serde::Deserialize)]
struct ChangesQuery {
    #[serde(default)]
    after: u64,
}

/// The long poll: answers when the log version differs from `after`, or
/// after [`native::CHANGES_WAIT_SECS`] (or when the server stops) with it
/// unchanged.
async fn changes(
    State(app): State<Arc<App>>,
    query: Result<axum::extract::Query<ChangesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<native::Changes>, ApiError> {
    let q = query
        .map_err(|e| ApiError::BadRequest(format!("after must be a number: {e}")))?
        .0;
    let mut versions = app.changes.subscribe();
    let mut stopping = app.stopping.clone();
    let deadline = tokio::time::sleep(Duration::from_secs(native::CHANGES_WAIT_SECS));
    tokio::pin!(deadline);
    loop {
        let version = *versions.borrow_and_update();
        if version != q.after || *stopping.borrow() {
            return Ok(Json(native::Changes { version }));
        }
        tokio::select! {
            r = versions.changed() => if r.is_err() { return Ok(Json(native::Changes { version })) },
            _ = stopping.changed() => {}
            () = &mut deadline => return Ok(Json(native::Changes { version })),
        }
    }
}

/// The join self-test: if this node holds the caller's card with the
/// marker it pushed, writes this node's card with the caller's new marker
/// (durably) for the caller to pull.
async fn marker(
    State(app): State<Arc<App>>,
    Extension(Caller(peer)): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<native::MarkerResponse>, ApiError> {
    let bytes = read_body(&headers, body, 4096).await?;
    let req: native::MarkerRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("malformed marker request: {e}")))?;
    for m in [&req.seen, &req.write] {
        selves_wire::card::check_marker(m).map_err(ApiError::BadRequest)?;
    }
    let store = app.store.clone();
    let software = app.software.clone();
    let resp = blocking(move || {
        let held = store.card(&req.node)?;
        if held.and_then(|c| c.marker).as_deref() != Some(req.seen.as_str()) {
            return Ok(native::MarkerResponse {
                seen: false,
                seq: 0,
            });
        }
        let (_, seq) = store.write_own_card(now_ms(), |card| {
            card.marker = Some(req.write);
            card.software = software;
        })?;
        Ok(native::MarkerResponse { seen: true, seq })
    })
    .await?;
    if resp.seen {
        app.changes.poke();
    }
    tracing::info!(%peer, seen = resp.seen, "join self-test marker");
    Ok(Json(resp))
}

async fn digest(State(app): State<Arc<App>>) -> Result<Json<DigestResponse>, ApiError> {
    let store = app.store.clone();
    let (heads, memory, shares) = blocking(move || {
        let (heads, memory) = store.digest()?;
        Ok((heads, memory, store.share_digests()?))
    })
    .await?;
    let me = app.store.me();
    Ok(Json(DigestResponse {
        node: NodeInfo {
            id: me.id.clone(),
            name: me.name.clone(),
        },
        heads,
        memory,
        shares,
    }))
}
