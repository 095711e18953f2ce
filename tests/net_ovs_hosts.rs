//! The networking adapter across two hosts: this namespace (the main dockerd, the host's
//! Open vSwitch) is host A; host B is a network namespace with its own dockerd and its own
//! Open vSwitch, joined to A by a veth underlay. Both proxies share a real etcd. Traffic
//! goes only to loopback and to the namespace the test makes; everything is removed when
//! it ends.
//!
//! Needs the real daemon, Open vSwitch and etcd; under `CI=true` their absence fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use powerstrip_testenv::etcd::EtcdCluster;
use powerstrip_testenv::host::Host;
use powerstrip_testenv::ovs::{TestBridge, vsctl};
use support::{IMAGE, ProxyProcess, StartedProxy, direct, docker, require_docker};

const ENDPOINTS: &str = r#"
[[endpoints]]
match = "POST /*/containers/create"
pre = ["net"]
post = ["net"]

[[endpoints]]
match = "POST /*/containers/*/start"
post = ["net"]

[[endpoints]]
match = "DELETE /*/containers/*"
pre = ["net"]
post = ["net"]
"#;

/// The configuration of one host's proxy.
fn config(etcd: &EtcdCluster, net: &str) -> String {
    format!(
        "version = 1\n[store]\nbackend = \"etcd\"\nendpoints = {:?}\nprefix = \"/hosts-test-{}/\"\n\
         [adapters]\nnet = {{ builtin = \"net-ovs\", networks = {{ blue = \"10.50.0.0/24\", red = \"10.51.0.0/24\" }}, reconcile = \"2s\", {net} }}\n{ENDPOINTS}",
        etcd.endpoints(),
        std::process::id()
    )
}

/// Runs a sleeping container on `network` through `proxy`; its id and overlay address.
async fn run_on(proxy: &StartedProxy, network: &str) -> (String, String) {
    let label = format!("powerstrip.network={network}");
    let run = docker(
        &proxy.host(),
        &["run", "-d", "--label", &label, IMAGE, "sleep", "300"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}\n{}", proxy.log());
    let id = run.out().trim().to_owned();
    let format = format!("{{{{index .Config.Labels \"powerstrip.network.{network}.ip\"}}}}");
    let ip = docker(&proxy.host(), &["inspect", "-f", &format, &id], None).await;
    (id, ip.out().trim().to_owned())
}

/// Whether container `from` (on `host`, a docker host) gets an answer from `address`
/// within `within`.
async fn reaches(host: &str, from: &str, address: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let run = docker(
            host,
            &["exec", from, "ping", "-c", "1", "-W", "1", address],
            None,
        )
        .await;
        if run.code == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The tunnel ports (to peers) of `bridge` on the OVS of `db` (the host's when `None`).
fn tunnels(db: Option<&str>, bridge: &str) -> Vec<String> {
    vsctl(db, &["list-ports", bridge])
        .lines()
        .filter(|p| p.starts_with("vx"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_reach_each_other_across_hosts_over_vxlan_and_isolation_holds() {
    if !require_docker()
        || !powerstrip_testenv::ovs::require()
        || !powerstrip_testenv::require("etcd", powerstrip_testenv::etcd::INSTALL_HINT)
    {
        return;
    }
    let subnet = u8::try_from(20 + std::process::id() % 200).unwrap();
    let mut b = Host::new("b", subnet);
    b.start_ovs();
    b.start_dockerd(&direct(), IMAGE);
    // etcd on A's underlay address, so that B reaches it.
    let etcd = EtcdCluster::start_on(1, Some(b.outer_address()));

    // Host A: this namespace, the host's OVS, bridges of the test's own.
    let a_bridge = TestBridge::new(21);
    let a_underlay = TestBridge::new(22);
    let _route = RouteGuard(format!("10.231.{subnet}.0/24"));
    let a_net = format!(
        "bridge = \"{}\", datapath = \"netdev\", underlay = {{ interface = \"{}\", bridge = \"{}\" }}",
        a_bridge.name(),
        b.outer_underlay(),
        a_underlay.name()
    );
    let a = ProxyProcess::options()
        .config(&config(&etcd, &a_net))
        .log("info,powerstrip_net_ovs=debug")
        .args([
            "--node-name",
            "host-a",
            "--node-address",
            &b.outer_address().to_string(),
            "--node-ttl",
            "2s",
        ])
        .start();
    // Host B: its namespace, its OVS, its dockerd.
    let b_net = format!(
        "bridge = \"psb0\", datapath = \"netdev\", ovsdb = \"{}\", vswitchd = \"{}\", underlay = {{ interface = \"{}\" }}",
        b.ovsdb(),
        b.vswitchd(),
        b.underlay()
    );
    let mut b_proxy = ProxyProcess::options()
        .docker(&b.docker_host())
        .netns(&b.netns_path())
        .config(&config(&etcd, &b_net))
        .log("info,powerstrip_net_ovs=debug")
        .args([
            "--node-name",
            "host-b",
            "--node-address",
            &b.address().to_string(),
            "--node-ttl",
            "2s",
        ])
        .start();

    let (on_a, a_ip) = run_on(&a, "blue").await;
    let (on_b, b_ip) = run_on(&b_proxy, "blue").await;
    let (red_b, _) = run_on(&b_proxy, "red").await;
    let _cleanup = RemoveOnDrop(vec![on_a.clone()]);
    assert_ne!(a_ip, b_ip, "the cluster handed one address out twice");

    // Blue reaches blue across the hosts, both ways, over VXLAN.
    assert!(
        reaches(&direct(), &on_a, &b_ip, Duration::from_secs(15)).await,
        "A cannot reach B over blue\n--- A ---\n{}\n--- B ---\n{}",
        a.log(),
        b_proxy.log()
    );
    assert!(reaches(&b.docker_host(), &on_b, &a_ip, Duration::from_secs(5)).await);
    // Red does not reach blue across the hosts.
    assert!(
        !reaches(&b.docker_host(), &red_b, &a_ip, Duration::from_secs(2)).await,
        "red reaches blue across hosts"
    );
    // One tunnel per peer and network on each side.
    assert_eq!(
        tunnels(None, a_bridge.name()).len(),
        2,
        "{:?}",
        tunnels(None, a_bridge.name())
    );
    assert_eq!(tunnels(Some(&b.ovsdb()), "psb0").len(), 2);

    // B leaves (its proxy dies): its lease ends and A removes its tunnels.
    b_proxy.kill_now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tunnels(None, a_bridge.name()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "A kept tunnels to a host that left: {:?}",
            tunnels(None, a_bridge.name())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Removes containers from the main daemon when dropped.
struct RemoveOnDrop(Vec<String>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["-H", &direct(), "rm", "-f"])
            .args(&self.0)
            .output();
    }
}

/// Removes a tunnel route from the host's ovs-vswitchd when dropped.
struct RouteGuard(String);

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let _ = Command::new("ovs-appctl")
            .args(["ovs/route/del", &self.0])
            .output();
    }
}
