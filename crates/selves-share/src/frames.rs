//! Blob streams (`/v1/blobs/get` answers, `/v1/blobs/put` bodies): frames
//! of one JSON header line ([`FrameHeader`]) followed by exactly `size`
//! raw bytes. Written and read as plain `std::io` streams on a blocking
//! thread; [`crate::pipe`] joins them to HTTP bodies.

use std::io::{BufRead, Read as _, Write};

use selves_store::Share;
use selves_wire::file::{BlobWant, FrameHeader};

use crate::blobs::{BlobError, Blobs};
use crate::engine::{Engine, ShareError};

/// The longest header line read.
const MAX_HEADER_BYTES: u64 = 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Sent {
    pub frames: u64,
    pub bytes: u64,
    /// Blobs asked for that this node could not serve.
    pub missing: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Received {
    /// Blobs (or tails) stored.
    pub stored: u64,
    pub bytes: u64,
    /// Blobs the sender did not have, or sent damaged (not stored).
    pub missing: Vec<BlobWant>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the blob stream is malformed: {0}")]
    Malformed(String),
    #[error("the blob stream broke off: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Blob(BlobError),
}

/// Writes a frame for each of `wants` to `out`: the blob's bytes from
/// `from` on, or a `missing` header for one this node cannot serve.
pub fn write_frames(
    engine: &Engine,
    share: &Share,
    wants: &[BlobWant],
    out: &mut impl Write,
) -> Result<Sent, ShareError> {
    let mut sent = Sent::default();
    let io = |e: std::io::Error| {
        ShareError::Fs(crate::fsops::FsError::Io {
            path: "<blob stream>".into(),
            source: e,
        })
    };
    for want in wants {
        match engine.read_blob(share, &want.hash, want.from)? {
            Some((file, size)) => {
                let header = FrameHeader {
                    hash: want.hash,
                    from: want.from,
                    size,
                    missing: false,
                };
                out.write_all(&header.line()).map_err(io)?;
                // Exactly `size` bytes, even if the file grew meanwhile; if
                // it shrank, the frame is cut short and the stream is
                // abandoned (the reader sees a truncated frame).
                let copied = std::io::copy(&mut file.take(size), out).map_err(io)?;
                if copied < size {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("blob {} shrank while it was sent", want.hash),
                    )));
                }
                sent.frames += 1;
                sent.bytes += size;
            }
            None => {
                let header = FrameHeader {
                    hash: want.hash,
                    from: want.from,
                    size: 0,
                    missing: true,
                };
                out.write_all(&header.line()).map_err(io)?;
                sent.missing += 1;
            }
        }
    }
    out.flush().map_err(io)?;
    Ok(sent)
}

/// Reads frames from `input` into `blobs` until the stream ends. Whole
/// blobs are verified by hash; a damaged one is skipped and reported
/// missing. Only blobs in `expected` are taken (`None`: any).
pub fn read_frames(
    blobs: &Blobs,
    input: &mut impl BufRead,
    expected: Option<&[BlobWant]>,
) -> Result<Received, FrameError> {
    let mut got = Received::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .by_ref()
            .take(MAX_HEADER_BYTES)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(got);
        }
        if line.last() != Some(&b'\n') {
            return Err(FrameError::Malformed(if n as u64 >= MAX_HEADER_BYTES {
                "a frame header is longer than 1024 bytes".into()
            } else {
                "the stream ended inside a frame header".into()
            }));
        }
        let header: FrameHeader = serde_json::from_slice(&line)
            .map_err(|e| FrameError::Malformed(format!("a frame header is not valid: {e}")))?;
        let want = BlobWant {
            hash: header.hash,
            from: header.from,
        };
        if header.missing {
            got.missing.push(want);
            continue;
        }
        if expected.is_some_and(|e| !e.contains(&want)) {
            return Err(FrameError::Malformed(format!(
                "blob {} (from {}) was not asked for",
                header.hash, header.from
            )));
        }
        match blobs.put(&header.hash, header.from, Some(header.size), &mut *input) {
            Ok(n) => {
                got.stored += 1;
                got.bytes += n;
            }
            // The bytes were all read: the stream goes on.
            Err(BlobError::Mismatch { .. }) => got.missing.push(want),
            Err(BlobError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                return Err(FrameError::Io(source));
            }
            Err(e) => return Err(FrameError::Blob(e)),
        }
    }
}
