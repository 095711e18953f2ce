//! A node's facts: a flat map of dotted names to strings, which constraints such as
//! `constraint:architecture==x86_64` or `constraint:system_overload_10min==/[0-2][0-5]/`
//! are evaluated against.
//!
//! A [`Gatherer`] collects them from three kinds of source, off the request path (the
//! adapter calls [`Gatherer::refresh`] on its `refresh` interval and publishes the result):
//!
//! 1. **Built-in facts** that Facter lacks, read from `/proc`, `/etc/os-release` and the
//!    Docker daemon ([`DockerInfo`]); the table below.
//! 2. **Facter**: `facter --json --show-legacy --no-color`, one call per refresh (about
//!    0.4–0.7 s on a 2-core Debian 12 VM), killed after [`FactsOptions::facter_timeout`]
//!    (30 s by default). `--show-legacy` adds Facter's flat legacy names (`architecture`,
//!    `hardwaremodel`, `processorcount`, `is_virtual`, ...) beside the structured ones
//!    (`os.architecture`, `processors.count`, `memory.system.available_bytes`). Facter
//!    reads its own default `facts.d` directories as it always does; those facts arrive
//!    with its output. A Facter that exits non-zero but prints a JSON object (Facter 4.3
//!    does when one of its resolvers fails, e.g. `virtual` when `/proc/1/environ` cannot be
//!    read) is used, and the exit logged once.
//! 3. **External facts** from the directories in [`FactsOptions::external_facts`], in
//!    Facter's `facts.d` convention, read by the gatherer itself (not passed to Facter):
//!    - `*.txt`: `key=value` lines; the key runs to the first `=`; lines without a `=`,
//!      with an empty key or an empty value are ignored (comments included), as Facter
//!      does. Unlike Facter, keys and values are trimmed.
//!    - `*.json`: one JSON object; each member is a fact, structured values included.
//!    - `*.yaml` and `*.yml`: one YAML mapping, likewise. Facter 4.3 reads only `.yaml` and
//!      silently ignores `.yml`; this reads both. Plain (unquoted) scalars `true`, `yes`,
//!      `on` / `false`, `no`, `off` (any case) are booleans and become `true` / `false`, and
//!      `~`, `null` or nothing are absent, as Facter's YAML 1.1 loader reads them; every
//!      other scalar is kept as written (Facter would turn `0x1F` into `31`; this keeps
//!      `0x1F`). Anchors, aliases and tags are not supported (the file is refused).
//!    - any other regular file with an execute bit: run (no arguments, stdin from
//!      `/dev/null`), killed after [`FactsOptions::executable_timeout`] (10 s by default).
//!      Its standard output is read as a YAML (or JSON) mapping if it is one, else as
//!      `key=value` lines. Output that is neither (a line that is not blank, not a `#`
//!      comment and has no `=`), that is not UTF-8 or larger than 4 MiB, or a non-zero
//!      exit status, is logged and the file skipped (its last good facts kept).
//!    - anything else (hidden files, directories, other extensions) is skipped.
//!
//!    Fact names from external files are lowercased (Facter canonicalises them so); the
//!    keys inside structured values are kept as written.
//!
//! ## Names
//! Structured values are flattened to dotted names: `{"os": {"release": {"major": "12"}}}`
//! gives `os.release.major` = `12`; array elements are numbered, `foo.0`, `foo.1`, ... —
//! the same paths `facter os.release.major` and `facter foo.1` take. Strings are kept,
//! numbers are written as JSON writes them (`1.5`, `24025313280`), booleans as `true` /
//! `false`; `null` is absent; an empty object or array is `{}` or `[]` (so
//! `hypervisors.kvm` = `{}` still says that the kvm hypervisor was detected). Keys are
//! joined as they are: a key that itself holds a `.` (a VLAN interface `eth0.100`, a
//! mount point) makes a name that reads ambiguously, as it does in Facter's own queries.
//!
//! ## Built-in facts
//! Their names are chosen not to collide with any Facter fact (core or legacy).
//!
//! | name | meaning | source |
//! |---|---|---|
//! | `system_overload_1min` | 1-minute load average ÷ CPU count × 100, rounded to an integer (`"123"`) | `/proc/loadavg`, `/proc/stat` |
//! | `system_overload_5min` | the same over 5 minutes | `/proc/loadavg`, `/proc/stat` |
//! | `system_overload_10min` | the same over 10 minutes: the mean of the 1-minute load sampled at each refresh over the last 10 minutes ([`LoadWindow`]); until the gatherer has sampled for 10 minutes, the kernel's 5-minute average (an exponential average whose weights have a mean age of 5 minutes, as a uniform 10-minute window's do) | `/proc/loadavg`, `/proc/stat` |
//! | `node.cpus` | online CPUs | the `cpuN` lines of `/proc/stat` |
//! | `node.memory_available_bytes` | memory available for new work, bytes | `MemAvailable` in `/proc/meminfo` |
//! | `node.name` | the node's name | Docker's `Name`; without Docker, `/proc/sys/kernel/hostname` |
//! | `node.kernelversion` | the kernel's release (`6.1.0-37-cloud-amd64`) | Docker's `KernelVersion`; without Docker, `/proc/sys/kernel/osrelease` |
//! | `node.operatingsystem` | the operating system (`Debian GNU/Linux 12 (bookworm)`) | Docker's `OperatingSystem`; without Docker, `PRETTY_NAME` in `/etc/os-release` |
//! | `engine.storagedriver` | Docker's storage driver (`overlay2`) | Docker's `Driver` |
//! | `engine.labels.<key>` | each Docker engine label (`dockerd --label key=value`) | Docker's `Labels` |
//!
//! (Swarm classic's standard constraints `node`, `kernelversion`, `operatingsystem`,
//! `storagedriver` name the same things; `kernelversion` and `operatingsystem` are Facter
//! facts too, with other values, hence the prefixes.)
//!
//! ## Precedence
//! built-in < Facter < external facts. A fact is a top-level name with its whole value: a
//! source of higher precedence that has a fact of the same name replaces the lower one
//! entirely, with every dotted name under it (an external `os.json` holding `{"os":
//! {"x": 1}}` leaves `os.x` and no `os.name`), as Facter lets external facts override its
//! core facts. Among external facts, Facter's own order is kept: the first directory in
//! the list wins over later ones, and within a directory the file whose name sorts last
//! wins.
//!
//! ## Failures
//! Every source fails on its own: a failure (Facter missing, timing out or printing
//! garbage; an external file that cannot be read or parsed; an executable that fails, hangs
//! or prints garbage; an unreadable `/proc` file; Docker not answering) is logged with
//! `warn!` once per source and kind of failure — not at every refresh; a recovery is logged
//! with `info!` and re-arms the warning — and the source's last good values are kept. A
//! fact never obtained is simply absent. Nothing waits without a bound: every process runs
//! under a timeout with `kill_on_drop`, and Docker's `info` has one too.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Display;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use marked_yaml::types::Node as YamlNode;
use powerstrip_adapter::context::bollard;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tracing::{debug, info, warn};

