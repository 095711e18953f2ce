//! Support for the end-to-end tests: the real Docker daemon, the real `powerstrip` binary,
//! and the real docker CLI.
//!
//! Tests that need a component call [`require_docker`]: without a daemon they skip with a
//! note, except under `CI=true`, where a missing component fails the test.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The daemon the end-to-end tests use (the one `scripts/ensure-docker` starts).
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The base image `scripts/ensure-docker` builds from busybox-static.
pub const IMAGE: &str = "busybox:local";

/// True when this run must not skip anything.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Checks that the real Docker daemon answers and has the base image. Returns false (the
/// caller returns early) when it does not, or panics under `CI=true`.
pub fn require_docker() -> bool {
    let problem = match Command::new("docker")
        .args([
            "-H",
            &format!("unix://{DOCKER_SOCKET}"),
            "image",
            "inspect",
            "--format",
            "ok",
            IMAGE,
        ])
        .output()
    {
        Err(e) => Some(format!("cannot run the docker CLI: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "no Docker daemon with {IMAGE} at {DOCKER_SOCKET}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    };
    match problem {
        None => true,
        Some(problem) if in_ci() => {
            panic!(
                "{problem} (CI=true: run scripts/ensure-docker first; missing components fail here)"
            )
        }
        Some(problem) => {
            eprintln!("SKIPPED: {problem}; run scripts/ensure-docker (as root) to run this test");
            false
        }
    }
}

/// The `powerstrip` binary under test, run as its own process.
pub struct ProxyProcess {
    child: Child,
    admin: String,
    socket: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl ProxyProcess {
    /// Starts `powerstrip serve` in front of the real daemon, with this TOML configuration
    /// (none: pass-through only), and waits until its socket accepts connections.
    pub fn start(config: Option<&str>) -> ProxyProcess {
        Self::start_logging(config, "warn")
    }

    /// Like [`ProxyProcess::start`], logging at `filter` (`RUST_LOG`) into [`Self::log`].
    pub fn start_logging(config: Option<&str>, filter: &str) -> ProxyProcess {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("powerstrip.sock");
        let log = dir.path().join("powerstrip.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_powerstrip"));
        command
            .args(["serve", "--listen", &format!("unix://{}", socket.display())])
            .args(["--docker", &format!("unix://{DOCKER_SOCKET}")])
            .args(["--admin", "tcp://127.0.0.1:0"])
            .env("RUST_LOG", filter)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(text) = config {
            let file = dir.path().join("adapters.toml");
            std::fs::write(&file, text).unwrap();
            command.arg("--config").arg(file);
        }
        let mut child = command.spawn().unwrap();
        // The last line it prints names the admin listener.
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        let admin = loop {
            match lines.next() {
                Some(Ok(line)) => match line.strip_prefix("# metrics: ") {
                    Some(url) => break url.trim_end_matches("/metrics").to_owned(),
                    None => continue,
                },
                _ => panic!(
                    "powerstrip did not start:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        };
        let proxy = ProxyProcess {
            child,
            admin,
            socket,
            log,
            dir,
        };
        proxy.wait_ready();
        proxy
    }

    /// The admin listener's base URL, `http://127.0.0.1:PORT`.
    pub fn admin_url(&self) -> &str {
        &self.admin
    }

    /// Sends a signal (`HUP`, `TERM`) to the proxy.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "powerstrip did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `DOCKER_HOST` for this proxy.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// What the proxy logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The proxy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of `/proc/PID/status` in KiB: `VmRSS` (resident now), `VmHWM` (peak).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }

    /// A scratch directory that lives as long as the proxy.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- powerstrip log ---\n{}", self.log());
        }
    }
}

/// What a docker CLI invocation did.
#[derive(Clone, PartialEq, Eq)]
pub struct Run {
    /// The exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.out(),
            self.stderr
        )
    }
}

impl Run {
    /// Standard output as text.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs the docker CLI against `host`, feeding `stdin` if given.
pub async fn docker(host: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
    run_command("docker", args, host, stdin).await
}

/// Runs any program with `DOCKER_HOST` set (e.g. `script` giving docker a pty, or `sh -c`
/// for a pipeline).
pub async fn run_command(program: &str, args: &[&str], host: &str, stdin: Option<&[u8]>) -> Run {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env("DOCKER_HOST", host)
        .env("DOCKER_CLI_HINTS", "false")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).await.unwrap();
        drop(pipe);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish in 120 s"))
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The real daemon's address, for calls that must bypass any proxy.
pub fn direct() -> String {
    format!("unix://{DOCKER_SOCKET}")
}
