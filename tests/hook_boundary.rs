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

// ---------------------------------------------------------------------------------------
// The path Docker routes

/// A hooked endpoint, a request Docker routes to it, and how to tell from Docker's answer
/// that it routed a request to that endpoint, whatever the name in the path (the requests
/// are chosen to leave nothing behind: no such image, container or volume, or a read).
struct Hooked {
    name: &'static str,
    pattern: &'static str,
    method: &'static str,
    /// Requests Docker routes there (with and without an API version).
    paths: &'static [&'static str],
    body: &'static str,
    routed: fn(u16, &str) -> bool,
}

const HOOKED: [Hooked; 7] = [
    Hooked {
        name: "create",
        pattern: "POST /*/containers/create",
        method: "POST",
        paths: &["/v1.41/containers/create", "/containers/create"],
        body: r#"{"Image":"powerstrip-e2e-nosuch-image"}"#,
        routed: |status, body| status == 404 && body.contains("No such image: "),
    },
    Hooked {
        name: "inspect",
        pattern: "GET /*/containers/*/json",
        method: "GET",
        paths: &["/v1.41/containers/powerstrip-e2e-nosuch-inspect/json"],
        body: "",
        routed: |status, body| status == 404 && body.contains("No such container: "),
    },
    Hooked {
        name: "start",
        pattern: "POST /*/containers/*/start",
        method: "POST",
        paths: &["/v1.41/containers/powerstrip-e2e-nosuch-start/start"],
        body: "",
        routed: |status, body| status == 404 && body.contains("No such container: "),
    },
    Hooked {
        name: "image",
        pattern: "GET /*/images/*/json",
        method: "GET",
        paths: &["/v1.41/images/busybox:local/json"],
        body: "",
        // "No such image" (404), or "no such image: ...: invalid reference format" (400).
        routed: |status, body| {
            (status == 200 && body.contains("\"RepoTags\""))
                || body.to_ascii_lowercase().contains("no such image: ")
        },
    },
    Hooked {
        name: "volume",
        pattern: "DELETE /*/volumes/*",
        method: "DELETE",
        paths: &["/v1.41/volumes/powerstrip-e2e-nosuch-volume"],
        body: "",
        routed: |status, body| status == 404 && body.contains("no such volume"),
    },
    Hooked {
        name: "info",
        pattern: "GET /*/info",
        method: "GET",
        paths: &["/v1.41/info"],
        body: "",
        routed: |status, body| status == 200 && body.contains("\"KernelVersion\""),
    },
    Hooked {
        name: "ping",
        pattern: "GET /_ping",
        method: "GET",
        paths: &["/_ping"],
        body: "",
        routed: |status, body| status == 200 && body == "OK",
    },
];

/// Docker's answer to a path its router does not route: a redirect to the cleaned path,
/// or its "page not found".
fn routed_nowhere(status: u16, body: &str) -> bool {
    status == 301 || (status == 404 && body.contains("page not found"))
}

/// One request written as raw bytes (the target exactly as given) on a new connection to
/// a unix socket; the answer's status and body.
async fn raw_request(
    socket: &std::path::Path,
    method: &str,
    target: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .unwrap_or_else(|_| panic!("no answer to {method} {target} within 10 s"))
    .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body.trim_end().to_owned())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Deterministic spellings of `path`: each byte raw or percent-escaped (either case), with
/// now and then a doubled slash, a dot segment, an escaped NUL or `?`, or a trailing slash.
fn spellings(path: &str, count: usize, seed: u64) -> Vec<String> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    for _ in 0..count {
        let mut path = path.to_owned();
        let at = 1 + (next() as usize) % (path.len() - 1);
        match next() % 10 {
            0 => path.insert(at, '/'),
            1 => path.insert_str(at, "/./"),
            2 => path.insert_str(at, "/x/../"),
            3 => path.insert(at, '\0'),
            4 => path.insert(at, '?'),
            5 => path.push('/'),
            _ => {}
        }
        let mut spelled = String::new();
        for b in path.bytes() {
            let plain = b.is_ascii_alphanumeric() || b"-._~:@/".contains(&b);
            match next() % 3 {
                0 => spelled.push_str(&format!("%{b:02X}")),
                1 if plain => spelled.push(char::from(b)),
                1 => spelled.push_str(&format!("%{b:02x}")),
                _ if plain => spelled.push(char::from(b)),
                _ => spelled.push_str(&format!("%{b:02X}")),
            }
        }
        out.push(spelled);
    }
    out
}

