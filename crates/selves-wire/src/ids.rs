//! Parsed identifiers: each type can only hold a value that passed its check.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("node id {0:?} is not 32 lowercase hex characters")]
    NodeId(String),
    #[error(
        "name {0:?} is not valid: use 1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
    )]
    Name(String),
    #[error("token is not 64 hex characters (a selves or memex bearer token)")]
    Token,
    #[error("stream {0:?} is not valid: expected \"memory\", \"nodes\" or \"share:<name>\"")]
    Stream(String),
    #[error("certificate fingerprint {0:?} is not valid: expected sha256:AA:BB:… (32 bytes)")]
    Fingerprint(String),
}

macro_rules! string_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

/// A node's stable identity: 16 random bytes as 32 lowercase hex characters.
/// Records are numbered per (node, stream); two nodes must never share an id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        NodeId(crate::hex(&bytes))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Whether the id was derived from a public key (see
    /// [`crate::sign::PublicKey::node_id`]) rather than drawn at random by
    /// a node made before keys.
    pub fn is_derived(&self) -> bool {
        self.0.ends_with("5e1f")
    }
    /// The first eight characters, enough to tell nodes apart in messages.
    pub fn short(&self) -> &str {
        &self.0[..8]
    }
}

impl std::str::FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let ok = s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok {
            Ok(NodeId(s.to_owned()))
        } else {
            Err(IdError::NodeId(s.to_owned()))
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}
string_serde!(NodeId);

/// A human name: a node's name (its provenance `origin` label), a peer alias
/// or the name a token was minted for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Name {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            && !s.starts_with(['.', '-']);
        if ok {
            Ok(Name(s.to_owned()))
        } else {
            Err(IdError::Name(s.to_owned()))
        }
    }
}
string_serde!(Name);

/// A bearer token: 32 random bytes, written as 64 lowercase hex characters
/// (memex parses only hex bearers). Never logged: `Debug` hides it.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl Token {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Token(bytes)
    }
    pub fn to_hex(&self) -> String {
        crate::hex(&self.0)
    }
    /// The secret itself (a remote's key is held as a token).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// What a server stores instead of the token.
    pub fn digest(&self) -> [u8; 32] {
        *crate::domain_hasher!("selves token digest v1")
            .update(&self.0)
            .finalize()
            .as_bytes()
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for Token {}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

impl std::str::FromStr for Token {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        crate::unhex::<32>(s.trim())
            .map(Token)
            .ok_or(IdError::Token)
    }
}

impl Serialize for Token {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}
impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A record stream: `memory`, `nodes` or `share:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

impl StreamName {
    pub const MEMORY: &'static str = "memory";
    pub const NODES: &'static str = "nodes";

    pub fn memory() -> Self {
        StreamName(Self::MEMORY.to_owned())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn is_memory(&self) -> bool {
        self.0 == Self::MEMORY
    }
    pub fn nodes() -> Self {
        StreamName(Self::NODES.to_owned())
    }
    pub fn is_nodes(&self) -> bool {
        self.0 == Self::NODES
    }
    /// A share's stream (`share:<name>`), resolved by the share engine;
    /// the others (`memory`, `nodes`) are materialised by the store.
    pub fn is_share(&self) -> bool {
        self.0.starts_with("share:")
    }
}

impl std::str::FromStr for StreamName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let ok = s == Self::MEMORY
            || s == Self::NODES
            || s.strip_prefix("share:")
                .is_some_and(|n| n.parse::<Name>().is_ok());
        if ok {
            Ok(StreamName(s.to_owned()))
        } else {
            Err(IdError::Stream(s.to_owned()))
        }
    }
}
string_serde!(StreamName);

/// The SHA-256 of a certificate's DER encoding, written `sha256:AA:BB:…`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint([u8; 32]);

impl CertFingerprint {
    pub fn of_der(der: &[u8]) -> Self {
        CertFingerprint(sha2::Sha256::digest(der).into())
    }
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Constant-time comparison, for the TLS verifier.
    pub fn matches_der(&self, der: &[u8]) -> bool {
        let other = Self::of_der(der);
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for CertFingerprint {
    type Err = IdError;
    /// Accepts `sha256:AA:BB:…`, with or without the prefix and colons, in
    /// either case.
    fn from_str(s: &str) -> Result<Self, IdError> {
        let t = s.trim();
        let t = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .unwrap_or(t);
        let compact: String = t.chars().filter(|c| *c != ':').collect();
        crate::unhex::<32>(&compact)
            .map(CertFingerprint)
            .ok_or_else(|| IdError::Fingerprint(s.to_owned()))
    }
}

impl Serialize for CertFingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for CertFingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_what_could_be_a_path_or_flag() {
        for bad in [
            "",
            "../x",
            "a/b",
            "-x",
            ".hidden",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(bad.parse::<Name>().is_err(), "{bad:?} should be refused");
        }
        for good in ["vps", "laptop-2", "a.b_c", "X9"] {
            assert!(good.parse::<Name>().is_ok(), "{good:?} should be accepted");
        }
    }

    #[test]
    fn streams() {
        assert!("memory".parse::<StreamName>().is_ok());
        assert!("share:knowledge".parse::<StreamName>().is_ok());
        assert!("share:../x".parse::<StreamName>().is_err());
        assert!("files".parse::<StreamName>().is_err());
    }

    #[test]
    fn fingerprint_formats_and_parses() {
        let fp = CertFingerprint::of_der(b"cert");
        let text = fp.to_string();
        assert!(text.starts_with("sha256:"));
        assert_eq!(text.len(), 7 + 32 * 3 - 1);
        assert_eq!(text.parse::<CertFingerprint>().unwrap(), fp);
        let bare = text[7..].replace(':', "").to_lowercase();
        assert_eq!(bare.parse::<CertFingerprint>().unwrap(), fp);
        assert!(fp.matches_der(b"cert"));
        assert!(!fp.matches_der(b"other"));
        assert!("sha256:AA:BB".parse::<CertFingerprint>().is_err());
    }

    #[test]
    fn token_is_hex_and_hidden_from_debug() {
        let t = Token::from_bytes([7; 32]);
        assert_eq!(t.to_hex().len(), 64);
        assert_eq!(t.to_hex().parse::<Token>().unwrap(), t);
        assert_eq!(format!("{t:?}"), "Token(…)");
        assert!("zz".parse::<Token>().is_err());
        assert_ne!(t.digest(), Token::from_bytes([8; 32]).digest());
    }
}
