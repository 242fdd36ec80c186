//! Who wrote what. Every node has an Ed25519 key; its node id is derived
//! from the public key (a node made before keys existed keeps its old id,
//! bound to its key by the first signed record seen). Every log (node,
//! stream) is a hash chain over its records' digests, and its author signs
//! the chain at some seqs: a range of records is proven to come from its
//! author when the chain through it ends at a signed seq. Relays pass the
//! signatures on untouched, so proof survives any number of hops.
//!
//! ```text
//!   chain(0) = H("selves chain v1", node, stream)
//!   chain(n) = H(chain(n-1), n, digest(record n))
//!   signature over H("selves head v1", node, stream, n, chain(n))
//! ```
//!
//! A record's digest commits to its content: a row's version hash, a file
//! version's or card's JSON. Records held from before signing existed are
//! "carried from before": their digest is [`Digest::LEGACY`], so the chain
//! still fixes their numbering, but not their content.
//!
//! Ed25519 comes from `ring`, which rustls already brings: no second
//! implementation in the tree.

use std::fmt;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::native::Record;
use crate::{NodeId, StreamName};

macro_rules! hex_bytes {
    ($name:ident, $n:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $n]);

        impl $name {
            pub fn to_hex(&self) -> String {
                crate::hex(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({}…)", stringify!($name), &self.to_hex()[..12])
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                crate::unhex::<$n>(s)
                    .map($name)
                    .ok_or_else(|| format!("not {} hex bytes: {s:.20}", $n))
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_bytes!(PublicKey, 32, "A node's Ed25519 public key.");
hex_bytes!(Signature, 64, "An Ed25519 signature.");
hex_bytes!(
    Digest,
    32,
    "A record's content digest, or a link of a log's hash chain."
);

impl Digest {
    /// The digest of every record carried from before signing existed.
    pub const LEGACY: Digest = Digest([0; 32]);
}

impl PublicKey {
    /// The node id a key made today gives its node (as Syncthing's device
    /// id is its key's): 14 bytes of a keyed hash of the key, then the two
    /// bytes `5e 1f`, which mark the id as derived, so a node made before
    /// keys (a random id) is never mistaken for one whose id proves its key.
    pub fn node_id(&self) -> NodeId {
        let mut h = crate::domain_hasher!("selves node id v1");
        h.update(&self.0);
        let mut id = [0u8; 16];
        id[..14].copy_from_slice(&h.finalize().as_bytes()[..14]);
        id[14..].copy_from_slice(&DERIVED_MARK);
        NodeId::from_bytes(id)
    }

    /// Whether this key may speak for `node`: always for the id it
    /// derives; for an id made before keys, only if `bound` is this key.
    pub fn speaks_for(&self, node: &NodeId, bound: Option<&PublicKey>) -> bool {
        if node.is_derived() {
            self.node_id() == *node
        } else {
            bound == Some(self)
        }
    }

    /// Whether `sig` is this key's signature of `msg`.
    pub fn verifies(&self, msg: &[u8], sig: &Signature) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(msg, &sig.0)
            .is_ok()
    }
}

/// The last two bytes of every derived node id.
pub const DERIVED_MARK: [u8; 2] = [0x5e, 0x1f];

/// A node's signing key. The seed is the secret; it lives in
/// `SELVES_HOME/node.key` (0600) and nowhere else.
pub struct NodeKey {
    pair: Ed25519KeyPair,
    seed: [u8; 32],
}

impl NodeKey {
    pub fn from_seed(seed: [u8; 32]) -> NodeKey {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .expect("every 32-byte seed is an Ed25519 key");
        NodeKey { pair, seed }
    }

    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    pub fn public(&self) -> PublicKey {
        let mut pk = [0u8; 32];
        pk.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(pk)
    }

    pub fn sign(&self, msg: &[u8]) -> Signature {
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.pair.sign(msg).as_ref());
        Signature(sig)
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({:?})", self.public())
    }
}

/// The first link of the chain of (node, stream).
pub fn genesis(node: &NodeId, stream: &StreamName) -> Digest {
    let mut h = crate::domain_hasher!("selves chain v1");
    h.update(node.as_str().as_bytes());
    h.update(&[0]);
    h.update(stream.as_str().as_bytes());
    Digest(*h.finalize().as_bytes())
}

/// The chain after record `seq` with digest `d`, following `prev`.
pub fn link(prev: &Digest, seq: u64, d: &Digest) -> Digest {
    let mut h = crate::domain_hasher!("selves chain link v1");
    h.update(&prev.0);
    h.update(&seq.to_le_bytes());
    h.update(&d.0);
    Digest(*h.finalize().as_bytes())
}

/// What an author signs to vouch for its log up to `seq`.
pub fn head_message(node: &NodeId, stream: &StreamName, seq: u64, chain: &Digest) -> Vec<u8> {
    log_statement(b"selves head v1\0", node, stream, seq, chain)
}

/// What an author signs to withdraw the branch of its log that has
/// `chain` at `seq` (and everything after it): a restored home that wrote
/// there before it learnt what it had written before the restore, or a
/// copy that took a new identity. The content is written again elsewhere.
pub fn abandon_message(node: &NodeId, stream: &StreamName, seq: u64, chain: &Digest) -> Vec<u8> {
    log_statement(b"selves abandon v1\0", node, stream, seq, chain)
}

/// `domain ‖ node ‖ 0 ‖ stream ‖ 0 ‖ seq (u64 LE) ‖ chain`: a statement
/// about one point of one log.
fn log_statement(
    domain: &[u8],
    node: &NodeId,
    stream: &StreamName,
    seq: u64,
    chain: &Digest,
) -> Vec<u8> {
    let mut m = domain.to_vec();
    m.extend_from_slice(node.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(stream.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&chain.0);
    m
}

/// What a caller signs to prove it holds its key: bound to the server it
/// talks to and to a time, so a proof is worth nothing elsewhere or later.
pub fn proof_message(server: &NodeId, caller: &NodeId, at_ms: i64) -> Vec<u8> {
    let mut m = b"selves proof v1\0".to_vec();
    m.extend_from_slice(server.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(caller.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(&at_ms.to_le_bytes());
    m
}

/// How far a proof's time may be from the server's clock.
pub const PROOF_SKEW_MS: i64 = 10 * 60 * 1000;

/// The digest of a record's content, or `None` for a record that carries
/// none (void), whose digest must travel with it.
pub fn record_digest(record: &Record) -> Option<Digest> {
    match record {
        // A row without a uuid is stored with the one derived from its
        // identity (every node derives the same), and hashed so.
        Record::Row(row) if row.uuid.is_none() => {
            let mut row = row.clone();
            row.uuid = Some(row.derived_uuid());
            Some(row_digest(&row.version_hash()))
        }
        Record::Row(row) => Some(row_digest(&row.version_hash())),
        Record::File(file) => {
            let mut h = crate::domain_hasher!("selves record file v1");
            h.update(&serde_json::to_vec(file).expect("a file version serialises"));
            Some(Digest(*h.finalize().as_bytes()))
        }
        Record::Node(card) => {
            let mut h = crate::domain_hasher!("selves record card v1");
            h.update(&serde_json::to_vec(card).expect("a card serialises"));
            Some(Digest(*h.finalize().as_bytes()))
        }
        Record::Omitted(d) | Record::Superseded { d, .. } => Some(*d),
        Record::Refused { d, .. } => Some(*d),
        Record::Void(_) => None,
    }
}

/// The digest of a memory record that wrote the row version `hash`.
pub fn row_digest(hash: &crate::VersionHash) -> Digest {
    let mut h = crate::domain_hasher!("selves record row v1");
    h.update(&hash.0);
    Digest(*h.finalize().as_bytes())
}

/// A signature of an author over its chain at `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqSig {
    pub seq: u64,
    pub sig: Signature,
}

/// A signed withdrawal of one branch of a log (see [`abandon_message`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abandon {
    pub node: NodeId,
    pub key: PublicKey,
    pub stream: StreamName,
    pub seq: u64,
    pub chain: Digest,
    pub sig: Signature,
}

impl Abandon {
    /// Whether the statement is signed by `key`, and `key` may speak for
    /// `node` (derived id; a legacy id is checked by the caller against
    /// the key bound to it).
    pub fn signed(&self) -> bool {
        self.key.verifies(
            &abandon_message(&self.node, &self.stream, self.seq, &self.chain),
            &self.sig,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sign_and_verify() {
        let key = NodeKey::from_seed([7; 32]);
        let pk = key.public();
        let sig = key.sign(b"hello");
        assert!(pk.verifies(b"hello", &sig));
        assert!(!pk.verifies(b"hellO", &sig));
        let other = NodeKey::from_seed([8; 32]).public();
        assert!(!other.verifies(b"hello", &sig));
        // The id is a function of the key alone.
        assert_eq!(pk.node_id(), NodeKey::from_seed([7; 32]).public().node_id());
        assert_ne!(pk.node_id(), other.node_id());
        expect_test::expect!["PublicKey(ea4a6c63e29c…)"].assert_eq(&format!("{pk:?}"));
    }

    #[test]
    fn chains_depend_on_every_link() {
        let node = NodeKey::from_seed([1; 32]).public().node_id();
        let g = genesis(&node, &StreamName::memory());
        let a = link(&g, 1, &Digest([1; 32]));
        let b = link(&a, 2, &Digest([2; 32]));
        let b2 = link(&a, 2, &Digest([3; 32]));
        assert_ne!(b, b2);
        assert_ne!(
            link(&g, 2, &Digest([1; 32])),
            a,
            "the seq is part of a link"
        );
        assert_ne!(genesis(&node, &StreamName::nodes()), g);
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&text).unwrap(), b);
        assert!(serde_json::from_str::<Digest>("\"00\"").is_err());
    }

    /// The ids, chain and signed statements are a protocol: this pins
    /// them (Ed25519 signatures are deterministic).
    #[test]
    fn ids_chains_and_statements_are_pinned() {
        let key = NodeKey::from_seed([3; 32]);
        let node = key.public().node_id();
        assert!(node.is_derived());
        let memory = StreamName::memory();
        let chain = link(&genesis(&node, &memory), 1, &Digest([9; 32]));
        let head = key.sign(&head_message(&node, &memory, 1, &chain));
        let proof = key.sign(&proof_message(&node, &node, 1_700_000_000_000));
        expect_test::expect![[r#"
            8f4449a1596ee304e881ef3e45eb5e1f
            b2a4822b5d05eaef428d0a70ca2d74be65198aa8693d4ebcc795ec490f98464b
            50ac2716c5d3b8c80f1f2be997b5dc004dd21d562f7952c19c43a088a2cfdde1f3034ad2ce7c0a4e719303d3b67203c050a4464581a05bd5da4bae6575c6e007
            0ac7eb3f01c5c4ece24bf4a34617214c3325d0bc66699914b7df0c1ea13c31566a1fabfc0dafda00bfebbfb0c2c40fd7390256acba4d95113a54a2254088e30e"#]].assert_eq(&format!(
            "{node}\n{chain}\n{head}\n{proof}"
        ));
    }
}
