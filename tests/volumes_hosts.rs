//! The volumes adapter across two hosts: this namespace (the main dockerd) is host A;
//! host B is a network namespace with its own dockerd, joined to A by a veth pair. Each
//! host has its own btrfs pool on a loop file; both proxies share a real etcd. Datasets
//! move between them over that veth; traffic goes only to loopback and to the namespace
//! the test makes, and everything is removed when it ends.
//!
//! One two-host set-up, one test: the scenarios run in order on it.
//!
//! Needs the real daemon, btrfs-progs and etcd; under `CI=true` their absence fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use powerstrip_testenv::btrfs::TestPool;
use powerstrip_testenv::etcd::EtcdCluster;
use powerstrip_testenv::host::Host;
use support::{IMAGE, ProxyProcess, StartedProxy, direct, docker, require_docker};

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

/// What every `sh` prints: the sha256 of every file under /data, sorted by path.
const SUMS: &str = "cd /data && find . -type f | sort | xargs sha256sum";

/// One host's proxy: how to (re)start it with the same node identity.
struct Side {
    name: &'static str,
    config: String,
    state: PathBuf,
    docker: String,
    netns: Option<PathBuf>,
    address: String,
}

impl Side {
    fn start(&self) -> StartedProxy {
        let mut options = ProxyProcess::options()
            .docker(&self.docker)
            .config(&self.config)
            .log("info,powerstrip_volumes=debug")
            .args([
                "--node-name",
                self.name,
                "--node-address",
                &self.address,
                "--node-ttl",
                "3s",
                "--state-dir",
                &self.state.display().to_string(),
            ]);
        if let Some(netns) = &self.netns {
            options = options.netns(netns);
        }
        options.start()
    }
}

fn config(etcd: &EtcdCluster, pool: &Path, listen: &str, extra: &str) -> String {
    format!(
        "version = 1\n[store]\nbackend = \"etcd\"\nendpoints = {:?}\nprefix = \"/volumes-hosts-{}/\"\n\
         [adapters]\nvol = {{ builtin = \"volumes\", timeout = \"2m\", pool = \"{}\", listen = \"{listen}\", reconcile = \"2s\", \
         profiles = {{ gold = {{ size = \"16M\" }}, big = {{ size = \"1G\" }} }}{extra} }}\n{ENDPOINTS}",
        etcd.endpoints(),
        std::process::id(),
        pool.display()
    )
}

/// `docker run --rm -v VOLUME IMAGE sh -c SCRIPT` through `proxy`; stdout, or the failure.
async fn sh(proxy: &StartedProxy, volume: &str, script: &str) -> Result<String, String> {
    let run = docker(
        &proxy.host(),
        &["run", "--rm", "-v", volume, IMAGE, "sh", "-c", script],
        None,
    )
    .await;
    if run.code == 0 {
        Ok(run.out())
    } else {
        Err(format!("{}{}", run.out(), run.stderr))
    }
}

/// `powerstrip volumes inspect NAME` on the cluster store.
fn inspect(proxy: &StartedProxy, name: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_powerstrip"))
        .args(["volumes", "inspect", name, "--config"])
        .arg(proxy.config_file())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The bytes the last move of `name` sent, from `powerstrip volumes inspect`.
fn last_move(proxy: &StartedProxy, name: &str) -> (String, bool) {
    let text = inspect(proxy, name);
    let line = text
        .lines()
        .find(|l| l.starts_with("moved:"))
        .unwrap_or_else(|| panic!("no move recorded:\n{text}"))
        .to_owned();
    let incremental = line.contains("(incremental)");
    (line, incremental)
}

/// The size in bytes of a `format_size` figure like "64 MiB" or "1.5 KiB".
fn bytes_of(figure: &str) -> f64 {
    let mut parts = figure.split_whitespace();
    let number: f64 = parts.next().unwrap().parse().unwrap();
    let unit = match parts.next().unwrap() {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other}"),
    };
    number * unit
}

