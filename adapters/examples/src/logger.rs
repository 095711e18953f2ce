//! `logger`: records every call it sees, and how long Docker took to answer.
//!
//! Hook it pre *and* post on the endpoints to watch (`"* *"` for everything). Each call
//! becomes one record — through the log (`tracing`, target `logger`) and, with `file` set,
//! one JSON line appended to that file:
//!
//! ```json
//! {"time":"2026-11-23T12:00:00.000Z","hook":"pre-hook","method":"POST","request":"/v1.41/containers/create"}
//! {"time":"2026-11-23T12:00:00.042Z","hook":"post-hook","method":"POST","request":"/v1.41/containers/create","code":201,"elapsed_ms":41.7}
//! ```
//!
//! Subscribed to events (`events = ["die", "destroy"]`) it records those too, and it
//! records unwinds (a request it saw that did not take effect).
//!
//! On `SIGHUP` it reopens `file` by its path before the next record, as log rotation
//! expects (`logrotate`'s `postrotate kill -HUP`): records then go to the new file, not
//! to the renamed one.
//!
//! `elapsed_ms` is the time from this adapter's pre-hook to its post-hook for the same
//! method and request target: Docker's time plus the hooks between them. It is absent when
//! no matching pre-hook was seen (a later pre-hook rewrote the query, or the logger is only
//! hooked post).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use powerstrip_adapter::builtin::{Builtin, parse_options};
use powerstrip_adapter::{
    Adapter, ClientRequest, DockerEvent, HookError, ServerResponse, async_trait,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, warn};

/// Pre-hooks waiting for their post-hook beyond this age are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Records each call.
#[derive(Debug)]
pub struct Logger {
    /// Where JSON lines go, if anywhere besides the log.
    file: Option<LogFile>,
    /// Whether records include the request and response bodies.
    bodies: bool,
    /// When each (method, request) was pre-hooked, oldest first, to time the post-hook.
    started: Mutex<HashMap<(String, String), VecDeque<Instant>>>,
}

impl Logger {
    /// A logger writing to the log only.
    pub fn new() -> Self {
        Logger {
            file: None,
            bodies: false,
            started: Mutex::new(HashMap::new()),
        }
    }

    /// Also appends one JSON line per call to the file at `path` (created if absent), and
    /// reopens it by that path after each `SIGHUP`.
    pub fn with_file(mut self, path: &Path) -> std::io::Result<Self> {
        self.file = Some(LogFile::open(path)?);
        Ok(self)
    }

    /// Includes bodies in records (they may hold secrets such as environment variables).
    pub fn with_bodies(mut self, bodies: bool) -> Self {
        self.bodies = bodies;
        self
    }

    fn record(&self, record: Value) {
        info!(target: "logger", "{record}");
        if let Some(file) = &self.file {
            file.append(&record);
        }
    }

    fn key(request: &ClientRequest) -> (String, String) {
        (request.method.clone(), request.request.clone())
    }
}

impl Default for Logger {
    fn default() -> Self {
        Self::new()
    }
}

/// The file records are appended to, reopened by its path after a `SIGHUP`.
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
    /// Set by the `SIGHUP` watcher; the next record reopens the file.
    reopen: Arc<AtomicBool>,
    /// Set once the `SIGHUP` watcher was started (inside the first runtime that sees this
    /// file: at build time in the proxy, at the first record in a served adapter).
    watching: OnceLock<()>,
}

impl LogFile {
    fn open(path: &Path) -> std::io::Result<LogFile> {
        let file = LogFile {
            path: path.to_owned(),
            file: Mutex::new(Self::open_append(path)?),
            reopen: Arc::new(AtomicBool::new(false)),
            watching: OnceLock::new(),
        };
        file.watch();
        Ok(file)
    }

    fn open_append(path: &Path) -> std::io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    /// Starts the `SIGHUP` watcher if this thread is inside a runtime and it is not
    /// running yet. It ends at the first `SIGHUP` after this file is dropped.
    fn watch(&self) {
        if self.watching.get().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.watching.get_or_init(|| {
            // Registered now, so a SIGHUP from here on is seen (and no longer kills).
            let hangup = {
                let _inside = runtime.enter();
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            };
            let mut hangup = match hangup {
                Ok(hangup) => hangup,
                Err(err) => {
                    warn!(target: "logger", error = %err, "cannot watch SIGHUP; the log file will not be reopened");
                    return;
                }
            };
            let flag: Weak<AtomicBool> = Arc::downgrade(&self.reopen);
            runtime.spawn(async move {
                while hangup.recv().await.is_some() {
                    match flag.upgrade() {
                        Some(flag) => flag.store(true, Ordering::Relaxed),
                        None => break,
                    }
                }
            });
        });
    }

