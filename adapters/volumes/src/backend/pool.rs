//! The pool: a btrfs mount or a directory, or a btrfs filesystem on a loop file.
//!
//! - [`detect`] tells whether a path is on btrfs (`statfs`'s `f_type`), and [`open`] picks
//!   the backend for it ([`Choice::Auto`]: btrfs where the path is on btrfs, plain
//!   directories elsewhere).
//! - [`ensure_image`] gives a host without a btrfs disk a btrfs pool anyway: a sparse file
//!   formatted once and mounted through a loop device; [`unmount`] takes it down again and
//!   makes sure the loop device is gone too.
//!
//! Mounting goes through util-linux's `mount`/`umount` rather than `mount(2)`: a loop mount
//! needs a loop device attached to the file first (`LOOP_CTL_GET_FREE`, `LOOP_CONFIGURE`
//! ioctls, which this crate cannot issue without `unsafe`), and `mount -o loop` does that,
//! sets the device to detach itself when the filesystem is unmounted (autoclear), and keeps
//! its bookkeeping (`/run/mount/utab`) straight together with `umount`.
//!
//! The rest of this module is what both backends share: running a tool with a timeout and
//! turning what it said into a [`BackendError`], the `incoming/` work directories, listings,
//! and the pool's free space.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::process::Command;

use super::btrfs::Btrfs;
use super::directory::Directory;
use super::{Backend, BackendError, Usage};

/// How long one administrative command (anything but a stream or a copy) may take before it
/// is killed.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);

/// The filesystem a pool is on, as far as choosing a backend goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// btrfs: subvolumes, qgroups, send/receive.
    Btrfs,
    /// Anything else (ext4, xfs, tmpfs, ...): plain directories.
    Other,
}

/// Which backend [`open`] uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// btrfs when the pool is on btrfs, plain directories otherwise.
    #[default]
    Auto,
    /// btrfs, and an error when the pool is not on btrfs.
    Btrfs,
    /// Plain directories, whatever the filesystem.
    Directory,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Choice::Auto => "auto",
            Choice::Btrfs => "btrfs",
            Choice::Directory => "directory",
        })
    }
}

impl FromStr for Choice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Choice::Auto),
            "btrfs" => Ok(Choice::Btrfs),
            "directory" => Ok(Choice::Directory),
            other => Err(format!(
                "unknown backend {other:?} (expected auto, btrfs or directory)"
            )),
        }
    }
}

/// Whether `path` (which must exist) is on btrfs.
pub async fn detect(path: &Path) -> Result<Kind, BackendError> {
    let (btrfs, name) = fs_type(path).await?;
    let kind = if btrfs { Kind::Btrfs } else { Kind::Other };
    tracing::debug!(path = %path.display(), filesystem = name, ?kind, "detected the pool's filesystem");
    Ok(kind)
}

/// `statfs(path)`: whether it is btrfs, and the filesystem's name for messages.
async fn fs_type(path: &Path) -> Result<(bool, String), BackendError> {
    let owned = path.to_owned();
    let stat = tokio::task::spawn_blocking(move || nix::sys::statfs::statfs(&owned))
        .await
        .map_err(|e| failed(format!("statfs {}", path.display()), e))?
        .map_err(|e| failed(format!("statfs {}", path.display()), e))?;
    let btrfs = stat.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC;
    #[allow(clippy::useless_conversion)] // fs_type_t is i64 on some targets, u32 on others
    let magic = i64::from(stat.filesystem_type().0);
    Ok((btrfs, fs_name(magic)))
}

/// A filesystem's name from its `statfs` magic, for messages.
fn fs_name(magic: i64) -> String {
    match magic {
        0x9123_683e => "btrfs".to_owned(),
        0xef53 => "ext2/3/4".to_owned(),
        0x5846_5342 => "xfs".to_owned(),
        0x0102_1994 => "tmpfs".to_owned(),
        0x794c_7630 => "overlayfs".to_owned(),
        0x6969 => "nfs".to_owned(),
        0x2fc1_2fc1 => "zfs".to_owned(),
        other => format!("filesystem type {other:#x}"),
    }
}

