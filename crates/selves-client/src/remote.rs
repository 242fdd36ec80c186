//! Remotes: syncing through a medium instead of with a peer. A medium is
//! a folder that something else carries between machines (Syncthing,
//! Dropbox, rsync: `folder:PATH`), or a git repository (any URL `git`
//! takes). Nodes that can never reach each other converge through it.
//!
//! The medium never conflicts: each node writes only files of its own,
//! never changed once written, under `w/<writer tag>/`:
//!
//! ```text
//! selves-remote.json      {"format": "selves-remote 1", "group": …, "check": …}
//! w/<tag>/1.seg           segment 1 of one writer: record batches, sealed
//! w/<tag>/2.seg           …
//! w/<tag>/b/<name>.blob   a file's content a share record refers to, sealed
//! ```
//!
//! A segment holds record batches exactly as the native protocol carries
//! them (from any origin: a node writes what it holds that the remote
//! lacks, so the medium relays), compressed, then sealed with
//! ChaCha20-Poly1305 under a key derived from the remote's key, which only
//! the `selves-remote:` line carries. The additional data binds a segment
//! to its group, writer and number, so a file moved or renamed does not
//! open. Names reveal nothing but a writer tag (a keyed hash of the node
//! id) and a number. A file shorter than its header says is still being
//! copied (Syncthing, Dropbox) and is waited for, never reported; one that
//! does not open is refused, reported, and nothing after it of that
//! writer is applied.
//!
//! A reader keeps, per remote and writer, the last segment it applied
//! (`remote_cursors`, moved only in the transaction after the apply) and
//! what the remote holds (`remote_heads`): what to write is what this node
//! holds beyond that. Records are verified by the store exactly as pulled
//! ones (signatures, chains): the medium is trusted with nothing.
//!
//! Shares travel as records and contents: a writer puts the content of
//! every file version it writes out beside its segments (once per remote,
//! whoever wrote it first), before the segment; a reader applies a share
//! batch through the share engine once the contents it wants are there.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use selves_share::{Engine, ShareError};
use selves_store::{Durability, Remote, Share, Store};
use selves_wire::file::{BlobHash, BlobWant};
use selves_wire::native::{Head, Range, Record, RecordBatch};
use selves_wire::{NodeId, StreamName};
use serde::{Deserialize, Serialize};

use crate::replicate::{SyncReport, now_ms};
use crate::{Progress, ShareSync, SyncError};

/// The first word of the line `selves remote invite` prints.
pub const LINE_PREFIX: &str = "selves-remote:";
/// What `selves-remote.json` says it is.
const FORMAT: &str = "selves-remote 1";
const MANIFEST: &str = "selves-remote.json";
/// A segment's first bytes.
const MAGIC: &[u8; 8] = b"SLVSEG1\n";
/// Records and bytes (before compression) per segment, at most.
const SEGMENT_RECORDS: usize = 5000;
const SEGMENT_BYTES: usize = 8 << 20;
/// A segment never opens to more than this (no decompression bombs).
const MAX_PLAIN: u64 = 64 << 20;
/// A file's content through a remote, at most.
const MAX_BLOB: u64 = 1 << 30;
const BLOB_MAGIC: &[u8; 8] = b"SLVBLB1\n";
/// A grown file's new bytes: its parent content's hash, the parent's
/// length, then the bytes past it (see [`Round::write_contents`]).
const TAIL_MAGIC: &[u8; 8] = b"SLVTAL1\n";
/// Tails on tails, at most, before a content is written whole again (so
/// a node that holds nothing reads a bounded chain).
const MAX_CHAIN: u32 = 32;

/// What `selves remote invite` hands to another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLine {
    pub v: u32,
    /// The remote's name where it was made (a default for the joiner).
    pub name: String,
    pub url: String,
    /// The remote's key, hex.
    pub key: String,
    /// The group the remote's manifest names.
    pub group: String,
}

impl RemoteLine {
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        let json = serde_json::to_vec(self).expect("serialisable");
        format!(
            "{LINE_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    pub fn decode(line: &str) -> Result<RemoteLine, String> {
        use base64::Engine as _;
        let body = line
            .trim()
            .strip_prefix(LINE_PREFIX)
            .ok_or_else(|| format!("a remote line starts with {LINE_PREFIX}"))?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| "the line is damaged (not base64): copy it whole".to_owned())?;
        let line: RemoteLine = serde_json::from_slice(&json)
            .map_err(|_| "the line is damaged: copy it whole".to_owned())?;
        if line.v != 1 {
            return Err(format!(
                "the line is of version {}, this selves reads version 1: upgrade selves",
                line.v
            ));
        }
        Ok(line)
    }
}

/// The plaintext file at the root of a remote.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    format: String,
    group: String,
    /// Proves the key without revealing it: a reader with another key is
    /// told so instead of failing on every segment.
    check: String,
    /// The key itself, in a remote made with `--no-encryption` (then
    /// whoever reads the remote reads what it holds; files still open only
    /// where they were written, so damage is found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

/// The keys a remote's key gives.
struct Keys {
    seal: LessSafeKey,
    names: [u8; 32],
    check: [u8; 32],
}

impl Keys {
    fn new(key: &[u8; 32]) -> Keys {
        let derive = |context: &str| blake3::derive_key(context, key);
        Keys {
            seal: LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, &derive("selves remote seal v1"))
                    .expect("a 32-byte key"),
            ),
            names: derive("selves remote names v1"),
            check: derive("selves remote check v1"),
        }
    }

    fn check(&self, group: &str) -> String {
        selves_wire::hex(blake3::keyed_hash(&self.check, group.as_bytes()).as_bytes())
    }

    /// The folder name of a writer: a keyed hash of its node id.
    fn tag(&self, node: &NodeId) -> String {
        selves_wire::hex(
            &blake3::keyed_hash(&self.names, node.as_str().as_bytes()).as_bytes()[..12],
        )
    }

    /// The file name of a content: a keyed hash of its hash.
    fn blob_name(&self, hash: &BlobHash) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.names);
        h.update(b"blob");
        h.update(&hash.0);
        selves_wire::hex(&h.finalize().as_bytes()[..16])
    }
}

/// Where a remote's files are, and how they travel.
enum Medium {
    /// A folder carried by something else; files appear in it.
    Folder { root: PathBuf },
    /// A clone of a git repository in the node's home.
    Git { url: String, work: PathBuf },
}