/// The "N MiB sent" of a `moved:` line.
fn sent(line: &str) -> f64 {
    let after = line.split(", ").nth(1).unwrap();
    let figure: String = after.split(" sent").next().unwrap().to_owned();
    bytes_of(&figure)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_move_between_hosts_whole_incrementally_and_never_lost() {
    if !require_docker()
        || !powerstrip_testenv::btrfs::require()
        || !powerstrip_testenv::require("etcd", powerstrip_testenv::etcd::INSTALL_HINT)
    {
        return;
    }
    // Dropped last: B's dockerd goes after everything that used it.
    let subnet = u8::try_from(20 + std::process::id() % 200).unwrap();
    let mut b = Host::new("v", subnet);
    b.start_dockerd(&direct(), IMAGE);
    let etcd = EtcdCluster::start_on(1, Some(b.outer_address()));
    let pool_a = TestPool::new(2 << 30);
    let pool_b = TestPool::new(2 << 30);
    let states = tempfile::tempdir().unwrap();
    let driver = format!("psvol{}", std::process::id() % 100_000);
    let side_a = Side {
        name: "host-a",
        config: config(
            &etcd,
            pool_a.path(),
            &format!("{}:0", b.outer_address()),
            "",
        ),
        state: states.path().join("a"),
        docker: direct(),
        netns: None,
        address: b.outer_address().to_string(),
    };
    let side_b = Side {
        name: "host-b",
        config: config(
            &etcd,
            pool_b.path(),
            &format!("{}:0", b.address()),
            &format!(", plugin = \"{driver}\""),
        ),
        state: states.path().join("b"),
        docker: b.docker_host(),
        netns: Some(b.netns_path()),
        address: b.address().to_string(),
    };
    let _plugin_socket = RemoveOnDrop(
        vec![],
        Some(PathBuf::from(format!("/run/docker/plugins/{driver}.sock"))),
    );
    let mut a = side_a.start();
    let b_proxy = side_b.start();
    let logs = |a: &StartedProxy| format!("--- A ---\n{}\n--- B ---\n{}", a.log(), b_proxy.log());

    // 1. Written on A: 200 small files and one of 64 MiB.
    let write = "mkdir -p /data/d && for i in $(seq 1 200); do echo file $i > /data/d/$i; done \
                 && dd if=/dev/urandom of=/data/big bs=1M count=64 2>/dev/null && sync";
    sh(&a, "demo@big:/data", write)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&a)));
    let on_a = sh(&a, "demo:/data", SUMS).await.unwrap();
    assert_eq!(on_a.lines().count(), 201, "{on_a}");

    // 2. Used on B: moved there first, every file identical.
    let on_b = sh(&b_proxy, "demo:/data", SUMS)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&a)));
    assert_eq!(on_b, on_a, "the data changed on the way");
    let (first, incremental) = last_move(&a, "demo");
    assert!(!incremental, "{first}");
    assert!(inspect(&a, "demo").contains("node:     host-b"));

    // 3. 1% changed on B, then used on A again: an increment goes back, much smaller.
    sh(
        &b_proxy,
        "demo:/data",
        "dd if=/dev/urandom of=/data/big bs=64K count=10 seek=5 conv=notrunc 2>/dev/null && sync",
    )
    .await
    .unwrap();
    let changed = sh(&b_proxy, "demo:/data", SUMS).await.unwrap();
    let back = sh(&a, "demo:/data", SUMS)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&a)));
    assert_eq!(back, changed);
    let (second, incremental) = last_move(&a, "demo");
    assert!(incremental, "{second}");
    assert!(
        sent(&second) * 5.0 < sent(&first),
        "the increment is not much smaller: {first} then {second}"
    );

    // An operator moves it to B from A (A's adapter passes the request to B's through the
    // store), and back with a move B's adapter carries out itself.
    let moved = Command::new(env!("CARGO_BIN_EXE_powerstrip"))
        .args(["volumes", "move", "demo", "--to", "host-b", "--state-dir"])
        .arg(&side_a.state)
        .output()
        .unwrap();
    assert!(
        moved.status.success() && String::from_utf8_lossy(&moved.stdout).contains("moved in"),
        "{moved:?}\n{}",
        logs(&a)
    );
    assert!(inspect(&a, "demo").contains("node:     host-b"));
    let back = Command::new(env!("CARGO_BIN_EXE_powerstrip"))
        .args(["volumes", "move", "demo", "--to", "host-a", "--state-dir"])
        .arg(&side_a.state)
        .output()
        .unwrap();
    assert!(back.status.success(), "{back:?}");
    assert!(inspect(&a, "demo").contains("node:     host-a"));
    assert_eq!(sh(&a, "demo:/data", SUMS).await.unwrap(), changed);

    // 4. Leases: while a container on A uses it, B is refused with a 409 naming it.
    let busy = docker(
        &a.host(),
        &["run", "-d", "-v", "demo:/data", IMAGE, "sleep", "300"],
        None,
    )
    .await;
    assert_eq!(busy.code, 0, "{busy:?}");
    let busy = busy.out().trim().to_owned();
    let _busy = RemoveOnDrop(vec![busy.clone()], None);
    let refused = sh(&b_proxy, "demo:/data", "true").await.unwrap_err();
    assert!(
        refused.contains(&format!("in use by container {}", &busy[..12]))
            && refused.contains("on node host-a"),
        "{refused}"
    );
    assert!(!refused.contains("Unable to find image"), "{refused}");
    docker(&direct(), &["rm", "-f", &busy], None).await;

    // 5. The plugin path, on B's own daemon: the same datasets.
    let b_docker = b.docker_host();
    let created = docker(
        &b_docker,
        &[
            "volume",
            "create",
            "-d",
            &driver,
            "-o",
            "profile=gold",
            "pv",
        ],
        None,
    )
    .await;
    assert_eq!(created.code, 0, "{created:?}\n{}", logs(&a));
    let wrote = docker(
        &b_docker,
        &[
            "run",
            "--rm",
            "--volume-driver",
            &driver,
            "-v",
            "pv:/data",
            IMAGE,
            "sh",
            "-c",
            "echo through the plugin > /data/f",
        ],
        None,
    )
    .await;
    assert_eq!(wrote.code, 0, "{wrote:?}\n{}", logs(&a));
    let listed = docker(
        &b_docker,
        &["volume", "ls", "-q", "-f", &format!("driver={driver}")],
        None,
    )
    .await;
    assert!(
        listed.out().lines().any(|l| l == "pv") && listed.out().contains("demo"),
        "{listed:?}"
    );
    let inspected = docker(
        &b_docker,
        &[
            "volume",
            "inspect",
            "-f",
            "{{.Status.profile}} {{.Status.node}}",
            "pv",
        ],
        None,
    )
    .await;
    assert_eq!(inspected.out().trim(), "gold host-b", "{inspected:?}");
    // Read on A through the proxy: moved from B.
    assert_eq!(
        sh(&a, "pv:/data", "cat /data/f").await.unwrap().trim(),
        "through the plugin"
    );
    // Removed on B's daemon while it lives on A: A's adapter removes it.
    let removed = docker(&b_docker, &["volume", "rm", "pv"], None).await;
    assert_eq!(removed.code, 0, "{removed:?}\n{}", logs(&a));
    assert!(
        inspect(&a, "pv").contains("no dataset"),
        "{}",
        inspect(&a, "pv")
    );

    // 6. The source killed mid-move: the move fails with a 503 naming it, nothing is lost,
    // and once it is back a retried move completes with every file identical.
    sh(
        &a,
        "bulk@big:/data",
        "dd if=/dev/urandom of=/data/blob bs=1M count=384 2>/dev/null && echo end > /data/tail && sync",
    )
    .await
    .unwrap();
    let bulk = sh(&a, "bulk:/data", SUMS).await.unwrap();
    let host = b_proxy.host();
    let moving = tokio::spawn(async move {
        docker(
            &host,
            &["run", "--rm", "-v", "bulk:/data", IMAGE, "true"],
            None,
        )
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = inspect(&a, "bulk");
        if now.contains("received") && !now.contains(" 0 B received") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the move never started:\n{now}\n{}",
            logs(&a)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill_now();
    let failed = moving.await.unwrap();
    assert_ne!(
        failed.code, 0,
        "the move finished before the source was killed"
    );
    assert!(
        failed.stderr.contains("host-a") && failed.stderr.contains("nothing was lost"),
        "{failed:?}\n{}",
        b_proxy.log()
    );
    // While A is down: a 503 naming it, and B still has nothing of bulk.
    let down = sh(&b_proxy, "bulk:/data", "true").await.unwrap_err();
    assert!(
        down.contains("from node host-a failed") && down.contains("unreachable"),
        "{down}"
    );
    assert!(inspect(&a, "bulk").contains("node:     host-a"));
    let a = side_a.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.log().contains("serving moves") {
        assert!(
            Instant::now() < deadline,
            "A does not serve moves again:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = sh(&b_proxy, "bulk:/data", SUMS)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&a)));
    assert_eq!(after, bulk, "the retried move changed the data");
    assert!(inspect(&a, "bulk").contains("node:     host-b"));
}

/// Removes containers from the main daemon, and a file, when dropped.
struct RemoveOnDrop(Vec<String>, Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = Command::new("docker")
                .args(["-H", &direct(), "rm", "-f"])
                .args(&self.0)
                .output();
        }
        if let Some(file) = &self.1 {
            let _ = std::fs::remove_file(file);
        }
    }
}