/// A node's facts: dotted names to values.
pub type Facts = BTreeMap<String, String>;

/// How often the adapter refreshes the facts by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
/// How long Facter may run by default.
pub const DEFAULT_FACTER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an external facts executable may run by default.
pub const DEFAULT_EXECUTABLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The window of `system_overload_10min`.
pub const OVERLOAD_WINDOW: Duration = Duration::from_secs(600);
/// How long Docker's `info` may take.
pub const DOCKER_INFO_TIMEOUT: Duration = Duration::from_secs(10);
/// The most standard output read from Facter or an executable; more is refused.
const OUTPUT_LIMIT: usize = 4 << 20;
/// The most standard error kept (the rest is read and dropped).
const STDERR_LIMIT: usize = 64 << 10;
/// How deep a YAML value may nest.
const YAML_DEPTH_LIMIT: usize = 64;

/// What the gatherer reads, and how long it lets each source take (the validated model;
/// the adapter parses its options into it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FactsOptions {
    /// The Facter program (a path, or a name looked up in `PATH`); `None` (the option
    /// written `facter = false`) uses only built-in and external facts.
    pub facter: Option<PathBuf>,
    /// Directories of external facts, in precedence order (the first wins).
    pub external_facts: Vec<PathBuf>,
    /// How often the adapter refreshes the facts (the gatherer itself does not use it).
    pub refresh: Duration,
    /// How long Facter may run before it is killed.
    pub facter_timeout: Duration,
    /// How long an external facts executable may run before it is killed.
    pub executable_timeout: Duration,
    /// Where the built-in facts are read from: `/proc` and `/etc/os-release` on a real
    /// host, a directory of fakes in tests.
    pub host: HostPaths,
}

/// The files the built-in facts are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPaths {
    /// procfs (`loadavg`, `stat`, `meminfo`, `sys/kernel/hostname`, `sys/kernel/osrelease`).
    pub proc: PathBuf,
    /// os-release(5).
    pub os_release: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            proc: PathBuf::from("/proc"),
            os_release: PathBuf::from("/etc/os-release"),
        }
    }
}

impl Default for FactsOptions {
    /// `facter` from `PATH`, no external directories, refreshed every minute, Facter's
    /// timeout 30 s, an executable's 10 s, the host's `/proc`.
    fn default() -> Self {
        FactsOptions {
            facter: Some(PathBuf::from("facter")),
            external_facts: Vec::new(),
            refresh: DEFAULT_REFRESH,
            facter_timeout: DEFAULT_FACTER_TIMEOUT,
            executable_timeout: DEFAULT_EXECUTABLE_TIMEOUT,
            host: HostPaths::default(),
        }
    }
}

impl FactsOptions {
    /// Checks what serde cannot: no interval or timeout may be zero.
    pub fn validate(&self) -> Result<(), FactsError> {
        for (option, value) in [
            ("refresh", self.refresh),
            ("facter_timeout", self.facter_timeout),
            ("executable_timeout", self.executable_timeout),
        ] {
            if value.is_zero() {
                return Err(FactsError::InvalidOption {
                    option,
                    problem: "must be longer than zero",
                });
            }
        }
        if self
            .facter
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(FactsError::InvalidOption {
                option: "facter",
                problem: "must be a program (or false)",
            });
        }
        Ok(())
    }
}

/// What the built-in facts take from the Docker daemon (`GET /info`). Built from
/// bollard's [`SystemInfo`](bollard::models::SystemInfo) by
/// [`DockerInfo::from_system_info`] or fetched by [`DockerInfo::fetch`]; tests build it by
/// hand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerInfo {
    /// The daemon host's name (`Name`): `node.name`.
    pub name: Option<String>,
    /// The kernel's release (`KernelVersion`): `node.kernelversion`.
    pub kernel_version: Option<String>,
    /// The operating system (`OperatingSystem`): `node.operatingsystem`.
    pub operating_system: Option<String>,
    /// The storage driver (`Driver`): `engine.storagedriver`.
    pub storage_driver: Option<String>,
    /// The engine's labels (`Labels`, `key=value` each): `engine.labels.<key>`. A label
    /// without `=` has the empty value.
    pub labels: BTreeMap<String, String>,
}

impl DockerInfo {
    /// The parts of Docker's `info` that facts are made of; empty strings count as absent.
    pub fn from_system_info(info: &bollard::models::SystemInfo) -> Self {
        let text = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        let labels = info
            .labels
            .iter()
            .flatten()
            .filter_map(|label| {
                let (key, value) = label.split_once('=').unwrap_or((label.as_str(), ""));
                (!key.is_empty()).then(|| (key.to_owned(), value.to_owned()))
            })
            .collect();
        DockerInfo {
            name: text(&info.name),
            kernel_version: text(&info.kernel_version),
            operating_system: text(&info.operating_system),
            storage_driver: text(&info.driver),
            labels,
        }
    }

