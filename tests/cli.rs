//! The `powerstrip` command line as an operator uses it: `check` on good and bad files,
//! `serve` configured by flags or environment, refusing bad configuration before it binds
//! anything, and stopping cleanly on SIGTERM.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use powerstrip_testkit::TestClient;

/// The binary, without an admin listener unless a test asks for one (tests run in
/// parallel; the default admin port would collide).
fn powerstrip() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_powerstrip"));
    command
        .env("POWERSTRIP_ADMIN", "none")
        .env("POWERSTRIP_STATE_DIR", state_dir());
    command
}

/// A state directory of its own for each `serve` (an embedded store is one process's
/// file), under cargo's scratch directory for tests.
fn state_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-state-{}-{n}", std::process::id()))
}

fn check(dir: &Path, name: &str, text: &str) -> Output {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    powerstrip()
        .current_dir(dir)
        .args(["check", name])
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_example_configurations_are_valid() {
    // The main example, and the adapters' that operators copy.
    for (file, adapters) in [
        ("adapters.toml", 3),
        ("adapters/net-ovs/adapters.toml", 1),
        ("adapters/volumes/adapters.toml", 1),
        ("adapters/placement/adapters.toml", 1),
        ("docker/adapters.toml", 3),
    ] {
        let out = powerstrip()
            .arg("check")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
            .output()
            .unwrap();
        assert!(out.status.success(), "{file}: {}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!(", {adapters} adapter(s)")),
            "{file}: {}",
            stdout(&out)
        );
    }
}

#[test]
fn check_prints_each_endpoint_with_its_resolved_chains() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(
        dir.path(),
        "adapters.toml",
        r#"version = 1
[adapters]
flocker = "http://127.0.0.1:9000/flocker-adapter"
weave = { url = "http://127.0.0.1:9001/extension", timeout = "2s", failure = "ignore" }

[[endpoints]]
match = "POST /*/containers/create"
pre = ["flocker", "weave"]

[[endpoints]]
match = "POST /*/containers/*/start"
post = ["weave"]
"#,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "adapters.toml: ok, 2 endpoint(s), 2 adapter(s)
store: embedded /var/lib/powerstrip/state/store.redb

POST /*/containers/create
  pre:  flocker -> weave
  post: (none)

POST /*/containers/*/start
  pre:  (none)
  post: weave

adapters:
  flocker          http://127.0.0.1:9000/flocker-adapter  (timeout 10s, failure fail)
  weave            http://127.0.0.1:9001/extension  (timeout 2s, failure ignore)
"
    );
}

#[test]
fn check_says_which_post_hooks_only_ever_see_error_answers() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(
        dir.path(),
        "adapters.toml",
        r#"version = 1
[adapters]
audit = "http://127.0.0.1:9000/"

[[endpoints]]
match = "POST /*/build"
pre = ["audit"]
post = ["audit"]

[[endpoints]]
match = "* /*/containers/*/logs"
post = ["audit"]

[[endpoints]]
match = "POST /*/containers/create"
post = ["audit"]

[[endpoints]]
match = "GET /*/events"
pre = ["audit"]
"#,
    );
    assert!(
        out.status.success(),
        "a note is not an error: {}",
        stderr(&out)
    );
    let text = stdout(&out);
    let notes: Vec<&str> = text.lines().filter(|l| l.starts_with("  note:")).collect();
    assert_eq!(
        notes,
        [
            "  note: post-hooks audit run only on Docker's error answers here: Docker streams the answer of every endpoint this pattern hooks (POST /build), and streamed answers skip post-hooks",
            "  note: post-hooks audit run only on Docker's error answers here: Docker streams the answer of every endpoint this pattern hooks (GET /containers/{id}/logs), and streamed answers skip post-hooks",
        ],
        "{text}"
    );
}

#[test]
fn check_reads_the_original_yaml_by_content_or_extension() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"version: 1
endpoints:
  "POST /*/containers/create":
    pre: [flocker, weave]
  "POST /*/containers/*/start":
    post: [weave]
adapters:
  weave: http://weave/extension
  flocker: http://flocker/flocker-adapter