/// The backend for the pool at `path`, prepared ([`Backend::prepare`]: its directories
/// made, quotas on for btrfs). The directory is created when missing (and removed again
/// when the choice cannot be honoured). [`Choice::Btrfs`] on a path that is not on btrfs is
/// an error that says so.
pub async fn open(path: &Path, backend: Choice) -> Result<Arc<dyn Backend>, BackendError> {
    let created = match tokio::fs::metadata(path).await {
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tokio::fs::create_dir_all(path).await.map_err(|e| {
                io_failed(
                    path,
                    format!("creating pool directory {}", path.display()),
                    e,
                )
            })?;
            tracing::info!(pool = %path.display(), "created the pool directory");
            true
        }
        Err(e) => {
            return Err(failed(format!("opening pool {}", path.display()), e));
        }
    };
    let (btrfs, name) = fs_type(path).await?;
    let chosen: Arc<dyn Backend> = match (backend, btrfs) {
        (Choice::Auto | Choice::Btrfs, true) => Arc::new(Btrfs::new(path)),
        (Choice::Auto | Choice::Directory, _) => Arc::new(Directory::new(path)),
        (Choice::Btrfs, false) => {
            if created {
                let _ = tokio::fs::remove_dir(path).await;
            }
            return Err(BackendError::Failed {
                step: format!("opening btrfs pool {}", path.display()),
                reason: format!(
                    "{} is on {name}, not btrfs (mount a btrfs filesystem there, or choose the \
                     directory backend)",
                    path.display()
                ),
            });
        }
    };
    tracing::info!(
        pool = %path.display(),
        filesystem = name,
        choice = %backend,
        backend = chosen.kind(),
        "opened the pool"
    );
    chosen.prepare().await?;
    Ok(chosen)
}

/// Makes sure a btrfs filesystem on the loop file `image` is mounted at `mountpoint`.
///
/// Nothing when `mountpoint` already has a btrfs filesystem mounted. Otherwise: creates
/// `image` as a sparse file of `size` bytes when it does not exist, formats it
/// (`mkfs.btrfs -q`) unless it already holds a btrfs filesystem — an image with any other
/// filesystem is refused, never reformatted — and mounts it (`mount -o loop`). A file this
/// call created is removed again when a later step fails. Not safe to run concurrently for
/// the same image (callers serialize), and an image already mounted *elsewhere* is not
/// noticed (it would be mounted a second time).
pub async fn ensure_image(image: &Path, size: u64, mountpoint: &Path) -> Result<(), BackendError> {
    let step = format!("mounting {} at {}", image.display(), mountpoint.display());
    if let Some(mount) = find_mount(mountpoint).await? {
        if mount.fstype != "btrfs" {
            return Err(BackendError::Failed {
                step,
                reason: format!(
                    "{} has a {} filesystem ({}) mounted, not btrfs",
                    mountpoint.display(),
                    mount.fstype,
                    mount.source
                ),
            });
        }
        match loop_backing_file(&mount.source).await {
            Some(backing)
                if !same_file(&backing, image).await
                    && !loop_backed_by(&mount.source, image).await =>
            {
                tracing::warn!(
                mountpoint = %mountpoint.display(),
                image = %image.display(),
                mounted = %backing.display(),
                    "a btrfs filesystem from another file is mounted there; using it"
                );
            }
            _ => {}
        }
        tracing::debug!(mountpoint = %mountpoint.display(), source = mount.source, "btrfs is mounted already");
        return Ok(());
    }

    if let Some(parent) = image.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| io_failed(parent, format!("creating {}", parent.display()), e))?;
    }
    let created = create_sparse(image, size).await?;
    let result = format_and_mount(image, mountpoint).await;
    if result.is_err()
        && created
        && let Err(e) = tokio::fs::remove_file(image).await
    {
        tracing::warn!(image = %image.display(), error = %e, "cannot remove the image made for a failed mount");
    }
    result
}

