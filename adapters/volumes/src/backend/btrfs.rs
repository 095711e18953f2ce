//! btrfs: subvolumes, qgroup limits, read-only snapshots, send and receive.
//!
//! Everything goes through btrfs-progs (`btrfs subvolume|qgroup|send|receive`), the
//! filesystem's stable interface (no maintained Rust crate does send/receive or qgroups);
//! every command but the streams is killed after 60 s.
//!
//! - A dataset is a subvolume `<pool>/datasets/<id>`; its limit a qgroup limit on the data
//!   it *references* (`btrfs qgroup limit`), so a clone's limit counts what it shares with
//!   its snapshot: the limit is the dataset's size as its user sees it. Writes past it fail
//!   with EDQUOT.
//! - A snapshot is a read-only snapshot `<pool>/snapshots/<id>`; a clone a writable
//!   snapshot of one. Subvolumes nested in a dataset (a container may make some) are not
//!   part of its snapshots (btrfs leaves an empty directory in their place).
//! - Deleting a dataset deletes the subvolumes a container nested in it first (deepest
//!   first), so they never make a delete fail for good.
//! - A transfer is `btrfs send [-p <parent>]` into `btrfs receive <pool>/incoming/<n>/`.
//!   A received subvolume cannot be *moved* to another directory (renaming a read-only
//!   subvolume across directories fails with EROFS: its `..` would change), so the
//!   complete receive is committed by a read-only snapshot of it into `snapshots/<id>`
//!   (which keeps its received UUID, what later incremental receives look parents up by),
//!   and the received one deleted. A failed or cancelled receive deletes what it received.
//! - Incremental sends work both ways: a stream names its parent by the parent's received
//!   UUID when it has one, and `btrfs receive` finds a parent by received UUID or, failing
//!   that, by UUID — so a snapshot sent A→B serves as parent for B→A as well.
//!
//! Qgroup numbers ([`Backend::usage`]) are those of the last transaction commit: right after
//! a write they do not show it yet (btrfs commits every 30 s, or at `btrfs filesystem
//! sync`). This backend does not force a commit for them (it would flush every dataset's
//! dirty data, on every call).

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;

use async_trait::async_trait;
use tokio::io::AsyncRead;
use tokio::process::Command;

use super::pool::{self, CopyError, TIMEOUT, check_id, failed, io_failed};
use super::{Backend, BackendError, SendStream, Usage};

/// A pool on btrfs (see the module's documentation).
#[derive(Clone, Debug)]
pub struct Btrfs {
    /// The pool's root: a btrfs mount or a directory on one.
    pool: PathBuf,
}

impl Btrfs {
    /// The btrfs pool at `pool`. Nothing is checked or changed until
    /// [`Backend::prepare`] (which refuses a path that is not on btrfs).
    pub fn new(pool: impl Into<PathBuf>) -> Btrfs {
        Btrfs { pool: pool.into() }
    }

    /// Runs `btrfs args` for `step`.
    async fn btrfs(&self, step: &str, args: &[&OsStr]) -> Result<String, BackendError> {
        pool::run(&self.pool, step, "btrfs", args, Some(TIMEOUT)).await
    }

    /// Sets `path`'s referenced-bytes limit (`none` clears it).
    async fn limit(&self, path: &Path, limit: Option<u64>) -> Result<(), BackendError> {
        let value = limit.map_or_else(|| "none".to_owned(), |bytes| bytes.to_string());
        self.btrfs(
            &format!("setting the limit of {} to {value}", path.display()),
            &[
                OsStr::new("qgroup"),
                OsStr::new("limit"),
                OsStr::new(&value),
                path.as_os_str(),
            ],
        )
        .await?;
        tracing::debug!(path = %path.display(), limit = value, "set the qgroup limit");
        Ok(())
    }

