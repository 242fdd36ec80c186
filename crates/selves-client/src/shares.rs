//! Shares in a sync round: for each share both nodes carry, pull the
//! peer's records and the contents they need, then push ours with the
//! contents the peer lacks (docs/shares.md).
//!
//! Pull, per batch: ask the engine which blobs it lacks, fetch them as one
//! stream, apply. Push, per batch: ask the peer which blobs it lacks, put
//! them as one stream, push the records. As for memory, progress is the
//! receiver's heads, so a round cut off anywhere resumes from them.

use std::collections::VecDeque;
use std::io::BufReader;
use std::sync::Arc;

use selves_share::{Engine, ShareError};
use selves_store::{Share, Store};
use selves_wire::Name;
use selves_wire::file::{BlobWant, BlobsGet, BlobsWantsRequest};
use selves_wire::native::{Head, Hello, PullRequest, PushRequest, RecordBatch};

use crate::peer::{PeerClient, SyncError};
use crate::replicate::{
    Counters, Progress, SyncOptions, Want, advance, ahead, blocking, fetch, now_ms, ranges,
    remaining, retry,
};

/// Records per share batch: each is applied (files written and fsynced
/// together) in one step.
const SHARE_BATCH: u32 = 1000;
/// Bytes of records per pushed share batch, about.
const SHARE_BATCH_BYTES: usize = 2 << 20;
/// Blobs asked for in one stream.
const BLOBS_PER_REQUEST: usize = 2000;
/// Re-pulls allowed when the peer no longer has a content it announced
/// (its file changed meanwhile).
const STALE_TRIES: u32 = 5;

/// What one share did in a round.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ShareSync {
    pub share: String,
    /// Records received and stored here.
    pub pulled: u64,
    /// Records the peer newly stored.
    pub pushed: u64,
    /// Records refused for their content (on either side).
    pub voided: u64,
    /// Contents fetched and sent, and their bytes.
    pub blobs_in: u64,
    pub blob_bytes_in: u64,
    pub blobs_out: u64,
    pub blob_bytes_out: u64,
    /// Why the share stopped, if it did (the rest of the round goes on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The shares to sync with the peer that said `hello`: those this node
/// carries that the peer serves (to pull) or takes (to push).
pub(crate) async fn sync_shares(
    store: &Arc<Store>,
    engine: &Arc<Engine>,
    client: &PeerClient,
    hello: &Hello,
    opts: &SyncOptions,
    progress: &dyn Progress,
    counters: &Counters,
) -> Result<Vec<ShareSync>, SyncError> {
    let s = store.clone();
    let shares = blocking(move || Ok(s.shares()?)).await?;
    let mut out = Vec::new();
    for share in shares {
        let pull = share.mode.receives() && hello.heads.iter().any(|h| h.stream == share.stream);
        let push = hello.streams.contains(&share.stream);
        if !pull && !push {
            continue;
        }
        let mut report = ShareSync {
            share: share.name.to_string(),
            ..ShareSync::default()
        };
        let ctx = Ctx {
            store,
            engine,
            client,
            opts,
            progress,
            counters,
            share: &share,
        };
        let mut result = Ok(());
        if pull {
            result = ctx.pull(&hello.heads, &mut report).await;
        }
        if push && result.is_ok() {
            result = ctx.push(&hello.heads, &mut report).await;
        }
        match result {
            Ok(()) => {}
            // Trouble with this share alone: say so, go on with the rest.
            Err(e) if stops_share_only(&e) => report.error = Some(e.to_string()),
            Err(e) => return Err(e),
        }
        out.push(report);
    }
    Ok(out)
}

/// Adds the counts of `more` to `report`.
fn add(report: &mut ShareSync, more: &ShareSync) {
    report.pulled += more.pulled;
    report.pushed += more.pushed;
    report.voided += more.voided;
    report.blobs_in += more.blobs_in;
    report.blob_bytes_in += more.blob_bytes_in;
    report.blobs_out += more.blobs_out;
    report.blob_bytes_out += more.blob_bytes_out;
}

