//! The native sync protocol: exchange heads, then move contiguous record
//! ranges both ways. Documented for humans in docs/protocol.md; the
//! snapshot tests below pin the JSON.
//!
//! A record is numbered per (node, stream) from 1 with no gaps; a head is the
//! highest seq a node holds for one (node, stream). Two nodes are in sync
//! when their heads agree; `verify` then compares a digest of the state.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::sign::{Abandon, Digest, PublicKey, SeqSig, Signature};
use crate::{Name, NodeId, Row, StreamName};

/// The protocol this build speaks. A different `major` refuses to sync.
/// 1.1 added the `nodes` stream (node cards) and `/v1/marker`; 2.0 signed
/// logs (see [`crate::sign`]): batches carry their author's key and
/// signatures, records their digests when they carry no content, and
/// callers prove they hold their key.
pub const PROTOCOL: ProtocolVersion = ProtocolVersion { major: 2, minor: 0 };

/// The header that carries a caller's proof of its key on every request
/// after hello: `<at_ms>.<signature hex>` over
/// [`crate::sign::proof_message`].
pub const PROOF_HEADER: &str = "selves-proof";

pub mod path {
    pub const HELLO: &str = "/v1/hello";
    pub const PULL: &str = "/v1/pull";
    pub const PUSH: &str = "/v1/push";
    pub const DIGEST: &str = "/v1/digest";
    /// `GET /v1/changes?after=N`: a long poll (see [`super::Changes`]).
    pub const CHANGES: &str = "/v1/changes";
    /// `POST /v1/marker`: the join self-test (see [`super::MarkerRequest`]).
    pub const MARKER: &str = "/v1/marker";
}

/// `POST /v1/marker`: the join self-test. The server checks that it holds
/// the caller's card with marker `seen` (the caller pushed it just before),
/// and only then writes its own card with marker `write`, durably, for the
/// caller to pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerRequest {
    /// The caller's node id.
    pub node: NodeId,
    pub seen: String,
    pub write: String,
}

/// The answer to `POST /v1/marker`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerResponse {
    /// Whether the server holds the caller's card with marker `seen`.
    pub seen: bool,
    /// The seq of the server's card carrying marker `write` in its `nodes`
    /// stream (0 when `seen` is false and nothing was written).
    pub seq: u64,
}

/// How long a `/v1/changes` request waits for a change before answering
/// with the same version.
pub const CHANGES_WAIT_SECS: u64 = 25;

/// The answer to `GET /v1/changes?after=N`: the server's log version (the
/// sum of its heads; it grows whenever the server stores a record). The
/// server answers as soon as it differs from `after`, or after
/// [`CHANGES_WAIT_SECS`] with the same number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolVersion {
    pub major: u32,
    pub minor: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: Name,
}

/// `POST /v1/hello`: the caller says who it is and which protocol it
/// speaks; the server answers with [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloRequest {
    pub protocol: ProtocolVersion,
    pub node: NodeInfo,
    /// The caller's public key: its id derives from it (or, for a node
    /// made before keys, is bound to it).
    pub key: PublicKey,
    /// The server the caller means to talk to; the proof is for it alone.
    /// A server that is another node answers 409 `wrong_server` with its
    /// id as the detail.
    pub to: NodeId,
    /// When the proof was made (ms, the caller's clock).
    pub at: i64,
    /// The caller's signature over [`crate::sign::proof_message`] for this
    /// server: the token alone is not enough.
    pub proof: Signature,
    /// Branches withdrawn by their authors that the caller knows of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub abandoned: Vec<Abandon>,
}

/// The answer to `POST /v1/hello`: who the server is, what it holds, what
/// it accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: ProtocolVersion,
    /// e.g. "selves 0.1.0", for messages only.
    pub software: String,
    pub node: NodeInfo,
    /// The server's public key.
    pub key: PublicKey,
    /// The name the server knows the caller by (the peer its token was
    /// minted for).
    pub you: Name,
    /// Streams the server carries; records of other streams are refused.
    pub streams: Vec<StreamName>,
    pub heads: Vec<Head>,
    /// Names of the nodes that appear in `heads`, where the server knows them.
    pub nodes: Vec<NodeInfo>,
    pub limits: Limits,
    pub server_now_ms: i64,
    /// Branches withdrawn by their authors that the server knows of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub abandoned: Vec<Abandon>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Head {
    pub node: NodeId,
    pub stream: StreamName,
    pub seq: u64,
    /// The log's chain at `seq` (see [`crate::sign`]): two nodes whose
    /// heads agree on the seq but not the chain hold two branches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Digest>,
}

impl Head {
    pub fn new(node: NodeId, stream: StreamName, seq: u64) -> Head {
        Head {
            node,
            stream,
            seq,
            chain: None,
        }
    }
}