/// Creates `image` as a sparse file of `size` bytes; false when it existed already.
async fn create_sparse(image: &Path, size: u64) -> Result<bool, BackendError> {
    let step = format!("creating image {}", image.display());
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)
        .await;
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            tracing::debug!(image = %image.display(), "the image exists");
            return Ok(false);
        }
        Err(e) => return Err(io_failed(image, step, e)),
    };
    if let Err(e) = file.set_len(size).await {
        drop(file);
        let _ = tokio::fs::remove_file(image).await;
        return Err(io_failed(image, format!("{step} ({size} bytes)"), e));
    }
    tracing::info!(image = %image.display(), size, "created a sparse pool image");
    Ok(true)
}

/// Formats `image` unless it holds btrfs already, then mounts it at `mountpoint`.
async fn format_and_mount(image: &Path, mountpoint: &Path) -> Result<(), BackendError> {
    if has_btrfs_magic(image).await? {
        tracing::debug!(image = %image.display(), "the image holds a btrfs filesystem already");
    } else {
        // Without `-f`, mkfs.btrfs refuses a file that has any filesystem signature: an
        // image with another filesystem is never overwritten.
        run(
            image,
            &format!("formatting {} as btrfs", image.display()),
            "mkfs.btrfs",
            &[OsStr::new("-q"), image.as_os_str()],
            Some(TIMEOUT),
        )
        .await?;
        tracing::info!(image = %image.display(), "formatted the image as btrfs");
    }
    tokio::fs::create_dir_all(mountpoint).await.map_err(|e| {
        io_failed(
            mountpoint,
            format!("creating mountpoint {}", mountpoint.display()),
            e,
        )
    })?;
    run(
        mountpoint,
        &format!("mounting {} at {}", image.display(), mountpoint.display()),
        "mount",
        &[
            OsStr::new("-o"),
            OsStr::new("loop"),
            image.as_os_str(),
            mountpoint.as_os_str(),
        ],
        Some(TIMEOUT),
    )
    .await?;
    tracing::info!(image = %image.display(), mountpoint = %mountpoint.display(), "mounted the pool image");
    Ok(())
}

/// Where btrfs keeps its superblock's magic, and the magic.
const BTRFS_MAGIC_OFFSET: u64 = 0x1_0040;
const BTRFS_MAGIC: &[u8; 8] = b"_BHRfS_M";

/// Whether `image` holds a btrfs superblock (a file too short for one holds none).
async fn has_btrfs_magic(image: &Path) -> Result<bool, BackendError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let step = || format!("reading the superblock of {}", image.display());
    let mut file = tokio::fs::File::open(image)
        .await
        .map_err(|e| failed(step(), e))?;
    file.seek(io::SeekFrom::Start(BTRFS_MAGIC_OFFSET))
        .await
        .map_err(|e| failed(step(), e))?;
    let mut magic = [0u8; 8];
    match file.read_exact(&mut magic).await {
        Ok(_) => Ok(&magic == BTRFS_MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(failed(step(), e)),
    }
}

