//! The `selves-pair:` and `selves-join:` blobs: everything a spoke needs to
//! reach and trust a hub, in one pasteable line (base64url of JSON, with a
//! check against damage and an expiry). A join blob is a pair blob that
//! `selves join` takes whole: it may also name an SSH target to tunnel
//! through.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{CertFingerprint, Name, NodeId, Token, UnixSeconds};

pub const PAIR_PREFIX: &str = "selves-pair:";
pub const JOIN_PREFIX: &str = "selves-join:";
pub const PAIR_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairBlob {
    pub v: u32,
    pub host: String,
    pub port: u16,
    pub cert_fp: CertFingerprint,
    pub token: Token,
    /// Expiry, Unix seconds. The hub also refuses the token if it was not
    /// used before then, so editing this field gains nothing.
    pub exp: UnixSeconds,
    /// The hub's node name: the default alias on the spoke.
    pub node: Name,
    pub node_id: NodeId,
    /// The name the hub knows this spoke by.
    pub peer: Name,
    /// `user@host[:port]` to reach the hub through an SSH tunnel to
    /// `127.0.0.1:port` on that host (join blobs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub check: String,
}

/// Which line a blob came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    Pair,
    Join,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error(
        "this is not a selves pair or join blob: copy the whole line that starts with `selves-pair:` or `selves-join:`"
    )]
    NotABlob,
    #[error(
        "this pair blob is version {0}, and this selves understands version {PAIR_VERSION}: upgrade selves here, or ask the hub for a blob from the same version"
    )]
    UnknownVersion(u64),
    #[error(
        "this pair blob was changed or damaged after it was made (its check does not match): copy it again whole, or ask the hub for a new one"
    )]
    Damaged,
    #[error(
        "this blob expired {ago_secs} s ago: ask the hub for a new one (`selves invite --peer NAME` there, with --join for a join blob)"
    )]
    Expired { ago_secs: i64 },
}

impl PairBlob {
    /// The blob as one `selves-pair:` line, with its check filled in.
    pub fn encode(&self) -> String {
        self.encode_as(BlobKind::Pair)
    }

