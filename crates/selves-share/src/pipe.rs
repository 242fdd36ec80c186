//! Joins blocking `std::io` readers and writers (the blob streams, file
//! IO) to async HTTP bodies through a small bounded channel, so a blob
//! stream of any size moves with a few hundred KiB in memory.

use std::io::{Read, Write};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Chunks in flight between the two sides.
const DEPTH: usize = 4;
/// Bytes gathered before a chunk is handed over.
const CHUNK: usize = 256 << 10;

pub type Chunk = Result<Bytes, std::io::Error>;

/// A channel whose sending half is a blocking [`Write`] and whose
/// receiving half yields chunks to an async body.
pub fn writer() -> (ChannelWriter, mpsc::Receiver<Chunk>) {
    let (tx, rx) = mpsc::channel(DEPTH);
    (
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        },
        rx,
    )
}

/// A channel whose sending half takes chunks from an async body and whose
/// receiving half is a blocking [`Read`].
pub fn reader() -> (mpsc::Sender<Chunk>, ChannelReader) {
    let (tx, rx) = mpsc::channel(DEPTH);
    (
        tx,
        ChannelReader {
            rx,
            current: Bytes::new(),
        },
    )
}

pub struct ChannelWriter {
    tx: mpsc::Sender<Chunk>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn hand_over(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the receiver went away")
        })
    }

    /// Ends the stream with an error the receiver sees (instead of a
    /// clean end).
    pub fn fail(self, e: std::io::Error) {
        let _ = self.tx.blocking_send(Err(e));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.hand_over()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.hand_over()
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = self.hand_over();
    }
}

pub struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}