/// Whether `url` names a folder (`folder:PATH`) rather than a git
/// repository.
pub fn folder_of(url: &str) -> Option<PathBuf> {
    let path = url.strip_prefix("folder:")?;
    Some(match path.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(rest),
        None => PathBuf::from(path),
    })
}

impl Medium {
    fn new(url: &str, home: &Path, alias: &str) -> Medium {
        match folder_of(url) {
            Some(root) => Medium::Folder { root },
            None => Medium::Git {
                url: url.to_owned(),
                work: home.join("remotes").join(alias),
            },
        }
    }

    fn root(&self) -> &Path {
        match self {
            Medium::Folder { root } => root,
            Medium::Git { work, .. } => work,
        }
    }

    fn url(&self) -> String {
        match self {
            Medium::Folder { root } => format!("folder:{}", root.display()),
            Medium::Git { url, .. } => url.clone(),
        }
    }

    /// Brings the local view up to date with the medium.
    fn refresh(&self) -> Result<(), SyncError> {
        match self {
            Medium::Folder { root } => {
                if root.is_dir() {
                    Ok(())
                } else {
                    Err(SyncError::Network {
                        url: self.url(),
                        detail: "the folder is missing (not mounted, or not synced here yet?)"
                            .into(),
                    })
                }
            }
            Medium::Git { url, work } => git_refresh(url, work),
        }
    }

    /// Makes the files just written visible to the others.
    fn publish(&self, what: &str) -> Result<(), SyncError> {
        match self {
            Medium::Folder { .. } => Ok(()),
            Medium::Git { url, work } => git_publish(url, work, what),
        }
    }
}

/// A store-free summary of one remote for `remote add`/`join`.
pub struct Opened {
    pub group: String,
    pub created: bool,
    /// The key, if the remote keeps it in the clear (`--no-encryption`).
    pub public_key: Option<[u8; 32]>,
}

fn public_key(m: &Manifest) -> Option<[u8; 32]> {
    let hex = m.key.as_deref()?;
    let token: selves_wire::Token = hex.parse().ok()?;
    Some(*token.as_bytes())
}

/// Reads the remote at `url` without a key: its group, and its key if it
/// keeps it in the clear (a remote made with `--no-encryption`).
pub fn peek_remote(url: &str, home: &Path, alias: &str) -> Result<Opened, SyncError> {
    let medium = Medium::new(url, home, alias);
    medium.refresh()?;
    let bytes = std::fs::read(medium.root().join(MANIFEST)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            SyncError::NotFound {
                url: medium.url(),
                detail: format!("no {MANIFEST} there: not a selves remote"),
            }
        } else {
            io_error(&medium, e)
        }
    })?;
    let m = read_manifest(&medium, &bytes)?;
    Ok(Opened {
        public_key: public_key(&m),
        group: m.group,
        created: false,
    })
}

/// Opens the remote at `url` with `key`: checks its manifest, or with
/// `create` makes one if the remote is empty. `home` holds git clones.
pub fn open_remote(
    url: &str,
    key: &[u8; 32],
    home: &Path,
    alias: &str,
    create: bool,
    in_the_clear: bool,
) -> Result<Opened, SyncError> {
    let medium = Medium::new(url, home, alias);
    medium.refresh()?;
    let keys = Keys::new(key);
    let path = medium.root().join(MANIFEST);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let m = read_manifest(&medium, &bytes)?;
            if m.check != keys.check(&m.group) {
                return Err(wrong_key(&medium));
            }
            Ok(Opened {
                public_key: public_key(&m),
                group: m.group,
                created: false,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let mut group = [0u8; 16];
            getrandom::fill(&mut group).map_err(|e| io_error(&medium, e.into()))?;
            let group = selves_wire::hex(&group);
            let m = Manifest {
                format: FORMAT.into(),
                check: keys.check(&group),
                group: group.clone(),
                key: in_the_clear.then(|| selves_wire::hex(key)),
            };
            let json = serde_json::to_vec_pretty(&m).expect("serialisable");
            write_durably(&path, &json).map_err(|e| io_error(&medium, e))?;
            medium.publish("selves: a new remote")?;
            Ok(Opened {
                group,
                created: true,
                public_key: in_the_clear.then_some(*key),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SyncError::NotFound {
            url: medium.url(),
            detail: format!("no {MANIFEST} there: not a selves remote (or not copied here yet)"),
        }),
        Err(e) => Err(io_error(&medium, e)),
    }
}

fn read_manifest(medium: &Medium, bytes: &[u8]) -> Result<Manifest, SyncError> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| SyncError::Protocol {
        url: medium.url(),
        detail: format!("{MANIFEST} is damaged: {e}"),
    })?;
    if m.format != FORMAT {
        return Err(SyncError::ProtocolMismatch {
            url: medium.url(),
            theirs: m
                .format
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            ours: 1,
        });
    }
    Ok(m)
}

fn wrong_key(medium: &Medium) -> SyncError {
    SyncError::Unauthorized {
        url: medium.url(),
        detail: "this remote was made with another key (another group's remote, or a line from another remote): join it with its own `selves-remote:` line".into(),
    }
}

fn io_error(medium: &Medium, e: std::io::Error) -> SyncError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        return SyncError::Store(selves_store::StoreError::Io {
            path: medium.root().to_owned(),
            source: e,
        });
    }
    SyncError::Network {
        url: medium.url(),
        detail: e.to_string(),
    }
}

/// Writes `bytes` at `path` whole: a temporary file beside it, fsynced,
/// renamed, the folder fsynced. Readers never see part of it under its
/// name (a carrier such as Syncthing may still show a part of it later).
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("a file in a folder");
    std::fs::create_dir_all(dir)?;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".selves-tmp-{}", selves_wire::hex(&suffix)));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Why a segment could not be read.
enum SegmentError {
    /// Shorter than it says: still being copied. Wait.
    Incomplete,
    /// Does not open, or opens to nonsense.
    Damaged(String),
}

fn aad(group: &str, tag: &str, n: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64);
    aad.extend_from_slice(MAGIC);
    aad.extend_from_slice(group.as_bytes());
    aad.push(0);
    aad.extend_from_slice(tag.as_bytes());
    aad.extend_from_slice(&n.to_le_bytes());
    aad
}

