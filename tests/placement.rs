//! The placement adapter on one host, as users meet it: the real docker CLI through the real
//! `powerstrip` binary (with `placement` linked in), the real dockerd, real Facter, real
//! external facts files, and a second node (a second proxy on the same daemon, with facts
//! of its own) sharing a real etcd, so that refusals can name where an expression holds.
//!
//! Needs the real daemon, facter and etcd; under `CI=true` their absence fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Containers, IMAGE, ProxyProcess, StartedProxy, direct, docker, require_docker};

const ENDPOINTS: &str = r#"
[[endpoints]]
match = "POST /*/containers/create"
pre = ["place"]
"#;

/// One node: a proxy with `placement` and its external facts.
struct Side {
    proxy: StartedProxy,
    _facts: tempfile::TempDir,
}

/// Writes external facts of every kind into a fresh directory: `zone` (.txt), `rack`
/// (.json), `tier` (.yaml), `owner` (an executable).
fn facts_dir(zone: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("zone.txt"), format!("zone={zone}\n")).unwrap();
    std::fs::write(dir.path().join("rack.json"), r#"{"rack": "r12"}"#).unwrap();
    std::fs::write(dir.path().join("tier.yaml"), "tier: gold\n").unwrap();
    let script = dir.path().join("owner.sh");
    std::fs::write(&script, "#!/bin/sh\necho owner=team-x\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn start(name: &str, zone: &str, store: &str) -> Side {
    let facts = facts_dir(zone);
    let config = format!(
        "version = 1\n{store}\n[adapters]\nplace = {{ builtin = \"placement\", refresh = \"1s\", external_facts = [\"{}\"] }}\n{ENDPOINTS}",
        facts.path().display()
    );
    let proxy = ProxyProcess::options()
        .config(&config)
        .log("info,powerstrip_placement=debug")
        .args(["--node-name", name])
        .start();
    Side {
        proxy,
        _facts: facts,
    }
}

/// `powerstrip facts ARGS` on the store of `config`.
fn facts_cli(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_powerstrip"))
        .arg("facts")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Two nodes on one etcd, both publishing facts.
fn two_nodes(what: &str) -> Option<(Side, Side)> {
    if !require_docker()
        || !powerstrip_testenv::require("facter", "scripts/ensure-tools test installs facter")
    {
        return None;
    }
    let etcd = powerstrip_testenv::etcd::shared()?;
    let store = format!(
        "[store]\nbackend = \"etcd\"\nendpoints = {:?}\nprefix = \"/placement-{what}-{}/\"\n",
        etcd.endpoints(),
        std::process::id()
    );
    let a = start("host-a", "a", &store);
    let b = start("host-b", "b", &store);
    // Both published (Facter takes a moment).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = facts_cli(&a.proxy.config_file(), &[]);
        if all.contains("# host-a") && all.contains("# host-b") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "facts not published: {all}\n{}",
            a.proxy.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Some((a, b))
}

/// `docker run --rm [--label ...] -e EXPR... busybox:local env` through `proxy`; the
/// container's environment, or the failure.
async fn run(proxy: &StartedProxy, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["run", "--rm"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[IMAGE, "env"]);
    let run = docker(&proxy.host(), &all, None).await;
    if run.code == 0 {
        Ok(run.out())
    } else {
        Err(run.stderr)
    }
}

fn env(expressions: &[&str]) -> Vec<String> {
    expressions
        .iter()
        .flat_map(|e| ["-e".to_owned(), (*e).to_owned()])
        .collect()
}

async fn holds(proxy: &StartedProxy, expressions: &[&str]) -> Result<String, String> {
    let args = env(expressions);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(proxy, &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraints_on_one_host_with_real_facts() {
    let Some((a, _b)) = two_nodes("constraints") else {
        return;
    };
    let p = &a.proxy;
    let machine = String::from_utf8(Command::new("uname").arg("-m").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();

    // Real Facter facts, and the entries leave the container's environment.
    let ok = holds(p, &[&format!("constraint:hardwaremodel=={machine}")])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    assert!(
        !ok.contains("constraint:"),
        "the entry stayed in the env: {ok}"
    );
    let e = holds(p, &[&format!("constraint:hardwaremodel!={machine}")])
        .await
        .unwrap_err();
    assert!(
        e.contains(&format!(
            "constraint:hardwaremodel!={machine} does not hold on this node"
        )) && e.contains(&format!("hardwaremodel is {machine}")),
        "{e}"
    );
    assert!(!e.contains("Unable to find image"), "{e}");

    // External facts of every kind, each operator and value form.
    for good in [
        "constraint:zone==a",
        "constraint:zone!=b",
        "constraint:rack==r1*",
        "constraint:tier==/ol/",
        "constraint:tier==/(?i)GOLD/",
        "constraint:owner==team-x",
        "constraint:missing!=x",
        "constraint:node==host-a",
        "constraint:system_overload_1min==/[0-9]/",
    ] {
        holds(p, &[good])
            .await
            .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for bad in [
        "constraint:rack==R1*",
        "constraint:tier==/^GOLD$/",
        "constraint:missing==x",
        "constraint:Zone==a",
    ] {
        let e = holds(p, &[bad]).await.unwrap_err();
        assert!(
            e.contains("409") || e.contains("does not hold"),
            "{bad}: {e}"
        );
    }

    // Where it holds instead: the other live node.
    let e = holds(p, &["constraint:zone==b"]).await.unwrap_err();
    assert!(
        e.contains("zone is a") && e.contains("it holds on host-b"),
        "{e}"
    );

    // Soft: ignored when it does not hold, never rescuing a hard one.
    holds(p, &["constraint:zone==~b"]).await.unwrap();
    // (Different keys: the docker CLI keeps one env entry per name, `constraint:zone`.)
    let e = holds(p, &["constraint:zone==b", "constraint:tier==~gold"])
        .await
        .unwrap_err();
    assert!(e.contains("constraint:zone==b does not hold"), "{e}");

    // The label form.
    let label = |v: &str| format!("com.docker.swarm.constraints=[\"{v}\"]");
    run(p, &["--label", &label("zone==a")]).await.unwrap();
    assert!(run(p, &["--label", &label("zone==b")]).await.is_err());

    // Malformed: 400 naming the expression.
    for (bad, says) in [
        ("constraint:zone==/abc", "constraint:zone==/abc"),
        ("constraint:zone>=a", ">="),
        ("constraint:zone==/[/", "constraint:zone==/[/"),
    ] {
        let e = holds(p, &[bad]).await.unwrap_err();
        assert!(
            e.contains(says) && !e.contains("does not hold"),
            "{bad}: {e}"
        );
    }

    // Recorded as labels on a created container, as Swarm classic did.
    let containers = Containers::new("placement");
    let created = docker(
        &p.host(),
        &[
            "create",
            "--label",
            containers.label(),
            "-e",
            "constraint:zone==a",
            "-e",
            "KEEP=me",
            IMAGE,
            "true",
        ],
        None,
    )
    .await;
    assert_eq!(created.code, 0, "{created:?}");
    let id = created.out().trim().to_owned();
    let inspect = docker(
        &direct(),
        &[
            "inspect",
            "-f",
            "{{json .Config.Env}} {{index .Config.Labels \"com.docker.swarm.constraints\"}}",
            &id,
        ],
        None,
    )
    .await
    .out();
    assert!(
        inspect.contains("KEEP=me")
            && !inspect.contains("constraint:")
            && inspect.contains(r#"["zone==a"]"#),
        "{inspect}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinities_on_one_host() {
    let Some((a, _b)) = two_nodes("affinities") else {
        return;
    };
    let p = &a.proxy;
    let containers = Containers::new("affinity");
    let name = format!("ps-affinity-db-{}", std::process::id());
    let db = docker(
        &direct(),
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            containers.label(),
            "--label",
            "role=db",
            IMAGE,
            "sleep",
            "300",
        ],
        None,
    )
    .await;
    assert_eq!(db.code, 0, "{db:?}");
    let id = db.out().trim().to_owned();
    for good in [
        format!("affinity:container=={name}"),
        format!("affinity:container=={}", &id[..12]),
        "affinity:container!=nothing-of-that-name".to_owned(),
        "affinity:image==busybox".to_owned(),
        "affinity:image==busybox:local".to_owned(),
        "affinity:role==db".to_owned(),
    ] {
        holds(p, &[&good])
            .await
            .unwrap_or_else(|e| panic!("{good}: {e}\n{}", p.log()));
    }
    for bad in [
        format!("affinity:container!={name}"),
        "affinity:image==redis".to_owned(),
        "affinity:role==web".to_owned(),
    ] {
        let e = holds(p, &[&bad]).await.unwrap_err();
        assert!(e.contains(&format!("{bad} does not hold")), "{bad}: {e}");
        if bad.starts_with("affinity:container") {
            assert!(
                e.contains("host-a has containers: ") && e.contains(&name),
                "{e}"
            );
        }
    }
    // A soft affinity that does not hold is ignored.
    holds(p, &["affinity:role==~web"]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powerstrip_facts_prints_every_nodes_facts() {
    let Some((a, _b)) = two_nodes("cli") else {
        return;
    };
    let b = facts_cli(&a.proxy.config_file(), &["--node", "host-b"]);
    assert!(b.starts_with("# host-b ("), "{b}");
    assert!(b.lines().any(|l| l == "zone=b"), "{b}");
    assert!(b.lines().any(|l| l.starts_with("hardwaremodel=")), "{b}");
    assert!(!b.contains("# host-a"), "{b}");
    let none = facts_cli(&a.proxy.config_file(), &["--node", "host-z"]);
    assert!(none.contains("no live node \"host-z\""), "{none}");
}
