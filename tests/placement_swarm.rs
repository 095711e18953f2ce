//! The placement adapter on a Swarm mode cluster of two nodes: the main dockerd is the
//! manager (host A); host B is a network namespace with its own dockerd, joined to the
//! swarm over a veth pair. Each host runs a proxy with `placement`, with facts of its own
//! (external facts: `zone`), sharing a real etcd. Services are created through A's proxy
//! with Swarm-classic expressions; Swarm mode places their tasks.
//!
//! One set-up, one test: the scenarios run in order on it. The swarm is left and its
//! networks removed when the test ends, pass or fail.
//!
//! Needs the real daemon, facter and etcd; under `CI=true` their absence fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use powerstrip_testenv::etcd::EtcdCluster;
use powerstrip_testenv::host::Host;
use support::{IMAGE, ProxyProcess, StartedProxy, direct, docker, eventually, require_docker};

const ENDPOINTS: &str = r#"
[[endpoints]]
match = "POST /*/containers/create"
pre = ["place"]

[[endpoints]]
match = "POST /*/services/create"
pre = ["place"]

[[endpoints]]
match = "POST /*/services/*/update"
pre = ["place"]
"#;

fn config(etcd: &EtcdCluster, facts: &Path) -> String {
    format!(
        "version = 1\n[store]\nbackend = \"etcd\"\nendpoints = {:?}\nprefix = \"/placement-swarm-{}/\"\n\
         [adapters]\nplace = {{ builtin = \"placement\", refresh = \"1s\", facter = false, external_facts = [\"{}\"] }}\n{ENDPOINTS}",
        etcd.endpoints(),
        std::process::id(),
        facts.display()
    )
}

