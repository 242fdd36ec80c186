//! One daemon per home: an exclusive `flock` on `locks/daemon.lock`, held
//! for the daemon's life and released by the kernel however it ends. The
//! file holds the daemon's pid, for messages and `selves status`.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use rustix::fs::{FlockOperation, flock};

pub struct DaemonLock {
    _file: std::fs::File,
}

fn path(home: &Path) -> PathBuf {
    home.join("locks").join("daemon.lock")
}

fn open(home: &Path) -> anyhow::Result<std::fs::File> {
    let path = path(home);
    private_dir(path.parent().expect("a lock has a folder"))?;
    std::os::unix::fs::OpenOptionsExt::mode(&mut std::fs::OpenOptions::new(), 0o600)
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))
}

impl DaemonLock {
    /// Takes the lock, or says which daemon holds it.
    pub fn acquire(home: &Path) -> anyhow::Result<DaemonLock> {
        let mut file = open(home)?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            let pid = running(home)?.map_or_else(|| "?".to_owned(), |p| p.to_string());
            bail!(
                "a daemon is already running for {} (pid {pid}); `selves status` shows what it does",
                home.display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(DaemonLock { _file: file })
    }
}

/// The pid of the daemon running for `home`, if one is.
pub fn running(home: &Path) -> anyhow::Result<Option<u32>> {
    if !path(home).exists() {
        return Ok(None);
    }
    let mut file = open(home)?;
    if flock(&file, FlockOperation::NonBlockingLockShared).is_ok() {
        // Nobody holds it: no daemon.
        return Ok(None);
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(Some(text.trim().parse().unwrap_or(0)))
}

fn address_path(home: &Path) -> PathBuf {
    home.join("locks").join("daemon.addr")
}

/// Notes the address the running daemon listens on.
pub(crate) fn note_address(home: &Path, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    crate::home::write_private(&address_path(home), addr.to_string().as_bytes())
}

/// The address a running daemon of `home` listens on, if one runs and
/// serves.
pub fn listening(home: &Path) -> Option<std::net::SocketAddr> {
    running(home).ok().flatten()?;
    std::fs::read_to_string(address_path(home))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive_path(home: &Path) -> PathBuf {
    home.join("locks").join("daemon.alive")
}

/// How often a running daemon says it is alive.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(30);

/// Touches `locks/daemon.alive` while the daemon runs, so a daemon that
/// died without stopping (SIGKILL, a crash, the OOM killer) leaves a trace
/// of when it was last alive, which `status` reports.
pub(crate) async fn heartbeat(home: PathBuf, mut stop: tokio::sync::watch::Receiver<bool>) {
    let path = alive_path(&home);
    loop {
        if let Err(e) = crate::home::write_private(&path, std::process::id().to_string().as_bytes())
        {
            tracing::warn!(error = %e, "cannot note that the daemon is alive");
        }
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Removes what only a running daemon should leave.
pub(crate) fn stopped_cleanly(home: &Path) {
    let _ = std::fs::remove_file(alive_path(home));
    let _ = std::fs::remove_file(address_path(home));
}

/// When a daemon that did not stop cleanly was last alive (ms), if one did
/// and none runs now.
pub fn died_at(home: &Path) -> Option<i64> {
    if running(home).ok().flatten().is_some() {
        return None;
    }
    let modified = std::fs::metadata(alive_path(home)).ok()?.modified().ok()?;
    Some(
        modified
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    )
}

/// Creates `dir` (and its parents) private to the user: 0700.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
