//! The storage backends against real filesystems: btrfs on loop files of the tests' own
//! ([`TestPool`]: root and btrfs-progs; without them the btrfs tests print "SKIPPED" — or
//! fail, under `CI=true`) and plain directories in a temporary directory of the host.
//!
//! One behavioural suite (`suite::*`) runs against both backends (`<name>::btrfs`,
//! `<name>::directory`); what only btrfs does (limits, incremental sends, read-only
//! snapshots, nested subvolumes) and the pool module (detection, loop images) follow.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;

use powerstrip_testenv::btrfs::{self as testbtrfs, TestPool};
use powerstrip_volumes::backend::directory::Directory;
use powerstrip_volumes::backend::pool::{self, Choice, Kind};
use powerstrip_volumes::backend::{Backend, BackendError};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A backend on a pool of its own, and what keeps the pool alive.
struct Fixture {
    backend: Arc<dyn Backend>,
    _pool: Keep,
}

enum Keep {
    Btrfs(#[allow(dead_code)] TestPool),
    Directory(#[allow(dead_code)] TempDir),
}

impl Fixture {
    /// A btrfs pool of `size` bytes; `None` (test skipped) without root or btrfs-progs.
    async fn btrfs(size: u64) -> Option<Fixture> {
        if !testbtrfs::require() {
            return None;
        }
        let pool = tokio::task::spawn_blocking(move || TestPool::new(size))
            .await
            .unwrap();
        let backend = pool::open(pool.path(), Choice::Btrfs).await.unwrap();
        assert_eq!(backend.kind(), "btrfs");
        Some(Fixture {
            backend,
            _pool: Keep::Btrfs(pool),
        })
    }

    /// A directory pool in a temporary directory of the host's filesystem.
    async fn directory() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let backend = pool::open(dir.path(), Choice::Directory).await.unwrap();
        assert_eq!(backend.kind(), "directory");
        Fixture {
            backend,
            _pool: Keep::Directory(dir),
        }
    }

    fn pool(&self) -> PathBuf {
        self.backend.pool()
    }
}

/// Runs `suite::<name>(backend)` on a btrfs pool and on a directory pool.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn btrfs() {
                let Some(fixture) = Fixture::btrfs(GIB).await else { return };
                suite::$name(&fixture).await;
            }

            #[tokio::test]
            async fn directory() {
                suite::$name(&Fixture::directory().await).await;
            }
        }
    )*};
}

/// Runs `suite::<name>(a, b)` between two btrfs pools and between two directory pools.
macro_rules! between_two {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn btrfs() {
                let Some(a) = Fixture::btrfs(GIB).await else { return };
                let Some(b) = Fixture::btrfs(GIB).await else { return };
                suite::$name(&a, &b).await;
            }

            #[tokio::test]
            async fn directory() {
                suite::$name(&Fixture::directory().await, &Fixture::directory().await).await;
            }
        }
    )*};
}

on_both!(
    create_write_read,
    snapshots_are_isolated,
    clones_are_writable_and_independent,
    destroy_and_delete_are_idempotent,
    listings_leave_out_incoming,
);
between_two!(send_receive_between_two_pools, a_cut_stream_leaves_nothing);

// --- Helpers ------------------------------------------------------------------------------

/// `len` bytes of a pseudo-random pattern (xorshift from `seed`): nothing compresses it.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sends snapshot `snapshot` (relative to `parent`) as bytes, and checks the sender
/// finished well.
async fn send_bytes(backend: &dyn Backend, snapshot: &str, parent: Option<&str>) -> Vec<u8> {
    let stream = backend.send(snapshot, parent).await.unwrap();
    let mut reader = stream.reader;
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.unwrap();
    stream.done.await.unwrap();
    bytes
}

fn stream_of(bytes: Vec<u8>) -> Pin<Box<dyn AsyncRead + Send>> {
    Box::pin(Cursor::new(bytes))
}

