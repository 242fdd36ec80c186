//! The daemon's log file, `SELVES_HOME/logs/daemon.log`, rotated by size:
//! past [`MAX_BYTES`] it becomes `daemon.log.1` (and `.1` becomes `.2`, up
//! to [`KEEP`]), so a daemon that runs for months uses bounded disk.
//! (tracing-appender rotates by time only; a quiet node would keep a file a
//! day, a noisy one an unbounded one.)

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const MAX_BYTES: u64 = 10 << 20;
pub const KEEP: usize = 3;

#[derive(Clone)]
pub struct LogFile(Arc<Mutex<Inner>>);

struct Inner {
    path: PathBuf,
    file: File,
    len: u64,
    max: u64,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl LogFile {
    pub fn open(dir: &Path) -> io::Result<LogFile> {
        Self::with_limit(dir, MAX_BYTES)
    }

    fn with_limit(dir: &Path, max: u64) -> io::Result<LogFile> {
        crate::daemon::lock::private_dir(dir)?;
        let path = dir.join("daemon.log");
        let file = open(&path)?;
        let len = file.metadata()?.len();
        Ok(LogFile(Arc::new(Mutex::new(Inner {
            path,
            file,
            len,
            max,
        }))))
    }
}

impl Inner {
    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        for n in (1..KEEP).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = open(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

impl Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if inner.len > 0 && inner.len + buf.len() as u64 > inner.max {
            // A log that cannot rotate still takes lines.
            let _ = inner.rotate();
        }
        inner.file.write_all(buf)?;
        inner.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogFile {
    type Writer = &'a LogFile;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_past_the_limit_and_keeps_a_bounded_number() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::with_limit(dir.path(), 100).unwrap();
        for i in 0..20 {
            (&log)
                .write_all(format!("line {i:02} {}\n", "x".repeat(30)).as_bytes())
                .unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["daemon.log", "daemon.log.1", "daemon.log.2", "daemon.log.3"]
        );
        for n in &names {
            let len = std::fs::metadata(dir.path().join(n)).unwrap().len();
            assert!(len <= 100, "{n} has {len} bytes");
        }
        // The newest line is in the live file, the one before it rotated out.
        let live = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
        assert!(live.contains("line 19"), "{live}");
        let one = std::fs::read_to_string(dir.path().join("daemon.log.1")).unwrap();
        assert!(one.contains("line 17"), "{one}");
    }
}