    /// Deletes subvolume `path`; subvolumes nested in it first, deepest first.
    async fn delete_subvolume(&self, path: &Path) -> Result<(), BackendError> {
        let step = format!("deleting subvolume {}", path.display());
        let delete = [
            OsStr::new("subvolume"),
            OsStr::new("delete"),
            path.as_os_str(),
        ];
        match self.btrfs(&step, &delete).await {
            Ok(_) => {}
            // The kernel refuses a subvolume that has subvolumes in it.
            Err(BackendError::Failed { reason, .. }) if reason.contains("Directory not empty") => {
                let nested = nested_subvolumes(path).await?;
                tracing::info!(
                    path = %path.display(),
                    nested = nested.len(),
                    "deleting the subvolumes nested in it first"
                );
                for inner in nested.iter().rev() {
                    self.btrfs(
                        &format!("{step}: deleting nested subvolume {}", inner.display()),
                        &[
                            OsStr::new("subvolume"),
                            OsStr::new("delete"),
                            inner.as_os_str(),
                        ],
                    )
                    .await?;
                }
                self.btrfs(&step, &delete).await?;
            }
            Err(e) => return Err(e),
        }
        tracing::info!(path = %path.display(), "deleted subvolume");
        Ok(())
    }

    /// Deletes subvolume `path` if it is one; nothing when it does not exist; an error when
    /// it is something else (never made by this backend: left alone).
    async fn delete_if_subvolume(&self, path: &Path) -> Result<(), BackendError> {
        match subvolume_state(path).await? {
            State::Missing => {
                tracing::debug!(path = %path.display(), "nothing to delete");
                Ok(())
            }
            State::Subvolume => self.delete_subvolume(path).await,
            State::Other => Err(BackendError::Failed {
                step: format!("deleting {}", path.display()),
                reason: "it is not a btrfs subvolume (not made by this backend; left alone)"
                    .to_owned(),
            }),
        }
    }

    /// Removes `<pool>/incoming/<n>` and what is in it (subvolumes by `btrfs subvolume
    /// delete`); nothing when it is gone.
    async fn remove_incoming(&self, dir: &Path) -> Result<(), BackendError> {
        let step = || format!("removing {}", dir.display());
        let mut entries = match tokio::fs::read_dir(dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(failed(step(), e)),
        };
        while let Some(entry) = entries.next_entry().await.map_err(|e| failed(step(), e))? {
            let path = entry.path();
            match subvolume_state(&path).await? {
                State::Missing => {}
                State::Subvolume => self.delete_subvolume(&path).await?,
                State::Other => remove_any(&path).await.map_err(|e| failed(step(), e))?,
            }
        }
        match tokio::fs::remove_dir(dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(step(), e)),
        }
        tracing::debug!(dir = %dir.display(), "removed incoming directory");
        Ok(())
    }

    /// Receives `stream` into `dir` (a fresh `incoming/<n>`) and commits it as snapshot
    /// `snapshot`. Leaves what it received in `dir`, for the caller to remove.
    async fn receive_into(
        &self,
        dir: &Path,
        snapshot: &str,
        target: &Path,
        mut stream: Pin<Box<dyn AsyncRead + Send>>,
    ) -> Result<(), BackendError> {
        let step = format!("receiving snapshot {snapshot}");
        let mut child = Command::new("btrfs")
            .args([OsStr::new("-q"), OsStr::new("receive"), dir.as_os_str()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(&step, format!("cannot run btrfs: {e}")))?;
        let (Some(mut stdin), Some(stderr)) = (child.stdin.take(), child.stderr.take()) else {
            return Err(failed(&step, "btrfs receive has no stdin or stderr pipe"));
        };
        pool::widen_pipe(&stdin);
        let said = tokio::spawn(pool::drain(stderr));
        let copied = pool::copy_writing_back(&mut stream, &mut stdin, dir).await;
        drop(stdin);
        if let Err(CopyError::Read(e)) = &copied {
            let _ = child.kill().await;
            return Err(failed(&step, format!("reading the stream: {e}")));
        }
        let status = match tokio::time::timeout(TIMEOUT, child.wait()).await {
            Ok(status) => status.map_err(|e| failed(&step, e))?,
            Err(_) => {
                let _ = child.kill().await;
                return Err(failed(
                    &step,
                    format!(
                        "btrfs receive did not finish within {}s after the stream ended (killed)",
                        TIMEOUT.as_secs()
                    ),
                ));
            }
        };
        let said = said.await.unwrap_or_default();
        if !status.success() {
            let text = String::from_utf8_lossy(&said);
            if text.contains("find parent subvolume") {
                return Err(BackendError::NotFound {
                    what: format!(
                        "the parent snapshot that the stream for {snapshot} is relative to ({})",
                        text.trim()
                    ),
                });
            }
            return Err(pool::tool_failed(&self.pool, &step, &said, status));
        }
        let bytes = match copied {
            Ok(bytes) => bytes,
            Err(CopyError::Read(e) | CopyError::Write(e)) => {
                return Err(failed(
                    &step,
                    format!("btrfs receive stopped reading the stream: {e}"),
                ));
            }
        };
        let received = pool::list(dir, true).await?;
        let [name] = received.as_slice() else {
            return Err(failed(
                &step,
                format!(
                    "expected one received subvolume in {}, found {received:?}",
                    dir.display()
                ),
            ));
        };
        if name != snapshot {
            tracing::debug!(
                snapshot,
                sent_as = name,
                "the stream names the snapshot differently"
            );
        }
        // The commit: a read-only snapshot appears whole, or not at all (and never over
        // another: btrfs refuses a target that exists).
        let source = dir.join(name);
        self.btrfs(
            &format!(
                "{step}: committing {} as {}",
                source.display(),
                target.display()
            ),
            &[
                OsStr::new("subvolume"),
                OsStr::new("snapshot"),
                OsStr::new("-r"),
                source.as_os_str(),
                target.as_os_str(),
            ],
        )
        .await?;
        tracing::info!(snapshot, bytes, "received snapshot");
        Ok(())
    }
}