/// Sends spellings of `path` to Docker directly and through the proxy (where every
/// endpoint's hook refuses, naming it), and checks that none Docker routes to `hooked`'s
/// endpoint gets past its hook. Returns how many spellings were tried.
async fn check_spellings(
    hooked: &Hooked,
    path: &str,
    seed: u64,
    docker: &std::path::Path,
    proxy: &std::path::Path,
) -> usize {
    // The oracle: Docker's answer to the plain path is recognised as routed there.
    let (status, body) = raw_request(docker, hooked.method, path, hooked.body).await;
    assert!(
        (hooked.routed)(status, &body),
        "{} {path}: Docker answered {status} {body}",
        hooked.method
    );
    // POWERSTRIP_SPELLINGS=N checks N spellings per path instead of 40 (a deeper run).
    let count = std::env::var("POWERSTRIP_SPELLINGS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let mut variants = spellings(path, count, seed);
    variants.push(path.to_owned());
    if path == "/v1.41/containers/create" {
        // The two spellings this protection was first shown to be missing for.
        variants.push("/v1.41/containers/%63reate".into());
        variants.push("/v1.41/containers%2Fcreate".into());
    }
    let (mut hooked_count, mut refused_count) = (0, 0);
    for variant in &variants {
        let direct = raw_request(docker, hooked.method, variant, hooked.body).await;
        let through = raw_request(proxy, hooked.method, variant, hooked.body).await;
        let docker_routes_here = (hooked.routed)(direct.0, &direct.1);
        let what = format!(
            "{} {variant}: Docker answered {} {}; through the proxy {} {}",
            hooked.method, direct.0, direct.1, through.0, through.1
        );
        if through.0 == 400 && through.1.contains("powerstrip: refused the request path") {
            refused_count += 1;
            continue;
        }
        if through.0 == 403 {
            assert!(
                through.1.contains(&format!("hooked: {}", hooked.name)),
                "the wrong hook ran: {what}"
            );
            // A glob such as `/*/containers/create` also matches paths Docker routes
            // nowhere (`/vX/containers/create`): a stricter answer, never another
            // endpoint's policy.
            assert!(
                docker_routes_here || routed_nowhere(direct.0, &direct.1),
                "the proxy hooked a spelling Docker routes elsewhere: {what}"
            );
            hooked_count += 1;
            continue;
        }
        assert!(
            !docker_routes_here,
            "a spelling Docker routes to a hooked endpoint got past its hook: {what}"
        );
        assert_eq!(
            through.0, direct.0,
            "a spelling no hook matches is answered as Docker answers it: {what}"
        );
    }
    assert!(
        hooked_count > 1 && refused_count > 0,
        "{path}: {hooked_count} spellings hooked, {refused_count} refused of {}",
        variants.len()
    );
    variants.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_docker_routes_to_a_hooked_endpoint_reaches_its_hook() {
    if !require_docker() {
        return;
    }
    // One refusing adapter per endpoint, naming it.
    let mut adapters = Vec::new();
    let mut config = String::from("version = 1\n[adapters]\n");
    let mut endpoints = String::new();
    for hooked in &HOOKED {
        let adapter =
            FakeAdapter::refuse(403, &format!(r#"{{"message": "hooked: {}"}}"#, hooked.name)).await;
        config.push_str(&format!("{} = {:?}\n", hooked.name, adapter.url()));
        endpoints.push_str(&format!(
            "\n[[endpoints]]\nmatch = {:?}\npre = [{:?}]\n",
            hooked.pattern, hooked.name
        ));
        adapters.push(adapter);
    }
    config.push_str(&endpoints);
    let proxy = ProxyProcess::start(Some(&config));
    let docker = std::path::Path::new(support::DOCKER_SOCKET);

    let mut tried = 0;
    let mut seed = 0x5EED;
    for hooked in &HOOKED {
        for &path in hooked.paths {
            seed += 1;
            tried += check_spellings(hooked, path, seed, docker, proxy.socket()).await;
        }
    }
    eprintln!("{tried} spellings checked against the real daemon");
    // The proxy answered every one of them and keeps serving.
    let (status, _) = raw_request(proxy.socket(), "GET", "/v1.41/version", "").await;
    assert_eq!(status, 200);
}
