//! A btrfs filesystem of a test's own: a sparse file in `/tmp`, formatted and mounted
//! through a loop device (needs root and btrfs-progs: check with [`require`] first).
//!
//! ```no_run
//! use powerstrip_testenv::btrfs::{self, TestPool};
//!
//! if !btrfs::require() {
//!     return; // "SKIPPED: ..." was printed (a panic under CI=true)
//! }
//! let pool = TestPool::new(1 << 30); // 1 GiB, sparse: costs what is written
//! std::fs::write(pool.path().join("hello"), b"on btrfs").unwrap();
//! // dropped: unmounted, loop device detached, files removed
//! ```
//!
//! Each pool lives in `/tmp/powerstrip-testpool-<pid>-<n>/` (`image`, `mnt/`). Dropping
//! it unmounts (lazily when something still uses it), detaches the loop device and
//! removes the directory. When the test binary dies without dropping it (killed, or
//! `process::exit`), a watchdog process beside each pool does the same as soon as the
//! binary is gone; and every new pool first removes the pools of test processes of this
//! machine that are no longer alive, should a watchdog have been killed too.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// What to do when btrfs-progs is missing, for [`crate::require`].
pub const INSTALL_HINT: &str = "scripts/ensure-tools test installs btrfs-progs";

/// The prefix of every pool's directory name (then `<pid>-<n>`).
const PREFIX: &str = "powerstrip-testpool-";

/// Whether btrfs pools can be made here: `mkfs.btrfs` is installed and this process is
/// root (mounting needs it). When not, prints "SKIPPED: ..." and returns false — or, under
/// `CI=true`, panics.
pub fn require() -> bool {
    if !crate::require("mkfs.btrfs", INSTALL_HINT) {
        return false;
    }
    if is_root() {
        return true;
    }
    let problem = "btrfs test pools need root (to mount a loop device)";
    if crate::in_ci() {
        panic!("{problem}; CI=true: missing components fail here");
    }
    eprintln!("SKIPPED: {problem}");
    false
}

/// Whether this process's effective user is root (from `/proc/self/status`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A mounted btrfs filesystem on a loop file, removed when dropped (see the module's
/// documentation).
#[derive(Debug)]
pub struct TestPool {
    /// `/tmp/powerstrip-testpool-<pid>-<n>`: everything of this pool is in it.
    dir: PathBuf,
    /// `<dir>/image`, the sparse file.
    image: PathBuf,
    /// `<dir>/mnt`, where the filesystem is mounted.
    mountpoint: PathBuf,
    /// The watchdog shell that cleans up if this process dies first.
    watchdog: Option<Child>,
}

/// Numbers pools within this process.
static NEXT: AtomicU32 = AtomicU32::new(0);

impl TestPool {
    /// Makes a btrfs filesystem of `size_bytes` (at least ~120 MiB for btrfs's defaults; a
    /// sparse file, so a large size costs nothing until written) and mounts it. Panics when
    /// that fails (after removing what it made). Call [`require`] first.
    pub fn new(size_bytes: u64) -> TestPool {
        Self::watched_by(size_bytes, std::process::id())
    }

    /// [`TestPool::new`], its watchdog watching process `parent` instead of this one.
    fn watched_by(size_bytes: u64, parent: u32) -> TestPool {
        clean_stale();
        let pid = std::process::id();
        let base = std::env::temp_dir();
        let dir = loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("{PREFIX}{pid}-{n}"));
            match std::fs::create_dir(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create {}: {e}", dir.display()),
            }
        };
        let mut pool = TestPool {
            image: dir.join("image"),
            mountpoint: dir.join("mnt"),
            dir,
            watchdog: None,
        };
        // The watchdog first: from here on, a dying test process leaves nothing behind.
        pool.watchdog = Some(spawn_watchdog(
            parent,
            &pool.dir,
            &pool.image,
            &pool.mountpoint,
        ));
        // From here on, a panic drops `pool`, which cleans up.
        let file = std::fs::File::create(&pool.image)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", pool.image.display()));
        file.set_len(size_bytes)
            .unwrap_or_else(|e| panic!("cannot size {}: {e}", pool.image.display()));
        drop(file);
        run("mkfs.btrfs", &["-q".as_ref(), pool.image.as_os_str()]);
        std::fs::create_dir(&pool.mountpoint)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", pool.mountpoint.display()));
        run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                pool.image.as_os_str(),
                pool.mountpoint.as_os_str(),
            ],
        );
        pool
    }

    /// Where the filesystem is mounted (its top-level subvolume).
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The image file.
    pub fn image(&self) -> &Path {
        &self.image
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            // Its TERM trap exits without touching anything: cleaning up is done here.
            let _ = Command::new("kill")
                .args(["-TERM", &watchdog.id().to_string()])
                .status();
            let _ = watchdog.wait();
        }
        if let Err(problem) = remove(&self.dir, &self.image, &self.mountpoint) {
            eprintln!("warning: test pool {}: {problem}", self.dir.display());
        }
    }
}

