//! The memory row: one conversation message plus its parent conversation's
//! metadata, exactly the Row shape of seeds/memex-sync.md with `origin`.
//!
//! Identity is `(source, conversation_id, msg_id)`; a row whose `msg_id` is
//! null is local-only and never synced. Versions of one row are totally
//! ordered by [`Row::version`] so every node picks the same winner.

use std::cmp::Ordering;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest `text` a row may carry. A longer message is refused at capture
/// with a clear error, so any row always fits one request of any peer.
pub const MAX_TEXT_BYTES: usize = 1 << 20;
/// Longest `metadata` a row may carry.
pub const MAX_METADATA_BYTES: usize = 256 << 10;
/// Longest identifier (`source`, `conversation_id`, `msg_id`, titles, paths).
pub const MAX_ID_BYTES: usize = 1024;
/// Longest short field (`role`, `sender`, `channel`, `origin`, `uuid`).
pub const MAX_SHORT_BYTES: usize = 256;
/// The range of `ts` (seconds): year 1 to the end of year 9999, so every
/// timestamp can be shown as a date.
pub const MIN_TS: i64 = -62_135_596_800;
pub const MAX_TS: i64 = 253_402_300_799;
/// The range of millisecond times (`edited_at`, a card's stamps): the
/// Unix epoch to the end of year 9999.
pub const MAX_MS: i64 = MAX_TS * 1000 + 999;

/// The `edited_at` of a forgotten row (`selves forget`): later than any
/// edit can be, so the tombstone wins over every version of the row, held
/// anywhere or written later by a node that was offline.
pub const FORGOTTEN_AT: i64 = MAX_MS;
/// What a forgotten row's conversation title becomes, when the title
/// carried its words.
pub const FORGOTTEN_TITLE: &str = "(forgotten)";