/// Unmounts `mountpoint` (nothing when nothing is mounted there) and, when it was a loop
/// mount, makes sure the loop device is detached: `mount -o loop` sets it to detach itself
/// when the filesystem goes, but the kernel does that a moment later; after a few seconds
/// a device still attached to the same file is detached here (`losetup -d`).
pub async fn unmount(mountpoint: &Path) -> Result<(), BackendError> {
    let Some(mount) = find_mount(mountpoint).await? else {
        tracing::debug!(mountpoint = %mountpoint.display(), "nothing is mounted there");
        return Ok(());
    };
    let backing = loop_backing_file(&mount.source).await;
    run(
        mountpoint,
        &format!("unmounting {}", mountpoint.display()),
        "umount",
        &[mountpoint.as_os_str()],
        Some(TIMEOUT),
    )
    .await?;
    tracing::info!(mountpoint = %mountpoint.display(), source = mount.source, "unmounted the pool");
    let Some(backing) = backing else {
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // The device is gone, or already reused for another file: either way not ours.
        match loop_backing_file(&mount.source).await {
            Some(now) if now == backing => {}
            _ => return Ok(()),
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run(
        mountpoint,
        &format!("detaching {} (from {})", mount.source, backing.display()),
        "losetup",
        &[OsStr::new("-d"), OsStr::new(&mount.source)],
        Some(TIMEOUT),
    )
    .await?;
    tracing::info!(device = mount.source, image = %backing.display(), "detached the loop device");
    Ok(())
}

/// One line of `/proc/self/mountinfo`, as far as this module cares.
#[derive(Debug)]
struct Mount {
    fstype: String,
    source: String,
}

/// What is mounted at `mountpoint` (the last mount there), if anything.
async fn find_mount(mountpoint: &Path) -> Result<Option<Mount>, BackendError> {
    let wanted = match tokio::fs::canonicalize(mountpoint).await {
        Ok(path) => path,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(failed(format!("resolving {}", mountpoint.display()), e));
        }
    };
    let table = tokio::fs::read_to_string("/proc/self/mountinfo")
        .await
        .map_err(|e| failed("reading /proc/self/mountinfo", e))?;
    Ok(table
        .lines()
        .filter_map(parse_mountinfo)
        .filter(|(point, _)| Path::new(point) == wanted)
        .map(|(_, mount)| mount)
        .next_back())
}

/// `(mount point, mount)` from a mountinfo line:
/// `36 35 98:0 /root /mnt/point rw,noatime master:1 - ext4 /dev/vda rw`.
fn parse_mountinfo(line: &str) -> Option<(String, Mount)> {
    let (left, right) = line.split_once(" - ")?;
    let point = unescape_mountinfo(left.split(' ').nth(4)?);
    let mut right = right.split(' ');
    let fstype = right.next()?.to_owned();
    let source = unescape_mountinfo(right.next()?);
    Some((point, Mount { fstype, source }))
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = |d: u8| (b'0'..=b'7').contains(&d).then(|| u32::from(d - b'0'));
        if bytes[i] == b'\\'
            && let Some(&[a, b, c]) = bytes.get(i + 1..i + 4)
            && let (Some(a), Some(b), Some(c)) = (octal(a), octal(b), octal(c))
            && let Ok(value) = u8::try_from(a * 64 + b * 8 + c)
        {
            out.push(value);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file loop device `device` (`/dev/loopN`) is attached to, if it is one and attached.
async fn loop_backing_file(device: &str) -> Option<PathBuf> {
    let name = device.strip_prefix("/dev/")?;
    if !name.starts_with("loop") {
        return None;
    }
    let backing = tokio::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
        .await
        .ok()?;
    Some(PathBuf::from(backing.trim_end_matches('\n')))
}

/// Whether loop device `device` is backed by the file `image`, by the backing file's
/// device and inode (`losetup`): the backing path the kernel shows is the one seen where
/// the device was set up, which from another mount namespace (a container's) may name
/// nothing here, or something else.
pub async fn loop_backed_by(device: &str, image: &Path) -> bool {
    let Ok(meta) = tokio::fs::metadata(image).await else {
        return false;
    };
    let Ok(out) = tokio::process::Command::new("losetup")
        .args([
            "--list",
            "--json",
            "--output",
            "BACK-INO,BACK-MAJ:MIN",
            device,
        ])
        .output()
        .await
    else {
        return false;
    };
    let Ok(listing) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return false;
    };
    let Some(entry) = listing["loopdevices"].get(0) else {
        return false;
    };
    // losetup writes numbers as numbers or as strings, depending on its version.
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.trim().to_owned(),
        other => other.to_string(),
    };
    let wanted_dev = format!(
        "{}:{}",
        nix::sys::stat::major(meta.dev()),
        nix::sys::stat::minor(meta.dev())
    );
    text(&entry["back-ino"]) == meta.ino().to_string() && text(&entry["back-maj:min"]) == wanted_dev
}

/// Whether `a` and `b` name the same file.
async fn same_file(a: &Path, b: &Path) -> bool {
    match (tokio::fs::metadata(a).await, tokio::fs::metadata(b).await) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => a == b,
    }
}

