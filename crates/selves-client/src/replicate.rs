//! The replicator: one sync round with one peer.
//!
//! 1. `hello`: protocol check, the peer's identity, heads and limits.
//! 2. Pull every (node, stream) where the peer is ahead, batch by batch;
//!    each batch is applied in one durable transaction while the next one
//!    is already being fetched.
//! 3. Push every (node, stream) where this node is ahead; the next body is
//!    prepared while the current one is in flight, and the peer answers
//!    only once it has committed.
//!
//! Nothing here keeps a cursor: progress is the receiving side's heads,
//! which move only with its commits. A round killed at any point is simply
//! run again and resumes from those heads, with nothing lost or doubled.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use selves_share::Engine;
use selves_store::{Durability, Store};
use selves_wire::native::{
    Head, Hello, HelloRequest, NodeInfo, PROTOCOL, PullRequest, PushRequest, Range, RecordBatch,
    Voided,
};
use selves_wire::{NodeId, StreamName};

use crate::peer::{PeerClient, SyncError};

#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Records per request at most; `None` uses the peer's limits.
    pub batch_records: Option<u32>,
    /// Tries per request when a failure may pass (network, 5xx).
    pub attempts: u32,
    /// First backoff; doubles per retry up to 30 s.
    pub backoff: Duration,
    /// The longest Retry-After honoured; a longer one ends the round.
    pub max_wait: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            batch_records: None,
            attempts: 5,
            backoff: Duration::from_millis(250),
            max_wait: Duration::from_secs(120),
        }
    }
}

