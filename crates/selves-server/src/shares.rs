//! Shares over the native API: share records pushed here are resolved by
//! the share engine, and blob streams move file contents (docs/shares.md,
//! docs/protocol.md §Blobs).
//!
//! - `POST /v1/blobs/wants`: which contents would this node need to apply
//!   these records?
//! - `POST /v1/blobs/get`: a stream of the contents asked for.
//! - `POST /v1/blobs/put?share=NAME`: a stream of contents for records
//!   about to be pushed.

use std::collections::HashMap;
use std::io::BufReader;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use selves_share::{Engine, ShareError};
use selves_store::{Share, Store};
use selves_wire::file::{BlobsGet, BlobsStored, BlobsWants, BlobsWantsRequest};
use selves_wire::native::{Head, RecordBatch, Voided};

use crate::api::{App, Caller, blocking, now_ms, read_body};
use crate::error::ApiError;

/// Blobs asked for in one request at most.
const MAX_WANTS: usize = 10_000;
/// A share is scanned for a peer's hello at most this often.
const SCAN_EVERY: Duration = Duration::from_secs(2);
/// Tries of an apply whose files changed on disk while it wrote them.
const APPLY_TRIES: usize = 3;

/// When each share was last scanned for a peer.
#[derive(Default)]
pub(crate) struct Scans(Mutex<HashMap<String, Instant>>);

impl Scans {
    fn due(&self, share: &Share) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = share.name.to_string();
        if last.get(&key).is_some_and(|t| t.elapsed() < SCAN_EVERY) {
            return false;
        }
        last.insert(key, Instant::now());
        true
    }
}

/// Scans the shares this node sends, so a peer's pull sees what changed
/// on disk. A share that cannot be scanned (folder missing, mass
/// deletion) is logged and left as it was.
pub(crate) fn scan_for_peer(engine: &Engine, store: &Store, scans: &Scans) -> Result<(), ApiError> {
    for share in store.shares()? {
        if !share.mode.sends() || !scans.due(&share) {
            continue;
        }
        match engine.scan(&share, false, now_ms()) {
            Ok(report) if report.changed + report.deleted > 0 => {
                tracing::info!(share = %share.name, changed = report.changed, deleted = report.deleted, "scanned");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(share = %share.name, error = %e, "share not scanned"),
        }
    }
    Ok(())
}

fn share_error(e: ShareError) -> ApiError {
    match e {
        ShareError::MissingBlob(hash) => ApiError::Conflict {
            code: "missing_blob",
            detail: format!("content {hash} has not arrived: put it first"),
        },
        ShareError::Store(e) => e.into(),
        e @ (ShareError::RootMissing { .. } | ShareError::SendOnly { .. }) => ApiError::Conflict {
            code: "share_unavailable",
            detail: e.to_string(),
        },
        e => {
            tracing::error!(error = %e, "share error");
            ApiError::Internal(e.to_string())
        }
    }
}

/// The share carried on a stream here, or why not.
fn share_for(store: &Store, name: &str, receiving: bool) -> Result<Share, ApiError> {
    let share = store.share(name)?.ok_or_else(|| ApiError::Conflict {
        code: "no_share",
        detail: format!("this node has no share named {name:?}"),
    })?;
    if receiving && !share.mode.receives() {
        return Err(ApiError::Conflict {
            code: "share_unavailable",
            detail: format!("share {name} is send-only here: it takes no changes"),
        });
    }
    Ok(share)
}

/// What applying pushed share batches did, for the push answer.
#[derive(Default)]
pub(crate) struct Applied {
    pub accepted: u64,
    pub duplicates: u64,
    pub voided: Vec<Voided>,
    pub refused: Vec<selves_store::Refusal>,
    pub heads: Vec<Head>,
}

/// Applies pushed share batches, each in its own transaction, durable
/// before the answer.
pub(crate) fn apply_pushed(
    engine: &Engine,
    store: &Store,
    batches: Vec<RecordBatch>,
) -> Result<Applied, ApiError> {
    let mut out = Applied::default();
    for batch in batches {
        let share = store.share_of(&batch.stream)?.ok_or_else(|| {
            ApiError::BadRequest(format!("this node carries no stream {}", batch.stream))
        })?;
        if !share.mode.receives() {
            return Err(share_error(ShareError::SendOnly { share: share.name }));
        }
        let (node, stream) = (batch.node.clone(), batch.stream.clone());
        let mut tries = 0;
        let commit = loop {
            tries += 1;
            match engine.apply(&share, batch.clone(), now_ms()) {
                Ok(c) => break c,
                Err(ShareError::Fs(selves_share::fsops::FsError::Changed { .. }))
                    if tries < APPLY_TRIES => {}
                Err(e) => return Err(share_error(e)),
            }
        };
        out.accepted += commit.accepted;
        out.duplicates += commit.duplicates;
        out.refused.extend(commit.refused);
        out.voided
            .extend(commit.voided.into_iter().map(|(seq, reason)| Voided {
                node: node.clone(),
                stream: stream.clone(),
                seq,
                reason,
            }));
        let seq = store.head(&node, &stream)?;
        let chain = store.chain_of(&node, &stream, seq)?;
        out.heads.push(Head {
            node,
            stream,
            seq,
            chain,
        });
    }
    Ok(out)
}

pub(crate) async fn wants(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BlobsWants>, ApiError> {
    let bytes = read_body(&headers, body, app.limits.max_body_bytes).await?;
    let (store, engine) = (app.store.clone(), app.engine.clone());
    let want = blocking(move || {
        let req: BlobsWantsRequest = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("malformed blobs/wants request: {e}")))?;
        let share = share_for(&store, &req.share, true)?;
        let mut want = Vec::new();
        for batch in &req.batches {
            if batch.stream != share.stream {
                return Err(ApiError::BadRequest(format!(
                    "a batch of stream {} in a request for share {}",
                    batch.stream, share.name
                )));
            }
            for w in engine.wants(&share, batch).map_err(share_error)? {
                if !want.contains(&w) {
                    want.push(w);
                }
            }
        }
        Ok(want)
    })
    .await?;
    Ok(Json(BlobsWants { want }))
}