/// Checks a millisecond time against [`MAX_MS`] (and the epoch).
pub fn check_ms(field: &'static str, ms: i64) -> Result<(), RowError> {
    if (0..=MAX_MS).contains(&ms) {
        Ok(())
    } else {
        Err(RowError::OutOfRange {
            field,
            value: ms,
            range: "0 to 253402300799999 ms (1970 to the end of 9999)",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub source: String,
    pub conversation_id: String,
    #[serde(default)]
    pub msg_id: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
    pub role: String,
    #[serde(default)]
    pub sender: Option<String>,
    pub text: String,
    /// Source-original timestamp, seconds.
    pub ts: i64,
    /// Milliseconds; null if never edited.
    #[serde(default)]
    pub edited_at: Option<i64>,
    #[serde(default)]
    pub channel: Option<String>,
    /// A JSON document as a string. An object is accepted and kept as its
    /// JSON text, so a peer that sends structured metadata loses nothing.
    #[serde(default, deserialize_with = "string_or_json")]
    pub metadata: Option<String>,
    /// Provenance: the name of the node that captured the row. Null means
    /// unknown and is never fabricated.
    #[serde(default)]
    pub origin: Option<String>,
    #[serde(default)]
    pub conversation: Option<ConversationMeta>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationMeta {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub first_ts: Option<i64>,
    #[serde(default)]
    pub last_ts: Option<i64>,
    #[serde(default)]
    pub project_path: Option<String>,
    #[serde(default)]
    pub parent_conversation_id: Option<String>,
}

fn string_or_json<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

/// Why a row was refused. Refusal is per row: the rest of a batch goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes, more than the {max} a row may carry")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("not a valid row: {0}")]
    Malformed(String),
    #[error("{field} is {value}, outside {range}")]
    OutOfRange {
        field: &'static str,
        value: i64,
        range: &'static str,
    },
}

/// The 16-byte identity of a synced row, derived from
/// `(source, conversation_id, msg_id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowKey(pub [u8; 16]);

/// The 32-byte hash of one version of a row's message fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionHash(pub [u8; 32]);

/// What decides between two versions of one row: later `edited_at` wins
/// (never-edited is oldest), then `origin`, then the hash. A total order, so
/// last-writer-wins is a join and every node converges on the same winner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version<'a> {
    pub edited_at: Option<i64>,
    pub origin: Option<&'a str>,
    pub hash: VersionHash,
}

impl Row {
    /// Checks required fields and sizes. Does not require `msg_id`: a row
    /// without one is valid but local-only.
    pub fn validate(&self) -> Result<(), RowError> {
        non_empty("source", &self.source)?;
        non_empty("conversation_id", &self.conversation_id)?;
        non_empty("role", &self.role)?;
        if let Some(m) = &self.msg_id {
            non_empty("msg_id", m)?;
        }
        max_len("source", &self.source, MAX_ID_BYTES)?;
        max_len("conversation_id", &self.conversation_id, MAX_ID_BYTES)?;
        max_len_opt("msg_id", &self.msg_id, MAX_ID_BYTES)?;
        max_len("role", &self.role, MAX_SHORT_BYTES)?;
        max_len_opt("uuid", &self.uuid, MAX_SHORT_BYTES)?;
        max_len_opt("sender", &self.sender, MAX_SHORT_BYTES)?;
        max_len_opt("channel", &self.channel, MAX_SHORT_BYTES)?;
        max_len_opt("origin", &self.origin, MAX_SHORT_BYTES)?;
        max_len("text", &self.text, MAX_TEXT_BYTES)?;
        if !(MIN_TS..=MAX_TS).contains(&self.ts) {
            return Err(RowError::OutOfRange {
                field: "ts",
                value: self.ts,
                range: "-62135596800 to 253402300799 s (years 1 to 9999)",
            });
        }
        if let Some(ms) = self.edited_at {
            check_ms("edited_at", ms)?;
        }
        max_len_opt("metadata", &self.metadata, MAX_METADATA_BYTES)?;
        if let Some(c) = &self.conversation {
            max_len_opt("conversation.title", &c.title, MAX_ID_BYTES)?;
            max_len_opt("conversation.project_path", &c.project_path, MAX_ID_BYTES)?;
            max_len_opt(
                "conversation.parent_conversation_id",
                &c.parent_conversation_id,
                MAX_ID_BYTES,
            )?;
        }
        Ok(())
    }

    /// The identity key, or `None` for a local-only row (null `msg_id`).
    pub fn is_forgotten(&self) -> bool {
        self.edited_at == Some(FORGOTTEN_AT)
    }

    /// The tombstone of this row: its identity and place, no text, stamped
    /// [`FORGOTTEN_AT`]. Its conversation's title goes too when `title`
    /// (a title holding the forgotten words) is set: the tombstone's view
    /// of the conversation then wins over every other, for good.
    pub fn tombstone(&self, forgotten_by: &str, at_ms: i64, title: bool) -> Row {
        let conversation = self.conversation.clone().map(|c| {
            if title {
                ConversationMeta {
                    title: Some(FORGOTTEN_TITLE.to_owned()),
                    last_ts: Some(MAX_TS),
                    ..c
                }
            } else {
                c
            }
        });
        Row {
            text: String::new(),
            edited_at: Some(FORGOTTEN_AT),
            metadata: Some(
                serde_json::json!({"forgotten": {"by": forgotten_by, "at": at_ms}}).to_string(),
            ),
            sender: None,
            channel: None,
            conversation,
            ..self.clone()
        }
    }

    pub fn key(&self) -> Option<RowKey> {
        let msg_id = self.msg_id.as_deref()?;
        Some(row_key(&self.source, &self.conversation_id, msg_id))
    }

    /// The uuid a row without one gets: derived from its identity, so every
    /// node that receives the row from a uuid-less writer agrees on it.
    pub fn derived_uuid(&self) -> String {
        let seed = match self.key() {
            Some(k) => k.0,
            None => {
                let mut h = crate::domain_hasher!("selves local row uuid v1");
                field(&mut h, self.source.as_bytes());
                field(&mut h, self.conversation_id.as_bytes());
                field(&mut h, &self.ts.to_le_bytes());
                field(&mut h, self.text.as_bytes());
                let mut k = [0u8; 16];
                k.copy_from_slice(&h.finalize().as_bytes()[..16]);
                k
            }
        };
        format_uuid_v8(seed)
    }

    /// The hash of this version's message fields (not the conversation's).
    pub fn version_hash(&self) -> VersionHash {
        let mut h = crate::domain_hasher!("selves row version v1");
        field(&mut h, self.source.as_bytes());
        field(&mut h, self.conversation_id.as_bytes());
        opt(&mut h, self.msg_id.as_deref());
        opt(&mut h, self.uuid.as_deref());
        field(&mut h, self.role.as_bytes());
        opt(&mut h, self.sender.as_deref());
        field(&mut h, self.text.as_bytes());
        field(&mut h, &self.ts.to_le_bytes());
        opt_int(&mut h, self.edited_at);
        opt(&mut h, self.channel.as_deref());
        opt(&mut h, self.metadata.as_deref());
        opt(&mut h, self.origin.as_deref());
        VersionHash(*h.finalize().as_bytes())
    }

    pub fn version(&self) -> Version<'_> {
        Version {
            edited_at: self.edited_at,
            origin: self.origin.as_deref(),
            hash: self.version_hash(),
        }
    }
}

impl ConversationMeta {
    /// Joins two views of one conversation's metadata. Commutative,
    /// associative and idempotent, so every node ends with the same
    /// conversation whatever order its rows arrived in: earliest `first_ts`,
    /// latest `last_ts`, and the descriptive fields of the view with the
    /// greatest `(last_ts, title, project_path, parent_conversation_id)`.
    pub fn join(&self, other: &ConversationMeta) -> ConversationMeta {
        let first_ts = match (self.first_ts, other.first_ts) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let last_ts = self.last_ts.max(other.last_ts);
        let rank = |c: &ConversationMeta| {
            (
                c.last_ts,
                c.title.clone(),
                c.project_path.clone(),
                c.parent_conversation_id.clone(),
            )
        };
        let winner = match rank(self).cmp(&rank(other)) {
            Ordering::Less => other,
            _ => self,
        };
        ConversationMeta {
            title: winner.title.clone(),
            first_ts,
            last_ts,
            project_path: winner.project_path.clone(),
            parent_conversation_id: winner.parent_conversation_id.clone(),
        }
    }

    /// `*self = self.join(other)`, cloning only what changes. Returns
    /// whether anything did.
    pub fn join_from(&mut self, other: &ConversationMeta) -> bool {
        let joined = ConversationMeta {
            first_ts: match (self.first_ts, other.first_ts) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            last_ts: self.last_ts.max(other.last_ts),
            ..ConversationMeta::default()
        };
        let other_wins = (
            other.last_ts,
            &other.title,
            &other.project_path,
            &other.parent_conversation_id,
        ) > (
            self.last_ts,
            &self.title,
            &self.project_path,
            &self.parent_conversation_id,
        );
        let mut changed = joined.first_ts != self.first_ts || joined.last_ts != self.last_ts;
        if other_wins
            && (other.title != self.title
                || other.project_path != self.project_path
                || other.parent_conversation_id != self.parent_conversation_id)
        {
            self.title.clone_from(&other.title);
            self.project_path.clone_from(&other.project_path);
            self.parent_conversation_id
                .clone_from(&other.parent_conversation_id);
            changed = true;
        }
        self.first_ts = joined.first_ts;
        self.last_ts = joined.last_ts;
        changed
    }

    /// The hash of this metadata, for the order-independent digest.
    pub fn hash(&self, source: &str, conversation_id: &str) -> [u8; 32] {
        let mut h = crate::domain_hasher!("selves conversation v1");
        field(&mut h, source.as_bytes());
        field(&mut h, conversation_id.as_bytes());
        opt(&mut h, self.title.as_deref());
        opt_int(&mut h, self.first_ts);
        opt_int(&mut h, self.last_ts);
        opt(&mut h, self.project_path.as_deref());
        opt(&mut h, self.parent_conversation_id.as_deref());
        *h.finalize().as_bytes()
    }
}

/// The identity key of `(source, conversation_id, msg_id)`.
pub fn row_key(source: &str, conversation_id: &str, msg_id: &str) -> RowKey {
    let mut h = crate::domain_hasher!("selves row key v1");
    field(&mut h, source.as_bytes());
    field(&mut h, conversation_id.as_bytes());
    field(&mut h, msg_id.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&h.finalize().as_bytes()[..16]);
    RowKey(k)
}

/// A fresh random (v4) uuid from 16 random bytes.
pub fn format_uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format_uuid(&b)
}