    /// Asks the daemon (`GET /info`), waiting at most [`DOCKER_INFO_TIMEOUT`].
    pub async fn fetch(docker: &bollard::Docker) -> Result<Self, FactsError> {
        match tokio::time::timeout(DOCKER_INFO_TIMEOUT, docker.info()).await {
            Err(_) => Err(FactsError::DockerTimeout {
                after: DOCKER_INFO_TIMEOUT,
            }),
            Ok(Err(e)) => Err(FactsError::Docker(e)),
            Ok(Ok(info)) => Ok(DockerInfo::from_system_info(&info)),
        }
    }
}

/// Why a fact source gave nothing this time (logged, never fatal to a refresh), or why
/// options are refused.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// An option's value cannot be used.
    #[error("option {option}: {problem}")]
    InvalidOption {
        /// The option.
        option: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A program could not be started.
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A program ran longer than it may, and was killed.
    #[error("{} did not finish within {}; killed", program.display(), humantime::format_duration(*after))]
    Timeout {
        /// The program.
        program: PathBuf,
        /// Its time limit.
        after: Duration,
    },
    /// A program wrote more than `limit` (4 MiB) bytes to its standard output, and was
    /// killed.
    #[error("{} wrote more than {limit} bytes; killed", program.display())]
    OutputTooLarge {
        /// The program.
        program: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// Reading a program's output failed.
    #[error("reading the output of {}: {source}", program.display())]
    Output {
        /// The program.
        program: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A program exited unsuccessfully (and its output was not used).
    #[error("{} exited with {status}{}", program.display(), stderr_note(stderr))]
    Exit {
        /// The program.
        program: PathBuf,
        /// How it exited.
        status: ExitStatus,
        /// The start of its standard error.
        stderr: String,
    },
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file's or a program's output is not UTF-8.
    #[error("{} is not UTF-8", path.display())]
    NotUtf8 {
        /// The file or program.
        path: PathBuf,
    },
    /// JSON that does not parse.
    #[error("{} is not valid JSON: {source}", path.display())]
    Json {
        /// The file or program.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// YAML that does not parse (or uses what is not supported).
    #[error("{} is not valid YAML: {message}", path.display())]
    Yaml {
        /// The file or program.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// JSON or YAML whose top level is not a mapping of fact names.
    #[error("{} does not hold a mapping of fact names to values", path.display())]
    NotAMapping {
        /// The file or program.
        path: PathBuf,
    },
    /// An executable's output that is neither a mapping nor `key=value` lines.
    #[error("{} printed garbage (line {line}: {text:?})", path.display())]
    Garbage {
        /// The executable.
        path: PathBuf,
        /// The first line that is not `key=value` (1-based).
        line: usize,
        /// The line (its start).
        text: String,
    },
    /// A `/proc` (or os-release) file whose content is not what the kernel writes.
    #[error("{} has no {what}", path.display())]
    Unexpected {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// Docker's `info` failed.
    #[error("Docker info: {0}")]
    Docker(#[from] bollard::errors::Error),
    /// Docker's `info` did not answer in time.
    #[error("Docker info did not answer within {}", humantime::format_duration(*after))]
    DockerTimeout {
        /// The limit.
        after: Duration,
    },
}

fn stderr_note(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

impl FactsError {
    /// The kind of failure, for logging a failure once per source and kind.
    pub fn kind(&self) -> &'static str {
        match self {
            FactsError::InvalidOption { .. } => "invalid option",
            FactsError::Spawn { .. } => "spawn",
            FactsError::Timeout { .. } => "timeout",
            FactsError::OutputTooLarge { .. } => "output too large",
            FactsError::Output { .. } => "output",
            FactsError::Exit { .. } => "exit status",
            FactsError::Read { .. } => "read",
            FactsError::NotUtf8 { .. } => "not UTF-8",
            FactsError::Json { .. } => "JSON",
            FactsError::Yaml { .. } => "YAML",
            FactsError::NotAMapping { .. } => "not a mapping",
            FactsError::Garbage { .. } => "garbage",
            FactsError::Unexpected { .. } => "unexpected content",
            FactsError::Docker(_) => "docker",
            FactsError::DockerTimeout { .. } => "docker timeout",
        }
    }
}

/// The overload of `load` on `cpus` CPUs: `load ÷ cpus × 100`, rounded to the nearest
/// integer (halves away from zero), as a string. `None` without CPUs or for a load that
/// is not a finite, non-negative number.
pub fn overload(load: f64, cpus: u32) -> Option<String> {
    if cpus == 0 || !load.is_finite() || load < 0.0 {
        return None;
    }
    let percent = (load / f64::from(cpus) * 100.0).round();
    Some(format!("{percent:.0}"))
}

/// A rolling average of the 1-minute load average, sampled at each refresh, over a
/// window (10 minutes for `system_overload_10min`). Pure: the caller says when each sample
/// was taken, so tests feed it samples minutes apart without waiting.
#[derive(Clone, Debug)]
pub struct LoadWindow {
    /// How far back the average reaches.
    window: Duration,
    /// When the first sample was taken: the average is only trusted once sampling has
    /// gone on for a whole window.
    first: Option<Instant>,
    /// The samples within the window of the newest, oldest first.
    samples: VecDeque<(Instant, f64)>,
}

impl LoadWindow {
    /// An empty window of the given length.
    pub fn new(window: Duration) -> Self {
        LoadWindow {
            window,
            first: None,
            samples: VecDeque::new(),
        }
    }

    /// Records the 1-minute load `load1` sampled at `at` (samples come in time order; one
    /// older than the newest is ignored), and forgets samples that fell out of the window.
    pub fn record(&mut self, at: Instant, load1: f64) {
        if !load1.is_finite() || self.samples.back().is_some_and(|(last, _)| at < *last) {
            return;
        }
        self.first.get_or_insert(at);
        self.samples.push_back((at, load1));
        if let Some(start) = at.checked_sub(self.window) {
            while self.samples.front().is_some_and(|(t, _)| *t <= start) {
                self.samples.pop_front();
            }
        }
    }

    /// The mean of the samples within the window of the newest one, once sampling has
    /// gone on for a whole window (the newest sample is at least a window after the
    /// first); `None` before. With a refresh interval longer than the window it is the
    /// newest sample alone.
    pub fn average(&self) -> Option<f64> {
        let first = self.first?;
        let (newest, _) = *self.samples.back()?;
        if newest.duration_since(first) < self.window {
            return None;
        }
        let sum: f64 = self.samples.iter().map(|(_, load)| load).sum();
        // A VecDeque's length fits in f64's integer range for any realistic window.
        #[allow(clippy::cast_precision_loss)]
        let count = self.samples.len() as f64;
        Some(sum / count)
    }

    /// How many samples are in the window.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample is in the window.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Failures already logged, so that each is logged once per source and kind.
#[derive(Debug, Default)]
struct Problems {
    /// (source, kind) of failures that have not recovered.
    failing: BTreeSet<(String, &'static str)>,
    /// (source, kind) of notices given once for the life of the gatherer.
    noted: BTreeSet<(String, &'static str)>,
}

impl Problems {
    /// Logs `error` of `source` unless the same kind already failed and has not recovered
    /// since; returns whether it logged.
    fn fail(&mut self, source: &str, error: &FactsError) -> bool {
        if self.failing.insert((source.to_owned(), error.kind())) {
            warn!(
                source,
                kind = error.kind(),
                "fact source failed (last good values kept): {error}"
            );
            true
        } else {
            debug!(
                source,
                kind = error.kind(),
                "fact source still failing: {error}"
            );
            false
        }
    }

    /// `source` worked: its failures are over (logged), and will be logged again if they
    /// come back.
    fn ok(&mut self, source: &str) {
        let before = self.failing.len();
        self.failing.retain(|(s, _)| s != source);
        if self.failing.len() != before {
            info!(source, "fact source works again");
        }
    }

    /// Forgets `source` without a word (an external file that is gone).
    fn forget(&mut self, source: &str) {
        self.failing.retain(|(s, _)| s != source);
    }

    /// Logs `message` once for the life of the gatherer.
    fn note(&mut self, source: &str, kind: &'static str, message: impl Display) {
        if self.noted.insert((source.to_owned(), kind)) {
            warn!(source, kind, "{message}");
        }
    }
}

/// One fact: a top-level name and its (possibly structured) value.
type Fact = (String, Value);

/// The built-in facts' last good inputs (each kept when a later read fails).
#[derive(Debug, Default)]
struct Builtin {
    /// `/proc/loadavg`: 1, 5 and 15 minutes.
    load: Option<[f64; 3]>,
    /// Online CPUs.
    cpus: Option<u32>,
    /// `MemAvailable`, bytes.
    memory_available: Option<u64>,
    /// `/proc/sys/kernel/hostname`.
    hostname: Option<String>,
    /// `/proc/sys/kernel/osrelease`.
    kernel: Option<String>,
    /// `PRETTY_NAME`.
    operating_system: Option<String>,
}

/// The external facts of one file, as last read successfully.
#[derive(Clone, Debug)]
struct FileFacts {
    path: PathBuf,
    facts: Vec<Fact>,
}

/// Collects a node's facts; see the [module documentation](self). Keeps each source's last
/// good values between refreshes.
#[derive(Debug)]
pub struct Gatherer {
    options: FactsOptions,
    builtin: Builtin,
    /// The 1-minute load, sampled at each refresh.
    load: LoadWindow,
    /// Facter's last good output.
    facter: Option<Map<String, Value>>,
    /// For each external directory (in `options.external_facts`' order), its files in
    /// Facter's processing order with their last good facts.
    external: Vec<Vec<FileFacts>>,
    /// Docker's last good `info`.
    docker: Option<DockerInfo>,
    problems: Problems,
    /// The facts of the last refresh.
    facts: Facts,
}

impl Gatherer {
    /// A gatherer with no facts yet (the first [`refresh`](Self::refresh) reads them).
    pub fn new(options: FactsOptions) -> Self {
        let directories = options.external_facts.len();
        Gatherer {
            options,
            builtin: Builtin::default(),
            load: LoadWindow::new(OVERLOAD_WINDOW),
            facter: None,
            external: vec![Vec::new(); directories],
            docker: None,
            problems: Problems::default(),
            facts: Facts::new(),
        }
    }

    /// The options it was made with.
    pub fn options(&self) -> &FactsOptions {
        &self.options
    }

    /// The facts of the last refresh (empty before the first).
    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// Reads every source again — Facter and the external directories concurrently, each
    /// under its timeout — and returns the facts. `docker` is the daemon's `info` of this
    /// refresh; `None` keeps the last one given (if any).
    pub async fn refresh(&mut self, docker: Option<&DockerInfo>) -> Facts {
        if let Some(info) = docker {
            self.docker = Some(info.clone());
        }
        self.refresh_builtin(Instant::now());
        let facter = async {
            match &self.options.facter {
                Some(program) => Some(run_facter(program, self.options.facter_timeout).await),
                None => None,
            }
        };
        let external = join_all(
            self.options
                .external_facts
                .iter()
                .map(|dir| read_directory(dir, self.options.executable_timeout)),
        );
        let (facter, external) = tokio::join!(facter, external);
        if let Some(result) = facter {
            self.apply_facter(result);
        }
        for (index, result) in external.into_iter().enumerate() {
            self.apply_directory(index, result);
        }
        self.facts = self.merge();
        self.facts.clone()
    }

    /// [`refresh`](Self::refresh) with this refresh's `info` fetched from `docker` (a
    /// failure is logged once and the last good `info` kept); `None`: no Docker.
    pub async fn refresh_with_docker(&mut self, docker: Option<&bollard::Docker>) -> Facts {
        let info = match docker {
            None => None,
            Some(docker) => match DockerInfo::fetch(docker).await {
                Ok(info) => {
                    self.problems.ok("docker");
                    Some(info)
                }
                Err(e) => {
                    self.problems.fail("docker", &e);
                    None
                }
            },
        };
        self.refresh(info.as_ref()).await
    }

    fn refresh_builtin(&mut self, now: Instant) {
        let proc = self.options.host.proc.clone();
        let os_release = self.options.host.os_release.clone();
        if let Some(load) = self.builtin_read(proc.join("loadavg"), parse_loadavg) {
            self.load.record(now, load[0]);
            self.builtin.load = Some(load);
        }
        if let Some(cpus) = self.builtin_read(proc.join("stat"), parse_stat_cpus) {
            self.builtin.cpus = Some(cpus);
        }
        if let Some(bytes) = self.builtin_read(proc.join("meminfo"), parse_meminfo_available) {
            self.builtin.memory_available = Some(bytes);
        }
        let hostname = proc.join("sys/kernel/hostname");
        if let Some(name) = self.builtin_read(hostname, parse_line("a host name")) {
            self.builtin.hostname = Some(name);
        }
        let osrelease = proc.join("sys/kernel/osrelease");
        if let Some(kernel) = self.builtin_read(osrelease, parse_line("a kernel release")) {
            self.builtin.kernel = Some(kernel);
        }
        if let Some(name) = self.builtin_read(os_release, parse_pretty_name) {
            self.builtin.operating_system = Some(name);
        }
    }

    /// Reads and parses one built-in source file, logging a failure once.
    fn builtin_read<T>(
        &mut self,
        path: PathBuf,
        parse: impl FnOnce(&Path, &str) -> Result<T, FactsError>,
    ) -> Option<T> {
        let source = path.display().to_string();
        let result = std::fs::read_to_string(&path)
            .map_err(|source| FactsError::Read {
                path: path.clone(),
                source,
            })
            .and_then(|text| parse(&path, &text));
        match result {
            Ok(value) => {
                self.problems.ok(&source);
                Some(value)
            }
            Err(e) => {
                self.problems.fail(&source, &e);
                None
            }
        }
    }

    fn apply_facter(&mut self, result: Result<FacterRun, FactsError>) {
        match result {
            Ok(run) => {
                self.problems.ok("facter");
                if let Some((status, stderr)) = run.complaint {
                    self.problems.note(
                        "facter",
                        "exit status",
                        format_args!(
                            "facter exited with {status} but printed facts, which are used \
                             (logged once){}",
                            stderr_note(&stderr)
                        ),
                    );
                }
                self.facter = Some(run.facts);
            }
            Err(e) => {
                self.problems.fail("facter", &e);
            }
        }
    }

    fn apply_directory(&mut self, index: usize, result: Result<Vec<FileRead>, FactsError>) {
        let Some(dir) = self.options.external_facts.get(index) else {
            return;
        };
        let source = dir.display().to_string();
        let old = std::mem::take(&mut self.external[index]);
        let files = match result {
            Err(e) => {
                self.problems.fail(&source, &e);
                // A directory that is gone takes its facts with it; one that cannot be
                // read (for now) keeps them.
                let gone = matches!(&e, FactsError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound);
                if gone {
                    for file in &old {
                        self.problems.forget(&file.path.display().to_string());
                    }
                    Vec::new()
                } else {
                    old
                }
            }
            Ok(reads) => {
                self.problems.ok(&source);
                let mut files = Vec::with_capacity(reads.len());
                for read in reads {
                    let file_source = read.path.display().to_string();
                    match read.result {
                        Ok(facts) => {
                            self.problems.ok(&file_source);
                            files.push(FileFacts {
                                path: read.path,
                                facts,
                            });
                        }
                        Err(e) => {
                            self.problems.fail(&file_source, &e);
                            if let Some(last) = old.iter().find(|f| f.path == read.path) {
                                files.push(last.clone());
                            }
                        }
                    }
                }
                for gone in old
                    .iter()
                    .filter(|o| !files.iter().any(|f| f.path == o.path))
                {
                    self.problems.forget(&gone.path.display().to_string());
                }
                files
            }
        };
        self.external[index] = files;
    }

    /// The facts of every source, by precedence.
    fn merge(&self) -> Facts {
        // Fact name → (rank, value); a higher rank replaces a lower one entirely.
        let mut chosen: BTreeMap<String, (u8, &Value)> = BTreeMap::new();
        let builtin = self.builtin_facts();
        for (name, value) in &builtin {
            chosen.insert(name.clone(), (0, value));
        }
        for (name, value) in self.facter.iter().flatten() {
            chosen.insert(name.clone(), (1, value));
        }
        // Among external facts the first one processed wins (Facter's order).
        let mut external: BTreeMap<&str, &Value> = BTreeMap::new();
        for (name, value) in self.external.iter().flatten().flat_map(|f| &f.facts) {
            external.entry(name.as_str()).or_insert(value);
        }
        for (name, value) in external {
            chosen.insert(name.to_owned(), (2, value));
        }
        // Flattened lowest rank first, so that where a flat name (`a.b` from a text file)
        // meets a structured one (`a` → `{b: ..}`), the higher rank's value stays.
        let mut facts = Facts::new();
        for rank in 0..=2 {
            for (name, (_, value)) in chosen.iter().filter(|(_, (r, _))| *r == rank) {
                flatten_into(name, value, &mut facts);
            }
        }
        facts
    }

    fn builtin_facts(&self) -> Vec<Fact> {
        let mut facts = Vec::new();
        let b = &self.builtin;
        if let (Some(load), Some(cpus)) = (b.load, b.cpus) {
            let ten = self.load.average().unwrap_or(load[1]);
            for (name, value) in [
                ("system_overload_1min", load[0]),
                ("system_overload_5min", load[1]),
                ("system_overload_10min", ten),
            ] {
                if let Some(text) = overload(value, cpus) {
                    facts.push((name.to_owned(), Value::String(text)));
                }
            }
        }
        let docker = self.docker.as_ref();
        let mut node = Map::new();
        fn put(map: &mut Map<String, Value>, key: &str, value: Option<String>) {
            if let Some(value) = value {
                map.insert(key.to_owned(), Value::String(value));
            }
        }
        put(&mut node, "cpus", b.cpus.map(|c| c.to_string()));
        put(
            &mut node,
            "memory_available_bytes",
            b.memory_available.map(|m| m.to_string()),
        );
        let from_docker =
            |pick: fn(&DockerInfo) -> &Option<String>| docker.and_then(|d| pick(d).clone());
        put(
            &mut node,
            "name",
            from_docker(|d| &d.name).or_else(|| b.hostname.clone()),
        );
        put(
            &mut node,
            "kernelversion",
            from_docker(|d| &d.kernel_version).or_else(|| b.kernel.clone()),
        );
        put(
            &mut node,
            "operatingsystem",
            from_docker(|d| &d.operating_system).or_else(|| b.operating_system.clone()),
        );
        if !node.is_empty() {
            facts.push(("node".to_owned(), Value::Object(node)));
        }
        if let Some(docker) = docker {
            let mut engine = Map::new();
            put(&mut engine, "storagedriver", docker.storage_driver.clone());
            if !docker.labels.is_empty() {
                let labels = docker
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                engine.insert("labels".to_owned(), Value::Object(labels));
            }
            if !engine.is_empty() {
                facts.push(("engine".to_owned(), Value::Object(engine)));
            }
        }
        facts
    }
}

/// Adds `value` under `name` to `facts`, structured values flattened to dotted names.
fn flatten_into(name: &str, value: &Value, facts: &mut Facts) {
    match value {
        Value::Null => {}
        Value::Bool(b) => {
            facts.insert(name.to_owned(), b.to_string());
        }
        Value::Number(n) => {
            facts.insert(name.to_owned(), n.to_string());
        }
        Value::String(s) => {
            facts.insert(name.to_owned(), s.clone());
        }
        Value::Array(items) if items.is_empty() => {
            facts.insert(name.to_owned(), "[]".to_owned());
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                flatten_into(&format!("{name}.{index}"), item, facts);
            }
        }
        Value::Object(members) if members.is_empty() => {
            facts.insert(name.to_owned(), "{}".to_owned());
        }
        Value::Object(members) => {
            for (key, member) in members {
                flatten_into(&format!("{name}.{key}"), member, facts);
            }
        }
    }
}

// ---- /proc and os-release ------------------------------------------------------------

fn parse_loadavg(path: &Path, text: &str) -> Result<[f64; 3], FactsError> {
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    match (fields.next(), fields.next(), fields.next()) {
        (Some(Ok(one)), Some(Ok(five)), Some(Ok(fifteen)))
            if [one, five, fifteen]
                .iter()
                .all(|l| l.is_finite() && *l >= 0.0) =>
        {
            Ok([one, five, fifteen])
        }
        _ => Err(FactsError::Unexpected {
            path: path.to_owned(),
            what: "three load averages",
        }),
    }
}

fn parse_stat_cpus(path: &Path, text: &str) -> Result<u32, FactsError> {
    let cpus = text
        .lines()
        .filter(|line| {
            line.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    match u32::try_from(cpus) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(FactsError::Unexpected {
            path: path.to_owned(),
            what: "cpuN lines",
        }),
    }
}

fn parse_meminfo_available(path: &Path, text: &str) -> Result<u64, FactsError> {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix("MemAvailable:")?;
            let mut words = rest.split_whitespace();
            let amount: u64 = words.next()?.parse().ok()?;
            match words.next() {
                Some("kB") => amount.checked_mul(1024),
                None => Some(amount),
                Some(_) => None,
            }
        })
        .ok_or_else(|| FactsError::Unexpected {
            path: path.to_owned(),
            what: "MemAvailable line (in kB)",
        })
}

fn parse_line(what: &'static str) -> impl FnOnce(&Path, &str) -> Result<String, FactsError> {
    move |path, text| {
        let line = text.trim();
        if line.is_empty() {
            Err(FactsError::Unexpected {
                path: path.to_owned(),
                what,
            })
        } else {
            Ok(line.to_owned())
        }
    }
}

fn parse_pretty_name(path: &Path, text: &str) -> Result<String, FactsError> {
    text.lines()
        .find_map(|line| line.trim().strip_prefix("PRETTY_NAME="))
        .map(unquote_shell)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| FactsError::Unexpected {
            path: path.to_owned(),
            what: "PRETTY_NAME",
        })
}

/// An os-release value: quoted with `"` (backslash escapes) or `'`, or bare.
fn unquote_shell(value: &str) -> String {
    let value = value.trim();
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            } else {
                out.push(c);
            }
        }
        out
    } else if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        inner.to_owned()
    } else {
        value.to_owned()
    }
}

// ---- processes -----------------------------------------------------------------------

/// What a process that ran to its end left.
struct Ran {
    status: ExitStatus,
    stdout: Vec<u8>,
    /// The start of its standard error, escape sequences removed.
    stderr: String,
}

/// Runs `program args` with stdin from `/dev/null`, its standard output read up to
/// [`OUTPUT_LIMIT`]; killed (and reaped) when it runs past `timeout` or writes too much,
/// and killed if this future is dropped.
async fn run(program: &Path, args: &[&str], timeout: Duration) -> Result<Ran, FactsError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| FactsError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let work = async {
        let (stdout, stderr) = tokio::try_join!(
            read_capped(program, stdout, OUTPUT_LIMIT, true),
            read_capped(program, stderr, STDERR_LIMIT, false),
        )?;
        let status = child.wait().await.map_err(|source| FactsError::Output {
            program: program.to_owned(),
            source,
        })?;
        Ok::<_, FactsError>((status, stdout, stderr))
    };
    let result = tokio::time::timeout(timeout, work).await;
    match result {
        Ok(Ok((status, stdout, stderr))) => Ok(Ran {
            status,
            stdout,
            stderr: first_line(&stderr),
        }),
        Ok(Err(e)) => {
            kill(&mut child).await;
            Err(e)
        }
        Err(_) => {
            kill(&mut child).await;
            Err(FactsError::Timeout {
                program: program.to_owned(),
                after: timeout,
            })
        }
    }
}

/// Kills `child` and reaps it (briefly: SIGKILL is not ignored; should reaping take longer,
/// tokio reaps it when the handle is dropped).
async fn kill(child: &mut tokio::process::Child) {
    if child.start_kill().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
    }
}