pub(crate) async fn get(
    State(app): State<Arc<App>>,
    Extension(Caller(peer)): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, app.limits.max_body_bytes).await?;
    let req: BlobsGet = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("malformed blobs/get request: {e}")))?;
    if req.want.len() > MAX_WANTS {
        return Err(ApiError::BadRequest(format!(
            "{} blobs asked for; at most {MAX_WANTS} at once",
            req.want.len()
        )));
    }
    let store = app.store.clone();
    let name = req.share.clone();
    let share = blocking(move || share_for(&store, &name, false)).await?;
    let engine = app.engine.clone();
    let (mut out, rx) = selves_share::pipe::writer();
    tokio::task::spawn_blocking(move || {
        match selves_share::frames::write_frames(&engine, &share, &req.want, &mut out) {
            Ok(sent) => {
                tracing::debug!(%peer, frames = sent.frames, bytes = sent.bytes, missing = sent.missing, "blobs sent")
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "blob stream failed");
                out.fail(std::io::Error::other(e.to_string()));
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct PutQuery {
    share: String,
}

pub(crate) async fn put(
    State(app): State<Arc<App>>,
    Query(q): Query<PutQuery>,
    body: Body,
) -> Result<Json<BlobsStored>, ApiError> {
    let store = app.store.clone();
    let share = blocking(move || share_for(&store, &q.share, true)).await?;
    let _ = share;
    let engine = app.engine.clone();
    let (tx, reader) = selves_share::pipe::reader();
    let writer = tokio::task::spawn_blocking(move || {
        let mut input = BufReader::with_capacity(256 << 10, reader);
        selves_share::frames::read_frames(engine.blobs(), &mut input, None)
    });
    let mut body = body;
    loop {
        match http_body_util::BodyExt::frame(&mut body).await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && tx.send(Ok(data)).await.is_err()
                {
                    // The reader stopped: its error says why.
                    break;
                }
            }
            Some(Err(e)) => {
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "the body broke off: {e}"
                    ))))
                    .await;
                break;
            }
        }
    }
    drop(tx);
    let got = writer
        .await
        .map_err(|e| ApiError::Internal(format!("worker failed: {e}")))?
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Json(BlobsStored { stored: got.stored }))
}
