//! Hot reload: a new configuration applies atomically to new requests; a broken one is
//! rejected with its errors logged while the old one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use powerstrip_config::ConfigErrors;
use tracing::{error, info, warn};

use crate::chains::Chains;
use crate::metrics::OutcomeLabels;
use crate::proxy::Proxy;

/// What identifies a version of the file on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// SIGHUP, watched from the moment [`hangup_signal`] is called.
pub type Hangup = Option<tokio::signal::unix::Signal>;

/// Starts watching SIGHUP at once (inside a runtime): call it before announcing the
/// server, so a reload request that comes early is queued instead of killing the process
/// (SIGHUP's default action).
pub fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(err) => {
            warn!(error = %err, "cannot watch SIGHUP; reloading on file changes only");
            None
        }
    }
}

/// Rebuilds the chains from `path` on every SIGHUP (from `hangup`) and whenever the file
/// changes (checked every `poll`), for as long as the future runs. `build` validates and
/// builds; the proxy's chains are replaced only when it succeeds.
pub async fn watch_config<F>(
    proxy: Arc<Proxy>,
    path: PathBuf,
    poll: Duration,
    mut hangup: Hangup,
    build: F,
) where
    F: Fn(&Path) -> Result<Chains, ConfigErrors> + Send + Sync,
{
    let mut last = stamp(&path);
    // The first check one period from now: the file as it is now is the one loaded.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            _ = async { match hangup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => "SIGHUP",
            _ = ticker.tick() => {
                let now = stamp(&path);
                if now == last {
                    continue;
                }
                "file changed"
            }
        };
        // What was just read needs no second reload when the poll sees it.
        last = stamp(&path);
        reload(&proxy, &path, trigger, &build);
    }
}

/// One reload attempt, reported and counted.
pub fn reload<F>(proxy: &Proxy, path: &Path, trigger: &str, build: &F) -> bool
where
    F: Fn(&Path) -> Result<Chains, ConfigErrors>,
{
    match build(path) {
        Ok(chains) => {
            proxy.replace_chains(chains);
            proxy
                .metrics()
                .reloads
                .get_or_create(&OutcomeLabels { outcome: "applied" })
                .inc();
            info!(config = %path.display(), trigger, "configuration reloaded");
            true
        }
        Err(errors) => {
            proxy
                .metrics()
                .reloads
                .get_or_create(&OutcomeLabels {
                    outcome: "rejected",
                })
                .inc();
            for problem in &errors.0 {
                error!(%problem, "configuration rejected");
            }
            error!(config = %path.display(), trigger, errors = errors.0.len(),
                "the new configuration is invalid; the previous one keeps serving");
            false
        }
    }
}
