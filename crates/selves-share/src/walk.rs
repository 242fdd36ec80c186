//! Walking a share's folder: every regular file not ignored, with its
//! `stat`, and every file that cannot be synced with the reason.
//!
//! Ignored: the built-in patterns below (secrets, live databases, editor
//! and OS junk, git internals, selves' own temporary files) and whatever the
//! share's `.selvesignore` files say (gitignore syntax, one per directory).
//! Symlinks are never followed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use selves_store::Seen;
use selves_wire::file::RelPath;

use crate::fsops::FsError;

/// Never synced, whatever `.selvesignore` says.
pub const BUILT_IN_IGNORES: &[&str] = &[
    // Generated on every node from the node cards (never a conflict).
    "/SELVES.md",
    // Secrets.
    ".env*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".ssh/",
    ".gnupg/",
    ".credentials/",
    "*.kdbx",
    // Live databases: syncing them as bytes corrupts them.
    "*.db",
    "*.sqlite*",
    "*.db-journal",
    "*-wal",
    "*-shm",
    // Version control internals.
    ".git/",
    ".hg/",
    ".svn/",
    // Editor and OS junk.
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    "*.swp",
    "*.swo",
    "*~",
    ".#*",
    "#*#",
    ".~lock.*",
];

/// The name of the per-directory ignore file.
pub const IGNORE_FILE: &str = ".selvesignore";

/// A file found in the folder.
#[derive(Debug, Clone)]
pub struct Found {
    pub path: RelPath,
    pub seen: Seen,
}

/// A file that cannot be synced, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The name as found (lossy if not UTF-8).
    pub path: String,
    pub kind: &'static str,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Walked {
    pub files: Vec<Found>,
    pub skipped: Vec<Skipped>,
    /// selves' own temporary files (never synced; left over from a crash
    /// unless a write is in progress).
    pub temps: Vec<std::path::PathBuf>,
}

/// The built-in rules, as a gitignore rooted at `root`.
fn built_in(root: &Path) -> Gitignore {
    let mut b = GitignoreBuilder::new(root);
    for pattern in BUILT_IN_IGNORES {
        b.add_line(None, pattern)
            .expect("built-in patterns are valid globs");
    }
    b.build().expect("built-in patterns are valid")
}

/// A directory to read: its path, its path relative to the root, and the
/// `.selvesignore` rules in force there (innermost last).
type Task = (PathBuf, String, Vec<Arc<Gitignore>>);

/// Directories waiting to be read, and how many are being read.
struct Queue {
    state: Mutex<(Vec<Task>, usize)>,
    changed: Condvar,
}

