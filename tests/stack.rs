//! The origin scenario, end to end: containers placed by facts, with portable data on a
//! private overlay network, moving between hosts.
//!
//! Two hosts, A and B, each a network namespace with its own dockerd, its own Open vSwitch
//! and a powerstrip with all three adapters chained by `docker/adapters.toml` — the stack's
//! own configuration, with only what differs per host replaced (the store's endpoints, the
//! OVS sockets and underlay interface, the pool, the external facts directory). The hosts
//! are joined by a veth pair of their own (the wire VXLAN and dataset moves cross); a
//! 3-member etcd in this namespace is the cluster store both reach. The real docker CLI
//! talks to each host's powerstrip socket.
//!
//! The stack runs from the binaries this test is built with, not from the images of
//! `docker/`: a test host's dockerd runs in a network namespace of this machine, and the
//! images would have to be built (Debian packages, a release build) inside every run.
//! `docker/up` is the operator's path to the images; this checks what they run.
//!
//! One set-up, one test: the steps run in order on it, and everything (namespaces,
//! daemons, pools, etcd) is removed when it ends, pass or fail.
//!
//! Needs the real daemon, Open vSwitch, btrfs-progs, etcd and facter; under `CI=true`
//! their absence fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use powerstrip_testenv::btrfs::TestPool;
use powerstrip_testenv::etcd::EtcdCluster;
use powerstrip_testenv::host::Host;
use support::{IMAGE, ProxyProcess, StartedProxy, direct, docker, eventually, require_docker};

/// One host of the stack: its namespace, pool, facts, and how to (re)start its powerstrip
/// with the same identity.
struct Node {
    name: &'static str,
    host: Host,
    pool: TestPool,
    /// Its external facts directory (kept until the end).
    _facts: tempfile::TempDir,
    state: PathBuf,
    config: String,
    address: String,
}

impl Node {
    fn start(&self) -> StartedProxy {
        ProxyProcess::options()
            .docker(&self.host.docker_host())
            .netns(&self.host.netns_path())
            .config(&self.config)
            .log("info")
            .args([
                "--node-name",
                self.name,
                "--node-address",
                &self.address,
                "--node-ttl",
                "3s",
                "--state-dir",
                &self.state.display().to_string(),
            ])
            .start()
    }

