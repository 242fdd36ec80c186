//! The share engine: keeps a folder on disk and its record stream in step.
//!
//! - [`fsops`]: reads and atomic writes that never leave the share's root
//!   and never follow a symlink.
//! - [`secrets`]: content that looks like a credential.
//! - [`walk`]: the files of a share's folder, ignores applied.
//! - [`blobs`]: contents by hash: arrived, and kept as merge bases.
//! - [`merge`]: symmetric three-way merges of text.
//! - [`engine`]: scanning a folder into versions, and resolving and writing
//!   the versions peers send.
//! - [`frames`]: blob streams between nodes.
//! - [`pipe`]: blocking readers and writers joined to async bodies.

pub mod blobs;
pub mod engine;
pub mod frames;
pub mod fsops;
pub mod merge;
pub mod pipe;
pub mod secrets;
pub mod walk;

pub use engine::{Engine, Generated, ScanReport, ShareError};