/// What the server accepts; the client sizes its batches to these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_push_records: u32,
    pub max_pull_records: u32,
    pub max_pull_bytes: u64,
}

/// `POST /v1/pull`: records after `after` for each range, in order, until a
/// limit is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullRequest {
    pub ranges: Vec<Range>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_records: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub node: NodeId,
    pub stream: StreamName,
    pub after: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullResponse {
    pub batches: Vec<RecordBatch>,
    /// True when a limit cut the answer short: ask again from where it ended.
    pub more: bool,
}

/// Contiguous records `start, start+1, …` of one (node, stream), with
/// the proof that `node` wrote them: its key, and its signatures over the
/// chain at some seqs of the batch, the last one always among them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordBatch {
    pub node: NodeId,
    pub stream: StreamName,
    pub start: u64,
    pub records: Vec<Record>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PublicKey>,
    /// The chain before `start`, as the sender holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<Digest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sigs: Vec<SeqSig>,
    /// Records up to this seq are carried from before signing existed:
    /// their digest is [`Digest::LEGACY`] whatever they carry.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub legacy: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RecordBatch {
    /// A batch of `records` from `start` with no proof attached yet.
    pub fn new(node: NodeId, stream: StreamName, start: u64, records: Vec<Record>) -> Self {
        RecordBatch {
            node,
            stream,
            start,
            records,
            key: None,
            prev: None,
            sigs: Vec::new(),
            legacy: 0,
        }
    }

    /// The seq of the last record (`start - 1` when empty).
    pub fn end(&self) -> u64 {
        self.start + self.records.len() as u64 - 1
    }
}

/// One record's content. `void` keeps the numbering of a record that was
/// refused (say, an invalid row from a buggy peer): it holds its place and
/// carries nothing, so a bad record never blocks the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Record {
    /// A memory row (stream `memory`).
    Row(Box<Row>),
    /// A file version (stream `share:<name>`).
    File(Box<crate::file::FileVersion>),
    /// A node card (stream `nodes`).
    Node(Box<crate::card::NodeCard>),
    /// A record carried from before signing that was refused: it holds
    /// its place and carries nothing.
    Void(String),
    /// A signed record whose content was refused (an invalid row from a
    /// buggy peer): its digest keeps the chain whole.
    Refused { why: String, d: Digest },
    /// A record whose content is not sent because a newer version of the
    /// same row, file or card superseded it (and travels with the record
    /// that wrote it): only its digest, to keep the chain whole.
    Omitted(Digest),
    /// A memory record superseded by a newer version of its row: its
    /// digest, and the row's conversation as it stands now. Conversation
    /// metadata is a join over every record, so it travels even when the
    /// row does not (it is not part of what the author signed; docs/protocol.md).
    Superseded {
        d: Digest,
        source: String,
        conversation_id: String,
        conversation: crate::ConversationMeta,
    },
}

/// A [`RecordBatch`] whose records are not parsed yet, so that one bad
/// record is refused alone instead of failing the whole body.
#[derive(Debug, Deserialize)]
pub struct RawRecordBatch<'a> {
    pub node: NodeId,
    pub stream: StreamName,
    pub start: u64,
    #[serde(borrow)]
    pub records: Vec<&'a RawValue>,
    #[serde(default)]
    pub key: Option<PublicKey>,
    #[serde(default)]
    pub prev: Option<Digest>,
    #[serde(default)]
    pub sigs: Vec<SeqSig>,
    #[serde(default)]
    pub legacy: u64,
}

impl RawRecordBatch<'_> {
    /// Parses each record on its own; an unparsable one becomes `Void` with
    /// the reason.
    pub fn parse(&self) -> Vec<Record> {
        self.records
            .iter()
            .map(|raw| parse_record(raw.get()))
            .collect()
    }
}

/// Parses the batches of a push request or pull response. A body that
/// parses whole (the usual case) is parsed once and checked record by
/// record; one that does not is parsed again record by record, so only the
/// bad records are refused (as `Void`) and the rest go on. Fails only when
/// the body itself is not the expected JSON.
pub fn parse_batches(body: &[u8]) -> Result<(Vec<RecordBatch>, bool), serde_json::Error> {
    #[derive(Deserialize)]
    struct Typed {
        batches: Vec<RecordBatch>,
        #[serde(default)]
        more: bool,
    }
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        batches: Vec<RawRecordBatch<'a>>,
        #[serde(default)]
        more: bool,
    }
    if let Ok(typed) = serde_json::from_slice::<Typed>(body) {
        let batches = typed
            .batches
            .into_iter()
            .map(|mut b| {
                for record in &mut b.records {
                    check_record(record);
                }
                b
            })
            .collect();
        return Ok((batches, typed.more));
    }
    let raw: Raw = serde_json::from_slice(body)?;
    let batches = raw
        .batches
        .iter()
        .map(|b| RecordBatch {
            node: b.node.clone(),
            stream: b.stream.clone(),
            start: b.start,
            records: b.parse(),
            key: b.key,
            prev: b.prev,
            sigs: b.sigs.clone(),
            legacy: b.legacy,
        })
        .collect();
    Ok((batches, raw.more))
}

