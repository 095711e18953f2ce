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
        let mut options = Self::options().log(filter);
        if let Some(text) = config {
            options = options.config(text);
        }
        options.start().process
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

    /// `powerstrip state ls PREFIX` on this proxy's embedded store (in its own directory,
    /// unless it was started with `--state-dir`): what its adapters keep.
    pub fn state_ls(&self, prefix: &str) -> String {
        state_ls(&self.dir.path().join("state"), prefix)
    }

    /// Kills the proxy with SIGKILL (no clean-up of its own) and reaps it.
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

// ---------------------------------------------------------------------------------------
// The binary in front of any Docker (a FakeDocker too), on any listeners, with any flags.

/// How to start the `powerstrip` binary when [`ProxyProcess::start`]'s defaults (the real
/// daemon, one unix socket) do not fit: a fake Docker, TCP or TLS listeners, extra flags.
/// Built with [`ProxyProcess::options`], started with [`ProxyOptions::start`].
pub struct ProxyOptions {
    /// `--docker`.
    docker: String,
    /// The configuration written to `adapters.toml` in the proxy's directory, if any.
    config: Option<String>,
    /// `--listen` addresses; empty means one unix socket in the proxy's directory.
    listen: Vec<String>,
    /// Further flags, as given.
    args: Vec<String>,
    /// `RUST_LOG`.
    filter: String,
    /// The network namespace to run it in (another "host"), if any.
    netns: Option<PathBuf>,
}

/// A binary started from [`ProxyOptions`]: the process, and the `DOCKER_HOST` lines it
/// printed (one per listener, with the real port of `tcp://...:0`).
pub struct StartedProxy {
    /// The running binary (killed when dropped).
    pub process: ProxyProcess,
    /// What it printed after `export DOCKER_HOST=`, in listener order.
    pub hosts: Vec<String>,
}

impl std::ops::Deref for StartedProxy {
    type Target = ProxyProcess;
    fn deref(&self) -> &ProxyProcess {
        &self.process
    }
}

impl std::ops::DerefMut for StartedProxy {
    fn deref_mut(&mut self) -> &mut ProxyProcess {
        &mut self.process
    }
}

impl ProxyProcess {
    /// Options for a binary in front of the real daemon, on a unix socket, logging at
    /// `warn`, with its admin listener on `127.0.0.1:0`.
    pub fn options() -> ProxyOptions {
        ProxyOptions {
            docker: direct(),
            config: None,
            listen: Vec::new(),
            args: Vec::new(),
            filter: "warn".into(),
            netns: None,
        }
    }

    /// The configuration file it was started with (`adapters.toml` in its directory):
    /// rewrite it to test reloads.
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("adapters.toml")
    }

    /// The unix socket it listens on (when started without explicit `--listen`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Waits up to `within` for the process to exit; its status, or `None` if it still
    /// runs.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `GET path` on the admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub async fn admin_get(&self, path: &str) -> powerstrip_testkit::TestResponse {
        let address = self.admin.replacen("http://", "tcp://", 1);
        powerstrip_testkit::TestClient::new(&address)
            .get(path)
            .await
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self.admin_get("/metrics").await;
        assert_eq!(response.status, 200, "{}", response.text());
        response.text()
    }
}

impl ProxyOptions {
    /// Forwards to this Docker (`unix:///...` or `tcp://...`), e.g. a FakeDocker's address.
    pub fn docker(mut self, address: &str) -> Self {
        self.docker = address.to_owned();
        self
    }