/// Walks `root`. Directories are read relative to the one before and
/// entries stat'ed relative to their directory, by a few threads at once:
/// a folder of ten thousand files costs ten thousand cheap `statx` calls,
/// spread over the cores.
pub fn walk(root: &Path) -> Result<Walked, FsError> {
    if !root.is_dir() {
        return Err(FsError::RootMissing(root.to_owned()));
    }
    let built_in = built_in(root);
    let queue = Queue {
        state: Mutex::new((vec![(root.to_owned(), String::new(), Vec::new())], 0)),
        changed: Condvar::new(),
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
    let parts: Vec<Walked> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| worker(&queue, &built_in)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let mut out = Walked::default();
    for p in parts {
        out.files.extend(p.files);
        out.skipped.extend(p.skipped);
        out.temps.extend(p.temps);
    }
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    out.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn worker(queue: &Queue, built_in: &Gitignore) -> Walked {
    let mut out = Walked::default();
    loop {
        let task = {
            let mut state = queue.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(t) = state.0.pop() {
                    state.1 += 1;
                    break Some(t);
                }
                if state.1 == 0 {
                    break None;
                }
                state = queue.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
        };
        let Some(task) = task else {
            queue.changed.notify_all();
            return out;
        };
        let mut subdirs = Vec::new();
        read_dir(task, built_in, &mut out, &mut subdirs);
        let mut state = queue.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0.extend(subdirs);
        state.1 -= 1;
        drop(state);
        queue.changed.notify_all();
    }
}

/// Reads one directory: its files into `out`, its subdirectories into
/// `subdirs`.
fn read_dir(task: Task, built_in: &Gitignore, out: &mut Walked, subdirs: &mut Vec<Task>) {
    let (dir, rel_dir, mut rules) = task;
    let own = dir.join(IGNORE_FILE);
    if own.is_file() {
        let mut b = GitignoreBuilder::new(&dir);
        if let Some(e) = b.add(&own) {
            out.skipped.push(Skipped {
                path: join(&rel_dir, IGNORE_FILE),
                kind: "ignore-file",
                reason: format!("some of its rules could not be read: {e}"),
            });
        }
        if let Ok(g) = b.build() {
            rules.push(Arc::new(g));
        }
    }
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => {
            out.skipped.push(Skipped {
                path: rel_dir.clone(),
                kind: "unreadable",
                reason: e.to_string(),
            });
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.skipped.push(Skipped {
                    path: rel_dir.clone(),
                    kind: "unreadable",
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let file_name = entry.file_name();
        let shown = join(&rel_dir, &file_name.to_string_lossy());
        let full = entry.path();
        let is_dir = kind.is_dir();
        if built_in.matched(&full, is_dir).is_ignore() {
            continue;
        }
        if is_ignored(&rules, &full, is_dir) {
            continue;
        }
        if kind.is_symlink() {
            out.skipped.push(Skipped {
                path: shown,
                kind: "symlink",
                reason: "symlinks are not synced".into(),
            });
            continue;
        }
        let Some(name) = file_name.to_str() else {
            out.skipped.push(Skipped {
                path: shown,
                kind: "name",
                reason: "the name is not UTF-8".into(),
            });
            continue;
        };
        if is_dir {
            subdirs.push((full, join(&rel_dir, name), rules.clone()));
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        if name.starts_with(selves_wire::file::TEMP_PREFIX) {
            out.temps.push(full);
            continue;
        }
        let rel = join(&rel_dir, name);
        let path = match RelPath::parse(&rel) {
            Ok(p) => p,
            Err(e) => {
                out.skipped.push(Skipped {
                    path: shown,
                    kind: "name",
                    reason: e.why.into(),
                });
                continue;
            }
        };
        if path.as_str() != rel {
            // On Linux a name and its NFC form are two files; selves
            // syncs only NFC names, so the other one stays here,
            // reported.
            out.skipped.push(Skipped {
                path: shown,
                kind: "name",
                reason: format!(
                    "the name is not in Unicode NFC form; rename it to {:?} to sync it",
                    path.as_str()
                ),
            });
            continue;
        }
        // Relative to the open directory: no walk down the whole path.
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) => {
                out.skipped.push(Skipped {
                    path: shown,
                    kind: "unreadable",
                    reason: e.to_string(),
                });
                continue;
            }
        };
        use std::os::unix::fs::MetadataExt as _;
        out.files.push(Found {
            path,
            seen: Seen {
                size: meta.len(),
                mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                ino: meta.ino(),
            },
        });
    }
}

/// Whether the innermost `.selvesignore` with a say on `path` ignores it.
fn is_ignored(rules: &[Arc<Gitignore>], path: &Path, is_dir: bool) -> bool {
    for g in rules.iter().rev() {
        match g.matched(path, is_dir) {
            Match::None => continue,
            Match::Ignore(_) => return true,
            Match::Whitelist(_) => return false,
        }
    }
    false
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, name: &str) {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn built_in_and_user_ignores() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for name in [
            "notes.md",
            "sub/deep.md",
            ".env",
            ".env.local",
            "cert.pem",
            "id_rsa",
            "id_ed25519.pub",
            ".ssh/config",
            "a/.credentials/x",
            "vault.kdbx",
            "memory.db",
            "x.sqlite3",
            "x.db-wal",
            "y-shm",
            ".git/HEAD",
            ".DS_Store",
            "f.swp",
            "f~",
            ".selves-tmp-abc",
            "build/out.txt",
            "keep.log",
            "drop.log",
            ".selvesignore",
        ] {
            touch(r, name);
        }
        std::fs::write(r.join(".selvesignore"), "build/\ndrop.log\n").unwrap();
        let walked = walk(r).unwrap();
        let names: Vec<&str> = walked.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            names,
            [".selvesignore", "keep.log", "notes.md", "sub/deep.md"]
        );
        assert!(walked.skipped.is_empty(), "{:?}", walked.skipped);
        assert_eq!(walked.temps, [r.join(".selves-tmp-abc")]);
    }

    #[test]
    fn symlinks_and_odd_names_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        touch(r, "ok.md");
        touch(r, "caf\u{e9}.md");
        touch(r, "cafe\u{301}.md");
        touch(r, "only-nfd-e\u{301}.md");
        std::os::unix::fs::symlink("/etc", r.join("escape")).unwrap();
        std::os::unix::fs::symlink(r.join("ok.md"), r.join("alias.md")).unwrap();
        use std::os::unix::ffi::OsStrExt as _;
        std::fs::write(r.join(std::ffi::OsStr::from_bytes(b"bad\xffname")), b"x").unwrap();
        let walked = walk(r).unwrap();
        let names: Vec<&str> = walked.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["caf\u{e9}.md", "ok.md"]);
        let mut kinds: Vec<(&str, &str)> = walked
            .skipped
            .iter()
            .map(|s| (s.kind, s.path.as_str()))
            .collect();
        kinds.sort();
        assert_eq!(kinds.len(), 5, "{:?}", walked.skipped);
        assert!(kinds.contains(&("symlink", "escape")));
        assert!(kinds.contains(&("symlink", "alias.md")));
        assert!(
            walked
                .skipped
                .iter()
                .any(|s| s.reason.contains("not UTF-8"))
        );
        assert_eq!(
            walked
                .skipped
                .iter()
                .filter(|s| s.reason.contains("NFC"))
                .count(),
            2
        );
    }

    #[test]
    fn a_missing_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            walk(&dir.path().join("gone")),
            Err(FsError::RootMissing(_))
        ));
    }
}