/// Flushes btrfs's transaction, so that qgroup numbers count what was written.
fn btrfs_sync(path: &Path) {
    let out = Command::new("btrfs")
        .args(["filesystem", "sync"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a tree holds, path by path: type, mode, owner, and contents or link target.
fn tree(root: &Path) -> BTreeMap<String, (String, u32, u32, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let (kind, content) = if meta.is_dir() {
                stack.push(path.clone());
                ("dir", Vec::new())
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                ("symlink", target.display().to_string().into_bytes())
            } else {
                ("file", std::fs::read(&path).unwrap())
            };
            out.insert(
                rel,
                (
                    kind.to_owned(),
                    meta.mode() & 0o7777,
                    meta.uid(),
                    meta.gid(),
                    content,
                ),
            );
        }
    }
    out
}

/// Asserts the two trees hold the same (without printing megabytes when they do not).
fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    assert_eq!(
        ta.keys().collect::<Vec<_>>(),
        tb.keys().collect::<Vec<_>>(),
        "{} and {} hold different paths",
        a.display(),
        b.display()
    );
    for (path, (kind, mode, uid, gid, content)) in &ta {
        let other = &tb[path];
        assert_eq!(
            (kind, mode, uid, gid),
            (&other.0, &other.1, &other.2, &other.3),
            "{path}: type, mode or owner differ"
        );
        assert!(*content == other.4, "{path}: contents differ");
    }
}

