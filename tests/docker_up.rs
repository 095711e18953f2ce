//! `docker/up`, the operator's third command: the base image made from Debian's packages,
//! the images built from `docker/Dockerfile`, the stack of `docker/compose.yml` started
//! with `docker/adapters.toml`, and the docker CLI working through it, every adapter in
//! the chain; then `docker/down --volumes` takes it all away.
//!
//! The images carry the binaries this test is built with (`POWERSTRIP_BIN_DIR`; `scripts/test`
//! builds every binary of the workspace first), not a release build of their own: the
//! files of `docker/` are what is tested, and a release build would double the suite's time.
//!
//! It runs on the main dockerd and uses the stack's fixed places (`/run/powerstrip`,
//! `/var/lib/powerstrip`, ports 2379, 2380 and 9380 on loopback), as an operator's would.
//!
//! Needs the real daemon, Open vSwitch and Debian's mirror (for the base image and the
//! images' packages); under `CI=true` their absence fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{IMAGE, docker, require_docker};

/// The stack's socket on the host.
const SOCKET: &str = "unix:///run/powerstrip/docker.sock";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script(name: &str, args: &[&str]) -> Output {
    Command::new(repo().join("docker").join(name))
        .args(args)
        .env(
            "POWERSTRIP_BIN_DIR",
            Path::new(env!("CARGO_BIN_EXE_powerstrip"))
                .parent()
                .unwrap(),
        )
        .env_remove("DOCKER_HOST")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Takes the stack down (and its data) when dropped, pass or fail.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["-H", SOCKET, "rm", "-f", "stack-db"])
            .output();
        let out = script("down", &["--volumes"]);
        if !out.status.success() {
            eprintln!("docker/down --volumes: {}", text(&out));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_up_runs_the_stack_and_the_docker_cli_works_through_it() {
    if !require_docker() || !powerstrip_testenv::ovs::require() {
        return;
    }
    let bins = Path::new(env!("CARGO_BIN_EXE_powerstrip"))
        .parent()
        .unwrap();
    for bin in [
        "powerstrip-net-ovs",
        "powerstrip-volumes",
        "powerstrip-placement",
    ] {
        assert!(
            bins.join(bin).exists(),
            "{bin} is not built: `cargo build --workspace --bins` first (scripts/test does)"
        );
    }
    // The test takes the stack down with its data at the end: never someone's own stack.
    let existing = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter", "name=^powerstrip(-etcd)?$"])
        .output()
        .unwrap();
    assert!(
        existing.stdout.is_empty() && !Path::new("/var/lib/powerstrip/pool.img").exists(),
        "a powerstrip stack (or its pool) is already on this machine; this test would remove \
         it with its data: run the suite on a machine of its own"
    );
    let down = Down;
    let up = script("up", &[]);
    assert!(up.status.success(), "docker/up failed:\n{}", text(&up));
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert_eq!(
        stdout.trim(),
        format!("export DOCKER_HOST={SOCKET}"),
        "docker/up prints the DOCKER_HOST line and nothing else on stdout"
    );

    // The docker CLI through the stack: a plain run, one placed by a fact Facter gives
    // inside the image, one refused by a constraint, a dataset, an overlay address.
    let run = docker(
        SOCKET,
        &["run", "--rm", IMAGE, "echo", "through the stack"],
        None,
    )
    .await;
    assert_eq!(run.out().trim(), "through the stack", "{run:?}");
    let arch = Command::new("uname").arg("-m").output().unwrap();
    let arch = String::from_utf8_lossy(&arch.stdout).trim().to_owned();
    let placed = docker(
        SOCKET,
        &[
            "run",
            "--rm",
            "-e",
            &format!("constraint:hardwaremodel=={arch}"),
            IMAGE,
            "true",
        ],
        None,
    )
    .await;
    assert_eq!(placed.code, 0, "{placed:?}");
    let refused = docker(
        SOCKET,
        &[
            "run",
            "--rm",
            "-e",
            "constraint:hardwaremodel==/^vax$/",
            IMAGE,
            "true",
        ],
        None,
    )
    .await;
    assert!(
        refused
            .stderr
            .contains("constraint:hardwaremodel==/^vax$/ does not hold on this node"),
        "{refused:?}"
    );
    let db = docker(
        SOCKET,
        &[
            "run",
            "-d",
            "--name",
            "stack-db",
            "-v",
            "stackdemo@gold:/data",
            "--label",
            "powerstrip.network=blue",
            IMAGE,
            "sh",
            "-c",
            "echo kept > /data/file; exec sleep 300",
        ],
        None,
    )
    .await;
    assert_eq!(db.code, 0, "{db:?}\n{}", logs());
    let ip = docker(
        SOCKET,
        &[
            "inspect",
            "-f",
            "{{index .Config.Labels \"powerstrip.network.blue.ip\"}}",
            "stack-db",
        ],
        None,
    )
    .await;
    assert!(ip.out().trim().starts_with("10.50.0."), "{ip:?}");
    let datasets = Command::new("docker")
        .args(["exec", "powerstrip", "powerstrip", "volumes", "ls"])
        .output()
        .unwrap();
    assert!(
        text(&datasets)
            .lines()
            .any(|l| l.starts_with("stackdemo ") && l.contains("gold")),
        "{}",
        text(&datasets)
    );
    let removed = docker(SOCKET, &["rm", "-f", "stack-db"], None).await;
    assert_eq!(removed.code, 0, "{removed:?}");

    // Down, with its data: nothing of the stack is left.
    drop(down);
    let left = Command::new("docker")
        .args(["ps", "-a", "--filter", "name=^powerstrip", "-q"])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "containers left: {}", text(&left));
    assert!(!PathBuf::from("/run/powerstrip/docker.sock").exists());
    assert!(!PathBuf::from("/var/lib/powerstrip/pool.img").exists());
}

/// The stack's log, for failures.
fn logs() -> String {
    let out = Command::new("docker")
        .args(["logs", "--tail", "60", "powerstrip"])
        .output()
        .unwrap();
    text(&out)
}