// --- Shared by the backends ---------------------------------------------------------------

/// A [`BackendError::Failed`] for `step` from any error.
pub(crate) fn failed(step: impl Into<String>, error: impl fmt::Display) -> BackendError {
    BackendError::Failed {
        step: step.into(),
        reason: error.to_string(),
    }
}

/// An I/O error of `step` in `pool`: [`BackendError::Full`] for ENOSPC, else `Failed`.
pub(crate) fn io_failed(pool: &Path, step: impl Into<String>, error: io::Error) -> BackendError {
    let step = step.into();
    if error.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) {
        BackendError::Full {
            pool: pool.display().to_string(),
            reason: format!("{step}: {error}"),
        }
    } else {
        BackendError::Failed {
            step,
            reason: error.to_string(),
        }
    }
}

/// What a tool said on stderr when it failed, as an error of `step` in `pool`:
/// [`BackendError::Full`] when it ran out of space (ENOSPC, or tar's short write).
pub(crate) fn tool_failed(
    pool: &Path,
    step: &str,
    stderr: &[u8],
    status: impl fmt::Display,
) -> BackendError {
    let said = String::from_utf8_lossy(stderr).trim().to_owned();
    let reason = if said.is_empty() {
        format!("exited with {status}")
    } else {
        said
    };
    // GNU tar reports a short write on extraction (what ENOSPC gives it mid-file) as
    // "Wrote only N of M bytes", without the errno.
    if reason.contains("No space left on device") || reason.contains("Wrote only") {
        BackendError::Full {
            pool: pool.display().to_string(),
            reason: format!("{step}: {reason}"),
        }
    } else {
        BackendError::Failed {
            step: step.to_owned(),
            reason,
        }
    }
}

/// Runs `program args` for `step` (killed after `timeout`; `None` for a copy, which takes
/// as long as the data), and returns its stdout. `pool` names the pool in a
/// [`BackendError::Full`].
pub(crate) async fn run(
    pool: &Path,
    step: &str,
    program: &str,
    args: &[&OsStr],
    timeout: Option<Duration>,
) -> Result<String, BackendError> {
    tracing::debug!(step, program, ?args, "running");
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = match timeout {
        Some(limit) => tokio::time::timeout(limit, command.output())
            .await
            .map_err(|_| BackendError::Failed {
                step: step.to_owned(),
                reason: format!(
                    "{program} did not finish within {}s (killed)",
                    limit.as_secs()
                ),
            })?,
        None => command.output().await,
    }
    .map_err(|e| BackendError::Failed {
        step: step.to_owned(),
        reason: format!("cannot run {program}: {e}"),
    })?;
    if !output.status.success() {
        return Err(tool_failed(pool, step, &output.stderr, output.status));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// How much of a tool's stderr is kept for an error message.
const STDERR_KEPT: usize = 64 * 1024;

/// Reads a child's stderr to the end (so the child never blocks on it), keeping the first
/// 64 KiB.
pub(crate) async fn drain(mut stderr: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = STDERR_KEPT.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&buf[..room]);
            }
        }
    }
}

/// Which side of a copy failed.
#[derive(Debug)]
pub(crate) enum CopyError {
    /// Reading the source (the stream from the other node).
    Read(io::Error),
    /// Writing the destination (a tool's stdin: the tool has probably exited).
    Write(io::Error),
}