    /// Runs this TOML configuration (written to [`ProxyProcess::config_file`]).
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }

    /// Listens here instead of the default unix socket (repeatable).
    pub fn listen(mut self, address: &str) -> Self {
        self.listen.push(address.to_owned());
        self
    }

    /// Adds flags, e.g. `["--grace", "1s"]`.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Logs at `filter` (`RUST_LOG`) into [`ProxyProcess::log`].
    pub fn log(mut self, filter: &str) -> Self {
        self.filter = filter.to_owned();
        self
    }

    /// Runs it inside the network namespace at `path` (`nsenter --net=`), as another host.
    pub fn netns(mut self, path: &Path) -> Self {
        self.netns = Some(path.to_owned());
        self
    }

    /// Starts the binary and waits until it printed its listeners (and, when it listens on
    /// its default unix socket, until that socket accepts connections).
    pub fn start(self) -> StartedProxy {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("powerstrip.sock");
        let log = dir.path().join("powerstrip.log");
        let listen = if self.listen.is_empty() {
            vec![format!("unix://{}", socket.display())]
        } else {
            self.listen.clone()
        };
        let mut command = match &self.netns {
            // nsenter enters the namespace and execs: the child's pid is the proxy's.
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--net={}", netns.display()))
                    .arg(env!("CARGO_BIN_EXE_powerstrip"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_powerstrip")),
        };
        command.arg("serve");
        for address in &listen {
            command.args(["--listen", address]);
        }
        command
            .args(["--docker", &self.docker])
            .args(["--admin", "tcp://127.0.0.1:0"])
            .args(&self.args)
            .env("RUST_LOG", &self.filter)
            .env("NO_COLOR", "1")
            // Its store, node id and adapters' files: in its own directory.
            .env("POWERSTRIP_STATE_DIR", dir.path().join("state"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(text) = &self.config {
            let file = dir.path().join("adapters.toml");
            std::fs::write(&file, text).unwrap();
            command.arg("--config").arg(file);
        }
        let mut child = command.spawn().unwrap();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        let mut hosts = Vec::new();
        let admin = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(host) = line.strip_prefix("export DOCKER_HOST=") {
                        hosts.push(host.to_owned());
                    } else if let Some(url) = line.strip_prefix("# metrics: ") {
                        break url.trim_end_matches("/metrics").to_owned();
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "powerstrip did not start:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                }
            }
        };
        let process = ProxyProcess {
            child,
            admin,
            socket,
            log,
            dir,
        };
        if self.listen.is_empty() {
            process.wait_ready();
        }
        StartedProxy { process, hosts }
    }
}

/// `powerstrip state ls PREFIX` on the embedded store of state directory `state_dir`.
pub fn state_ls(state_dir: &Path, prefix: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_powerstrip"))
        .args(["state", "ls", prefix, "--state-dir"])
        .arg(state_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "powerstrip state ls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of one series in Prometheus text (`name{labels}` exactly as exposed), or
/// `None` when the series is absent.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

// ---- Helpers of the fault-matrix and soak tests (tests/faults.rs, tests/soak.rs) ----

impl ProxyProcess {
    /// Replaces the configuration file atomically (write, then rename), so that a reload
    /// never reads it half-written.
    pub fn write_config(&self, text: &str) {
        let tmp = self.dir.path().join("adapters.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config_file()).unwrap();
    }

    /// The proxy's open file descriptors (entries of `/proc/PID/fd`).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// True while the process runs (not exited, not a zombie).
    pub fn is_running(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|stat| {
                // "PID (comm) STATE ...": the state follows the last ')'.
                let (_, rest) = stat.rsplit_once(')')?;
                rest.split_whitespace().next().map(|s| s != "Z" && s != "X")
            })
            .unwrap_or(false)
    }
}

/// Containers a test started on the main daemon, all carrying one label; removed
/// (directly, not through any proxy) when the guard drops, pass or fail.
pub struct Containers {
    label: String,
}

impl Containers {
    /// A guard for a fresh label `powerstrip-test=<what>-<pid>-<nanos>`.
    pub fn new(what: &str) -> Containers {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        Containers {
            label: format!("powerstrip-test={what}-{}-{nanos}", std::process::id()),
        }
    }

    /// `key=value`, to put on every container the test creates (`Labels` in a create body,
    /// `--label` on the CLI).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The label as a create body's `Labels` object.
    pub fn labels_json(&self) -> serde_json::Value {
        let (key, value) = self.label.split_once('=').unwrap();
        serde_json::json!({ key: value })
    }

    /// `docker run -d --label ... ARGS` directly on the main daemon; returns the id.
    pub async fn run_detached(&self, args: &[&str]) -> String {
        let mut all = vec!["run", "-d", "--label", &self.label];
        all.extend_from_slice(args);
        let run = docker(&direct(), &all, None).await;
        assert_eq!(run.code, 0, "docker run -d {args:?} failed: {}", run.stderr);
        run.out().trim().to_owned()
    }

    /// How many containers with the label exist now.
    pub fn count(&self) -> usize {
        self.ids().len()
    }

    fn ids(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args(["-H", &direct(), "ps", "-aq", "--filter"])
            .arg(format!("label={}", self.label))
            .output();
        match out {
            Ok(out) => String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let ids = self.ids();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["-H", &direct(), "rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

/// A second, independent Docker daemon (another "host"), for tests that must stop and
/// restart a daemon without disturbing the one every other test uses.
///
/// It runs in a network namespace of its own (`unshare --net`): with `--bridge=none` a
/// dockerd deletes any `docker0` it sees — in the host's namespace, the main daemon's.
/// It has its own `--data-root`, `--exec-root`, `--pidfile`, socket, and an empty
/// `--config-file` (nothing of `/etc/docker/daemon.json` applies); no bridge, no iptables
/// or masquerading (containers use `--network none`). It runs its own containerd; should a
/// system containerd answer at `/run/containerd/containerd.sock`, dockerd would use that
/// one instead, so it also gets containerd namespaces of its own. `busybox:local` is
/// copied into it from the main daemon.
pub struct SecondDocker {
    dir: TempDir,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl SecondDocker {
    /// Starts it and copies `busybox:local` in. Returns `None` (the caller skips) when it
    /// cannot start, or panics with dockerd's log under `CI=true`.
    pub fn start() -> Option<SecondDocker> {
        match Self::try_start() {
            Ok(docker) => Some(docker),
            Err(problem) if in_ci() => panic!(
                "the second Docker daemon did not start (CI=true: this test needs it): {problem}"
            ),
            Err(problem) => {
                eprintln!("SKIPPED: the second Docker daemon did not start: {problem}");
                None
            }
        }
    }

    fn try_start() -> Result<SecondDocker, String> {
        // Short: containerd's socket lives under the exec root (unix paths max 108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("ps2d")
            .tempdir_in("/tmp")
            .map_err(|e| format!("temporary directory: {e}"))?;
        let root = dir.path().display().to_string();
        std::fs::write(dir.path().join("daemon.json"), "{}")
            .map_err(|e| format!("daemon.json: {e}"))?;
        let namespace = format!(
            "powerstrip-{}",
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let args = vec![
            format!("--data-root={root}/data"),
            format!("--exec-root={root}/exec"),
            format!("--pidfile={root}/docker.pid"),
            format!("--config-file={root}/daemon.json"),
            format!("--host=unix://{root}/docker.sock"),
            format!("--containerd-namespace={namespace}"),
            format!("--containerd-plugins-namespace={namespace}-plugins"),
            "--bridge=none".into(),
            "--iptables=false".into(),
            "--ip6tables=false".into(),
            "--ip-masq=false".into(),
        ];
        let log = dir.path().join("dockerd.log");
        let mut docker = SecondDocker {
            dir,
            args,
            child: None,
            log,
        };
        docker.spawn()?;
        let copy = Command::new("sh")
            .args([
                "-c",
                "docker -H \"$MAIN\" save busybox:local | docker -H \"$SECOND\" load",
            ])
            .env("MAIN", direct())
            .env("SECOND", docker.host())
            .output()
            .map_err(|e| format!("copying {IMAGE}: {e}"))?;
        if !copy.status.success() {
            return Err(format!(
                "copying {IMAGE} from the main daemon: {}",
                String::from_utf8_lossy(&copy.stderr)
            ));
        }
        Ok(docker)
    }

    /// Its socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// `unix:///.../docker.sock`, for `-H` and `--docker`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// What dockerd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts dockerd (again, with the same flags) and waits until it answers `/_ping`.
    pub fn restart(&mut self) {
        if let Err(problem) = self.spawn() {
            panic!("the second Docker daemon did not come back: {problem}");
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "the second daemon is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("dockerd log: {e}"))?;
        // unshare execs dockerd: the child's pid is dockerd's.
        let mut child = Command::new("unshare")
            .args(["--net", "dockerd"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run unshare --net dockerd: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "dockerd exited ({status}); its log:\n{}",
                    tail(&self.log(), 30)
                ));
            }
            if ping_unix(&self.socket()) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "dockerd did not answer within 60 s; its log:\n{}",
                    tail(&self.log(), 30)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops dockerd with SIGTERM and waits until it has exited (SIGKILL after 30 s);
    /// returns how long that took.
    pub fn stop(&mut self) -> Duration {
        let started = Instant::now();
        let Some(mut child) = self.child.take() else {
            return Duration::ZERO;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(child.try_wait(), Ok(Some(_))) {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                // A killed dockerd leaves its containerd behind.
                let pidfile = self.dir.path().join("exec/containerd/containerd.pid");
                if let Ok(pid) = std::fs::read_to_string(pidfile) {
                    let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }
}

impl Drop for SecondDocker {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Containers left running would make dockerd wait for them at shutdown.
            let _ = Command::new("sh")
                .args(["-c", "ids=$(docker -H \"$H\" ps -aq); [ -z \"$ids\" ] || docker -H \"$H\" rm -f $ids"])
                .env("H", self.host())
                .output();
            self.stop();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- second dockerd log (last lines) ---\n{}",
                tail(&self.log(), 40)
            );
        }
        // A dockerd stopped in the middle of a create leaves that container's layer
        // mounted under its data root; unmount (deepest first) so the directory can go.
        let root = self.dir.path().display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|point| point.starts_with(&format!("{root}/")))
            .map(str::to_owned)
            .collect();
        mounts.sort_unstable_by(|a, b| b.cmp(a));
        for point in mounts {
            let _ = Command::new("umount").args(["-l", &point]).status();
        }
    }
}

/// True when an HTTP server on this unix socket answers `GET /_ping` with 200.
pub fn ping_unix(path: &Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(path) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200")
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `check` every 20 ms until it returns `Some`, failing with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
