//! Plain directories: copies for snapshots, tar streams for transfers.
//!
//! For hosts without btrfs. A dataset is a directory `<pool>/datasets/<id>`, a snapshot a
//! directory `<pool>/snapshots/<id>`:
//!
//! - No size limits: [`Backend::limits_size`] is false and limits are ignored.
//! - A snapshot is a copy (`cp -a --reflink=auto`: a reflink where the filesystem has them,
//!   xfs or btrfs, a full copy elsewhere), made under `incoming/<n>/` and renamed into
//!   place (`renameat2(RENAME_NOREPLACE)`), so a half copy is never a snapshot. It is a
//!   copy of the dataset *while it may be written*, not a point-in-time image. A clone is
//!   a copy of a snapshot, made the same way.
//! - Snapshots are read-only by convention only: making them read-only (`chmod`) would
//!   change the modes they record, which clones and transfers must reproduce.
//! - A transfer is `tar -C <snapshot> -cf - .` (GNU tar, `--numeric-owner`, `--sparse`),
//!   never incremental (a parent is ignored), followed by an end marker of this module's
//!   (`PSTAREND` and the tar stream's length, 16 bytes) written only once tar has exited
//!   successfully: tar itself does not notice an archive cut at a record boundary, the
//!   receiver does — without the marker, it keeps nothing. The receiver untars into
//!   `incoming/<n>/<id>` and renames that into `snapshots/<id>`.
//! - Deleting renames the directory into `incoming/<n>/` first, so it is gone at once
//!   and a removal that fails half-way leaves no half dataset behind.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::pool::{self, CopyError, TIMEOUT, check_id, failed, io_failed};
use super::{Backend, BackendError, SendStream, Usage};

/// What ends a stream of this backend: the magic, then the tar stream's length (u64, LE).
const END_MAGIC: &[u8; 8] = b"PSTAREND";
const END_LEN: usize = 16;

fn end_marker(tar_bytes: u64) -> [u8; END_LEN] {
    let mut marker = [0u8; END_LEN];
    marker[..8].copy_from_slice(END_MAGIC);
    marker[8..].copy_from_slice(&tar_bytes.to_le_bytes());
    marker
}

/// A pool of plain directories (see the module's documentation).
#[derive(Clone, Debug)]
pub struct Directory {
    /// The pool's root, on any filesystem.
    pool: PathBuf,
}

impl Directory {
    /// The directory pool at `pool`. Nothing is changed until [`Backend::prepare`].
    pub fn new(pool: impl Into<PathBuf>) -> Directory {
        Directory { pool: pool.into() }
    }

    /// Copies `source` to `target` (which must not exist) with `cp -a --reflink=auto`.
    async fn copy_tree(
        &self,
        step: &str,
        source: &Path,
        target: &Path,
    ) -> Result<(), BackendError> {
        pool::run(
            &self.pool,
            step,
            "cp",
            &[
                OsStr::new("-a"),
                OsStr::new("--reflink=auto"),
                OsStr::new("--"),
                source.as_os_str(),
                target.as_os_str(),
            ],
            None,
        )
        .await
        .map(drop)
    }

    /// Copies `source` to a fresh `incoming/<n>/` and renames the copy to `target`, so that
    /// it appears whole. `Ok(false)` when `target` appeared meanwhile (made by another).
    async fn copy_into_place(
        &self,
        step: &str,
        source: &Path,
        target: &Path,
    ) -> Result<bool, BackendError> {
        let dir = pool::incoming_dir(&self.pool).await?;
        let guard = cleanup_on_drop(dir.clone());
        let staging = dir.join("copy");
        let result = async {
            self.copy_tree(step, source, &staging).await?;
            match pool::rename_noreplace(&staging, target).await {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(io_failed(
                    &self.pool,
                    format!("{step}: renaming the copy into place"),
                    e,
                )),
            }
        }
        .await;
        if let Err(e) = remove_dir_all(&dir).await {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a copy's work directory");
        }
        guard.disarm();
        result
    }

