//! Each example served by its own binary over HTTP: it passes the conformance checks, and
//! answers a call made exactly as the original Powerstrip (Python, Twisted) made them.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use powerstrip_testkit::conformance;

/// An example adapter binary serving on 127.0.0.1:0; killed when dropped.
struct Served {
    child: Child,
    url: String,
    /// Its state directory (its embedded store), removed when dropped.
    _state: tempfile::TempDir,
}

impl Served {
    fn start(binary: &str, sets: &[&str]) -> Served {
        let state = tempfile::tempdir().unwrap();
        let mut command = Command::new(binary);
        command
            .args(["--listen", "tcp://127.0.0.1:0", "--log", "warn"])
            .arg("--state-dir")
            .arg(state.path());
        for set in sets {
            command.args(["--set", set]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().to_owned();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "{binary} printed {line:?}"
        );
        Served {
            child,
            url,
            _state: state,
        }
    }

    fn host_port(&self) -> String {
        self.url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn examples() -> Vec<(&'static str, Served)> {
    vec![
        (
            "slowreq",
            Served::start(env!("CARGO_BIN_EXE_powerstrip-slowreq"), &["delay=10ms"]),
        ),
        (
            "logger",
            Served::start(env!("CARGO_BIN_EXE_powerstrip-logger"), &[]),
        ),
        (
            "image-policy",
            Served::start(
                env!("CARGO_BIN_EXE_powerstrip-image-policy"),
                &[r#"allow=["busybox:*"]"#],
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_example_passes_the_conformance_checks() {
    for (name, served) in examples() {
        let report = conformance::check(&served.url, &conformance::Options::default()).await;
        assert!(report.is_success(), "{name} failed conformance:\n{report}");
        assert!(
            report
                .to_string()
                .ends_with(&format!("{} passed, 0 failed", report.passed()))
        );
    }
}

/// Sends raw bytes the way the original proxy did (treq over Twisted: HTTP/1.1, a JSON
/// body with Content-Length, the keys in its order) and returns status and parsed body.
fn call_like_the_original(host_port: &str, body: &str) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(host_port).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "POST / HTTP/1.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\nHost: {host_port}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

#[test]
fn served_examples_answer_calls_made_exactly_as_the_original_proxy_made_them() {
    // The original serialised with Python's json.dumps: ", " and ": " separators.
    let create =
        r#"{\"Image\": \"busybox:local\", \"User\": \"1000\", \"Cmd\": [\"echo\", \"hi\"]}"#;
    let pre = format!(
        r#"{{"PowerstripProtocolVersion": 1, "Type": "pre-hook", "ClientRequest": {{"Method": "POST", "Request": "/v1.16/containers/create", "Body": "{create}"}}}}"#
    );
    let post = r#"{"PowerstripProtocolVersion": 1, "Type": "post-hook", "ClientRequest": {"Method": "POST", "Request": "/v1.16/containers/abc/start", "Body": null}, "ServerResponse": {"ContentType": "text/plain; charset=utf-8", "Body": "", "Code": 204}}"#;
    for (name, served) in examples() {
        let (status, answer) = call_like_the_original(&served.host_port(), &pre);
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(answer["PowerstripProtocolVersion"], 1, "{name}");
        let modified = &answer["ModifiedClientRequest"];
        assert_eq!(modified["Method"], "POST", "{name}");
        assert_eq!(modified["Request"], "/v1.16/containers/create", "{name}");
        let body: serde_json::Value =
            serde_json::from_str(modified["Body"].as_str().unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"Image": "busybox:local", "User": "1000", "Cmd": ["echo", "hi"]}),
            "{name}"
        );

        let (status, answer) = call_like_the_original(&served.host_port(), post);
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(
            answer["ModifiedServerResponse"],
            serde_json::json!({"ContentType": "text/plain; charset=utf-8", "Body": "", "Code": 204}),
            "{name}"
        );
    }
}

#[test]
fn a_served_policy_refuses_with_a_docker_style_403() {
    let served = Served::start(
        env!("CARGO_BIN_EXE_powerstrip-image-policy"),
        &[r#"allow=["busybox:*"]"#],
    );
    let call = r#"{"PowerstripProtocolVersion": 1, "Type": "pre-hook", "ClientRequest": {"Method": "POST", "Request": "/v1.41/containers/create", "Body": "{\"Image\": \"nginx\", \"User\": \"1000\"}"}}"#;
    let (status, answer) = call_like_the_original(&served.host_port(), call);
    assert_eq!(status, 403);
    assert_eq!(
        answer,
        serde_json::json!({"message": "image-policy: image \"nginx\" is not allowed here (allowed: busybox:*)"})
    );
}

#[test]
fn bad_options_stop_the_binary_with_exit_64() {
    let out = Command::new(env!("CARGO_BIN_EXE_powerstrip-slowreq"))
        .args(["--listen", "tcp://127.0.0.1:0", "--set", "delay=soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("slowreq: bad options: bad duration \"soon\""),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_powerstrip-image-policy"))
        .args(["--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--listen") && help.contains("allow_root") && help.contains("--set"),
        "{help}"
    );
}

#[tokio::test]
async fn a_served_adapter_has_a_health_endpoint_and_refuses_other_methods() {
    let served = Served::start(env!("CARGO_BIN_EXE_powerstrip-logger"), &[]);
    let client = powerstrip_testkit::TestClient::new(&format!("tcp://{}", served.host_port()));
    let health = client.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), serde_json::json!({"status": "ok"}));
    let wrong = client.request(http::Method::PUT, "/").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(
        wrong.message(),
        "PUT /: POST hook calls here, or GET /healthz"
    );
}

#[test]
fn the_served_logger_survives_sighup_and_reopens_a_rotated_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.jsonl");
    let rotated = dir.path().join("calls.jsonl.1");
    let mut served = Served::start(
        env!("CARGO_BIN_EXE_powerstrip-logger"),
        &[&format!("file={}", path.display())],
    );
    let host_port = served.host_port();
    let call = |n: u32| {
        let pre = format!(
            r#"{{"PowerstripProtocolVersion": 1, "Type": "pre-hook", "ClientRequest": {{"Method": "GET", "Request": "/v1.41/info?n={n}", "Body": null}}}}"#
        );
        let (status, answer) = call_like_the_original(&host_port, &pre);
        assert_eq!(status, 200, "{answer}");
    };
    call(1);
    // What logrotate does: rename, then SIGHUP.
    std::fs::rename(&path, &rotated).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The next record after the signal is handled goes to a new file at the old path.
    let mut reopened = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            served.child.try_wait().unwrap().is_none(),
            "SIGHUP killed the adapter"
        );
        call(2);
        if path.exists() {
            reopened = true;
            break;
        }
    }
    assert!(reopened, "no new file at {} after SIGHUP", path.display());
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&path).unwrap();
    assert!(old.contains("info?n=1"), "{old}");
    assert_eq!(new.lines().count(), 1, "{new}");
    assert!(new.contains("info?n=2"), "{new}");
}