/// What is at a path, for this backend.
enum State {
    Missing,
    Subvolume,
    Other,
}

async fn subvolume_state(path: &Path) -> Result<State, BackendError> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if meta.is_dir() && meta.ino() == pool::SUBVOLUME_ROOT_INO => Ok(State::Subvolume),
        Ok(_) => Ok(State::Other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::Missing),
        Err(e) => Err(failed(format!("looking at {}", path.display()), e)),
    }
}

async fn is_subvolume(path: &Path) -> Result<bool, BackendError> {
    Ok(matches!(subvolume_state(path).await?, State::Subvolume))
}

/// Removes a file, a symlink or a directory tree.
async fn remove_any(path: &Path) -> io::Result<()> {
    let meta = tokio::fs::symlink_metadata(path).await?;
    if meta.is_dir() {
        tokio::fs::remove_dir_all(path).await
    } else {
        tokio::fs::remove_file(path).await
    }
}

/// The subvolumes under subvolume `root` (not `root` itself), each before those nested in
/// it. Walks the tree: only done when a delete found nested subvolumes.
async fn nested_subvolumes(root: &Path) -> Result<Vec<PathBuf>, BackendError> {
    let owned = root.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        let mut stack = vec![owned.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(failed(
                        format!("looking for subvolumes in {}", dir.display()),
                        e,
                    ));
                }
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if !meta.is_dir() {
                    continue;
                }
                let path = entry.path();
                if meta.ino() == pool::SUBVOLUME_ROOT_INO {
                    found.push(path.clone());
                }
                stack.push(path);
            }
        }
        Ok(found)
    })
    .await
    .map_err(|e| failed(format!("looking for subvolumes in {}", root.display()), e))?
}