/// Copies `from` to `to` until `from` ends; the bytes copied.
/// Makes a pipe to or from a tool hold 1 MiB instead of the kernel's 64 KiB, so that a
/// stream of gigabytes crosses it in a sixteenth of the wake-ups. Best effort: a pipe
/// that stays small only costs time (the size an unprivileged process may ask for is
/// bounded by /proc/sys/fs/pipe-max-size).
pub(crate) fn widen_pipe(pipe: &impl std::os::fd::AsFd) {
    let _ = nix::fcntl::fcntl(pipe, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
}

pub(crate) async fn copy(
    from: &mut (impl tokio::io::AsyncRead + Unpin + ?Sized),
    to: &mut (impl tokio::io::AsyncWrite + Unpin + ?Sized),
) -> Result<u64, CopyError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await.map_err(CopyError::Read)?;
        if n == 0 {
            to.flush().await.map_err(CopyError::Write)?;
            return Ok(total);
        }
        to.write_all(&buf[..n]).await.map_err(CopyError::Write)?;
        total += n as u64;
    }
}

/// How many bytes a receive writes between two write-backs of its filesystem.
const WRITE_BACK_EVERY: u64 = 32 << 20;

/// [`copy`], for a receive into the filesystem at `fs`: every [`WRITE_BACK_EVERY`] bytes it
/// starts writing back what the receive wrote so far (`syncfs`, off the async threads, one
/// at a time), so that the disk works while the stream is still arriving. A move ends with
/// its copy durable; without this, every byte would wait in the page cache for that last
/// flush. Best effort: a write-back that fails only leaves more for the last one.
pub(crate) async fn copy_writing_back(
    from: &mut (impl tokio::io::AsyncRead + Unpin + ?Sized),
    to: &mut (impl tokio::io::AsyncWrite + Unpin + ?Sized),
    fs: &Path,
) -> Result<u64, CopyError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut since = 0u64;
    let mut writing: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let n = from.read(&mut buf).await.map_err(CopyError::Read)?;
        if n == 0 {
            to.flush().await.map_err(CopyError::Write)?;
            return Ok(total);
        }
        to.write_all(&buf[..n]).await.map_err(CopyError::Write)?;
        total += n as u64;
        since += n as u64;
        if since >= WRITE_BACK_EVERY && writing.as_ref().is_none_or(|w| w.is_finished()) {
            since = 0;
            let fs = fs.to_owned();
            writing = Some(tokio::task::spawn_blocking(move || {
                if let Ok(dir) = std::fs::File::open(&fs) {
                    let _ = nix::unistd::syncfs(&dir);
                }
            }));
        }
    }
}

/// Runs `cleanup` on the runtime when dropped before [`Cleanup::disarm`]: what a cancelled
/// operation (its future dropped mid-way) leaves in `incoming/` goes without waiting for
/// [`Backend::clean_incoming`].
pub(crate) struct Cleanup {
    work: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl Cleanup {
    /// Arms `work` for the drop.
    pub(crate) fn new(work: impl std::future::Future<Output = ()> + Send + 'static) -> Cleanup {
        Cleanup {
            work: Some(Box::pin(work)),
        }
    }

    /// The operation finished (and cleaned up after itself): nothing to do at the drop.
    pub(crate) fn disarm(mut self) {
        self.work = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(work) = self.work.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(work);
        }
    }
}

/// Refuses an id that could leave its directory: empty, `.`-prefixed (hidden names are
/// this module's), with a `/` or a NUL, or too long for a file name.
pub(crate) fn check_id(what: &str, id: &str) -> Result<(), BackendError> {
    let bad = id.is_empty()
        || id.len() > 255
        || id.starts_with('.')
        || id.contains('/')
        || id.contains('\0');
    if bad {
        return Err(BackendError::Failed {
            step: format!("naming {what} {id:?}"),
            reason: "not a valid id".to_owned(),
        });
    }
    Ok(())
}

/// Numbers for `incoming/<n>`, unique in this process (and checked against what is on
/// disk by `create_dir`).
static INCOMING: AtomicU64 = AtomicU64::new(0);