/// Reads `pipe` to its end, keeping at most `limit` bytes: past it, an error when `strict`
/// (standard output), else the rest is read and dropped (standard error).
async fn read_capped<R: AsyncRead + Unpin>(
    program: &Path,
    pipe: Option<R>,
    limit: usize,
    strict: bool,
) -> Result<Vec<u8>, FactsError> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else {
        return Ok(kept);
    };
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        let n = pipe
            .read(&mut chunk)
            .await
            .map_err(|source| FactsError::Output {
                program: program.to_owned(),
                source,
            })?;
        if n == 0 {
            return Ok(kept);
        }
        let room = limit.saturating_sub(kept.len());
        if n > room && strict {
            return Err(FactsError::OutputTooLarge {
                program: program.to_owned(),
                limit,
            });
        }
        kept.extend_from_slice(chunk.get(..n.min(room)).unwrap_or_default());
    }
}

/// The first non-empty line of a program's standard error, without terminal escape
/// sequences (Facter colours its messages even with `--no-color`), at most 300 chars.
fn first_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out.chars().take(300).collect()
}

// ---- Facter --------------------------------------------------------------------------

/// Facter's facts, and how it exited when that was not success.
struct FacterRun {
    facts: Map<String, Value>,
    complaint: Option<(ExitStatus, String)>,
}