"#;
    for name in ["adapters.yml", "powerstrip-config"] {
        let out = check(dir.path(), name, yaml);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains("POST /*/containers/create\n  pre:  flocker -> weave\n"),
            "{text}"
        );
        assert!(
            text.contains("POST /*/containers/*/start\n  pre:  (none)\n  post: weave\n"),
            "{text}"
        );
    }
}

#[test]
fn check_names_file_line_and_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown.toml",
            "[[endpoints]]\nmatch = \"* *\"\npre = []\nbogus = 1\n",
            "unknown.toml:4: unknown key \"bogus\" in endpoint \"* *\"",
        ),
        (
            "undefined.toml",
            "[adapters]\na = \"http://127.0.0.1:1/\"\n\n[[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"a\", \"weave\"]\n",
            "undefined.toml:6: endpoint \"POST /*/containers/create\" uses adapter \"weave\" in its pre chain, but no adapter \"weave\" is defined",
        ),
        (
            "glob.toml",
            "[[endpoints]]\nmatch = \"POST /v[12*/containers/create\"\npre = []\n",
            "glob.toml:2: endpoint pattern \"POST /v[12*/containers/create\" is not a valid glob",
        ),
        (
            "url.toml",
            "[adapters]\nweave = \"htp://weave/extension\"\n",
            "url.toml:2: adapter \"weave\": bad URL \"htp://weave/extension\"",
        ),
        (
            "empty.yml",
            "endpoints:\n  \"POST /*/containers/create\": {}\nadapters: {}\n",
            "empty.yml:2: endpoint \"POST /*/containers/create\" has neither pre nor post",
        ),
        (
            "builtin.toml",
            "[adapters]\np = { builtin = \"no-such-builtin\" }\n",
            "builtin.toml:2: adapter \"p\": unknown builtin \"no-such-builtin\"",
        ),
    ];
    for (name, text, expected) in cases {
        let out = check(dir.path(), name, text);
        assert_eq!(out.status.code(), Some(64), "{name}: {}", stdout(&out));
        assert!(
            stderr(&out).starts_with(expected),
            "{name}: expected {expected:?}, got:\n{}",
            stderr(&out)
        );
    }
}

#[test]
fn check_reports_every_error_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(
        dir.path(),
        "many.toml",
        "[adapters]\nweave = \"ftp://x/\"\n[[endpoints]]\nmatch = \"POST\"\npre = [\"nope\"]\n",
    );
    assert_eq!(out.status.code(), Some(64));
    let errors: Vec<String> = stderr(&out).lines().map(str::to_owned).collect();
    assert!(errors.len() >= 3, "{errors:?}");
    assert!(
        errors.iter().all(|e| e.starts_with("many.toml:")),
        "{errors:?}"
    );
}

#[test]
fn help_explains_every_flag_and_its_environment_variable() {
    let out = powerstrip().args(["serve", "--help"]).output().unwrap();
    let help = stdout(&out);
    for needle in [
        "--listen",
        "POWERSTRIP_LISTEN",
        "--docker",
        "POWERSTRIP_DOCKER",
        "--config",
        "POWERSTRIP_CONFIG",
        "unix:///var/run/docker.sock",
    ] {
        assert!(
            help.contains(needle),
            "serve --help lacks {needle}:\n{help}"
        );
    }
}

#[test]
fn serve_refuses_a_bad_configuration_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[adapters]\nx = 3\n").unwrap();
    let socket = dir.path().join("p.sock");
    let out = powerstrip()
        .current_dir(dir.path())
        .args(["serve", "--config", "bad.toml", "--listen"])
        .arg(format!("unix://{}", socket.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("bad.toml:2: adapter \"x\""),
        "{}",
        stderr(&out)
    );
    assert!(
        !socket.exists(),
        "nothing may be bound for a bad configuration"
    );
}

