//! Wire types of selves: everything that crosses a process boundary as bytes.
//!
//! This crate is the compatibility boundary. Changing a type here changes the
//! protocol, and the snapshot tests in each module show the change as a diff.
//!
//! - [`row`]: the memory [`Row`] (seeds/memex-sync.md §Row shape plus
//!   `origin`), its validation, identity key and version hash.
//! - [`ids`]: parsed identifiers ([`NodeId`], [`Name`], [`Token`],
//!   [`StreamName`], [`CertFingerprint`]).
//! - [`native`]: the native sync protocol (heads and record ranges).
//! - [`pair`]: the `selves-pair:` blob a hub prints and a spoke pastes.
//! - [`file`]: share paths ([`file::RelPath`]), version vectors, file versions.
//! - [`card`]: node cards (stream `nodes`).
//! - [`memex`]: memex v12 compatibility.
//! - [`sign`]: node keys, record digests, hash chains and signatures.

pub mod card;
pub mod file;
pub mod ids;
pub mod memex;
pub mod native;
pub mod pair;
pub mod row;
pub mod sign;

pub use ids::{CertFingerprint, IdError, Name, NodeId, StreamName, Token};
pub use row::{ConversationMeta, Row, RowError, RowKey, VersionHash};

/// Seconds since the Unix epoch, as used in rows (`ts`) and blobs (`exp`).
pub type UnixSeconds = i64;
/// Milliseconds since the Unix epoch, as used in `edited_at`.
pub type UnixMillis = i64;

/// A BLAKE3 hasher for one purpose, keyed with a key derived from
/// `$context` once per process (deriving it on every call would cost more
/// than hashing a typical row).
#[macro_export]
macro_rules! domain_hasher {
    ($context:literal) => {{
        static KEY: ::std::sync::OnceLock<[u8; 32]> = ::std::sync::OnceLock::new();
        ::blake3::Hasher::new_keyed(KEY.get_or_init(|| ::blake3::derive_key($context, &[])))
    }};
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Parses hex (either case) into exactly `N` bytes.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&bytes), "0001abff");
        assert_eq!(unhex::<4>("0001ABff"), Some(bytes));
        assert_eq!(unhex::<4>("0001abf"), None);
        assert_eq!(unhex::<4>("0001abfg"), None);
    }
}
