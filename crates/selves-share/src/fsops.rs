//! Filesystem access inside a share's root that cannot leave it: every
//! directory on the way to a path is opened relative to the one before,
//! without following symlinks, so neither a hostile name (already refused
//! by `RelPath`) nor a symlink planted in the tree can send a read or a
//! write elsewhere. Writes go to a temporary file beside the target, are
//! fsynced, renamed over it, and the directory is fsynced.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use selves_store::Seen;
use selves_wire::file::{RelPath, TEMP_PREFIX};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("the share's folder {0} is missing")]
    RootMissing(PathBuf),
    #[error("{path}: {at} is a symlink, and selves never follows symlinks inside a share")]
    Symlink { path: String, at: String },
    #[error("{path}: {at} is not a directory")]
    NotADirectory { path: String, at: String },
    #[error("{path} is a folder here")]
    IsADirectory { path: String },
    #[error("{path} changed on disk while selves was about to replace it; nothing was replaced")]
    Changed { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl FsError {
    pub(crate) fn io(path: &RelPath, e: impl Into<std::io::Error>) -> FsError {
        FsError::Io {
            path: path.to_string(),
            source: e.into(),
        }
    }
}

/// A share's root directory, held open.
pub struct Root {
    dir: OwnedFd,
    path: PathBuf,
}

/// `stat` results as the store keeps them.
pub fn seen_of(st: &rustix::fs::Stat) -> Seen {
    Seen {
        size: st.st_size as u64,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64,
        ino: st.st_ino,
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Root {
    /// Opens a share's root. The root itself may be a symlink (the user
    /// chose it); nothing below it may be.
    pub fn open(path: &Path) -> Result<Root, FsError> {
        let dir = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT | Errno::NOTDIR => FsError::RootMissing(path.to_owned()),
            e => FsError::Io {
                path: path.display().to_string(),
                source: e.into(),
            },
        })?;
        Ok(Root {
            dir,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory that holds `path`, opened component by component
    /// without following symlinks. With `create`, missing directories are
    /// made; without, a missing one gives `None`.
    fn parent(&self, path: &RelPath, create: bool) -> Result<Option<OwnedFd>, FsError> {
        let parts: Vec<&str> = path.components().collect();
        let mut dir = rustix::io::dup(&self.dir).map_err(|e| FsError::io(path, e))?;
        let mut walked = String::new();
        for part in &parts[..parts.len() - 1] {
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(part);
            let opened = match rustix::fs::openat(&dir, *part, DIR_FLAGS, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&dir, *part, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(FsError::io(path, e)),
                    }
                    rustix::fs::openat(&dir, *part, DIR_FLAGS, Mode::empty())
                }
                other => other,
            };
            dir = match opened {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Ok(None),
                // O_NOFOLLOW on a symlink gives ELOOP; O_DIRECTORY on a
                // file gives ENOTDIR (a symlink to a dir may too).
                Err(Errno::LOOP) => return Err(self.symlink(path, &walked)),
                Err(Errno::NOTDIR) => {
                    return Err(
                        match rustix::fs::statat(&dir, *part, AtFlags::SYMLINK_NOFOLLOW) {
                            Ok(st)
                                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                                    == rustix::fs::FileType::Symlink =>
                            {
                                self.symlink(path, &walked)
                            }
                            _ => FsError::NotADirectory {
                                path: path.to_string(),
                                at: walked,
                            },
                        },
                    );
                }
                Err(e) => return Err(FsError::io(path, e)),
            };
        }
        Ok(Some(dir))
    }

    fn symlink(&self, path: &RelPath, at: &str) -> FsError {
        FsError::Symlink {
            path: path.to_string(),
            at: at.to_owned(),
        }
    }

    /// The file at `path` as it is now, or `None` if absent. A symlink on
    /// the way or at the path is an error; so is a directory at the path
    /// ([`FsError::IsADirectory`]) or a file on the way
    /// ([`FsError::NotADirectory`]).
    pub fn stat(&self, path: &RelPath) -> Result<Option<Seen>, FsError> {
        let Some(dir) = self.parent(path, false)? else {
            return Ok(None);
        };
        match rustix::fs::statat(&dir, path.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match rustix::fs::FileType::from_raw_mode(st.st_mode) {
                rustix::fs::FileType::RegularFile => Ok(Some(seen_of(&st))),
                rustix::fs::FileType::Symlink => Err(self.symlink(path, path.as_str())),
                rustix::fs::FileType::Directory => Err(FsError::IsADirectory {
                    path: path.to_string(),
                }),
                _ => Err(FsError::Io {
                    path: path.to_string(),
                    source: std::io::Error::other("not a regular file"),
                }),
            },
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(FsError::io(path, e)),
        }
    }

    /// Opens the file at `path` for reading, without following symlinks.
    pub fn open_read(&self, path: &RelPath) -> Result<Option<File>, FsError> {
        let Some(dir) = self.parent(path, false)? else {
            return Ok(None);
        };
        match rustix::fs::openat(
            &dir,
            path.file_name(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::NOENT) => Ok(None),
            Err(Errno::LOOP) => Err(self.symlink(path, path.as_str())),
            Err(e) => Err(FsError::io(path, e)),
        }
    }

    /// Writes `path` whole and atomically: `fill` writes the content into a
    /// temporary file beside it, which is fsynced and renamed over `path`,
    /// and the directory is fsynced. A reader never sees a partial file.
    /// Returns the new file's state.
    pub fn write(
        &self,
        path: &RelPath,
        fill: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<Seen, FsError> {
        let mut batch = WriteBatch::new(self);
        let seen = batch.stage(path, None, fill)?;
        batch.commit()?;
        Ok(seen)
    }

    /// Stages a write of `path` in `batch`: the content goes to a
    /// temporary file beside it now; [`WriteBatch::commit`] makes it the
    /// file. Returns the state the file will have.
    fn stage(
        &self,
        batch: &mut WriteBatch<'_>,
        path: &RelPath,
        expect: Option<Option<Seen>>,
        fill: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<Seen, FsError> {
        let dir = self
            .parent(path, true)?
            .expect("parent() creates what is missing");
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| FsError::io(path, std::io::Error::other(e)))?;
        let tmp = format!("{TEMP_PREFIX}{}", selves_wire::hex(&suffix));
        let mode = match rustix::fs::statat(&dir, path.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st)
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::Symlink =>
            {
                return Err(self.symlink(path, path.as_str()));
            }
            // Keep the permissions of the file being replaced.
            Ok(st) => Mode::from_raw_mode(st.st_mode & 0o777),
            Err(_) => Mode::from_raw_mode(0o644),
        };
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            mode,
        )
        .map_err(|e| FsError::io(path, e))?;
        let mut file = File::from(fd);
        let result = (|| {
            fill(&mut file)?;
            file.flush()?;
            rustix::fs::fchmod(&file, mode)?;
            Ok::<_, std::io::Error>(seen_of(&rustix::fs::fstat(&file)?))
        })();
        match result {
            Ok(seen) => {
                batch.staged.push(Staged {
                    dir,
                    tmp,
                    path: path.clone(),
                    expect,
                });
                Ok(seen)
            }
            Err(e) => {
                let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
                Err(FsError::io(path, e))
            }
        }
    }

    /// Removes the file at `path`; `false` if it was not there.
    pub fn remove(&self, path: &RelPath) -> Result<bool, FsError> {
        let Some(dir) = self.parent(path, false)? else {
            return Ok(false);
        };
        match rustix::fs::unlinkat(&dir, path.file_name(), AtFlags::empty()) {
            Ok(()) => {
                rustix::fs::fsync(&dir).map_err(|e| FsError::io(path, e))?;
                self.remove_empty_parents(path);
                Ok(true)
            }
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(FsError::io(path, e)),
        }
    }

    /// Removes the folders above `path` that its removal left empty,
    /// deepest first, as the peer that deleted the file did; stops at the
    /// first that still holds anything (an untracked or ignored file
    /// keeps its folder). Best effort: a folder left behind loses nothing.
    fn remove_empty_parents(&self, path: &RelPath) {
        let parts: Vec<&str> = path.components().collect();
        for depth in (1..parts.len()).rev() {
            let Ok(folder) = RelPath::parse(&parts[..depth].join("/")) else {
                return;
            };
            let Ok(Some(parent)) = self.parent(&folder, false) else {
                return;
            };
            if rustix::fs::unlinkat(&parent, folder.file_name(), AtFlags::REMOVEDIR).is_err() {
                return;
            }
            let _ = rustix::fs::fsync(&parent);
        }
    }
}

/// Writes made durable together: each staged file is complete in its
/// temporary file before any is renamed into place, and nothing is
/// renamed until every one is on disk (one `syncfs` for many files instead
/// of an fsync each). A batch dropped uncommitted removes its temporary
/// files and leaves every target as it was.
pub struct WriteBatch<'r> {
    root: &'r Root,
    staged: Vec<Staged>,
}

