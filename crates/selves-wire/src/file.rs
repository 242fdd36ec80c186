//! Files in shares: the path type every name from a peer is parsed into,
//! version vectors, and the file version a share record carries.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use unicode_normalization::UnicodeNormalization as _;

use crate::NodeId;

/// Longest path, and longest component, a share may hold (bytes).
pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Names selves uses for its own temporary files; never a synced path.
pub const TEMP_PREFIX: &str = ".selves-tmp-";

/// A path inside a share: relative, `/`-separated, NFC-normalised, with no
/// `.` or `..` components, no empty components, no NUL, control characters
/// or backslashes. A value of this type can never name anything outside
/// the share's root.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path {shown:?} is refused: {why}")]
pub struct PathError {
    /// The name, with control characters escaped, for messages.
    pub shown: String,
    pub why: &'static str,
}

impl RelPath {
    /// Parses and NFC-normalises `name`.
    pub fn parse(name: &str) -> Result<RelPath, PathError> {
        let refuse = |why| PathError {
            shown: name.escape_debug().take(200).collect(),
            why,
        };
        if name.is_empty() {
            return Err(refuse("it is empty"));
        }
        if name.starts_with('/') {
            return Err(refuse("it is absolute"));
        }
        if name.contains('\\') {
            return Err(refuse("it contains a backslash"));
        }
        if name.chars().any(char::is_control) {
            return Err(refuse("it contains a control character or NUL"));
        }
        let nfc: String = match unicode_normalization::is_nfc_quick(name.chars()) {
            unicode_normalization::IsNormalized::Yes => name.to_owned(),
            _ => name.nfc().collect(),
        };
        if nfc.len() > MAX_PATH_BYTES {
            return Err(refuse("it is longer than 4096 bytes"));
        }
        for part in nfc.split('/') {
            match part {
                "" => return Err(refuse("it has an empty component")),
                "." | ".." => return Err(refuse("it has a `.` or `..` component")),
                p if p.len() > MAX_COMPONENT_BYTES => {
                    return Err(refuse("a component is longer than 255 bytes"));
                }
                p if p.starts_with(TEMP_PREFIX) => {
                    return Err(refuse("it is a selves temporary file"));
                }
                _ => {}
            }
        }
        Ok(RelPath(nfc))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().expect("never empty")
    }

    /// `prefix/self`, for the per-origin layout (`prefix` is a node name).
    pub fn under(&self, prefix: &crate::Name) -> RelPath {
        RelPath(format!("{prefix}/{}", self.0))
    }

    /// The sibling path whose last component is `name`.
    pub fn with_file_name(&self, name: &str) -> Result<RelPath, PathError> {
        match self.0.rsplit_once('/') {
            Some((dir, _)) => RelPath::parse(&format!("{dir}/{name}")),
            None => RelPath::parse(name),
        }
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPath({:?})", self.0)
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        RelPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The BLAKE3 hash of a file's content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    pub fn of(bytes: &[u8]) -> BlobHash {
        BlobHash(*blake3::hash(bytes).as_bytes())
    }
    pub fn to_hex(&self) -> String {
        crate::hex(&self.0)
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", &self.to_hex()[..12])
    }
}

impl std::str::FromStr for BlobHash {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::unhex::<32>(s)
            .map(BlobHash)
            .ok_or("a blob hash is 64 hex characters")
    }
}

impl Serialize for BlobHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for BlobHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A blob a node needs: whole (`from` = 0) or only its bytes past `from`
/// (an appended file it already holds the start of).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobWant {
    pub hash: BlobHash,
    #[serde(default)]
    pub from: u64,
}

/// `POST /v1/blobs/get`: the blobs of `share` a node wants. The answer is a
/// stream of frames (see [`FrameHeader`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobsGet {
    pub share: String,
    pub want: Vec<BlobWant>,
}

/// `POST /v1/blobs/wants`: which blobs would the server need to apply these
/// records of `share`?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobsWantsRequest {
    pub share: String,
    pub batches: Vec<crate::native::RecordBatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobsWants {
    pub want: Vec<BlobWant>,
}