async fn run_facter(program: &Path, timeout: Duration) -> Result<FacterRun, FactsError> {
    let ran = run(program, &["--json", "--show-legacy", "--no-color"], timeout).await?;
    let parsed = serde_json::from_slice::<Value>(&ran.stdout);
    match parsed {
        Ok(Value::Object(facts)) => Ok(FacterRun {
            facts,
            complaint: (!ran.status.success()).then_some((ran.status, ran.stderr)),
        }),
        _ if !ran.status.success() => Err(FactsError::Exit {
            program: program.to_owned(),
            status: ran.status,
            stderr: ran.stderr,
        }),
        Ok(_) => Err(FactsError::NotAMapping {
            path: program.to_owned(),
        }),
        Err(source) => Err(FactsError::Json {
            path: program.to_owned(),
            source,
        }),
    }
}

// ---- external facts ------------------------------------------------------------------

/// One external file's facts this time.
struct FileRead {
    path: PathBuf,
    result: Result<Vec<Fact>, FactsError>,
}

/// How Facter treats a file, by its name and mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Json,
    Yaml,
    Executable,
}

/// Facter's choice of parser: by extension first (case-insensitive), an executable only
/// when no extension matched; `None`: skipped.
fn kind_of(path: &Path, metadata: &std::fs::Metadata) -> Option<Kind> {
    if !metadata.is_file() {
        return None;
    }
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("txt") => Some(Kind::Text),
        Some("json") => Some(Kind::Json),
        Some("yaml" | "yml") => Some(Kind::Yaml),
        Some("bat" | "cmd" | "com" | "exe") => None,
        _ if metadata.permissions().mode() & 0o111 != 0 => Some(Kind::Executable),
        _ => None,
    }
}