/// What the round tells whoever shows progress. All methods default to
/// doing nothing.
pub trait Progress: Send + Sync {
    fn planned(&self, _to_pull: u64, _to_push: u64) {}
    fn pulled(&self, _records: u64) {}
    fn pushed(&self, _records: u64) {}
    fn waiting(&self, _why: &str, _wait: Duration) {}
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub struct NoProgress;
impl Progress for NoProgress {}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncReport {
    /// The peer's own name for itself (a selves node's name, or "memex
    /// <version>").
    pub peer: String,
    /// A selves peer's node id (memex nodes have none).
    pub node_id: Option<NodeId>,
    /// `selves` or `memex`.
    pub protocol: &'static str,
    /// Records received and stored here.
    pub pulled: u64,
    /// Records the peer newly stored.
    pub pushed: u64,
    /// Node cards (stream `nodes`) received and sent; not in `pulled`
    /// and `pushed`, which count memory.
    #[serde(skip_serializing_if = "is_zero")]
    pub cards_pulled: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub cards_pushed: u64,
    /// Rows whose state changed here.
    pub changed_rows: u64,
    /// Records either side already held (harmless repeats).
    pub duplicates: u64,
    /// Records refused for their content, on either side, kept as void.
    pub voided: Vec<Voided>,
    /// memex rows refused for their content (they stay on the memex node).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// Batches this node refused from the peer: not provably written by
    /// their node, or a second branch of a log held (a fork).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<selves_store::Refusal>,
    /// Batches the peer refused of what this node pushed, for the same
    /// reasons.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peer_refused: Vec<Voided>,
    pub retries: u32,
    pub rate_limited: u32,
    pub elapsed_ms: u64,
    /// When the last record moved was durable on its receiver.
    pub durable_ms: u64,
    /// Bytes of request and response bodies, blob streams included.
    pub bytes: u64,
    /// The shares synced, each with what it moved or why it stopped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<crate::shares::ShareSync>,
    /// The memory heads the peer holds after the round: what it had, and
    /// what this round pushed.
    #[serde(skip)]
    pub peer_heads: Vec<Head>,
}

impl SyncReport {
    pub fn up_to_date(&self) -> bool {
        self.refusals.is_empty()
            && self.peer_refused.is_empty()
            && self.pulled == 0
            && self.pushed == 0
            && self
                .shares
                .iter()
                .all(|s| s.pulled == 0 && s.pushed == 0 && s.error.is_none())
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) retries: AtomicU32,
    pub(crate) rate_limited: AtomicU32,
}

impl Counters {
    pub(crate) fn fill(&self, report: &mut SyncReport, started: Instant) {
        report.retries = self.retries.load(Ordering::Relaxed);
        report.rate_limited = self.rate_limited.load(Ordering::Relaxed);
        report.elapsed_ms = started.elapsed().as_millis() as u64;
    }
}

impl SyncReport {
    pub(crate) fn new(peer: String, node_id: Option<NodeId>, protocol: &'static str) -> Self {
        SyncReport {
            peer,
            node_id,
            protocol,
            pulled: 0,
            pushed: 0,
            cards_pulled: 0,
            cards_pushed: 0,
            changed_rows: 0,
            duplicates: 0,
            voided: Vec::new(),
            refused: Vec::new(),
            refusals: Vec::new(),
            peer_refused: Vec::new(),
            retries: 0,
            rate_limited: 0,
            elapsed_ms: 0,
            durable_ms: 0,
            bytes: 0,
            shares: Vec::new(),
            peer_heads: Vec::new(),
        }
    }
}

/// Runs one full round with the peer behind `client`: memory, then every
/// share both carry.
pub async fn sync(
    store: Arc<Store>,
    engine: &Arc<Engine>,
    client: &PeerClient,
    opts: &SyncOptions,
    progress: &dyn Progress,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let counters = Counters::default();
    let mut report: Option<SyncReport> = None;
    // A gap means the peer's heads moved under us (another client relayed
    // the same records): one fresh round settles it.
    for round in 0..2 {
        match run_round(&store, engine, client, opts, progress, &counters, started).await {
            Ok(r) => {
                report = Some(match report {
                    None => r,
                    Some(prev) => merge(prev, r),
                });
                break;
            }
            Err(SyncError::Conflict { code, .. }) if code == "gap" && round == 0 => {
                counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    let mut report = report.expect("a round either returned or succeeded");
    counters.fill(&mut report, started);
    report.bytes = client.traffic();
    Ok(report)
}

fn merge(a: SyncReport, b: SyncReport) -> SyncReport {
    let mut voided = a.voided;
    voided.extend(b.voided);
    let mut refusals = a.refusals;
    refusals.extend(b.refusals);
    let mut peer_refused = a.peer_refused;
    peer_refused.extend(b.peer_refused);
    SyncReport {
        refusals,
        peer_refused,
        pulled: a.pulled + b.pulled,
        pushed: a.pushed + b.pushed,
        changed_rows: a.changed_rows + b.changed_rows,
        duplicates: a.duplicates + b.duplicates,
        voided,
        durable_ms: a.durable_ms.max(b.durable_ms),
        shares: if b.shares.is_empty() {
            a.shares
        } else {
            b.shares
        },
        ..b
    }
}

/// The peer's identity and heads, after the protocol handshake.
pub async fn handshake(
    store: &Arc<Store>,
    client: &PeerClient,
    opts: &SyncOptions,
    progress: &dyn Progress,
) -> Result<Hello, SyncError> {
    handshake_counted(store, client, opts, progress, &Counters::default()).await
}

/// `POST /v1/marker` (the join self-test), retried like any request of a
/// round (network failures, 429 with its Retry-After, server errors).
pub async fn marker(
    client: &PeerClient,
    req: &selves_wire::native::MarkerRequest,
    opts: &SyncOptions,
    progress: &dyn Progress,
) -> Result<selves_wire::native::MarkerResponse, SyncError> {
    retry(opts, progress, &Counters::default(), || client.marker(req)).await
}

/// `GET /v1/digest` (for `selves verify`), retried like any request of a
/// round.
pub async fn digest(
    client: &PeerClient,
    opts: &SyncOptions,
    progress: &dyn Progress,
) -> Result<selves_wire::native::DigestResponse, SyncError> {
    retry(opts, progress, &Counters::default(), || client.digest()).await
}

async fn handshake_counted(
    store: &Arc<Store>,
    client: &PeerClient,
    opts: &SyncOptions,
    progress: &dyn Progress,
    counters: &Counters,
) -> Result<Hello, SyncError> {
    let me = store.me();
    let s = store.clone();
    let abandoned = blocking(move || Ok(s.abandoned()?)).await?;
    // The proof is for the peer we mean; a peer we do not know by id yet
    // tells us who it is (409 wrong_server), and we say hello again.
    let mut to = client
        .node()
        .cloned()
        .unwrap_or_else(|| NodeId::from_bytes([0; 16]));
    let hello = loop {
        let at = now_ms();
        let req = HelloRequest {
            protocol: PROTOCOL,
            node: NodeInfo {
                id: me.id.clone(),
                name: me.name.clone(),
            },
            key: store.public_key(),
            to: to.clone(),
            at,
            proof: store.prove(&to, at),
            abandoned: abandoned.clone(),
        };
        match retry(opts, progress, counters, || client.hello(&req)).await {
            Ok(hello) => {
                if hello.protocol.major != PROTOCOL.major {
                    return Err(SyncError::ProtocolMismatch {
                        url: client.url().to_owned(),
                        theirs: hello.protocol.major,
                        ours: PROTOCOL.major,
                    });
                }
                client.set_proof(&hello.node.id, at, &req.proof);
                break hello;
            }
            Err(SyncError::Conflict { code, .. }) if code == "same_node" => {
                return Err(SyncError::SameNode {
                    url: client.url().to_owned(),
                });
            }
            Err(SyncError::Conflict { code, detail, .. }) if code == "wrong_server" => {
                let theirs: NodeId = detail.trim().parse().map_err(|_| SyncError::Protocol {
                    url: client.url().to_owned(),
                    detail: format!("it named itself {detail:?}"),
                })?;
                if theirs == to {
                    return Err(SyncError::Protocol {
                        url: client.url().to_owned(),
                        detail: "it refused a hello meant for itself".into(),
                    });
                }
                if client.node().is_some() {
                    return Err(SyncError::WrongNode {
                        url: client.url().to_owned(),
                        expected: to,
                        found: theirs,
                    });
                }
                to = theirs;
            }
            Err(e) => return Err(e),
        }
    };
    let mut names = hello.nodes.clone();
    names.push(hello.node.clone());
    let s = store.clone();
    let (id, name, key) = (
        hello.node.id.clone(),
        hello.node.name.to_string(),
        hello.key,
    );
    let statements = hello.abandoned.clone();
    let bound = blocking(move || {
        let bound = s.bind_node_key(&id, Some(&name), &key)?;
        s.learn_nodes(&names)?;
        s.take_abandoned(&statements, now_ms())?;
        Ok(bound)
    })
    .await?;
    if !bound {
        return Err(SyncError::Protocol {
            url: client.url().to_owned(),
            detail: format!(
                "it says it is node {}, whose key here is another",
                hello.node.id
            ),
        });
    }
    Ok(hello)
}

async fn run_round(
    store: &Arc<Store>,
    engine: &Arc<Engine>,
    client: &PeerClient,
    opts: &SyncOptions,
    progress: &dyn Progress,
    counters: &Counters,
    started: Instant,
) -> Result<SyncReport, SyncError> {
    let hello = handshake_counted(store, client, opts, progress, counters).await?;
    let s = store.clone();
    let ours = blocking(move || Ok(s.heads()?)).await?;
    // Memory, then node cards, here; shares after them, by the share engine.
    let mut to_pull = ahead(&hello.heads, &ours, StreamName::is_memory);
    let mut cards_pull = ahead(&hello.heads, &ours, StreamName::is_nodes);
    // This node's own logs as the peer holds them: a peer that holds more
    // of them, or another branch, means this home was restored (or
    // copied). Its own log is then pulled from the start, so the fork is
    // found exactly and the home recovers (see selves_store::chain).
    let s = store.clone();
    let peer_heads = hello.heads.clone();
    let peer_name = hello.node.name.to_string();
    let diverged: Vec<Head> = blocking(move || {
        let me = s.me().id.clone();
        // Another node's log where the peer holds another branch at a seq
        // this node holds too: a fork no batch will show (neither side is
        // ahead), kept as evidence for status.
        for h in peer_heads.iter().filter(|h| h.node != me) {
            if let Some(theirs) = &h.chain
                && s.note_fork_seen(&h.node, &h.stream, h.seq, theirs, &peer_name, now_ms())?
            {
                tracing::warn!(node = %h.node, stream = %h.stream, seq = h.seq, peer = %peer_name, "a fork: the peer holds another branch of this log");
            }
        }
        let mut out = Vec::new();
        for h in peer_heads.iter().filter(|h| h.node == me) {
            let mine = s.head(&me, &h.stream)?;
            let other_branch = h.seq <= mine && h.chain.is_some() && s.chain_of(&me, &h.stream, h.seq)? != h.chain;
            if (other_branch || h.seq > mine) && h.stream.is_share() {
                // Never silent: a share log that cannot recover says so.
                if s.note_own_share_fork(&h.stream, h.seq, &peer_name)? {
                    tracing::warn!(stream = %h.stream, seq = h.seq, peer = %peer_name, "the peer holds another branch of this node's share log");
                }
            } else if other_branch || h.seq > mine {
                out.push(h.clone());
            }
        }
        Ok(out)
    })
    .await?;
    for h in diverged {
        let wants = if h.stream.is_memory() {
            &mut to_pull
        } else if h.stream.is_nodes() {
            &mut cards_pull
        } else {
            continue;
        };
        wants.retain(|w| !(w.node == h.node && w.stream == h.stream));
        wants.push(Want {
            node: h.node,
            stream: h.stream,
            after: 0,
            target: h.seq,
        });
    }
    let to_push = ahead(&ours, &hello.heads, |s| {
        s.is_memory() && hello.streams.contains(s)
    });
    let cards_push = ahead(&ours, &hello.heads, |s| {
        s.is_nodes() && hello.streams.contains(s)
    });
    let s = store.clone();
    let carried = blocking(move || Ok(s.streams()?)).await?;
    let shared = |s: &StreamName| s.is_share() && carried.contains(s);
    let share_pull = remaining(&ahead(&hello.heads, &ours, shared));
    let share_push = remaining(&ahead(&ours, &hello.heads, |s| {
        shared(s) && hello.streams.contains(s)
    }));
    progress.planned(
        remaining(&to_pull) + remaining(&cards_pull) + share_pull,
        remaining(&to_push) + remaining(&cards_push) + share_push,
    );

    let mut report = SyncReport::new(
        hello.node.name.to_string(),
        Some(hello.node.id.clone()),
        "selves",
    );
    let batch_records = opts.batch_records.map_or(u32::MAX, |b| b.max(1));
    let round = Exchange {
        store,
        client,
        opts,
        progress,
        counters,
        started,
        batch_records,
        push_records: batch_records.min(hello.limits.max_push_records).max(1),
        max_body: hello.limits.max_body_bytes,
    };
    let to_push = round
        .run(
            to_pull,
            to_push,
            &hello.heads,
            StreamName::is_memory,
            &mut report,
        )
        .await?;
    let to_push_targets = to_push.clone();
    if !cards_pull.is_empty() || !cards_push.is_empty() {
        let mut cards = SyncReport::new(String::new(), None, "selves");
        round
            .run(
                cards_pull,
                cards_push,
                &hello.heads,
                StreamName::is_nodes,
                &mut cards,
            )
            .await?;
        report.cards_pulled = cards.pulled;
        report.cards_pushed = cards.pushed;
        report.duplicates += cards.duplicates;
        report.voided.extend(cards.voided);
        report.refusals.extend(cards.refusals);
        report.peer_refused.extend(cards.peer_refused);
    }
    report.peer_heads = hello
        .heads
        .iter()
        .filter(|h| h.stream.is_memory())
        .map(|h| {
            let pushed = to_push_targets
                .iter()
                .find(|w| w.node == h.node && w.stream == h.stream)
                .map_or(0, |w| w.target);
            Head {
                seq: h.seq.max(pushed),
                chain: None,
                ..h.clone()
            }
        })
        .chain(
            to_push_targets
                .iter()
                .filter(|w| {
                    !hello
                        .heads
                        .iter()
                        .any(|h| h.node == w.node && h.stream == w.stream)
                })
                .map(|w| Head::new(w.node.clone(), w.stream.clone(), w.target)),
        )
        .collect();
    report.shares =
        crate::shares::sync_shares(store, engine, client, &hello, opts, progress, counters).await?;
    Ok(report)
}

/// What one round's record moves share.
struct Exchange<'a> {
    store: &'a Arc<Store>,
    client: &'a PeerClient,
    opts: &'a SyncOptions,
    progress: &'a dyn Progress,
    counters: &'a Counters,
    started: Instant,
    batch_records: u32,
    push_records: u32,
    max_body: u64,
}

impl Exchange<'_> {
    /// Pulls what `pull` wants, then pushes what `push` wants, into
    /// `report`. When the pull made this node write its own records again
    /// (a restore recovered), the push is planned again against the
    /// peer's heads (`theirs`, for streams `carry` takes) so they leave in
    /// this round. Returns the push planned.
    async fn run(
        &self,
        pull: Vec<Want>,
        mut push: Vec<Want>,
        theirs: &[Head],
        carry: impl Fn(&StreamName) -> bool,
        report: &mut SyncReport,
    ) -> Result<Vec<Want>, SyncError> {
        let pulled_own = pull.iter().any(|w| w.node == self.store.me().id);
        pull_all(
            self.store,
            self.client,
            self.opts,
            self.progress,
            self.counters,
            pull,
            self.batch_records,
            self.started,
            report,
        )
        .await?;
        if pulled_own {
            let s = self.store.clone();
            let (reissued, ours) =
                blocking(move || Ok((s.reissue_pending(now_ms())?, s.heads()?))).await?;
            if reissued > 0 {
                tracing::info!(
                    records = reissued,
                    "recovered from a restore: own records written again"
                );
            }
            // What this node holds now (its own log may have been cut
            // back to the peer's branch) against what the peer holds.
            push = ahead(&ours, theirs, |s| carry(s))
                .into_iter()
                .filter(|w| {
                    w.node == self.store.me().id
                        || push
                            .iter()
                            .any(|p| p.node == w.node && p.stream == w.stream)
                })
                .collect();
        }
        push_all(
            self.store,
            self.client,
            self.opts,
            self.progress,
            self.counters,
            push.clone(),
            self.push_records,
            self.max_body,
            self.started,
            report,
        )
        .await?;
        Ok(push)
    }
}

/// A (node, stream) to move: records after `after` up to `target`.
#[derive(Debug, Clone)]
pub(crate) struct Want {
    node: NodeId,
    stream: StreamName,
    after: u64,
    target: u64,
}

/// Where `from` is ahead of `to`, for streams `carry` accepts.
pub(crate) fn ahead(from: &[Head], to: &[Head], carry: impl Fn(&StreamName) -> bool) -> Vec<Want> {
    from.iter()
        .filter(|h| carry(&h.stream))
        .filter_map(|h| {
            let have = to
                .iter()
                .find(|t| t.node == h.node && t.stream == h.stream)
                .map_or(0, |t| t.seq);
            (h.seq > have).then(|| Want {
                node: h.node.clone(),
                stream: h.stream.clone(),
                after: have,
                target: h.seq,
            })
        })
        .collect()
}

pub(crate) fn remaining(wants: &[Want]) -> u64 {
    wants.iter().map(|w| w.target - w.after).sum()
}

pub(crate) fn ranges(wants: &[Want]) -> Vec<Range> {
    wants
        .iter()
        .map(|w| Range {
            node: w.node.clone(),
            stream: w.stream.clone(),
            after: w.after,
        })
        .collect()
}

/// Moves each want past the records in `ends` ((node, stream, last seq))
/// and drops the finished ones.
pub(crate) fn advance(wants: &mut Vec<Want>, ends: &[(NodeId, StreamName, u64)]) {
    for (node, stream, end) in ends {
        if let Some(w) = wants
            .iter_mut()
            .find(|w| &w.node == node && &w.stream == stream)
        {
            w.after = w.after.max(*end);
        }
    }
    wants.retain(|w| w.after < w.target);
}

pub(crate) struct Parsed {
    pub(crate) batches: Vec<RecordBatch>,
    pub(crate) ends: Vec<(NodeId, StreamName, u64)>,
    pub(crate) records: u64,
}

fn parse_pull(bytes: &[u8]) -> Result<Parsed, String> {
    let (batches, _) = selves_wire::native::parse_batches(bytes).map_err(|e| e.to_string())?;
    let mut parsed = Parsed {
        batches: Vec::with_capacity(batches.len()),
        ends: Vec::new(),
        records: 0,
    };
    for b in batches {
        let n = b.records.len() as u64;
        if n == 0 {
            continue;
        }
        if b.start == 0 {
            return Err("records are numbered from 1".into());
        }
        parsed.records += n;
        parsed
            .ends
            .push((b.node.clone(), b.stream.clone(), b.start + n - 1));
        parsed.batches.push(b);
    }
    Ok(parsed)
}

pub(crate) async fn fetch(
    client: &PeerClient,
    opts: &SyncOptions,
    progress: &dyn Progress,
    counters: &Counters,
    req: PullRequest,
) -> Result<Parsed, SyncError> {
    let started = Instant::now();
    let bytes = retry(opts, progress, counters, || client.pull(&req)).await?;
    let fetched = started.elapsed();
    let url = client.url().to_owned();
    let size = bytes.len();
    let parsed = tokio::task::spawn_blocking(move || parse_pull(&bytes));
    let parsed = parsed.await;
    tracing::debug!(
        bytes = size,
        fetch_ms = fetched.as_millis() as u64,
        parse_ms = (started.elapsed() - fetched).as_millis() as u64,
        "pull response"
    );
    parsed
        .map_err(|e| SyncError::Protocol {
            url: url.clone(),
            detail: e.to_string(),
        })?
        .map_err(|detail| SyncError::Protocol { url, detail })
}

#[allow(clippy::too_many_arguments)]
async fn pull_all(
    store: &Arc<Store>,
    client: &PeerClient,
    opts: &SyncOptions,
    progress: &dyn Progress,
    counters: &Counters,
    mut wants: Vec<Want>,
    batch_records: u32,
    started: Instant,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    if wants.is_empty() {
        return Ok(());
    }
    let request = |wants: &[Want]| PullRequest {
        ranges: ranges(wants),
        max_records: (batch_records != u32::MAX).then_some(batch_records),
        max_bytes: None,
    };
    let mut next = fetch(client, opts, progress, counters, request(&wants)).await?;
    // Logs whose batch was refused: nothing more of them is applied this
    // round (the next batch would not continue what is held).
    let mut refused: Vec<(NodeId, StreamName)> = Vec::new();
    loop {
        let mut parsed = next;
        if parsed.records == 0 {
            return Err(SyncError::Protocol {
                url: client.url().to_owned(),
                detail: format!(
                    "it announced {} more records but sent none",
                    remaining(&wants)
                ),
            });
        }
        advance(&mut wants, &parsed.ends);
        parsed.batches.retain(|b| {
            !refused
                .iter()
                .any(|(n, st)| *n == b.node && *st == b.stream)
        });
        let s = store.clone();
        let batches = parsed.batches;
        // Pulled records need not wait for the disk batch by batch: one
        // FULL commit at the end makes them all durable. (Nothing is
        // acknowledged in between, and a power loss can only drop a suffix,
        // fetched again next round.)
        let apply = blocking(move || Ok(s.apply(batches, Durability::Deferred, now_ms())?));
        let prefetch = async {
            if wants.is_empty() {
                None
            } else {
                Some(fetch(client, opts, progress, counters, request(&wants)).await)
            }
        };
        let round = Instant::now();
        let apply = async {
            let r = apply.await;
            (r, round.elapsed())
        };
        let (applied, fetched) = tokio::join!(apply, prefetch);
        let (applied, apply_time) = applied;
        tracing::debug!(
            records = parsed.records,
            apply_ms = apply_time.as_millis() as u64,
            round_ms = round.elapsed().as_millis() as u64,
            "pulled batch applied"
        );
        let summary = applied?;
        for r in &summary.refused {
            tracing::warn!(node = %r.node, stream = %r.stream, seq = r.seq, reason = %r.reason, "pulled records refused");
            refused.push((r.node.clone(), r.stream.clone()));
            wants.retain(|w| !(w.node == r.node && w.stream == r.stream));
        }
        report.refusals.extend(summary.refused);
        report.pulled += summary.accepted;
        report.duplicates += summary.duplicates;
        report.changed_rows += summary.changed_rows;
        report.voided.extend(summary.voided);
        progress.pulled(parsed.records);
        match fetched {
            None => break,
            Some(result) => next = result?,
        }
    }
    let s = store.clone();
    blocking(move || Ok(s.flush_deferred()?)).await?;
    report.durable_ms = started.elapsed().as_millis() as u64;
    Ok(())
}

struct Prepared {
    body: bytes::Bytes,
    records: u32,
    ends: Vec<(NodeId, StreamName, u64)>,
}

/// Reads and serialises the next push body for `ranges`.
async fn prepare(
    store: Arc<Store>,
    ranges: Vec<Range>,
    max_records: u32,
    max_bytes: u64,
) -> Result<Prepared, SyncError> {
    blocking(move || {
        let read = store.read_ranges(&ranges, max_records as usize, max_bytes as usize)?;
        let ends = read
            .batches
            .iter()
            .map(|b| {
                (
                    b.node.clone(),
                    b.stream.clone(),
                    b.start + b.records.len() as u64 - 1,
                )
            })
            .collect();
        let body = serde_json::to_vec(&PushRequest {
            batches: read.batches,
        })
        .map_err(|e| {
            SyncError::Store(selves_store::StoreError::Io {
                path: "<push body>".into(),
                source: std::io::Error::other(e),
            })
        })?;
        Ok(Prepared {
            body: body.into(),
            records: read.records as u32,
            ends,
        })
    })
    .await
}

/// Pushes in flight at once. The peer applies them in order: one that
/// arrives before its predecessor waits for it.
const PUSH_DEPTH: usize = 2;
/// About how large a push body is made (bytes, estimated).
const PUSH_BODY_TARGET: u64 = 3 << 20;

#[allow(clippy::too_many_arguments)]
async fn push_all(
    store: &Arc<Store>,
    client: &PeerClient,
    opts: &SyncOptions,
    progress: &dyn Progress,
    counters: &Counters,
    wants: Vec<Want>,
    mut batch_records: u32,
    max_body: u64,
    started: Instant,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    use futures_util::StreamExt as _;
    use futures_util::stream::FuturesOrdered;

    // Records are sized by estimate; aim well under the limit so a body
    // almost never has to be cut again, and keep bodies small enough that a
    // few in flight stay cheap in memory.
    let byte_budget = (max_body / 2).clamp(1, PUSH_BODY_TARGET);
    // What the peer has acknowledged, and how far bodies were prepared.
    let mut acked = wants.clone();
    let mut planned = wants;
    let mut inflight = FuturesOrdered::new();
    let mut ready: Option<Prepared> = None;
    let mut preparing = None;
    loop {
        if ready.is_none() && preparing.is_none() && !planned.is_empty() {
            preparing = Some(Box::pin(prepare(
                store.clone(),
                ranges(&planned),
                batch_records,
                byte_budget,
            )));
        }
        if inflight.len() < PUSH_DEPTH
            && let Some(p) = ready.take()
        {
            let body = p.body.clone();
            let send = async move {
                let sent = retry(opts, progress, counters, || client.push(body.to_vec())).await;
                (sent, p)
            };
            inflight.push_back(send);
            continue;
        }
        if inflight.is_empty() && preparing.is_none() && ready.is_none() {
            return Ok(());
        }
        tokio::select! {
            Some((sent, p)) = inflight.next(), if !inflight.is_empty() => match sent {
                Ok(resp) => {
                    report.peer_refused.extend(resp.refused);
                    report.pushed += resp.accepted;
                    report.duplicates += resp.duplicates;
                    report.voided.extend(resp.voided);
                    report.durable_ms = started.elapsed().as_millis() as u64;
                    progress.pushed(u64::from(p.records));
                    advance(&mut acked, &p.ends);
                }
                Err(SyncError::PayloadTooLarge { url }) => {
                    if p.records == 1 {
                        return Err(SyncError::PayloadTooLarge { url });
                    }
                    // Start again from what the peer acknowledged, with
                    // smaller batches. Pushes still in flight are dropped;
                    // any the peer applies anyway are harmless repeats.
                    batch_records = (p.records / 2).max(1);
                    progress.waiting("the peer refused a batch as too large; halving", Duration::ZERO);
                    inflight = FuturesOrdered::new();
                    ready = None;
                    preparing = None;
                    planned = acked.clone();
                }
                Err(e) => return Err(e),
            },
            prepared = async { preparing.as_mut().expect("guarded").await }, if preparing.is_some() => {
                preparing = None;
                let p = prepared?;
                if p.records == 0 {
                    planned.clear();
                } else if p.body.len() as u64 > max_body {
                    if p.records == 1 {
                        return Err(SyncError::PayloadTooLarge { url: client.url().to_owned() });
                    }
                    batch_records = (p.records / 2).max(1);
                } else {
                    advance(&mut planned, &p.ends);
                    ready = Some(p);
                }
            }
        }
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SyncError> + Send + 'static,
) -> Result<T, SyncError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        SyncError::Store(selves_store::StoreError::Io {
            path: "<worker>".into(),
            source: std::io::Error::other(e.to_string()),
        })
    })?
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// When to try again after a failure: exponential backoff for what may
/// pass (network, 5xx), exactly `Retry-After` for rate limits, never for
/// the rest.
struct Backoff {
    failures: u32,
    next: Duration,
    waits: u32,
}

impl Backoff {
    fn new(opts: &SyncOptions) -> Self {
        Backoff {
            failures: 0,
            next: opts.backoff,
            waits: 0,
        }
    }