/// Turns a record whose row is invalid or local-only into a `Void`.
fn check_record(record: &mut Record) {
    let why = match record {
        Record::Row(row) => match row.validate() {
            Err(e) => e.to_string(),
            Ok(()) if row.msg_id.is_none() => LOCAL_ONLY.to_owned(),
            Ok(()) => return,
        },
        Record::File(file) => match file.check() {
            Err(e) => e.to_owned(),
            Ok(()) => return,
        },
        Record::Node(card) => match card.check() {
            Err(e) => e,
            Ok(()) => return,
        },
        Record::Superseded {
            d,
            source,
            conversation_id,
            conversation,
        } => {
            let long = |s: &Option<String>| {
                s.as_ref()
                    .is_some_and(|s| s.len() > crate::row::MAX_ID_BYTES)
            };
            if source.is_empty()
                || conversation_id.is_empty()
                || source.len() > crate::row::MAX_ID_BYTES
                || conversation_id.len() > crate::row::MAX_ID_BYTES
                || long(&conversation.title)
                || long(&conversation.project_path)
                || long(&conversation.parent_conversation_id)
            {
                *record = Record::Omitted(*d);
            }
            return;
        }
        Record::Void(_) | Record::Refused { .. } | Record::Omitted(_) => return,
    };
    // The digest is of what was sent, so the chain stays checkable.
    *record = match crate::sign::record_digest(record) {
        Some(d) => Record::Refused { why, d },
        None => Record::Void(why),
    };
}

const LOCAL_ONLY: &str = "row has no msg_id: local-only rows never sync";

/// Parses one record, turning any failure into a `Void` with the reason.
pub fn parse_record(json: &str) -> Record {
    match serde_json::from_str::<Record>(json) {
        Ok(mut record) => {
            check_record(&mut record);
            record
        }
        Err(e) => Record::Void(format!("not a valid record: {e}")),
    }
}

/// `POST /v1/push`: records the server lacks. Applied in one transaction and
/// answered only after it is durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRequest {
    pub batches: Vec<RecordBatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushResponse {
    /// Records newly stored.
    pub accepted: u64,
    /// Records the server already held.
    pub duplicates: u64,
    /// Records stored as void because their content was refused.
    pub voided: Vec<Voided>,
    /// Batches refused whole: not provably written by their node
    /// (`forged`), or a second signed branch of a log held (`fork`). The
    /// reason starts with the kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Voided>,
    /// The server's heads for the pushed (node, stream)s, after the commit.
    pub heads: Vec<Head>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voided {
    pub node: NodeId,
    pub stream: StreamName,
    pub seq: u64,
    pub reason: String,
}

/// `GET /v1/digest`: heads plus an order-independent digest of the
/// materialised memory, for `selves verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestResponse {
    pub node: NodeInfo,
    pub heads: Vec<Head>,
    pub memory: MemoryDigest,
    /// The state of each share the node carries (absent from nodes older
    /// than this field: then shares are compared by their logs alone).
    #[serde(default)]
    pub shares: Vec<ShareDigest>,
}

