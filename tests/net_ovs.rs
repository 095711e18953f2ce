//! The networking adapter on one host, as users meet it: the real docker CLI through the
//! real `powerstrip` binary (with `net-ovs` linked in), the real dockerd, the host's real
//! Open vSwitch (each test on a bridge of its own, removed when it ends).
//!
//! Needs the real daemon (`scripts/ensure-docker`) and Open vSwitch (`scripts/ensure-ovs`);
//! under `CI=true` their absence fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use powerstrip_testenv::ovs::{TestBridge, vsctl};
use support::{IMAGE, ProxyProcess, StartedProxy, direct, docker, require_docker};

/// A proxy with `net-ovs` on a bridge of the test's own, plus the containers the test made
/// (removed, directly, when it ends).
struct Net {
    proxy: StartedProxy,
    bridge: TestBridge,
    containers: Vec<String>,
}

/// The adapter's endpoints.
const ENDPOINTS: &str = r#"
[[endpoints]]
match = "POST /*/containers/create"
pre = ["net"]
post = ["net"]

[[endpoints]]
match = "POST /*/containers/*/start"
post = ["net"]

[[endpoints]]
match = "POST /*/containers/*/restart"
post = ["net"]

[[endpoints]]
match = "DELETE /*/containers/*"
pre = ["net"]
post = ["net"]
"#;

impl Net {
    /// Starts a proxy whose `net` adapter has these extra options (TOML inline-table
    /// entries).
    fn start(n: u32, extra: &str) -> Option<Net> {
        Self::start_with(n, extra, "", &[])
    }

    /// [`Net::start`] with more of the configuration file (`[store]`) and more flags.
    fn start_with(n: u32, extra: &str, more: &str, args: &[&str]) -> Option<Net> {
        if !require_docker() || !powerstrip_testenv::ovs::require() {
            return None;
        }
        let bridge = TestBridge::new(n);
        let proxy = start_proxy(&bridge, extra, more, args);
        // The bridge is made by the adapter's first reconcile.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vsctl(None, &["list-br"])
            .lines()
            .any(|b| b == bridge.name())
        {
            assert!(
                Instant::now() < deadline,
                "the adapter did not create its bridge:\n{}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Net {
            proxy,
            bridge,
            containers: Vec::new(),
        })
    }

    /// `docker run -d` through the proxy; the container's id, or the run's stderr.
    async fn run(&mut self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        let run = docker(&self.proxy.host(), &all, None).await;
        if run.code != 0 {
            return Err(run.stderr);
        }
        let id = run.out().trim().to_owned();
        self.containers.push(id.clone());
        Ok(id)
    }