fn format_uuid_v8(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    format_uuid(&b)
}

fn format_uuid(b: &[u8; 16]) -> String {
    let h = crate::hex(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&[1]);
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn opt(h: &mut blake3::Hasher, v: Option<&str>) {
    match v {
        Some(s) => field(h, s.as_bytes()),
        None => {
            h.update(&[0]);
        }
    }
}

fn opt_int(h: &mut blake3::Hasher, v: Option<i64>) {
    match v {
        Some(n) => field(h, &n.to_le_bytes()),
        None => {
            h.update(&[0]);
        }
    }
}

fn non_empty(field: &'static str, v: &str) -> Result<(), RowError> {
    if v.is_empty() {
        Err(RowError::Empty { field })
    } else {
        Ok(())
    }
}

fn max_len(field: &'static str, v: &str, max: usize) -> Result<(), RowError> {
    if v.len() > max {
        Err(RowError::TooLong {
            field,
            len: v.len(),
            max,
        })
    } else {
        Ok(())
    }
}

fn max_len_opt(field: &'static str, v: &Option<String>, max: usize) -> Result<(), RowError> {
    match v {
        Some(s) => max_len(field, s, max),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> Row {
        Row {
            source: "claude-code".into(),
            conversation_id: "claude-code-1".into(),
            msg_id: Some("m1".into()),
            uuid: Some("6f1c0b1e-1d2a-4c3b-8e4f-000000000001".into()),
            role: "user".into(),
            sender: Some("me".into()),
            text: "hello".into(),
            ts: 1716800000,
            edited_at: None,
            channel: None,
            metadata: Some("{}".into()),
            origin: Some("laptop".into()),
            conversation: Some(ConversationMeta {
                title: Some("greeting".into()),
                first_ts: Some(1716700000),
                last_ts: Some(1716800000),
                project_path: None,
                parent_conversation_id: None,
            }),
        }
    }

    #[test]
    fn row_json_shape_is_the_memex_shape_plus_origin() {
        let json = serde_json::to_string_pretty(&sample()).unwrap();
        expect_test::expect![[r#"
            {
              "source": "claude-code",
              "conversation_id": "claude-code-1",
              "msg_id": "m1",
              "uuid": "6f1c0b1e-1d2a-4c3b-8e4f-000000000001",
              "role": "user",
              "sender": "me",
              "text": "hello",
              "ts": 1716800000,
              "edited_at": null,
              "channel": null,
              "metadata": "{}",
              "origin": "laptop",
              "conversation": {
                "title": "greeting",
                "first_ts": 1716700000,
                "last_ts": 1716800000,
                "project_path": null,
                "parent_conversation_id": null
              }
            }"#]]
        .assert_eq(&json);
    }

    #[test]
    fn minimal_row_parses_with_defaults() {
        let row: Row = serde_json::from_str(
            r#"{"source":"s","conversation_id":"c","role":"user","text":"t","ts":1}"#,
        )
        .unwrap();
        assert_eq!(row.msg_id, None);
        assert_eq!(row.key(), None);
        assert!(row.validate().is_ok());
    }

    #[test]
    fn metadata_object_is_kept_as_json_text() {
        let row: Row = serde_json::from_str(
            r#"{"source":"s","conversation_id":"c","role":"user","text":"t","ts":1,"metadata":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(row.metadata.as_deref(), Some(r#"{"a":1}"#));
    }

    #[test]
    fn validation_names_the_field() {
        let mut r = sample();
        r.source.clear();
        assert_eq!(r.validate(), Err(RowError::Empty { field: "source" }));
        let mut r = sample();
        r.text = "x".repeat(MAX_TEXT_BYTES + 1);
        assert!(matches!(
            r.validate(),
            Err(RowError::TooLong { field: "text", .. })
        ));
    }

    #[test]
    fn key_ignores_content_and_hash_does_not() {
        let a = sample();
        let mut b = sample();
        b.text = "changed".into();
        assert_eq!(a.key(), b.key());
        assert_ne!(a.version_hash(), b.version_hash());
        // Field boundaries are unambiguous.
        let mut c = sample();
        c.source = "claude-codeclaude-code".into();
        c.conversation_id = "-1".into();
        assert_ne!(a.key(), c.key());
    }

    #[test]
    fn derived_uuid_is_stable_and_well_formed() {
        let a = sample();
        let u = a.derived_uuid();
        assert_eq!(u, sample().derived_uuid());
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "8");
    }

    #[test]
    fn newer_edit_wins_and_never_edited_is_oldest() {
        let a = sample();
        let mut b = sample();
        b.edited_at = Some(1);
        b.text = "edited".into();
        assert!(b.version() > a.version());
    }

    fn meta() -> impl Strategy<Value = ConversationMeta> {
        (
            proptest::option::of("[ab]{0,2}"),
            proptest::option::of(0i64..5),
            proptest::option::of(0i64..5),
            proptest::option::of("[ab]{0,2}"),
            proptest::option::of("[ab]{0,1}"),
        )
            .prop_map(|(title, first_ts, last_ts, project_path, parent)| {
                ConversationMeta {
                    title,
                    first_ts,
                    last_ts,
                    project_path,
                    parent_conversation_id: parent,
                }
            })
    }

    proptest! {
        #[test]
        fn conversation_join_is_a_semilattice(a in meta(), b in meta(), c in meta()) {
            prop_assert_eq!(a.join(&b), b.join(&a));
            prop_assert_eq!(a.join(&b).join(&c), a.join(&b.join(&c)));
            prop_assert_eq!(a.join(&a), a.clone());
        }

        #[test]
        fn join_from_is_join_in_place(a in meta(), b in meta()) {
            let mut m = a.clone();
            let changed = m.join_from(&b);
            prop_assert_eq!(&m, &a.join(&b));
            prop_assert_eq!(changed, m != a);
        }
    }
}