    /// Deletes directory `path` (nothing when it does not exist): renames it into
    /// `incoming/<n>/` first, then removes it there.
    async fn delete_tree(&self, what: &str, path: &Path) -> Result<(), BackendError> {
        let step = format!("deleting {what}");
        let dir = pool::incoming_dir(&self.pool).await?;
        let aside = dir.join("deleted");
        match tokio::fs::rename(path, &aside).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let _ = tokio::fs::remove_dir(&dir).await;
                tracing::debug!(what, "nothing to delete");
                return Ok(());
            }
            Err(e) => {
                let _ = tokio::fs::remove_dir(&dir).await;
                return Err(io_failed(
                    &self.pool,
                    format!("{step}: moving {} aside", path.display()),
                    e,
                ));
            }
        }
        tracing::info!(what, path = %path.display(), "deleted");
        remove_dir_all(&dir).await.map_err(|e| {
            failed(
                format!(
                    "{step}: removing {} (already gone from the pool; clean_incoming retries)",
                    aside.display()
                ),
                e,
            )
        })
    }

    /// Untars `stream` into `dir/<snapshot>` (`dir` a fresh `incoming/<n>`) once its end
    /// marker checked out, and renames that to `target`.
    async fn receive_into(
        &self,
        dir: &Path,
        snapshot: &str,
        target: &Path,
        mut stream: Pin<Box<dyn AsyncRead + Send>>,
    ) -> Result<(), BackendError> {
        let step = format!("receiving snapshot {snapshot}");
        let staging = dir.join(snapshot);
        tokio::fs::create_dir(&staging).await.map_err(|e| {
            io_failed(
                &self.pool,
                format!("{step}: creating {}", staging.display()),
                e,
            )
        })?;
        let mut child = Command::new("tar")
            .arg("-C")
            .arg(&staging)
            .args(["--numeric-owner", "-xf", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(&step, format!("cannot run tar: {e}")))?;
        let (Some(mut stdin), Some(stderr)) = (child.stdin.take(), child.stderr.take()) else {
            return Err(failed(&step, "tar has no stdin or stderr pipe"));
        };
        let said = tokio::spawn(pool::drain(stderr));

        // Everything but the last 16 bytes goes to tar; those must be the end marker.
        let mut buf = vec![0u8; 256 * 1024];
        let mut pending: Vec<u8> = Vec::with_capacity(buf.len() + END_LEN);
        let mut written = 0u64;
        let copied: Result<(), CopyError> = async {
            loop {
                let n = stream.read(&mut buf).await.map_err(CopyError::Read)?;
                if n == 0 {
                    return Ok(());
                }
                pending.extend_from_slice(&buf[..n]);
                if pending.len() > END_LEN {
                    let cut = pending.len() - END_LEN;
                    stdin
                        .write_all(&pending[..cut])
                        .await
                        .map_err(CopyError::Write)?;
                    pending.drain(..cut);
                    written += cut as u64;
                }
            }
        }
        .await;
        match copied {
            Err(CopyError::Read(e)) => {
                let _ = child.kill().await;
                return Err(failed(&step, format!("reading the stream: {e}")));
            }
            Ok(()) if pending.as_slice() != end_marker(written) => {
                let _ = child.kill().await;
                return Err(failed(
                    &step,
                    format!(
                        "the stream ended after {} bytes without its end marker (cut short, or \
                         the sender failed)",
                        written + pending.len() as u64
                    ),
                ));
            }
            // Complete; or tar stopped reading, and its status says why.
            Ok(()) | Err(CopyError::Write(_)) => {}
        }
        drop(stdin);
        let status = match tokio::time::timeout(TIMEOUT, child.wait()).await {
            Ok(status) => status.map_err(|e| failed(&step, e))?,
            Err(_) => {
                let _ = child.kill().await;
                return Err(failed(
                    &step,
                    format!(
                        "tar did not finish within {}s after the stream ended (killed)",
                        TIMEOUT.as_secs()
                    ),
                ));
            }
        };
        let said = said.await.unwrap_or_default();
        if !status.success() {
            return Err(pool::tool_failed(
                &self.pool,
                &format!("{step}: untarring"),
                &said,
                status,
            ));
        }
        if let Err(CopyError::Write(e)) = copied {
            return Err(failed(
                &step,
                format!("tar stopped reading the stream: {e}"),
            ));
        }
        pool::rename_noreplace(&staging, target)
            .await
            .map_err(|e| {
                io_failed(
                    &self.pool,
                    format!(
                        "{step}: renaming {} to {}",
                        staging.display(),
                        target.display()
                    ),
                    e,
                )
            })?;
        tracing::info!(snapshot, bytes = written, "received snapshot");
        Ok(())
    }
}

/// Removes `dir` (an `incoming/<n>`) when dropped before disarmed: a cancelled copy or
/// receive leaves nothing.
fn cleanup_on_drop(dir: PathBuf) -> pool::Cleanup {
    pool::Cleanup::new(async move {
        if let Err(e) = remove_dir_all(&dir).await {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a cancelled operation's work");
        }
    })
}

/// `remove_dir_all`, nothing when it is gone.
async fn remove_dir_all(path: &Path) -> io::Result<()> {
    match tokio::fs::remove_dir_all(path).await {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `path` is a directory (not following a symlink).
async fn is_dir(path: &Path) -> Result<bool, BackendError> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) => Ok(meta.is_dir()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(failed(format!("looking at {}", path.display()), e)),
    }
}