/// Makes a fresh `<pool>/incoming/<n>/` for work whose result must appear all at once.
pub(crate) async fn incoming_dir(pool: &Path) -> Result<PathBuf, BackendError> {
    loop {
        let n = INCOMING.fetch_add(1, Ordering::Relaxed);
        let dir = pool.join("incoming").join(n.to_string());
        match tokio::fs::create_dir(&dir).await {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(io_failed(pool, format!("creating {}", dir.display()), e));
            }
        }
    }
}

/// The names in `dir` that are directories (subvolumes when `subvolumes_only`), without
/// hidden (`.`-prefixed) ones, sorted.
pub(crate) async fn list(dir: &Path, subvolumes_only: bool) -> Result<Vec<String>, BackendError> {
    let step = || format!("listing {}", dir.display());
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(failed(step(), e)),
    };
    let mut names = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(|e| failed(step(), e))? {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let meta = match tokio::fs::symlink_metadata(entry.path()).await {
            Ok(meta) => meta,
            // Deleted while listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(failed(step(), e)),
        };
        if meta.is_dir() && (!subvolumes_only || meta.ino() == SUBVOLUME_ROOT_INO) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The inode number of every btrfs subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`;
/// no other directory on btrfs has it).
pub(crate) const SUBVOLUME_ROOT_INO: u64 = 256;

/// Space in the filesystem of `pool` (`statvfs`): `limit` is its size.
#[allow(clippy::useless_conversion)] // the statvfs fields are narrower on 32-bit targets
pub(crate) async fn statvfs_usage(pool: &Path) -> Result<Usage, BackendError> {
    let owned = pool.to_owned();
    let step = || format!("statvfs {}", pool.display());
    let stat = tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(&owned))
        .await
        .map_err(|e| failed(step(), e))?
        .map_err(|e| failed(step(), e))?;
    let unit = u64::from(stat.fragment_size());
    let total = u64::from(stat.blocks()).saturating_mul(unit);
    let free = u64::from(stat.blocks_free()).saturating_mul(unit);
    let available = u64::from(stat.blocks_available()).saturating_mul(unit);
    Ok(Usage {
        used: total.saturating_sub(free),
        available,
        limit: Some(total),
    })
}

/// Renames `from` to `to` unless `to` exists (`renameat2(RENAME_NOREPLACE)`: then
/// `AlreadyExists`), so that a result appears whole and never replaces another.
pub(crate) async fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (a, b) = (from.to_owned(), to.to_owned());
    tokio::task::spawn_blocking(move || rename_noreplace_blocking(&a, &b))
        .await
        .map_err(io::Error::other)?
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rename_noreplace_blocking(from: &Path, to: &Path) -> io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE).map_err(io::Error::from)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn rename_noreplace_blocking(from: &Path, to: &Path) -> io::Result<()> {
    // No renameat2 wrapper here: check, then rename (racy, but only against ourselves).
    if to.symlink_metadata().is_ok() {
        return Err(io::Error::from(io::ErrorKind::AlreadyExists));
    }
    std::fs::rename(from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse() {
        let line = "36 35 98:0 / /mnt/my\\040pool rw,noatime shared:1 - btrfs /dev/loop3 rw,space_cache=v2";
        let (point, mount) = parse_mountinfo(line).expect("parses");
        assert_eq!(point, "/mnt/my pool");
        assert_eq!(mount.fstype, "btrfs");
        assert_eq!(mount.source, "/dev/loop3");
        assert!(parse_mountinfo("garbage").is_none());
    }

    #[test]
    fn choices_parse() {
        assert_eq!("auto".parse::<Choice>(), Ok(Choice::Auto));
        assert_eq!("btrfs".parse::<Choice>(), Ok(Choice::Btrfs));
        assert_eq!("directory".parse::<Choice>(), Ok(Choice::Directory));
        assert!("zfs".parse::<Choice>().is_err());
    }

    #[test]
    fn ids_that_leave_their_directory_are_refused() {
        for bad in ["", ".", "..", ".hidden", "a/b", "a\0b"] {
            assert!(check_id("dataset", bad).is_err(), "{bad:?}");
        }
        assert!(check_id("dataset", "web-data-1").is_ok());
    }
}