/// One frame of a blob stream (`/v1/blobs/get` answers, `/v1/blobs/put`
/// bodies): this header as one JSON line, then exactly `size` raw bytes (none
/// when `missing`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameHeader {
    pub hash: BlobHash,
    #[serde(default)]
    pub from: u64,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
}

impl FrameHeader {
    /// The header line, newline included.
    pub fn line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("a frame header serialises");
        v.push(b'\n');
        v
    }
}

/// The answer to `POST /v1/blobs/put`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobsStored {
    pub stored: u64,
}

pub mod blob_path {
    pub const GET: &str = "/v1/blobs/get";
    pub const PUT: &str = "/v1/blobs/put";
    pub const WANTS: &str = "/v1/blobs/wants";
}

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    Equal,
    /// The left one has seen everything the right one has, and more.
    Dominates,
    Dominated,
    Concurrent,
}

/// A version vector: for each node, how many versions of this file it made
/// that this version has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(pub BTreeMap<NodeId, u64>);

impl VersionVector {
    pub fn get(&self, node: &NodeId) -> u64 {
        self.0.get(node).copied().unwrap_or(0)
    }

    /// This vector with `node`'s counter moved on by one: a new version
    /// made by `node` after this one.
    pub fn bumped(&self, node: &NodeId) -> VersionVector {
        let mut next = self.clone();
        *next.0.entry(node.clone()).or_insert(0) += 1;
        next
    }

    /// The least vector that has seen both.
    pub fn join(&self, other: &VersionVector) -> VersionVector {
        let mut out = self.clone();
        for (node, n) in &other.0 {
            let e = out.0.entry(node.clone()).or_insert(0);
            *e = (*e).max(*n);
        }
        out
    }

    pub fn compare(&self, other: &VersionVector) -> Causality {
        let mut greater = false;
        let mut less = false;
        for node in self.0.keys().chain(other.0.keys()) {
            let (a, b) = (self.get(node), other.get(node));
            greater |= a > b;
            less |= a < b;
        }
        match (greater, less) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Dominates,
            (false, true) => Causality::Dominated,
            (true, true) => Causality::Concurrent,
        }
    }
}

/// One version of one file, as a share record carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    pub path: RelPath,
    pub vv: VersionVector,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The content's hash; absent for a deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<BlobHash>,
    pub size: u64,
    /// When the author saw the file change (ms); names conflict copies.
    pub mtime: i64,
    /// The name of the node that made this version.
    pub author: String,
    /// The content this version was made from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<BlobHash>,
    /// The content is `parent`'s bytes followed by new ones: a receiver that
    /// holds `parent` needs only the bytes past its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_from: Option<u64>,
}