fn stops_share_only(e: &SyncError) -> bool {
    match e {
        SyncError::Share { .. } => true,
        SyncError::Conflict { code, .. } => {
            matches!(
                code.as_str(),
                "no_share" | "share_unavailable" | "missing_blob"
            )
        }
        _ => false,
    }
}

fn share_error(share: &Share, e: ShareError) -> SyncError {
    match e {
        ShareError::Store(e) => SyncError::Store(e),
        e => SyncError::Share {
            share: share.name.to_string(),
            detail: e.to_string(),
        },
    }
}

struct Ctx<'a> {
    store: &'a Arc<Store>,
    engine: &'a Arc<Engine>,
    client: &'a PeerClient,
    opts: &'a SyncOptions,
    progress: &'a dyn Progress,
    counters: &'a Counters,
    share: &'a Share,
}

impl Ctx<'_> {
    /// Records per batch: [`SHARE_BATCH`], or fewer if asked.
    fn batch(&self) -> u32 {
        self.opts
            .batch_records
            .map_or(SHARE_BATCH, |b| b.clamp(1, SHARE_BATCH))
    }

    async fn heads(&self) -> Result<Vec<Head>, SyncError> {
        let s = self.store.clone();
        blocking(move || Ok(s.heads()?)).await
    }

    /// Pulls the peer's records of this share up to `theirs`. While one
    /// batch is applied (files written and made durable), the next one's
    /// records and contents are already being fetched.
    async fn pull(&self, theirs: &[Head], report: &mut ShareSync) -> Result<(), SyncError> {
        let stream = &self.share.stream;
        let mut stale = 0;
        'restart: loop {
            let ours = self.heads().await?;
            let mut wants = ahead(theirs, &ours, |s| s == stream);
            let mut queue = VecDeque::new();
            let mut ready = None;
            loop {
                let current = match ready.take() {
                    Some(p) => p,
                    None => match self.next_batch(&mut queue, &mut wants).await? {
                        Some(batch) => self.prepare(batch, report).await?,
                        None => return Ok(()),
                    },
                };
                let mut fetched = ShareSync::default();
                let next = async {
                    match self.next_batch(&mut queue, &mut wants).await? {
                        Some(batch) => self.prepare(batch, &mut fetched).await.map(Some),
                        None => Ok(None),
                    }
                };
                let mut applied_stats = ShareSync::default();
                let records = current.records.len() as u64;
                let (applied, next) = tokio::join!(self.apply(current, &mut applied_stats), next);
                add(report, &fetched);
                add(report, &applied_stats);
                if !applied? {
                    stale += 1;
                    if stale > STALE_TRIES {
                        return Err(SyncError::Share {
                            share: self.share.name.to_string(),
                            detail:
                                "the peer keeps announcing contents it cannot send; try again later"
                                    .into(),
                        });
                    }
                    // Pull again from what is applied: the records the
                    // peer serves now carry its newer versions.
                    continue 'restart;
                }
                self.progress.pulled(records);
                ready = next?;
            }
        }
    }

    /// The next batch to apply, fetching a page of records when none is
    /// left; `None` when everything up to the peer's heads was fetched.
    async fn next_batch(
        &self,
        queue: &mut VecDeque<RecordBatch>,
        wants: &mut Vec<Want>,
    ) -> Result<Option<RecordBatch>, SyncError> {
        if queue.is_empty() && !wants.is_empty() {
            let req = PullRequest {
                ranges: ranges(wants),
                max_records: Some(self.batch()),
                max_bytes: None,
            };
            let parsed = fetch(self.client, self.opts, self.progress, self.counters, req).await?;
            if parsed.records == 0 {
                return Err(SyncError::Protocol {
                    url: self.client.url().to_owned(),
                    detail: format!(
                        "it announced {} more records of {} but sent none",
                        remaining(wants),
                        self.share.stream
                    ),
                });
            }
            advance(wants, &parsed.ends);
            queue.extend(parsed.batches);
        }
        Ok(queue.pop_front())
    }

    /// Fetches the contents a batch needs that are not here yet.
    async fn prepare(
        &self,
        batch: RecordBatch,
        stats: &mut ShareSync,
    ) -> Result<Arc<RecordBatch>, SyncError> {
        let batch = Arc::new(batch);
        let (e, sh, b) = (self.engine.clone(), self.share.clone(), batch.clone());
        let want = blocking(move || e.wants(&sh, &b).map_err(|e| share_error(&sh, e))).await?;
        if !want.is_empty() {
            self.get_blobs(want, stats).await?;
        }
        Ok(batch)
    }

    /// Applies one pulled batch. `false` if the peer no longer has a
    /// content it needs (pull again: the records it serves now carry the
    /// newer version).
    async fn apply(
        &self,
        batch: Arc<RecordBatch>,
        report: &mut ShareSync,
    ) -> Result<bool, SyncError> {
        for _ in 0..4 {
            let started = std::time::Instant::now();
            let (e, sh, b) = (self.engine.clone(), self.share.clone(), batch.clone());
            let applied = blocking(move || Ok(e.apply(&sh, (*b).clone(), now_ms()))).await?;
            tracing::debug!(
                share = %self.share.name,
                records = batch.records.len(),
                ms = started.elapsed().as_millis() as u64,
                "share batch applied"
            );
            match applied {
                Ok(commit) => {
                    report.pulled += commit.accepted;
                    report.voided += commit.voided.len() as u64;
                    if let Some(r) = commit.refused.first() {
                        return Err(SyncError::Share {
                            share: self.share.name.to_string(),
                            detail: format!(
                                "records of node {} refused ({}): {}",
                                r.node,
                                r.kind.as_str(),
                                r.reason
                            ),
                        });
                    }
                    return Ok(true);
                }
                Err(ShareError::MissingBlob(hash)) => {
                    // Wanted by an earlier state of this share, or not
                    // wanted at all (an append that no longer extends).
                    let missing = self
                        .get_blobs(vec![BlobWant { hash, from: 0 }], report)
                        .await?;
                    if !missing.is_empty() {
                        return Ok(false);
                    }
                }
                // A file changed on disk while it was being replaced: the
                // next try captures the change first.
                Err(ShareError::Fs(selves_share::fsops::FsError::Changed { .. })) => {}
                Err(e) => return Err(share_error(self.share, e)),
            }
        }
        Ok(false)
    }

    /// Fetches blobs into the blob store; returns those the peer lacked.
    async fn get_blobs(
        &self,
        want: Vec<BlobWant>,
        report: &mut ShareSync,
    ) -> Result<Vec<BlobWant>, SyncError> {
        let mut missing = Vec::new();
        for chunk in want.chunks(BLOBS_PER_REQUEST) {
            let req = BlobsGet {
                share: self.share.name.to_string(),
                want: chunk.to_vec(),
            };
            let got = retry(self.opts, self.progress, self.counters, || {
                self.get_stream(&req)
            })
            .await?;
            report.blobs_in += got.stored;
            report.blob_bytes_in += got.bytes;
            missing.extend(got.missing);
        }
        Ok(missing)
    }

    async fn get_stream(
        &self,
        req: &BlobsGet,
    ) -> Result<selves_share::frames::Received, SyncError> {
        let mut resp = self.client.blobs_get(req).await?;
        let (tx, reader) = selves_share::pipe::reader();
        let (engine, want) = (self.engine.clone(), req.want.clone());
        let store = tokio::task::spawn_blocking(move || {
            let mut input = BufReader::with_capacity(256 << 10, reader);
            selves_share::frames::read_frames(engine.blobs(), &mut input, Some(&want))
        });
        let url = self.client.url().to_owned();
        loop {
            match resp.chunk().await {
                Ok(Some(data)) => {
                    self.client.count(data.len());
                    if tx.send(Ok(data)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    break;
                }
            }
        }
        drop(tx);
        let got = store.await.map_err(|e| SyncError::Share {
            share: self.share.name.to_string(),
            detail: format!("worker failed: {e}"),
        })?;
        got.map_err(|e| match e {
            selves_share::frames::FrameError::Io(e) => SyncError::Network {
                url,
                detail: e.to_string(),
            },
            selves_share::frames::FrameError::Malformed(detail) => {
                SyncError::Protocol { url, detail }
            }
            selves_share::frames::FrameError::Blob(e) => SyncError::Share {
                share: self.share.name.to_string(),
                detail: e.to_string(),
            },
        })
    }

    /// Pushes this node's records of the share past `theirs`.
    async fn push(&self, theirs: &[Head], report: &mut ShareSync) -> Result<(), SyncError> {
        let stream = self.share.stream.clone();
        let mut theirs = theirs.to_vec();
        let mut refused = 0;
        loop {
            let ours = self.heads().await?;
            let wants = ahead(&ours, &theirs, |s| s == &stream);
            if wants.is_empty() {
                return Ok(());
            }
            let (s, r, batch) = (self.store.clone(), ranges(&wants), self.batch());
            let read =
                blocking(move || Ok(s.read_ranges(&r, batch as usize, SHARE_BATCH_BYTES)?)).await?;
            if read.records == 0 {
                return Ok(());
            }
            let req = BlobsWantsRequest {
                share: self.share.name.to_string(),
                batches: read.batches,
            };
            let want = retry(self.opts, self.progress, self.counters, || {
                self.client.blobs_wants(&req)
            })
            .await?;
            if !want.want.is_empty() {
                self.put_blobs(&want.want, report).await?;
            }
            let body = serde_json::to_vec(&PushRequest {
                batches: req.batches,
            })
            .map_err(|e| SyncError::Share {
                share: self.share.name.to_string(),
                detail: e.to_string(),
            })?;
            let pushed = retry(self.opts, self.progress, self.counters, || {
                self.client.push(body.clone())
            })
            .await;
            let resp = match pushed {
                Ok(resp) => resp,
                // Our file changed between the read and the push: read
                // again and send the newer content.
                Err(SyncError::Conflict { code, .. })
                    if code == "missing_blob" && refused < STALE_TRIES =>
                {
                    refused += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            report.pushed += resp.accepted;
            report.voided += resp.voided.len() as u64;
            if let Some(r) = resp.refused.first() {
                return Err(SyncError::Share {
                    share: self.share.name.to_string(),
                    detail: format!("the peer refused records of node {}: {}", r.node, r.reason),
                });
            }
            self.progress.pushed(resp.accepted + resp.duplicates);
            let mut moved = false;
            for h in resp.heads {
                match theirs
                    .iter_mut()
                    .find(|t| t.node == h.node && t.stream == h.stream)
                {
                    Some(t) if t.seq < h.seq => {
                        t.seq = h.seq;
                        moved = true;
                    }
                    Some(_) => {}
                    None => {
                        moved = true;
                        theirs.push(h);
                    }
                }
            }
            if !moved {
                return Err(SyncError::Protocol {
                    url: self.client.url().to_owned(),
                    detail: format!("it took a push of {stream} without moving its heads"),
                });
            }
        }
    }

    /// Sends blobs the peer lacks as one stream per chunk.
    async fn put_blobs(&self, want: &[BlobWant], report: &mut ShareSync) -> Result<(), SyncError> {
        for chunk in want.chunks(BLOBS_PER_REQUEST) {
            let sent = retry(self.opts, self.progress, self.counters, || {
                self.put_stream(chunk)
            })
            .await?;
            report.blobs_out += sent.frames;
            report.blob_bytes_out += sent.bytes;
        }
        Ok(())
    }

    async fn put_stream(&self, want: &[BlobWant]) -> Result<selves_share::frames::Sent, SyncError> {
        let (mut out, rx) = selves_share::pipe::writer();
        let (engine, share, want) = (self.engine.clone(), self.share.clone(), want.to_vec());
        let writer = tokio::task::spawn_blocking(move || {
            let sent = selves_share::frames::write_frames(&engine, &share, &want, &mut out);
            if let Err(e) = &sent {
                out.fail(std::io::Error::other(e.to_string()));
            }
            sent
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        let name: Name = self.share.name.clone();
        let stored = self
            .client
            .blobs_put(&name, reqwest::Body::wrap_stream(stream))
            .await;
        let sent = writer.await.map_err(|e| SyncError::Share {
            share: self.share.name.to_string(),
            detail: format!("worker failed: {e}"),
        })?;
        // The peer's answer first: a refused request also breaks the stream.
        stored?;
        let sent = sent.map_err(|e| share_error(self.share, e))?;
        self.client.count(sent.bytes as usize);
        Ok(sent)
    }
}
