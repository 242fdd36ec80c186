//! The selves sync client: dials a peer over HTTPS with a pinned
//! certificate and moves record ranges both ways.
//!
//! - [`tls`]: the pinning certificate verifier.
//! - [`peer`]: one peer's endpoint and the error classification.
//! - [`replicate`]: one sync round (heads diff, pipelined pull and push).
//! - [`shares`]: the shares in a round (records, then blob streams).
//! - [`memex`]: one sync round with a memex v12 node.
//! - [`remote`]: one sync round through a medium: a git repository or a
//!   carried folder, end-to-end encrypted.

pub mod memex;
pub mod peer;
pub mod remote;
pub mod replicate;
pub mod shares;
pub mod tls;

pub use memex::sync_memex;
pub use peer::{PeerClient, PeerTarget, Prover, SyncError, prover};
pub use remote::sync_remote;
pub use replicate::{
    NoProgress, Progress, SyncOptions, SyncReport, digest, handshake, marker, sync,
};
pub use shares::ShareSync;
pub use tls::Trust;