struct Staged {
    dir: OwnedFd,
    tmp: String,
    path: RelPath,
    /// What the target must still be when it is replaced (`None`: absent);
    /// not checked if unset.
    expect: Option<Option<Seen>>,
}

impl<'r> WriteBatch<'r> {
    pub fn new(root: &'r Root) -> Self {
        WriteBatch {
            root,
            staged: Vec::new(),
        }
    }

    /// Stages `path`'s new content (see [`Root::write`]). With `expect`,
    /// the commit refuses to replace the file if it no longer is in that
    /// state ([`FsError::Changed`]).
    pub fn stage(
        &mut self,
        path: &RelPath,
        expect: Option<Option<Seen>>,
        fill: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<Seen, FsError> {
        let root = self.root;
        root.stage(self, path, expect, fill)
    }

    /// Whether a write of `path` is staged.
    pub fn holds(&self, path: &RelPath) -> bool {
        self.staged.iter().any(|s| &s.path == path)
    }

    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Makes every staged write durable, checks no target changed, then
    /// renames them all into place and fsyncs their directories.
    pub fn commit(&mut self) -> Result<(), FsError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let first = &self.staged[0];
        if self.staged.len() == 1 {
            let fd = rustix::fs::openat(
                &first.dir,
                first.tmp.as_str(),
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| FsError::io(&first.path, e))?;
            rustix::fs::fsync(&fd).map_err(|e| FsError::io(&first.path, e))?;
        } else {
            rustix::fs::syncfs(&self.root.dir).map_err(|e| FsError::io(&first.path, e))?;
        }
        for s in &self.staged {
            let Some(expect) = s.expect else { continue };
            let now =
                match rustix::fs::statat(&s.dir, s.path.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => Some(seen_of(&st)),
                    Err(Errno::NOENT) => None,
                    Err(e) => return Err(FsError::io(&s.path, e)),
                };
            if now != expect {
                return Err(FsError::Changed {
                    path: s.path.to_string(),
                });
            }
        }
        let mut dirs: Vec<(rustix::fs::Stat, &OwnedFd)> = Vec::new();
        for s in &self.staged {
            rustix::fs::renameat(&s.dir, s.tmp.as_str(), &s.dir, s.path.file_name())
                .map_err(|e| FsError::io(&s.path, e))?;
            let st = rustix::fs::fstat(&s.dir).map_err(|e| FsError::io(&s.path, e))?;
            if !dirs
                .iter()
                .any(|(d, _)| d.st_ino == st.st_ino && d.st_dev == st.st_dev)
            {
                dirs.push((st, &s.dir));
            }
        }
        // The renames made durable: an fsync per directory, or for many
        // directories one more syncfs (one journal commit for all).
        if dirs.len() > 2 {
            rustix::fs::syncfs(&self.root.dir).map_err(|e| FsError::io(&first.path, e))?;
        } else {
            for (_, dir) in dirs {
                rustix::fs::fsync(dir).map_err(|e| FsError::io(&self.staged[0].path, e))?;
            }
        }
        self.staged.clear();
        Ok(())
    }
}

