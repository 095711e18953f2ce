//! The volumes adapter on one host, as users meet it: the real docker CLI through the real
//! `powerstrip` binary (with `volumes` linked in), the real dockerd, a real btrfs pool on a
//! loop file of the test's own (and a plain directory for the directory backend).
//!
//! Needs the real daemon (`scripts/ensure-docker`) and btrfs-progs (`scripts/ensure-tools
//! test`); under `CI=true` their absence fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use powerstrip_testenv::btrfs::{self, TestPool};
use support::{Containers, IMAGE, ProxyProcess, StartedProxy, direct, docker, require_docker};

/// The adapter's endpoints.
const ENDPOINTS: &str = r#"
[[endpoints]]
match = "POST /*/containers/create"
pre = ["vol"]
post = ["vol"]

[[endpoints]]
match = "POST /*/containers/*/start"
pre = ["vol"]
post = ["vol"]

[[endpoints]]
match = "DELETE /*/containers/*"
pre = ["vol"]
post = ["vol"]
"#;

/// Where the datasets of a test live.
enum Pool {
    Btrfs(TestPool),
    Directory(tempfile::TempDir),
}

impl Pool {
    fn path(&self) -> &Path {
        match self {
            Pool::Btrfs(pool) => pool.path(),
            Pool::Directory(dir) => dir.path(),
        }
    }
}

/// A proxy with `volumes` on a pool of the test's own, and the containers the test made.
struct Vol {
    proxy: StartedProxy,
    // Dropped after the proxy and the containers (fields drop in order).
    containers: Containers,
    pool: Pool,
}

impl Vol {
    /// A proxy whose `vol` adapter has these extra options, on a btrfs pool (or a plain
    /// directory).
    fn start(btrfs: bool, extra: &str, more: &str) -> Option<Vol> {
        if !require_docker() || (btrfs && !btrfs::require()) {
            return None;
        }
        let pool = if btrfs {
            // Sparse: costs what is written.
            Pool::Btrfs(TestPool::new(2 << 30))
        } else {
            // On the host's filesystem: where Docker can bind-mount it from.
            Pool::Directory(tempfile::tempdir_in("/var/tmp").unwrap())
        };
        let config = format!(
            "version = 1\n{more}\n[adapters]\nvol = {{ builtin = \"volumes\", pool = \"{}\", listen = \"127.0.0.1:0\", profiles = {{ gold = {{ size = \"16M\" }}, silver = {{ size = \"64M\" }}, roomy = {{}}, huge = {{ size = \"100G\" }} }}{extra} }}\n{ENDPOINTS}",
            pool.path().display()
        );
        let proxy = ProxyProcess::options()
            .config(&config)
            .log("info,powerstrip_volumes=debug")
            .start();
        Some(Vol {
            proxy,
            containers: Containers::new("volumes"),
            pool,
        })
    }

    /// `docker ARGS` through the proxy.
    async fn docker(&self, args: &[&str]) -> support::Run {
        docker(&self.proxy.host(), args, None).await
    }

    /// `docker run --rm ... IMAGE sh -c SCRIPT` through the proxy; stdout, or the failure.
    async fn sh(&self, volume: &str, script: &str) -> Result<String, String> {
        let run = self
            .docker(&[
                "run",
                "--rm",
                "--label",
                self.containers.label(),
                "-v",
                volume,
                IMAGE,
                "sh",
                "-c",
                script,
            ])
            .await;
        if run.code == 0 {
            Ok(run.out())
        } else {
            Err(format!("{}{}", run.out(), run.stderr))
        }
    }