/// A segment: its batches as JSON, sealed (see [`seal_bytes`]).
fn seal(keys: &Keys, group: &str, tag: &str, n: u64, batches: &[RecordBatch]) -> Vec<u8> {
    let json = serde_json::to_vec(batches).expect("serialisable");
    seal_bytes(keys, MAGIC, &aad(group, tag, n), &json)
}

/// `magic`, the sealed length (u64 LE), a 12-byte nonce, then `plain`
/// compressed and sealed with its tag.
fn seal_bytes(keys: &Keys, magic: &[u8; 8], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(plain).expect("writing to memory");
    let mut body = z.finish().expect("writing to memory");
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).expect("the system's random source");
    keys.seal
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .expect("sealing cannot fail below 256 GiB");
    let mut out = Vec::with_capacity(body.len() + 28);
    out.extend_from_slice(magic);
    out.extend_from_slice(&((body.len() + 12) as u64).to_le_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    out
}

fn unseal(
    keys: &Keys,
    group: &str,
    tag: &str,
    n: u64,
    bytes: Vec<u8>,
) -> Result<Vec<RecordBatch>, SegmentError> {
    let json = unseal_bytes(keys, MAGIC, &aad(group, tag, n), bytes, MAX_PLAIN)?;
    serde_json::from_slice(&json)
        .map_err(|e| SegmentError::Damaged(format!("it holds no record batches: {e}")))
}

/// A tail's additional data: it opens only as the tail of `hash` in this
/// group.
fn tail_aad(group: &str, hash: &BlobHash) -> Vec<u8> {
    let mut aad = blob_aad(group, hash);
    aad[..8].copy_from_slice(TAIL_MAGIC);
    aad
}

/// A content's additional data: it opens only as the content of `hash`
/// in this group.
fn blob_aad(group: &str, hash: &BlobHash) -> Vec<u8> {
    let mut aad = Vec::with_capacity(80);
    aad.extend_from_slice(BLOB_MAGIC);
    aad.extend_from_slice(group.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&hash.0);
    aad
}

fn unseal_bytes(
    keys: &Keys,
    magic: &[u8; 8],
    aad: &[u8],
    mut bytes: Vec<u8>,
    max: u64,
) -> Result<Vec<u8>, SegmentError> {
    if bytes.len() < 16 {
        return if magic.starts_with(&bytes[..bytes.len().min(8)]) {
            Err(SegmentError::Incomplete)
        } else {
            Err(SegmentError::Damaged("not a selves file".into()))
        };
    }
    if &bytes[..8] != magic {
        return Err(SegmentError::Damaged("not a selves file".into()));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let have = (bytes.len() - 16) as u64;
    if have < len {
        return Err(SegmentError::Incomplete);
    }
    if have > len || len < 12 + 16 {
        return Err(SegmentError::Damaged(format!(
            "{have} bytes where its header says {len}"
        )));
    }
    let nonce: [u8; 12] = bytes[16..28].try_into().expect("12 bytes");
    let body = &mut bytes[28..];
    let plain = keys
        .seal
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
        .map_err(|_| {
            SegmentError::Damaged(
                "it fails authentication (tampered with, damaged, or not where it was written)"
                    .into(),
            )
        })?;
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(&plain[..])
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| SegmentError::Damaged(format!("it does not decompress: {e}")))?;
    if out.len() as u64 > max {
        return Err(SegmentError::Damaged(format!(
            "it opens to more than {max} bytes"
        )));
    }
    Ok(out)
}

/// The writers' folders in a remote, and the segments in each, by number.
fn list(root: &Path) -> std::io::Result<Vec<(String, Vec<u64>)>> {
    let dir = root.join("w");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e?;
        let Some(tag) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if tag.len() != 24 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let mut segs = Vec::new();
        for f in std::fs::read_dir(e.path())? {
            let name = f?.file_name();
            // Exactly `<n>.seg`: a carrier's temporary names (.syncthing.*,
            // *.tmp, ~…) and ours (.selves-tmp-*) are not segments yet.
            if let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .filter(|n| !n.starts_with('0'))
                .and_then(|n| n.parse::<u64>().ok())
            {
                segs.push(n);
            }
        }
        segs.sort_unstable();
        out.push((tag, segs));
    }
    out.sort();
    Ok(out)
}

/// One round with a remote: bring the medium up to date, apply what it
/// holds that this node lacks, write what this node holds that it lacks.
pub async fn sync_remote(
    store: Arc<Store>,
    engine: Arc<Engine>,
    remote: &Remote,
    home: &Path,
    progress: &dyn Progress,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let remote = remote.clone();
    let home = home.to_owned();
    let mut report = tokio::task::spawn_blocking(move || {
        Round::open(&store, &engine, &remote, &home)?.run(started)
    })
    .await
    .map_err(|e| SyncError::Protocol {
        url: "remote".into(),
        detail: format!("the round failed: {e}"),
    })??;
    progress.pulled(report.pulled);
    progress.pushed(report.pushed);
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// One round's context: the medium, opened with the right key.
struct Round<'a> {
    store: &'a Arc<Store>,
    engine: &'a Arc<Engine>,
    alias: &'a str,
    medium: Medium,
    keys: Keys,
    group: String,
    /// Contents in the remote, by file name: where each is.
    blobs: std::collections::HashMap<String, Held>,
    report: SyncReport,
}