    /// The blob as one line of the given kind, with its check filled in.
    pub fn encode_as(&self, kind: BlobKind) -> String {
        let mut blob = self.clone();
        blob.check = blob.compute_check();
        let json = serde_json::to_vec(&blob).expect("pair blob serialises");
        let prefix = match kind {
            BlobKind::Pair => PAIR_PREFIX,
            BlobKind::Join => JOIN_PREFIX,
        };
        format!(
            "{prefix}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Parses and checks a pasted `selves-pair:` or `selves-join:` line
    /// (surrounding whitespace is ignored), refusing it once expired.
    pub fn decode(text: &str, now: UnixSeconds) -> Result<PairBlob, PairError> {
        let (blob, _) = PairBlob::parse(text)?;
        blob.unexpired(now)?;
        Ok(blob)
    }

    /// Refuses the blob once its expiry has passed.
    pub fn unexpired(&self, now: UnixSeconds) -> Result<(), PairError> {
        if self.exp <= now {
            return Err(PairError::Expired {
                ago_secs: now - self.exp,
            });
        }
        Ok(())
    }

    /// Parses and checks a pasted line without looking at its expiry.
    pub fn parse(text: &str) -> Result<(PairBlob, BlobKind), PairError> {
        let text = text.trim();
        let (kind, body) = match text.strip_prefix(PAIR_PREFIX) {
            Some(body) => (BlobKind::Pair, body),
            None => (
                BlobKind::Join,
                text.strip_prefix(JOIN_PREFIX).ok_or(PairError::NotABlob)?,
            ),
        };
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body.trim_end_matches('='))
            .map_err(|_| PairError::NotABlob)?;
        let value: serde_json::Value =
            serde_json::from_slice(&json).map_err(|_| PairError::NotABlob)?;
        let v = value
            .get("v")
            .and_then(|v| v.as_u64())
            .ok_or(PairError::NotABlob)?;
        if v != u64::from(PAIR_VERSION) {
            return Err(PairError::UnknownVersion(v));
        }
        // A blob whose fields no longer parse was edited or damaged.
        let blob: PairBlob = serde_json::from_value(value).map_err(|_| PairError::Damaged)?;
        if blob.check != blob.compute_check() {
            return Err(PairError::Damaged);
        }
        Ok((blob, kind))
    }

    /// `https://host:port`, bracketing an IPv6 host.
    pub fn url(&self) -> String {
        https_url(&self.host, self.port)
    }

    fn compute_check(&self) -> String {
        let mut unchecked = self.clone();
        unchecked.check.clear();
        let json = serde_json::to_vec(&unchecked).expect("pair blob serialises");
        let hash = crate::domain_hasher!("selves pair blob check v1")
            .update(&json)
            .finalize();
        crate::hex(&hash.as_bytes()[..8])
    }
}

/// `https://host:port`, bracketing an IPv6 literal.
pub fn https_url(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob() -> PairBlob {
        PairBlob {
            v: PAIR_VERSION,
            host: "127.0.0.1".into(),
            port: 8765,
            cert_fp: CertFingerprint::of_der(b"cert"),
            token: Token::from_bytes([9; 32]),
            exp: 2_000,
            node: "vps".parse().unwrap(),
            node_id: NodeId::from_bytes([1; 16]),
            peer: "laptop".parse().unwrap(),
            ssh: None,
            check: String::new(),
        }
    }

    #[test]
    fn join_blobs_carry_the_ssh_target() {
        let join = PairBlob {
            ssh: Some("me@vps.example:2222".into()),
            ..blob()
        };
        let text = join.encode_as(BlobKind::Join);
        assert!(text.starts_with(JOIN_PREFIX));
        let (back, kind) = PairBlob::parse(&text).unwrap();
        assert_eq!(kind, BlobKind::Join);
        assert_eq!(back.ssh.as_deref(), Some("me@vps.example:2222"));
        // Expiry is checked apart from parsing.
        assert!(back.unexpired(1_000).is_ok());
        assert_eq!(
            back.unexpired(2_000),
            Err(PairError::Expired { ago_secs: 0 })
        );
        // A pair blob is unchanged by the new field: none is written.
        let b64 = blob().encode()[PAIR_PREFIX.len()..].to_owned();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert!(value.get("ssh").is_none() && value.get("token").is_some());
        assert_eq!(PairBlob::parse(&blob().encode()).unwrap().1, BlobKind::Pair);
    }

    #[test]
    fn round_trips() {
        let text = blob().encode();
        assert!(text.starts_with(PAIR_PREFIX));
        assert!(!text.contains(char::is_whitespace));
        let back = PairBlob::decode(&format!("  {text}\n"), 1_000).unwrap();
        assert_eq!(back.token, blob().token);
        assert_eq!(back.url(), "https://127.0.0.1:8765");
    }

    #[test]
    fn refuses_expired_tampered_unknown_and_garbage() {
        let text = blob().encode();
        assert_eq!(
            PairBlob::decode(&text, 2_500),
            Err(PairError::Expired { ago_secs: 500 })
        );

        // Edit the expiry inside the JSON without fixing the check.
        let b64 = text.strip_prefix(PAIR_PREFIX).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        value["exp"] = 9_999_999.into();
        let edited = format!(
            "{PAIR_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&value).unwrap())
        );
        assert_eq!(PairBlob::decode(&edited, 1_000), Err(PairError::Damaged));

        value["v"] = 7.into();
        let future = format!(
            "{PAIR_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&value).unwrap())
        );
        assert_eq!(
            PairBlob::decode(&future, 1_000),
            Err(PairError::UnknownVersion(7))
        );

        assert_eq!(
            PairBlob::decode("memex-pair:abc", 0),
            Err(PairError::NotABlob)
        );
        assert_eq!(
            PairBlob::decode(&text[..text.len() - 5], 1_000).unwrap_err(),
            PairError::NotABlob
        );
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(https_url("::1", 1), "https://[::1]:1");
        assert_eq!(https_url("[::1]", 1), "https://[::1]:1");
    }
}