/// What one share holds now: the live files of its one tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareDigest {
    /// The share's stream (`share:<name>`).
    pub stream: StreamName,
    /// `two-way`, `send-only` or `receive-only`.
    pub mode: String,
    /// `flat` or `per-origin`.
    pub layout: String,
    /// Live files at their own paths (the flat tree).
    pub files: u64,
    /// Hex of the XOR of the hash of every live file's path and content.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryDigest {
    /// Synced rows (local-only rows are not counted).
    pub rows: u64,
    pub conversations: u64,
    /// Hex of the XOR of every synced row's and conversation's hash.
    pub digest: String,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable code: `unauthorized`, `bad_request`, `payload_too_large`,
    /// `rate_limited`, `gap`, `wrong_server`, `same_node`, `unknown_stream`,
    /// `schema_mismatch`, `internal`.
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; 16])
    }

    #[test]
    fn hello_json() {
        let hello = Hello {
            protocol: PROTOCOL,
            software: "selves 0.1.0".into(),
            node: NodeInfo {
                id: node(1),
                name: "vps".parse().unwrap(),
            },
            key: crate::sign::NodeKey::from_seed([1; 32]).public(),
            you: "laptop".parse().unwrap(),
            streams: vec![StreamName::memory()],
            heads: vec![Head::new(node(1), StreamName::memory(), 42)],
            nodes: vec![NodeInfo {
                id: node(1),
                name: "vps".parse().unwrap(),
            }],
            limits: Limits {
                max_body_bytes: 8 << 20,
                max_push_records: 5000,
                max_pull_records: 5000,
                max_pull_bytes: 4 << 20,
            },
            server_now_ms: 1716800000000,
            abandoned: Vec::new(),
        };
        expect_test::expect![[r#"{"protocol":{"major":2,"minor":0},"software":"selves 0.1.0","node":{"id":"01010101010101010101010101010101","name":"vps"},"key":"8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c","you":"laptop","streams":["memory"],"heads":[{"node":"01010101010101010101010101010101","stream":"memory","seq":42}],"nodes":[{"id":"01010101010101010101010101010101","name":"vps"}],"limits":{"max_body_bytes":8388608,"max_push_records":5000,"max_pull_records":5000,"max_pull_bytes":4194304},"server_now_ms":1716800000000}"#]]
        .assert_eq(&serde_json::to_string(&hello).unwrap());
    }

    #[test]
    fn pull_and_push_json() {
        let req = PullRequest {
            ranges: vec![Range {
                node: node(2),
                stream: StreamName::memory(),
                after: 10,
            }],
            max_records: Some(1000),
            max_bytes: None,
        };
        expect_test::expect![[r#"{"ranges":[{"node":"02020202020202020202020202020202","stream":"memory","after":10}],"max_records":1000}"#]]
        .assert_eq(&serde_json::to_string(&req).unwrap());

        let resp = PushResponse {
            accepted: 1,
            duplicates: 0,
            voided: vec![Voided {
                node: node(2),
                stream: StreamName::memory(),
                seq: 12,
                reason: "source is empty".into(),
            }],
            refused: Vec::new(),
            heads: vec![Head::new(node(2), StreamName::memory(), 12)],
        };
        expect_test::expect![[r#"{"accepted":1,"duplicates":0,"voided":[{"node":"02020202020202020202020202020202","stream":"memory","seq":12,"reason":"source is empty"}],"heads":[{"node":"02020202020202020202020202020202","stream":"memory","seq":12}]}"#]]
        .assert_eq(&serde_json::to_string(&resp).unwrap());
    }

    #[test]
    fn record_json_and_per_record_parsing() {
        let batch = format!(
            r#"{{"node":"{}","stream":"memory","start":3,"records":[
                {{"row":{{"source":"s","conversation_id":"c","msg_id":"1","role":"user","text":"ok","ts":1}}}},
                {{"row":{{"source":"s","conversation_id":"c","msg_id":"2","role":"user","text":"bad \ud800","ts":1}}}},
                {{"row":{{"source":"","conversation_id":"c","msg_id":"3","role":"user","text":"x","ts":1}}}},
                {{"row":{{"source":"s","conversation_id":"c","role":"user","text":"no id","ts":1}}}},
                {{"void":"refused upstream"}},
                {{"row":{{"source":"s","conversation_id":"c","msg_id":"6","role":"user","text":"nul \u0000 kept","ts":1}}}}
            ]}}"#,
            node(3)
        );
        let raw: RawRecordBatch = serde_json::from_str(&batch).unwrap();
        let parsed = raw.parse();
        assert_eq!(parsed.len(), 6);
        assert!(matches!(&parsed[0], Record::Row(r) if r.text == "ok"));
        assert!(
            matches!(&parsed[1], Record::Void(why) if why.contains("escape")),
            "{:?}",
            parsed[1]
        );
        // A record that parses but fails validation keeps its digest, so
        // the chain through it can still be checked.
        assert!(matches!(&parsed[2], Record::Refused { why, .. } if why == "source is empty"));
        assert!(matches!(&parsed[3], Record::Refused { why, .. } if why.contains("msg_id")));
        assert!(matches!(&parsed[4], Record::Void(why) if why == "refused upstream"));
        assert!(matches!(&parsed[5], Record::Row(r) if r.text == "nul \0 kept"));

        // The whole-body path gives the same verdicts: a body with a record
        // that fails only validation parses typed; one with a broken escape
        // falls back to per-record parsing.
        let body = format!(r#"{{"batches": [{batch}]}}"#);
        let (batches, more) = parse_batches(body.as_bytes()).unwrap();
        assert!(!more);
        assert_eq!(batches[0].records, parsed);
        let valid_only = body.replace(r"bad \ud800", "bad");
        let (batches, _) = parse_batches(valid_only.as_bytes()).unwrap();
        assert!(matches!(&batches[0].records[1], Record::Row(r) if r.text == "bad"));
        assert!(
            matches!(&batches[0].records[3], Record::Refused { why, .. } if why.contains("msg_id"))
        );
        assert!(parse_batches(b"{\"batches\": 1}").is_err());

        let void = serde_json::to_string(&Record::Void("why".into())).unwrap();
        assert_eq!(void, r#"{"void":"why"}"#);
    }
}
