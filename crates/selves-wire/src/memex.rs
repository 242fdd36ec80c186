//! memex v12 wire compatibility: the endpoints, bodies and pair blob of
//! seeds/memex-sync.md §Wire protocol, as written there. Fields selves adds
//! (`skipped`, `refused`, `origin` on rows) are additive: nothing a memex
//! client relies on changes.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{CertFingerprint, Row, Token, UnixSeconds};

/// The schema version both sides must agree on.
pub const SCHEMA_VERSION: u32 = 12;
/// Rows a push may carry.
pub const MAX_PUSH_ROWS: usize = 1000;
/// Largest push body, after decompression.
pub const MAX_BODY_BYTES: u64 = 2 * 1024 * 1024;
/// Rows a pull returns unless `limit` says otherwise, and the most it may.
pub const DEFAULT_PULL_LIMIT: u32 = 500;
pub const MAX_PULL_LIMIT: u32 = 1000;
/// Requests a token may make per minute (the spec's suggested limits).
pub const PUSHES_PER_MINUTE: u32 = 10;
pub const PULLS_PER_MINUTE: u32 = 60;

pub mod path {
    pub const HEALTH: &str = "/sync/health";
    pub const PUSH: &str = "/sync/push";
    pub const PULL: &str = "/sync/pull";
}

/// `GET /sync/health`. `row_count` and `last_id` are given only to a caller
/// with a valid token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub version: String,
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_id: Option<i64>,
}

/// `POST /sync/push`, rows unparsed so each is refused on its own.
#[derive(Debug, Deserialize)]
pub struct RawPush<'a> {
    #[serde(borrow)]
    pub rows: Vec<&'a RawValue>,
    /// Additive: a client may state its schema version; a mismatch is 409.
    #[serde(default)]
    pub schema_version: Option<u32>,
}

/// `POST /sync/push`, as a client sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Push {
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResponse {
    /// Rows newly stored (or stored as a newer version).
    pub accepted: u64,
    /// Rows already held.
    pub deduplicated: u64,
    /// The local id (arrival number) of the newest row held.
    pub last_id: i64,
    /// Additive: rows refused (no `msg_id`, a missing field, too large).
    #[serde(default)]
    pub skipped: u64,
    /// Additive: which rows were refused and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Refused>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Position in the pushed `rows`.
    pub index: usize,
    pub reason: String,
}

/// `GET /sync/pull?since=&limit=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullResponse {
    pub rows: Vec<Row>,
    /// The id (arrival number) of the last row in this batch; `since` when
    /// the batch is empty.
    pub next_cursor: i64,
    pub has_more: bool,
    pub server_now: i64,
}

/// A pull response with rows unparsed, for per-row refusal on the client.
#[derive(Debug, Deserialize)]
pub struct RawPullResponse<'a> {
    #[serde(borrow)]
    pub rows: Vec<&'a RawValue>,
    pub next_cursor: i64,
    pub has_more: bool,
}

/// Parses one pushed or pulled row; `Err` says why it is refused. A row
/// without `msg_id` is refused: the spec keeps such rows local.
pub fn parse_row(json: &str) -> Result<Row, String> {
    let row: Row = serde_json::from_str(json).map_err(|e| format!("not a valid row: {e}"))?;
    if row.msg_id.is_none() {
        return Err("row has no msg_id: ephemeral rows are not synced".into());
    }
    row.validate().map_err(|e| e.to_string())?;
    Ok(row)
}

pub const PAIR_PREFIX: &str = "memex-pair:";
pub const PAIR_VERSION: u64 = 1;
/// memex's default port.
pub const DEFAULT_PORT: u16 = 8766;

/// The `memex-pair:` blob: base64url (no padding) of
/// `{v, host, port, cert_fp, token, exp}`, `exp` in Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairBlob {
    pub v: u64,
    pub host: String,
    pub port: u16,
    /// Null for transports that already authenticate (an SSH tunnel).
    pub cert_fp: Option<CertFingerprint>,
    pub token: Token,
    pub exp: UnixSeconds,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error("this is not a memex pair blob: copy the whole line that starts with `memex-pair:`")]
    NotABlob,
    #[error(
        "this memex pair blob is version {0}; selves understands version {PAIR_VERSION}: upgrade the older side"
    )]
    UnknownVersion(u64),
    #[error("this memex pair blob is missing {0}")]
    Missing(&'static str),
    #[error(
        "this memex pair blob expired {ago_secs} s ago: mint a fresh one (`memex-sync sync-server invite`, or `selves invite --format memex`)"
    )]
    Expired { ago_secs: i64 },
}