    /// How long to wait before trying again after `e`, or `None` to give up.
    fn after(
        &mut self,
        e: &SyncError,
        opts: &SyncOptions,
        counters: &Counters,
        progress: &dyn Progress,
    ) -> Option<Duration> {
        match e {
            SyncError::RateLimited { retry_after, .. } => {
                if *retry_after > opts.max_wait || self.waits >= 1000 {
                    return None;
                }
                self.waits += 1;
                counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                progress.waiting("rate limited by the peer", *retry_after);
                Some(*retry_after)
            }
            e if e.is_retryable() && self.failures + 1 < opts.attempts => {
                self.failures += 1;
                counters.retries.fetch_add(1, Ordering::Relaxed);
                let wait = self.next;
                progress.waiting(&e.to_string(), wait);
                self.next = (self.next * 2).min(Duration::from_secs(30));
                Some(wait)
            }
            _ => None,
        }
    }
}

/// Runs `f` until it succeeds or [`Backoff`] gives up.
pub(crate) async fn retry<T, F, Fut>(
    opts: &SyncOptions,
    progress: &dyn Progress,
    counters: &Counters,
    mut f: F,
) -> Result<T, SyncError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SyncError>>,
{
    let mut backoff = Backoff::new(opts);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => match backoff.after(&e, opts, counters, progress) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Err(e),
            },
        }
    }
}