/// Every file of an external facts directory that Facter would read, in Facter's
/// processing order (names sorted, last first), with its facts.
async fn read_directory(dir: &Path, timeout: Duration) -> Result<Vec<FileRead>, FactsError> {
    let read_error = |source| FactsError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut entries = tokio::fs::read_dir(dir).await.map_err(read_error)?;
    let mut files = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(read_error)? {
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        // Follows symbolic links, as Facter's File.file? does.
        let Ok(metadata) = tokio::fs::metadata(&path).await else {
            continue;
        };
        match kind_of(&path, &metadata) {
            Some(kind) => files.push((name, path, kind)),
            None => debug!(path = %path.display(), "not an external facts file; skipped"),
        }
    }
    files.sort_by(|a, b| b.0.as_encoded_bytes().cmp(a.0.as_encoded_bytes()));
    let reads = files.into_iter().map(|(_, path, kind)| async move {
        let result = read_file(&path, kind, timeout).await;
        FileRead { path, result }
    });
    Ok(join_all(reads).await)
}

async fn read_file(path: &Path, kind: Kind, timeout: Duration) -> Result<Vec<Fact>, FactsError> {
    let bytes = if kind == Kind::Executable {
        let ran = run(path, &[], timeout).await?;
        if !ran.status.success() {
            return Err(FactsError::Exit {
                program: path.to_owned(),
                status: ran.status,
                stderr: ran.stderr,
            });
        }
        if !ran.stderr.is_empty() {
            debug!(path = %path.display(), stderr = %ran.stderr, "external facts executable wrote to stderr");
        }
        ran.stdout
    } else {
        tokio::fs::read(path)
            .await
            .map_err(|source| FactsError::Read {
                path: path.to_owned(),
                source,
            })?
    };
    let text = String::from_utf8(bytes).map_err(|_| FactsError::NotUtf8 {
        path: path.to_owned(),
    })?;
    match kind {
        Kind::Text => Ok(parse_key_values(&text)),
        Kind::Json => parse_json_facts(path, &text),
        Kind::Yaml => parse_yaml_facts(path, &text),
        Kind::Executable => parse_executable_output(path, &text),
    }
}

