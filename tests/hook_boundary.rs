//! Hooks are a policy boundary: a request that Docker would route to a hooked endpoint
//! reaches its hooks, whatever its body. Build contexts and archives stream to Docker
//! unseen, but their pre-hooks run (told the body was withheld) and can refuse them.
//!
//! The real docker CLI, the real `powerstrip` binary and the real daemon; the policy
//! adapters are HTTP stand-ins (a refusing one, a pass-through one) that record their calls.
//! Needs the real daemon (`scripts/ensure-docker`); under `CI=true` its absence fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use powerstrip_protocol::HookCall;
use powerstrip_testkit::FakeAdapter;
use support::{IMAGE, ProxyProcess, direct, docker, require_docker};

/// A configuration hooking `adapter` (an HTTP adapter at `url`) pre on `pattern`.
fn pre_on(pattern: &str, url: &str) -> String {
    format!(
        "version = 1\n[adapters]\npolicy = {url:?}\n\n[[endpoints]]\nmatch = {pattern:?}\npre = [\"policy\"]\n"
    )
}

/// The pre-hook calls an adapter received.
fn pre_calls(adapter: &FakeAdapter) -> Vec<powerstrip_protocol::ClientRequest> {
    adapter
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            HookCall::PreHook { client_request } => Some(client_request),
            _ => None,
        })
        .collect()
}

/// A container started directly (not through the proxy), removed when dropped.
struct Container(String);

impl Container {
    async fn start() -> Container {
        let run = docker(&direct(), &["run", "-d", IMAGE, "sleep", "300"], None).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        Container(run.out().trim().to_owned())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["-H", &direct(), "rm", "-f", &self.0])
            .output();
    }
}

/// Writes `len` bytes that nothing along the way can compress, and returns their sha256.
fn incompressible_file(path: &std::path::Path, len: usize) -> String {
    use std::io::Write as _;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len());
        file.write_all(&block[..n]).unwrap();
        left -= n;
    }
    file.flush().unwrap();
    drop(file);
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_pre_hook_on_build_stops_docker_build_with_its_message() {
    if !require_docker() {
        return;
    }
    let policy =
        FakeAdapter::refuse(403, r#"{"message": "builds are not allowed on this host"}"#).await;
    let proxy = ProxyProcess::start(Some(&pre_on("POST /*/build", &policy.url())));
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {IMAGE}\nRUN echo built > /built\n"),
    )
    .unwrap();
    // Far more than the proxy reads of a refused body: the refusal still reaches the user.
    incompressible_file(&context.path().join("blob"), 64 << 20);
    let tag = format!("powerstrip-e2e-refused:{}", std::process::id());
    let run = docker(
        &proxy.host(),
        &["build", "-t", &tag, context.path().to_str().unwrap()],
        None,
    )
    .await;
    assert_ne!(run.code, 0, "the build went through: {run:?}");
    assert!(
        run.stderr.contains("builds are not allowed on this host"),
        "the user does not read the adapter's message: {run:?}"
    );
    let calls = pre_calls(&policy);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert!(call.request.contains("/build?"), "{call:?}");
    assert_eq!(call.body, None, "the tar context is never shown to hooks");
    let withheld = call
        .withheld
        .as_ref()
        .expect("the call says the body was withheld");
    assert_eq!(withheld.content_type, "application/x-tar");
    let exists = docker(&direct(), &["image", "inspect", &tag], None).await;
    assert_ne!(exists.code, 0, "the refused build produced {tag}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_pre_hook_on_archive_stops_docker_cp_into_a_container() {
    if !require_docker() {
        return;
    }
    let container = Container::start().await;
    let policy = FakeAdapter::refuse(
        403,
        r#"{"message": "copying into containers is not allowed"}"#,
    )
    .await;
    let proxy = ProxyProcess::start(Some(&pre_on("PUT /*/containers/*/archive", &policy.url())));
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("payload");
    std::fs::write(&source, b"should not arrive\n").unwrap();
    let target = format!("{}:/payload", container.0);
    let run = docker(
        &proxy.host(),
        &["cp", source.to_str().unwrap(), &target],
        None,
    )
    .await;
    assert_ne!(run.code, 0, "the copy went through: {run:?}");
    assert!(
        run.stderr
            .contains("copying into containers is not allowed"),
        "the user does not read the adapter's message: {run:?}"
    );
    let inside = docker(&direct(), &["exec", &container.0, "ls", "/payload"], None).await;
    assert_ne!(inside.code, 0, "the refused copy arrived: {inside:?}");
    let calls = pre_calls(&policy);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0]
            .request
            .contains(&format!("/containers/{}/archive?", container.0)),
        "{calls:?}"
    );
    assert!(calls[0].withheld.is_some(), "{calls:?}");
    // The proxy keeps serving on the same socket.
    let again = docker(
        &proxy.host(),
        &["version", "--format", "{{.Server.Version}}"],
        None,
    )
    .await;
    assert_eq!(again.code, 0, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_through_pre_hook_on_archive_copies_1_gib_intact_without_buffering_it() {
    if !require_docker() {
        return;
    }
    let container = Container::start().await;
    let policy = FakeAdapter::echo().await;
    let proxy = ProxyProcess::start(Some(&pre_on("PUT /*/containers/*/archive", &policy.url())));
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("payload");
    let sum = incompressible_file(&source, 1 << 30);
    let before = proxy.memory_kib("VmHWM");
    let target = format!("{}:/payload", container.0);
    let run = docker(
        &proxy.host(),
        &["cp", source.to_str().unwrap(), &target],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let after = proxy.memory_kib("VmHWM");
    eprintln!("1 GiB docker cp: proxy peak RSS {before} KiB before, {after} KiB after");
    assert!(
        after < before + 16 * 1024,
        "copying 1 GiB grew the proxy's peak RSS from {before} KiB to {after} KiB"
    );
    let calls = pre_calls(&policy);
    assert_eq!(calls.len(), 1, "the pre-hook ran once: {calls:?}");
    let withheld = calls[0].withheld.as_ref().unwrap();
    // The docker CLI streams the archive chunked, labelled text/plain.
    assert_eq!(withheld.content_length, None, "{calls:?}");
    let inside = docker(
        &direct(),
        &["exec", &container.0, "sha256sum", "/payload"],
        None,
    )
    .await;
    assert_eq!(inside.code, 0, "{inside:?}");
    assert_eq!(&inside.out()[..64], sum, "the copied bytes differ");
}