/// Entries in `<pool>/incoming`.
fn incoming(pool: &Path) -> Vec<String> {
    std::fs::read_dir(pool.join("incoming"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn raw_os_error(e: &std::io::Error) -> Option<nix::errno::Errno> {
    e.raw_os_error().map(nix::errno::Errno::from_raw)
}

// --- The suite, on either backend ---------------------------------------------------------

mod suite {
    use super::*;

    pub async fn create_write_read(f: &Fixture) {
        let b = &*f.backend;
        b.prepare().await.unwrap(); // twice: nothing
        let path = b.create("d1", Some(64 * MIB)).await.unwrap();
        assert_eq!(path, b.dataset_path("d1"));
        std::fs::create_dir(path.join("sub")).unwrap();
        std::fs::write(path.join("sub/file"), b"hello").unwrap();
        std::fs::write(path.join("big"), pattern(1, 3 * MIB as usize)).unwrap();
        assert_eq!(std::fs::read(path.join("sub/file")).unwrap(), b"hello");

        // Creating it again is nothing: same place, same data.
        assert_eq!(b.create("d1", Some(64 * MIB)).await.unwrap(), path);
        assert_eq!(std::fs::read(path.join("sub/file")).unwrap(), b"hello");
        assert_eq!(b.datasets().await.unwrap(), vec!["d1".to_owned()]);

        if b.kind() == "btrfs" {
            btrfs_sync(&b.pool());
        }
        let usage = b.usage("d1").await.unwrap();
        assert!(usage.used >= 3 * MIB, "{usage:?}");
        if b.limits_size() {
            assert_eq!(usage.limit, Some(64 * MIB));
            assert!(usage.available <= 61 * MIB, "{usage:?}");
        } else {
            assert_eq!(usage.limit, None);
        }
        let pool = b.pool_usage().await.unwrap();
        assert!(
            pool.available > 0 && pool.limit.is_some_and(|l| l > pool.used),
            "{pool:?}"
        );

        assert!(matches!(
            b.usage("nope").await,
            Err(BackendError::NotFound { .. })
        ));
        assert!(matches!(
            b.set_limit("nope", None).await,
            Err(BackendError::NotFound { .. })
        ));
        assert!(b.create("../escape", None).await.is_err());
    }

    pub async fn snapshots_are_isolated(f: &Fixture) {
        let b = &*f.backend;
        let data = b.create("d1", None).await.unwrap();
        std::fs::write(data.join("file"), b"v1").unwrap();
        b.snapshot("d1", "s1").await.unwrap();
        b.snapshot("d1", "s1").await.unwrap(); // exists: nothing
        assert_eq!(b.snapshots().await.unwrap(), vec!["s1".to_owned()]);

        // Written after the snapshot: not in it.
        std::fs::write(data.join("file"), b"v2").unwrap();
        std::fs::write(data.join("new"), b"new").unwrap();
        let snap = b.snapshot_path("s1");
        assert_eq!(std::fs::read(snap.join("file")).unwrap(), b"v1");
        assert!(!snap.join("new").exists());

        if b.kind() == "btrfs" {
            // Read-only.
            let err = std::fs::write(snap.join("file"), b"v3").unwrap_err();
            assert_eq!(raw_os_error(&err), Some(nix::errno::Errno::EROFS), "{err}");
            let err = std::fs::write(snap.join("other"), b"x").unwrap_err();
            assert_eq!(raw_os_error(&err), Some(nix::errno::Errno::EROFS), "{err}");
        } else {
            // Read-only by convention only: a write there still does not reach the dataset.
            std::fs::write(snap.join("file"), b"v3").unwrap();
            assert_eq!(std::fs::read(data.join("file")).unwrap(), b"v2");
        }
        assert!(matches!(
            b.snapshot("nope", "s2").await,
            Err(BackendError::NotFound { .. })
        ));
    }

    pub async fn clones_are_writable_and_independent(f: &Fixture) {
        let b = &*f.backend;
        let data = b.create("d1", None).await.unwrap();
        std::fs::write(data.join("file"), b"original").unwrap();
        b.snapshot("d1", "s1").await.unwrap();
        let clone = b.clone_snapshot("s1", "d2", Some(64 * MIB)).await.unwrap();
        assert_eq!(clone, b.dataset_path("d2"));
        assert_eq!(b.clone_snapshot("s1", "d2", None).await.unwrap(), clone); // nothing
        assert_eq!(std::fs::read(clone.join("file")).unwrap(), b"original");

        std::fs::write(clone.join("file"), b"clone").unwrap();
        std::fs::write(clone.join("only-in-clone"), b"x").unwrap();
        std::fs::write(data.join("only-in-original"), b"y").unwrap();
        assert_eq!(std::fs::read(data.join("file")).unwrap(), b"original");
        assert_eq!(
            std::fs::read(b.snapshot_path("s1").join("file")).unwrap(),
            b"original"
        );
        assert!(!data.join("only-in-clone").exists());
        assert!(!clone.join("only-in-original").exists());

        // The clone outlives its snapshot.
        b.delete_snapshot("s1").await.unwrap();
        assert_eq!(std::fs::read(clone.join("file")).unwrap(), b"clone");
        if b.limits_size() {
            assert_eq!(b.usage("d2").await.unwrap().limit, Some(64 * MIB));
        }
        assert_eq!(
            b.datasets().await.unwrap(),
            vec!["d1".to_owned(), "d2".to_owned()]
        );
        assert!(matches!(
            b.clone_snapshot("nope", "d3", None).await,
            Err(BackendError::NotFound { .. })
        ));
        assert!(!b.dataset_path("d3").exists());
    }

    pub async fn destroy_and_delete_are_idempotent(f: &Fixture) {
        let b = &*f.backend;
        let data = b.create("d1", None).await.unwrap();
        std::fs::create_dir_all(data.join("a/b/c")).unwrap();
        std::fs::write(data.join("a/b/c/file"), b"x").unwrap();
        b.snapshot("d1", "s1").await.unwrap();
        b.destroy("d1").await.unwrap();
        b.destroy("d1").await.unwrap();
        b.destroy("never").await.unwrap();
        assert!(!data.exists());
        assert!(b.datasets().await.unwrap().is_empty());
        // The snapshot does not depend on its dataset.
        assert_eq!(
            std::fs::read(b.snapshot_path("s1").join("a/b/c/file")).unwrap(),
            b"x"
        );
        b.delete_snapshot("s1").await.unwrap();
        b.delete_snapshot("s1").await.unwrap();
        b.delete_snapshot("never").await.unwrap();
        assert!(b.snapshots().await.unwrap().is_empty());
        assert!(incoming(&f.pool()).is_empty(), "{:?}", incoming(&f.pool()));
        // The id can be used again.
        let again = b.create("d1", None).await.unwrap();
        assert!(std::fs::read_dir(again).unwrap().next().is_none());
    }

    pub async fn listings_leave_out_incoming(f: &Fixture) {
        let b = &*f.backend;
        b.create("b-data", None).await.unwrap();
        b.create("a-data", None).await.unwrap();
        b.snapshot("a-data", "snap").await.unwrap();
        // What a receive that died would leave.
        let left = f.pool().join("incoming/4242");
        std::fs::create_dir_all(left.join("snap2/sub")).unwrap();
        std::fs::write(left.join("snap2/sub/file"), b"partial").unwrap();
        if b.kind() == "btrfs" {
            let out = Command::new("btrfs")
                .args(["subvolume", "create"])
                .arg(f.pool().join("incoming/4243"))
                .output()
                .unwrap();
            assert!(out.status.success());
        }
        assert_eq!(
            b.datasets().await.unwrap(),
            vec!["a-data".to_owned(), "b-data".to_owned()]
        );
        assert_eq!(b.snapshots().await.unwrap(), vec!["snap".to_owned()]);
        b.clean_incoming().await.unwrap();
        assert!(incoming(&f.pool()).is_empty(), "{:?}", incoming(&f.pool()));
        b.clean_incoming().await.unwrap();
        assert_eq!(b.snapshots().await.unwrap(), vec!["snap".to_owned()]);
    }

    pub async fn send_receive_between_two_pools(a: &Fixture, b: &Fixture) {
        let (src, dst) = (&*a.backend, &*b.backend);
        let data = src.create("d1", None).await.unwrap();
        std::fs::create_dir_all(data.join("dir/deeper")).unwrap();
        std::fs::write(data.join("empty"), b"").unwrap();
        std::fs::write(data.join("one"), b"1").unwrap();
        std::fs::write(
            data.join("dir/deeper/big"),
            pattern(7, 5 * MIB as usize + 123),
        )
        .unwrap();
        let secret = data.join("dir/secret");
        std::fs::write(&secret, b"mode 600, owner 1234").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&secret, Some(1234), Some(1234)).unwrap();
        std::os::unix::fs::symlink("deeper/big", data.join("dir/link")).unwrap();
        let mut sparse = std::fs::File::create(data.join("sparse")).unwrap();
        sparse.set_len(64 * MIB).unwrap();
        sparse.write_all(b"head").unwrap();
        drop(sparse);
        src.snapshot("d1", "s1").await.unwrap();

        let stream = src.send("s1", None).await.unwrap();
        dst.receive("s1", stream.reader).await.unwrap();
        stream.done.await.unwrap();
        assert_eq!(dst.snapshots().await.unwrap(), vec!["s1".to_owned()]);
        assert_same_tree(&src.snapshot_path("s1"), &dst.snapshot_path("s1"));
        assert!(incoming(&b.pool()).is_empty(), "{:?}", incoming(&b.pool()));

        // Received once: again is refused, and changes nothing.
        let again = src.send("s1", None).await.unwrap();
        assert!(dst.receive("s1", again.reader).await.is_err());
        assert_same_tree(&src.snapshot_path("s1"), &dst.snapshot_path("s1"));

        // What was received makes a dataset there.
        let moved = dst.clone_snapshot("s1", "d1", None).await.unwrap();
        assert_same_tree(&data, &moved);
        std::fs::write(moved.join("one"), b"2").unwrap();

        assert!(matches!(
            src.send("nope", None).await,
            Err(BackendError::NotFound { .. })
        ));
    }

    pub async fn a_cut_stream_leaves_nothing(a: &Fixture, b: &Fixture) {
        let (src, dst) = (&*a.backend, &*b.backend);
        let data = src.create("d1", None).await.unwrap();
        std::fs::write(data.join("big"), pattern(3, 2 * MIB as usize)).unwrap();
        std::fs::write(data.join("small"), b"small").unwrap();
        src.snapshot("d1", "s1").await.unwrap();
        let whole = send_bytes(src, "s1", None).await;

        let cuts = [
            ("half", whole[..whole.len() / 2].to_vec()),
            // btrfs: just the end command (10 bytes) missing; directory: the end marker cut.
            (
                "all but the last 10 bytes",
                whole[..whole.len() - 10].to_vec(),
            ),
            ("empty", Vec::new()),
            ("garbage", pattern(9, 100_000)),
        ];
        for (what, bytes) in cuts {
            let result = dst.receive("s1", stream_of(bytes)).await;
            match result {
                Ok(()) => panic!("{what}: a cut stream was received"),
                Err(e) => eprintln!("{} refuses a stream cut to {what}: {e}", dst.kind()),
            }
            assert!(
                dst.snapshots().await.unwrap().is_empty(),
                "{what}: a snapshot appeared"
            );
            assert!(!dst.snapshot_path("s1").exists(), "{what}");
            assert!(
                incoming(&b.pool()).is_empty(),
                "{what}: left {:?}",
                incoming(&b.pool())
            );
        }
        // The whole stream still goes in afterwards.
        dst.receive("s1", stream_of(whole)).await.unwrap();
        assert_same_tree(&src.snapshot_path("s1"), &dst.snapshot_path("s1"));
    }
}

// --- btrfs only -----------------------------------------------------------------------------

#[tokio::test]
async fn btrfs_incremental_sends_work_both_ways() {
    let Some(a) = Fixture::btrfs(GIB).await else {
        return;
    };
    let Some(b) = Fixture::btrfs(GIB).await else {
        return;
    };
    let (pa, pb) = (&*a.backend, &*b.backend);
    assert!(pa.incremental());

    // A: a 64 MiB dataset, sent whole to B.
    let data = pa.create("d", None).await.unwrap();
    let size = 64 * MIB as usize;
    std::fs::write(data.join("big"), pattern(11, size)).unwrap();
    pa.snapshot("d", "s1").await.unwrap();
    let full = send_bytes(pa, "s1", None).await;
    assert!(
        full.len() >= size,
        "a full send of 64 MiB is {} bytes",
        full.len()
    );
    pb.receive("s1", stream_of(full.clone())).await.unwrap();

    // A changes ~1% (10 blocks of 64 KiB, spread out) and sends the difference.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(data.join("big"))
        .unwrap();
    for i in 0..10u64 {
        use std::os::unix::fs::FileExt;
        file.write_all_at(&pattern(100 + i, 64 * 1024), i * 6 * MIB)
            .unwrap();
    }
    drop(file);
    pa.snapshot("d", "s2").await.unwrap();
    let increment = send_bytes(pa, "s2", Some("s1")).await;
    assert!(
        increment.len() * 20 < full.len(),
        "the increment ({} bytes) is not much smaller than the whole ({} bytes)",
        increment.len(),
        full.len()
    );
    pb.receive("s2", stream_of(increment)).await.unwrap();
    assert_same_tree(&pa.snapshot_path("s2"), &pb.snapshot_path("s2"));

    // B takes it over, writes, and sends back only the difference to A's original s2.
    let moved = pb.clone_snapshot("s2", "d", None).await.unwrap();
    std::fs::write(moved.join("written-on-b"), b"hello from b").unwrap();
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(moved.join("big"))
            .unwrap();
        file.write_all_at(&pattern(200, 128 * 1024), 30 * MIB)
            .unwrap();
    }
    pb.snapshot("d", "s3").await.unwrap();
    let back = send_bytes(pb, "s3", Some("s2")).await;
    assert!(
        back.len() * 20 < full.len(),
        "the way back ({} bytes) is not incremental",
        back.len()
    );
    pa.receive("s3", stream_of(back)).await.unwrap();
    assert_same_tree(&pb.snapshot_path("s3"), &pa.snapshot_path("s3"));
    assert_eq!(
        pa.snapshots().await.unwrap(),
        vec!["s1".to_owned(), "s2".to_owned(), "s3".to_owned()]
    );

    // An increment whose parent the receiver lacks is refused as such, and leaves nothing.
    let Some(c) = Fixture::btrfs(GIB).await else {
        return;
    };
    let orphan = send_bytes(pa, "s3", Some("s2")).await;
    let err = c
        .backend
        .receive("s3", stream_of(orphan))
        .await
        .unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, BackendError::NotFound { .. }), "{err}");
    assert!(c.backend.snapshots().await.unwrap().is_empty());
    assert!(incoming(&c.pool()).is_empty());
    assert!(matches!(
        pa.send("s3", Some("nope")).await,
        Err(BackendError::NotFound { .. })
    ));
}