impl FileVersion {
    /// Checks what parsing alone cannot.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.vv.0.is_empty() || self.vv.0.values().any(|n| *n == 0) {
            return Err("a file version's version vector is empty or holds a zero");
        }
        if self.deleted != self.blob.is_none() {
            return Err("a file version must have content unless it is a deletion");
        }
        if self.author.is_empty() || self.author.len() > 256 {
            return Err("a file version's author is missing or too long");
        }
        if let Some(from) = self.append_from
            && (self.parent.is_none() || from > self.size)
        {
            return Err("an appended version needs a parent no longer than itself");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hostile_paths_are_refused() {
        let hostile = [
            "",
            "/etc/passwd",
            "/",
            "..",
            "../x",
            "a/../b",
            "a/..",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "//a",
            "a\\b",
            "..\\x",
            "C:\\x",
            "a\0b",
            "\0",
            "a\nb",
            "a\rb",
            "a\tb",
            "\u{1b}[31m",
            "a\u{7f}",
            "a\u{85}b",
            "a\u{9b}b",
            ".selves-tmp-1234",
            "d/.selves-tmp-x",
        ];
        for name in hostile {
            assert!(RelPath::parse(name).is_err(), "{name:?} should be refused");
        }
        let long = "x".repeat(256);
        assert!(RelPath::parse(&long).is_err());
        let deep = vec!["d"; 2100].join("/");
        assert!(RelPath::parse(&deep).is_err());
        for good in [
            "a.md",
            "notes/2026/jan.md",
            ".hidden",
            "a b/c d.md",
            "Ünïcödé/東京.md",
            "-x",
            "..a",
            "a..",
        ] {
            assert_eq!(RelPath::parse(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn paths_are_nfc_normalised() {
        let nfd = "cafe\u{301}.md";
        let nfc = "caf\u{e9}.md";
        assert_eq!(RelPath::parse(nfd).unwrap(), RelPath::parse(nfc).unwrap());
        assert_eq!(RelPath::parse(nfd).unwrap().as_str(), nfc);
    }

    #[test]
    fn path_helpers() {
        let p = RelPath::parse("a/b/c.md").unwrap();
        assert_eq!(p.file_name(), "c.md");
        assert_eq!(p.components().collect::<Vec<_>>(), ["a", "b", "c.md"]);
        assert_eq!(p.with_file_name("d.md").unwrap().as_str(), "a/b/d.md");
        assert_eq!(
            p.under(&"laptop".parse().unwrap()).as_str(),
            "laptop/a/b/c.md"
        );
    }

    #[test]
    fn frame_header_json() {
        let h = FrameHeader {
            hash: BlobHash::of(b"x"),
            from: 10,
            size: 5,
            missing: false,
        };
        let line = String::from_utf8(h.line()).unwrap();
        assert!(line.ends_with('\n'));
        assert_eq!(serde_json::from_str::<FrameHeader>(line.trim()).unwrap(), h);
        expect_test::expect![[r#"
            {"hash":"3ae7d805f6789a6402acb70ad4096a85a56bf6804eaf25c0493ac697548d30b5","from":10,"size":5}
        "#]]
        .assert_eq(&line);
    }

    #[test]
    fn file_version_json() {
        let v = FileVersion {
            path: RelPath::parse("notes/a.md").unwrap(),
            vv: VersionVector::default().bumped(&NodeId::from_bytes([1; 16])),
            deleted: false,
            blob: Some(BlobHash::of(b"hello")),
            size: 5,
            mtime: 1716800000000,
            author: "laptop".into(),
            parent: None,
            append_from: None,
        };
        expect_test::expect![[r#"{"path":"notes/a.md","vv":{"01010101010101010101010101010101":1},"blob":"ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f","size":5,"mtime":1716800000000,"author":"laptop"}"#]]
            .assert_eq(&serde_json::to_string(&v).unwrap());
        assert!(v.check().is_ok());
        let bad: Result<FileVersion, _> = serde_json::from_str(
            r#"{"path":"../x","vv":{"01010101010101010101010101010101":1},"size":0,"mtime":0,"author":"a","deleted":true}"#,
        );
        assert!(bad.is_err());
    }

    fn vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::btree_map(0u8..4, 0u64..4, 0..4).prop_map(|m| {
            VersionVector(
                m.into_iter()
                    .map(|(n, c)| (NodeId::from_bytes([n; 16]), c))
                    .filter(|(_, c)| *c > 0)
                    .collect(),
            )
        })
    }

    proptest! {
        #[test]
        fn version_vectors_are_a_lattice(a in vv(), b in vv(), c in vv()) {
            prop_assert_eq!(a.join(&b), b.join(&a));
            prop_assert_eq!(a.join(&b).join(&c), a.join(&b.join(&c)));
            prop_assert_eq!(a.join(&a), a.clone());
            let j = a.join(&b);
            prop_assert!(matches!(j.compare(&a), Causality::Dominates | Causality::Equal));
            // compare is antisymmetric.
            let flipped = match a.compare(&b) {
                Causality::Dominates => Causality::Dominated,
                Causality::Dominated => Causality::Dominates,
                other => other,
            };
            prop_assert_eq!(b.compare(&a), flipped);
            let n = NodeId::from_bytes([9; 16]);
            prop_assert_eq!(a.bumped(&n).compare(&a), Causality::Dominates);
        }
    }
}