impl PairBlob {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("pair blob serialises");
        format!(
            "{PAIR_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Parses a pasted blob, accepting padded or unpadded base64url and a
    /// port given as a string, as memex does.
    pub fn decode(text: &str, now: UnixSeconds) -> Result<PairBlob, PairError> {
        let body = text
            .trim()
            .strip_prefix(PAIR_PREFIX)
            .ok_or(PairError::NotABlob)?
            .trim();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body.trim_end_matches('='))
            .map_err(|_| PairError::NotABlob)?;
        let v: serde_json::Value =
            serde_json::from_slice(&json).map_err(|_| PairError::NotABlob)?;
        let version = v.get("v").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != PAIR_VERSION {
            return Err(PairError::UnknownVersion(version));
        }
        let host = v
            .get("host")
            .and_then(|h| h.as_str())
            .filter(|h| !h.is_empty())
            .ok_or(PairError::Missing("host"))?
            .to_owned();
        let token = v
            .get("token")
            .and_then(|t| t.as_str())
            .ok_or(PairError::Missing("token"))?
            .parse()
            .map_err(|_| PairError::Missing("a hex token"))?;
        let port = match v.get("port") {
            Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_PORT);
        let cert_fp = match v.get("cert_fp") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(
                s.parse()
                    .map_err(|_| PairError::Missing("a valid cert_fp"))?,
            ),
            Some(_) => return Err(PairError::Missing("a valid cert_fp")),
        };
        let exp = v.get("exp").and_then(|e| e.as_i64()).unwrap_or(0);
        if exp != 0 && now > exp {
            return Err(PairError::Expired {
                ago_secs: now - exp,
            });
        }
        Ok(PairBlob {
            v: version,
            host,
            port,
            cert_fp,
            token,
            exp,
        })
    }

    pub fn url(&self) -> String {
        crate::pair::https_url(&self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_push_and_pull_json() {
        let full = Health {
            version: "0.1.0".into(),
            schema_version: 12,
            row_count: Some(3),
            last_id: Some(7),
        };
        expect_test::expect![[
            r#"{"version":"0.1.0","schema_version":12,"row_count":3,"last_id":7}"#
        ]]
        .assert_eq(&serde_json::to_string(&full).unwrap());
        let anonymous = Health {
            row_count: None,
            last_id: None,
            ..full
        };
        expect_test::expect![[r#"{"version":"0.1.0","schema_version":12}"#]]
            .assert_eq(&serde_json::to_string(&anonymous).unwrap());

        let push = PushResponse {
            accepted: 2,
            deduplicated: 1,
            last_id: 9,
            skipped: 1,
            refused: vec![Refused {
                index: 3,
                reason: "row has no msg_id: ephemeral rows are not synced".into(),
            }],
        };
        expect_test::expect![[r#"{"accepted":2,"deduplicated":1,"last_id":9,"skipped":1,"refused":[{"index":3,"reason":"row has no msg_id: ephemeral rows are not synced"}]}"#]]
            .assert_eq(&serde_json::to_string(&push).unwrap());

        let pull = PullResponse {
            rows: vec![],
            next_cursor: 0,
            has_more: false,
            server_now: 1716800000000,
        };
        expect_test::expect![[
            r#"{"rows":[],"next_cursor":0,"has_more":false,"server_now":1716800000000}"#
        ]]
        .assert_eq(&serde_json::to_string(&pull).unwrap());
    }

    #[test]
    fn push_request_json() {
        let row: Row = serde_json::from_str(
            r#"{"source":"claude-code","conversation_id":"c1","msg_id":"m1","role":"user","text":"hi","ts":1716800000}"#,
        )
        .unwrap();
        let push = Push { rows: vec![row] };
        expect_test::expect![[r#"{"rows":[{"source":"claude-code","conversation_id":"c1","msg_id":"m1","uuid":null,"role":"user","sender":null,"text":"hi","ts":1716800000,"edited_at":null,"channel":null,"metadata":null,"origin":null,"conversation":null}]}"#]]
            .assert_eq(&serde_json::to_string(&push).unwrap());
    }

    #[test]
    fn rows_without_msg_id_are_refused() {
        assert!(parse_row(r#"{"source":"s","conversation_id":"c","msg_id":"1","role":"user","text":"t","ts":1}"#).is_ok());
        let err =
            parse_row(r#"{"source":"s","conversation_id":"c","role":"user","text":"t","ts":1}"#)
                .unwrap_err();
        assert!(err.contains("msg_id"), "{err}");
        assert!(
            parse_row(r#"{"source":"s","conversation_id":"c","msg_id":"1","role":"user","ts":1}"#)
                .is_err()
        );
    }

    #[test]
    fn pair_blob_round_trips_and_reads_memex_variants() {
        let blob = PairBlob {
            v: 1,
            host: "127.0.0.1".into(),
            port: 8766,
            cert_fp: Some(CertFingerprint::of_der(b"c")),
            token: Token::from_bytes([1; 32]),
            exp: 2000,
        };
        let text = blob.encode();
        assert!(text.starts_with("memex-pair:"));
        assert!(!text.contains('='));
        assert_eq!(PairBlob::decode(&text, 1000).unwrap(), blob);
        assert_eq!(
            PairBlob::decode(&text, 2001),
            Err(PairError::Expired { ago_secs: 1 })
        );

        // As memex writes it: cert_fp may be null, port may be missing.
        let json = format!(
            r#"{{"v":1,"host":"vps","cert_fp":null,"token":"{}","exp":0}}"#,
            "ab".repeat(32)
        );
        let text = format!(
            "memex-pair:{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        );
        let b = PairBlob::decode(&text, 5).unwrap();
        assert_eq!((b.port, b.cert_fp), (8766, None));
        assert_eq!(b.url(), "https://vps:8766");

        let json = r#"{"v":2,"host":"vps","token":"x"}"#;
        let text = format!(
            "memex-pair:{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        );
        assert_eq!(
            PairBlob::decode(&text, 0),
            Err(PairError::UnknownVersion(2))
        );
        assert_eq!(
            PairBlob::decode("selves-pair:abc", 0),
            Err(PairError::NotABlob)
        );
    }
}