#[tokio::test]
async fn btrfs_limits_are_enforced() {
    let Some(f) = Fixture::btrfs(GIB).await else {
        return;
    };
    let b = &*f.backend;
    assert!(b.limits_size());
    let data = b.create("d", Some(16 * MIB)).await.unwrap();
    let chunk = pattern(5, MIB as usize);
    let mut file = std::fs::File::create(data.join("fill")).unwrap();
    let mut written = 0u64;
    let err = loop {
        match file.write_all(&chunk).and_then(|()| file.sync_data()) {
            Ok(()) => written += MIB,
            Err(e) => break e,
        }
        assert!(
            written <= 32 * MIB,
            "wrote {written} bytes past a 16 MiB limit"
        );
    };
    assert_eq!(raw_os_error(&err), Some(nix::errno::Errno::EDQUOT), "{err}");
    eprintln!("a 16 MiB limit: {written} bytes written, then {err}");
    let unsynced = b.usage("d").await.unwrap();
    eprintln!("usage before the transaction commit: {unsynced:?}");
    assert!(written >= 8 * MIB, "stopped after {written} bytes");
    drop(file);

    btrfs_sync(&f.pool());
    let usage = b.usage("d").await.unwrap();
    eprintln!("usage after `btrfs filesystem sync`: {usage:?}");
    assert_eq!(usage.limit, Some(16 * MIB));
    assert!(
        usage.used >= written && usage.used <= 17 * MIB,
        "{usage:?} after {written}"
    );
    assert!(
        usage.available <= 16 * MIB - usage.used.min(16 * MIB) + MIB,
        "{usage:?}"
    );

    // Raised (create again sets it again), then cleared: the writes go on.
    b.create("d", Some(64 * MIB)).await.unwrap();
    assert_eq!(b.usage("d").await.unwrap().limit, Some(64 * MIB));
    b.set_limit("d", None).await.unwrap();
    std::fs::write(data.join("more"), pattern(6, 24 * MIB as usize)).unwrap();
    assert_eq!(b.usage("d").await.unwrap().limit, None);
}