#[tokio::test]
async fn serve_takes_its_settings_from_the_environment_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("p.sock");
    let absent_docker = dir.path().join("no-docker.sock");
    let mut child = powerstrip()
        .arg("serve")
        .env(
            "POWERSTRIP_LISTEN",
            format!("unix://{},tcp://127.0.0.1:0", socket.display()),
        )
        .env(
            "POWERSTRIP_DOCKER",
            format!("unix://{}", absent_docker.display()),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // It prints the DOCKER_HOST line for each listener, with the real TCP port.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let unix_line = lines.next().unwrap().unwrap();
    let tcp_line = lines.next().unwrap().unwrap();
    assert_eq!(
        unix_line,
        format!("export DOCKER_HOST=unix://{}", socket.display())
    );
    let tcp = tcp_line
        .strip_prefix("export DOCKER_HOST=")
        .unwrap()
        .to_owned();
    assert!(
        tcp.starts_with("tcp://127.0.0.1:") && !tcp.ends_with(":0"),
        "{tcp}"
    );

    // Both listeners answer; Docker is absent, which the client is told in Docker's words.
    for address in [format!("unix://{}", socket.display()), tcp] {
        let r = TestClient::new(&address).get("/v1.41/version").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            r.message(),
            format!(
                "powerstrip: cannot reach Docker at unix://{}",
                absent_docker.display()
            )
        );
    }

    // SIGTERM: a clean exit that removes the socket it created.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "powerstrip did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}

#[test]
fn a_file_that_is_not_a_socket_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "keep me").unwrap();
    let out = powerstrip()
        .args([
            "serve",
            "--listen",
            &format!("unix://{}", precious.display()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("exists and is not a socket"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
}

#[tokio::test]
async fn a_live_socket_is_not_stolen_but_a_stale_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("p.sock");
    // A stale file left by a crash: replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let mut first = powerstrip()
        .args(["serve", "--listen", &format!("unix://{}", socket.display())])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    assert!(
        lines
            .next()
            .unwrap()
            .unwrap()
            .starts_with("export DOCKER_HOST=")
    );
    // A live one: refused.
    let second = powerstrip()
        .args(["serve", "--listen", &format!("unix://{}", socket.display())])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("is in use by a running server"),
        "{}",
        stderr(&second)
    );
    let _ = first.kill();
    let _ = first.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_show_one_span_per_request_with_patterns_adapters_and_status() {
    use powerstrip_testkit::{FakeAdapter, FakeDocker, Responder};
    let docker = FakeDocker::builder()
        .route(
            "POST",
            "/*/containers/create",
            Responder::json(201, serde_json::json!({"Id": "abc"})),
        )
        .start_unix()
        .await;
    let null = FakeAdapter::echo().await;
    let refuser = FakeAdapter::refuse(403, "not this image").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("adapters.toml");
    std::fs::write(
        &config,
        format!(
            "[adapters]\nnull = {:?}\nno = {:?}\n[[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"null\"]\npost = [\"null\"]\n[[endpoints]]\nmatch = \"DELETE /*/containers/*\"\npre = [\"no\"]\n",
            null.url(),
            refuser.url()
        ),
    )
    .unwrap();
    let socket = dir.path().join("p.sock");
    let log = dir.path().join("log");
    let mut child = powerstrip()
        .args(["serve", "--listen", &format!("unix://{}", socket.display())])
        .args(["--docker", &docker.address()])
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines
            .next()
            .unwrap()
            .unwrap()
            .starts_with("export DOCKER_HOST=")
    );
    let client = TestClient::new(&format!("unix://{}", socket.display()));
    let created = client
        .post_json("/v1.41/containers/create", &serde_json::json!({}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let refused = client
        .request(http::Method::DELETE, "/v1.41/containers/abc")
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let create: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("path=/v1.41/containers/create"))
        .collect();
    assert!(
        create.iter().any(|l| l.contains("method=POST")
            && l.contains("patterns=POST /*/containers/create")
            && l.contains("adapter=null")
            && l.contains("hook=pre-hook")
            && l.contains("elapsed_ms=")
            && l.contains("outcome=\"ok\"")),
        "{text}"
    );
    assert!(
        create
            .iter()
            .any(|l| l.contains("hook=post-hook") && l.contains("adapter=null")),
        "{text}"
    );
    assert!(
        create
            .iter()
            .any(|l| l.contains("status=201") && l.contains("done")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("method=DELETE")
            && l.contains("adapter=no")
            && l.contains("outcome=\"refused\"")
            && l.contains("not this image")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("method=DELETE") && l.contains("status=403")),
        "{text}"
    );
}