    /// Runs `args` on `network` (sleeping); its id.
    async fn on(&mut self, network: &str, extra: &[&str]) -> String {
        let label = format!("powerstrip.network={network}");
        let mut args = vec!["--label", label.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sleep", "300"]);
        self.run(&args)
            .await
            .unwrap_or_else(|e| panic!("docker run failed: {e}\n{}", self.proxy.log()))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if !self.containers.is_empty() {
            let _ = Command::new("docker")
                .args(["-H", &direct(), "rm", "-f"])
                .args(&self.containers)
                .output();
        }
    }
}

/// The configuration of a proxy with `net-ovs` on `bridge`.
fn config(bridge: &TestBridge, extra: &str, more: &str) -> String {
    format!(
        "version = 1\n{more}\n[adapters]\nnet = {{ builtin = \"net-ovs\", bridge = \"{}\", networks = {{ blue = \"10.50.0.0/24\", red = \"10.51.0.0/24\" }}{extra} }}\n{ENDPOINTS}",
        bridge.name()
    )
}

fn start_proxy(bridge: &TestBridge, extra: &str, more: &str, args: &[&str]) -> StartedProxy {
    let node = format!("node-{}", bridge.name());
    let mut all = vec!["--node-name", node.as_str()];
    all.extend_from_slice(args);
    ProxyProcess::options()
        .config(&config(bridge, extra, more))
        .log("info,powerstrip_net_ovs=debug")
        .args(all)
        .start()
}

/// A label of a container, read directly from the daemon.
async fn label(id: &str, key: &str) -> String {
    let format = format!("{{{{index .Config.Labels \"{key}\"}}}}");
    docker(&direct(), &["inspect", "-f", &format, id], None)
        .await
        .out()
        .trim()
        .to_owned()
}

/// `ping -c 1` from container `from` to `address` (directly on the daemon): true when
/// answered.
async fn pings(from: &str, address: &str) -> bool {
    let run = docker(
        &direct(),
        &["exec", from, "ping", "-c", "1", "-W", "2", address],
        None,
    )
    .await;
    run.code == 0
}

/// The IPv4 address of `interface` inside container `id`, if it has one.
async fn address_in(id: &str, interface: &str) -> Option<String> {
    let run = docker(
        &direct(),
        &["exec", id, "ip", "-4", "-o", "addr", "show", interface],
        None,
    )
    .await;
    run.out()
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .map(|a| a.split('/').next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_on_blue_reach_each_other_and_red_cannot_reach_blue() {
    let Some(mut net) = Net::start(1, "") else {
        return;
    };
    let a = net.on("blue", &[]).await;
    let b = net.on("blue", &[]).await;
    let r = net.on("red", &[]).await;
    let a_ip = label(&a, "powerstrip.network.blue.ip").await;
    let b_ip = label(&b, "powerstrip.network.blue.ip").await;
    assert_eq!(a_ip, "10.50.0.2");
    assert_eq!(b_ip, "10.50.0.3");
    assert_eq!(label(&r, "powerstrip.network.red.ip").await, "10.51.0.2");
    // The address is on eth1, with an MTU that fits VXLAN; Docker's eth0 is untouched.
    assert_eq!(address_in(&a, "eth1").await.as_deref(), Some(a_ip.as_str()));
    let mtu = docker(
        &direct(),
        &["exec", &a, "cat", "/sys/class/net/eth1/mtu"],
        None,
    )
    .await;
    assert_eq!(mtu.out().trim(), "1450");
    assert!(
        address_in(&a, "eth0")
            .await
            .is_some_and(|ip| ip.starts_with("172."))
    );
    assert!(
        pings(&a, &b_ip).await,
        "blue cannot reach blue:\n{}",
        net.proxy.log()
    );
    assert!(pings(&b, &a_ip).await);
    assert!(!pings(&r, &a_ip).await, "red reaches blue");
    // red's address is not in blue's subnet either way; and blue is not routed to red.
    assert!(!pings(&a, "10.51.0.2").await);
    // Operators see the networks and who holds what.
    let net_cmd = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_powerstrip"))
            .arg("net")
            .args(args)
            .arg("--state-dir")
            .arg(net.proxy.dir().join("state"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ls = net_cmd(&["ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("blue") && l.contains("10.50.0.0/24") && l.contains("2/253")),
        "{ls}"
    );
    assert!(
        ls.lines()
            .any(|l| l.starts_with("red") && l.contains("1/253")),
        "{ls}"
    );
    let blue = net_cmd(&["inspect", "blue"]);
    assert!(blue.contains(&a_ip) && blue.contains(&a), "{blue}");
    // Each network is a VLAN tag of its own on the bridge.
    let tags = vsctl(
        None,
        &["--format=csv", "--columns=name,tag", "list", "port"],
    );
    assert!(
        tags.lines().filter(|l| l.starts_with("psv")).count() >= 3,
        "{tags}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_stop_start_keep_the_address_and_rm_releases_it() {
    let Some(mut net) = Net::start(2, "") else {
        return;
    };
    let a = net.on("blue", &[]).await;
    let peer = net.on("blue", &[]).await;
    let ip = label(&a, "powerstrip.network.blue.ip").await;
    let host = net.proxy.host();
    for args in [
        vec!["restart", a.as_str()],
        vec!["stop", a.as_str()],
        vec!["start", a.as_str()],
    ] {
        let run = docker(&host, &args, None).await;
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
    }
    assert_eq!(address_in(&a, "eth1").await.as_deref(), Some(ip.as_str()));
    assert!(
        pings(&peer, &ip).await,
        "after stop + start:\n{}",
        net.proxy.log()
    );
    // rm through the proxy releases it: the next container gets the same address.
    let rm = docker(&host, &["rm", "-f", &a], None).await;
    assert_eq!(rm.code, 0, "{rm:?}");
    let next = net.on("blue", &[]).await;
    assert_eq!(label(&next, "powerstrip.network.blue.ip").await, ip);
    // Removed behind the proxy's back (on the daemon's own socket): the lifecycle event
    // releases it too.
    let gone_ip = label(&next, "powerstrip.network.blue.ip").await;
    docker(&direct(), &["rm", "-f", &next], None).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = net.proxy.state_ls("net-ovs/addresses/blue/");
        if !state.contains(&gone_ip) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still allocated after docker rm on the daemon:\n{state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And no port is left for it.
    let ports = vsctl(None, &["list-ports", net.bridge.name()]);
    assert_eq!(
        ports.lines().filter(|p| p.starts_with("psv")).count(),
        1,
        "{ports}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_exits_at_once_starts_as_it_would_directly() {
    // `docker run ... true`: by the time the start post-hook looks, the container may be
    // gone, its namespace with it. That is no failure: Docker started it as asked.
    let Some(mut net) = Net::start(9, "") else {
        return;
    };
    let host = net.proxy.host();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = net
            .run(&["--label", "powerstrip.network=blue", IMAGE, "true"])
            .await
            .unwrap_or_else(|e| panic!("docker run ... true: {e}\n{}", net.proxy.log()));
        ids.push(id);
    }
    // Started again, it exits again, as cleanly.
    let again = docker(&host, &["start", "-a", &ids[0]], None).await;
    assert_eq!(again.code, 0, "{again:?}\n{}", net.proxy.log());
    // They keep their addresses (they may be started again) and leave no port behind.
    for id in &ids {
        assert!(
            label(id, "powerstrip.network.blue.ip")
                .await
                .starts_with("10.50.0."),
            "{id} lost its address"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ports = vsctl(None, &["list-ports", net.bridge.name()]);
        if !ports.contains("psv") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ports left by exited containers: {ports}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_addresses_and_refusals_name_what_is_wrong() {
    let Some(mut net) = Net::start(3, "") else {
        return;
    };
    let fixed = net
        .on("blue", &["--label", "powerstrip.ip=10.50.0.12"])
        .await;
    assert_eq!(
        label(&fixed, "powerstrip.network.blue.ip").await,
        "10.50.0.12"
    );
    assert_eq!(
        address_in(&fixed, "eth1").await.as_deref(),
        Some("10.50.0.12")
    );
    let env = net.on("red", &["-e", "POWERSTRIP_IP=10.51.0.40"]).await;
    assert_eq!(label(&env, "powerstrip.network.red.ip").await, "10.51.0.40");
    let refusals = [
        (
            vec![
                "--name",
                "taken-twice",
                "--label",
                "powerstrip.network=blue",
                "--label",
                "powerstrip.ip=10.50.0.12",
            ],
            "address 10.50.0.12 on blue is in use by",
        ),
        (
            vec!["--label", "powerstrip.network=green"],
            "label powerstrip.network: network \"green\" does not exist and no pool is configured",
        ),
        (
            vec![
                "--label",
                "powerstrip.network=blue",
                "--label",
                "powerstrip.ip=10.99.0.1",
            ],
            "10.99.0.1 is outside 10.50.0.0/24",
        ),
        (
            vec![
                "--label",
                "powerstrip.network=blue",
                "--label",
                "powerstrip.ip=ten",
            ],
            "label powerstrip.ip=\"ten\": \"ten\" is not an IPv4 address",
        ),
    ];
    for (args, message) in refusals {
        let mut all = args.clone();
        all.extend_from_slice(&[IMAGE, "true"]);
        let refused = net.run(&all).await.unwrap_err();
        assert!(refused.contains(message), "{args:?}: {refused}");
        assert!(
            !refused.contains("Unable to find image"),
            "a 404 made the CLI pull: {refused}"
        );
    }
    // Nothing was left reserved by the refusals.
    let state = net.proxy.state_ls("net-ovs/addresses/");
    assert_eq!(
        state.lines().filter(|l| l.starts_with("net-ovs/")).count(),
        2,
        "{state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_network_is_a_409_naming_it() {
    // Networks made on first use from a pool of /29s: five addresses each (network,
    // gateway and broadcast kept).
    let Some(mut net) = Net::start(4, ", pool = \"10.53.0.0/16\", pool_prefix = 29") else {
        return;
    };
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(net.on("tiny", &[]).await);
    }
    let label_arg = "powerstrip.network=tiny";
    let refused = net
        .run(&["--label", label_arg, IMAGE, "true"])
        .await
        .unwrap_err();
    assert!(
        refused.contains("network tiny (10.53.0.0/29) has no free address left"),
        "{refused}"
    );
    // The next network made on first use gets the next /29 of the pool.
    let other = net.on("tiny2", &[]).await;
    assert_eq!(
        label(&other, "powerstrip.network.tiny2.ip").await,
        "10.53.0.10"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_vswitch_unreachable_is_a_503_and_nothing_is_reserved() {
    if !require_docker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "version = 1\n[adapters]\nnet = {{ builtin = \"net-ovs\", ovsdb = \"unix:{}/no-ovs.sock\", networks = {{ blue = \"10.50.0.0/24\" }} }}\n{ENDPOINTS}",
        dir.path().display()
    );
    let proxy = ProxyProcess::options().config(&config).start();
    let run = docker(
        &proxy.host(),
        &[
            "run",
            "-d",
            "--label",
            "powerstrip.network=blue",
            IMAGE,
            "true",
        ],
        None,
    )
    .await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("net-ovs: Open vSwitch is not reachable"),
        "{run:?}"
    );
    assert!(
        proxy.state_ls("net-ovs/addresses/").lines().count() <= 1,
        "something was reserved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plumbing_failure_is_undone_and_the_address_stays_reserved() {
    // A bridge in the kernel datapath where the kernel has no openvswitch module: OVS takes
    // the port into its database and cannot set it up — a failure after the veth exists.
    if std::path::Path::new("/sys/module/openvswitch").exists() {
        eprintln!(
            "note: the kernel has the openvswitch module; this failure cannot be produced here"
        );
        return;
    }
    let Some(mut net) = Net::start(5, ", datapath = \"system\"") else {
        return;
    };
    let name = format!("half-{}", std::process::id());
    let refused = net
        .run(&[
            "--name",
            &name,
            "--label",
            "powerstrip.network=blue",
            IMAGE,
            "sleep",
            "300",
        ])
        .await
        .unwrap_err();
    net.containers.push(name.clone());
    assert!(
        refused.contains(&format!(
            "net-ovs: container {name} started, but attaching it failed: network blue: Open vSwitch"
        )) && refused.contains("Error detected while setting up")
            && refused.contains("nothing was left half-plumbed")
            && refused.contains("10.50.0.2 on blue) stay reserved"),
        "{refused}"
    );
    let id = docker(&direct(), &["inspect", "-f", "{{.Id}}", &name], None)
        .await
        .out()
        .trim()
        .to_owned();
    // The adapter keeps trying (events, its periodic pass), and undoes each try: between
    // tries, nothing of it is left.
    let host_end = format!("psv{}0", &id[..8]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let link = Command::new("ip")
            .args(["link", "show", &host_end])
            .output()
            .unwrap();
        let ports = vsctl(None, &["list-ports", net.bridge.name()]);
        if !link.status.success() && !ports.contains("psv") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {host_end} exists: {}; ports: {ports}",
            link.status.success()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let eth1 = docker(
        &direct(),
        &["exec", &name, "ip", "link", "show", "eth1"],
        None,
    )
    .await;
    assert_ne!(eth1.code, 0, "half an interface in the container");
    let state = net.proxy.state_ls("net-ovs/addresses/blue/");
    assert!(
        state.contains("10.50.0.2"),
        "the address was not kept for a retry:\n{state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_unreachable_is_a_503_and_no_container_is_made() {
    if !powerstrip_testenv::require("etcd", powerstrip_testenv::etcd::INSTALL_HINT) {
        return;
    }
    let mut etcd = powerstrip_testenv::etcd::EtcdCluster::start(1);
    let store = format!(
        "[store]\nbackend = \"etcd\"\nendpoints = [{:?}]\ntimeout = \"1s\"\n",
        etcd.endpoint(0)
    );
    let Some(mut net) = Net::start_with(6, "", &store, &[]) else {
        return;
    };
    etcd.kill(0);
    let name = format!("nostore-{}", std::process::id());
    let refused = net
        .run(&[
            "--name",
            &name,
            "--label",
            "powerstrip.network=blue",
            IMAGE,
            "true",
        ])
        .await
        .unwrap_err();
    assert!(
        refused.contains("net-ovs: the cluster store (etcd http://127.0.0.1:"),
        "{refused}"
    );
    let made = docker(&direct(), &["inspect", &name], None).await;
    assert_ne!(made.code, 0, "a container was made without its network");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_mid_flight_heals_when_it_comes_back() {
    if !require_docker() || !powerstrip_testenv::ovs::require() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().to_str().unwrap().to_owned();
    let Some(mut net) = Net::start_with(7, "", "", &["--state-dir", &state_arg]) else {
        return;
    };
    let a = net.on("blue", &[]).await;
    let b = net.on("blue", &[]).await;
    let b_ip = label(&b, "powerstrip.network.blue.ip").await;
    let a_ip = label(&a, "powerstrip.network.blue.ip").await;
    // The proxy dies; meanwhile b is removed on the daemon's own socket.
    net.proxy.kill_now();
    docker(&direct(), &["rm", "-f", &b], None).await;
    net.proxy = start_proxy(&net.bridge, "", "", &["--state-dir", &state_arg]);
    // Back, it releases b's address and port, and a's plumbing is intact.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let kept = support::state_ls(state.path(), "net-ovs/addresses/blue/");
        let ports = vsctl(None, &["list-ports", net.bridge.name()]);
        let b_port = format!("psv{}0", &b[..8]);
        if !kept.contains(&b_ip) && !ports.contains(&b_port) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not healed:\n{kept}\n{ports}\n{}",
            net.proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = net.on("blue", &[]).await;
    assert_eq!(
        label(&c, "powerstrip.network.blue.ip").await,
        b_ip,
        "b's address is free again"
    );
    assert!(
        pings(&c, &a_ip).await,
        "a lost its plumbing:\n{}",
        net.proxy.log()
    );
}

/// Docker networks a test made (with their containers), Docker's gateway bridge if the
/// test made it, and the plugin's socket, removed (directly) when it ends — before the
/// proxy that serves the plugin stops, since Docker asks the driver to delete a network.
struct DockerNetworks {
    names: Vec<String>,
    gateway_existed: bool,
    driver: String,
}

impl Drop for DockerNetworks {
    fn drop(&mut self) {
        let docker = |args: &[&str]| {
            Command::new("docker")
                .args(["-H", &direct()])
                .args(args)
                .output()
        };
        for name in &self.names {
            let filter = format!("network={name}");
            if let Ok(out) = docker(&["ps", "-aq", "--filter", &filter]) {
                let ids = String::from_utf8_lossy(&out.stdout).into_owned();
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    let _ = docker(&args);
                }
            }
            let _ = docker(&["network", "rm", name]);
        }
        if !self.gateway_existed {
            let _ = docker(&["network", "rm", "docker_gwbridge"]);
        }
        let _ = std::fs::remove_file(format!("/run/docker/plugins/{}.sock", self.driver));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_plugin_path_uses_the_same_overlays_and_addresses() {
    let driver = format!("pst{}plug", std::process::id());
    let Some(mut net) = Net::start(8, &format!(", plugin = \"{driver}\"")) else {
        return;
    };
    let gateway_existed = docker(&direct(), &["network", "inspect", "docker_gwbridge"], None)
        .await
        .code
        == 0;
    let blue = format!("{driver}-blue");
    let red = format!("{driver}-red");
    let mut networks = DockerNetworks {
        names: Vec::new(),
        gateway_existed,
        driver: driver.clone(),
    };
    let host = net.proxy.host();
    for (name, overlay) in [(&blue, "blue"), (&red, "red")] {
        let option = format!("powerstrip.network={overlay}");
        let made = docker(
            &host,
            &[
                "network",
                "create",
                "-d",
                &driver,
                "--ipam-driver",
                "null",
                "-o",
                &option,
                name,
            ],
            None,
        )
        .await;
        assert_eq!(made.code, 0, "{made:?}\n{}", net.proxy.log());
        networks.names.push(name.clone());
    }
    let p1 = net
        .run(&["--network", &blue, IMAGE, "sleep", "300"])
        .await
        .unwrap();
    let p2 = net
        .run(&["--network", &blue, IMAGE, "sleep", "300"])
        .await
        .unwrap();
    let r1 = net
        .run(&["--network", &red, IMAGE, "sleep", "300"])
        .await
        .unwrap();
    // The label path, on the same overlay.
    let l1 = net.on("blue", &[]).await;
    let ip = |id: String, network: String| async move {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        docker(&direct(), &["inspect", "-f", &format, &id], None)
            .await
            .out()
            .trim()
            .to_owned()
    };
    let p1_ip = ip(p1.clone(), blue.clone()).await;
    let p2_ip = ip(p2.clone(), blue.clone()).await;
    let l1_ip = label(&l1, "powerstrip.network.blue.ip").await;
    let mut all = vec![p1_ip.clone(), p2_ip.clone(), l1_ip.clone()];
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3, "an address was handed out twice: {all:?}");
    assert!(all.iter().all(|a| a.starts_with("10.50.0.")), "{all:?}");
    assert!(
        pings(&p1, &p2_ip).await,
        "plugin to plugin:\n{}",
        net.proxy.log()
    );
    assert!(pings(&p1, &l1_ip).await, "plugin to label");
    assert!(pings(&l1, &p1_ip).await, "label to plugin");
    assert!(!pings(&r1, &p1_ip).await, "red reaches blue");
    // A restart keeps the endpoint and its address; rm gives it back.
    assert_eq!(docker(&host, &["restart", &p1], None).await.code, 0);
    assert_eq!(ip(p1.clone(), blue.clone()).await, p1_ip);
    assert!(pings(&p2, &p1_ip).await, "after restart");
    assert_eq!(docker(&host, &["rm", "-f", &p2], None).await.code, 0);
    let p3 = net
        .run(&["--network", &blue, IMAGE, "sleep", "300"])
        .await
        .unwrap();
    assert_eq!(ip(p3, blue.clone()).await, p2_ip, "the address came back");
    // Without --ipam-driver null, Docker would assign addresses of its own: refused.
    let plain = format!("{driver}-plain");
    let made = docker(&host, &["network", "create", "-d", &driver, &plain], None).await;
    if made.code == 0 {
        networks.names.push(plain.clone());
        let refused = net
            .run(&["--network", &plain, IMAGE, "true"])
            .await
            .unwrap_err();
        assert!(refused.contains("--ipam-driver null"), "{refused}");
    }
}