/// Fact names are lowercased (Facter's canonical names); null values are absent.
fn fact(name: &str, value: Value) -> Option<Fact> {
    let name = name.trim().to_lowercase();
    (!name.is_empty() && !value.is_null()).then_some((name, value))
}

/// `key=value` lines; other lines ignored.
fn parse_key_values(text: &str) -> Vec<Fact> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            let value = value.trim();
            (!value.is_empty())
                .then(|| fact(key, Value::String(value.to_owned())))
                .flatten()
        })
        .collect()
}

fn parse_json_facts(path: &Path, text: &str) -> Result<Vec<Fact>, FactsError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(members)) => Ok(members
            .into_iter()
            .filter_map(|(name, value)| fact(&name, value))
            .collect()),
        Ok(_) => Err(FactsError::NotAMapping {
            path: path.to_owned(),
        }),
        Err(source) => Err(FactsError::Json {
            path: path.to_owned(),
            source,
        }),
    }
}

fn parse_yaml_facts(path: &Path, text: &str) -> Result<Vec<Fact>, FactsError> {
    let options = marked_yaml::LoaderOptions::default().prevent_coercion(true);
    let node = marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| match e {
        marked_yaml::LoadError::TopLevelMustBeMapping(_) => FactsError::NotAMapping {
            path: path.to_owned(),
        },
        e => FactsError::Yaml {
            path: path.to_owned(),
            message: e.to_string(),
        },
    })?;
    let Some(mapping) = node.as_mapping() else {
        return Err(FactsError::NotAMapping {
            path: path.to_owned(),
        });
    };
    let mut facts = Vec::with_capacity(mapping.len());
    for (key, value) in mapping.iter() {
        let value = yaml_value(path, value, 0)?;
        facts.extend(fact(key.as_str(), value));
    }
    Ok(facts)
}