#[tokio::test]
async fn btrfs_nested_subvolumes_do_not_stop_a_destroy() {
    let Some(f) = Fixture::btrfs(GIB).await else {
        return;
    };
    let b = &*f.backend;
    let data = b.create("d", Some(64 * MIB)).await.unwrap();
    // What a container with btrfs tools might do inside its volume.
    for nested in ["inner", "inner/deeper", "other"] {
        let out = Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(data.join(nested))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(data.join("inner/deeper/file"), b"x").unwrap();
    let out = Command::new("btrfs")
        .args(["subvolume", "snapshot", "-r"])
        .arg(data.join("inner"))
        .arg(data.join("inner-ro"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A snapshot holds no nested subvolume (an empty directory in its place).
    b.snapshot("d", "s").await.unwrap();
    assert!(
        std::fs::read_dir(b.snapshot_path("s").join("inner"))
            .unwrap()
            .next()
            .is_none()
    );

    b.destroy("d").await.unwrap();
    assert!(!data.exists());
    assert!(b.datasets().await.unwrap().is_empty());
    b.delete_snapshot("s").await.unwrap();
    assert!(b.snapshots().await.unwrap().is_empty());
}

#[tokio::test]
async fn btrfs_a_full_pool_is_reported_as_full() {
    let Some(big) = Fixture::btrfs(GIB).await else {
        return;
    };
    let Some(small) = Fixture::btrfs(256 * MIB).await else {
        return;
    };
    let free = small.backend.pool_usage().await.unwrap().available;
    let data = big.backend.create("d", None).await.unwrap();
    let chunk = pattern(8, MIB as usize);
    let mut file = std::fs::File::create(data.join("big")).unwrap();
    for _ in 0..(free / MIB + 24) {
        file.write_all(&chunk).unwrap();
    }
    drop(file);
    big.backend.snapshot("d", "s").await.unwrap();

    let stream = big.backend.send("s", None).await.unwrap();
    let err = small.backend.receive("s", stream.reader).await.unwrap_err();
    let _ = stream.done.await; // the receiver stopped reading: the sender fails too
    eprintln!("{err}");
    match &err {
        BackendError::Full { pool, .. } => assert_eq!(Path::new(pool), small.pool()),
        other => panic!("not Full: {other}"),
    }
    assert!(small.backend.snapshots().await.unwrap().is_empty());
    assert!(
        incoming(&small.pool()).is_empty(),
        "{:?}",
        incoming(&small.pool())
    );
}

#[tokio::test]
async fn directory_a_full_pool_is_reported_as_full() {
    // Root, to mount a small tmpfs: what the btrfs tests need anyway.
    if !testbtrfs::require() {
        return;
    }
    let source = Fixture::directory().await;
    let data = source.backend.create("d", None).await.unwrap();
    std::fs::write(data.join("big"), pattern(4, 48 * MIB as usize)).unwrap();
    source.backend.snapshot("d", "s").await.unwrap();

    // A 32 MiB tmpfs as the receiving pool.
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let small = Directory::new(&mnt);
    small.prepare().await.unwrap();

    let stream = source.backend.send("s", None).await.unwrap();
    let err = small.receive("s", stream.reader).await.unwrap_err();
    let _ = stream.done.await;
    eprintln!("{err}");
    match &err {
        BackendError::Full { pool, .. } => assert_eq!(Path::new(pool), mnt),
        other => panic!("not Full: {other}"),
    }
    assert!(small.snapshots().await.unwrap().is_empty());
    assert!(incoming(&mnt).is_empty(), "{:?}", incoming(&mnt));

    // A snapshot (a copy) that does not fit either.
    let local = small.create("d", None).await.unwrap();
    std::fs::write(local.join("big"), pattern(4, 20 * MIB as usize)).unwrap();
    let err = small.snapshot("d", "s").await.unwrap_err();
    assert!(matches!(err, BackendError::Full { .. }), "{err}");
    assert!(small.snapshots().await.unwrap().is_empty());
    assert!(incoming(&mnt).is_empty(), "{:?}", incoming(&mnt));
}

// --- The pool module ------------------------------------------------------------------------

#[tokio::test]
async fn open_picks_the_backend_from_the_filesystem() {
    let plain = tempfile::tempdir().unwrap();
    assert_eq!(pool::detect(plain.path()).await.unwrap(), Kind::Other);
    let auto = pool::open(plain.path(), Choice::Auto).await.unwrap();
    assert_eq!(auto.kind(), "directory");
    assert!(
        plain.path().join("datasets").is_dir(),
        "open prepares the pool"
    );

    let err = pool::open(plain.path(), Choice::Btrfs).await.unwrap_err();
    assert!(err.to_string().contains("not btrfs"), "{err}");
    // A directory made for a refused choice is removed again.
    let fresh = plain.path().join("fresh");
    assert!(pool::open(&fresh, Choice::Btrfs).await.is_err());
    assert!(!fresh.exists());

    let Some(f) = Fixture::btrfs(GIB).await else {
        return;
    };
    assert_eq!(pool::detect(&f.pool()).await.unwrap(), Kind::Btrfs);
    let auto = pool::open(&f.pool(), Choice::Auto).await.unwrap();
    assert_eq!(auto.kind(), "btrfs");
    let forced = pool::open(&f.pool().join("plain"), Choice::Directory)
        .await
        .unwrap();
    assert_eq!(forced.kind(), "directory");
}

/// Unmounts and detaches what an `ensure_image` test mounted, also when it panics.
struct ImageGuard {
    image: PathBuf,
    mountpoint: PathBuf,
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .output();
        for device in loop_devices(&self.image) {
            let _ = Command::new("losetup").args(["-d", &device]).output();
        }
    }
}

fn loop_devices(image: &Path) -> Vec<String> {
    let out = Command::new("losetup")
        .args(["-n", "-O", "NAME", "-j"])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn mounts_at(mountpoint: &Path) -> usize {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = mountpoint.display().to_string();
    table
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
        .count()
}

#[tokio::test]
async fn ensure_image_mounts_once_and_unmount_leaves_no_loop_device() {
    if !testbtrfs::require() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("images/pool.img");
    let mountpoint = dir.path().join("mnt");
    let _guard = ImageGuard {
        image: image.clone(),
        mountpoint: mountpoint.clone(),
    };

    pool::ensure_image(&image, 512 * MIB, &mountpoint)
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 512 * MIB);
    assert!(
        std::fs::metadata(&image).unwrap().blocks() * 512 < 64 * MIB,
        "the image is not sparse"
    );
    assert_eq!(pool::detect(&mountpoint).await.unwrap(), Kind::Btrfs);
    assert_eq!(mounts_at(&mountpoint), 1);
    std::fs::write(mountpoint.join("kept"), b"survives remounts").unwrap();

    // Again: nothing (no second mount, no reformat).
    pool::ensure_image(&image, 512 * MIB, &mountpoint)
        .await
        .unwrap();
    assert_eq!(mounts_at(&mountpoint), 1);
    assert_eq!(loop_devices(&image).len(), 1);

    pool::unmount(&mountpoint).await.unwrap();
    assert_eq!(mounts_at(&mountpoint), 0);
    assert!(
        loop_devices(&image).is_empty(),
        "{:?}",
        loop_devices(&image)
    );
    let all = Command::new("losetup").arg("-a").output().unwrap();
    assert!(
        !String::from_utf8_lossy(&all.stdout).contains(&image.display().to_string()),
        "losetup -a still lists {}",
        image.display()
    );
    pool::unmount(&mountpoint).await.unwrap(); // nothing mounted: nothing

    // The existing image is mounted again, never reformatted.
    pool::ensure_image(&image, 512 * MIB, &mountpoint)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(mountpoint.join("kept")).unwrap(),
        b"survives remounts"
    );
    // The loop device is recognised by the image's inode, whatever path names it (the
    // kernel shows the path seen where the device was set up: a container's, maybe).
    let device = loop_devices(&image).pop().unwrap();
    let other_name = dir.path().join("same-file.img");
    std::fs::hard_link(&image, &other_name).unwrap();
    assert!(pool::loop_backed_by(&device, &image).await);
    assert!(pool::loop_backed_by(&device, &other_name).await);
    let stranger = dir.path().join("stranger.img");
    std::fs::write(&stranger, b"not it").unwrap();
    assert!(!pool::loop_backed_by(&device, &stranger).await);
    assert!(!pool::loop_backed_by("/dev/loop-none", &image).await);
    pool::unmount(&mountpoint).await.unwrap();
    assert!(loop_devices(&image).is_empty());
}

#[tokio::test]
async fn ensure_image_never_formats_another_filesystem() {
    if !testbtrfs::require() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("ext4.img");
    let mountpoint = dir.path().join("mnt");
    let _guard = ImageGuard {
        image: image.clone(),
        mountpoint: mountpoint.clone(),
    };
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = std::fs::read(&image).unwrap();

    let err = pool::ensure_image(&image, 64 * MIB, &mountpoint)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ext4"), "{err}");
    assert!(
        std::fs::read(&image).unwrap() == before,
        "the ext4 image was changed"
    );
    assert_eq!(mounts_at(&mountpoint), 0);
    assert!(loop_devices(&image).is_empty());

    // A mountpoint with another filesystem mounted is refused too.
    let _ = std::fs::create_dir_all(&mountpoint);
    let out = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&mountpoint)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = pool::ensure_image(&dir.path().join("other.img"), 256 * MIB, &mountpoint)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not btrfs"), "{err}");
    assert!(!dir.path().join("other.img").exists());
    pool::unmount(&mountpoint).await.unwrap();
    assert!(loop_devices(&image).is_empty());
}