    /// `powerstrip volumes ARGS` for this proxy (its state directory, its store).
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_powerstrip"))
            .arg("volumes")
            .args(args)
            .arg("--state-dir")
            .arg(self.proxy.dir().join("state"))
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_written_by_one_container_is_read_by_the_next_and_names_resolve_as_users_write_them() {
    for btrfs in [true, false] {
        let Some(vol) = Vol::start(btrfs, "", "") else {
            return;
        };
        let kind = if btrfs { "btrfs" } else { "directory" };
        // demo@gold creates it, demo uses it.
        vol.sh("demo@gold:/data", "echo hello > /data/greeting")
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}\n{}", vol.proxy.log()));
        let read = vol.sh("demo:/data", "cat /data/greeting").await.unwrap();
        assert_eq!(read.trim(), "hello", "{kind}");
        // --mount works the same.
        let mount = vol
            .docker(&[
                "run",
                "--rm",
                "--mount",
                "type=volume,source=demo,target=/m,readonly",
                IMAGE,
                "sh",
                "-c",
                "cat /m/greeting; touch /m/x 2>&1 || true",
            ])
            .await;
        assert_eq!(mount.code, 0, "{kind}: {mount:?}");
        assert!(mount.out().starts_with("hello"), "{kind}: {}", mount.out());
        assert!(mount.out().contains("Read-only"), "{kind}: {}", mount.out());
        // What users see: the dataset in `powerstrip volumes ls`, the container's mount
        // a bind of the dataset's path in the pool.
        let (ok, ls) = vol.cli(&["ls"]);
        assert!(ok, "{ls}");
        assert!(
            ls.lines()
                .any(|l| l.starts_with("demo ") && l.contains("gold") && l.contains("16 MiB")),
            "{kind}: {ls}"
        );
        let id = vol
            .docker(&[
                "create",
                "--label",
                vol.containers.label(),
                "-v",
                "demo:/data",
                IMAGE,
                "true",
            ])
            .await;
        assert_eq!(id.code, 0, "{id:?}");
        let mounts = docker(
            &direct(),
            &[
                "inspect",
                "-f",
                "{{json .HostConfig.Mounts}}",
                id.out().trim(),
            ],
            None,
        )
        .await
        .out();
        assert!(
            mounts.contains("\"Type\":\"bind\"")
                && mounts.contains(&vol.pool.path().display().to_string()),
            "{kind}: {mounts}"
        );
        // Docker's own named volumes and host paths pass untouched.
        let docker_volume = format!("psdocker{}", std::process::id());
        let untouched = vol
            .sh(
                &format!("{docker_volume}:/d"),
                "echo mine > /d/f && cat /d/f",
            )
            .await
            .unwrap();
        assert_eq!(untouched.trim(), "mine");
        let local = docker(&direct(), &["volume", "inspect", &docker_volume], None).await;
        assert_eq!(local.code, 0, "Docker's own volume was not made: {local:?}");
        docker(&direct(), &["volume", "rm", &docker_volume], None).await;
        let host = vol
            .sh(
                "/etc:/host-etc:ro",
                "test -f /host-etc/hostname && echo yes",
            )
            .await;
        assert_eq!(host.unwrap().trim(), "yes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_limit_holds_inside_the_container() {
    let Some(vol) = Vol::start(true, "", "") else {
        return;
    };
    // 8 MiB fit in gold's 16; 32 more do not.
    vol.sh(
        "small@gold:/data",
        "dd if=/dev/zero of=/data/a bs=1M count=8 2>&1",
    )
    .await
    .unwrap();
    let over = vol
        .sh(
            "small:/data",
            "dd if=/dev/zero of=/data/b bs=1M count=32 2>&1; sync; echo exit=$?",
        )
        .await
        .unwrap();
    assert!(over.contains("Disk quota exceeded"), "{over}");
    // A silver dataset takes what gold refused.
    let fits = vol
        .sh(
            "roomy@silver:/data",
            "dd if=/dev/zero of=/data/b bs=1M count=32 2>&1 && echo fine",
        )
        .await
        .unwrap();
    assert!(fits.contains("fine"), "{fits}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_isolated_both_ways_and_clones_are_writable() {
    for btrfs in [true, false] {
        let Some(vol) = Vol::start(btrfs, "", "") else {
            return;
        };
        let kind = if btrfs { "btrfs" } else { "directory" };
        vol.sh("orig@silver:/data", "echo one > /data/v")
            .await
            .unwrap();
        let (ok, out) = vol.cli(&["snapshot", "orig"]);
        assert!(ok, "{kind}: {out}\n{}", vol.proxy.log());
        let snapshot = out.trim().to_owned();
        assert!(snapshot.starts_with("snapshot-"), "{out}");
        // The original changes after the snapshot: the snapshot does not.
        vol.sh("orig:/data", "echo two > /data/v").await.unwrap();
        let copy = format!("copy@{snapshot}:/data");
        let seen = vol.sh(&copy, "cat /data/v").await.unwrap();
        assert_eq!(seen.trim(), "one", "{kind}");
        // The copy changes: the original does not.
        vol.sh("copy:/data", "echo three > /data/v").await.unwrap();
        assert_eq!(
            vol.sh("orig:/data", "cat /data/v").await.unwrap().trim(),
            "two"
        );
        // And the snapshot is still as it was: a second copy sees "one".
        let again = format!("copy2@{}:/data", &snapshot[..snapshot.len() - 2]);
        assert_eq!(
            vol.sh(&again, "cat /data/v").await.unwrap().trim(),
            "one",
            "{kind}"
        );
        let (_, inspect) = vol.cli(&["inspect", "copy"]);
        assert!(
            inspect.contains(&format!("from:     {snapshot}")),
            "{inspect}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_what_is_wrong_and_leave_nothing_behind() {
    let Some(vol) = Vol::start(true, "", "") else {
        return;
    };
    let refused = |result: Result<String, String>| result.unwrap_err();
    // Unknown profile: 400 naming it and the profiles there are.
    let e = refused(vol.sh("x@platinum:/data", "true").await);
    assert!(
        e.contains("profile \"platinum\" does not exist")
            && e.contains("gold (16 MiB)")
            && e.contains("silver (64 MiB)"),
        "{e}"
    );
    // A malformed reference.
    let e = refused(vol.sh("x@:/data", "true").await);
    assert!(e.contains("nothing after '@'"), "{e}");
    // Unknown snapshot: 400, never a pull.
    let e = refused(vol.sh("x@snapshot-0123abcd:/data", "true").await);
    assert!(e.contains("no snapshot has an id starting with"), "{e}");
    assert!(!e.contains("Unable to find image"), "{e}");
    // Ambiguous: 409 listing the candidates. Snapshots until two share a first digit.
    vol.sh("many@gold:/data", "true").await.unwrap();
    let mut ids: Vec<String> = Vec::new();
    let prefix = loop {
        let (ok, out) = vol.cli(&["snapshot", "many"]);
        assert!(ok, "{out}");
        let id = out.trim().trim_start_matches("snapshot-").to_owned();
        if let Some(other) = ids.iter().find(|i| i[..1] == id[..1]) {
            break other[..1].to_owned();
        }
        ids.push(id);
    };
    let e = refused(vol.sh(&format!("x@snapshot-{prefix}:/data"), "true").await);
    assert!(
        e.contains("could be any of") && e.contains("give more of the id"),
        "{e}"
    );
    // Pool full: 507 naming the pool.
    let e = refused(vol.sh("enormous@huge:/data", "true").await);
    assert!(
        e.contains("507") || e.contains(&format!("pool {} is full", vol.pool.path().display())),
        "{e}"
    );
    assert!(e.contains("is full"), "{e}");
    // An existing dataset with another profile: 409, and what to write instead.
    let e = refused(vol.sh("many@silver:/data", "true").await);
    assert!(e.contains("exists with profile gold"), "{e}");
    // None of these made a dataset or left a lease.
    let (_, ls) = vol.cli(&["ls"]);
    for name in ["x ", "enormous "] {
        assert!(!ls.lines().any(|l| l.starts_with(name)), "{ls}");
    }
    assert!(
        ls.lines()
            .any(|l| l.starts_with("many ") && l.contains("idle")),
        "{ls}"
    );
    let datasets = std::fs::read_dir(vol.pool.path().join("datasets"))
        .unwrap()
        .count();
    assert_eq!(datasets, 1, "only `many` is in the pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_in_use_cannot_be_removed_until_its_container_is_gone() {
    let Some(vol) = Vol::start(true, "", "") else {
        return;
    };
    let run = vol
        .docker(&[
            "run",
            "-d",
            "--label",
            vol.containers.label(),
            "-v",
            "busy@gold:/data",
            IMAGE,
            "sleep",
            "300",
        ])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.out().trim().to_owned();
    let (ok, out) = vol.cli(&["rm", "busy"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("in use by container {}", &id[..12])) && out.contains("on node"),
        "{out}"
    );
    // Killed directly on the daemon, without any call through the proxy: the lifecycle
    // event ends the lease.
    docker(&direct(), &["rm", "-f", &id], None).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = vol.cli(&["rm", "busy"]);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "still in use: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, ls) = vol.cli(&["ls"]);
    assert!(!ls.contains("busy"), "{ls}");
    assert_eq!(
        std::fs::read_dir(vol.pool.path().join("datasets"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_unreachable_is_a_503_and_nothing_is_created() {
    if !powerstrip_testenv::require("etcd", powerstrip_testenv::etcd::INSTALL_HINT) {
        return;
    }
    let mut etcd = powerstrip_testenv::etcd::EtcdCluster::start(1);
    let store = format!(
        "[store]\nbackend = \"etcd\"\nendpoints = [{:?}]\ntimeout = \"1s\"\n",
        etcd.endpoint(0)
    );
    let Some(vol) = Vol::start(true, "", &store) else {
        return;
    };
    // Up and serving (the pool is open) before the store goes.
    vol.sh("before@gold:/data", "true").await.unwrap();
    etcd.kill(0);
    let e = vol.sh("lost@gold:/data", "true").await.unwrap_err();
    assert!(
        e.contains("volumes: the cluster store (etcd http://127.0.0.1:"),
        "{e}"
    );
    // No container, no dataset beyond the first.
    let listed = docker(
        &direct(),
        &[
            "ps",
            "-aq",
            "--filter",
            &format!("label={}", vol.containers.label()),
        ],
        None,
    )
    .await;
    assert_eq!(
        listed.out().trim(),
        "",
        "a container was made without its dataset"
    );
    assert_eq!(
        std::fs::read_dir(vol.pool.path().join("datasets"))
            .unwrap()
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_with_leases_and_leftovers_heals_when_it_comes_back() {
    if !require_docker() || !btrfs::require() {
        return;
    }
    let pool = TestPool::new(512 << 20);
    let state = tempfile::tempdir().unwrap();
    let config = format!(
        "version = 1\n[adapters]\nvol = {{ builtin = \"volumes\", pool = \"{}\", listen = \"127.0.0.1:0\", reconcile = \"1s\", profiles = {{ gold = {{ size = \"16M\" }} }} }}\n{ENDPOINTS}",
        pool.path().display()
    );
    let start = || {
        ProxyProcess::options()
            .config(&config)
            .log("info,powerstrip_volumes=debug")
            .args(["--state-dir", &state.path().display().to_string()])
            .start()
    };
    let containers = Containers::new("volumes-crash");
    let mut proxy = start();
    let run = docker(
        &proxy.host(),
        &[
            "run",
            "-d",
            "--label",
            containers.label(),
            "-v",
            "held@gold:/data",
            IMAGE,
            "sleep",
            "300",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.out().trim().to_owned();
    // The proxy dies; meanwhile its container is removed (no event reaches it) and a
    // create dies half-way (a dataset on disk that no record names).
    proxy.kill_now();
    docker(&direct(), &["rm", "-f", &id], None).await;
    let orphan = pool.path().join("datasets/d00000000deadbeef");
    let made = Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&orphan)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    // Back, it heals: the lease goes, the orphan goes, the dataset stays.
    let proxy = start();
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_powerstrip"))
            .arg("volumes")
            .args(args)
            .arg("--state-dir")
            .arg(state.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ls = cli(&["ls"]);
        if ls
            .lines()
            .any(|l| l.starts_with("held ") && l.ends_with("idle"))
            && !orphan.exists()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not healed: orphan there: {}\n{ls}\n{}",
            orphan.exists(),
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And serves it as before.
    let read = docker(
        &proxy.host(),
        &["run", "--rm", "-v", "held:/data", IMAGE, "ls", "/data"],
        None,
    )
    .await;
    assert_eq!(read.code, 0, "{read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_past_its_time_limit_is_a_504_and_the_source_keeps_the_dataset() {
    if !require_docker() || !btrfs::require() {
        return;
    }
    let Some(etcd) = powerstrip_testenv::etcd::shared() else {
        return;
    };
    // Two nodes on this host, each with its pool, sharing etcd; B gives a move one second.
    let store = format!(
        "[store]\nbackend = \"etcd\"\nendpoints = {:?}\nprefix = \"/volumes-timeout-{}/\"\n",
        etcd.endpoints(),
        std::process::id()
    );
    let Some(a) = Vol::start(true, "", &store) else {
        return;
    };
    let Some(b) = Vol::start(true, ", move_timeout = \"1s\"", &store) else {
        return;
    };
    // 768 MiB take longer than a second to move, here.
    a.sh(
        "slow@roomy:/data",
        "dd if=/dev/urandom of=/data/blob bs=1M count=768 2>/dev/null && sync",
    )
    .await
    .unwrap();
    let e = b.sh("slow:/data", "true").await.unwrap_err();
    assert!(
        e.contains("did not finish within 1s")
            && e.contains("keeps the dataset")
            && e.contains("can be retried"),
        "{e}\n--- A ---\n{}\n--- B ---\n{}",
        a.proxy.log(),
        b.proxy.log()
    );
    let (_, inspect) = a.cli(&["inspect", "slow"]);
    assert!(
        !inspect.contains("move:"),
        "the move is still recorded: {inspect}"
    );
    // Nothing of it is left on B.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> = ["datasets", "snapshots", "incoming"]
            .iter()
            .flat_map(|d| {
                std::fs::read_dir(b.pool.path().join(d))
                    .into_iter()
                    .flatten()
            })
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left on B: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And A still serves it.
    assert!(a.sh("slow:/data", "ls /data/blob").await.is_ok());
}