/// A YAML node as Facter's YAML 1.1 loader reads it (booleans and nulls of plain scalars;
/// every other scalar a string, as written).
fn yaml_value(path: &Path, node: &YamlNode, depth: usize) -> Result<Value, FactsError> {
    if depth > YAML_DEPTH_LIMIT {
        return Err(FactsError::Yaml {
            path: path.to_owned(),
            message: format!("nested deeper than {YAML_DEPTH_LIMIT} levels"),
        });
    }
    Ok(match node {
        YamlNode::Scalar(scalar) => {
            let text = scalar.as_str();
            if !scalar.may_coerce() {
                Value::String(text.to_owned())
            } else {
                match text.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "on" => Value::Bool(true),
                    "false" | "no" | "off" => Value::Bool(false),
                    "" | "~" | "null" => Value::Null,
                    _ => Value::String(text.to_owned()),
                }
            }
        }
        YamlNode::Sequence(items) => Value::Array(
            items
                .iter()
                .map(|item| yaml_value(path, item, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        YamlNode::Mapping(members) => {
            let mut map = Map::new();
            for (key, value) in members.iter() {
                map.insert(key.as_str().to_owned(), yaml_value(path, value, depth + 1)?);
            }
            Value::Object(map)
        }
    })
}

/// An executable's output: a YAML (or JSON) mapping if it is one, else `key=value` lines,
/// every line that is not blank or a `#` comment having a `=` (else garbage).
fn parse_executable_output(path: &Path, text: &str) -> Result<Vec<Fact>, FactsError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    match parse_yaml_facts(path, text) {
        Ok(facts) => return Ok(facts),
        Err(e) => {
            debug!(path = %path.display(), "output is not a YAML mapping ({e}); reading key=value lines")
        }
    }
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        let fine = trimmed.is_empty()
            || trimmed.starts_with('#')
            || trimmed
                .split_once('=')
                .is_some_and(|(key, _)| !key.trim().is_empty());
        if !fine {
            return Err(FactsError::Garbage {
                path: path.to_owned(),
                line: number + 1,
                text: trimmed.chars().take(80).collect(),
            });
        }
    }
    Ok(parse_key_values(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_logged_once_until_it_recovers() {
        let mut problems = Problems::default();
        let timeout = || FactsError::Timeout {
            program: PathBuf::from("facter"),
            after: Duration::from_secs(1),
        };
        assert!(problems.fail("facter", &timeout()));
        assert!(!problems.fail("facter", &timeout()));
        let other = FactsError::NotAMapping {
            path: PathBuf::from("facter"),
        };
        assert!(problems.fail("facter", &other), "another kind is logged");
        assert!(problems.fail("x.json", &other), "another source is logged");
        problems.ok("facter");
        assert!(
            problems.fail("facter", &timeout()),
            "logged again after a recovery"
        );
    }

    #[test]
    fn flattening_numbers_arrays_and_empties() {
        let value = serde_json::json!({
            "n": 1, "f": 1.5, "b": false, "nul": null, "s": "x",
            "arr": [1, "two", {"x": true}], "e": [], "o": {}
        });
        let mut facts = Facts::new();
        flatten_into("js", &value, &mut facts);
        let want: Facts = [
            ("js.n", "1"),
            ("js.f", "1.5"),
            ("js.b", "false"),
            ("js.s", "x"),
            ("js.arr.0", "1"),
            ("js.arr.1", "two"),
            ("js.arr.2.x", "true"),
            ("js.e", "[]"),
            ("js.o", "{}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(facts, want);
    }

    #[test]
    fn executable_output_kinds() {
        let path = Path::new("x");
        let kv = parse_executable_output(path, "a=1\n# note\n\nB = two=2\n").unwrap();
        assert_eq!(
            kv,
            vec![
                ("a".to_owned(), Value::String("1".into())),
                ("b".to_owned(), Value::String("two=2".into()))
            ]
        );
        let yaml = parse_executable_output(path, "a: {b: [1, yes, '2']}\n").unwrap();
        assert_eq!(
            yaml,
            vec![("a".to_owned(), serde_json::json!({"b": ["1", true, "2"]}))]
        );
        let json = parse_executable_output(path, "{\"j\": {\"k\": 1}}").unwrap();
        assert_eq!(json, vec![("j".to_owned(), serde_json::json!({"k": "1"}))]);
        let garbage = parse_executable_output(path, "a=1\nthis is not a fact\n");
        assert!(
            matches!(garbage, Err(FactsError::Garbage { line: 2, .. })),
            "{garbage:?}"
        );
    }

    #[test]
    fn proc_parsers() {
        let p = Path::new("f");
        assert_eq!(
            parse_loadavg(p, "2.45 1.93 1.83 3/170 23513\n").unwrap(),
            [2.45, 1.93, 1.83]
        );
        assert!(parse_loadavg(p, "x").is_err());
        let stat = "cpu  1 2 3\ncpu0 1 2 3\ncpu1 1 2 3\nintr 5\n";
        assert_eq!(parse_stat_cpus(p, stat).unwrap(), 2);
        let meminfo = "MemTotal: 10 kB\nMemAvailable:   23461244 kB\n";
        assert_eq!(
            parse_meminfo_available(p, meminfo).unwrap(),
            23461244 * 1024
        );
        let os = "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            parse_pretty_name(p, os).unwrap(),
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(
            first_line(b"\n[x] ERROR M - \x1b[31mPermission denied\x1b[0m \nmore"),
            "[x] ERROR M - Permission denied"
        );
    }
}