impl Drop for WriteBatch<'_> {
    fn drop(&mut self) {
        for s in self.staged.drain(..) {
            let _ = rustix::fs::unlinkat(&s.dir, s.tmp.as_str(), AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn writes_reads_and_removes_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let seen = root
            .write(&p("a/b/c.md"), |f| f.write_all(b"hello"))
            .unwrap();
        assert_eq!(seen.size, 5);
        assert_eq!(root.stat(&p("a/b/c.md")).unwrap(), Some(seen));
        let mut s = String::new();
        root.open_read(&p("a/b/c.md"))
            .unwrap()
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "hello");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["c.md"]);
        assert!(root.remove(&p("a/b/c.md")).unwrap());
        assert!(!root.remove(&p("a/b/c.md")).unwrap());
        assert_eq!(root.stat(&p("a/b/c.md")).unwrap(), None);
        assert_eq!(root.stat(&p("nope/x")).unwrap(), None);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        root.write(&p("x.md"), |f| f.write_all(b"old")).unwrap();
        let err = root.write(&p("x.md"), |f| {
            f.write_all(b"partial")?;
            Err(std::io::Error::other("cut off"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(dir.path().join("x.md")).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlinks_on_the_way_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), dir.path().join("file-link")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        for path in ["link/x.md", "link/deeper/x.md", "file-link"] {
            let err = root
                .write(&p(path), |f| f.write_all(b"escape"))
                .unwrap_err();
            assert!(matches!(err, FsError::Symlink { .. }), "{path}: {err}");
            assert!(
                matches!(root.stat(&p(path)), Err(FsError::Symlink { .. })),
                "{path}"
            );
        }
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing written outside"
        );
    }

    #[test]
    fn keeps_the_mode_of_the_file_it_replaces() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        root.write(&p("run.sh"), |f| f.write_all(b"#!/bin/sh"))
            .unwrap();
        std::fs::set_permissions(
            dir.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        root.write(&p("run.sh"), |f| f.write_all(b"#!/bin/sh\necho"))
            .unwrap();
        let mode = std::fs::metadata(dir.path().join("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755);
    }

    #[test]
    fn a_batch_replaces_nothing_if_a_target_changed_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let before = root.write(&p("a.md"), |f| f.write_all(b"a1")).unwrap();
        let mut batch = WriteBatch::new(&root);
        batch
            .stage(&p("a.md"), Some(Some(before)), |f| f.write_all(b"a2"))
            .unwrap();
        batch
            .stage(&p("d/b.md"), Some(None), |f| f.write_all(b"b"))
            .unwrap();
        assert!(batch.holds(&p("d/b.md")));
        // The user saves a.md while the batch is staged.
        std::thread::sleep(std::time::Duration::from_millis(5));
        std::fs::write(dir.path().join("a.md"), b"user edit").unwrap();
        assert!(matches!(batch.commit(), Err(FsError::Changed { .. })));
        drop(batch);
        assert_eq!(
            std::fs::read(dir.path().join("a.md")).unwrap(),
            b"user edit"
        );
        assert!(!dir.path().join("d/b.md").exists());
        let left: Vec<_> = walk_names(dir.path());
        assert_eq!(left, ["a.md", "d"], "no temporary file is left");

        let mut batch = WriteBatch::new(&root);
        let seen = batch
            .stage(&p("d/b.md"), Some(None), |f| f.write_all(b"b"))
            .unwrap();
        batch
            .stage(&p("c.md"), None, |f| f.write_all(b"c"))
            .unwrap();
        batch.commit().unwrap();
        assert_eq!(root.stat(&p("d/b.md")).unwrap(), Some(seen));
        assert_eq!(std::fs::read(dir.path().join("c.md")).unwrap(), b"c");
    }

    fn walk_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_missing_root_says_so() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Root::open(&dir.path().join("gone")),
            Err(FsError::RootMissing(_))
        ));
    }
}