/// Runs `program args`; panics with its stderr when it fails.
fn run(program: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {:?}: {}",
        args,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Whether something is mounted at `mountpoint` (from `/proc/self/mountinfo`).
fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // Paths of ours have no characters mountinfo escapes.
    let wanted = mountpoint.to_string_lossy();
    table
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_ref()))
}

/// The loop devices attached to `image` (`losetup -j`).
fn loop_devices(image: &Path) -> Vec<String> {
    Command::new("losetup")
        .args(["-n", "-O", "NAME", "-j"])
        .arg(image)
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Unmounts `mountpoint` (retrying while busy, then lazily), waits for the loop device to
/// detach itself (detaching it when it does not) and removes `dir`.
fn remove(dir: &Path, image: &Path, mountpoint: &Path) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut lazily = false;
    let deadline = Instant::now() + Duration::from_secs(2);
    while is_mounted(mountpoint) {
        let out = Command::new("umount").arg(mountpoint).output();
        if out.as_ref().is_ok_and(|o| o.status.success()) {
            continue;
        }
        if Instant::now() >= deadline {
            // Busy for good (a process still has files open): detach it from the tree now;
            // the kernel finishes when the last user goes.
            lazily = true;
            let lazy = Command::new("umount").arg("-l").arg(mountpoint).output();
            if !lazy.as_ref().is_ok_and(|o| o.status.success()) {
                problems.push(format!(
                    "cannot unmount {}: {}",
                    mountpoint.display(),
                    lazy.map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
                        .unwrap_or_else(|e| e.to_string())
                ));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // `mount -o loop` makes the device detach itself when the filesystem goes; the kernel
    // does it a moment later (after a lazy unmount: when the last user goes).
    let deadline = Instant::now() + Duration::from_secs(if lazily { 0 } else { 5 });
    while !loop_devices(image).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for device in loop_devices(image) {
        // On a device still in use (a lazy unmount), this sets it to detach at the end.
        let _ = Command::new("losetup").args(["-d", &device]).status();
    }
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        problems.push(format!("cannot remove {}: {e}", dir.display()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Starts the shell that, once process `parent` is gone, unmounts and removes the pool.
fn spawn_watchdog(parent: u32, dir: &Path, image: &Path, mountpoint: &Path) -> Child {
    let script = format!(
        "trap 'exit 0' TERM INT; \
         while kill -0 {parent} 2>/dev/null; do sleep 0.3; done; \
         umount '{mnt}' 2>/dev/null || umount -l '{mnt}' 2>/dev/null; \
         i=0; while [ -n \"$(losetup -n -O NAME -j '{image}' 2>/dev/null)\" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; \
         for d in $(losetup -n -O NAME -j '{image}' 2>/dev/null); do losetup -d \"$d\"; done; \
         rm -rf '{dir}'",
        mnt = mountpoint.display(),
        image = image.display(),
        dir = dir.display(),
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the test pool's watchdog: {e}"))
}

/// Removes the pools of processes of this machine that are gone (`<PREFIX><pid>-<n>` in
/// the temporary directory, `/proc/<pid>` missing).
fn clean_stale() {
    let base = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        eprintln!(
            "note: removing test pool {} of process {pid}, which is gone",
            dir.display()
        );
        if let Err(problem) = remove(&dir, &dir.join("image"), &dir.join("mnt")) {
            eprintln!("warning: stale test pool {}: {problem}", dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `path` is on btrfs (`stat -f`).
    fn on_btrfs(path: &Path) -> bool {
        Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(path)
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "btrfs")
    }

    fn gone(pool_dir: &Path, image: &Path, mountpoint: &Path) -> bool {
        !is_mounted(mountpoint) && loop_devices(image).is_empty() && !pool_dir.exists()
    }

    #[test]
    fn a_pool_is_btrfs_and_leaves_nothing_when_dropped() {
        if !require() {
            return;
        }
        let pool = TestPool::new(256 << 20);
        assert!(
            on_btrfs(pool.path()),
            "{} is not on btrfs",
            pool.path().display()
        );
        std::fs::write(pool.path().join("file"), b"data").expect("write into the pool");
        assert_eq!(loop_devices(pool.image()).len(), 1);
        let (dir, image, mnt) = (
            pool.dir.clone(),
            pool.image.clone(),
            pool.mountpoint.clone(),
        );
        drop(pool);
        assert!(
            gone(&dir, &image, &mnt),
            "{} left something behind",
            dir.display()
        );
    }

    #[test]
    fn a_busy_pool_is_unmounted_lazily() {
        if !require() {
            return;
        }
        let pool = TestPool::new(256 << 20);
        let (dir, image, mnt) = (
            pool.dir.clone(),
            pool.image.clone(),
            pool.mountpoint.clone(),
        );
        // A process with its working directory in the pool keeps it busy.
        let mut busy = Command::new("sleep")
            .arg("30")
            .current_dir(pool.path())
            .spawn()
            .expect("sleep");
        drop(pool);
        assert!(!is_mounted(&mnt), "still mounted");
        let _ = busy.kill();
        let _ = busy.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !loop_devices(&image).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            gone(&dir, &image, &mnt),
            "{} left something behind",
            dir.display()
        );
    }

    #[test]
    fn the_watchdog_cleans_up_when_the_test_process_dies() {
        if !require() {
            return;
        }
        // Stand-in for the test binary: a process that we kill.
        let mut parent = Command::new("sleep").arg("30").spawn().expect("sleep");
        let pool = TestPool::watched_by(256 << 20, parent.id());
        let (dir, image, mnt) = (
            pool.dir.clone(),
            pool.image.clone(),
            pool.mountpoint.clone(),
        );
        assert!(is_mounted(&mnt));
        let _ = parent.kill();
        let _ = parent.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone(&dir, &image, &mnt) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            gone(&dir, &image, &mnt),
            "the watchdog left {} behind",
            dir.display()
        );
        drop(pool); // Nothing left to do: no complaint.
    }

    #[test]
    fn pools_of_dead_processes_are_removed() {
        if !require() {
            return;
        }
        // A pid that is no longer alive: a process that has exited.
        let mut dead = Command::new("true").spawn().expect("true");
        let pid = dead.id();
        let _ = dead.wait();
        // Made under another name and renamed, so that no other test's pool removes it
        // half-made.
        let setup =
            std::env::temp_dir().join(format!("powerstrip-stale-setup-{}", std::process::id()));
        std::fs::create_dir_all(setup.join("mnt")).expect("stale pool directory");
        std::fs::File::create(setup.join("image"))
            .and_then(|f| f.set_len(256 << 20))
            .expect("stale image");
        run(
            "mkfs.btrfs",
            &["-q".as_ref(), setup.join("image").as_os_str()],
        );
        run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                setup.join("image").as_os_str(),
                setup.join("mnt").as_os_str(),
            ],
        );
        let dir = std::env::temp_dir().join(format!("{PREFIX}{pid}-0"));
        let (image, mnt) = (dir.join("image"), dir.join("mnt"));
        std::fs::rename(&setup, &dir).expect("rename the stale pool into place");
        assert!(is_mounted(&mnt));
        let pool = TestPool::new(256 << 20);
        assert!(
            gone(&dir, &image, &mnt),
            "the stale pool {} is still there",
            dir.display()
        );
        drop(pool);
    }
}