    fn append(&self, record: &Value) {
        self.watch();
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if self.reopen.swap(false, Ordering::Relaxed) {
            match Self::open_append(&self.path) {
                Ok(reopened) => {
                    *file = reopened;
                    info!(target: "logger", path = %self.path.display(), "reopened the log file (SIGHUP)");
                }
                Err(err) => {
                    warn!(target: "logger", path = %self.path.display(), error = %err,
                        "cannot reopen the log file; still appending to the old one");
                }
            }
        }
        if let Err(err) = writeln!(file, "{record}") {
            warn!(target: "logger", error = %err, "cannot append to the log file");
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[async_trait]
impl Adapter for Logger {
    async fn pre_hook(&self, request: ClientRequest) -> Result<ClientRequest, HookError> {
        {
            let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            started.retain(|_, times| {
                times.retain(|t| now.duration_since(*t) < FORGET_AFTER);
                !times.is_empty()
            });
            started
                .entry(Self::key(&request))
                .or_default()
                .push_back(now);
        }
        let mut record = json!({
            "time": now(), "hook": "pre-hook", "method": request.method, "request": request.request,
        });
        if self.bodies {
            record["body"] = json!(request.body);
        }
        self.record(record);
        Ok(request)
    }

    async fn post_hook(
        &self,
        request: &ClientRequest,
        response: ServerResponse,
    ) -> Result<ServerResponse, HookError> {
        let started = {
            let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
            let key = Self::key(request);
            let first = started.get_mut(&key).and_then(VecDeque::pop_front);
            if started.get(&key).is_some_and(VecDeque::is_empty) {
                started.remove(&key);
            }
            first
        };
        let mut record = json!({
            "time": now(), "hook": "post-hook", "method": request.method, "request": request.request,
            "code": response.code,
        });
        if let Some(started) = started {
            record["elapsed_ms"] = json!((started.elapsed().as_secs_f64() * 1e4).round() / 10.0);
        }
        if self.bodies {
            record["body"] = json!(response.body);
        }
        self.record(record);
        Ok(response)
    }

    async fn unwind(&self, request: &ClientRequest, reason: &str) -> Result<(), HookError> {
        self.record(json!({
            "time": now(), "hook": "unwind", "method": request.method, "request": request.request,
            "reason": reason,
        }));
        Ok(())
    }

    async fn event(&self, event: &DockerEvent) -> Result<(), HookError> {
        self.record(json!({
            "time": now(), "hook": "event", "type": event.kind(), "action": event.action(),
            "id": event.actor_id(),
        }));
        Ok(())
    }
}

/// `logger`'s options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    bodies: bool,
}

/// `logger` as a builtin: `{ builtin = "logger", file = "/var/log/powerstrip-calls.jsonl" }`.
pub fn builtin() -> Builtin {
    Builtin::new(
        "logger",
        "records each call it sees and how long Docker took",
        |options, _ctx| {
            let options: Options = parse_options(options)?;
            let mut logger = Logger::new().with_bodies(options.bodies);
            if let Some(path) = options.file {
                logger = logger
                    .with_file(&path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            }
            Ok(Arc::new(logger))
        },
    )
    .with_unwind()
    .option(
        "file",
        "path",
        Some("none (the log only)"),
        "append one JSON line per call to this file (reopened on SIGHUP)",
    )
    .option(
        "bodies",
        "bool",
        Some("false"),
        "include request and response bodies in records",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pre_and_post_make_two_records_with_the_elapsed_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.jsonl");
        let mut options = powerstrip_adapter::builtin::Options::new();
        options.insert("file".into(), json!(path));
        let logger = builtin()
            .build(&options, &powerstrip_adapter::Context::in_memory())
            .unwrap();
        let request = ClientRequest::new("POST", "/v1.41/containers/create", Some("{}".into()));
        let passed = logger.pre_hook(request.clone()).await.unwrap();
        assert_eq!(passed, request);
        tokio::time::sleep(Duration::from_millis(15)).await;
        let response = ServerResponse {
            content_type: "application/json".into(),
            body: Some(r#"{"Id":"abc"}"#.into()),
            code: 201,
        };
        assert_eq!(
            logger.post_hook(&request, response.clone()).await.unwrap(),
            response
        );
        let lines: Vec<Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["hook"], "pre-hook");
        assert_eq!(lines[0]["request"], "/v1.41/containers/create");
        assert!(lines[0].get("body").is_none(), "bodies are off by default");
        assert_eq!(lines[1]["code"], 201);
        assert!(
            lines[1]["elapsed_ms"].as_f64().unwrap() >= 15.0,
            "{}",
            lines[1]
        );
    }

    #[tokio::test]
    async fn sighup_reopens_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.jsonl");
        let rotated = dir.path().join("calls.jsonl.1");
        // Built inside the runtime, as the proxy builds it: SIGHUP is watched from here on.
        let logger = Logger::new().with_file(&path).unwrap();
        let request = |n: u32| ClientRequest::new("GET", format!("/v1.41/info?n={n}"), None);
        logger.pre_hook(request(1)).await.unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        logger.pre_hook(request(2)).await.unwrap();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        // The watcher sets the flag as soon as the signal is delivered.
        let reopen = &logger.file.as_ref().unwrap().reopen;
        for _ in 0..500 {
            if reopen.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        logger.pre_hook(request(3)).await.unwrap();
        let requests = |p: &Path| -> Vec<String> {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()["request"].to_string())
                .collect()
        };
        let old = requests(&rotated);
        let new = requests(&path);
        assert_eq!(
            old,
            ["\"/v1.41/info?n=1\"", "\"/v1.41/info?n=2\""],
            "before SIGHUP records go to the renamed file"
        );
        assert_eq!(
            new,
            ["\"/v1.41/info?n=3\""],
            "after SIGHUP the next record reopens the file by its path"
        );
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_a_clear_error() {
        let mut options = powerstrip_adapter::builtin::Options::new();
        options.insert("file".into(), json!("/nonexistent/dir/calls.jsonl"));
        let err = builtin()
            .build(&options, &powerstrip_adapter::Context::in_memory())
            .err()
            .unwrap();
        assert!(
            err.starts_with("cannot open /nonexistent/dir/calls.jsonl"),
            "{err}"
        );
    }
}