/// `(referenced bytes, referenced limit)` of qgroup `0/<id>` from `btrfs qgroup show --raw
/// -r -e`, whose columns are, in every btrfs-progs version, qgroupid, referenced,
/// exclusive, max referenced, max exclusive (then, in newer ones, the path).
fn parse_qgroup(output: &str, id: u64) -> Option<(u64, Option<u64>)> {
    let wanted = format!("0/{id}");
    output.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() != Some(&wanted.as_str()) {
            return None;
        }
        let referenced = fields.get(1)?.parse().ok()?;
        let limit = match *fields.get(3)? {
            "none" => None,
            bytes => Some(bytes.parse().ok()?),
        };
        Some((referenced, limit))
    })
}

#[async_trait]
impl Backend for Btrfs {
    fn kind(&self) -> &'static str {
        "btrfs"
    }

    fn pool(&self) -> PathBuf {
        self.pool.clone()
    }

    fn limits_size(&self) -> bool {
        true
    }

    fn incremental(&self) -> bool {
        true
    }

    async fn prepare(&self) -> Result<(), BackendError> {
        let step = format!("preparing btrfs pool {}", self.pool.display());
        if pool::detect(&self.pool).await? != pool::Kind::Btrfs {
            return Err(failed(
                step,
                format!("{} is not on btrfs", self.pool.display()),
            ));
        }
        for sub in ["datasets", "snapshots", "incoming"] {
            let dir = self.pool.join(sub);
            tokio::fs::create_dir_all(&dir).await.map_err(|e| {
                io_failed(&self.pool, format!("{step}: creating {}", dir.display()), e)
            })?;
        }
        self.btrfs(
            &format!("{step}: enabling quotas"),
            &[
                OsStr::new("quota"),
                OsStr::new("enable"),
                self.pool.as_os_str(),
            ],
        )
        .await?;
        tracing::info!(pool = %self.pool.display(), "btrfs pool ready (quotas on)");
        Ok(())
    }

    async fn create(&self, id: &str, limit: Option<u64>) -> Result<PathBuf, BackendError> {
        check_id("dataset", id)?;
        let path = self.dataset_path(id);
        match subvolume_state(&path).await? {
            State::Subvolume => {
                self.limit(&path, limit).await?;
                tracing::debug!(dataset = id, "exists already");
                return Ok(path);
            }
            State::Other => {
                return Err(failed(
                    format!("creating dataset {id}"),
                    format!("{} exists and is not a btrfs subvolume", path.display()),
                ));
            }
            State::Missing => {}
        }
        self.btrfs(
            &format!("creating subvolume {}", path.display()),
            &[
                OsStr::new("subvolume"),
                OsStr::new("create"),
                path.as_os_str(),
            ],
        )
        .await?;
        tracing::info!(dataset = id, ?limit, "created subvolume");
        if let Some(bytes) = limit
            && let Err(e) = self.limit(&path, Some(bytes)).await
        {
            if let Err(undo) = self.delete_subvolume(&path).await {
                tracing::warn!(dataset = id, error = %undo, "cannot delete the subvolume of a failed create");
            }
            return Err(e);
        }
        Ok(path)
    }

    async fn set_limit(&self, id: &str, limit: Option<u64>) -> Result<(), BackendError> {
        check_id("dataset", id)?;
        let path = self.dataset_path(id);
        if !is_subvolume(&path).await? {
            return Err(BackendError::NotFound {
                what: format!("dataset {id}"),
            });
        }
        self.limit(&path, limit).await?;
        tracing::info!(dataset = id, ?limit, "set the dataset's limit");
        Ok(())
    }

    async fn destroy(&self, id: &str) -> Result<(), BackendError> {
        check_id("dataset", id)?;
        self.delete_if_subvolume(&self.dataset_path(id)).await
    }

    async fn snapshot(&self, id: &str, snapshot: &str) -> Result<(), BackendError> {
        check_id("dataset", id)?;
        check_id("snapshot", snapshot)?;
        let (source, target) = (self.dataset_path(id), self.snapshot_path(snapshot));
        if is_subvolume(&target).await? {
            tracing::debug!(snapshot, "exists already");
            return Ok(());
        }
        if !is_subvolume(&source).await? {
            return Err(BackendError::NotFound {
                what: format!("dataset {id}"),
            });
        }
        self.btrfs(
            &format!("snapshotting dataset {id} as {snapshot}"),
            &[
                OsStr::new("subvolume"),
                OsStr::new("snapshot"),
                OsStr::new("-r"),
                source.as_os_str(),
                target.as_os_str(),
            ],
        )
        .await?;
        tracing::info!(dataset = id, snapshot, "made read-only snapshot");
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
        if is_subvolume(&target).await? {
            tracing::debug!(dataset = id, "exists already");
            return Ok(target);
        }
        if !is_subvolume(&source).await? {
            return Err(BackendError::NotFound {
                what: format!("snapshot {snapshot}"),
            });
        }
        self.btrfs(
            &format!("cloning snapshot {snapshot} as dataset {id}"),
            &[
                OsStr::new("subvolume"),
                OsStr::new("snapshot"),
                source.as_os_str(),
                target.as_os_str(),
            ],
        )
        .await?;
        tracing::info!(snapshot, dataset = id, ?limit, "cloned snapshot");
        if let Some(bytes) = limit
            && let Err(e) = self.limit(&target, Some(bytes)).await
        {
            if let Err(undo) = self.delete_subvolume(&target).await {
                tracing::warn!(dataset = id, error = %undo, "cannot delete the subvolume of a failed clone");
            }
            return Err(e);
        }
        Ok(target)
    }

    async fn delete_snapshot(&self, snapshot: &str) -> Result<(), BackendError> {
        check_id("snapshot", snapshot)?;
        self.delete_if_subvolume(&self.snapshot_path(snapshot))
            .await
    }

    async fn datasets(&self) -> Result<Vec<String>, BackendError> {
        pool::list(&self.pool.join("datasets"), true).await
    }

    async fn snapshots(&self) -> Result<Vec<String>, BackendError> {
        pool::list(&self.pool.join("snapshots"), true).await
    }

    async fn send(&self, snapshot: &str, parent: Option<&str>) -> Result<SendStream, BackendError> {
        check_id("snapshot", snapshot)?;
        let path = self.snapshot_path(snapshot);
        if !is_subvolume(&path).await? {
            return Err(BackendError::NotFound {
                what: format!("snapshot {snapshot}"),
            });
        }
        let mut command = Command::new("btrfs");
        command.args(["-q", "send"]);
        if let Some(parent) = parent {
            check_id("snapshot", parent)?;
            let parent_path = self.snapshot_path(parent);
            if !is_subvolume(&parent_path).await? {
                return Err(BackendError::NotFound {
                    what: format!("parent snapshot {parent}"),
                });
            }
            command.arg("-p").arg(parent_path);
        }
        let step = match parent {
            Some(parent) => format!("sending snapshot {snapshot} (relative to {parent})"),
            None => format!("sending snapshot {snapshot}"),
        };
        let mut child = command
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(&step, format!("cannot run btrfs: {e}")))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(failed(&step, "btrfs send has no stdout or stderr pipe"));
        };
        pool::widen_pipe(&stdout);
        let said = tokio::spawn(pool::drain(stderr));
        tracing::info!(snapshot, ?parent, "sending snapshot");
        let pool = self.pool.clone();
        let done = async move {
            // `child` lives here: dropping the stream unread kills `btrfs send`.
            let status = child.wait().await.map_err(|e| failed(&step, e))?;
            let said = said.await.unwrap_or_default();
            if status.success() {
                tracing::debug!(step, "send finished");
                Ok(())
            } else {
                Err(pool::tool_failed(&pool, &step, &said, status))
            }
        };
        Ok(SendStream {
            reader: Box::pin(stdout),
            done: Box::pin(done),
        })
    }

    async fn receive(
        &self,
        snapshot: &str,
        stream: Pin<Box<dyn AsyncRead + Send>>,
    ) -> Result<(), BackendError> {
        check_id("snapshot", snapshot)?;
        let target = self.snapshot_path(snapshot);
        if !matches!(subvolume_state(&target).await?, State::Missing) {
            return Err(failed(
                format!("receiving snapshot {snapshot}"),
                format!("{} exists already", target.display()),
            ));
        }
        let dir = pool::incoming_dir(&self.pool).await?;
        let guard = {
            let (backend, dir) = (self.clone(), dir.clone());
            pool::Cleanup::new(async move {
                if let Err(e) = backend.remove_incoming(&dir).await {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a cancelled receive");
                }
            })
        };
        let result = self.receive_into(&dir, snapshot, &target, stream).await;
        let cleaned = self.remove_incoming(&dir).await;
        guard.disarm();
        match (result, cleaned) {
            (Err(e), cleaned) => {
                if let Err(c) = cleaned {
                    tracing::warn!(dir = %dir.display(), error = %c, "cannot remove a failed receive");
                }
                Err(e)
            }
            (Ok(()), Err(c)) => {
                // The snapshot is complete; what is left goes at the next clean_incoming.
                tracing::warn!(dir = %dir.display(), error = %c, "cannot remove the received copy");
                Ok(())
            }
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    async fn pool_usage(&self) -> Result<Usage, BackendError> {
        pool::statvfs_usage(&self.pool).await
    }

    async fn usage(&self, id: &str) -> Result<Usage, BackendError> {
        check_id("dataset", id)?;
        let path = self.dataset_path(id);
        if !is_subvolume(&path).await? {
            return Err(BackendError::NotFound {
                what: format!("dataset {id}"),
            });
        }
        let step = format!("reading the usage of dataset {id}");
        let root = self
            .btrfs(
                &format!("{step}: finding its subvolume id"),
                &[
                    OsStr::new("inspect-internal"),
                    OsStr::new("rootid"),
                    path.as_os_str(),
                ],
            )
            .await?;
        let root: u64 = root
            .trim()
            .parse()
            .map_err(|e| failed(&step, format!("subvolume id {:?}: {e}", root.trim())))?;
        let table = self
            .btrfs(
                &format!("{step}: reading qgroups"),
                &[
                    OsStr::new("qgroup"),
                    OsStr::new("show"),
                    OsStr::new("--raw"),
                    OsStr::new("-r"),
                    OsStr::new("-e"),
                    self.pool.as_os_str(),
                ],
            )
            .await?;
        let (used, limit) = parse_qgroup(&table, root)
            .ok_or_else(|| failed(&step, format!("no qgroup 0/{root} in: {}", table.trim())))?;
        let free = self.pool_usage().await?.available;
        Ok(Usage {
            used,
            available: limit.map_or(free, |limit| limit.saturating_sub(used).min(free)),
            limit,
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
            match subvolume_state(&path).await? {
                State::Missing => continue,
                State::Subvolume => self.delete_subvolume(&path).await?,
                State::Other if entry.file_type().await.is_ok_and(|t| t.is_dir()) => {
                    self.remove_incoming(&path).await?;
                }
                State::Other => remove_any(&path).await.map_err(|e| failed(step(), e))?,
            }
            tracing::info!(path = %path.display(), "removed a leftover receive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qgroup_tables_parse() {
        let new = "\
Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path
--------    ----------    ---------  --------------  -------------   ----
0/5              16384        16384            none           none   <toplevel>
0/256          4210688      4210688        16777216           none   datasets/d1
0/257            16384        16384            none           none   <stale>
";
        assert_eq!(parse_qgroup(new, 256), Some((4_210_688, Some(16_777_216))));
        assert_eq!(parse_qgroup(new, 257), Some((16384, None)));
        assert_eq!(parse_qgroup(new, 25), None);
        let old = "\
qgroupid         rfer         excl     max_rfer     max_excl
--------         ----         ----     --------     --------
0/258           16384        16384     52428800         none
";
        assert_eq!(parse_qgroup(old, 258), Some((16384, Some(52_428_800))));
    }
}
