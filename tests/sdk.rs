//! Adapters as their users meet them: the conformance command on a good and a broken
//! adapter, and — against the real daemon through the `powerstrip` binary — an in-process
//! policy refusing an image, `slowreq` delaying `docker create`, and an adapter written
//! like the original Python ones rewriting a create on the way in and out.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use powerstrip_testkit::{AdapterReply, FakeAdapter};
use support::{IMAGE, ProxyProcess, direct, docker, require_docker};

fn conformance(url: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_powerstrip"))
        .args(["conformance", url, "--timeout", "2s"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_command_passes_a_null_adapter_and_fails_a_broken_one() {
    let null = FakeAdapter::echo().await;
    let (code, report) = conformance(&null.url());
    assert_eq!(code, 0, "{report}");
    assert!(report.trim_end().ends_with("passed, 0 failed"), "{report}");

    // Answers PowerstripProtocolVersion 2 to everything.
    let broken = FakeAdapter::start(|_| {
        AdapterReply::Json(
            200,
            serde_json::json!({"PowerstripProtocolVersion": 2, "ModifiedClientRequest": {}}),
        )
    })
    .await;
    let (code, report) = conformance(&broken.url());
    assert_eq!(code, 1, "{report}");
    let last = report.trim_end().lines().last().unwrap();
    let failed: usize = last
        .split(", ")
        .nth(1)
        .unwrap()
        .trim_end_matches(" failed")
        .parse()
        .unwrap();
    assert!(failed > 0, "{report}");
    assert!(
        report.contains("FAIL  pre-hook on container create"),
        "{report}"
    );
    assert!(report.contains("PowerstripProtocolVersion"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_policy_refuses_an_image_at_the_docker_cli() {
    if !require_docker() {
        return;
    }
    let proxy = ProxyProcess::start(Some(
        "[adapters]\npolicy = { builtin = \"image-policy\", allow = [\"busybox:*\"], allow_root = true }\n\
         [[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"policy\"]\n",
    ));
    let refused = docker(
        &proxy.host(),
        &["run", "--rm", "--pull=never", "nginx:latest"],
        None,
    )
    .await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains(
            "Error response from daemon: image-policy: image \"nginx:latest\" is not allowed here (allowed: busybox:*)"
        ),
        "{}",
        refused.stderr
    );
    let allowed = docker(
        &proxy.host(),
        &["run", "--rm", IMAGE, "echo", "allowed"],
        None,
    )
    .await;
    assert_eq!(
        (allowed.code, allowed.out().as_str()),
        (0, "allowed\n"),
        "{}",
        allowed.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowreq_delays_docker_create_measurably() {
    if !require_docker() {
        return;
    }
    let plain = ProxyProcess::start(None);
    let slow = ProxyProcess::start(Some(
        "[adapters]\nslow = { builtin = \"slowreq\", delay = \"1s\" }\n\
         [[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"slow\"]\n",
    ));
    let mut times = Vec::new();
    for proxy in [&plain, &slow] {
        let started = Instant::now();
        let created = docker(&proxy.host(), &["create", IMAGE, "true"], None).await;
        times.push(started.elapsed());
        assert_eq!(created.code, 0, "{}", created.stderr);
        docker(&direct(), &["rm", created.out().trim()], None).await;
    }
    eprintln!(
        "docker create: {:?} plain, {:?} with slowreq 1s",
        times[0], times[1]
    );
    assert!(
        times[1] >= times[0] + Duration::from_millis(900),
        "{times:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_written_like_the_original_python_ones_works_behind_the_proxy() {
    if !require_docker() {
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/original_adapter.py"
    );
    let mut python = Command::new("python3")
        .args([script, "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    BufReader::new(python.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let url = format!("http://127.0.0.1:{}/powerstrip", port.trim());

    let proxy = ProxyProcess::start(Some(&format!(
        "[adapters]\noriginal = {url:?}\n[[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"original\"]\npost = [\"original\"]\n"
    )));
    let name = format!("original-adapter-{}", std::process::id());
    let created = docker(
        &proxy.host(),
        &[
            "create",
            "--name",
            &name,
            "--label",
            "mine=kept",
            IMAGE,
            "true",
        ],
        None,
    )
    .await;
    let _ = python.kill();
    let _ = python.wait();
    assert_eq!(created.code, 0, "{}", created.stderr);
    // The post-hook's warning reaches the user; the pre-hook's label reaches Docker,
    // next to the user's own.
    assert!(
        created.stderr.contains("the original adapter saw this"),
        "{}",
        created.stderr
    );
    let labels = docker(
        &direct(),
        &["inspect", "--format", "{{json .Config.Labels}}", &name],
        None,
    )
    .await;
    docker(&direct(), &["rm", &name], None).await;
    let labels: serde_json::Value = serde_json::from_str(labels.out().trim()).unwrap();
    assert_eq!(
        labels,
        serde_json::json!({"mine": "kept", "original-adapter": "was-here"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_configuration_shows_a_refusal_and_logged_calls() {
    if !require_docker() {
        return;
    }
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/adapters.toml")).unwrap();
    let proxy = ProxyProcess::start_logging(Some(&example), "info");
    let hello = docker(
        &proxy.host(),
        &["run", "--rm", IMAGE, "echo", "hello"],
        None,
    )
    .await;
    assert_eq!(
        (hello.code, hello.out().as_str()),
        (0, "hello\n"),
        "{}",
        hello.stderr
    );
    let refused = docker(
        &proxy.host(),
        &["run", "--rm", "--pull=never", "nginx"],
        None,
    )
    .await;
    assert_eq!(refused.code, 125);
    assert!(
        refused
            .stderr
            .contains("image-policy: image \"nginx\" is not allowed here"),
        "{}",
        refused.stderr
    );
    let log = proxy.log();
    assert!(
        log.lines().any(|l| l.contains("logger")
            && l.contains(r#""hook":"post-hook""#)
            && l.contains("/containers/create")),
        "the logger recorded no create:\n{log}"
    );
}
