//! A home on a full disk: reading commands work, writing ones fail with a
//! clear error and lose nothing, and everything works again once there is
//! room. The disk is a small tmpfs the test mounts (root only: CI runs as
//! root; elsewhere the test says it is skipped).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Node, rows};

/// A node's home moved onto a tmpfs of its own, then filled to the brim.
struct FullDisk {
    mount: PathBuf,
    filler: PathBuf,
}

impl FullDisk {
    fn under(node: &Node) -> Option<FullDisk> {
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("CI").is_none(),
                "the disk-full tests mount a tmpfs and need root (CI runs as root)"
            );
            eprintln!("skipping: mounting a small disk needs root");
            return None;
        }
        let home = node.home();
        let aside = node.dir.path().join("home-aside");
        std::fs::rename(&home, &aside).unwrap();
        std::fs::create_dir(&home).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs"])
            .arg(&home)
            .status()
            .unwrap();
        assert!(ok.success(), "mount failed");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", aside.display()))
            .arg(&home)
            .status()
            .unwrap();
        assert!(copied.success());
        let disk = FullDisk {
            mount: home.clone(),
            filler: home.join("zz-filler"),
        };
        disk.fill();
        Some(disk)
    }

    /// Writes zeros until the disk says no more.
    fn fill(&self) {
        let mut f = std::fs::File::create(&self.filler).unwrap();
        let block = vec![0u8; 64 << 10];
        loop {
            if let Err(e) = f.write_all(&block) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
        // The last bytes, a page at a time.
        while f.write_all(&block[..512]).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(&self.filler).unwrap();
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

fn assert_full(path: &Path) {
    let st = rustix_statvfs(path);
    assert!(st < 64 << 10, "{st} bytes still free");
}

/// Bytes free on the file system holding `path`.
fn rustix_statvfs(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

#[test]
fn reading_works_on_a_full_disk_and_writing_fails_clearly_losing_nothing() {
    let node = Node::new("full");
    node.import(&rows("before the disk filled up", "c1", 40, 300));
    node.ok(&["remember", "a note written before"]);
    let before = node.export();
    let Some(disk) = FullDisk::under(&node) else {
        return;
    };
    assert_full(&node.home());
    // Reading commands work.
    let out = node.ok(&["search", "filled"]);
    assert!(out.contains("before the disk filled up"), "{out}");
    assert_eq!(node.export(), before);
    let out = node.ok(&["status"]);
    assert!(out.contains("is full: nothing can be written"), "{out}");
    node.json(&["status", "--json"]);
    let brief = node.fails(&["status", "--brief"], 2);
    assert!(brief.stdout.contains("is full"), "{brief:?}");
    node.ok(&["check"]);
    node.ok(&["identity"]);
    node.ok(&["peer", "list"]);
    node.ok(&["conflicts"]);
    // Writing fails, says why, and changes nothing.
    let run = node.run(&["remember", "a note that cannot be written"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("is full: selves can read but not write"),
        "{run:?}"
    );
    assert_eq!(node.export(), before);
    // Room again: all is well, and nothing was lost.
    disk.free();
    node.ok(&["remember", "a note written after"]);
    let after = node.export();
    assert_eq!(after.len(), before.len() + 1);
    node.ok(&["check"]);
    node.ok(&["status", "--brief"]);
}

/// A remote fetched into a home whose disk is full: the round fails saying
/// so, nothing is half applied, and the next round after room is made
/// brings everything.
#[test]
fn fetching_from_a_remote_onto_a_full_disk_fails_clearly_then_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("folder:{}", dir.path().display());
    let writer = Node::new("writer");
    writer.ok(&["remote", "add", "sync", &url]);
    writer.ok(&["sync", "sync"]);
    let line = writer.ok(&["remote", "invite", "sync"]);
    let reader = Node::new("reader");
    reader.ok(&["remote", "join", line.trim()]);
    writer.import(&rows("carried while the disk was full", "c9", 300, 2000));
    writer.ok(&["sync", "sync"]);
    let Some(disk) = FullDisk::under(&reader) else {
        return;
    };
    let small = reader.home().join("blobs/small.db");
    let before = std::fs::read(&small).unwrap();
    let run = reader.run(&["sync", "sync"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("is full"), "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
    // The blob store is not mistaken for damaged and dropped.
    assert!(!run.stderr.contains("damaged"), "{run:?}");
    assert_eq!(std::fs::read(&small).unwrap(), before);
    disk.free();
    reader.ok(&["check"]);
    reader.ok(&["sync", "sync"]);
    assert_eq!(reader.rows(), 300);
    reader.ok(&["verify", "sync"]);
}