    /// `powerstrip ARGS` as an operator on this host runs it (its configuration and state).
    fn powerstrip(&self, args: &[&str]) -> String {
        let dir = self.state.parent().unwrap();
        std::fs::write(dir.join("adapters.toml"), &self.config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_powerstrip"));
        command.args(args);
        if !matches!(args.first(), Some(&"volumes") if args.get(1) == Some(&"snapshot")) {
            command.arg("--config").arg(dir.join("adapters.toml"));
        }
        let out = command
            .arg("--state-dir")
            .arg(&self.state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "powerstrip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// `docker/adapters.toml` for one host: the store at `etcd`, this host's OVS, underlay,
/// pool and facts. The endpoints and chains are the file's own.
fn config(etcd: &[String], host: &Host, underlay: &str, pool: &Path, facts: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/adapters.toml");
    let mut doc: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let store = doc["store"].as_table_mut().unwrap();
    store.insert("endpoints".into(), etcd.to_vec().into());
    store.insert(
        "prefix".into(),
        format!("/stack-{}/", std::process::id()).into(),
    );
    let adapters = doc["adapters"].as_table_mut().unwrap();
    let net = adapters["net"].as_table_mut().unwrap();
    net.insert("datapath".into(), "netdev".into());
    net.insert("ovsdb".into(), host.ovsdb().into());
    net.insert("vswitchd".into(), host.vswitchd().into());
    net.insert("reconcile".into(), "2s".into());
    let mut interface = toml::Table::new();
    interface.insert("interface".into(), underlay.into());
    net.insert("underlay".into(), interface.into());
    let vol = adapters["vol"].as_table_mut().unwrap();
    vol.remove("image");
    vol.insert("reconcile".into(), "2s".into());
    vol.insert("pool".into(), pool.display().to_string().into());
    let place = adapters["place"].as_table_mut().unwrap();
    place.insert(
        "external_facts".into(),
        vec![facts.display().to_string()].into(),
    );
    toml::to_string(&doc).unwrap()
}

/// `docker ARGS` through `proxy`, which must succeed; its stdout, trimmed.
async fn ok(proxy: &StartedProxy, args: &[&str]) -> String {
    let run = docker(&proxy.host(), args, None).await;
    assert_eq!(run.code, 0, "docker {args:?}: {run:?}\n{}", proxy.log());
    run.out().trim().to_owned()
}

/// The body of `GET /index.html` from `address`, asked by a fresh container on `network`
/// (through `proxy`) within `within`; `None` when it never gets an answer. (Plain HTTP over
/// busybox's `nc`: the image's static `wget` cannot resolve anything.)
async fn fetch(
    proxy: &StartedProxy,
    network: &str,
    address: &str,
    within: Duration,
) -> Option<String> {
    let label = format!("powerstrip.network={network}");
    let id = ok(
        proxy,
        &["run", "-d", "--label", &label, IMAGE, "sleep", "120"],
    )
    .await;
    let get = format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {address} 80");
    let deadline = Instant::now() + within;
    let got = loop {
        let run = docker(&proxy.host(), &["exec", &id, "sh", "-c", &get], None).await;
        let answer = run.out();
        if answer.starts_with("HTTP/1.1 200") {
            break answer
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.trim().to_owned());
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = docker(&proxy.host(), &["rm", "-f", &id], None).await;
    got
}

/// The address container `name` has on `network`, as the adapter recorded it.
async fn address(proxy: &StartedProxy, name: &str, network: &str) -> String {
    let format = format!("{{{{index .Config.Labels \"powerstrip.network.{network}.ip\"}}}}");
    let ip = ok(proxy, &["inspect", "-f", &format, name]).await;
    assert!(!ip.is_empty(), "{name} has no address on {network}");
    ip
}

/// The ports of the bridge in `host`'s Open vSwitch, sorted.
fn ovs_ports(host: &Host) -> Vec<String> {
    let out = Command::new("ovs-vsctl")
        .arg(format!("--db={}", host.ovsdb()))
        .args(["list-ports", "powerstrip0"])
        .output()
        .unwrap();
    let mut ports: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    ports.sort();
    ports
}

/// The subvolumes of `pool`, sorted.
fn subvolumes(pool: &Path) -> Vec<String> {
    let out = Command::new("btrfs")
        .args(["subvolume", "list", "-o"])
        .arg(pool)
        .output()
        .unwrap();
    let mut all: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(" path ").nth(1).map(str::to_owned))
        .collect();
    all.sort();
    all
}

/// The server `db` runs: it writes a file under /data once, then serves /data.
const SERVE: &str = "[ -f /data/index.html ] || echo \"written on $(hostname) at first start\" > /data/index.html; exec httpd -f -p 80 -h /data";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_scenario_across_two_hosts() {
    if !require_docker()
        || !powerstrip_testenv::ovs::require()
        || !powerstrip_testenv::btrfs::require()
        || !powerstrip_testenv::require("etcd", powerstrip_testenv::etcd::INSTALL_HINT)
        || !powerstrip_testenv::require("facter", "apt-get install -y facter")
    {
        return;
    }
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let pid = std::process::id();
    let subnet = |n: u32| u8::try_from(20 + (pid + n) % 200).unwrap();
    let mut a_host = Host::new("a", subnet(11));
    let mut b_host = Host::new("b", subnet(12));
    let link = a_host.link(&b_host, subnet(13));
    let etcd = EtcdCluster::start_on_each(3, &[a_host.outer_address(), b_host.outer_address()]);
    for host in [&mut a_host, &mut b_host] {
        host.start_ovs();
        host.start_dockerd(&direct(), IMAGE);
    }
    step("two hosts and etcd up");
    let work = tempfile::tempdir().unwrap();
    let node = |name: &'static str, host: Host, underlay: &str, address: String, zone: &str| {
        let pool = TestPool::new(2 << 30);
        let facts = tempfile::tempdir().unwrap();
        std::fs::write(facts.path().join("zone.txt"), format!("zone={zone}\n")).unwrap();
        let state = work.path().join(name).join("state");
        std::fs::create_dir_all(&state).unwrap();
        let config = config(
            &etcd.endpoints_on(host.outer_address()),
            &host,
            underlay,
            pool.path(),
            facts.path(),
        );
        Node {
            name,
            host,
            pool,
            _facts: facts,
            state,
            config,
            address,
        }
    };
    let (a_if, a_ip) = (link.here.0.clone(), link.here.1.to_string());
    let (b_if, b_ip) = (link.there.0.clone(), link.there.1.to_string());
    let a = node("host-a", a_host, &a_if, a_ip, "a");
    let b = node("host-b", b_host, &b_if, b_ip, "b");
    let mut a_proxy = a.start();
    let mut b_proxy = b.start();
    let logs = |a: &StartedProxy, b: &StartedProxy| {
        format!("--- A ---\n{}\n--- B ---\n{}", a.log(), b.log())
    };
    step("both powerstrips up");

    // 1. On A: db, placed by facts, with a gold dataset, on blue; it writes a file and
    //    serves /data.
    let db = ok(
        &a_proxy,
        &[
            "run",
            "-d",
            "--name",
            "db",
            "-e",
            "constraint:architecture==/amd64|x86_64/",
            "-e",
            "constraint:system_overload_10min==/[0-9]+/",
            "-v",
            "demo@gold:/data",
            "--label",
            "powerstrip.network=blue",
            IMAGE,
            "sh",
            "-c",
            SERVE,
        ],
    )
    .await;
    let env = ok(&a_proxy, &["inspect", "-f", "{{json .Config.Env}}", &db]).await;
    assert!(
        !env.contains("constraint:"),
        "the expressions reached the container: {env}"
    );
    let db_on_a = address(&a_proxy, "db", "blue").await;
    step("1. db runs on A");

    // 2. On B: a container on blue fetches db's file over the overlay; one on red cannot.
    let page = fetch(&b_proxy, "blue", &db_on_a, Duration::from_secs(20)).await;
    let page = page.unwrap_or_else(|| {
        panic!(
            "B cannot fetch db's file from {db_on_a} over blue\n{}",
            logs(&a_proxy, &b_proxy)
        )
    });
    assert!(page.starts_with("written on "), "{page}");
    assert_eq!(
        fetch(&b_proxy, "red", &db_on_a, Duration::from_secs(3)).await,
        None,
        "red reaches db on blue"
    );
    step("2. blue reaches db from B, red does not");

    // 3. A snapshot; db removed on A and started on B: the dataset moves with its file,
    //    and A reaches the new db over blue.
    let snapshot = a.powerstrip(&["volumes", "snapshot", "demo"]);
    assert!(snapshot.trim().starts_with("snapshot-"), "{snapshot}");
    ok(&a_proxy, &["rm", "-f", "db"]).await;
    ok(
        &b_proxy,
        &[
            "run",
            "-d",
            "--name",
            "db",
            "-v",
            "demo:/data",
            "--label",
            "powerstrip.network=blue",
            IMAGE,
            "sh",
            "-c",
            SERVE,
        ],
    )
    .await;
    let on_b = ok(&b_proxy, &["exec", "db", "cat", "/data/index.html"]).await;
    assert_eq!(on_b, page.trim(), "the file changed in the move");
    let inspect = a.powerstrip(&["volumes", "inspect", "demo"]);
    assert!(inspect.contains("host-b"), "{inspect}");
    let db_on_b = address(&b_proxy, "db", "blue").await;
    let again = fetch(&a_proxy, "blue", &db_on_b, Duration::from_secs(20)).await;
    assert_eq!(
        again.as_deref().map(str::trim),
        Some(page.trim()),
        "{}",
        logs(&a_proxy, &b_proxy)
    );
    step("3. demo moved to B with db; A reaches it");

    // 4. A fact only B has refuses the create on A, naming the expression and B.
    let refused = docker(
        &a_proxy.host(),
        &["run", "--rm", "-e", "constraint:zone==b", IMAGE, "true"],
        None,
    )
    .await;
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains("constraint:zone==b does not hold on this node (host-a: zone is a)")
            && refused.stderr.contains("it holds on host-b"),
        "{refused:?}"
    );
    step("4. a fact only B has refuses on A, naming B");

    // 5. Every powerstrip killed with SIGKILL and started again: addresses, datasets and
    //    leases are as they were, and nothing leaked in OVS or the pools. First a settled
    //    state: the copy the move left on A goes at a reconcile pass (2 s here).
    eventually(
        Duration::from_secs(20),
        "A drops the copy of demo the move left",
        || async {
            (!subvolumes(a.pool.path())
                .iter()
                .any(|s| s.starts_with("datasets/")))
            .then_some(())
        },
    )
    .await;
    let before = (
        a.powerstrip(&["net", "inspect", "blue"]),
        a.powerstrip(&["volumes", "ls"]),
        a.powerstrip(&["volumes", "inspect", "demo"]),
        ovs_ports(&a.host),
        ovs_ports(&b.host),
        subvolumes(a.pool.path()),
        subvolumes(b.pool.path()),
    );
    a_proxy.kill_now();
    b_proxy.kill_now();
    let a_proxy = a.start();
    let b_proxy = b.start();
    // Past the first reconcile passes of both adapters (2 s each here).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = (
        a.powerstrip(&["net", "inspect", "blue"]),
        a.powerstrip(&["volumes", "ls"]),
        a.powerstrip(&["volumes", "inspect", "demo"]),
        ovs_ports(&a.host),
        ovs_ports(&b.host),
        subvolumes(a.pool.path()),
        subvolumes(b.pool.path()),
    );
    assert_eq!(before, after, "{}", logs(&a_proxy, &b_proxy));
    assert_eq!(address(&b_proxy, "db", "blue").await, db_on_b);
    let still = fetch(&a_proxy, "blue", &db_on_b, Duration::from_secs(20)).await;
    assert_eq!(still.as_deref().map(str::trim), Some(page.trim()));
    step("5. after SIGKILL and restart: the same addresses, datasets, leases; nothing leaked");

    // The containers go before their hosts (and the datasets' mounts with them).
    let _ = docker(&b_proxy.host(), &["rm", "-f", "db"], None).await;
    drop((a_proxy, b_proxy));
    drop((a, b));
    drop(etcd);
}