/// Leaves the swarm on both daemons and removes what Swarm mode made, when dropped.
struct Swarm {
    b_docker: String,
    services: Vec<String>,
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let main = direct();
        if !self.services.is_empty() {
            let _ = Command::new("docker")
                .args(["-H", &main, "service", "rm"])
                .args(&self.services)
                .output();
        }
        // Both daemons leave at once (each takes seconds).
        let leaving: Vec<_> = [&self.b_docker, &main]
            .into_iter()
            .filter_map(|host| {
                Command::new("docker")
                    .args(["-H", host, "swarm", "leave", "--force"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .ok()
            })
            .collect();
        for mut leave in leaving {
            let _ = leave.wait();
        }
        // Swarm mode's bridge on the main daemon: the ingress sandbox's endpoint first, or
        // the bridge cannot be removed.
        let _ = Command::new("docker")
            .args([
                "-H",
                &main,
                "network",
                "disconnect",
                "-f",
                "docker_gwbridge",
                "ingress-sbox",
            ])
            .output();
        let _ = Command::new("docker")
            .args(["-H", &main, "network", "rm", "docker_gwbridge"])
            .output();
    }
}

/// `docker ARGS` on `host`, which must succeed; its stdout.
async fn ok(host: &str, args: &[&str]) -> String {
    let run = docker(host, args, None).await;
    assert_eq!(run.code, 0, "docker {args:?}: {run:?}");
    run.out().trim().to_owned()
}

/// The node id where `service`'s task runs, once it runs.
async fn runs_on(service: &str) -> String {
    let what = format!("service {service} running");
    eventually(Duration::from_secs(60), &what, async || {
        let tasks = docker(
            &direct(),
            &[
                "service",
                "ps",
                "-q",
                "--filter",
                "desired-state=running",
                service,
            ],
            None,
        )
        .await
        .out();
        for task in tasks.split_whitespace() {
            let state = docker(
                &direct(),
                &["inspect", task, "-f", "{{.Status.State}} {{.NodeID}}"],
                None,
            )
            .await
            .out();
            if let Some(node) = state.trim().strip_prefix("running ") {
                return Some(node.to_owned());
            }
        }
        None
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_mode_places_services_by_the_facts_of_every_node() {
    if !require_docker()
        || !powerstrip_testenv::require("etcd", powerstrip_testenv::etcd::INSTALL_HINT)
    {
        return;
    }
    let main = direct();
    let state = docker(&main, &["info", "-f", "{{.Swarm.LocalNodeState}}"], None).await;
    assert_eq!(
        state.out().trim(),
        "inactive",
        "the main daemon is in a swarm already; this test makes its own"
    );
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let subnet = u8::try_from(20 + (std::process::id() + 7) % 200).unwrap();
    let mut b = Host::new("p", subnet);
    b.start_dockerd(&main, IMAGE);
    let mut swarm = Swarm {
        b_docker: b.docker_host(),
        services: Vec::new(),
    };
    step("host B up");
    let manager = b.outer_address().to_string();
    ok(
        &main,
        &[
            "swarm",
            "init",
            "--advertise-addr",
            &manager,
            "--listen-addr",
            &format!("{manager}:2377"),
        ],
    )
    .await;
    let token = ok(&main, &["swarm", "join-token", "-q", "worker"]).await;
    ok(
        &b.docker_host(),
        &[
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &b.address().to_string(),
            &format!("{manager}:2377"),
        ],
    )
    .await;
    step("swarm formed");
    let a_node = ok(&main, &["info", "-f", "{{.Swarm.NodeID}}"]).await;
    let b_node = ok(&b.docker_host(), &["info", "-f", "{{.Swarm.NodeID}}"]).await;

    let etcd = EtcdCluster::start_on(1, Some(b.outer_address()));
    let a_facts = tempfile::tempdir().unwrap();
    let b_facts = tempfile::tempdir().unwrap();
    std::fs::write(a_facts.path().join("zone.txt"), "zone=a\n").unwrap();
    std::fs::write(b_facts.path().join("zone.txt"), "zone=b\n").unwrap();
    let a = ProxyProcess::options()
        .config(&config(&etcd, a_facts.path()))
        .log("info,powerstrip_placement=debug")
        .args(["--node-name", "host-a", "--node-address", &manager])
        .start();
    let b_proxy = ProxyProcess::options()
        .docker(&b.docker_host())
        .netns(&b.netns_path())
        .config(&config(&etcd, b_facts.path()))
        .log("info,powerstrip_placement=debug")
        .args([
            "--node-name",
            "host-b",
            "--node-address",
            &b.address().to_string(),
        ])
        .start();
    let logs = |a: &StartedProxy| format!("--- A ---\n{}\n--- B ---\n{}", a.log(), b_proxy.log());

    step("proxies started");
    // Every node's facts become its labels, published by the manager's adapter.
    let label = async |node: &str| {
        docker(
            &main,
            &[
                "node",
                "inspect",
                node,
                "-f",
                "{{index .Spec.Labels \"fact.zone\"}}",
            ],
            None,
        )
        .await
        .out()
        .trim()
        .to_owned()
    };
    eventually(
        Duration::from_secs(30),
        "fact labels on both nodes",
        async || {
            (label(&a_node).await == "a" && label(&b_node).await == "b").then_some(String::new())
        },
    )
    .await;

    step("labels published");
    // A regular expression: resolved over the facts into B's node id; the task runs on B.
    let create = async |name: &str, expression: &str| {
        docker(
            &a.host(),
            &[
                "service",
                "create",
                "--detach",
                "--no-resolve-image",
                "--name",
                name,
                "-e",
                expression,
                IMAGE,
                "sleep",
                "300",
            ],
            None,
        )
        .await
    };
    let regex = format!("psplace-regex-{}", std::process::id());
    swarm.services.push(regex.clone());
    let made = create(&regex, "constraint:zone==/^b$/").await;
    assert_eq!(made.code, 0, "{made:?}\n{}", logs(&a));
    let constraints = ok(
        &main,
        &["service", "inspect", &regex, "-f", "{{json .Spec.TaskTemplate.Placement.Constraints}} {{json .Spec.TaskTemplate.ContainerSpec.Env}}"],
    )
    .await;
    assert!(
        constraints.contains(&format!("node.id=={b_node}")) && !constraints.contains("constraint:"),
        "{constraints}"
    );
    assert_eq!(runs_on(&regex).await, b_node, "{}", logs(&a));

    step("regex service ran");
    // A literal: Swarm checks it itself against the fact labels; the task runs on A.
    let literal = format!("psplace-literal-{}", std::process::id());
    swarm.services.push(literal.clone());
    let made = create(&literal, "constraint:zone==a").await;
    assert_eq!(made.code, 0, "{made:?}");
    let constraints = ok(
        &main,
        &[
            "service",
            "inspect",
            &literal,
            "-f",
            "{{json .Spec.TaskTemplate.Placement.Constraints}}",
        ],
    )
    .await;
    assert!(
        constraints.contains("node.labels.fact.zone==a"),
        "{constraints}"
    );
    assert_eq!(runs_on(&literal).await, a_node);

    step("literal service ran");
    // A literal no node has: the task stays pending.
    let pending = format!("psplace-pending-{}", std::process::id());
    swarm.services.push(pending.clone());
    let made = create(&pending, "constraint:zone==c").await;
    assert_eq!(made.code, 0, "{made:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let state = ok(
        &main,
        &["service", "ps", &pending, "--format", "{{.CurrentState}}"],
    )
    .await;
    assert!(state.starts_with("Pending"), "{state}");

    step("pending checked");
    // A regular expression no node's facts satisfy: refused at once, naming each node's value.
    let none = format!("psplace-none-{}", std::process::id());
    let refused = create(&none, "constraint:zone==/z/").await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("holds on no node of the swarm")
            && refused.stderr.contains("host-a: a")
            && refused.stderr.contains("host-b: b"),
        "{refused:?}"
    );

    step("refusal checked");
    // A fact that changes on B moves its label within a refresh interval (1 s here: B
    // gathers, puts, and the publisher sees the change at once; the rest is slack for a
    // loaded machine); the pending service's task then runs there.
    std::fs::write(b_facts.path().join("zone.txt"), "zone=c\n").unwrap();
    eventually(
        Duration::from_secs(4),
        "B's label to follow its fact",
        async || (label(&b_node).await == "c").then_some(String::new()),
    )
    .await;
    assert_eq!(runs_on(&pending).await, b_node, "{}", logs(&a));
    step("pending service ran");
    drop(swarm);
    step("swarm left");
}