/// Bytes allocated under `root` (like `du -s`: blocks, hard links once).
fn allocated(root: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let meta = std::fs::symlink_metadata(&dir)?;
        total += meta.blocks() * 512;
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.nlink() < 2 || seen.insert((meta.dev(), meta.ino())) {
                total += meta.blocks() * 512;
            }
        }
    }
    Ok(total)
}

#[async_trait]
impl Backend for Directory {
    fn kind(&self) -> &'static str {
        "directory"
    }

    fn pool(&self) -> PathBuf {
        self.pool.clone()
    }

    fn limits_size(&self) -> bool {
        false
    }

    fn incremental(&self) -> bool {
        false
    }

    async fn prepare(&self) -> Result<(), BackendError> {
        for sub in ["datasets", "snapshots", "incoming"] {
            let dir = self.pool.join(sub);
            tokio::fs::create_dir_all(&dir).await.map_err(|e| {
                io_failed(
                    &self.pool,
                    format!(
                        "preparing directory pool {}: creating {}",
                        self.pool.display(),
                        dir.display()
                    ),
                    e,
                )
            })?;
        }
        tracing::info!(pool = %self.pool.display(), "directory pool ready");
        Ok(())
    }

    async fn create(&self, id: &str, limit: Option<u64>) -> Result<PathBuf, BackendError> {
        check_id("dataset", id)?;
        if limit.is_some() {
            tracing::debug!(
                dataset = id,
                ?limit,
                "the directory backend enforces no limits"
            );
        }
        let path = self.dataset_path(id);
        match tokio::fs::create_dir(&path).await {
            Ok(()) => tracing::info!(dataset = id, "created directory"),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && is_dir(&path).await? => {
                tracing::debug!(dataset = id, "exists already");
            }
            Err(e) => {
                return Err(io_failed(
                    &self.pool,
                    format!("creating directory {}", path.display()),
                    e,
                ));
            }
        }
        Ok(path)
    }

    async fn set_limit(&self, id: &str, limit: Option<u64>) -> Result<(), BackendError> {
        check_id("dataset", id)?;
        if !is_dir(&self.dataset_path(id)).await? {
            return Err(BackendError::NotFound {
                what: format!("dataset {id}"),
            });
        }
        tracing::debug!(
            dataset = id,
            ?limit,
            "the directory backend enforces no limits"
        );
        Ok(())
    }

    async fn destroy(&self, id: &str) -> Result<(), BackendError> {
        check_id("dataset", id)?;
        self.delete_tree(&format!("dataset {id}"), &self.dataset_path(id))
            .await
    }

    async fn snapshot(&self, id: &str, snapshot: &str) -> Result<(), BackendError> {
        check_id("dataset", id)?;
        check_id("snapshot", snapshot)?;
        let (source, target) = (self.dataset_path(id), self.snapshot_path(snapshot));
        if is_dir(&target).await? {
            tracing::debug!(snapshot, "exists already");
            return Ok(());
        }
        if !is_dir(&source).await? {
            return Err(BackendError::NotFound {
                what: format!("dataset {id}"),
            });
        }
        let step = format!("snapshotting dataset {id} as {snapshot}");
        if self.copy_into_place(&step, &source, &target).await? {
            tracing::info!(dataset = id, snapshot, "made snapshot (a copy)");
        }
        Ok(())
    }

    async fn clone_snapshot(
        &self,
        snapshot: &str,
        id: &str,
        limit: Option<u64>,
    ) -> Result<PathBuf, BackendError> {
        check_id("snapshot", snapshot)?;
        check_id("dataset", id)?;
        let (source, target) = (self.snapshot_path(snapshot), self.dataset_path(id));
        if is_dir(&target).await? {
            tracing::debug!(dataset = id, "exists already");
            return Ok(target);
        }
        if !is_dir(&source).await? {
            return Err(BackendError::NotFound {
                what: format!("snapshot {snapshot}"),
            });
        }
        let step = format!("cloning snapshot {snapshot} as dataset {id}");
        if self.copy_into_place(&step, &source, &target).await? {
            tracing::info!(
                snapshot,
                dataset = id,
                ?limit,
                "cloned snapshot (a copy; no limit)"
            );
        }
        Ok(target)
    }

    async fn delete_snapshot(&self, snapshot: &str) -> Result<(), BackendError> {
        check_id("snapshot", snapshot)?;
        self.delete_tree(
            &format!("snapshot {snapshot}"),
            &self.snapshot_path(snapshot),
        )
        .await
    }

    async fn datasets(&self) -> Result<Vec<String>, BackendError> {
        pool::list(&self.pool.join("datasets"), false).await
    }

    async fn snapshots(&self) -> Result<Vec<String>, BackendError> {
        pool::list(&self.pool.join("snapshots"), false).await
    }

    async fn send(&self, snapshot: &str, parent: Option<&str>) -> Result<SendStream, BackendError> {
        check_id("snapshot", snapshot)?;
        let path = self.snapshot_path(snapshot);
        if !is_dir(&path).await? {
            return Err(BackendError::NotFound {
                what: format!("snapshot {snapshot}"),
            });
        }
        if let Some(parent) = parent {
            tracing::debug!(
                snapshot,
                parent,
                "the directory backend sends whole snapshots: parent ignored"
            );
        }
        let step = format!("sending snapshot {snapshot}");
        let mut child = Command::new("tar")
            .arg("-C")
            .arg(&path)
            .args(["--numeric-owner", "--sparse", "-cf", "-", "."])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(&step, format!("cannot run tar: {e}")))?;
        let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(failed(&step, "tar has no stdout or stderr pipe"));
        };
        let said = tokio::spawn(pool::drain(stderr));
        let (reader, mut writer) = tokio::io::duplex(256 * 1024);
        let pool = self.pool.clone();
        let task_step = step.clone();
        let producer = tokio::spawn(async move {
            let step = task_step;
            let copied = pool::copy(&mut stdout, &mut writer).await;
            let bytes = match copied {
                Ok(bytes) => bytes,
                Err(CopyError::Write(e)) => {
                    let _ = child.kill().await;
                    return Err(failed(&step, format!("the stream's reader went away: {e}")));
                }
                Err(CopyError::Read(e)) => {
                    let _ = child.kill().await;
                    return Err(failed(&step, format!("reading tar's output: {e}")));
                }
            };
            let status = child.wait().await.map_err(|e| failed(&step, e))?;
            let said = said.await.unwrap_or_default();
            if !status.success() {
                // No end marker: the receiver keeps nothing.
                return Err(pool::tool_failed(&pool, &step, &said, status));
            }
            writer
                .write_all(&end_marker(bytes))
                .await
                .map_err(|e| failed(&step, format!("the stream's reader went away: {e}")))?;
            writer
                .shutdown()
                .await
                .map_err(|e| failed(&step, format!("closing the stream: {e}")))?;
            tracing::debug!(step, bytes, "send finished");
            Ok(())
        });
        tracing::info!(snapshot, "sending snapshot (tar)");
        Ok(SendStream {
            reader: Box::pin(reader),
            done: Box::pin(async move { producer.await.map_err(|e| failed(&step, e))? }),
        })
    }

    async fn receive(
        &self,
        snapshot: &str,
        stream: Pin<Box<dyn AsyncRead + Send>>,
    ) -> Result<(), BackendError> {
        check_id("snapshot", snapshot)?;
        let target = self.snapshot_path(snapshot);
        if tokio::fs::symlink_metadata(&target).await.is_ok() {
            return Err(failed(
                format!("receiving snapshot {snapshot}"),
                format!("{} exists already", target.display()),
            ));
        }
        let dir = pool::incoming_dir(&self.pool).await?;
        let guard = cleanup_on_drop(dir.clone());
        let result = self.receive_into(&dir, snapshot, &target, stream).await;
        let cleaned = remove_dir_all(&dir).await;
        guard.disarm();
        if let Err(e) = cleaned {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a receive's work directory");
        }
        result
    }

    async fn pool_usage(&self) -> Result<Usage, BackendError> {
        pool::statvfs_usage(&self.pool).await
    }

    async fn usage(&self, id: &str) -> Result<Usage, BackendError> {
        check_id("dataset", id)?;
        let path = self.dataset_path(id);
        if !is_dir(&path).await? {
            return Err(BackendError::NotFound {
                what: format!("dataset {id}"),
            });
        }
        let step = format!("reading the usage of dataset {id}");
        let walked = path.clone();
        let used = tokio::task::spawn_blocking(move || allocated(&walked))
            .await
            .map_err(|e| failed(&step, e))?
            .map_err(|e| failed(&step, e))?;
        Ok(Usage {
            used,
            available: self.pool_usage().await?.available,
            limit: None,
        })
    }

    async fn clean_incoming(&self) -> Result<(), BackendError> {
        let incoming = self.pool.join("incoming");
        let step = || format!("cleaning {}", incoming.display());
        let mut entries = match tokio::fs::read_dir(&incoming).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(failed(step(), e)),
        };
        while let Some(entry) = entries.next_entry().await.map_err(|e| failed(step(), e))? {
            let path = entry.path();
            let removed = if entry.file_type().await.is_ok_and(|t| t.is_dir()) {
                remove_dir_all(&path).await
            } else {
                tokio::fs::remove_file(&path).await
            };
            removed.map_err(|e| failed(format!("{}: removing {}", step(), path.display()), e))?;
            tracing::info!(path = %path.display(), "removed leftover work");
        }
        Ok(())
    }
}