impl<'a> Round<'a> {
    fn open(
        store: &'a Arc<Store>,
        engine: &'a Arc<Engine>,
        remote: &'a Remote,
        home: &Path,
    ) -> Result<Round<'a>, SyncError> {
        let alias = remote.alias.as_str();
        let medium = Medium::new(&remote.url, home, alias);
        medium.refresh()?;
        let keys = Keys::new(remote.token.as_bytes());
        let manifest = match std::fs::read(medium.root().join(MANIFEST)) {
            Ok(bytes) => read_manifest(&medium, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SyncError::NotFound {
                    url: medium.url(),
                    detail: format!(
                        "no {MANIFEST} there: the remote is gone, or not copied here yet"
                    ),
                });
            }
            Err(e) => return Err(io_error(&medium, e)),
        };
        if manifest.check != keys.check(&manifest.group) {
            return Err(wrong_key(&medium));
        }
        let blobs = blob_index(medium.root()).map_err(|e| io_error(&medium, e))?;
        Ok(Round {
            store,
            engine,
            alias,
            medium,
            keys,
            group: manifest.group,
            blobs,
            report: SyncReport::new(format!("remote {alias}"), None, "remote"),
        })
    }

    fn run(mut self, started: Instant) -> Result<SyncReport, SyncError> {
        let pending = self.read_segments()?;
        self.apply_segments(pending)?;
        self.report.durable_ms = started.elapsed().as_millis() as u64;
        self.write_segments()?;
        self.report.peer_heads = self.store.remote_heads(self.alias)?;
        if let Some(first) = self.report.refused.first() {
            // What could be applied was; what follows a refused segment of
            // its writer never is. Loud until the file is replaced.
            return Err(SyncError::Protocol {
                url: self.medium.url(),
                detail: first.clone(),
            });
        }
        Ok(self.report)
    }

    fn io(&self, e: std::io::Error) -> SyncError {
        io_error(&self.medium, e)
    }

    /// Every writer's segments past what was applied here, in order, up
    /// to the first that is incomplete (waited for) or refused.
    fn read_segments(&mut self) -> Result<Vec<(String, u64, Vec<RecordBatch>)>, SyncError> {
        let listed = list(self.medium.root()).map_err(|e| self.io(e))?;
        // Cursors are reset when this node carries a share it did not
        // (its records were passed over before).
        let carried: Vec<String> = self
            .store
            .streams()?
            .iter()
            .map(ToString::to_string)
            .collect();
        let cursors = self
            .store
            .remote_cursors_covering(self.alias, &carried.join(","))?;
        let mut pending = Vec::new();
        let mut waiting = Vec::new();
        for (tag, segs) in &listed {
            let mut next = cursors.get(tag).copied().unwrap_or(0) + 1;
            while segs.binary_search(&next).is_ok() {
                let path = self
                    .medium
                    .root()
                    .join("w")
                    .join(tag)
                    .join(format!("{next}.seg"));
                let bytes = std::fs::read(&path).map_err(|e| self.io(e))?;
                match unseal(&self.keys, &self.group, tag, next, bytes) {
                    Ok(batches) => pending.push((tag.clone(), next, batches)),
                    Err(SegmentError::Incomplete) => {
                        waiting.push(format!("w/{tag}/{next}.seg"));
                        break;
                    }
                    Err(SegmentError::Damaged(why)) => {
                        let reason = format!("segment w/{tag}/{next}.seg refused: {why}");
                        tracing::warn!(remote = %self.alias, %reason, "remote segment refused");
                        self.report.refused.push(reason);
                        break;
                    }
                }
                next += 1;
            }
        }
        if !waiting.is_empty() {
            tracing::info!(remote = %self.alias, files = ?waiting, "segments still being copied; waiting for them");
        }
        Ok(pending)
    }

    /// Applies what the segments hold, oldest first, each batch once the
    /// log it continues is held (and, for a share, once the contents it
    /// needs are here); moves each writer's cursor past the segments wholly
    /// applied. A segment whose records wait (for another writer's, or for
    /// a content still being copied) is read again next round.
    fn apply_segments(
        &mut self,
        pending: Vec<(String, u64, Vec<RecordBatch>)>,
    ) -> Result<(), SyncError> {
        if pending.is_empty() {
            return Ok(());
        }
        let store = self.store;
        let held = |store: &Store| -> Result<std::collections::HashMap<(NodeId, StreamName), u64>, SyncError> {
            Ok(store
                .heads()?
                .into_iter()
                .map(|h| ((h.node, h.stream), h.seq))
                .collect())
        };
        let mut heads = held(store)?;
        // (tag, n, batches left, every batch's end)
        let mut segs: Vec<(String, u64, Vec<RecordBatch>, Vec<Head>)> = pending
            .into_iter()
            .map(|(tag, n, batches)| {
                let batches: Vec<RecordBatch> = batches
                    .into_iter()
                    .filter(|b| !b.records.is_empty())
                    .collect();
                let ends = batches
                    .iter()
                    .map(|b| Head::new(b.node.clone(), b.stream.clone(), b.end()))
                    .collect();
                (tag, n, batches, ends)
            })
            .collect();
        // Logs that cannot move on this round: refused, or a share batch
        // waiting for contents.
        let mut stopped: Vec<(NodeId, StreamName)> = Vec::new();
        // Whether any of this node's own records came back.
        let mut own = false;
        let mut shares: std::collections::HashMap<StreamName, Option<Share>> =
            std::collections::HashMap::new();
        loop {
            let mut ready: Vec<(usize, RecordBatch)> = Vec::new();
            for (at, (_, _, batches, _)) in segs.iter_mut().enumerate() {
                let mut i = 0;
                while i < batches.len() {
                    let b = &batches[i];
                    let key = (b.node.clone(), b.stream.clone());
                    let have = heads.get(&key).copied().unwrap_or(0);
                    let share = if b.stream.is_share() {
                        shares
                            .entry(b.stream.clone())
                            .or_insert_with(|| store.share_of(&b.stream).ok().flatten())
                            .clone()
                    } else {
                        None
                    };
                    // A share not carried here, or not taking changes: its
                    // records are passed over (read again if it is added).
                    let passed_over =
                        b.stream.is_share() && share.as_ref().is_none_or(|s| !s.mode.receives());
                    // A batch this node holds all of still goes to the
                    // store, which finds it a duplicate, or another branch
                    // of the log: a fork, or this node's own log as it was
                    // before this home was restored (then it recovers).
                    if passed_over {
                        batches.remove(i);
                    } else if stopped.contains(&key) {
                        i += 1;
                    } else if b.start <= have + 1 {
                        heads.insert(key, b.end().max(have));
                        ready.push((at, batches.remove(i)));
                    } else {
                        i += 1;
                    }
                }
            }
            if ready.is_empty() {
                break;
            }
            own |= ready.iter().any(|(_, b)| b.node == store.me().id);
            let mut memory = Vec::new();
            let mut cards = Vec::new();
            for (at, b) in ready {
                if b.stream.is_memory() {
                    memory.push(b);
                } else if b.stream.is_nodes() {
                    cards.push(b);
                } else {
                    let share = shares
                        .get(&b.stream)
                        .cloned()
                        .flatten()
                        .expect("only carried shares are ready");
                    if !self.apply_share(&share, &b)? {
                        stopped.push((b.node.clone(), b.stream.clone()));
                        segs[at].2.insert(0, b);
                    }
                }
            }
            for (batches, are_cards) in [(memory, false), (cards, true)] {
                if batches.is_empty() {
                    continue;
                }
                let summary = store.apply(batches, Durability::Deferred, now_ms())?;
                for r in &summary.refused {
                    tracing::warn!(node = %r.node, stream = %r.stream, seq = r.seq, reason = %r.reason, "records from the remote refused");
                    stopped.push((r.node.clone(), r.stream.clone()));
                }
                let report = &mut self.report;
                report.refusals.extend(summary.refused);
                if are_cards {
                    report.cards_pulled += summary.accepted;
                } else {
                    report.pulled += summary.accepted;
                }
                report.duplicates += summary.duplicates;
                report.changed_rows += summary.changed_rows;
                report.voided.extend(summary.voided);
            }
            // What was refused or waits is not held: heads as they are.
            heads = held(store)?;
        }
        store.flush_deferred()?;
        if own {
            // A restore recovered: what this home wrote since is written
            // again after the records it took back, and goes out below.
            let reissued = store.reissue_pending(now_ms())?;
            if reissued > 0 {
                tracing::info!(
                    records = reissued,
                    "recovered from a restore: own records written again"
                );
            }
        }
        // Names come from the cards (signed by their nodes): no hello here.
        let named: Vec<selves_wire::native::NodeInfo> = store
            .cards()?
            .into_iter()
            .map(|c| selves_wire::native::NodeInfo {
                id: c.id,
                name: c.name,
            })
            .collect();
        store.learn_nodes(&named)?;
        // A writer's cursor moves over its segments in order, up to the
        // first with records still waiting.
        let mut stuck: Vec<String> = Vec::new();
        for (tag, n, batches, ends) in segs {
            if stuck.contains(&tag) {
                continue;
            }
            if batches.is_empty() {
                store.note_remote_segment(self.alias, &tag, n, &ends)?;
            } else {
                stuck.push(tag);
            }
        }
        Ok(())
    }

    /// The per-share line of the report.
    fn share_line(&mut self, share: &Share) -> &mut ShareSync {
        let name = share.name.to_string();
        let at = match self.report.shares.iter().position(|s| s.share == name) {
            Some(at) => at,
            None => {
                self.report.shares.push(ShareSync {
                    share: name,
                    ..ShareSync::default()
                });
                self.report.shares.len() - 1
            }
        };
        &mut self.report.shares[at]
    }

    /// Applies one batch of a share: fetches the contents it wants from the
    /// remote, then hands it to the engine. `false` when a content is not
    /// (completely) there yet: the batch waits for the next round.
    fn apply_share(&mut self, share: &Share, batch: &RecordBatch) -> Result<bool, SyncError> {
        let err = |e: ShareError| SyncError::Share {
            share: share.name.to_string(),
            detail: e.to_string(),
        };
        for _ in 0..4 {
            let wants = self.engine.wants(share, batch).map_err(err)?;
            for want in wants {
                if !self.fetch(share, &want)? {
                    return Ok(false);
                }
            }
            match self.engine.apply(share, batch.clone(), now_ms()) {
                Ok(commit) => {
                    if let Some(r) = commit.refused.first() {
                        self.report.refused.push(format!(
                            "share {}: records of node {} refused ({}): {}",
                            share.name,
                            r.node,
                            r.kind.as_str(),
                            r.reason
                        ));
                    }
                    let line = self.share_line(share);
                    line.pulled += commit.accepted;
                    line.voided += commit.voided.len() as u64;
                    return Ok(true);
                }
                Err(ShareError::MissingBlob(hash)) => {
                    if !self.fetch(share, &BlobWant { hash, from: 0 })? {
                        return Ok(false);
                    }
                }
                // A file changed on disk while it was being replaced: the
                // next try captures the change first.
                Err(ShareError::Fs(selves_share::fsops::FsError::Changed { .. })) => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(false)
    }

    /// Puts a content from the remote into the blob store: `false` if it
    /// is not there (yet), or not whole.
    fn fetch(&mut self, share: &Share, want: &BlobWant) -> Result<bool, SyncError> {
        let Some(tail) = self.content_from(&want.hash, want.from, MAX_CHAIN)? else {
            return Ok(false);
        };
        self.engine
            .blobs()
            .put(&want.hash, want.from, Some(tail.len() as u64), &tail[..])
            .map_err(|e| SyncError::Share {
                share: share.name.to_string(),
                detail: e.to_string(),
            })?;
        let line = self.share_line(share);
        line.blobs_in += 1;
        line.blob_bytes_in += tail.len() as u64;
        Ok(true)
    }

    /// The bytes of content `hash` past `from`, as the remote holds them:
    /// from its whole copy, or from its tail (and, for bytes before the
    /// tail, its parent's, up to `chain` links back). `None` when it is
    /// not there (yet), not whole, or refused (reported).
    fn content_from(
        &mut self,
        hash: &BlobHash,
        from: u64,
        chain: u32,
    ) -> Result<Option<Vec<u8>>, SyncError> {
        let name = self.keys.blob_name(hash);
        let Some(held) = self.blobs.get(&name).cloned() else {
            return Ok(None);
        };
        let bytes = std::fs::read(&held.path).map_err(|e| self.io(e))?;
        let rel = held
            .path
            .strip_prefix(self.medium.root())
            .unwrap_or(&held.path)
            .display()
            .to_string();
        let (magic, aad) = if held.tail {
            (TAIL_MAGIC, tail_aad(&self.group, hash))
        } else {
            (BLOB_MAGIC, blob_aad(&self.group, hash))
        };
        let plain = match unseal_bytes(&self.keys, magic, &aad, bytes, MAX_BLOB + 40) {
            Ok(p) => p,
            Err(SegmentError::Incomplete) => return Ok(None),
            Err(SegmentError::Damaged(why)) => {
                self.report
                    .refused
                    .push(format!("content {rel} refused: {why}"));
                return Ok(None);
            }
        };
        if !held.tail {
            if BlobHash(*blake3::hash(&plain).as_bytes()) != *hash {
                self.report.refused.push(format!(
                    "content {rel} refused: it is not the content its name says"
                ));
                return Ok(None);
            }
            return Ok(plain.get(from as usize..).map(<[u8]>::to_vec));
        }
        // A tail: the whole content is the parent's bytes, then these. What
        // it assembles to is checked against `hash` by the blob store (from
        // 0) or by the engine (past a prefix this node holds).
        if plain.len() < 40 {
            self.report.refused.push(format!(
                "content {rel} refused: a tail too short to hold its header"
            ));
            return Ok(None);
        }
        let parent = BlobHash(plain[..32].try_into().expect("32 bytes"));
        let at = u64::from_le_bytes(plain[32..40].try_into().expect("8 bytes"));
        let new = &plain[40..];
        if from >= at {
            return Ok(new.get((from - at) as usize..).map(<[u8]>::to_vec));
        }
        if chain == 0 || at > MAX_BLOB {
            return Ok(None);
        }
        let Some(mut out) = self.content_from(&parent, from, chain - 1)? else {
            return Ok(None);
        };
        if from + out.len() as u64 != at {
            self.report.refused.push(format!(
                "content {rel} refused: its parent is {} bytes long, not {at}",
                from + out.len() as u64
            ));
            return Ok(None);
        }
        out.extend_from_slice(new);
        Ok(Some(out))
    }

    /// Writes what this node holds beyond what the remote holds: for a
    /// share, the contents its records refer to first, then the segment.
    fn write_segments(&mut self) -> Result<(), SyncError> {
        let store = self.store;
        let theirs = store.remote_heads(self.alias)?;
        let ours = store.heads()?;
        let carried = store.streams()?;
        let mut ranges = Vec::new();
        for h in ours.iter().filter(|h| carried.contains(&h.stream)) {
            let have = theirs
                .iter()
                .find(|t| t.node == h.node && t.stream == h.stream)
                .map_or(0, |t| t.seq);
            if h.seq > have {
                ranges.push(Range {
                    node: h.node.clone(),
                    stream: h.stream.clone(),
                    after: have,
                });
            }
        }
        if ranges.is_empty() {
            return Ok(());
        }
        let me = store.me().id.clone();
        let tag = self.keys.tag(&me);
        let dir = self.medium.root().join("w").join(&tag);
        // Numbered after every segment of this writer there is, so a
        // number is never written twice (a home restored from a backup
        // sees what it wrote since).
        let mut n = list(self.medium.root())
            .map_err(|e| self.io(e))?
            .into_iter()
            .find(|(t, _)| *t == tag)
            .and_then(|(_, s)| s.last().copied())
            .unwrap_or(0);
        let mut written = Vec::new();
        while !ranges.is_empty() {
            let read = store.read_ranges(&ranges, SEGMENT_RECORDS, SEGMENT_BYTES)?;
            if read.records == 0 {
                break;
            }
            for b in read.batches.iter().filter(|b| b.stream.is_share()) {
                self.write_contents(&dir, b)?;
            }
            n += 1;
            let bytes = seal(&self.keys, &self.group, &tag, n, &read.batches);
            self.report.bytes += bytes.len() as u64;
            write_durably(&dir.join(format!("{n}.seg")), &bytes).map_err(|e| self.io(e))?;
            let mut ends = Vec::new();
            for b in &read.batches {
                let end = b.end();
                let count = b.records.len() as u64;
                if b.stream.is_memory() {
                    self.report.pushed += count;
                } else if b.stream.is_nodes() {
                    self.report.cards_pushed += count;
                } else if let Some(share) = store.share_of(&b.stream)? {
                    self.share_line(&share).pushed += count;
                }
                ends.push(Head::new(b.node.clone(), b.stream.clone(), end));
                if let Some(r) = ranges
                    .iter_mut()
                    .find(|r| r.node == b.node && r.stream == b.stream)
                {
                    r.after = end;
                }
            }
            ranges.retain(|r| {
                ours.iter()
                    .any(|h| h.node == r.node && h.stream == r.stream && h.seq > r.after)
            });
            written.push((n, ends));
        }
        self.medium.publish(&format!(
            "selves: {} writes {} segment(s)",
            store.me().name,
            written.len()
        ))?;
        // Only once the segments are out: this node's own are applied here
        // already, and the remote holds them.
        for (n, ends) in written {
            store.note_remote_segment(self.alias, &tag, n, &ends)?;
        }
        Ok(())
    }

    /// Puts the content of every file version of `batch` into the remote,
    /// unless it is there already (written by any node). A version that
    /// only grew its parent, whose parent the remote holds, goes as a tail:
    /// the new bytes alone, so a session log appended to a line at a time
    /// grows the remote by those lines, not by the whole file each time.
    fn write_contents(&mut self, dir: &Path, batch: &RecordBatch) -> Result<(), SyncError> {
        let Some(share) = self.store.share_of(&batch.stream)? else {
            return Ok(());
        };
        for record in &batch.records {
            let Record::File(v) = record else { continue };
            let Some(hash) = v.blob.filter(|_| !v.deleted) else {
                continue;
            };
            let name = self.keys.blob_name(&hash);
            if self.blobs.contains_key(&name) {
                continue;
            }
            // The parent, when this version is an append to it and the
            // chain behind it is short enough.
            let grown = match (v.parent, v.append_from) {
                (Some(parent), Some(at)) if at > 0 => self
                    .blobs
                    .get(&self.keys.blob_name(&parent))
                    .filter(|h| h.depth < MAX_CHAIN)
                    .map(|h| (parent, at, h.depth + 1)),
                _ => None,
            };
            let from = grown.map_or(0, |(_, at, _)| at);
            let read =
                self.engine
                    .read_blob(&share, &hash, from)
                    .map_err(|e| SyncError::Share {
                        share: share.name.to_string(),
                        detail: e.to_string(),
                    })?;
            let Some((mut reader, len)) = read else {
                // Replaced here since: readers take the newer version.
                tracing::debug!(share = %share.name, path = %v.path, "content no longer here");
                continue;
            };
            if from + len > MAX_BLOB {
                tracing::warn!(share = %share.name, path = %v.path, len, "too large for a remote; not sent");
                continue;
            }
            let mut plain = Vec::with_capacity(len as usize + 40);
            let (held, sealed) = match grown {
                Some((parent, at, depth)) => {
                    plain.extend_from_slice(&parent.0);
                    plain.extend_from_slice(&at.to_le_bytes());
                    reader.read_to_end(&mut plain).map_err(|e| self.io(e))?;
                    let path = dir.join("b").join(format!("{name}.{depth}.tail"));
                    let sealed = seal_bytes(
                        &self.keys,
                        TAIL_MAGIC,
                        &tail_aad(&self.group, &hash),
                        &plain,
                    );
                    (
                        Held {
                            path,
                            tail: true,
                            depth,
                        },
                        sealed,
                    )
                }
                None => {
                    reader.read_to_end(&mut plain).map_err(|e| self.io(e))?;
                    let path = dir.join("b").join(format!("{name}.blob"));
                    let sealed = seal_bytes(
                        &self.keys,
                        BLOB_MAGIC,
                        &blob_aad(&self.group, &hash),
                        &plain,
                    );
                    (
                        Held {
                            path,
                            tail: false,
                            depth: 0,
                        },
                        sealed,
                    )
                }
            };
            write_durably(&held.path, &sealed).map_err(|e| self.io(e))?;
            self.blobs.insert(name, held);
            let line = self.share_line(&share);
            line.blobs_out += 1;
            line.blob_bytes_out += len;
        }
        Ok(())
    }
}

/// Where a content is in a remote: whole (`<name>.blob`), or as a tail on
/// its parent (`<name>.<depth>.tail`, `depth` tails from a whole one).
#[derive(Debug, Clone)]
struct Held {
    path: PathBuf,
    tail: bool,
    depth: u32,
}

/// Every content in a remote (`w/*/b/<name>.blob` and
/// `w/*/b/<name>.<depth>.tail`), by name; a whole one before a tail.
fn blob_index(root: &Path) -> std::io::Result<std::collections::HashMap<String, Held>> {
    let mut out = std::collections::HashMap::new();
    let dir = root.join("w");
    let writers = match std::fs::read_dir(&dir) {
        Ok(w) => w,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for w in writers {
        let b = w?.path().join("b");
        let Ok(files) = std::fs::read_dir(&b) else {
            continue;
        };
        for f in files {
            let f = f?;
            let file = f.file_name();
            let Some(file) = file.to_str() else { continue };
            let (name, held) = if let Some(name) = file.strip_suffix(".blob") {
                (
                    name,
                    Held {
                        path: f.path(),
                        tail: false,
                        depth: 0,
                    },
                )
            } else if let Some((name, depth)) = file
                .strip_suffix(".tail")
                .and_then(|n| n.split_once('.'))
                .and_then(|(n, d)| Some((n, d.parse::<u32>().ok()?)))
            {
                (
                    name,
                    Held {
                        path: f.path(),
                        tail: true,
                        depth,
                    },
                )
            } else {
                continue;
            };
            if name.len() != 32 || !name.bytes().all(|c| c.is_ascii_hexdigit()) {
                continue;
            }
            match out.get(name) {
                Some(Held { tail: false, .. }) => {}
                Some(have) if held.tail && have.depth <= held.depth => {}
                _ => {
                    out.insert(name.to_owned(), held);
                }
            }
        }
    }
    Ok(out)
}

/// What `selves verify` says of a remote: what it holds that this node
/// has not applied, and what this node holds that it lacks.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteVerdict {
    /// Segments past this node's cursors (complete or not).
    pub segments_not_applied: u64,
    /// (node, stream, here, there) where this node holds more.
    pub ahead_here: Vec<(String, String, u64, u64)>,
}

impl RemoteVerdict {
    pub fn converged(&self) -> bool {
        self.segments_not_applied == 0 && self.ahead_here.is_empty()
    }
}

/// Compares this node with what the remote holds now (after bringing the
/// medium up to date), changing nothing here.
pub fn verify_remote(
    store: &Store,
    remote: &Remote,
    home: &Path,
) -> Result<RemoteVerdict, SyncError> {
    let alias = remote.alias.as_str();
    let medium = Medium::new(&remote.url, home, alias);
    medium.refresh()?;
    let keys = Keys::new(remote.token.as_bytes());
    let bytes = std::fs::read(medium.root().join(MANIFEST)).map_err(|e| io_error(&medium, e))?;
    let manifest = read_manifest(&medium, &bytes)?;
    if manifest.check != keys.check(&manifest.group) {
        return Err(wrong_key(&medium));
    }
    let cursors = store.remote_cursors(alias)?;
    let segments_not_applied = list(medium.root())
        .map_err(|e| io_error(&medium, e))?
        .iter()
        .map(|(tag, segs)| {
            let at = cursors.get(tag).copied().unwrap_or(0);
            segs.iter().filter(|n| **n > at).count() as u64
        })
        .sum();
    let theirs = store.remote_heads(alias)?;
    let ahead_here = store
        .heads()?
        .into_iter()
        .filter(|h| h.stream.is_memory() || h.stream.is_nodes())
        .filter_map(|h| {
            let there = theirs
                .iter()
                .find(|t| t.node == h.node && t.stream == h.stream)
                .map_or(0, |t| t.seq);
            (h.seq > there).then(|| (h.node.to_string(), h.stream.to_string(), h.seq, there))
        })
        .collect();
    Ok(RemoteVerdict {
        segments_not_applied,
        ahead_here,
    })
}

// --- git ------------------------------------------------------------------

/// `git` with no terminal to ask on, ssh in batch mode.
fn git(work: Option<&Path>) -> Command {
    let mut cmd = Command::new("git");
    if let Some(w) = work {
        cmd.arg("-C").arg(w);
    }
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GCM_INTERACTIVE", "never")
        .stdin(std::process::Stdio::null());
    if std::env::var_os("GIT_SSH_COMMAND").is_none() {
        let mut ssh = String::from("ssh -o BatchMode=yes");
        if let Some(config) = std::env::var_os("SELVES_SSH_CONFIG") {
            ssh.push_str(&format!(" -F '{}'", config.to_string_lossy()));
        }
        cmd.env("GIT_SSH_COMMAND", ssh);
    }
    cmd.args([
        "-c",
        "user.name=selves",
        "-c",
        "user.email=selves@localhost",
    ]);
    cmd.args(["-c", "commit.gpgsign=false", "-c", "core.autocrlf=false"]);
    // Segments are compressed and sealed already: compressing them again
    // costs time and saves nothing.
    cmd.args(["-c", "core.compression=0"]);
    cmd
}

/// Runs `cmd`; a failure is classified from what git said.
fn run_git(url: &str, mut cmd: Command) -> Result<String, SyncError> {
    let out = cmd.output().map_err(|e| SyncError::Network {
        url: url.to_owned(),
        detail: format!("cannot run git: {e} (is git installed?)"),
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(git_error(url, &String::from_utf8_lossy(&out.stderr)))
}

fn git_error(url: &str, stderr: &str) -> SyncError {
    let detail = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("hint:"))
        .take(3)
        .collect::<Vec<_>>()
        .join(" / ");
    let low = stderr.to_lowercase();
    let url = url.to_owned();
    if low.contains("permission denied")
        || low.contains("authentication failed")
        || low.contains("could not read username")
        || low.contains("host key verification failed")
    {
        SyncError::Unauthorized { url, detail }
    } else if low.contains("does not appear to be a git repository")
        || low.contains("repository not found")
        || low.contains("not found")
    {
        SyncError::NotFound { url, detail }
    } else if low.contains("rejected") || low.contains("fetch first") {
        SyncError::Conflict {
            url,
            code: "rejected".into(),
            detail,
        }
    } else {
        SyncError::Network { url, detail }
    }
}

/// Clones the repository the first time; then fetches and puts what this
/// node committed and did not push yet on top (never a conflict: every
/// node adds only files of its own).
fn git_refresh(url: &str, work: &Path) -> Result<(), SyncError> {
    if !work.join(".git").is_dir() {
        if let Some(parent) = work.parent() {
            std::fs::create_dir_all(parent).map_err(|e| SyncError::Network {
                url: url.to_owned(),
                detail: e.to_string(),
            })?;
        }
        let _ = std::fs::remove_dir_all(work);
        let mut clone = git(None);
        clone.args(["clone", "--quiet", "--", url]).arg(work);
        run_git(url, clone)?;
        let mut head = git(Some(work));
        head.args(["symbolic-ref", "HEAD", "refs/heads/main"]);
        run_git(url, head)?;
    }
    let mut fetch = git(Some(work));
    fetch.args(["fetch", "--quiet", "origin"]);
    run_git(url, fetch)?;
    let mut has = git(Some(work));
    has.args([
        "rev-parse",
        "--verify",
        "--quiet",
        "refs/remotes/origin/main",
    ]);
    if has.output().map(|o| o.status.success()).unwrap_or(false) {
        let mut local = git(Some(work));
        local.args(["rev-parse", "--verify", "--quiet", "HEAD"]);
        let born = local.output().map(|o| o.status.success()).unwrap_or(false);
        let mut rebase = git(Some(work));
        if born {
            rebase.args(["rebase", "--quiet", "origin/main"]);
        } else {
            rebase.args(["reset", "--quiet", "--hard", "origin/main"]);
        }
        if let Err(e) = run_git(url, rebase) {
            let mut abort = git(Some(work));
            abort.args(["rebase", "--abort"]);
            let _ = abort.output();
            return Err(e);
        }
    }
    Ok(())
}

/// Commits what was written and pushes; a push refused because another
/// node pushed first is fetched, replayed and pushed again.
fn git_publish(url: &str, work: &Path, what: &str) -> Result<(), SyncError> {
    let mut add = git(Some(work));
    add.args(["add", "--all", "--", "."]);
    run_git(url, add)?;
    let mut staged = git(Some(work));
    staged.args(["diff", "--cached", "--quiet"]);
    let nothing = staged.status().map(|s| s.success()).unwrap_or(false);
    if !nothing {
        let mut commit = git(Some(work));
        commit.args(["commit", "--quiet", "--no-verify", "-m", what]);
        run_git(url, commit)?;
    }
    let mut last = None;
    for _ in 0..6 {
        let mut push = git(Some(work));
        push.args(["push", "--quiet", "origin", "HEAD:refs/heads/main"]);
        match run_git(url, push) {
            Ok(_) => return Ok(()),
            Err(e @ SyncError::Conflict { .. }) => {
                last = Some(e);
                git_refresh(url, work)?;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("a rejected push"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_open_only_where_they_were_written() {
        let keys = Keys::new(&[7; 32]);
        let batches = vec![RecordBatch::new(
            NodeId::from_bytes([1; 16]),
            StreamName::memory(),
            1,
            vec![selves_wire::native::Record::Void("x".into())],
        )];
        let sealed = seal(&keys, "g", "t", 3, &batches);
        assert_eq!(
            unseal(&keys, "g", "t", 3, sealed.clone())
                .ok()
                .map(|b| b.len()),
            Some(1)
        );
        // Another number, writer, group or key: refused.
        assert!(matches!(
            unseal(&keys, "g", "t", 4, sealed.clone()),
            Err(SegmentError::Damaged(_))
        ));
        assert!(matches!(
            unseal(&keys, "g", "u", 3, sealed.clone()),
            Err(SegmentError::Damaged(_))
        ));
        assert!(matches!(
            unseal(&keys, "h", "t", 3, sealed.clone()),
            Err(SegmentError::Damaged(_))
        ));
        assert!(matches!(
            unseal(&Keys::new(&[8; 32]), "g", "t", 3, sealed.clone()),
            Err(SegmentError::Damaged(_))
        ));
        // Cut short: still being copied. A flipped byte: damaged.
        for cut in [0, 5, 16, 30, sealed.len() - 1] {
            assert!(
                matches!(
                    unseal(&keys, "g", "t", 3, sealed[..cut].to_vec()),
                    Err(SegmentError::Incomplete)
                ),
                "{cut}"
            );
        }
        let mut flipped = sealed.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 1;
        assert!(matches!(
            unseal(&keys, "g", "t", 3, flipped),
            Err(SegmentError::Damaged(_))
        ));
        let mut longer = sealed;
        longer.push(0);
        assert!(matches!(
            unseal(&keys, "g", "t", 3, longer),
            Err(SegmentError::Damaged(_))
        ));
    }

    #[test]
    fn lines_round_trip_and_refuse_damage() {
        let line = RemoteLine {
            v: 1,
            name: "mem".into(),
            url: "folder:/tmp/x".into(),
            key: "ab".repeat(32),
            group: "cd".repeat(16),
        };
        let text = line.encode();
        assert!(text.starts_with(LINE_PREFIX));
        assert_eq!(RemoteLine::decode(&text).unwrap(), line);
        assert!(RemoteLine::decode("selves-pair:abc").is_err());
        assert!(RemoteLine::decode(&text[..text.len() - 5]).is_err());
    }
}
